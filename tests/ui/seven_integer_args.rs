use static_call::static_call;

extern "C" fn sum(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64) -> u64 {
    a + b + c + d + e + f + g
}

#[static_call]
static K: extern "C" fn(u64, u64, u64, u64, u64, u64, u64) -> u64 = sum;

fn main() {
    K.call(1, 2, 3, 4, 5, 6, 7);
}
