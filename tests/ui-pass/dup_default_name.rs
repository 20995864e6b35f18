// `fn(arg1: u64, _: u64)` is a valid fn type; the macro names the unnamed
// argument `arg1` too.
use static_call::static_call;
#[static_call]
static K: fn(arg1: u64, _: u64) -> u64 = |a, b| a + b;
fn main() {
    assert_eq!(K.call(1, 2), 3);
}
