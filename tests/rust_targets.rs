//! Keys of Rust `fn` types (DESIGN §8): fn items, generic instantiations,
//! associated fns and non-capturing closures as targets, any `Sized`
//! argument and result types, panics that reach the caller.

use static_call::{static_call, SiteState};
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub len: usize,
}

impl Response {
    fn ok(len: usize) -> Response {
        Response { status: 200, len }
    }
}

fn not_found(_: &Request) -> Response {
    Response { status: 404, len: 0 }
}

fn upper(r: &Request) -> Response {
    Response::ok(r.path.to_uppercase().len() + 1000)
}

#[static_call]
static HANDLER: fn(&Request) -> Response = not_found;

#[test]
fn a_handler_takes_fn_items_and_closures() {
    let req = Request { path: "/abc".into() };
    assert_eq!(HANDLER.call(&req), Response { status: 404, len: 0 });
    let old = HANDLER.update(upper);
    assert_eq!(old.map(|f| f(&req)), Some(Response { status: 404, len: 0 }));
    assert_eq!(HANDLER.call(&req), Response::ok(1004));
    HANDLER.update(|r: &Request| Response::ok(r.path.len()));
    assert_eq!(HANDLER.call(&req), Response::ok(4));
    assert_eq!(HANDLER.get().map(|f| f(&req)), Some(Response::ok(4)));
    HANDLER.try_update(upper).unwrap();
    assert_eq!(HANDLER.call(&req), Response::ok(1004));
    static_call::batch(|b| {
        b.update(&HANDLER, not_found);
    })
    .unwrap();
    assert_eq!(HANDLER.call(&req), Response { status: 404, len: 0 });
    let sites = HANDLER.sites();
    // Sites are recorded where they are patched (empty on the portable
    // backend), and patched `Direct` unless patching is impossible here.
    assert_eq!(sites.is_empty(), !static_call::PATCHING);
    match static_call::mode() {
        static_call::Mode::Patching(_) => {
            assert!(sites.iter().all(|s| s.state() == SiteState::Direct), "{sites:?}")
        }
        _ => assert!(sites.iter().all(|s| s.state() == SiteState::Trampoline), "{sites:?}"),
    }
    let dbg = format!("{HANDLER:?}");
    assert!(dbg.starts_with("HANDLER {"), "{dbg}");
}

fn len(s: &str) -> usize {
    s.len()
}

#[static_call]
static LEN: fn(&str) -> usize = len;

#[test]
fn str_arguments_travel_in_two_registers() {
    assert_eq!(LEN.call("hello"), 5);
    LEN.update(|s: &str| s.chars().filter(|c| *c == 'l').count());
    assert_eq!(LEN.call("hello"), 2);
    LEN.update(len);
    assert_eq!(LEN.call(""), 0);
}

#[derive(Debug, Default)]
pub struct Vm {
    pub acc: i64,
    pub log: Vec<i64>,
}

#[derive(Debug, PartialEq)]
pub enum VmError {
    Overflow(i64),
}

fn op_add(vm: &mut Vm, x: i64) -> Result<(), VmError> {
    vm.acc = vm.acc.checked_add(x).ok_or(VmError::Overflow(x))?;
    vm.log.push(x);
    Ok(())
}

fn op_mul(vm: &mut Vm, x: i64) -> Result<(), VmError> {
    vm.acc = vm.acc.checked_mul(x).ok_or(VmError::Overflow(x))?;
    Ok(())
}

#[static_call]
static OP: fn(&mut Vm, i64) -> Result<(), VmError> = op_add;

#[test]
fn an_interpreter_op_mutates_and_returns_a_result() {
    let mut vm = Vm::default();
    assert_eq!(OP.call(&mut vm, 5), Ok(()));
    assert_eq!(OP.call(&mut vm, i64::MAX), Err(VmError::Overflow(i64::MAX)));
    assert_eq!(vm.acc, 5);
    OP.update(op_mul);
    assert_eq!(OP.call(&mut vm, 3), Ok(()));
    assert_eq!(vm.acc, 15);
    assert_eq!(vm.log, vec![5]);
}

fn mix(s: String, bytes: &[u8], c: Option<char>) -> (String, usize) {
    let mut s = s;
    if let Some(c) = c {
        s.push(c);
    }
    (s, bytes.len())
}

// The key's own attributes reach every item the macro emits for it.
#[static_call]
#[allow(clippy::type_complexity)]
static MIX: fn(String, &[u8], Option<char>) -> (String, usize) = mix;

#[test]
fn owned_and_borrowed_values_pass_through_memory_and_registers() {
    assert_eq!(MIX.call("ab".to_string(), b"xyz", Some('!')), ("ab!".to_string(), 3));
    MIX.update(|s: String, b: &[u8], _c: Option<char>| (s.repeat(2), b.len() * 10));
    assert_eq!(MIX.call("q".to_string(), b"12", None), ("qq".to_string(), 20));
}

fn add<T: core::ops::Add<Output = T>>(a: T, b: T) -> T {
    a + b
}

struct Scale;
impl Scale {
    fn half(x: u32, _: u32) -> u32 {
        x / 2
    }
}

#[static_call]
static BIN: fn(u32, u32) -> u32 = add::<u32>;

#[test]
fn generic_instantiations_and_associated_fns_are_targets() {
    assert_eq!(BIN.call(2, 3), 5);
    BIN.update(Scale::half);
    assert_eq!(BIN.call(9, 0), 4);
    BIN.update(add::<u32>);
    assert_eq!(BIN.call(40, 2), 42);
}

fn boom(x: u64) -> u64 {
    if x == 13 {
        std::panic::panic_any(format!("unlucky {x}"));
    }
    x * 2
}

#[static_call]
static MAYBE: fn(u64) -> u64 = boom;

#[test]
fn a_panic_reaches_the_caller_with_its_payload_and_the_key_keeps_working() {
    assert_eq!(MAYBE.call(4), 8);
    for round in 0..3 {
        let err = catch_unwind(AssertUnwindSafe(|| MAYBE.call(13))).unwrap_err();
        assert_eq!(err.downcast_ref::<String>().map(String::as_str), Some("unlucky 13"), "round {round}");
        assert_eq!(MAYBE.call(5), 10);
    }
    MAYBE.update(|x: u64| if x == 0 { panic!("zero") } else { x + 1 });
    let err = catch_unwind(|| MAYBE.call(0)).unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"zero"));
    assert_eq!(MAYBE.call(1), 2);
}

use std::sync::atomic::{AtomicUsize, Ordering};
static DROPS: AtomicUsize = AtomicUsize::new(0);

pub struct Counted(pub u64);
impl Drop for Counted {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

fn consume(c: Counted, keep: bool) -> Option<Counted> {
    keep.then_some(c)
}

#[static_call]
static CONSUME: fn(Counted, bool) -> Option<Counted> = consume;

#[test]
fn values_moved_through_the_frame_are_dropped_exactly_once() {
    DROPS.store(0, Ordering::SeqCst);
    assert!(CONSUME.call(Counted(1), false).is_none());
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    let kept = CONSUME.call(Counted(2), true).unwrap();
    assert_eq!(kept.0, 2);
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    drop(kept);
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    CONSUME.update(|c: Counted, _| -> Option<Counted> {
        drop(c);
        panic!("after dropping")
    });
    assert!(catch_unwind(AssertUnwindSafe(|| CONSUME.call(Counted(3), true))).is_err());
    assert_eq!(DROPS.load(Ordering::SeqCst), 3);
}

#[allow(clippy::too_many_arguments)]
fn many(a: u64, b: &str, c: &[u32], d: f64, e: u8, f: &u64, g: char, h: f32, i: i64) -> f64 {
    a as f64
        + b.len() as f64
        + c.iter().sum::<u32>() as f64
        + d
        + e as f64
        + *f as f64
        + g as u32 as f64
        + h as f64
        + i as f64
}

#[static_call]
#[allow(clippy::type_complexity)]
static MANY: fn(u64, &str, &[u32], f64, u8, &u64, char, f32, i64) -> f64 = many;

#[test]
fn arguments_beyond_the_registers_go_through_memory() {
    let f = 100u64;
    let got = MANY.call(1, "ab", &[1, 2, 3], 0.5, 7, &f, 'A', 0.25, -10);
    assert_eq!(got, 1.0 + 2.0 + 6.0 + 0.5 + 7.0 + 100.0 + 65.0 + 0.25 - 10.0);
}

fn first_word(s: &str) -> &str {
    s.split(' ').next().unwrap_or("")
}

#[static_call]
static WORD: for<'a> fn(&'a str) -> &'a str = first_word;

#[static_call]
static PICK: for<'a> fn(&'a str, &'a str) -> &'a str = |a, b| if a.len() >= b.len() { a } else { b };

#[static_call]
static SCALE: fn(f32) -> f32 = |x| x * 1.5;

#[static_call]
static UPPER: fn(char) -> char = |c| c.to_ascii_uppercase();

#[test]
fn references_floats_and_chars_come_back_in_registers() {
    assert_eq!(WORD.call("hello world"), "hello");
    WORD.update(|s: &str| s.rsplit(' ').next().unwrap_or(""));
    assert_eq!(WORD.call("hello world"), "world");
    assert_eq!(PICK.call("ab", "abc"), "abc");
    assert_eq!(SCALE.call(2.0), 3.0);
    assert_eq!(UPPER.call('q'), 'Q');
}

#[static_call]
static RAW: unsafe fn(*const u8) -> u8 = |p| 1 + unsafe { *p };

#[test]
fn an_unsafe_key_takes_safe_targets_and_its_call_is_unsafe() {
    let x = 41u8;
    // SAFETY: `&x` is valid for reads.
    assert_eq!(unsafe { RAW.call(&x) }, 42);
    RAW.update(|p: *const u8| p.is_null() as u8);
    // SAFETY: the target does not dereference.
    assert_eq!(unsafe { RAW.call(core::ptr::null()) }, 1);
    let got: Option<unsafe fn(*const u8) -> u8> = RAW.get();
    assert!(got.is_some());
}

#[static_call]
static UNIT: fn(&mut Vec<u32>) = |v| v.push(1);

#[test]
fn unit_results_and_batches_of_both_kinds() {
    let mut v = Vec::new();
    UNIT.call(&mut v);
    static_call::batch(|b| {
        b.update(&UNIT, |v: &mut Vec<u32>| v.push(2));
        b.update(&BIN, Scale::half);
    })
    .unwrap();
    UNIT.call(&mut v);
    assert_eq!(v, vec![1, 2]);
    assert_eq!(BIN.call(10, 0), 5);
    BIN.update(add::<u32>);
}

#[static_call(out_of_line)]
static OOL: fn(&str, String) -> String = |a, b| format!("{a}{b}");

#[test]
fn an_out_of_line_rust_key_calls_through_its_trampoline() {
    assert_eq!(OOL.call("x", "y".into()), "xy");
    OOL.update(|a: &str, b: String| format!("{b}{a}"));
    assert_eq!(OOL.call("x", "y".into()), "yx");
    assert!(OOL.sites().is_empty());
}
