//! No `/proc` (a sandbox that does not mount it) and W+X refused (MDWE):
//! neither writer can work, so the process runs on the keys' slots and
//! computes the same results (DESIGN 3.10). The child runs in a private
//! mount namespace with `/proc` unmounted (the tests run as root; where
//! `unshare` is refused, the test says so and skips).
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;
mod slots_support;

use common::in_child;
use static_call::Error;
use std::process::Command;

#[test]
fn no_proc_and_no_wx_run_on_the_slots() {
    let probe = Command::new("unshare").args(["--mount", "--propagation", "private", "true"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot unshare the mount namespace here ({probe:?})");
        return;
    }
    if !slots_support::mdwe_works() {
        eprintln!("skipped: prctl(PR_SET_MDWE) is refused here (QEMU user mode, or Linux before 6.3)");
        return;
    }
    // This binary, through the emulator where the kernel cannot execute it.
    let me = common::self_command();
    let alpha = plugin_support::plugin("alpha");
    let test = "no_proc_child";
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", "umount -l /proc && exec \"$0\" \"$@\""])
        .arg(me.get_program())
        .args(me.get_args())
        .args(["--ignored", "--exact", test, "--nocapture", "--test-threads=1"])
        .env("STATIC_CALL_TEST_CHILD", test)
        .env("STATIC_CALL_TEST_ALPHA", &alpha)
        .env_remove("STATIC_CALL_WRITER")
        .output()
        .expect("run the child");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed ({}):\n{text}", out.status);
    assert!(text.contains("child no_proc_child: done"), "child did not run:\n{text}");
}

#[test]
#[ignore = "child process of no_proc_and_no_wx_run_on_the_slots"]
fn no_proc_child() {
    if !in_child("no_proc_child") {
        return;
    }
    assert!(!std::path::Path::new("/proc/self").exists(), "/proc is hidden");
    let set_mdwe = || {
        // SAFETY: a plain prctl call with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_SET_MDWE, libc::PR_MDWE_REFUSE_EXEC_GAIN as libc::c_ulong, 0, 0, 0) };
        assert_eq!(r, 0, "prctl(PR_SET_MDWE): {}", std::io::Error::last_os_error());
    };
    slots_support::run(
        "no_proc_child",
        set_mdwe,
        |e| matches!(e, Error::TextNotWritable { proc_mem_errno: libc::ENOENT, errno, .. } if *errno != 0),
        false,
    );
    println!("\nchild no_proc_child: done");
}
