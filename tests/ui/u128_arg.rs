use static_call::static_call;

extern "C" fn low(x: u128) -> u64 {
    x as u64
}

#[static_call]
static K: extern "C" fn(u128) -> u64 = low;

fn main() {
    K.call(1);
}
