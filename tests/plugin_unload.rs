//! Unloading plugins that link the crate: a user SIGTRAP handler installed
//! before everything, then the host's copy, then two plugins' copies, each
//! handler chained to the previous one. The host follows the shutdown
//! sequence (retarget away from the plugin, wait until no caller is inside
//! it, `dlclose`); the plugin's destructor takes its handler out of the chain
//! (relinking the copy above it, or restoring the one below). Afterwards the
//! host keeps patching with callers running, a genuine `int3` still reaches
//! the user's handler, and `fork` still works (no atfork handler left in
//! unmapped code). On aarch64 no copy installs a SIGTRAP handler: the user's
//! stays the disposition throughout, and calls are proven to have
//! overlapped the host's updates instead of meeting traps.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod plugin_support;

#[cfg(target_arch = "x86_64")]
use plugin_support::genuine_int3;
use plugin_support::{current_sigtrap_handler, fork_ok, install_user_handler, mapping_path, Plugin, USER_TRAPS};
use static_call::{static_call, SiteState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Arc;

type F = extern "C" fn(u64) -> u64;

extern "C" fn host_a(x: u64) -> u64 {
    x + 1
}
extern "C" fn host_b(x: u64) -> u64 {
    x + 2
}

#[static_call]
static HOST: extern "C" fn(u64) -> u64 = host_a;

/// Whether updates go through `int3` and the SIGTRAP handler (x86-64).
const TRAPS: bool = cfg!(target_arch = "x86_64");

/// Set around each of `host_updates_under_load`'s updates (aarch64's proof
/// that calls overlapped updates).
static UPDATING: AtomicBool = AtomicBool::new(false);
/// Calls that started while `UPDATING` was set.
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn host(x: u64) -> u64 {
    HOST.call(x)
}

/// Caller threads: each counts its completed calls (its epoch), and any
/// result outside `allowed`.
struct Callers {
    stop: Arc<AtomicBool>,
    wrong: Arc<AtomicU64>,
    epochs: Arc<[AtomicU64; 3]>,
    /// The plugins whose results are still allowed (bit 0: alpha's 301, bit
    /// 1: beta's 502); the host's 101 and 102 always are.
    allowed: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Callers {
    fn start() -> Callers {
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = Arc::new(AtomicU64::new(0));
        let epochs = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let allowed = Arc::new(AtomicUsize::new(0b11));
        let threads = (0..3)
            .map(|i| {
                let (stop, wrong, epochs, allowed) = (stop.clone(), wrong.clone(), epochs.clone(), allowed.clone());
                std::thread::spawn(move || {
                    while !stop.load(Relaxed) {
                        // What is allowed is read before the call: a call that
                        // started before an update returned may still reach the
                        // target that update replaced.
                        let mask = allowed.load(SeqCst);
                        let during = UPDATING.load(SeqCst);
                        let r = host(100);
                        if during {
                            OVERLAPPED.fetch_add(1, SeqCst);
                        }
                        let ok = match r {
                            101 | 102 => true,
                            301 => mask & 1 != 0,
                            502 => mask & 2 != 0,
                            _ => false,
                        };
                        if !ok {
                            wrong.fetch_add(1, Relaxed);
                        }
                        epochs[i].fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        Callers { stop, wrong, epochs, allowed, threads }
    }

    /// Waits until every caller has completed a call that started after now:
    /// then no caller is still inside a target it reached before.
    fn quiesce(&self) {
        let seen: Vec<u64> = self.epochs.iter().map(|e| e.load(SeqCst)).collect();
        for (e, s) in self.epochs.iter().zip(seen) {
            while e.load(SeqCst) < s + 2 {
                std::thread::yield_now();
            }
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Relaxed);
        self.threads.into_iter().for_each(|t| t.join().unwrap());
        self.wrong.load(Relaxed)
    }
}

/// Host updates with callers running, until the int3 path ran a few times
/// (x86-64); on aarch64 (no trap, under QEMU) at least 50, until 5 calls
/// started during one.
fn host_updates_under_load() {
    let base = static_call::stats();
    let overlapped = OVERLAPPED.load(SeqCst);
    for i in 0..100_000u32 {
        let s = static_call::stats();
        let done = if TRAPS {
            s.traps_emulated + s.traps_rewound >= base.traps_emulated + base.traps_rewound + 5
        } else {
            i >= 50 && OVERLAPPED.load(SeqCst) >= overlapped + 5
        };
        if done {
            return;
        }
        UPDATING.store(true, SeqCst);
        HOST.update(if i.is_multiple_of(2) { host_b } else { host_a });
        UPDATING.store(false, SeqCst);
        assert_eq!(host(0), if i.is_multiple_of(2) { 2 } else { 1 });
    }
    assert!(TRAPS || OVERLAPPED.load(SeqCst) >= overlapped + 5, "calls did not overlap 100,000 updates");
}

/// x86-64: a genuine `int3` reaches the user's handler, once. aarch64: the
/// user's handler (`user`) is still the disposition: no copy touched it.
fn genuine_trap_reaches_user_handler(user: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = user;
        let before = USER_TRAPS.load(SeqCst);
        genuine_int3();
        assert_eq!(USER_TRAPS.load(SeqCst), before + 1, "a genuine int3 reaches the user's handler, once");
    }
    #[cfg(not(target_arch = "x86_64"))]
    assert_eq!(current_sigtrap_handler(), user, "no copy installs a SIGTRAP handler on aarch64");
}

/// The shutdown sequence of a host before unloading a plugin.
fn unload(p: &mut Plugin, callers: &Callers, no_longer: u64) {
    // 1. Retarget every key away from the plugin's code.
    HOST.update(host_a);
    // 2. Wait until no thread is inside the plugin's code.
    callers.allowed.fetch_and(if no_longer == 301 { !0b01 } else { !0b10 }, SeqCst);
    callers.quiesce();
    // 3. Unload.
    p.unload();
    assert!(!p.mapped(), "dlclose unmapped {}", p.path.display());
}

#[test]
fn unloaded_copies_leave_the_chain() {
    install_user_handler();
    let user = current_sigtrap_handler();
    static_call::init().unwrap();
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let in_exe = |a: usize| mapping_path(a).map(std::path::PathBuf::from) == Some(exe.clone());

    let mut alpha = Plugin::load("alpha");
    let mut beta = Plugin::load("beta");
    let alpha_init: extern "C" fn() -> i32 = alpha.func("alpha_init");
    let beta_init: extern "C" fn() -> i32 = beta.func("beta_init");
    let beta_mode: extern "C" fn(u32) -> i32 = beta.func("beta_set_mode");
    let alpha_dispatch: F = alpha.func("alpha_dispatch");
    let beta_dispatch: F = beta.func("beta_dispatch");
    assert_eq!(alpha_init(), 0);
    assert_eq!(beta_init(), 0);
    assert!(!TRAPS || beta.contains(current_sigtrap_handler()));
    genuine_trap_reaches_user_handler(user);

    let callers = Callers::start();
    // The hot key moves between the host and both plugins under load.
    for i in 0..200 {
        HOST.update([host_a as F, alpha_dispatch, host_b, beta_dispatch][i % 4]);
    }
    host_updates_under_load();

    // Unload alpha, whose handler is in the middle of the chain: beta's is
    // relinked to the host's.
    unload(&mut alpha, &callers, 301);
    assert!(!TRAPS || beta.contains(current_sigtrap_handler()));
    host_updates_under_load();
    assert_eq!(beta_mode(1), 0, "beta's copy still updates");
    genuine_trap_reaches_user_handler(user);
    assert!(fork_ok());

    // Unload beta, whose handler is current: the host's is restored.
    HOST.update(beta_dispatch);
    unload(&mut beta, &callers, 502);
    assert!(!TRAPS || in_exe(current_sigtrap_handler()), "the host's handler is current again");
    host_updates_under_load();
    genuine_trap_reaches_user_handler(user);
    assert!(fork_ok());

    assert_eq!(callers.stop(), 0, "every call reached an allowed target");
    assert!(HOST.sites().iter().all(|s| s.state() == SiteState::Direct));
    eprintln!(
        "{:?}, user traps {}, calls during an update {}",
        static_call::stats(),
        USER_TRAPS.load(SeqCst),
        OVERLAPPED.load(SeqCst)
    );
}
