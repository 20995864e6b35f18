use static_call::static_call;

#[static_call]
static K: fn(u64) -> u64 = |x| x;

fn main() {
    let n = 3u64;
    K.update(move |x| x + n);
}
