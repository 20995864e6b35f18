//! The two text writers, each forced in a child process (this binary
//! re-executed with the `#[ignore]`d test selected; the writer is chosen once
//! per process), patching while callers run and while a watcher thread reads
//! `/proc/self/maps` over and over:
//!
//! - `procmem`: no protection ever changes, and no mapping is ever writable
//!   and executable, at any moment the watcher looks.
//! - `mprotect`: a page of a site or trampoline never loses execute, at any
//!   moment the watcher looks; after every update each page has exactly its
//!   original protection and no mapping is writable and executable.
//!
//! Without `STATIC_CALL_WRITER`, the probe picks `/proc/self/mem` first.
//!
//! aarch64: the probe accepts `/proc/self/mem` only where the kernel's copy
//! stores whole instructions (no FEAT_MOPS: else `EOPNOTSUPP`) and the
//! instruction stream sees its writes (else `ESTALE`: QEMU user mode, whose
//! translated code notices writes only through its own page protections).
//! `proc_mem_probe_on_aarch64` proves which happened here, and that updates
//! take effect either way; the default then is the mprotect writer, and the
//! `/proc/self/mem` scenario says it is skipped. Where an x86-64 test waits
//! for the int3 path, aarch64 (which has none) proves that calls started
//! while an update was in progress.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child};

use static_call::{static_call, Error, SiteState, TextWriter};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

extern "C" fn a(x: u64) -> u64 {
    x + 1
}
extern "C" fn b(x: u64) -> u64 {
    x + 2
}
extern "C" fn c(x: u64) -> u64 {
    x + 3
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = a;

#[inline(never)]
fn call_k(x: u64) -> u64 {
    K.call(x)
}
#[inline(never)]
fn call_k_twice(x: u64) -> u64 {
    K.call(x) + K.call(x)
}

#[test]
fn default_probe_picks_proc_mem() {
    if cfg!(target_arch = "aarch64") {
        // The default is `/proc/self/mem` exactly where its probe accepts it.
        let out = run_child("writer_child", &[("EXPECT_WRITER", "probed")]);
        let want = if proc_mem_probe().is_some() { "Mprotect" } else { "ProcMem" };
        assert!(out.contains(&format!("child writer_child: {want}:")), "the default writer is not {want}:\n{out}");
    } else {
        run_child("writer_child", &[("EXPECT_WRITER", "procmem")]);
    }
}

#[test]
fn proc_mem_writer_never_changes_protection() {
    let out = run_child("writer_child", &[("STATIC_CALL_WRITER", "procmem"), ("EXPECT_WRITER", "procmem")]);
    eprintln!("{}", out.lines().filter(|l| l.contains("skipped")).collect::<Vec<_>>().join("\n"));
}

/// Runs `probe_child` (`/proc/self/mem` forced) and returns the errno with
/// which the aarch64 probe refused that writer, or `None` where it is used.
fn proc_mem_probe() -> Option<i32> {
    let out = run_child("probe_child", &[("STATIC_CALL_WRITER", "procmem")]);
    let line = out.lines().find(|l| l.starts_with("child probe_child: ") && !l.ends_with("done")).unwrap();
    eprintln!("{line}");
    line.split("refused, errno ").nth(1).map(|n| n.split_whitespace().next().unwrap().parse().unwrap())
}

#[test]
fn proc_mem_probe_on_aarch64() {
    let refused = proc_mem_probe();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(refused, None, "x86-64 never refuses the /proc/self/mem writer for its probe");
    }
}

#[test]
#[ignore = "child process of proc_mem_probe_on_aarch64"]
fn probe_child() {
    if !in_child("probe_child") {
        return;
    }
    let init = static_call::init();
    let what = match (static_call::mode(), init) {
        (static_call::Mode::Patching(TextWriter::ProcMem), Ok(())) => {
            assert_eq!(static_call::text_writer(), Some(TextWriter::ProcMem));
            assert!(K.sites().iter().all(|s| s.state() == SiteState::Direct));
            "/proc/self/mem writer in use, sites patched".to_string()
        }
        (static_call::Mode::Slots(e), Err(e2)) if cfg!(target_arch = "aarch64") => {
            assert_eq!(e, e2, "mode() says why init failed");
            let Error::TextNotWritable { errno: 0, proc_mem_errno, .. } = e else { panic!("unexpected reason {e:?}") };
            assert!([libc::ESTALE, libc::EOPNOTSUPP].contains(&proc_mem_errno), "{e:?}");
            assert_eq!(static_call::text_writer(), None);
            assert!(K.sites().iter().all(|s| s.state() == SiteState::Trampoline));
            format!("/proc/self/mem writer refused, errno {proc_mem_errno} ({e}); calls through the slots")
        }
        (m, r) => panic!("unexpected mode {m:?} after init {r:?}"),
    };
    // Either way, every update takes effect, judged at every site.
    let targets = [a as extern "C" fn(u64) -> u64, b, c];
    for i in 0..30 {
        K.update(targets[(i + 1) % 3]);
        let n = ((i + 1) % 3) as u64 + 1;
        assert_eq!((call_k(10), call_k_twice(10)), (10 + n, 2 * (10 + n)), "update {i} took effect");
    }
    println!("\nchild probe_child: {what}; 30 updates took effect");
    println!("\nchild probe_child: done");
}

#[test]
fn mprotect_writer_keeps_execute_and_restores_protection() {
    run_child("writer_child", &[("STATIC_CALL_WRITER", "mprotect"), ("EXPECT_WRITER", "mprotect")]);
}

#[test]
#[ignore = "child process of the writer tests"]
fn writer_child() {
    if !in_child("writer_child") {
        return;
    }
    let writer = match std::env::var("EXPECT_WRITER").as_deref() {
        Ok("mprotect") => Some(TextWriter::Mprotect),
        Ok("probed") => None,
        _ => Some(TextWriter::ProcMem),
    };
    // Every page holding a byte of a site or of the trampoline.
    let tramp = static_call::__private::trampoline_of(&*K).unwrap();
    let mut addrs: Vec<usize> = K.sites().iter().map(|s| s.address()).chain([tramp]).collect();
    addrs.extend(addrs.clone().iter().map(|a| a + 4));
    let original: Vec<String> = addrs.iter().map(|&a| common::protection_of(a)).collect();
    assert!(original.iter().all(|p| p.contains('x') && !p.contains('w')), "{original:?}");

    // The watcher: what it saw lacking execute, writable, or W+X anywhere.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, addrs, original) = (stop.clone(), addrs.clone(), original.clone());
        std::thread::spawn(move || {
            let (mut looks, mut lost_x, mut changed, mut wx_seen) = (0u64, Vec::new(), 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                // /proc/self/maps is read in several read()s: one taken while
                // another thread's mprotect splits or merges the text's
                // mappings can miss one (seen under QEMU with the machine
                // loaded). Read again; text missing from three reads in a
                // row is text unmapped.
                let holds_all =
                    |maps: &[common::Mapping]| addrs.iter().all(|a| maps.iter().any(|m| m.start <= *a && *a < m.end));
                let maps = (0..3).map(|_| common::mappings()).find(|maps| holds_all(maps)).expect("text stays mapped");
                for (a, orig) in addrs.iter().zip(&original) {
                    let m = maps.iter().find(|m| m.start <= *a && *a < m.end).unwrap();
                    if !m.perms.contains('x') {
                        lost_x.push((*a, m.perms.clone()));
                    }
                    changed += (m.perms != *orig) as u64;
                }
                wx_seen += maps.iter().any(|m| m.perms.contains('w') && m.perms.contains('x')) as u64;
                looks += 1;
            }
            (looks, lost_x, changed, wx_seen)
        })
    };

    let wrong = Arc::new(AtomicU64::new(0));
    // Set around each update; callers count the calls that started while it
    // was set.
    static UPDATING: AtomicBool = AtomicBool::new(false);
    static OVERLAPPED: AtomicU64 = AtomicU64::new(0);
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, wrong) = (stop.clone(), wrong.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let during = UPDATING.load(Ordering::SeqCst);
                    let (r, r2) = (call_k(10), call_k_twice(10));
                    if !(11..=13).contains(&r) || !(22..=26).contains(&r2) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    OVERLAPPED.fetch_add(during as u64, Ordering::SeqCst);
                }
            })
        })
        .collect();

    let init = static_call::init();
    if let Some(errno) = common::proc_mem_refused(&init) {
        stop.store(true, Ordering::Relaxed);
        println!("\nchild writer_child: skipped: the /proc/self/mem writer is refused here (errno {errno})");
        println!("\nchild writer_child: done");
        return;
    }
    init.unwrap();
    let writer = writer.unwrap_or_else(|| static_call::text_writer().expect("a writer"));
    assert_eq!(static_call::text_writer(), Some(writer));
    let targets = [a as extern "C" fn(u64) -> u64, b, c];
    let mut i = 0usize;
    // x86-64: until the int3 path ran; aarch64: until calls started during
    // updates (at most 2,000: QEMU is slow); at least 30 updates.
    let more = |i: usize| {
        if common::TRAPS {
            (static_call::stats().traps_emulated == 0 || i < 30) && i < 200_000
        } else {
            (OVERLAPPED.load(Ordering::SeqCst) == 0 || i < 30) && i < 2_000
        }
    };
    while more(i) {
        UPDATING.store(true, Ordering::SeqCst);
        K.update(targets[(i + 1) % 3]);
        UPDATING.store(false, Ordering::SeqCst);
        assert_eq!(call_k(0), ((i + 1) % 3) as u64 + 1);
        common::assert_no_wx();
        let now: Vec<String> = addrs.iter().map(|&a| common::protection_of(a)).collect();
        assert_eq!(now, original, "protection not restored after update {i}");
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in callers {
        t.join().unwrap();
    }
    let (looks, lost_x, changed, wx_seen) = watcher.join().unwrap();
    let s = static_call::stats();
    let overlapped = OVERLAPPED.load(Ordering::SeqCst);
    println!(
        "\nchild writer_child: {writer:?}: {i} updates, watcher looked {looks} times, saw {changed} changed \
         protections and W+X {wx_seen} times; {overlapped} calls started during an update; {s:?}"
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "a call reached neither the old nor the new target");
    if common::TRAPS {
        assert!(s.traps_emulated > 0, "the int3 path never ran: {s:?}");
    } else {
        assert!(overlapped > 0, "no call started during an update");
    }
    assert!(lost_x.is_empty(), "a page of text lost execute: {lost_x:x?}");
    if writer == TextWriter::ProcMem {
        assert_eq!((changed, wx_seen), (0, 0), "the /proc/self/mem writer changed a protection");
    }
    assert!(K.sites().iter().all(|s| s.state() == SiteState::Direct));
    common::assert_no_wx();
    println!("\nchild writer_child: done");
}
