use static_call::static_call;

extern "C" fn len(s: &[u8]) -> usize {
    s.len()
}

#[static_call]
static K: extern "C" fn(&[u8]) -> usize = len;

fn main() {}
