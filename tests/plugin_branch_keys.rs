//! Static branches across copies of the crate (DESIGN 3.11, 9): a plugin
//! (alpha, a dlopen'd cdylib with its own copy) has a `pub` static branch
//! with an `unlikely` and a `likely` site. The host's `init()` patches only
//! the host's sites; the plugin's stay on their assembled test until the
//! plugin's copy registers, here on the host's first set of the plugin's
//! branch through the `&'static BranchKey` the plugin exports: that set is
//! made by the plugin's copy (its update count moves, the host's does not)
//! and patches the plugin's text. Then the plugin sets its own branch, the
//! plugin sets the host's (made by the host's copy), another plugin (beta)
//! sets alpha's, and a host batch mixes both copies' branches. Every set is
//! judged by what each site computes and by `sites()` (Taken / NotTaken,
//! in the right module). Last, the host and the plugin set each other's
//! branch while callers run both modules' sites, until each copy's SIGTRAP
//! handler emulated jumps (x86-64; aarch64: until calls overlapped sets).
//!
//! With the `portable` feature the host's copy is portable (its sites are a
//! load, `sites()` is empty) while the plugins, built without the feature,
//! patch: routing between the two backends is checked the same way.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux"))]

mod common;
mod plugin_support;

use plugin_support::{assert_branch_patched, Plugin};
use static_call::{static_branch, BranchKey, NotDirect, SiteState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;

type F = extern "C" fn(u64) -> u64;

#[static_branch]
static HOST_TRACE: bool = false;

/// The host's `unlikely` site: `x + 1` while `HOST_TRACE` is set.
#[inline(never)]
fn host_unlikely(x: u64) -> u64 {
    if HOST_TRACE.unlikely() {
        x + 1
    } else {
        x
    }
}

/// The host's `likely` site: `x + 1` while `HOST_TRACE` is set.
#[inline(never)]
fn host_likely(x: u64) -> u64 {
    if HOST_TRACE.likely() {
        x + 1
    } else {
        std::hint::black_box(x)
    }
}

/// Whether the host's copy patches (not `portable`).
const HOST_PATCHES: bool = static_call::PATCHING;

/// Alpha's exports.
struct Alpha {
    key: &'static BranchKey,
    traced: F,
    traced_likely: F,
    set_trace: extern "C" fn(bool) -> i32,
    set_branch: extern "C" fn(&'static BranchKey, bool) -> i32,
    updates: extern "C" fn() -> u64,
    branch_sites_patched: extern "C" fn() -> u64,
    traps: extern "C" fn() -> u64,
    init: extern "C" fn() -> i32,
}

/// Panics unless alpha's branch is `value`, by `get()`, by what its two
/// sites compute and by the state of each of them (in alpha's text).
#[track_caller]
fn assert_alpha(a: &Alpha, alpha: &Plugin, value: bool) {
    assert_eq!(a.key.get(), value, "alpha's branch read through the host's copy");
    let r = if value { 1001 } else { 1 };
    assert_eq!(((a.traced)(1), (a.traced_likely)(1)), (r, r), "alpha's sites with its branch {value}");
    let sites = a.key.sites();
    assert!(sites.iter().all(|s| alpha.contains(s.address())), "alpha's sites are in alpha: {sites:?}");
    assert_branch_patched("alpha's branch", &sites, a.traced as usize, a.traced_likely as usize, value);
}

/// Panics unless the host's branch is `value`, by `get()`, by what its two
/// sites compute and (where the host patches) by their state.
#[track_caller]
fn assert_host(value: bool) {
    assert_eq!(HOST_TRACE.get(), value);
    let r = if value { 2 } else { 1 };
    assert_eq!((host_unlikely(1), host_likely(1)), (r, r), "the host's sites with its branch {value}");
    if HOST_PATCHES {
        let f = (host_unlikely as fn(u64) -> u64 as usize, host_likely as fn(u64) -> u64 as usize);
        assert_branch_patched("the host's branch", &HOST_TRACE.sites(), f.0, f.1, value);
    } else {
        assert!(HOST_TRACE.sites().is_empty(), "no sites on the portable backend");
    }
}

/// Set around each round of sets under load (aarch64's proof that calls
/// overlapped sets: no trap there).
static SETTING: AtomicBool = AtomicBool::new(false);
/// Calls that started while a round of sets was in progress.
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

#[test]
fn branches_are_set_by_their_owner() {
    // The host's sites before init: their assembled test (patching host).
    if HOST_PATCHES {
        let sites = HOST_TRACE.sites();
        assert_eq!(sites.len(), 2, "{sites:?}");
        assert!(sites.iter().all(|s| s.state() == SiteState::Trampoline), "{sites:?}");
    }
    assert_eq!((host_unlikely(1), host_likely(1)), (1, 1));
    let host_patched = static_call::stats().branch_sites_patched;
    static_call::init().unwrap();
    assert_host(false);
    if HOST_PATCHES {
        assert_eq!(static_call::stats().branch_sites_patched, host_patched + 2, "init patched the host's sites");
    }

    let alpha = Plugin::load("alpha");
    let beta = Plugin::load("beta");
    let a = Alpha {
        key: alpha.func::<extern "C" fn() -> &'static BranchKey>("alpha_trace_key")(),
        traced: alpha.func("alpha_traced"),
        traced_likely: alpha.func("alpha_traced_likely"),
        set_trace: alpha.func("alpha_set_trace"),
        set_branch: alpha.func("alpha_set_branch"),
        updates: alpha.func("alpha_updates"),
        branch_sites_patched: alpha.func("alpha_branch_sites_patched"),
        traps: alpha.func("alpha_traps"),
        init: alpha.func("alpha_init"),
    };
    let beta_set_branch: extern "C" fn(&'static BranchKey, bool) -> i32 = beta.func("beta_set_branch");

    // The host's init did not touch alpha's text: alpha's copy has not
    // registered, its sites still jump to their tests, which read the value.
    let sites = a.key.sites();
    assert_eq!(sites.len(), 2, "alpha's two sites, reported by alpha's copy: {sites:?}");
    assert!(sites.iter().all(|s| alpha.contains(s.address())), "{sites:?}");
    for s in &sites {
        assert_eq!((s.state(), s.reason()), (SiteState::Trampoline, Some(NotDirect::NotInitialized)), "{s}");
    }
    assert_eq!(((a.traced)(1), (a.traced_likely)(1)), (1, 1));
    assert!(!a.key.get());
    assert_eq!((a.branch_sites_patched)(), 0);

    // Host -> plugin: the host's first set of alpha's branch is alpha's
    // copy's first update, which registers it and patches both sites.
    let (host_updates, alpha_updates) = (static_call::stats().updates, (a.updates)());
    assert_eq!(a.key.try_set(true), Ok(false), "the host sets alpha's branch");
    assert_eq!((a.updates)(), alpha_updates + 1, "alpha's copy made the set");
    assert_eq!(static_call::stats().updates, host_updates, "the host's copy did not");
    let patched = (a.branch_sites_patched)();
    assert!(patched >= 2, "alpha's copy patched its two sites: {patched}");
    assert_alpha(&a, &alpha, true);
    assert_host(false);
    assert_eq!((a.init)(), 0, "alpha's init after its registration: nothing more to do");
    assert_eq!((a.branch_sites_patched)(), patched);
    assert_alpha(&a, &alpha, true);
    assert!(a.key.set(false));
    assert_eq!((a.branch_sites_patched)(), patched + 2, "both sites flipped by alpha's copy");
    assert_alpha(&a, &alpha, false);
    assert!(!a.key.set(false), "setting the value it has");
    assert_eq!((a.branch_sites_patched)(), patched + 2, "no site rewritten");
    assert_alpha(&a, &alpha, false);

    // The plugin sets its own branch.
    assert_eq!((a.set_trace)(true), 0);
    assert_alpha(&a, &alpha, true);
    assert_eq!((a.set_trace)(false), 1);
    assert_alpha(&a, &alpha, false);

    // Plugin -> host: made by the host's copy, which patches the host's
    // sites (alpha's copy counts no update).
    let (host_updates, alpha_updates) = (static_call::stats().updates, (a.updates)());
    assert_eq!((a.set_branch)(host_key(), true), 0, "alpha sets the host's branch");
    assert_eq!(static_call::stats().updates, host_updates + 1, "the host's copy made the set");
    assert_eq!((a.updates)(), alpha_updates, "alpha's copy did not");
    assert_host(true);
    assert_alpha(&a, &alpha, false);
    assert_eq!((a.set_branch)(host_key(), false), 1);
    assert_host(false);

    // Plugin -> plugin: beta sets alpha's branch, alpha's copy patches.
    let alpha_updates = (a.updates)();
    assert_eq!(beta_set_branch(a.key, true), 0);
    assert_eq!((a.updates)(), alpha_updates + 1);
    assert_alpha(&a, &alpha, true);

    // A host batch with branches of two copies: both change.
    static_call::batch(|b| {
        b.set(&HOST_TRACE, true);
        b.set(a.key, false);
    })
    .unwrap();
    assert_host(true);
    assert_alpha(&a, &alpha, false);
    static_call::batch(|b| {
        b.set(a.key, true);
        b.set(&HOST_TRACE, false);
        b.set(a.key, false);
    })
    .unwrap();
    assert_host(false);
    assert_alpha(&a, &alpha, false);

    // Under load: callers run both modules' sites while the host sets
    // alpha's branch and alpha sets the host's.
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let (traced, traced_likely) = (a.traced, a.traced_likely);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (stop, wrong) = (stop.clone(), wrong.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let during = SETTING.load(SeqCst);
                    let ok = [100, 101].contains(&host_unlikely(100))
                        && [100, 101].contains(&host_likely(100))
                        && [100, 1100].contains(&traced(100))
                        && [100, 1100].contains(&traced_likely(100));
                    if !ok {
                        wrong.fetch_add(1, Relaxed);
                    }
                    if during {
                        OVERLAPPED.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    HOST_TRACE.set(true);
    let (alpha_base, host_base) = ((a.traps)(), traps(static_call::stats()));
    let mut i = 0u32;
    loop {
        let done = if common::TRAPS {
            let host_done = !HOST_PATCHES || traps(static_call::stats()) >= host_base + 5;
            (a.traps)() >= alpha_base + 5 && host_done || i >= 100_000
        } else {
            i >= 200 && OVERLAPPED.load(SeqCst) >= 10 || i >= 100_000
        };
        if done {
            break;
        }
        let v = i.is_multiple_of(2);
        SETTING.store(true, SeqCst);
        assert_eq!(a.key.try_set(v), Ok(!v));
        assert_eq!((a.set_branch)(host_key(), !v), i32::from(v));
        SETTING.store(false, SeqCst);
        assert_eq!(((a.traced)(1), (a.traced_likely)(1)), if v { (1001, 1001) } else { (1, 1) });
        assert_eq!((host_unlikely(1), host_likely(1)), if v { (1, 1) } else { (2, 2) });
        i += 1;
    }
    stop.store(true, Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(wrong.load(Relaxed), 0, "every call took the branch of a value its key had");
    eprintln!(
        "{i} rounds ({} calls during one); alpha's traps {}, host {:?}",
        OVERLAPPED.load(SeqCst),
        (a.traps)() - alpha_base,
        static_call::stats()
    );
    if common::TRAPS {
        assert!((a.traps)() >= alpha_base + 5, "alpha's handler emulated jumps at alpha's sites");
        assert!(!HOST_PATCHES || traps(static_call::stats()) >= host_base + 5, "the host's handler did");
    } else {
        assert!(OVERLAPPED.load(SeqCst) >= 10, "calls never overlapped the sets");
    }
    let v = !i.is_multiple_of(2);
    assert_alpha(&a, &alpha, v);
    assert_host(!v);

    HOST_TRACE.set(false);
    drop(beta);
    drop(alpha);
    assert_host(false);
}

/// The host's branch as a bare key, as a plugin takes it.
fn host_key() -> &'static BranchKey {
    &HOST_TRACE
}

fn traps(s: static_call::Stats) -> u64 {
    s.traps_emulated + s.traps_rewound
}
