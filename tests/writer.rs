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
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child};

use static_call::{static_call, SiteState, TextWriter};
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
    run_child("writer_child", &[("EXPECT_WRITER", "procmem")]);
}

#[test]
fn proc_mem_writer_never_changes_protection() {
    run_child("writer_child", &[("STATIC_CALL_WRITER", "procmem"), ("EXPECT_WRITER", "procmem")]);
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
        Ok("mprotect") => TextWriter::Mprotect,
        _ => TextWriter::ProcMem,
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
                let maps = common::mappings();
                for (a, orig) in addrs.iter().zip(&original) {
                    let m = maps.iter().find(|m| m.start <= *a && *a < m.end).expect("text stays mapped");
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
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, wrong) = (stop.clone(), wrong.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (r, r2) = (call_k(10), call_k_twice(10));
                    if !(11..=13).contains(&r) || !(22..=26).contains(&r2) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    static_call::init().unwrap();
    assert_eq!(static_call::text_writer(), Some(writer));
    let targets = [a as extern "C" fn(u64) -> u64, b, c];
    let mut i = 0usize;
    while (static_call::stats().traps_emulated == 0 || i < 30) && i < 200_000 {
        K.update(targets[(i + 1) % 3]);
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
    println!(
        "\nchild writer_child: {writer:?}: {i} updates, watcher looked {looks} times, saw {changed} changed \
         protections and W+X {wx_seen} times; {s:?}"
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "a call reached neither the old nor the new target");
    assert!(s.traps_emulated > 0, "the int3 path never ran: {s:?}");
    assert!(lost_x.is_empty(), "a page of text lost execute: {lost_x:x?}");
    if writer == TextWriter::ProcMem {
        assert_eq!((changed, wx_seen), (0, 0), "the /proc/self/mem writer changed a protection");
    }
    assert!(K.sites().iter().all(|s| s.state() == SiteState::Direct));
    common::assert_no_wx();
    println!("\nchild writer_child: done");
}
