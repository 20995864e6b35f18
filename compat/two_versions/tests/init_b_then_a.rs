//! Two major versions of static_call in one executable: the 2 copy (sc_b)
//! initializes first, then the 0.1 copy (sc_a). Both succeed, and every site
//! of every key of both copies calls its key's target directly.

use two_versions::{assert_both_initialized, assert_one_page, init};

#[test]
fn version_2_then_version_0_1() {
    assert_one_page();
    init(1).unwrap_or_else(|e| panic!("{e}"));
    init(0).unwrap_or_else(|e| panic!("{e}"));
    assert_both_initialized();
}
