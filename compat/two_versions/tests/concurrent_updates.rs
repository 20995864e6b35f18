//! Two major versions of static_call in one executable, each updating its
//! own keys from its own thread at once, thousands of times, while other
//! threads call every site of both (on one page), with the default text
//! writer (`/proc/self/mem`): every result judged, every update reaching
//! every site. Run as a child process, so that a SIGTRAP or SIGSEGV (an
//! int3 one copy restored over the other's write) is a failure with its
//! signal, not a lost test process.

use two_versions::common::{in_child, run_child};

#[test]
fn two_versions_update_at_once() {
    let out = run_child("concurrent_updates_child", &[]);
    eprintln!("{out}");
}

#[test]
#[ignore = "child process of two_versions_update_at_once"]
fn concurrent_updates_child() {
    if !in_child("concurrent_updates_child") {
        return;
    }
    assert_eq!(static_call::text_writer(), None, "nothing initialized yet");
    two_versions::concurrent_updates(3000);
    // The default writer: /proc/self/mem, or where it refuses itself (QEMU
    // user mode, aarch64: ESTALE) the mprotect one.
    assert!(static_call::text_writer().is_some());
    println!("child concurrent_updates_child: done");
}
