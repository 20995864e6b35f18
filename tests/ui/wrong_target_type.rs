use static_call::static_call;

extern "C" fn wide(x: u64) -> u64 {
    x
}

#[static_call]
static K: extern "C" fn(u32) -> u32 = wide;

fn main() {}
