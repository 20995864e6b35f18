//! Under valgrind (`--smc-check=all`, as the README says for calls),
//! static-branch sites run in every form: the built test before `init`,
//! then the patched `nop` and `jmp label` of both polarities, flipped
//! back and forth. Skipped, with a message, where valgrind is not
//! installed.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::in_child;
use static_call::{static_branch, SiteState};

#[static_branch]
static OFF: bool = false;
#[static_branch]
static ON: bool = true;

#[inline(never)]
fn sites(x: u64) -> u64 {
    let mut r = x;
    if OFF.unlikely() {
        r += 1;
    }
    if ON.likely() {
        r += 10;
    }
    if OFF.likely() {
        r += 100;
    }
    if ON.unlikely() {
        r += 1000;
    }
    std::hint::black_box(r)
}

fn want(off: bool, on: bool) -> u64 {
    u64::from(off) * 101 + u64::from(on) * 1010
}

#[test]
fn every_branch_form_runs_under_valgrind() {
    common::child_runs_under_valgrind("branch_valgrind_child");
}

#[test]
#[ignore = "child process of every_branch_form_runs_under_valgrind"]
fn branch_valgrind_child() {
    if !in_child("branch_valgrind_child") {
        return;
    }
    assert_eq!(sites(0), want(false, true));
    println!("child: init {:?}, {}", static_call::init(), static_call::mode());
    assert_eq!(sites(0), want(false, true));
    for (off, on) in [(true, true), (true, false), (false, false), (false, true), (true, true)] {
        OFF.set(off);
        ON.set(on);
        assert!(OFF.sites().iter().chain(ON.sites().iter()).all(|s| s.state() != SiteState::Trampoline));
        assert_eq!(sites(0), want(off, on), "off {off} on {on}");
    }
    println!("\nchild branch_valgrind_child: done");
}
