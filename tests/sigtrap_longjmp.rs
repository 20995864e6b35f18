//! A SIGTRAP handler installed before `init` that never returns: it leaves
//! every trap with `siglongjmp` (as crash handlers, JIT guards and test
//! harnesses do). Each genuine `int3` (1,000 and more, from two threads)
//! must still reach it, while updates go on whose traps our handler
//! emulates; afterwards nothing of ours is left counted (our handler holds
//! no state that only a return would release), and the unload path, which
//! waits for threads in our handler, finishes at once ("Clean", not
//! "GaveUp" after a second). Run in a child process, so that a trap that
//! kills (a longjmp'd trap taken for a loop, then the default action)
//! fails the test instead of the test binary.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;
mod longjmp_support;

use common::{t1, t2};
use longjmp_support::{escape, genuine_int3, guarded, sigtrap_blocked, RETURNED};
use static_call::__private::{signal_bookkeeping, unload_now};
use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

static USER_TRAPS: AtomicU64 = AtomicU64::new(0);
/// Traps the user handler got that were not a genuine `int3`.
static USER_BAD: AtomicU64 = AtomicU64::new(0);

/// The user's handler: counts, then leaves with `siglongjmp`.
extern "C" fn user_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO arguments.
    if sig != libc::SIGTRAP || unsafe { (*info).si_code } != libc::SI_KERNEL {
        USER_BAD.fetch_add(1, SeqCst);
    }
    USER_TRAPS.fetch_add(1, SeqCst);
    escape();
}

#[test]
fn every_genuine_trap_reaches_a_handler_that_longjmps_out() {
    let out = common::run_child("child_longjmp_handler_before_init", &[]);
    eprintln!("{out}");
}

#[test]
#[ignore = "run in a child process by its parent test"]
fn child_longjmp_handler_before_init() {
    if !common::in_child("child_longjmp_handler_before_init") {
        return;
    }
    longjmp_support::install(user_handler);
    assert!(guarded(genuine_int3), "the handler escapes (before init)");
    assert!(!sigtrap_blocked(), "the escape restored the mask");
    static_call::init().unwrap();
    assert_eq!(site(1), t1(1));

    // Another thread calls the site (landing on the updates' int3s) and
    // executes genuine int3s that the handler escapes from.
    static STOP: AtomicBool = AtomicBool::new(false);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    static THREAD_GENUINE: AtomicU64 = AtomicU64::new(0);
    let caller = std::thread::spawn(|| {
        let mut n = 0u64;
        while !STOP.load(SeqCst) {
            let r = site(7);
            if !matches!(r >> 48, 1..=2) || r & 0xffff != 7 {
                WRONG.fetch_add(1, SeqCst);
            }
            n += 1;
            if n.is_multiple_of(64) {
                if !guarded(genuine_int3) {
                    WRONG.fetch_add(1, SeqCst);
                }
                THREAD_GENUINE.fetch_add(1, SeqCst);
            }
        }
    });
    let mut genuine = 1u64;
    let mut i = 0u64;
    while i < 1_000 || static_call::stats().traps_emulated == 0 || THREAD_GENUINE.load(SeqCst) < 100 {
        assert!(i < 1_000_000, "no trap emulated in {i} updates");
        let f = if i.is_multiple_of(2) { t2 } else { t1 };
        K.update(f);
        assert_eq!(site(1), f(1));
        assert!(guarded(genuine_int3), "genuine trap {genuine} escaped");
        genuine += 1;
        assert!(USER_TRAPS.load(SeqCst) >= genuine, "every genuine trap reached the user's handler");
        i += 1;
    }
    STOP.store(true, SeqCst);
    caller.join().unwrap();
    let s = static_call::stats();
    let thread_genuine = THREAD_GENUINE.load(SeqCst);
    eprintln!("{i} updates, {genuine} + {thread_genuine} genuine traps escaped from, {s:?}");
    assert_eq!(WRONG.load(SeqCst), 0, "a call reached a wrong target, or a trap did not escape");
    assert_eq!(USER_TRAPS.load(SeqCst), genuine + thread_genuine, "every genuine trap reached the user's handler");
    assert_eq!(USER_BAD.load(SeqCst), 0);
    assert_eq!(RETURNED.load(SeqCst), 0);
    assert!(s.traps_emulated > 0, "{s:?}");
    assert!(!sigtrap_blocked());

    // Nothing of ours is still counted, and the unload path (what process
    // exit or dlclose runs) does not wait for the abandoned handlers.
    assert_eq!(signal_bookkeeping(), (0, [0, 0], false), "threads in our handler, readers, writer");
    assert_eq!(unload_now(), "Clean");
    // Unloaded, our handler is out of the chain: the user's is current again.
    assert!(guarded(genuine_int3));
    assert_eq!(USER_TRAPS.load(SeqCst), genuine + thread_genuine + 1);
    eprintln!("child child_longjmp_handler_before_init: done");
}
