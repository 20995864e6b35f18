//! A kernel (or emulator) whose auxiliary vector gives no usable page size
//! (`AT_PAGESZ` 0, or not a power of two): both text writers plan their
//! writes and protections per page, so neither is used. `init` returns
//! `TextNotWritable` (EINVAL for both writers, the message naming
//! `AT_PAGESZ`) and the process runs on the keys' slots: every update takes
//! effect, no byte of text changes, no key is frozen (DESIGN 3.10).
//!
//! The page size is read once per process, so each case runs in a child
//! process (this binary re-executed with the `#[ignore]`d test selected),
//! with the hook that makes the probe see the given `AT_PAGESZ`.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;
mod slots_support;

use common::{in_child, run_child};
use static_call::Error;

#[test]
fn page_size_zero_runs_on_the_slots() {
    run_child("page_size_zero_child", &[]);
}

#[test]
fn page_size_not_a_power_of_two_runs_on_the_slots() {
    run_child("page_size_12k_child", &[]);
}

fn child(name: &str, page: usize) {
    // The hook reaches the host's copy only: the plugin's copy patches.
    let e = slots_support::run(
        name,
        || static_call::__private::inject_page_size(page),
        |e| matches!(e, Error::TextNotWritable { errno: libc::EINVAL, proc_mem_errno: libc::EINVAL, .. }),
        true,
    );
    let msg = e.to_string();
    assert!(msg.contains("AT_PAGESZ"), "the message does not name AT_PAGESZ: {msg}");
    println!("\nchild {name}: done");
}

#[test]
#[ignore = "child process of page_size_zero_runs_on_the_slots"]
fn page_size_zero_child() {
    if in_child("page_size_zero_child") {
        child("page_size_zero_child", 0);
    }
}

#[test]
#[ignore = "child process of page_size_not_a_power_of_two_runs_on_the_slots"]
fn page_size_12k_child() {
    if in_child("page_size_12k_child") {
        child("page_size_12k_child", 12288);
    }
}
