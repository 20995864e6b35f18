//! Targets that have the very address of the crate's no-target stubs: a
//! user's `extern "C" fn ignore(_: u32) {}` or `extern "C" fn zero() -> u64
//! { 0 }` is the same machine code as the stub a key's slot holds while it
//! has no target, and LLVM's MergeFunctions or the linker's identical-code
//! folding (`-C link-arg=-Wl,--icf=all`) can give both one address. "No
//! target" must be a state the key records, never an address compared with
//! the stub's (DESIGN.md 3.8): such a target is a target like any other.
//! The stub's address comes from a test hook and is made a target of the
//! key's type, which is exactly what the merge produces; CI also builds this
//! test with `--icf=all`, where the test's own `ignore` and `zero` may be
//! folded with the stubs (printed).
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::{static_call, SiteState, StaticCall};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

static COUNTED: AtomicU64 = AtomicU64::new(0);

extern "C" fn count(x: u32) {
    COUNTED.fetch_add(x as u64, SeqCst);
}
extern "C" fn count_twice(x: u32) {
    COUNTED.fetch_add(2 * x as u64, SeqCst);
}
extern "C" fn seven() -> u64 {
    7
}
extern "C" fn nine() -> u64 {
    9
}

/// The same machine code as the crate's stubs: identical-code folding may
/// give them the stubs' addresses.
extern "C" fn ignore(_: u32) {}
extern "C" fn zero() -> u64 {
    0
}

#[static_call]
static UNIT: extern "C" fn(u32) = count;
#[static_call]
static ZERO: extern "C" fn() -> u64 = seven;

#[inline(never)]
fn call_unit(x: u32) {
    UNIT.call(x)
}
#[inline(never)]
fn call_zero() -> u64 {
    ZERO.call()
}

/// The address of a target of `UNIT`.
fn u(f: extern "C" fn(u32)) -> usize {
    f as usize
}
/// The address of a target of `ZERO`.
fn z(f: extern "C" fn() -> u64) -> usize {
    f as usize
}

/// Every site of `UNIT` (`unit`) or of `ZERO` is `Direct` to `f`.
#[track_caller]
fn assert_direct_to(unit: bool, f: usize) {
    let sites = if unit { UNIT.sites() } else { ZERO.sites() };
    assert!(!sites.is_empty());
    for s in sites {
        assert_eq!(s.state(), SiteState::Direct, "site {:#x}: {s} ({:?})", s.address(), s.reason());
        assert_eq!(common::call_target(s.address(), s.bytes()), Some(f), "site {:#x} calls {f:#x}: {s}", s.address());
    }
}

/// `try_update`, its error printed.
#[track_caller]
fn must<T>(what: &str, r: Result<T, static_call::Error>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: Err({e:?}): {e}"))
}

/// The unit key through `merged` (the stub's address, or the test's
/// `ignore` where it was folded): a target like any other.
fn unit_key_through(merged: extern "C" fn(u32)) {
    let m = merged as usize;
    let before = COUNTED.load(SeqCst);
    call_unit(1);
    assert_eq!(COUNTED.load(SeqCst), before + 1, "UNIT starts on count");

    let old = must("UNIT.try_update(merged)", UNIT.try_update(merged));
    assert_eq!(old.map(|f| f as usize), Some(u(count)), "update returns the previous target");
    assert_eq!(UNIT.get().map(|f| f as usize), Some(m), "get() is the merged target, not None");
    assert_direct_to(true, m);
    call_unit(5);
    assert_eq!(COUNTED.load(SeqCst), before + 1, "the merged target does nothing");

    let old = must("UNIT.try_update(count_twice)", UNIT.try_update(count_twice));
    assert_eq!(old.map(|f| f as usize), Some(m), "update returns the merged target");
    assert_eq!(UNIT.get().map(|f| f as usize), Some(u(count_twice)));
    assert_direct_to(true, u(count_twice));
    call_unit(3);
    assert_eq!(COUNTED.load(SeqCst), before + 7);

    let old = must("UNIT.try_update(merged) again", UNIT.try_update(merged));
    assert_eq!(old.map(|f| f as usize), Some(u(count_twice)));
    assert_eq!(UNIT.get().map(|f| f as usize), Some(m));
    assert_direct_to(true, m);
    call_unit(5);
    assert_eq!(COUNTED.load(SeqCst), before + 7);

    let old = must("UNIT.try_reset()", UNIT.try_reset());
    assert_eq!(old.map(|f| f as usize), Some(m), "reset returns the merged target");
    assert_eq!(UNIT.get().map(|f| f as usize), None, "no target after reset");
    assert!(UNIT.sites().iter().all(|s| s.state() == SiteState::Nop), "sites are nops after reset");
    call_unit(5);
    assert_eq!(COUNTED.load(SeqCst), before + 7);

    let old = must("UNIT.try_update(count) after reset", UNIT.try_update(count));
    assert_eq!(old.map(|f| f as usize), None);
    assert_direct_to(true, u(count));
    call_unit(1);
    assert_eq!(COUNTED.load(SeqCst), before + 8);
    let old = must("UNIT.try_update(merged) after reset", UNIT.try_update(merged));
    assert_eq!(old.map(|f| f as usize), Some(u(count)));
    assert_eq!(UNIT.get().map(|f| f as usize), Some(m));
    assert_direct_to(true, m);
    let old = must("UNIT.try_update(count) last", UNIT.try_update(count));
    assert_eq!(old.map(|f| f as usize), Some(m));
    assert_direct_to(true, u(count));
}

/// The zeroable key through `merged`.
fn zero_key_through(merged: extern "C" fn() -> u64) {
    let m = merged as usize;
    assert_eq!(call_zero(), 7, "ZERO starts on seven");

    let old = must("ZERO.try_update(merged)", ZERO.try_update(merged));
    assert_eq!(old.map(|f| f as usize), Some(z(seven)), "update returns the previous target");
    assert_eq!(ZERO.get().map(|f| f as usize), Some(m), "get() is the merged target, not None");
    assert_direct_to(false, m);
    assert_eq!(call_zero(), 0);

    let old = must("ZERO.try_update(nine)", ZERO.try_update(nine));
    assert_eq!(old.map(|f| f as usize), Some(m), "update returns the merged target");
    assert_direct_to(false, z(nine));
    assert_eq!(call_zero(), 9);

    let old = must("ZERO.try_update(merged) again", ZERO.try_update(merged));
    assert_eq!(old.map(|f| f as usize), Some(z(nine)));
    assert_eq!(ZERO.get().map(|f| f as usize), Some(m));
    assert_direct_to(false, m);
    assert_eq!(call_zero(), 0);

    let old = must("ZERO.try_reset()", ZERO.try_reset());
    assert_eq!(old.map(|f| f as usize), Some(m), "reset returns the merged target");
    assert_eq!(ZERO.get().map(|f| f as usize), None, "no target after reset");
    assert!(ZERO.sites().iter().all(|s| s.state() == SiteState::Zero), "sites return zero after reset");
    assert_eq!(call_zero(), 0);

    let old = must("ZERO.try_update(seven) after reset", ZERO.try_update(seven));
    assert_eq!(old.map(|f| f as usize), None);
    assert_direct_to(false, z(seven));
    assert_eq!(call_zero(), 7);
    let old = must("ZERO.try_update(merged) after reset", ZERO.try_update(merged));
    assert_eq!(old.map(|f| f as usize), Some(z(seven)));
    assert_eq!(ZERO.get().map(|f| f as usize), Some(m));
    assert_direct_to(false, m);
    let old = must("ZERO.try_update(seven) last", ZERO.try_update(seven));
    assert_eq!(old.map(|f| f as usize), Some(m));
    assert_eq!(call_zero(), 7);
}

/// The stub's address, and whether the test's look-alike `f` was folded
/// with it (printed; required where CI builds with `--icf=all`).
fn stub_and_folding(stub: usize, f: usize, what: &str) -> usize {
    let folded = f == stub;
    eprintln!("{what} {f:#x} {} the no-target stub {stub:#x}", if folded { "IS" } else { "is not" });
    stub
}

#[test]
fn unit_target_merged_with_the_nop_stub() {
    static_call::init().unwrap();
    let stub = stub_and_folding(static_call::__private::no_target_stub(UNIT.key()), u(ignore), "ignore");
    // SAFETY: the stub is an `extern "C" fn()`, which ignores the key's
    // argument: exactly what a merged target is.
    let merged = unsafe { std::mem::transmute::<usize, extern "C" fn(u32)>(stub) };
    unit_key_through(merged);
    // The test's own look-alike, folded with the stub or not.
    unit_key_through(ignore);
    eprintln!("{:?}", static_call::stats());
}

#[test]
fn zero_target_merged_with_the_zero_stub() {
    static_call::init().unwrap();
    let stub = stub_and_folding(static_call::__private::no_target_stub(ZERO.key()), z(zero), "zero");
    // SAFETY: the stub is an `extern "C" fn() -> u64`: the key's type.
    let merged = unsafe { std::mem::transmute::<usize, extern "C" fn() -> u64>(stub) };
    zero_key_through(merged);
    zero_key_through(zero);
    eprintln!("{:?}", static_call::stats());
}

/// Where CI builds this test with identical-code folding
/// (`STATIC_CALL_EXPECT_FOLDED` set), the merge must really have happened
/// for at least one of the two look-alikes.
#[test]
fn folding_happened_where_expected() {
    if std::env::var_os("STATIC_CALL_EXPECT_FOLDED").is_none() {
        return;
    }
    let unit = static_call::__private::no_target_stub(UNIT.key()) == u(ignore);
    let zero = static_call::__private::no_target_stub(ZERO.key()) == z(zero);
    assert!(unit || zero, "--icf=all folded `ignore` or `zero` with the crate's stub (unit {unit}, zero {zero})");
}
