//! A Rust key declared `#[static_call(out_of_line)]` builds and calls on
//! every backend (found by review: it did not link with `--features
//! portable`, which emits no trampoline).
use static_call::static_call;

#[static_call(out_of_line)]
static OOL: fn(&str, String) -> usize = |a, b| a.len() + b.len();

#[test]
fn an_out_of_line_rust_key_works_on_the_portable_backend() {
    assert_eq!(OOL.call("ab", "c".into()), 3);
}
