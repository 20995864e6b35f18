// A user type named `StaticCallTarget` (the macro's generic parameter).
use static_call::static_call;
pub struct StaticCallTarget(pub u64);
#[static_call]
static K: fn(StaticCallTarget) -> u64 = |s| s.0;
fn main() {
    assert_eq!(K.call(StaticCallTarget(4)), 4);
}
