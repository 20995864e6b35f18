use static_call::static_call;

type Hash = extern "C" fn(u64) -> u64;

extern "C" fn ident(x: u64) -> u64 {
    x
}

#[static_call]
static K: Hash = ident;

fn main() {}
