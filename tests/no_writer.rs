//! When no text writer works (`STATIC_CALL_WRITER=none` refuses both),
//! `init` returns `TextNotWritable` naming the setting, and the process runs
//! on the keys' slots: every update takes effect, no byte of text changes
//! (DESIGN 3.10). Before the slots, `update` panicked and keys were frozen.
//!
//! Runs in a child process (this binary re-executed with the `#[ignore]`d
//! test selected), because the writer is chosen once per process.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;
mod slots_support;

use common::{in_child, run_child};
use static_call::Error;

#[test]
fn no_writer_runs_on_the_slots() {
    run_child("no_writer_child", &[("STATIC_CALL_WRITER", "none")]);
}

#[test]
#[ignore = "child process of no_writer_runs_on_the_slots"]
fn no_writer_child() {
    if !in_child("no_writer_child") {
        return;
    }
    let e = slots_support::run(
        "no_writer_child",
        || (),
        |e| matches!(e, Error::TextNotWritable { errno: 0, proc_mem_errno: 0, .. }),
        false,
    );
    let msg = e.to_string();
    for needle in ["STATIC_CALL_WRITER", "`none`", "unset it"] {
        assert!(msg.contains(needle), "the message does not mention {needle}: {msg}");
    }
    println!("\nchild no_writer_child: done");
}
