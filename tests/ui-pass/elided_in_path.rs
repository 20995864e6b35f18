use static_call::static_call;
use std::borrow::Cow;
fn first(v: &[u8]) -> std::slice::Iter<'_, u8> { v.iter() }
#[static_call]
static IT: fn(&[u8]) -> std::slice::Iter<'_, u8> = first;
#[static_call]
static COW: fn(&str) -> Cow<'_, str> = |s| Cow::Borrowed(s);
#[static_call]
static ER: extern "Rust" fn(u64) -> u64 = |x| x;
#[static_call]
static UER: unsafe extern "Rust" fn(u64) -> u64 = |x| x;
fn main() {
    assert_eq!(IT.call(&[1, 2]).count(), 2);
    assert_eq!(COW.call("a"), "a");
    assert_eq!(ER.call(1), 1);
    assert_eq!(unsafe { UER.call(1) }, 1);
}
