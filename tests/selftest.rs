//! The Linux kernel's static call selftest (`kernel/static_call_selftest.c`,
//! formerly at the end of `kernel/static_call_inline.c`), ported: a key that
//! defaults to `func_a`, then the table `{NULL, 2, 3}, {func_b, 2, 4},
//! {func_a, 2, 3}` (update when the entry has a function, then call with
//! `val` and expect `expect`), plus `get()` queries and the site states at
//! every step.
use static_call::{static_call, SiteState};

mod common;

extern "C" fn func_a(x: i32) -> i32 {
    x + 1
}

extern "C" fn func_b(x: i32) -> i32 {
    x + 2
}

#[static_call]
static SC_SELFTEST: extern "C" fn(i32) -> i32 = func_a;

struct StaticCallData {
    func: Option<extern "C" fn(i32) -> i32>,
    val: i32,
    expect: i32,
}

const STATIC_CALL_DATA: [StaticCallData; 3] = [
    StaticCallData { func: None, val: 2, expect: 3 },
    StaticCallData { func: Some(func_b), val: 2, expect: 4 },
    StaticCallData { func: Some(func_a), val: 2, expect: 3 },
];

#[inline(never)]
fn sc_selftest(x: i32) -> i32 {
    SC_SELFTEST.call(x)
}

fn addr(f: extern "C" fn(i32) -> i32) -> usize {
    f as usize
}

/// Every site of the key calls `f` directly (after `init`).
#[track_caller]
fn assert_direct_to(f: extern "C" fn(i32) -> i32) {
    if !static_call::PATCHING {
        assert!(SC_SELFTEST.sites().is_empty());
        return;
    }
    let sites = SC_SELFTEST.sites();
    assert!(!sites.is_empty());
    for s in sites {
        assert_eq!(s.state(), SiteState::Direct, "{s}");
        assert_eq!(common::call_target(s.address(), s.bytes()), Some(addr(f)), "{s}");
    }
}

fn run_table() {
    // Every pass starts (and ends) with `func_a` installed.
    let mut want: extern "C" fn(i32) -> i32 = func_a;
    for (i, scd) in STATIC_CALL_DATA.iter().enumerate() {
        if let Some(func) = scd.func {
            let old = SC_SELFTEST.update(func).expect("the key had a target");
            // Compared by behaviour: a small function may have one copy per
            // codegen unit, so only pointers from one coercion compare equal.
            assert_eq!(old(scd.val), want(scd.val), "entry {i}: update returns the previous target");
            assert_eq!(SC_SELFTEST.get().map(addr), Some(addr(func)), "entry {i}: get() is what update stored");
            want = func;
        }
        assert_eq!(sc_selftest(scd.val), scd.expect, "entry {i}");
        let current = SC_SELFTEST.get().expect("the key always has a target here");
        assert_eq!(current(scd.val), want(scd.val), "entry {i}: get() is the target last set");
        assert_eq!(current(scd.val), scd.expect, "entry {i}: get() returns the function the sites call");
        assert_direct_to(current);
    }
}

#[test]
fn kernel_selftest_table() {
    // Before init: the default target, through the trampoline.
    assert_eq!(SC_SELFTEST.get().map(|f| f(2)), Some(3));
    assert_eq!(sc_selftest(2), 3);
    if static_call::PATCHING {
        assert!(SC_SELFTEST.sites().iter().all(|s| s.state() == SiteState::Trampoline));
    }
    static_call::init().unwrap();
    assert_direct_to(SC_SELFTEST.get().unwrap());
    run_table();
    // The table ends where it began: running it again gives the same answers.
    run_table();
    assert_eq!(SC_SELFTEST.get().map(|f| f(2)), Some(3));
    assert_eq!(static_call::stats().updates, 4, "two updates per pass of the table");
}
