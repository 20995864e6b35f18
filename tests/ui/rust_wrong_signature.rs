use static_call::static_call;

fn len(s: &str) -> usize {
    s.len()
}

#[static_call]
static K: fn(&[u8]) -> usize = |b| b.len();

fn main() {
    K.update(len);
}
