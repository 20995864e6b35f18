use static_call::static_call;

#[static_call]
static K: extern "C" fn(&u8) -> &u8;

fn main() {}
