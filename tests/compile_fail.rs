//! Signatures and declarations the macro must refuse, each with an error that
//! points at the offending token and says what to write instead.
//!
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test --test
//! compile_fail` (the messages depend on the rustc version; these are for the
//! toolchain CI uses) and read every `.stderr` before committing it.
//!
//! Host only (x86-64): the macro's errors do not depend on the target (it
//! refuses the same signatures for every architecture), and trybuild
//! compiles the cases for the host.
#![cfg(target_arch = "x86_64")]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    // A passing case makes trybuild build (not only check) every case, so
    // that the errors raised while instantiating a target's shim (a
    // capturing closure, a function pointer value) are seen too.
    t.pass("tests/ui-pass/*.rs");
}
