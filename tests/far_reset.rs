//! A key moved between a far target (more than 2 GiB from its sites, so
//! called through the key's slot: x86-64 `call qword ptr [rip + slot]` at
//! each site; aarch64: beyond ±128 MiB, the trampoline's `ldr x16, slot;
//! br x16`) and no target, while threads call it. The slot is never null
//! (DESIGN 3.2): a caller that loads
//! it at any instant of `reset` or `update` reaches the old target, the new
//! one, or the stub that does what "no target" means. Before the slot had a
//! stub, `reset` stored null first and a caller in the window jumped to 0.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;

use plugin_support::Plugin;
use static_call::{static_call, NotDirect, SiteState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;

type F = extern "C" fn(u64) -> u64;

/// The tests of this file run one at a time: one injects a write failure,
/// which is process-wide, and would fail another test's update instead.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

extern "C" fn near(x: u64) -> u64 {
    x + 1
}

#[static_call]
static PAGE: extern "C" fn(u64) -> u64;

#[static_call]
static PLUGIN: extern "C" fn(u64) -> u64;

#[static_call]
static OUT: extern "C" fn(u64) -> u64;

#[inline(never)]
fn page(x: u64) -> u64 {
    PAGE.call(x)
}

#[inline(never)]
fn plugin(x: u64) -> u64 {
    PLUGIN.call(x)
}

#[inline(never)]
fn out(x: u64) -> u64 {
    OUT.call(x)
}

use common::reaches;

/// The word the far forms read: the key's slot, after its 24-byte
/// versioned prefix. (This read the prefix's magic before, never 0, so
/// that the assertions on it held whatever the slot held.)
fn slot_of<K: static_call::StaticCall>(key: &K) -> usize {
    let k: *const static_call::Key<K::Fn, K::Ret> = key.key();
    // SAFETY: a key is `repr(C)`; its slot, at offset 24, is an aligned
    // pointer-sized atomic; a volatile read of it is a plain load.
    // SAFETY: a key is a static of at least 32 bytes; its slot is the word at 24.
    unsafe { std::ptr::read_volatile(k.cast::<u8>().add(24).cast::<usize>()) }
}

/// Rounds of `churn`: fewer on aarch64, which the tests run under QEMU.
const ROUNDS: usize = if common::TRAPS { 3_000 } else { 600 };

/// Set around each update of `churn` (aarch64's proof that calls overlapped
/// updates: no trap there).
static UPDATING: AtomicBool = AtomicBool::new(false);

/// Moves a key between `far` and no target (and `near`) `rounds` times while
/// two threads call it through `call`; every result must be one of `ok`.
/// Returns the number of calls made by the threads, and how many of them
/// started while an update was in progress.
fn churn(
    key: &'static (impl static_call::StaticCall<Fn = F, Ret = u64> + Sync),
    call: fn(u64) -> u64,
    far: F,
    ok: &'static [u64],
    rounds: usize,
) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let overlapped = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (stop, wrong, calls, overlapped) = (stop.clone(), wrong.clone(), calls.clone(), overlapped.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let during = UPDATING.load(SeqCst);
                    let r = call(100);
                    if !ok.contains(&r) {
                        wrong.fetch_add(1, Relaxed);
                    }
                    if during {
                        overlapped.fetch_add(1, Relaxed);
                    }
                    calls.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    let updating = |f: &dyn Fn()| {
        UPDATING.store(true, SeqCst);
        f();
        UPDATING.store(false, SeqCst);
    };
    for i in 0..rounds {
        match i % 3 {
            0 => {
                updating(&|| {
                    key.update(far);
                });
                assert_eq!(call(100), ok[0]);
            }
            1 => {
                updating(&|| {
                    key.reset();
                });
                assert_eq!(call(100), 0);
                assert!(key.get().is_none(), "no target reads back as None");
                assert_ne!(slot_of(key), 0, "the slot holds the no-target stub, never null");
            }
            _ => {
                updating(&|| {
                    key.update(far);
                    key.update(near);
                });
                assert_eq!(call(100), 101);
            }
        }
        // Let the callers make progress between rounds.
        let c = calls.load(Relaxed);
        while calls.load(Relaxed) < c + 2 {
            std::hint::spin_loop();
        }
    }
    stop.store(true, Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(wrong.load(Relaxed), 0, "calls returned something no target returns");
    (calls.load(Relaxed), overlapped.load(Relaxed))
}

#[test]
fn far_page_target_then_reset_under_callers() {
    let _serial = serial();
    static_call::init().unwrap();
    let site = PAGE.sites()[0].address();
    let p = common::far_page(site);
    // SAFETY: the page holds `x + 7` at offset 0, of this signature.
    let plus7: F = unsafe { std::mem::transmute::<usize, F>(p) };
    assert!(!reaches(site, p));
    PAGE.update(plus7);
    assert!(PAGE.sites().iter().all(|s| s.reason() == Some(NotDirect::OutOfReach)));
    let (calls, overlapped) = churn(&PAGE, page, plus7, &[107, 0, 101], ROUNDS);
    assert!(calls > 0);
    let s = static_call::stats();
    eprintln!("far page: {calls} calls ({overlapped} during an update), {s:?}");
    if common::TRAPS {
        assert!(s.traps_emulated + s.traps_rewound > 0, "no caller met an int3: the window was not exercised");
    } else {
        assert!(overlapped > 0, "no call overlapped an update: the window was not exercised");
    }
    PAGE.reset();
    assert!(PAGE.sites().iter().all(|s| s.state() == SiteState::Zero));
    assert_eq!(page(5), 0);
}

#[test]
fn plugin_target_then_reset_under_callers() {
    let _serial = serial();
    static_call::init().unwrap();
    let alpha = Plugin::load("alpha");
    let f: F = alpha.func("alpha_dispatch");
    let site = PLUGIN.sites()[0].address();
    eprintln!("alpha_dispatch {}", if reaches(site, f as usize) { "near" } else { "far" });
    let before = static_call::stats();
    let (calls, overlapped) = churn(&PLUGIN, plugin, f, &[301, 0, 101], ROUNDS);
    assert!(calls > 0);
    let s = static_call::stats();
    eprintln!("plugin: {calls} calls ({overlapped} during an update), {s:?}");
    if common::TRAPS {
        assert!(
            s.traps_emulated + s.traps_rewound > before.traps_emulated + before.traps_rewound,
            "no caller met an int3: the window was not exercised"
        );
    } else {
        assert!(overlapped > 0, "no call overlapped an update: the window was not exercised");
    }
    PLUGIN.reset();
    assert_eq!(plugin(1), 0);
    drop(alpha);
}

/// A failed update from no target to a far target puts the old (no) target
/// back: the slot then holds the stub again, never null.
#[test]
fn failed_update_to_far_target_reverts_to_no_target() {
    let _serial = serial();
    static_call::init().unwrap();
    let site = OUT.sites()[0].address();
    let p = common::far_page(site);
    // SAFETY: as above.
    let plus7: F = unsafe { std::mem::transmute::<usize, F>(p) };
    assert_eq!(out(1), 0);
    static_call::__private::fail_text_write_after(0, 1);
    let e = OUT.try_update(plus7).expect_err("the injected write failure");
    static_call::__private::fail_text_write_after(0, 0);
    eprintln!("failed as planned: {e}");
    assert!(OUT.get().is_none());
    assert_ne!(slot_of(&OUT), 0, "reverted to the no-target stub, not to null");
    assert_eq!(out(1), 0);
    OUT.update(plus7);
    assert_eq!(out(1), 8);
}
