use static_call::static_call;
fn f(x: u64) -> u64 { x }
#[static_call]
#[cfg(any())]
static GONE: fn(u64) -> u64 = f;
#[static_call]
#[cfg(all())]
static HERE: fn(u64) -> u64 = f;
#[cfg(any())]
#[static_call]
static GONE2: fn(u64) -> u64 = does_not_exist;
fn main() {
    assert_eq!(HERE.call(3), 3);
}
