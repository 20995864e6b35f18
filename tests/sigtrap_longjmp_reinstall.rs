//! Handlers that leave with `siglongjmp`, with our handler re-installed on
//! top of a crash reporter (see tests/sigtrap_reinstall.rs): a handler
//! `first` installed before `init`, the `reporter` installed after it
//! (chaining to ours when it does not escape), `init()` again putting ours
//! back on top. Then
//!
//! 1. the reporter escapes from every trap: each genuine `int3` reaches it
//!    (and never `first`), however many times the same stack address traps;
//! 2. the reporter passes every trap back to us and `first` escapes: each
//!    reaches the reporter once and `first` once, no loop, no death.
//!
//! Meanwhile updates run whose traps our handler emulates. Afterwards nothing
//! of ours is left counted and the unload path reports "Clean". In a child
//! process, so that a killed process fails the test.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;
mod longjmp_support;

use common::{t1, t2};
use longjmp_support::{escape, genuine_int3, guarded, sigtrap_blocked, RETURNED};
use static_call::__private::{signal_bookkeeping, unload_now};
use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

static FIRST_TRAPS: AtomicU64 = AtomicU64::new(0);
static REPORTER_TRAPS: AtomicU64 = AtomicU64::new(0);
/// The handler the reporter replaced (ours), which it chains to.
static REPORTER_PREVIOUS: AtomicUsize = AtomicUsize::new(0);
/// Phase 1: the reporter escapes; phase 2: it chains and `first` escapes.
static REPORTER_ESCAPES: AtomicBool = AtomicBool::new(false);

extern "C" fn first(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    FIRST_TRAPS.fetch_add(1, SeqCst);
    escape();
}

extern "C" fn reporter(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    REPORTER_TRAPS.fetch_add(1, SeqCst);
    if REPORTER_ESCAPES.load(SeqCst) {
        escape();
    }
    let prev = REPORTER_PREVIOUS.load(SeqCst);
    if prev > 1 {
        // SAFETY: an SA_SIGINFO handler address the kernel gave us.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(prev) };
        f(sig, info, ctx);
    }
}

fn current() -> usize {
    let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: query only.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) }, 0);
    // SAFETY: filled in.
    unsafe { cur.assume_init() }.sa_sigaction
}

#[test]
fn longjmp_handlers_below_and_above_a_reinstalled_handler() {
    let out = common::run_child("child_longjmp_reinstalled", &[]);
    eprintln!("{out}");
}

/// `rounds` genuine traps, each escaped from, interleaved with updates while
/// another thread calls the site; returns how many traps were emulated.
fn genuine_traps_during_updates(rounds: u64) -> u64 {
    static STOP: AtomicBool = AtomicBool::new(false);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    STOP.store(false, SeqCst);
    let caller = std::thread::spawn(|| {
        while !STOP.load(SeqCst) {
            let r = site(7);
            if !matches!(r >> 48, 1..=2) || r & 0xffff != 7 {
                WRONG.fetch_add(1, SeqCst);
            }
        }
    });
    let base = static_call::stats().traps_emulated;
    let mut i = 0u64;
    while i < rounds || static_call::stats().traps_emulated == base {
        assert!(i < 1_000_000, "no trap emulated in {i} updates");
        let f = if i.is_multiple_of(2) { t2 } else { t1 };
        K.update(f);
        assert_eq!(site(1), f(1));
        assert!(guarded(genuine_int3), "genuine trap {i} escaped");
        i += 1;
    }
    STOP.store(true, SeqCst);
    caller.join().unwrap();
    assert_eq!(WRONG.load(SeqCst), 0);
    assert!(!sigtrap_blocked());
    eprintln!("{i} genuine traps, {:?}", static_call::stats());
    i
}

#[test]
#[ignore = "run in a child process by its parent test"]
fn child_longjmp_reinstalled() {
    if !common::in_child("child_longjmp_reinstalled") {
        return;
    }
    longjmp_support::install(first);
    static_call::init().unwrap();
    let ours = current();
    let replaced = longjmp_support::install(reporter);
    assert_eq!(replaced.sa_sigaction, ours);
    REPORTER_PREVIOUS.store(ours, SeqCst);
    static_call::init().unwrap();
    assert_eq!(current(), ours, "our handler is back on top");

    // 1. The reporter escapes: every trap reaches it, none reaches `first`.
    REPORTER_ESCAPES.store(true, SeqCst);
    let n = genuine_traps_during_updates(500);
    assert_eq!((REPORTER_TRAPS.load(SeqCst), FIRST_TRAPS.load(SeqCst)), (n, 0));

    // 2. The reporter passes each trap back to us; we pass it to `first`,
    // which escapes from inside the reporter's call of our handler.
    REPORTER_ESCAPES.store(false, SeqCst);
    let m = genuine_traps_during_updates(500);
    assert_eq!((REPORTER_TRAPS.load(SeqCst), FIRST_TRAPS.load(SeqCst)), (n + m, m));
    assert_eq!(RETURNED.load(SeqCst), 0);

    assert_eq!(signal_bookkeeping(), (0, [0, 0], false), "threads in our handler, readers, writer");
    assert_eq!(unload_now(), "Clean");
    eprintln!("child child_longjmp_reinstalled: done");
}
