// Allow-by-default rustc lints a careful crate denies: the expansion of a
// Rust key must not trip them in user code.
#![deny(
    warnings,
    unused_qualifications,
    unused_results,
    missing_debug_implementations,
    missing_copy_implementations,
    trivial_casts,
    trivial_numeric_casts,
    single_use_lifetimes,
    unused_lifetimes,
    elided_lifetimes_in_paths,
    let_underscore_drop,
    unsafe_op_in_unsafe_fn,
    unreachable_pub,
    unit_bindings,
    unused_import_braces,
    redundant_lifetimes,
)]
use static_call::static_call;
#[derive(Debug, Clone, Copy)]
pub struct Req0;
#[derive(Debug)]
pub struct Req { pub path: String }
fn f(r: &Req, s: String) -> (usize, String) { (r.path.len(), s) }
#[static_call]
static K: fn(&Req, String) -> (usize, String) = f;
#[static_call]
static W: for<'a> fn(&'a str) -> &'a str = |s| s;
#[static_call]
static U: unsafe fn(*const u8) -> u8 = |p| unsafe { *p };
fn main() {
    let r = Req { path: "ab".into() };
    assert_eq!(K.call(&r, "x".into()).0, 2);
    assert_eq!(W.call("q"), "q");
    let b = 5u8;
    assert_eq!(unsafe { U.call(&b) }, 5);
}
