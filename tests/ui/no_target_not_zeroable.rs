use static_call::static_call;

#[static_call]
static K: extern "C" fn(u32) -> f64;

fn main() {}
