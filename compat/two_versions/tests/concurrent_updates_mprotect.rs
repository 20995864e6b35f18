//! As `concurrent_updates.rs`, with `STATIC_CALL_WRITER=mprotect`: each
//! copy adds write to the page it patches and restores its protection, so
//! one copy must never make the page read-only again while the other is
//! still writing it (a SIGSEGV kills the child: a failure).

use two_versions::common::{in_child, run_child};

#[test]
fn two_versions_update_at_once_with_mprotect() {
    let out = run_child("concurrent_updates_mprotect_child", &[("STATIC_CALL_WRITER", "mprotect")]);
    eprintln!("{out}");
}

#[test]
#[ignore = "child process of two_versions_update_at_once_with_mprotect"]
fn concurrent_updates_mprotect_child() {
    if !in_child("concurrent_updates_mprotect_child") {
        return;
    }
    two_versions::concurrent_updates(3000);
    assert_eq!(static_call::text_writer(), Some(static_call::TextWriter::Mprotect));
    assert_eq!(sc_b::copy::text_writer(), Some(sc_b::copy::TextWriter::Mprotect));
    println!("child concurrent_updates_mprotect_child: done");
}
