use static_call::static_call;

fn double(x: u64) -> u64 {
    x * 2
}

#[static_call]
static K: fn(u64) -> u64 = double;

fn main() {
    let old = K.update(|x| x + 1).unwrap();
    K.update(old);
}
