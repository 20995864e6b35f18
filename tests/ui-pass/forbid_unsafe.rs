// A crate that forbids unsafe code, using a Rust key.
#![forbid(unsafe_code)]
use static_call::static_call;
fn f(x: u64) -> u64 { x }
#[static_call]
static K: fn(u64) -> u64 = f;
fn main() {
    assert_eq!(K.call(3), 3);
}
