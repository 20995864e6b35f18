//! tests/fork_inherited_update.rs with two of
//! the targets far (x86-64: the sites move to and from the indirect form).
//!
//! `fork()` in the middle of another thread's update of a copy that
//! registers no atfork handler (a plugin's copy, which may be unloaded; here
//! the executable's copy is made to behave so): the child inherits the
//! update half-done. Until it enters the crate, its calls reach the old or
//! the new target of that update (the inherited plan keeps the `int3`s
//! emulated); on its first entry it finishes the update, after which its
//! calls reach exactly the key's target, it can update the key itself, its
//! text is protected as before, and it exits cleanly. The parent proves that
//! children did finish inherited updates. Run with each text writer.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::t1;
use std::sync::atomic::AtomicUsize;
type F = extern "C" fn(u64) -> u64;
static PAGE: AtomicUsize = AtomicUsize::new(0);
fn f7() -> F {
    // SAFETY: `PAGE` holds a copy of a `F` mapped far away (set before use).
    unsafe { std::mem::transmute::<usize, F>(PAGE.load(SeqCst)) }
}
fn f9() -> F {
    // SAFETY: as above, the second copy on that page.
    unsafe { std::mem::transmute::<usize, F>(PAGE.load(SeqCst) + 16) }
}
use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site_a(x: u64) -> u64 {
    K.call(x)
}
#[inline(never)]
fn site_b(x: u64) -> u64 {
    match K.call(x + 1) {
        0 => 0,
        r => r - 1,
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
static REAPED: AtomicU64 = AtomicU64::new(0);
const CHILDREN: u64 = 300;

/// Whether `r` is what one of the updater's targets returns for `x`.
fn some_target(r: u64, x: u64) -> bool {
    r == 0 || r == x + 7 || r == x + 9 || (r >> 48 == 1 && r & 0xffff == x)
}

fn expected(x: u64) -> u64 {
    K.get().map_or(0, |f| f(x))
}

/// The child's checks; the exit status says which failed. 0: right, and no
/// inherited update; 1: right, and it finished an inherited update.
fn child(protections: &std::collections::BTreeMap<usize, String>) -> i32 {
    // Before entering the crate: old or new target, never anything else.
    for x in [5, 6] {
        if !some_target(site_a(x), x) || !some_target(site_b(x), x) {
            return 10;
        }
    }
    // The first entry finishes what the parent's thread was doing.
    let sites = K.sites();
    let finished = static_call::__private::inherited_updates_finished();
    for x in [5, 6] {
        if site_a(x) != expected(x) || site_b(x) != expected(x) {
            return 11;
        }
    }
    let far = K.get().is_some_and(|f| f as usize >= PAGE.load(SeqCst) && (f as usize) < PAGE.load(SeqCst) + 4096);
    let want = if far && cfg!(target_arch = "x86_64") {
        static_call::SiteState::Indirect
    } else if far {
        // aarch64 has no indirect site form: far sites call the trampoline.
        static_call::SiteState::Trampoline
    } else if K.get().is_some() {
        static_call::SiteState::Direct
    } else {
        static_call::SiteState::Zero
    };
    if sites.iter().any(|s| s.state() != want) {
        return 12;
    }
    for (i, f) in [f9(), t1 as F, f7()].into_iter().enumerate() {
        if K.try_update(f).is_err() {
            return 20 + i as i32;
        }
        if site_a(9) != f(9) || site_b(9) != f(9) {
            return 30 + i as i32;
        }
    }
    if K.try_reset().is_err() || site_a(9) != 0 || site_b(9) != 0 {
        return 40;
    }
    if std::panic::catch_unwind(|| common::assert_text_protected(protections)).is_err() {
        return 50;
    }
    i32::from(finished > 0)
}

fn fork_during_updates() {
    static_call::__private::no_atfork();
    static_call::init().unwrap();
    PAGE.store(common::far_page(site_a as fn(u64) -> u64 as usize), SeqCst);
    let protections = common::page_protections(K.sites().iter().map(|s| s.address()), common::INSN_LEN);
    common::watchdog("fork_inherited_update", &REAPED, std::time::Duration::from_secs(60));
    let updater = std::thread::spawn(move || {
        let targets = [Some(t1 as F), Some(f7()), None, Some(f9())];
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
            assert!(some_target(r, 7), "{r:#x}");
            n += 1;
        }
        n
    });
    let mut failures = Vec::new();
    let mut finished = 0;
    for i in 0..CHILDREN {
        // SAFETY: the child runs `child()` and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = child(&protections);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        REAPED.fetch_add(1, SeqCst);
        match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
            (true, 0) => {}
            (true, 1) => finished += 1,
            _ => failures.push((i, status)),
        }
    }
    STOP.store(true, SeqCst);
    let updates = updater.join().unwrap();
    let calls = caller.join().unwrap();
    common::assert_text_protected(&protections);
    eprintln!("{CHILDREN} children ({finished} finished an inherited update), {updates} updates, {calls} calls");
    assert!(failures.is_empty(), "children failed (index, wait status: 10 calls before entry, 11/12 after, 2x/3x/40 updates, 50 protection): {failures:?}");
    assert!(finished > 0, "no child inherited an update half-done: the interesting path did not run");
    eprintln!("child fork_during_updates: done");
}

#[test]
fn with_the_default_writer() {
    common::run_child("fork_child", &[]);
}

#[test]
fn with_the_mprotect_writer() {
    common::run_child("fork_child", &[("STATIC_CALL_WRITER", "mprotect")]);
}

#[test]
#[ignore]
fn fork_child() {
    if common::in_child("fork_child") {
        fork_during_updates();
        eprintln!("child fork_child: done");
    }
}
