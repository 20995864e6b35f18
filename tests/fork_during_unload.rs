//! `fork()` on one thread while another unloads a plugin that links the
//! crate: the plugin's destructor shuts its copy down for good before glibc
//! unregisters that copy's `pthread_atfork` handlers, and a fork in that
//! window must not wait for the shut-down copy's lock (it would wait
//! forever, inside code about to be unmapped). A watchdog turns a hang into
//! a failure. The forks are placed in that window by a hook: on x86-64 beta's
//! writer hook (beta's SIGTRAP handler is relinked past alpha's inside
//! alpha's unload), on aarch64 (no handler) alpha's own unload hook, which
//! also checks that alpha's copy had shut down.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;

use plugin_support::{fork_ok, Plugin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

static PROGRESS: AtomicU64 = AtomicU64::new(0);
static FORKS: AtomicU64 = AtomicU64::new(0);
/// How many forks the forker is asked to have made: it forks only when
/// asked, inside the unload window, never while a plugin's text is being
/// unmapped. (glibc 2.35 and later run each atfork handler with its lock
/// dropped, so a fork racing the end of a `dlclose` can call a handler of
/// the module being unmapped, whatever library registered it: a hazard of
/// the C library that this test must not stumble on.)
static WANTED: AtomicU64 = AtomicU64::new(0);

/// Runs in beta's copy while it relinks past alpha (x86-64), or in alpha's
/// unload hook (aarch64), i.e. inside alpha's unload, after alpha's copy shut
/// down and before glibc unregisters its atfork handlers: asks the forker
/// for two forks and waits until it completed them.
extern "C" fn fork_now() {
    let want = FORKS.load(SeqCst) + 2;
    WANTED.store(want, SeqCst);
    while FORKS.load(SeqCst) < want {
        std::thread::yield_now();
    }
}

/// What an update of alpha's key returned inside alpha's unload hook
/// (aarch64; 1: `Ok`, alpha's own destructor runs before its copy shuts down).
#[cfg(target_arch = "aarch64")]
static IN_UNLOAD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// aarch64: alpha's unload hook.
#[cfg(target_arch = "aarch64")]
extern "C" fn fork_in_unload(update: i32) {
    IN_UNLOAD.store(update, SeqCst);
    fork_now();
}

#[test]
fn fork_while_a_plugin_is_unloaded_does_not_hang() {
    common::watchdog("fork during plugin unload", &PROGRESS, std::time::Duration::from_secs(60));
    static_call::init().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let forker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                if FORKS.load(SeqCst) >= WANTED.load(SeqCst) {
                    std::thread::yield_now();
                    continue;
                }
                assert!(fork_ok(), "the fork child exited cleanly");
                FORKS.fetch_add(1, SeqCst);
                PROGRESS.fetch_add(1, SeqCst);
            }
        })
    };
    for cycle in 0..10 {
        let mut alpha = Plugin::load("alpha");
        let mut beta = Plugin::load("beta");
        let alpha_init: extern "C" fn() -> i32 = alpha.func("alpha_init");
        let beta_init: extern "C" fn() -> i32 = beta.func("beta_init");
        let mode: extern "C" fn(u32) -> i32 = alpha.func("alpha_set_mode");
        let work: extern "C" fn(u64) -> u64 = alpha.func("alpha_work");
        #[cfg(target_arch = "x86_64")]
        let hook: extern "C" fn(Option<extern "C" fn()>) = beta.func("beta_set_writer_hook");
        #[cfg(target_arch = "aarch64")]
        let unload_hook: extern "C" fn(Option<extern "C" fn(i32)>) = alpha.func("alpha_set_unload_hook");
        // Each copy registers its atfork handlers in init; beta's handler
        // sits on alpha's.
        assert_eq!(alpha_init(), 0);
        assert_eq!(beta_init(), 0);
        assert_eq!(mode(1), 0);
        assert_eq!(work(3), 300);
        #[cfg(target_arch = "x86_64")]
        hook(Some(fork_now));
        #[cfg(target_arch = "aarch64")]
        {
            IN_UNLOAD.store(-1, SeqCst);
            unload_hook(Some(fork_in_unload));
        }
        let forks = FORKS.load(SeqCst);
        alpha.unload();
        assert!(!alpha.mapped());
        assert!(FORKS.load(SeqCst) >= forks + 2, "forks ran inside alpha's unload");
        #[cfg(target_arch = "x86_64")]
        hook(None);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            IN_UNLOAD.load(SeqCst),
            1,
            "alpha's own destructor ran before its copy shut down (its update works)"
        );
        beta.unload();
        PROGRESS.fetch_add(1, SeqCst);
        eprintln!("cycle {cycle}: {} forks", FORKS.load(SeqCst));
    }
    stop.store(true, SeqCst);
    forker.join().unwrap();
}
