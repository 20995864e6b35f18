use static_call::static_call;

extern "C-unwind" fn may_panic(x: u64) -> u64 {
    x + 1
}

#[static_call]
static K: extern "C-unwind" fn(u64) -> u64 = may_panic;

fn main() {
    K.call(1);
}
