//! With no text writer (`STATIC_CALL_WRITER=none`) the process runs on the
//! slots (DESIGN 3.10): every static-branch site keeps its assembled jump
//! to its out-of-line test of the key's value, and takes the right branch
//! across `set`s; `mode()` is `Slots`, and the sites report `Trampoline`
//! with the reason `Slots`. Runs in a child process (the writer is chosen
//! once per process).
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child};
use static_call::{static_branch, Mode, NotDirect, SiteState};

#[static_branch]
static OFF: bool = false;
#[static_branch]
static ON: bool = true;

#[inline(never)]
fn run() -> [bool; 4] {
    [OFF.unlikely(), OFF.likely(), ON.unlikely(), ON.likely()]
}

#[test]
fn branches_run_on_the_slots() {
    run_child("branch_slots_child", &[("STATIC_CALL_WRITER", "none")]);
}

#[test]
#[ignore = "child process of branches_run_on_the_slots"]
fn branch_slots_child() {
    if !in_child("branch_slots_child") {
        return;
    }
    let before: Vec<_> = OFF.sites().iter().chain(ON.sites().iter()).map(|s| s.bytes()).collect();
    assert_eq!(before.len(), 4);
    assert_eq!(run(), [false, false, true, true]);
    let e = static_call::init().expect_err("no writer: the slots");
    assert!(matches!(static_call::mode(), Mode::Slots(m) if m == e), "{:?}", static_call::mode());
    assert_eq!(run(), [false, false, true, true]);
    for round in 0..50 {
        let v = round % 2 == 0;
        let (off, on) = (OFF.get(), ON.get());
        assert_eq!(OFF.set(v), off);
        assert_eq!(ON.try_set(!v), Ok(on));
        assert_eq!(run(), [v, v, !v, !v], "round {round}");
        static_call::batch(|b| {
            b.set(&OFF, !v);
            b.set(&ON, v);
        })
        .unwrap();
        assert_eq!(run(), [!v, !v, v, v], "round {round}, batch");
        assert_eq!((OFF.get(), ON.get()), (!v, v));
    }
    let sites: Vec<_> = OFF.sites().into_iter().chain(ON.sites()).collect();
    for s in &sites {
        assert_eq!(s.state(), SiteState::Trampoline, "{s}");
        assert_eq!(s.reason(), Some(NotDirect::Slots), "{s}");
    }
    let after: Vec<_> = sites.iter().map(|s| s.bytes()).collect();
    assert_eq!(before, after, "no byte of text changed");
    assert_eq!(static_call::stats().branch_sites_patched, 0);
    println!("\nchild branch_slots_child: done");
}
