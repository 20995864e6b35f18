//! Signals at a high rate, on callers and on the updater, whose handler calls
//! a site being patched and attempts an update itself: the calls reach a
//! valid target, an update from the handler succeeds or (when it interrupted
//! an update on the same thread) returns `Reentrant`, and nothing deadlocks.
//! x86-64 requires calls from handlers to have met the `int3`s; aarch64 (no
//! trap) that calls from handlers started while an update was in progress.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2, t3};

use static_call::{static_call, Error};
use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site_thread(x: u64) -> u64 {
    K.call(x)
}
#[inline(never)]
fn site_handler(x: u64) -> u64 {
    K.call(x)
}

fn valid(r: u64, x: u64) -> bool {
    r == 0 || (matches!(r >> 48, 1..=3) && r & 0xffff_ffff_ffff == x)
}

thread_local! {
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
}

static STOP: AtomicBool = AtomicBool::new(false);
static PROGRESS: AtomicU64 = AtomicU64::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);
static HANDLER_CALLS: AtomicU64 = AtomicU64::new(0);
static HANDLER_UPDATES_OK: AtomicU64 = AtomicU64::new(0);
static HANDLER_REENTRANT: AtomicU64 = AtomicU64::new(0);
static HANDLER_OTHER_ERR: AtomicU64 = AtomicU64::new(0);
static TRAPS_IN_HANDLER: AtomicU64 = AtomicU64::new(0);
/// Set by the updater thread around each of its updates.
static UPDATING: AtomicBool = AtomicBool::new(false);
/// Calls made in the handler that started while `UPDATING` was set.
static HANDLER_CALLS_DURING_UPDATE: AtomicU64 = AtomicU64::new(0);

/// Trap hook: counts traps taken by a call made inside the signal handler.
#[cfg(target_arch = "x86_64")]
extern "C" fn count_handler_traps() {
    if IN_HANDLER.with(|h| h.get()) {
        TRAPS_IN_HANDLER.fetch_add(1, SeqCst);
    }
}

extern "C" fn on_alarm(_: libc::c_int) {
    // SAFETY: errno is thread-local; restored on return.
    let errno = unsafe { *libc::__errno_location() };
    let was = IN_HANDLER.with(|h| h.replace(true));
    let n = HANDLER_CALLS.fetch_add(1, SeqCst);
    if UPDATING.load(SeqCst) {
        HANDLER_CALLS_DURING_UPDATE.fetch_add(1, SeqCst);
    }
    let r = site_handler(11);
    if !valid(r, 11) {
        BAD.fetch_add(1, SeqCst);
    }
    let f = [t1 as extern "C" fn(u64) -> u64, t2, t3][n as usize % 3];
    match K.try_update(f) {
        Ok(_) => {
            HANDLER_UPDATES_OK.fetch_add(1, SeqCst);
        }
        Err(Error::Reentrant) => {
            HANDLER_REENTRANT.fetch_add(1, SeqCst);
        }
        Err(_) => {
            HANDLER_OTHER_ERR.fetch_add(1, SeqCst);
        }
    }
    IN_HANDLER.with(|h| h.set(was));
    PROGRESS.fetch_add(1, SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

#[test]
fn signal_handlers_call_and_update_sites_being_patched() {
    static_call::init().unwrap();
    let protections = common::page_protections(
        K.sites().iter().map(|s| s.address()).chain(static_call::__private::trampoline_of(&K)),
        common::INSN_LEN,
    );
    common::watchdog("signal_timer", &PROGRESS, std::time::Duration::from_secs(60));
    #[cfg(target_arch = "x86_64")]
    static_call::__private::set_trap_hook(Some(count_handler_traps));
    // SAFETY: a handler for SIGALRM, which nothing else in this process uses;
    // SIGTRAP is not in its mask (a call in the handler may trap).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()), 0);
    }
    let callers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let mut n = 0u64;
                while !STOP.load(SeqCst) {
                    if !valid(site_thread(7), 7) {
                        BAD.fetch_add(1, SeqCst);
                    }
                    n += 1;
                    PROGRESS.fetch_add(1, SeqCst);
                }
                n
            })
        })
        .collect();
    let updater = std::thread::spawn(|| {
        let mut n = 0u64;
        while !STOP.load(SeqCst) {
            UPDATING.store(true, SeqCst);
            match n % 4 {
                0 => K.update(t1),
                1 => K.update(t2),
                2 => K.reset(),
                _ => K.update(t3),
            };
            UPDATING.store(false, SeqCst);
            n += 1;
            PROGRESS.fetch_add(1, SeqCst);
        }
        n
    });
    let targets: Vec<libc::pthread_t> =
        callers.iter().map(|c| c.as_pthread_t()).chain([updater.as_pthread_t()]).collect();
    // The signal source: a dedicated thread's worth of pthread_kill, as fast as
    // it goes, round-robin over the callers and the updater, until every
    // interesting path ran (bounded).
    let mut sent = 0u64;
    let done = || {
        let interesting = if common::TRAPS {
            TRAPS_IN_HANDLER.load(SeqCst) >= 10 && static_call::stats().traps_emulated >= 10
        } else {
            HANDLER_CALLS_DURING_UPDATE.load(SeqCst) >= 10
        };
        interesting && HANDLER_REENTRANT.load(SeqCst) >= 10 && HANDLER_UPDATES_OK.load(SeqCst) >= 10
    };
    while !done() {
        assert!(sent < 20_000_000, "not every path ran in {sent} signals");
        for &t in &targets {
            // SAFETY: the threads live until STOP.
            unsafe { libc::pthread_kill(t, libc::SIGALRM) };
            sent += 1;
        }
    }
    STOP.store(true, SeqCst);
    let calls: u64 = callers.into_iter().map(|c| c.join().unwrap()).sum();
    let updates = updater.join().unwrap();
    #[cfg(target_arch = "x86_64")]
    static_call::__private::set_trap_hook(None);
    common::assert_text_protected(&protections);
    let s = static_call::stats();
    eprintln!(
        "{sent} signals sent, {} handled; {calls} thread calls, {updates} thread updates; in handlers: {} updates ok, {} \
         reentrant, {} other errors, {} traps, {} calls during an update; {s:?}",
        HANDLER_CALLS.load(SeqCst),
        HANDLER_UPDATES_OK.load(SeqCst),
        HANDLER_REENTRANT.load(SeqCst),
        HANDLER_OTHER_ERR.load(SeqCst),
        TRAPS_IN_HANDLER.load(SeqCst),
        HANDLER_CALLS_DURING_UPDATE.load(SeqCst),
    );
    assert_eq!(BAD.load(SeqCst), 0, "a call reached something other than a target or the no-target form");
    assert_eq!(HANDLER_OTHER_ERR.load(SeqCst), 0, "an update from a handler failed otherwise than documented");
    let f = K.get();
    assert_eq!(site_thread(9), f.map_or(0, |f| f(9)));
    assert_eq!(site_handler(9), f.map_or(0, |f| f(9)));
}
