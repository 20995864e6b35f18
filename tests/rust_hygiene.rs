//! Argument names that are the macro's own local names (`__i<N>`,
//! `__m_<name>`, `__sc_arg<N>`, ...) change nothing the target receives:
//! the expansion binds the arguments to its own names first. (Found by
//! review: wrong values, an out-of-bounds `&str`, a double free.)
#![allow(non_snake_case)]
use static_call::static_call;

fn second(_a: u64, b: u64) -> u64 {
    b
}

// Arg 1 named `__i0`: the caller's `let __i0 = into_register(a)` shadows
// it, so the second register gets `a`.
#[static_call]
static SECOND: fn(a: u64, __i0: u64) -> u64 = second;

#[test]
fn an_argument_named_like_a_register_local_keeps_its_value() {
    assert_eq!(second(1, 2), 2);
    assert_eq!(SECOND.call(1, 2), 2);
}

fn str_len(_n: u64, s: &'static str) -> usize {
    s.len()
}

// Arg 0 named `__i2`: in the shim, `let __i2 = from_register(__i0)`
// shadows the parameter that carries `s`'s length, so `s` is rebuilt with
// length = the first argument: an out-of-bounds `&str` from safe code.
#[static_call]
static STR_LEN: fn(__i2: u64, s: &'static str) -> usize = str_len;

#[test]
fn a_str_argument_keeps_its_length() {
    assert_eq!(STR_LEN.call(7, "hi"), 2);
}

fn two(a: String, b: String) -> (String, String) {
    (a, b)
}

// Arg 1 named `__m_a`: the caller's `let __m_a = ManuallyDrop::new(a)`
// shadows it; the second spill is then `a` again (a double drop), and the
// user's second String is dropped by the caller.
#[static_call]
static TWO: fn(a: String, __m_a: String) -> (String, String) = two;

#[test]
fn two_strings_arrive_as_given() {
    let (x, y) = TWO.call("first".to_string(), "second".to_string());
    assert_eq!((x.as_str(), y.as_str()), ("first", "second"));
}
