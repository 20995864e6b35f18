//! Reviewer probe (issue 19): `concurrent_updates` with every key's fourth
//! state a far target, so the sites of both copies, interleaved on one
//! page, move to and from the six-byte indirect form while both copies
//! update at once (the default writer, then the mprotect one).

use two_versions::common::{in_child, run_child};

#[test]
fn two_versions_far_default_writer() {
    eprintln!("{}", run_child("far_child", &[]));
}

#[test]
fn two_versions_far_mprotect_writer() {
    eprintln!("{}", run_child("far_child", &[("STATIC_CALL_WRITER", "mprotect")]));
}

#[test]
#[ignore = "child process"]
fn far_child() {
    if !in_child("far_child") {
        return;
    }
    let page = two_versions::common::far_page(two_versions::target as fn(usize, usize, usize) -> two_versions::F as usize);
    two_versions::FAR_PAGE.store(page, std::sync::atomic::Ordering::SeqCst);
    two_versions::concurrent_updates(3000);
    println!("child far_child: done");
}
