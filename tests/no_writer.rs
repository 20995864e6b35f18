//! When no text writer works (`STATIC_CALL_WRITER=none` refuses both),
//! `init` and `try_update` return `TextNotWritable`, nothing changes (text,
//! targets, protections), calls keep working through the trampolines, and
//! `update` panics with a message that says which policy refused and what to
//! do.
//!
//! Runs in a child process (this binary re-executed with the `#[ignore]`d
//! test selected), because the writer is chosen once per process.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child};

use static_call::{static_call, Error, SiteState};

extern "C" fn a(x: u64) -> u64 {
    x + 1
}
extern "C" fn b(x: u64) -> u64 {
    x + 2
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = a;

#[inline(never)]
fn call_k(x: u64) -> u64 {
    K.call(x)
}

#[test]
fn no_writer_refuses_and_changes_nothing() {
    run_child("no_writer_child", &[("STATIC_CALL_WRITER", "none")]);
}

#[test]
#[ignore = "child process of no_writer_refuses_and_changes_nothing"]
fn no_writer_child() {
    if !in_child("no_writer_child") {
        return;
    }
    let tramp = static_call::__private::trampoline_of(&*K).unwrap();
    let sites_before: Vec<_> = K.sites().iter().map(|s| (s.address(), s.bytes())).collect();
    assert!(!sites_before.is_empty());
    assert!(K.sites().iter().all(|s| s.state() == SiteState::Trampoline));
    let pages: Vec<_> = sites_before.iter().map(|s| s.0).chain([tramp]).collect();
    let prot_before: Vec<_> = pages.iter().map(|&p| common::protection_of(p)).collect();
    let stats_before = static_call::stats();

    let e = static_call::init().expect_err("no writer");
    assert!(matches!(e, Error::TextNotWritable { errno: 0, proc_mem_errno: 0, .. }), "{e:?}");
    assert_eq!(static_call::text_writer(), None);
    let e2 = K.try_update(b).expect_err("no writer");
    assert_eq!(e2, e);
    assert_eq!(K.try_reset().expect_err("no writer"), e);
    let e3 = static_call::batch(|bt| {
        bt.update(&K, b);
    })
    .expect_err("no writer");
    assert_eq!(e3, e);

    // Nothing changed.
    assert_eq!(K.get().map(|f| f as usize), Some(a as *const () as usize));
    assert_eq!(K.sites().iter().map(|s| (s.address(), s.bytes())).collect::<Vec<_>>(), sites_before);
    assert_eq!(pages.iter().map(|&p| common::protection_of(p)).collect::<Vec<_>>(), prot_before);
    assert_eq!(static_call::stats(), stats_before);
    assert_eq!(call_k(1), 2, "calls reach the unchanged target through the trampoline");
    common::assert_no_wx();

    let msg = std::panic::catch_unwind(|| K.update(b)).expect_err("update panics").downcast::<String>().unwrap();
    println!("\nchild no_writer_child: update panicked: {msg}");
    for needle in ["STATIC_CALL_WRITER", "`none`", "unset it", "`portable`", &format!("{:#x}", e_address(e))] {
        assert!(msg.contains(needle), "the message does not mention {needle}: {msg}");
    }
    assert_eq!(K.get().map(|f| f as usize), Some(a as *const () as usize));
    assert_eq!(call_k(1), 2);
    println!("\nchild no_writer_child: done");
}

fn e_address(e: Error) -> usize {
    match e {
        Error::TextNotWritable { address, .. } => address,
        _ => unreachable!(),
    }
}
