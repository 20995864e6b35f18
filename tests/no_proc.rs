//! Without `/proc` (a child in a private mount namespace with `/proc`
//! unmounted, or hidden under an empty tmpfs), the `/proc/self/mem` writer is
//! unavailable and the `mprotect` writer still works, because it takes the
//! protections of text from the ELF program headers, not from
//! `/proc/self/maps`: `init` and updates succeed with callers running, and
//! every call reaches the old or the new target.
//!
//! Needs `unshare(CLONE_NEWNS)` (root or CAP_SYS_ADMIN): where it is refused
//! the child prints why and skips.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child, t1, t2, t3};

use static_call::{static_call, SiteState, TextWriter};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn call_k(x: u64) -> u64 {
    K.call(x)
}
#[inline(never)]
fn call_k_again(x: u64) -> u64 {
    K.call(x)
}

#[test]
fn mprotect_writer_works_without_proc() {
    let out = run_child("no_proc_child", &[]);
    eprintln!("{}", out.lines().filter(|l| l.starts_with("child ")).collect::<Vec<_>>().join("\n"));
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Hides `/proc` from this thread (and the threads it starts) in a private
/// mount namespace. `Err` says why it could not.
fn hide_proc() -> Result<(), String> {
    // SAFETY: plain system calls with NUL-terminated strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!("unshare(CLONE_NEWNS) refused: {}", errno()));
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!("making mounts private failed: {}", errno()));
        }
        for _ in 0..8 {
            if libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH) != 0 {
                break;
            }
        }
        if std::path::Path::new("/proc/self").exists()
            && libc::mount(c"none".as_ptr(), c"/proc".as_ptr(), c"tmpfs".as_ptr(), libc::MS_RDONLY, std::ptr::null())
                != 0
        {
            return Err(format!("/proc could be neither unmounted nor hidden: {}", errno()));
        }
    }
    Ok(())
}

#[test]
#[ignore = "child process of mprotect_writer_works_without_proc"]
fn no_proc_child() {
    if !in_child("no_proc_child") {
        return;
    }
    if let Err(why) = hide_proc() {
        println!("\nchild no_proc_child: skipped: {why}");
        println!("\nchild no_proc_child: done");
        return;
    }
    for p in ["/proc/self/mem", "/proc/self/maps", "/proc/self"] {
        assert!(std::fs::metadata(p).is_err(), "{p} is still visible");
    }
    static_call::init().expect("init without /proc");
    assert_eq!(static_call::text_writer(), Some(TextWriter::Mprotect));
    assert!(K.sites().iter().all(|s| s.state() == SiteState::Direct));
    assert_eq!(call_k(5), (1 << 48) | 5);

    static STOP: AtomicBool = AtomicBool::new(false);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    // Set around each update; the caller counts the calls that started
    // while it was set (aarch64 has no int3 path to prove instead).
    static UPDATING: AtomicBool = AtomicBool::new(false);
    static OVERLAPPED: AtomicU64 = AtomicU64::new(0);
    let caller = std::thread::spawn(|| {
        while !STOP.load(SeqCst) {
            let during = UPDATING.load(SeqCst);
            for r in [call_k(7), call_k_again(7)] {
                if ![1, 2, 3].iter().any(|&t| r == (t << 48) | 7) {
                    WRONG.fetch_add(1, SeqCst);
                }
            }
            OVERLAPPED.fetch_add(during as u64, SeqCst);
        }
    });
    let targets = [t2 as extern "C" fn(u64) -> u64, t3, t1];
    let mut i = 0usize;
    // x86-64: until the int3 path ran; aarch64: until calls overlapped
    // updates; at least 30 updates, at most 200,000 (aarch64: 2,000, QEMU
    // is slow).
    let more = |i: usize| {
        if common::TRAPS {
            (static_call::stats().traps_emulated == 0 || i < 30) && i < 200_000
        } else {
            (OVERLAPPED.load(SeqCst) == 0 || i < 30) && i < 2_000
        }
    };
    while more(i) {
        UPDATING.store(true, SeqCst);
        let old = K.try_update(targets[i % 3]).expect("update without /proc");
        UPDATING.store(false, SeqCst);
        assert_eq!(old.map(|f| f as usize), Some(targets[(i + 2) % 3] as usize));
        let want = [2u64, 3, 1][i % 3];
        assert_eq!((call_k(9), call_k_again(9)), ((want << 48) | 9, (want << 48) | 9));
        i += 1;
    }
    STOP.store(true, SeqCst);
    caller.join().unwrap();
    let s = static_call::stats();
    assert_eq!(WRONG.load(SeqCst), 0, "a call reached neither the old nor the new target");
    if common::TRAPS {
        assert!(s.traps_emulated > 0, "the int3 path never ran: {s:?}");
    } else {
        assert!(OVERLAPPED.load(SeqCst) > 0, "no call started during {i} updates");
    }
    assert_eq!(static_call::text_writer(), Some(TextWriter::Mprotect));
    println!(
        "\nchild no_proc_child: {i} updates without /proc, {} calls started during one, {s:?}",
        OVERLAPPED.load(SeqCst)
    );
    println!("\nchild no_proc_child: done");
}
