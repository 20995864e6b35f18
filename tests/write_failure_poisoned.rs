//! Write failures that cannot be undone, and failures during `init`, each in
//! a child process (this binary re-executed with one `#[ignore]`d test
//! selected): the failure-injection hook and the poisoned state are
//! process-wide and permanent.
//!
//! - A one-shot failure in `init` leaves every site and trampoline as
//!   assembled; `init` then succeeds.
//! - Every write failing from step 2 of an update on: the rollback fails too,
//!   the update returns `Poisoned`, the int3s left behind keep being emulated
//!   (calls reach the new target), and every later update or `init` returns
//!   `Poisoned` without touching text, even with writes working again.
//! - The same during `init`: a later `init` returns `Poisoned` too.
//!
//! On aarch64 an update is one step with no breakpoint: the failures start
//! at its second write (its first when it has one), and what the poisoned
//! update leaves behind is each instruction in its old or its new form,
//! both valid, rather than int3s. Where the aarch64 probe refuses the
//! `/proc/self/mem` writer (`ESTALE` under QEMU user mode), a child forcing
//! it says so and stops.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child};

use static_call::__private::{fail_text_write_after, trampoline_of};
use static_call::{static_call, Error, SiteState};

extern "C" fn a(x: u64) -> u64 {
    x + 1
}
extern "C" fn b(x: u64) -> u64 {
    x + 2
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = a;

// Two sites in two functions that differ (`black_box`), so that a release
// build does not merge them into one (LLVM's function merging folds
// identical bodies: one function, one site).
#[inline(never)]
fn s1(x: u64) -> u64 {
    K.call(x)
}
#[inline(never)]
fn s2(x: u64) -> u64 {
    K.call(std::hint::black_box(x))
}

/// Each site's patch (from the byte before its address on x86-64, where
/// the `int3` goes), and the trampoline.
fn text() -> (Vec<Vec<u8>>, [u8; 32]) {
    let t = trampoline_of(&*K).unwrap();
    let mut image = [0u8; 32];
    for (i, x) in image.iter_mut().enumerate() {
        // SAFETY: a trampoline is 32 bytes of mapped, readable text.
        *x = unsafe { std::ptr::read_volatile((t + i) as *const u8) };
    }
    (K.sites().iter().map(|s| common::read_bytes(common::patch_of(s.address()), common::PATCH_LEN)).collect(), image)
}

/// Page-runs of K's patches (sites and trampoline): of their first bytes
/// (step 1 and 3 writes) and of their bodies (step 2).
fn runs() -> (usize, usize) {
    let mut insns: Vec<usize> =
        K.sites().iter().map(|s| common::patch_of(s.address())).chain(trampoline_of(&*K)).collect();
    insns.sort_unstable();
    (common::page_runs(insns.iter().copied()), common::page_runs(insns.iter().map(|a| a + 1)))
}

/// Whether this is aarch64 (one-step updates, no int3).
const ARM: bool = cfg!(target_arch = "aarch64");

/// The writes of the one step of an aarch64 update of every instruction of
/// K (sites and trampoline): one per page-run (mprotect writer), one per
/// instruction (`/proc/self/mem`).
fn arm_writes(writer: &str) -> usize {
    if writer == "mprotect" {
        runs().0
    } else {
        K.sites().len() + 1
    }
}

/// The first write that fails for good, so that the rollback fails too:
/// the first of step 2 (x86-64); the second of the one step (aarch64), or
/// its first if it has only one (the rollback then rewrites it, and fails).
fn first_unrecoverable_write() -> usize {
    if ARM {
        usize::from(runs().0 >= 2)
    } else {
        runs().0
    }
}

fn target() -> usize {
    K.get().unwrap() as usize
}

#[test]
fn a_failed_init_changes_nothing_and_can_be_retried() {
    for writer in ["procmem", "mprotect"] {
        run_child("init_failure_child", &[("STATIC_CALL_WRITER", writer)]);
    }
}

#[test]
#[ignore = "child process of a_failed_init_changes_nothing_and_can_be_retried"]
fn init_failure_child() {
    if !in_child("init_failure_child") {
        return;
    }
    let assembled = text();
    let (r1, r2) = runs();
    let writer = std::env::var("STATIC_CALL_WRITER").unwrap();
    let failing = if ARM { vec![0, arm_writes(&writer) - 1] } else { vec![0, r1 - 1, r1, r1 + r2 - 1] };
    for n in failing {
        fail_text_write_after(n, 1);
        let e = static_call::init().expect_err("the injected failure fails init");
        if let Some(errno) = common::proc_mem_refused(&Err(e)) {
            println!("\nchild init_failure_child: skipped: the /proc/self/mem writer is refused here (errno {errno})");
            println!("\nchild init_failure_child: done");
            return;
        }
        assert!(matches!(e, Error::TextNotWritable { .. }), "{e:?}");
        assert_eq!(text(), assembled, "a failed init (write {n}) left changes behind");
        assert!(K.sites().iter().all(|s| s.state() == SiteState::Trampoline));
        assert_eq!((s1(1), s2(1)), (2, 2));
        common::assert_no_wx();
    }
    static_call::init().unwrap();
    assert!(K.sites().iter().all(|s| s.state() == SiteState::Direct));
    K.update(b);
    assert_eq!((s1(1), s2(1)), (3, 3));
    common::assert_no_wx();
    println!("\nchild init_failure_child: done");
}

#[test]
fn an_update_that_cannot_be_undone_poisons() {
    for writer in ["procmem", "mprotect"] {
        run_child("poisoned_update_child", &[("STATIC_CALL_WRITER", writer)]);
    }
}

#[test]
#[ignore = "child process of an_update_that_cannot_be_undone_poisons"]
fn poisoned_update_child() {
    if !in_child("poisoned_update_child") {
        return;
    }
    let init = static_call::init();
    if let Some(errno) = common::proc_mem_refused(&init) {
        println!("\nchild poisoned_update_child: skipped: the /proc/self/mem writer is refused here (errno {errno})");
        println!("\nchild poisoned_update_child: done");
        return;
    }
    init.unwrap();
    let protections: Vec<_> = K.sites().iter().map(|s| common::protection_of(s.address())).collect();
    // Step 1 completes; from the first body write of step 2 on, every
    // write fails, so the rollback fails too (aarch64: see above).
    fail_text_write_after(first_unrecoverable_write(), usize::MAX);
    let e = K.try_update(b).expect_err("the injected failures fail the update");
    let Error::Poisoned { address, errno } = e else { panic!("expected Poisoned, got {e:?}") };
    assert_eq!(errno, libc::EIO);
    let ours = K.sites().into_iter().map(|s| common::patch_of(s.address())).chain(trampoline_of(&*K));
    assert!(
        ours.flat_map(|at| at..at + common::PATCH_LEN).any(|at| at == address),
        "{address:#x} is not being patched"
    );
    assert_eq!(target(), b as *const () as usize);
    if common::TRAPS {
        // The int3s stay, and are emulated as the new instruction.
        let (sites, _) = text();
        assert!(sites.iter().all(|s| s[0] == 0xcc), "{sites:x?}");
        let emulated = static_call::stats().traps_emulated;
        assert_eq!((s1(1), s2(1)), (3, 3));
        assert!(static_call::stats().traps_emulated >= emulated + 2);
    } else {
        // Each site calls the old target or the new one (judged by what
        // the function it calls computes: a function may have more than one
        // copy, so more than one address), and the calls reach what it
        // calls.
        let want = |s: &static_call::Site| {
            let t = common::call_target(s.address(), s.bytes()).unwrap_or_else(|| panic!("not a call: {s}"));
            // SAFETY: a direct call of K's sites targets an `extern "C"
            // fn(u64) -> u64` (its old or new target), which the assertion
            // below checks by its result.
            let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(t) };
            let r = f(1);
            assert!(r == a(1) || r == b(1), "neither the old nor the new target: {s} returned {r}");
            r
        };
        let sites = K.sites();
        assert_eq!(sites.len(), 2, "{sites:#?}");
        let wants: Vec<u64> = sites.iter().map(want).collect();
        assert!(wants.contains(&s1(1)) && wants.contains(&s2(1)), "{:?} for {sites:#?}", (s1(1), s2(1)));
    }
    assert_eq!(K.sites().iter().map(|s| common::protection_of(s.address())).collect::<Vec<_>>(), protections);
    common::assert_no_wx();

    // Nothing runs any more, even with writes working again.
    fail_text_write_after(0, 0);
    let before = text();
    assert_eq!(K.try_update(a).expect_err("poisoned"), e);
    assert_eq!(static_call::init(), Ok(()), "init had completed before");
    assert_eq!(K.try_reset().expect_err("poisoned"), e);
    assert_eq!(text(), before);
    assert_eq!(target(), b as *const () as usize);
    let msg = std::panic::catch_unwind(|| K.update(a)).expect_err("update panics").downcast::<String>().unwrap();
    assert!(msg.contains(&format!("{address:#x}")) && msg.contains("errno 5"), "{msg}");
    if common::TRAPS {
        assert_eq!((s1(1), s2(1)), (3, 3));
    }
    common::assert_no_wx();
    println!("\nchild poisoned_update_child: done");
}

#[test]
fn an_init_that_cannot_be_undone_poisons() {
    run_child("poisoned_init_child", &[]);
}

#[test]
#[ignore = "child process of an_init_that_cannot_be_undone_poisons"]
fn poisoned_init_child() {
    if !in_child("poisoned_init_child") {
        return;
    }
    fail_text_write_after(first_unrecoverable_write(), usize::MAX);
    let e = static_call::init().expect_err("the injected failures fail init");
    assert!(matches!(e, Error::Poisoned { errno: libc::EIO, .. }), "{e:?}");
    let before = text();
    // x86-64: the int3s left behind are emulated; aarch64: each site calls
    // the trampoline or the target, both `a`.
    assert_eq!((s1(1), s2(1)), (2, 2), "the instructions left behind reach the target");
    fail_text_write_after(0, 0);
    // A second init must not plan again over the plan the handler reads.
    assert_eq!(static_call::init(), Err(e));
    assert_eq!(K.try_update(b), Err(e));
    assert_eq!(text(), before);
    assert_eq!((s1(1), s2(1)), (2, 2));
    common::assert_no_wx();
    println!("\nchild poisoned_init_child: done");
}
