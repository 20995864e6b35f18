//! `missing_docs` fires for an undocumented `pub` key, at the key, and for
//! nothing the macro emits (the documented key below raises nothing).
#![deny(missing_docs)]
use static_call::static_call;

fn len(s: &str) -> usize {
    s.len()
}

#[static_call]
pub static UNDOCUMENTED: fn(&str) -> usize = len;

/// Documented: no error.
#[static_call]
pub static DOCUMENTED: fn(&str) -> usize = len;

extern "C" fn double(x: u64) -> u64 {
    x * 2
}

#[static_call]
pub static UNDOCUMENTED_C: extern "C" fn(u64) -> u64 = double;

fn main() {
    let _ = (UNDOCUMENTED.call("a"), DOCUMENTED.call("b"), UNDOCUMENTED_C.call(1));
}
