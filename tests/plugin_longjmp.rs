//! Three copies of the crate chained (beta's handler on alpha's on the
//! host's) on top of a user SIGTRAP handler that leaves every trap with
//! `siglongjmp`. A genuine `int3` goes down the copies (each asks the next
//! through its header's `dispatch`) and the top one jumps to the user's
//! handler, which escapes: every one of 1,000 and more (from two threads)
//! reaches it, while all three copies update and their traps are emulated.
//! Afterwards no copy has anything left counted, and each copy's unload
//! path reports "Clean". In a child process, so that a killed process fails
//! the test.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;
mod longjmp_support;
mod plugin_support;

use longjmp_support::{escape, genuine_int3, guarded, RETURNED};
use plugin_support::{current_sigtrap_handler, Plugin};
use static_call::__private::{signal_bookkeeping, unload_now};
use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

extern "C" fn host_a(x: u64) -> u64 {
    x + 1
}
extern "C" fn host_b(x: u64) -> u64 {
    x + 2
}

#[static_call]
static HOST: extern "C" fn(u64) -> u64 = host_a;

#[inline(never)]
fn host(x: u64) -> u64 {
    HOST.call(x)
}

type F = extern "C" fn(u64) -> u64;

static USER_TRAPS: AtomicU64 = AtomicU64::new(0);

extern "C" fn user_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    USER_TRAPS.fetch_add(1, SeqCst);
    escape();
}

#[test]
fn genuine_traps_through_three_copies_reach_a_handler_that_longjmps_out() {
    let out = common::run_child("child_three_copies_longjmp", &[]);
    eprintln!("{out}");
}

#[test]
#[ignore = "run in a child process by its parent test"]
fn child_three_copies_longjmp() {
    if !common::in_child("child_three_copies_longjmp") {
        return;
    }
    longjmp_support::install(user_handler);
    static_call::init().unwrap();
    let alpha = Plugin::load("alpha");
    let beta = Plugin::load("beta");
    let alpha_init: extern "C" fn() -> i32 = alpha.func("alpha_init");
    let beta_init: extern "C" fn() -> i32 = beta.func("beta_init");
    let alpha_mode: extern "C" fn(u32) -> i32 = alpha.func("alpha_set_mode");
    let beta_mode: extern "C" fn(u32) -> i32 = beta.func("beta_set_mode");
    let alpha_updates: extern "C" fn() -> u64 = alpha.func("alpha_updates");
    let beta_updates: extern "C" fn() -> u64 = beta.func("beta_updates");
    let alpha_idle: extern "C" fn() -> i32 = alpha.func("alpha_signal_idle");
    let beta_idle: extern "C" fn() -> i32 = beta.func("beta_signal_idle");
    let alpha_unload: extern "C" fn() -> i32 = alpha.func("alpha_unload_now");
    let beta_unload: extern "C" fn() -> i32 = beta.func("beta_unload_now");
    assert_eq!(alpha_init(), 0);
    assert_eq!(beta_init(), 0);
    assert!(beta.contains(current_sigtrap_handler()), "beta's handler is on top of the chain");

    static STOP: AtomicBool = AtomicBool::new(false);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    static THREAD_GENUINE: AtomicU64 = AtomicU64::new(0);
    static ALPHA_WORK: AtomicUsize = AtomicUsize::new(0);
    static BETA_WORK: AtomicUsize = AtomicUsize::new(0);
    ALPHA_WORK.store(alpha.func::<F>("alpha_work") as usize, SeqCst);
    BETA_WORK.store(beta.func::<F>("beta_work") as usize, SeqCst);
    let caller = std::thread::spawn(|| {
        // SAFETY: the plugins' exported `extern "C" fn(u64) -> u64`s, loaded
        // until after this thread is joined.
        let [alpha_work, beta_work] =
            [&ALPHA_WORK, &BETA_WORK].map(|f| unsafe { std::mem::transmute::<usize, F>(f.load(SeqCst)) });
        let mut n = 0u64;
        while !STOP.load(SeqCst) {
            let ok = matches!(host(100), 101 | 102)
                && matches!(alpha_work(3), 103 | 300)
                && matches!(beta_work(3), 203 | 600);
            if !ok {
                WRONG.fetch_add(1, SeqCst);
            }
            n += 1;
            if n.is_multiple_of(16) {
                if !guarded(genuine_int3) {
                    WRONG.fetch_add(1, SeqCst);
                }
                THREAD_GENUINE.fetch_add(1, SeqCst);
            }
        }
    });
    let mut genuine = 0u64;
    let mut i = 0u32;
    while i < 1_000 || static_call::stats().traps_emulated == 0 || THREAD_GENUINE.load(SeqCst) < 100 {
        assert!(i < 1_000_000, "no trap emulated in {i} rounds");
        HOST.update(if i.is_multiple_of(2) { host_b } else { host_a });
        assert_eq!(alpha_mode(i % 2), 0);
        assert_eq!(beta_mode(i % 2), 0);
        assert!(guarded(genuine_int3), "genuine trap {genuine} escaped");
        genuine += 1;
        i += 1;
    }
    STOP.store(true, SeqCst);
    caller.join().unwrap();
    let thread_genuine = THREAD_GENUINE.load(SeqCst);
    let s = static_call::stats();
    eprintln!(
        "{i} rounds ({} alpha, {} beta updates), {genuine} + {thread_genuine} genuine traps escaped from, host {s:?}",
        alpha_updates(),
        beta_updates()
    );
    assert_eq!(WRONG.load(SeqCst), 0, "a call reached a wrong target, or a trap did not escape");
    assert_eq!(USER_TRAPS.load(SeqCst), genuine + thread_genuine, "every genuine trap reached the user's handler");
    assert_eq!(RETURNED.load(SeqCst), 0);
    assert!(s.traps_emulated > 0, "{s:?}");

    // Nothing left counted in any copy; each unload path is clean.
    assert_eq!(signal_bookkeeping(), (0, [0, 0], false), "host: threads in its handler, readers, writer");
    assert_eq!((alpha_idle(), beta_idle()), (1, 1), "alpha's and beta's bookkeeping idle");
    assert_eq!(beta_unload(), 1, "beta's unload path is clean");
    assert_eq!(alpha_unload(), 1, "alpha's unload path is clean");
    assert_eq!(unload_now(), "Clean");
    // Every copy out of the chain: the user's handler is current again.
    assert_eq!(current_sigtrap_handler(), user_handler as *const () as usize);
    assert!(guarded(genuine_int3));
    assert_eq!(USER_TRAPS.load(SeqCst), genuine + thread_genuine + 1);
    drop((alpha, beta));
    eprintln!("child child_three_copies_longjmp: done");
}
