//! `set` from a signal handler (DESIGN 2.2): after `init`, a SIGUSR1
//! handler flips a static branch while the interrupted thread runs its
//! sites; each `set` in the handler succeeds (allocation-free, lock free
//! at that instant) and is seen by the interrupted thread at once.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

use static_call::static_branch;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

#[static_branch]
static FLAG: bool = false;

static SETS: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    match FLAG.try_set(!FLAG.get()) {
        Ok(_) => SETS.fetch_add(1, SeqCst),
        Err(_) => FAILED.fetch_add(1, SeqCst),
    };
}

#[inline(never)]
fn site() -> bool {
    FLAG.unlikely()
}

#[test]
fn set_from_a_signal_handler() {
    let _ = static_call::init();
    // SAFETY: installs a handler that only calls `try_set` (allocation
    // free after init) and atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    for i in 0..200u64 {
        assert_eq!(site(), i % 2 == 1);
        // SAFETY: raising a signal whose handler is installed above; it
        // runs on this thread before `raise` returns.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
        assert_eq!(SETS.load(SeqCst), i + 1, "the handler's set succeeded");
        assert_eq!(site(), i % 2 == 0, "seen at once after the handler returned");
    }
    assert_eq!(FAILED.load(SeqCst), 0);
    if matches!(static_call::mode(), static_call::Mode::Patching(_)) {
        assert!(static_call::stats().branch_sites_patched >= 200);
    }
}
