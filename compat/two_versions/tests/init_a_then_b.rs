//! Two major versions of static_call in one executable: the 0.1 copy
//! (sc_a) initializes first, then the 2 copy (sc_b). Both succeed, and every
//! site of every key of both copies calls its key's target directly.

use two_versions::{assert_both_initialized, assert_one_page, init};

#[test]
fn version_0_1_then_version_2() {
    // Before anything: each copy sees exactly its own sites (four per key).
    assert_one_page();
    init(0).unwrap_or_else(|e| panic!("{e}"));
    init(1).unwrap_or_else(|e| panic!("{e}"));
    assert_both_initialized();
}
