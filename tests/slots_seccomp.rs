//! A sandbox whose seccomp profile denies `membarrier` (EPERM, as Docker's
//! default profile does for unknown calls, or ENOSYS, as some runtimes
//! answer): patching is impossible, so the process runs on the keys' slots
//! and computes the same results (DESIGN 3.10). Before the slots, keys were
//! frozen on their defaults and `update` panicked. Child processes, since a
//! seccomp filter cannot be removed. Skipped where this process cannot
//! install a filter at all (QEMU user mode, the aarch64 tests' runner).
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;
mod slots_support;

use common::{in_child, run_child};
use static_call::Error;

#[test]
fn membarrier_denied_with_eperm() {
    if !common::seccomp_works() {
        eprintln!("skipped: this process cannot install seccomp filters (QEMU user mode refuses them)");
        return;
    }
    let out = run_child("eperm_child", &[]);
    assert!(out.contains("child eperm_child: init: "), "{out}");
}

#[test]
#[ignore = "child process of membarrier_denied_with_eperm"]
fn eperm_child() {
    if !in_child("eperm_child") {
        return;
    }
    slots_support::run(
        "eperm_child",
        || common::deny_syscall(libc::SYS_membarrier, libc::EPERM as u32),
        |e| *e == Error::NoCoreSync { errno: libc::EPERM },
        false,
    );
    println!("\nchild eperm_child: done");
}

#[test]
fn membarrier_denied_with_enosys() {
    if !common::seccomp_works() {
        eprintln!("skipped: this process cannot install seccomp filters (QEMU user mode refuses them)");
        return;
    }
    run_child("enosys_child", &[]);
}

#[test]
#[ignore = "child process of membarrier_denied_with_enosys"]
fn enosys_child() {
    if !in_child("enosys_child") {
        return;
    }
    slots_support::run(
        "enosys_child",
        || common::deny_syscall(libc::SYS_membarrier, libc::ENOSYS as u32),
        |e| *e == Error::NoCoreSync { errno: libc::ENOSYS },
        false,
    );
    println!("\nchild enosys_child: done");
}
