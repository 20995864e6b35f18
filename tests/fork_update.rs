//! `fork()` while another thread updates (and others call): each child
//! inherits consistent text (its calls reach exactly the key's current
//! target), can update and reset the key itself, and exits cleanly; no child
//! deadlocks on the patch lock.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2, t3};

use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site_a(x: u64) -> u64 {
    K.call(x)
}
/// A second site (a different function: release builds merge identical
/// ones).
#[inline(never)]
fn site_b(x: u64) -> u64 {
    match K.call(x ^ 1) {
        0 => 0,
        r => r ^ 1,
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
static REAPED: AtomicU64 = AtomicU64::new(0);
const CHILDREN: u64 = 200;

/// What the key's current target returns for `x` (0 with no target).
fn expected(x: u64) -> u64 {
    K.get().map_or(0, |f| f(x))
}

/// The child: no allocation, no locks but the patch lock; the result is the
/// exit status.
fn child() -> i32 {
    for x in [5, 6] {
        if site_a(x) != expected(x) || site_b(x) != expected(x) {
            return 10; // inherited text disagrees with the key
        }
    }
    for (i, f) in [t3 as extern "C" fn(u64) -> u64, t1, t2].into_iter().enumerate() {
        if K.try_update(f).is_err() {
            return 20 + i as i32;
        }
        if site_a(9) != f(9) || site_b(9) != f(9) {
            return 30 + i as i32;
        }
    }
    if K.try_reset().is_err() {
        return 40;
    }
    if site_a(9) != 0 || site_b(9) != 0 {
        return 41;
    }
    0
}

#[test]
fn fork_while_updating_gives_children_consistent_text_and_a_free_lock() {
    static_call::init().unwrap();
    let protections = common::page_protections(K.sites().iter().map(|s| s.address()), common::INSN_LEN);
    common::watchdog("fork_update (a child or the parent is stuck)", &REAPED, std::time::Duration::from_secs(60));
    let updater = std::thread::spawn(move || {
        let targets = [Some(t1 as extern "C" fn(u64) -> u64), Some(t2), None, Some(t3)];
        let mut n = 0u64;
        while !STOP.load(SeqCst) {
            match targets[n as usize % 4] {
                Some(f) => K.update(f),
                None => K.reset(),
            };
            n += 1;
        }
        n
    });
    let caller = std::thread::spawn(|| {
        let mut n = 0u64;
        while !STOP.load(SeqCst) {
            let r = site_a(7);
            assert!(r == 0 || (matches!(r >> 48, 1..=3) && r & 0xffff == 7), "{r:#x}");
            n += 1;
        }
        n
    });
    let before = static_call::stats();
    let mut failures = Vec::new();
    for i in 0..CHILDREN {
        // SAFETY: the child runs `child()` (calls, patch-lock updates: no
        // allocation) and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = child();
            // SAFETY: ends the child without running the parent's atexit or
            // destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        REAPED.fetch_add(1, SeqCst);
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failures.push((i, status));
        }
    }
    let during = static_call::stats();
    STOP.store(true, SeqCst);
    let updates = updater.join().unwrap();
    let calls = caller.join().unwrap();
    common::assert_text_protected(&protections);
    eprintln!(
        "{CHILDREN} children, {updates} parent updates, {calls} parent calls; traps during the forks: {} emulated, {} \
         rewound",
        during.traps_emulated - before.traps_emulated,
        during.traps_rewound - before.traps_rewound
    );
    assert!(failures.is_empty(), "children failed (index, wait status): {failures:?}");
    assert!(updates >= CHILDREN, "the updater ran alongside the forks ({updates} updates)");
}
