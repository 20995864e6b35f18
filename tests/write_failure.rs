//! An update is all or nothing when a text write fails: with a failure
//! injected at each step of the int3 protocol, for both writers, while
//! callers run.
//!
//! - A failure in step 1 (int3s) or step 2 (bodies) rolls back: `try_update`
//!   returns `TextNotWritable`, every site and trampoline holds exactly its
//!   previous bytes, the key keeps its target, page protections are what
//!   they were, no mapping is writable and executable, and later updates work.
//! - A failure in step 3 (first bytes) is finished rather than rolled back
//!   (`patch::apply`: some instructions are already new): the retry writes
//!   the remaining first bytes and the update succeeds, completely.
//!
//! On aarch64 an update is one step (one aligned store per changed
//! instruction, no breakpoint): a failure at any write rolls back, and the
//! callers are proven to have run during failed updates instead of having
//! met an int3. Where the aarch64 probe refuses the `/proc/self/mem` writer
//! (`ESTALE` under QEMU user mode), its child says so and stops.
//!
//! Each writer runs in a child process (this binary re-executed with one
//! `#[ignore]`d test selected), because the writer is chosen once per process.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child};

use static_call::__private::{fail_text_write_after, text_writes, trampoline_of};
use static_call::{static_call, Error, TextWriter};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

extern "C" fn a(x: u64) -> u64 {
    x + 1
}
extern "C" fn b(x: u64) -> u64 {
    x + 2
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = a;
#[static_call]
static K2: extern "C" fn(u64) -> u64 = a;

/// Whether this is aarch64 (one-step updates, no int3).
const ARM: bool = cfg!(target_arch = "aarch64");

/// Set around the failing updates; callers count the calls that started
/// while it was set.
static UPDATING: AtomicBool = AtomicBool::new(false);
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn s1(x: u64) -> u64 {
    K.call(x)
}
#[inline(never)]
fn s2(x: u64) -> u64 {
    K.call(x) + K.call(0) - 1
}
#[inline(never)]
fn t1(x: u64) -> u64 {
    K2.call(x)
}

/// Everything an update may change: the bytes of every site and of both
/// trampolines, both targets, and the protection of every page involved.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    /// Each site's address and its patch (x86-64: from the byte before
    /// the address, where the `int3` goes).
    sites: Vec<(usize, Vec<u8>)>,
    tramps: Vec<(usize, [u8; 32])>,
    targets: [usize; 2],
    protections: Vec<(usize, String)>,
}

fn snapshot() -> Snapshot {
    let patch = |at: usize| common::read_bytes(common::patch_of(at), common::PATCH_LEN);
    let sites: Vec<_> = K.sites().iter().chain(K2.sites().iter()).map(|s| (s.address(), patch(s.address()))).collect();
    let tramps: Vec<_> = [trampoline_of(&*K).unwrap(), trampoline_of(&*K2).unwrap()]
        .into_iter()
        .map(|t| {
            let mut image = [0u8; 32];
            for (i, x) in image.iter_mut().enumerate() {
                // SAFETY: a trampoline is 32 bytes of mapped, readable text.
                *x = unsafe { std::ptr::read_volatile((t + i) as *const u8) };
            }
            (t, image)
        })
        .collect();
    let targets = [K.get().unwrap() as usize, K2.get().unwrap() as usize];
    let protections = sites
        .iter()
        .map(|&(at, _)| at)
        .chain(tramps.iter().map(|&(at, _)| at))
        .flat_map(|at| [at, at + 4])
        .map(|at| (at & !4095, common::protection_of(at)))
        .collect();
    Snapshot { sites, tramps, targets, protections }
}

/// Checks a failed update's error: the injected EIO, reported for the writer
/// in use, at an address of the update.
fn check_error(e: Error, writer: TextWriter, snap: &Snapshot) {
    let Error::TextNotWritable { address, errno, proc_mem_errno } = e else { panic!("unexpected error {e:?}") };
    match writer {
        TextWriter::ProcMem => assert_eq!((errno, proc_mem_errno), (0, libc::EIO), "{e:?}"),
        _ => assert_eq!((errno, proc_mem_errno), (libc::EIO, 0), "{e:?}"),
    }
    let ours = snap.sites.iter().map(|s| common::patch_of(s.0)).chain(snap.tramps.iter().map(|t| t.0));
    assert!(
        ours.flat_map(|at| at..at + common::PATCH_LEN).any(|at| at == address),
        "{address:#x} is not being patched"
    );
}

#[test]
fn all_or_nothing_with_the_proc_mem_writer() {
    run_child("write_failure_child", &[("STATIC_CALL_WRITER", "procmem")]);
}

#[test]
fn all_or_nothing_with_the_mprotect_writer() {
    run_child("write_failure_child", &[("STATIC_CALL_WRITER", "mprotect")]);
}

#[test]
#[ignore = "child process of the all_or_nothing_* tests"]
fn write_failure_child() {
    if !in_child("write_failure_child") {
        return;
    }
    let init = static_call::init();
    if let Some(errno) = common::proc_mem_refused(&init) {
        println!("\nchild write_failure_child: skipped: the /proc/self/mem writer is refused here (errno {errno})");
        println!("\nchild write_failure_child: done");
        return;
    }
    init.unwrap();
    let writer = match std::env::var("STATIC_CALL_WRITER").as_deref() {
        Ok("mprotect") => TextWriter::Mprotect,
        _ => TextWriter::ProcMem,
    };
    assert_eq!(static_call::text_writer(), Some(writer));

    // Callers run throughout: every result comes from `a` or `b`. They count
    // the calls that started while an update was in progress.
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, wrong) = (stop.clone(), wrong.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let during = UPDATING.load(Ordering::SeqCst);
                    let (r1, r2, r3) = (s1(10), s2(10), t1(10));
                    if !(11..=12).contains(&r1) || !(11..=13).contains(&r2) || !(11..=12).contains(&r3) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    OVERLAPPED.fetch_add(during as u64, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Every site and the trampoline change (all bodies differ), so an
    // update of K writes once per page-run in each step: `r1` runs of
    // int3s, `r2` of bodies, `r1` of first bytes. On aarch64, one step:
    // `r1` runs with the mprotect writer, one write per instruction with
    // the /proc/self/mem writer.
    assert_eq!(K.sites().len(), 3);
    let mut insns: Vec<usize> =
        K.sites().iter().map(|s| common::patch_of(s.address())).chain(trampoline_of(&*K)).collect();
    insns.sort_unstable();
    let (r1, r2) = (common::page_runs(insns.iter().copied()), common::page_runs(insns.iter().map(|a| a + 1)));
    let writes = |insns: &[usize], r1: usize, r2: usize| match (ARM, writer) {
        (false, _) => 2 * r1 + r2,
        (true, TextWriter::Mprotect) => r1,
        (true, _) => insns.len(),
    };
    let w = text_writes();
    K.update(b);
    assert_eq!(text_writes() - w, writes(&insns, r1, r2), "an update of K writes once per page and step ({r1}, {r2})");
    let at_b = snapshot();
    K.update(a);
    let at_a = snapshot();
    assert_ne!(at_a.sites, at_b.sites);
    assert_eq!(at_a.protections, at_b.protections);
    common::assert_no_wx();

    // Steps 1 and 2 (aarch64: the one step, first and last write): rolled
    // back.
    let rolled_back = if ARM {
        vec![(1, 0), (1, writes(&insns, r1, r2) - 1)]
    } else {
        vec![(1, 0), (1, r1 - 1), (2, r1), (2, r1 + r2 - 1)]
    };
    for (step, n) in rolled_back {
        fail_text_write_after(n, 1);
        let e = K.try_update(b).expect_err("the injected failure fails the update");
        check_error(e, writer, &at_a);
        assert_eq!(snapshot(), at_a, "a failure at step {step} (write {n}) left changes behind");
        assert_eq!(s1(10), 11, "calls still reach the old target");
        common::assert_no_wx();
        // Later updates work.
        assert_eq!(K.update(b).map(|f| f as usize), Some(a as *const () as usize));
        assert_eq!(snapshot(), at_b);
        assert_eq!((s1(10), s2(10)), (12, 13));
        common::assert_no_wx();
        K.update(a);
        assert_eq!(snapshot(), at_a);
        common::assert_no_wx();
    }

    // Step 3: finished, and reported as done (x86-64 only: aarch64 has no
    // third step).
    let finished: &[usize] = if ARM { &[] } else { &[r1 + r2, 2 * r1 + r2 - 1] };
    for &n in finished {
        fail_text_write_after(n, 1);
        let old = K.try_update(b).expect("a failure at step 3 is finished");
        assert_eq!(old.map(|f| f as usize), Some(a as *const () as usize));
        assert_eq!(snapshot(), at_b, "a failure at step 3 (write {n}) was not finished");
        assert_eq!(s1(10), 12);
        common::assert_no_wx();
        K.update(a);
        assert_eq!(snapshot(), at_a);
        common::assert_no_wx();
    }

    // A batch of two keys fails as a whole.
    let mut both: Vec<usize> =
        insns.iter().copied().chain(K2.sites().iter().map(|s| common::patch_of(s.address()))).collect();
    both.extend(trampoline_of(&*K2));
    both.sort_unstable();
    let (b1, b2) = (common::page_runs(both.iter().copied()), common::page_runs(both.iter().map(|a| a + 1)));
    let failing: Vec<usize> = if ARM { vec![0, writes(&both, b1, b2) - 1] } else { vec![0, b1 - 1, b1, b1 + b2 - 1] };
    for n in failing {
        fail_text_write_after(n, 1);
        let e = static_call::batch(|bt| {
            bt.update(&K, b);
            bt.update(&K2, b);
        })
        .expect_err("the injected failure fails the batch");
        check_error(e, writer, &at_a);
        assert_eq!(snapshot(), at_a, "a failed batch (write {n}) left changes behind");
        common::assert_no_wx();
    }
    static_call::batch(|bt| {
        bt.update(&K, b);
        bt.update(&K2, b);
    })
    .unwrap();
    assert_eq!((s1(10), t1(10)), (12, 12));
    common::assert_no_wx();

    K.update(a);
    K2.update(a);
    let at_a = snapshot();

    // Failed updates while callers land on the int3s they write: loop until
    // a call was emulated during a failed update (bounded). On aarch64 (no
    // int3): until calls started during failed updates, at least 30 updates
    // and at most 2,000 (QEMU is slow). The update is rolled back every time.
    let before = static_call::stats();
    let overlapped_before = OVERLAPPED.load(Ordering::SeqCst);
    let total = writes(&insns, r1, r2);
    let mut i = 0usize;
    let more = |i: usize| {
        if ARM {
            (OVERLAPPED.load(Ordering::SeqCst) == overlapped_before || i < 30) && i < 2_000
        } else {
            static_call::stats().traps_emulated == before.traps_emulated && i < 200_000
        }
    };
    while more(i) {
        fail_text_write_after(if ARM { i % total } else { 1 + i % (r1 + r2 - 1) }, 1);
        UPDATING.store(true, Ordering::SeqCst);
        let r = K.try_update(b);
        UPDATING.store(false, Ordering::SeqCst);
        r.expect_err("the injected failure fails the update");
        assert_eq!(snapshot().sites[..3], at_a.sites[..3]);
        assert_eq!(K.get().map(|f| f as usize), Some(a as *const () as usize));
        common::assert_no_wx();
        i += 1;
    }
    let s = static_call::stats();
    if common::TRAPS {
        assert!(s.traps_emulated > before.traps_emulated, "no call landed on an int3 in {i} failed updates: {s:?}");
    } else {
        let overlapped = OVERLAPPED.load(Ordering::SeqCst) - overlapped_before;
        assert!(overlapped > 0, "no call started during {i} failed updates");
        println!("\nchild write_failure_child: {overlapped} calls started during {i} failed updates");
    }
    assert_eq!(snapshot(), at_a);
    common::assert_no_wx();

    stop.store(true, Ordering::Relaxed);
    for t in callers {
        t.join().unwrap();
    }
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "a call reached neither target");
    println!("\nchild write_failure_child: {writer:?}: {:?}", static_call::stats());
    println!("\nchild write_failure_child: done");
}
