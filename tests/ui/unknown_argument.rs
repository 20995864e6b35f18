use static_call::static_call;

extern "C" fn one(x: u64) -> u64 {
    x + 1
}

#[static_call(inline_always)]
static K: extern "C" fn(u64) -> u64 = one;

fn main() {}
