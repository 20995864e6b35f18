use static_call::static_call;

#[static_call]
static K: u64 = 1;

fn main() {}
