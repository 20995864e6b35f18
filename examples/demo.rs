use static_call::static_call;
extern "C" fn fnv1a(x: u64) -> u64 {
    x.wrapping_mul(3)
}
extern "C" fn other(x: u64) -> u64 {
    x + 1
}
#[static_call]
pub static HASH: extern "C" fn(u64) -> u64 = fnv1a;
#[static_call]
static ON_EVENT: extern "C" fn(u32);
fn main() {
    println!("{}", HASH.call(5));
    ON_EVENT.call(3);
    for s in HASH.sites() {
        println!("{s}");
    }
    static_call::init().unwrap();
    for s in HASH.sites() {
        println!("{s}");
    }
    println!("{}", HASH.call(5));
    HASH.update(other);
    for s in HASH.sites() {
        println!("{s}");
    }
    println!("{}", HASH.call(5));
    println!("{:?}", static_call::stats());
}
