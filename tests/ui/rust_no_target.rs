use static_call::static_call;

#[static_call]
static K: fn(u64) -> u64;

fn main() {}
