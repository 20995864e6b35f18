use static_call::static_call;

extern "Rust" fn double(x: u64) -> u64 {
    x * 2
}

#[static_call]
static K: extern "Rust" fn(u64) -> u64 = double;

fn main() {
    K.call(1);
}
