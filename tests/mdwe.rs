//! Under `prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)` (what systemd's
//! `MemoryDenyWriteExecute=yes` sets), `init` and updates work while callers
//! run, through the `/proc/self/mem` writer; the `mprotect` writer, forced, is
//! refused with a message naming the policy, and the process runs on the
//! keys' slots.
//!
//! Where MDWE cannot be set (QEMU user mode refuses the `prctl`, as Linux
//! before 6.3 does), the tests say so and skip. On aarch64 the loop under
//! load proves that calls overlapped updates instead of waiting for int3s;
//! where the aarch64 probe refuses `/proc/self/mem`, the writer that MDWE
//! leaves, the child says so and stops.
//!
//! MDWE cannot be unset, so each scenario runs in a child process: this test
//! binary re-executed with one `#[ignore]`d test selected and
//! `STATIC_CALL_TEST_CHILD` naming it. The parent checks the exit status.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;
mod slots_support;

use common::{in_child, run_child};

use static_call::{static_call, Error, TextWriter};
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
static K1: extern "C" fn(u64) -> u64 = a;
#[static_call]
static K2: extern "C" fn(u64) -> u64 = a;

/// Updates in progress; callers count the calls that started during one.
static UPDATING: AtomicU64 = AtomicU64::new(0);
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn call_k1(x: u64) -> u64 {
    K1.call(x)
}
#[inline(never)]
fn call_k2(x: u64) -> u64 {
    K2.call(x)
}

/// Sets MDWE for this process and proves it is in effect: an anonymous page
/// cannot be made writable and executable.
fn set_mdwe() {
    // SAFETY: plain prctl calls with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_MDWE, libc::PR_MDWE_REFUSE_EXEC_GAIN as libc::c_ulong, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_MDWE): {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let got = unsafe { libc::prctl(libc::PR_GET_MDWE, 0, 0, 0, 0) };
    assert_eq!(got as libc::c_uint & libc::PR_MDWE_REFUSE_EXEC_GAIN, libc::PR_MDWE_REFUSE_EXEC_GAIN);

    let page = 4096;
    // SAFETY: a fresh private anonymous mapping, ours alone.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: `p` is the page mapped above; nothing runs from it.
    let r = unsafe { libc::mprotect(p, page, libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) };
    let err = std::io::Error::last_os_error();
    assert_eq!(r, -1, "MDWE is not in effect: an anonymous page became RWX");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "mprotect RWX under MDWE: {err}");
    // SAFETY: unmapping the page mapped above, no longer used.
    unsafe { libc::munmap(p, page) };
}

#[test]
fn mdwe_init_and_updates_work_under_load() {
    if !slots_support::mdwe_works() {
        eprintln!("skipped: prctl(PR_SET_MDWE) is refused here (QEMU user mode, or Linux before 6.3)");
        return;
    }
    let out = run_child("mdwe_child_patches_under_load", &[]);
    eprintln!("{}", out.lines().filter(|l| l.starts_with("child ")).collect::<Vec<_>>().join("\n"));
}

#[test]
#[ignore = "child process of mdwe_init_and_updates_work_under_load"]
fn mdwe_child_patches_under_load() {
    if !in_child("mdwe_child_patches_under_load") {
        return;
    }
    set_mdwe();
    let init = static_call::init();
    if let Some(errno) = common::proc_mem_refused(&init) {
        println!(
            "\nchild mdwe_child_patches_under_load: skipped: the /proc/self/mem writer is refused here (errno {errno})"
        );
        println!("\nchild mdwe_child_patches_under_load: done");
        return;
    }
    init.expect("init under MDWE");
    assert_eq!(static_call::text_writer(), Some(TextWriter::ProcMem));
    common::assert_no_wx();

    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, wrong, calls) = (stop.clone(), wrong.clone(), calls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let during = UPDATING.load(Ordering::SeqCst) > 0;
                    let (r1, r2) = (call_k1(100), call_k2(200));
                    if !(101..=103).contains(&r1) || !(201..=203).contains(&r2) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    OVERLAPPED.fetch_add(during as u64, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Two updaters, one key each, each making at least 50 updates and
    // going on until the int3 path ran (aarch64: until calls started
    // during updates) (bounded).
    let targets = [a as extern "C" fn(u64) -> u64, b, c];
    let updaters: Vec<_> = [(&*K1, call_k1 as fn(u64) -> u64), (&*K2, call_k2)]
        .into_iter()
        .map(|(key, call)| {
            std::thread::spawn(move || {
                let mut i = 0usize;
                let more = |i: usize| {
                    if common::TRAPS {
                        (static_call::stats().traps_emulated < 10 || i < 50) && i < 200_000
                    } else {
                        (OVERLAPPED.load(Ordering::SeqCst) < 10 || i < 50) && i < 2_000
                    }
                };
                while more(i) {
                    UPDATING.fetch_add(1, Ordering::SeqCst);
                    let old = key.try_update(targets[i % 3]).expect("update under MDWE");
                    UPDATING.fetch_sub(1, Ordering::SeqCst);
                    assert!(old.is_some());
                    assert_eq!(call(0), (i % 3) as u64 + 1, "after update returns, calls reach the new target");
                    common::assert_no_wx();
                    i += 1;
                }
                i
            })
        })
        .collect();
    let updates: Vec<usize> = updaters.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    for t in callers {
        t.join().unwrap();
    }

    let s = static_call::stats();
    println!(
        "\nchild mdwe_child_patches_under_load: {updates:?} updates, {} calls ({} started during an update), {s:?}",
        calls.load(Ordering::Relaxed),
        OVERLAPPED.load(Ordering::SeqCst)
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "a call reached neither the old nor the new target");
    assert_eq!(static_call::text_writer(), Some(TextWriter::ProcMem));
    if common::TRAPS {
        assert!(s.traps_emulated > 0, "the int3 path never ran: {s:?}");
    } else {
        assert!(OVERLAPPED.load(Ordering::SeqCst) > 0, "no call started during an update");
    }
    for k in [&*K1, &*K2] {
        assert!(k.sites().iter().all(|s| s.state() == static_call::SiteState::Direct));
    }
    common::assert_no_wx();
    println!("\nchild mdwe_child_patches_under_load: done");
}

#[test]
fn mdwe_with_the_mprotect_writer_forced_runs_on_the_slots() {
    if !slots_support::mdwe_works() {
        eprintln!("skipped: prctl(PR_SET_MDWE) is refused here (QEMU user mode, or Linux before 6.3)");
        return;
    }
    let out = run_child("mdwe_child_mprotect_forced", &[("STATIC_CALL_WRITER", "mprotect")]);
    eprintln!("{}", out.lines().filter(|l| l.starts_with("child ")).collect::<Vec<_>>().join("\n"));
}

#[test]
#[ignore = "child process of mdwe_with_the_mprotect_writer_forced_runs_on_the_slots"]
fn mdwe_child_mprotect_forced() {
    if !in_child("mdwe_child_mprotect_forced") {
        return;
    }
    let e = slots_support::run(
        "mdwe_child_mprotect_forced",
        set_mdwe,
        |e| matches!(e, Error::TextNotWritable { errno: libc::EACCES, proc_mem_errno: 0, .. }),
        false,
    );
    let msg = e.to_string();
    for needle in ["PR_SET_MDWE", "MemoryDenyWriteExecute", "STATIC_CALL_WRITER", "errno 13"] {
        assert!(msg.contains(needle), "the message does not mention {needle}: {msg}");
    }
    println!("\nchild mdwe_child_mprotect_forced: done");
}
