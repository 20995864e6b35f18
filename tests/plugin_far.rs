//! Far targets: a key retargeted to a function more than 2 GiB away from its
//! call sites (in a dlopen'd cdylib, and on a page mapped far away on
//! purpose) is called through the key's slot: on x86-64 each site becomes
//! one indirect call, `call qword ptr [rip + slot]` (`SiteState::Indirect`),
//! and the trampoline keeps its `jmp [rip + slot]` for whoever calls it; on
//! aarch64 (beyond ±128 MiB) sites call the trampoline, whose head falls
//! through into `adrp; ldr x16; br x16`. Near targets keep direct calls. A
//! plugin's own sites calling a function of the host are far too.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;

use plugin_support::Plugin;
use static_call::{static_call, NotDirect, SiteState, StaticCall};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;

type F = extern "C" fn(u64) -> u64;

extern "C" fn host_near(x: u64) -> u64 {
    x + 1
}

#[static_call]
static DISPATCH: extern "C" fn(u64) -> u64 = host_near;

#[static_call]
static FAR: extern "C" fn(u64) -> u64 = host_near;

#[inline(never)]
fn dispatch(x: u64) -> u64 {
    DISPATCH.call(x)
}

#[inline(never)]
fn far(x: u64) -> u64 {
    FAR.call(x)
}

use common::reaches;

fn head(at: usize) -> [u8; common::INSN_LEN] {
    // SAFETY: a trampoline of ours: mapped, readable text.
    std::array::from_fn(|i| unsafe { std::ptr::read_volatile((at + i) as *const u8) })
}

/// The trampoline head that jumps to its own `jmp [rip + slot]` at +8.
#[cfg(target_arch = "x86_64")]
const FAR_HEAD: [u8; 5] = [0xe9, 0x03, 0x00, 0x00, 0x00];
/// The trampoline head that falls through into its own far form at +4
/// (`nop`).
#[cfg(target_arch = "aarch64")]
const FAR_HEAD: [u8; 4] = 0xd503_201fu32.to_le_bytes();

/// What a site with a far target executes.
const FAR_STATE: SiteState = if cfg!(target_arch = "x86_64") { SiteState::Indirect } else { SiteState::Trampoline };

/// Set around each update under load (aarch64's proof that calls overlapped
/// updates: no trap there).
static UPDATING: AtomicBool = AtomicBool::new(false);
/// Calls that started while an update was in progress.
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

fn assert_all(key_sites: Vec<static_call::Site>, state: SiteState, reason: Option<NotDirect>) {
    assert!(!key_sites.is_empty());
    for s in key_sites {
        assert_eq!((s.state(), s.reason()), (state, reason), "{s}");
    }
}

#[test]
fn a_function_in_a_cdylib() {
    static_call::init().unwrap();
    let alpha = Plugin::load("alpha");
    let f: F = alpha.func("alpha_dispatch");
    let tramp = static_call::__private::trampoline_of(DISPATCH.key()).unwrap();
    assert_all(DISPATCH.sites(), SiteState::Direct, None);

    DISPATCH.update(f);
    assert_eq!(dispatch(10), 31);
    let far = DISPATCH.sites().iter().all(|s| !reaches(s.address(), f as usize));
    let near = DISPATCH.sites().iter().all(|s| reaches(s.address(), f as usize));
    eprintln!(
        "alpha_dispatch at {:#x}, sites at {:#x}: {}",
        f as usize,
        DISPATCH.sites()[0].address(),
        if far { "far" } else { "near" }
    );
    if far {
        assert_all(DISPATCH.sites(), FAR_STATE, Some(NotDirect::OutOfReach));
        assert_eq!(head(tramp), FAR_HEAD, "the trampoline jumps through the slot");
    } else if near {
        assert_all(DISPATCH.sites(), SiteState::Direct, None);
    }

    // Back to a near target: direct again.
    assert_eq!(DISPATCH.update(host_near).map(|g| g as usize), Some(f as usize));
    assert_eq!(dispatch(10), 11);
    assert_all(DISPATCH.sites(), SiteState::Direct, None);
    assert_ne!(head(tramp), FAR_HEAD);
}

#[test]
fn a_function_on_a_far_page_under_load() {
    static_call::init().unwrap();
    let site = FAR.sites()[0].address();
    let page = common::far_page(site);
    // SAFETY: the page holds these two functions of this signature.
    let (plus7, plus9): (F, F) =
        unsafe { (std::mem::transmute::<usize, F>(page), std::mem::transmute::<usize, F>(page + 16)) };
    assert!(FAR.sites().iter().all(|s| !reaches(s.address(), page)));
    let tramp = static_call::__private::trampoline_of(FAR.key()).unwrap();

    FAR.update(plus7);
    assert_eq!(far(1), 8);
    assert_all(FAR.sites(), FAR_STATE, Some(NotDirect::OutOfReach));
    assert_eq!(head(tramp), FAR_HEAD);
    // Far to far: only the slot changes.
    let patched = static_call::stats().sites_patched;
    FAR.update(plus9);
    assert_eq!(far(1), 10);
    assert_eq!(static_call::stats().sites_patched, patched, "far to far rewrites no site");
    FAR.update(host_near);
    assert_all(FAR.sites(), SiteState::Direct, None);

    // Callers keep calling while the key moves between near and far.
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (stop, wrong) = (stop.clone(), wrong.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let during = UPDATING.load(SeqCst);
                    let r = far(100);
                    if ![101, 107, 109].contains(&r) {
                        wrong.fetch_add(1, Relaxed);
                    }
                    if during {
                        OVERLAPPED.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    let targets: [F; 3] = [host_near, plus7, plus9];
    let base = static_call::__private::indirect_traps();
    let mut i = 0usize;
    // x86-64: until callers met 10 traps at an indirect-call write, each
    // emulated as that indirect call; aarch64 (under QEMU): at least 300
    // updates, until 10 calls started during one.
    loop {
        let done = if common::TRAPS {
            static_call::__private::indirect_traps().0 >= base.0 + 10 || i >= 200_000
        } else {
            i >= 300 && OVERLAPPED.load(SeqCst) >= 10 || i >= 100_000
        };
        if done {
            break;
        }
        UPDATING.store(true, SeqCst);
        FAR.update(targets[i % 3]);
        UPDATING.store(false, SeqCst);
        assert_eq!(far(0), [1, 7, 9][i % 3]);
        i += 1;
    }
    stop.store(true, Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(wrong.load(Relaxed), 0);
    eprintln!("{i} updates near/far ({} calls during one), {:?}", OVERLAPPED.load(SeqCst), static_call::stats());
    if common::TRAPS {
        assert!(
            static_call::__private::indirect_traps().0 >= base.0 + 10,
            "too few traps emulated as an indirect call"
        );
    } else {
        assert!(OVERLAPPED.load(SeqCst) >= 10, "calls never overlapped an update");
    }
    FAR.update(host_near);
    assert_all(FAR.sites(), SiteState::Direct, None);
}

/// A plugin's own sites calling a function of the host: the host retargets
/// alpha's key `STEP` to `host_near` (alpha's copy patches), and alpha's
/// sites, far from the host's text, call it through `STEP`'s slot.
#[test]
fn a_plugin_site_calling_the_host() {
    type StepKey = static_call::Key<F, u64>;
    static_call::init().unwrap();
    let alpha = Plugin::load("alpha");
    assert_eq!(alpha.func::<extern "C" fn() -> i32>("alpha_init")(), 0);
    let key: &'static StepKey = alpha.func::<extern "C" fn() -> &'static StepKey>("alpha_step_key")();
    let work: F = alpha.func("alpha_work");
    assert_eq!(work(1), 101);
    assert_all(key.sites(), SiteState::Direct, None);
    key.update(host_near);
    assert_eq!(work(1), 2);
    let far = key.sites().iter().all(|s| !reaches(s.address(), host_near as F as usize));
    eprintln!("alpha's sites {} the host", if far { "far from" } else { "near" });
    if far {
        assert_all(key.sites(), FAR_STATE, Some(NotDirect::OutOfReach));
    } else {
        assert_all(key.sites(), SiteState::Direct, None);
    }
    // Back to a function of alpha's own: direct again.
    let alpha_dispatch: F = alpha.func("alpha_dispatch");
    key.update(alpha_dispatch);
    assert_eq!(work(1), 4);
    assert_all(key.sites(), SiteState::Direct, None);
    drop(alpha);
}
