use static_call::static_call;
fn adder<const N: u64>() -> impl Fn(u64) -> u64 + Copy + 'static { |x| x + N }
fn sized<T: 'static>() -> impl Fn(u64) -> u64 + Copy + 'static { |x| x + core::mem::size_of::<T>() as u64 }
#[track_caller]
fn tc(x: u64) -> u64 { std::panic::Location::caller().line() as u64 + x - x }
const fn cf(x: u64) -> u64 { x * 2 }
#[static_call]
static K: fn(u64) -> u64 = cf;
fn main() {
    K.update(adder::<5>());
    assert_eq!(K.call(1), 6);
    K.update(sized::<[u8; 7]>());
    assert_eq!(K.call(1), 8);
    K.update(tc);
    let _ = K.call(1);
}
