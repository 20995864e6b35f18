//! The scenario every "patching is impossible here" test runs, in a child
//! process whose environment forbids patching (DESIGN 3.10): `init` returns
//! the reason, `mode()` says `Slots(reason)`, no byte of text changes, and
//! every update, reset and batch returns `Ok` and takes effect at once, for
//! the calling thread and for callers on other threads, in a `fork()` child,
//! for a plugin's own key, a key the host retargets to a plugin, and a
//! plugin's key the host retargets. Include with `mod slots_support;` (it
//! needs `mod common;` and `mod plugin_support;` beside it).
#![allow(dead_code)]

use crate::common;
use crate::plugin_support::Plugin;
use static_call::{static_call, Error, Key, Mode, NotDirect, SiteState, StaticCall};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;

type F = extern "C" fn(u64) -> u64;

extern "C" fn a(x: u64) -> u64 {
    x + 1
}
extern "C" fn b(x: u64) -> u64 {
    x + 2
}
extern "C" fn c(x: u64) -> u64 {
    x + 3
}

static EVENTS: AtomicU64 = AtomicU64::new(0);
extern "C" fn count_event(n: u32) {
    EVENTS.fetch_add(n as u64, SeqCst);
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = a;
#[static_call]
static NONE: extern "C" fn(u64) -> u64;
#[static_call]
static EVENT: extern "C" fn(u32);

#[inline(never)]
fn call_k(x: u64) -> u64 {
    K.call(x)
}
#[inline(never)]
fn call_none(x: u64) -> u64 {
    NONE.call(x)
}
#[inline(never)]
fn event(n: u32) {
    EVENT.call(n)
}

fn snapshot() -> Vec<(usize, [u8; 5])> {
    [K.sites(), NONE.sites(), EVENT.sites()].concat().iter().map(|s| (s.address(), s.bytes())).collect()
}

/// Runs the scenario; `reason` judges the error `init` returns. Returns it.
/// `alpha_patches`: whether the plugin's own copy can patch in this
/// process (a condition that is the host copy's alone, like a test hook,
/// does not reach it).
/// `forbid` makes patching impossible (it runs after the plugin is built:
/// building runs cargo, which a sandbox might hinder).
pub fn run(what: &str, forbid: impl FnOnce(), reason: impl Fn(&Error) -> bool, alpha_patches: bool) -> Error {
    // A parent that hid /proc from this child built the plugin for it.
    let alpha_path = match std::env::var_os("STATIC_CALL_TEST_ALPHA") {
        Some(p) => p.into(),
        None => crate::plugin_support::plugin("alpha"),
    };
    forbid();
    let text_before = snapshot();
    assert!(!text_before.is_empty());
    assert_eq!(static_call::mode(), Mode::NotInitialized);

    let e = static_call::init().expect_err("patching is impossible here");
    assert!(reason(&e), "{what}: unexpected reason {e:?}");
    println!("child {what}: init: {e}");
    assert_eq!(static_call::mode(), Mode::Slots(e));
    assert_eq!(static_call::init(), Err(e), "init keeps saying why");
    assert_eq!(static_call::text_writer(), None);
    for s in [K.sites(), NONE.sites(), EVENT.sites()].concat() {
        assert_eq!((s.state(), s.reason()), (SiteState::Trampoline, Some(NotDirect::Slots)), "{s}");
    }

    // The calling thread: every update takes effect at once.
    assert_eq!(call_k(1), 2);
    assert_eq!(K.update(b).map(|f| f(0)), Some(1));
    assert_eq!(call_k(1), 3);
    assert_eq!(K.try_update(c).map(|o| o.map(|f| f(0))), Ok(Some(2)));
    assert_eq!(call_k(1), 4);
    assert_eq!(K.reset().map(|f| f(0)), Some(3));
    assert_eq!(call_k(1), 0);
    assert!(K.get().is_none());
    assert_eq!(call_none(5), 0);
    assert!(NONE.update(a).is_none());
    assert_eq!(call_none(5), 6);
    event(3);
    assert_eq!(EVENTS.load(SeqCst), 0, "no target: nothing runs");
    EVENT.update(count_event);
    event(3);
    assert_eq!(EVENTS.load(SeqCst), 3);
    EVENT.reset();
    event(3);
    assert_eq!(EVENTS.load(SeqCst), 3);
    static_call::batch(|bt| {
        bt.update(&K, a);
        bt.update(&NONE, b);
        bt.update(&EVENT, count_event);
    })
    .unwrap();
    event(1);
    assert_eq!((call_k(1), call_none(1), EVENTS.load(SeqCst)), (2, 3, 4));

    // Callers on other threads, judged against the target of the round.
    let round = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    const TARGETS: [Option<F>; 4] = [Some(a), Some(b), None, Some(c)];
    fn expect(r: u64, x: u64) -> u64 {
        TARGETS[(r % 4) as usize].map_or(0, |f| f(x))
    }
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (round, stop, wrong, calls) = (round.clone(), stop.clone(), wrong.clone(), calls.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    // A call made between the end of update r0 and the end of
                    // update r1 + 1 reaches the target of one of r0..=r1 + 1.
                    let r0 = round.load(SeqCst);
                    let got = call_k(100);
                    let r1 = round.load(SeqCst);
                    if !(r0..=r1 + 1).any(|r| got == expect(r, 100)) {
                        wrong.fetch_add(1, SeqCst);
                    }
                    calls.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for r in 0..2_000u64 {
        match TARGETS[(r % 4) as usize] {
            Some(f) => K.update(f),
            None => K.reset(),
        };
        round.store(r, SeqCst);
        assert_eq!(call_k(100), expect(r, 100), "round {r}");
        let seen = calls.load(SeqCst);
        while calls.load(SeqCst) == seen {
            std::hint::spin_loop();
        }
    }
    stop.store(true, SeqCst);
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(wrong.load(SeqCst), 0, "{what}: a call reached a target it could not reach");
    println!("child {what}: 2000 updates, {} calls on 3 threads, 0 wrong", calls.load(SeqCst));

    // A fork child updates and calls too.
    K.update(a);
    // SAFETY: the child only calls our functions and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = call_k(1) == 2 && K.try_update(b).is_ok() && call_k(1) == 3;
        // SAFETY: async-signal-safe exit.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "fork child: {status:#x}");
    assert_eq!(call_k(1), 2, "the parent is untouched");

    // A plugin: its own copy runs on the slots too; its key, updated by it
    // and by the host; a host key retargeted to the plugin.
    let alpha = Plugin::open(alpha_path);
    let alpha_init = alpha.func::<extern "C" fn() -> i32>("alpha_init")();
    assert_eq!(alpha_init == 0, alpha_patches, "alpha's copy patches only where the process allows it");
    let work: F = alpha.func("alpha_work");
    let set_mode: extern "C" fn(u32) -> i32 = alpha.func("alpha_set_mode");
    let dispatch: F = alpha.func("alpha_dispatch");
    let step: &'static Key<F, u64> = alpha.func::<extern "C" fn() -> &'static Key<F, u64>>("alpha_step_key")();
    assert_eq!(work(2), 102);
    assert_eq!(set_mode(1), 0);
    assert_eq!(work(2), 200);
    step.update(c);
    assert_eq!(work(2), 5, "the host retargets the plugin's key");
    step.reset();
    assert_eq!(work(2), 0);
    K.update(dispatch);
    assert_eq!(call_k(2), 7, "the host's key calls into the plugin");
    K.update(a);
    step.update(c);
    drop(alpha);

    assert_eq!(snapshot(), text_before, "{what}: no byte of text changed");
    if std::path::Path::new("/proc/self/maps").exists() {
        common::assert_no_wx();
    }
    assert!(static_call::stats().sites_patched == 0 && static_call::stats().traps_emulated == 0);
    let _ = K.key();
    e
}

/// Whether this process may set `prctl(PR_SET_MDWE)` (Linux 6.3 and later;
/// QEMU 7.2 user mode refuses the option with `EINVAL`). Tried in a `fork()`
/// child, since MDWE cannot be unset.
pub fn mdwe_works() -> bool {
    // SAFETY: the child makes one system call and exits.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let r = libc::prctl(libc::PR_SET_MDWE, libc::PR_MDWE_REFUSE_EXEC_GAIN as libc::c_ulong, 0, 0, 0);
            libc::_exit(if r == 0 { 0 } else { 1 });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}
