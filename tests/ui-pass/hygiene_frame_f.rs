// Arguments named `__frame` / `__f`: valid fn types, confusing errors.
use static_call::static_call;
#[static_call]
static A: fn(__frame: u64) -> u64 = |x| x + 1;
#[static_call]
static C: fn(__f: u64) -> u64 = |x| x + 1;
fn main() {
    assert_eq!(A.call(1), 2);
    assert_eq!(C.call(1), 2);
}
