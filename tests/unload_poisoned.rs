//! An update that poisons leaves its `int3`s in the text for good, emulated
//! by the handler. Unloading this copy then (for the executable: the unload
//! path that process exit runs) must keep the handler installed: a thread
//! that meets one of those `int3`s afterwards is still emulated, not killed
//! by SIGTRAP. Runs in a child process (poisoning is permanent).
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child, t1, t2};
use static_call::__private::{fail_text_write_after, unload_now};
use static_call::{static_call, Error};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn s1(x: u64) -> u64 {
    K.call(x)
}

fn current_handler() -> libc::sigaction {
    let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: query only.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) }, 0);
    // SAFETY: filled in.
    unsafe { cur.assume_init() }
}

#[test]
fn unloading_a_poisoned_copy_keeps_its_handler() {
    run_child("poisoned_unload_child", &[]);
}

#[test]
#[ignore = "child process of unloading_a_poisoned_copy_keeps_its_handler"]
fn poisoned_unload_child() {
    if !in_child("poisoned_unload_child") {
        return;
    }
    static_call::init().unwrap();
    let ours = current_handler().sa_sigaction;
    assert_ne!(ours, libc::SIG_DFL);
    // Step 1 completes; every later write fails, so the rollback fails too.
    fail_text_write_after(K.sites().len() + 1, usize::MAX);
    let e = K.try_update(t2).expect_err("the injected failures fail the update");
    assert!(matches!(e, Error::Poisoned { .. }), "{e:?}");
    assert!(K.sites().iter().all(|s| common::read_bytes(common::patch_of(s.address()), 1) == [0xcc]), "the int3s stay");

    assert_eq!(unload_now(), "KeptPoisoned");
    assert_eq!(current_handler().sa_sigaction, ours, "the handler stays installed");
    // A thread meeting a leftover int3 after the unload is emulated.
    let before = static_call::stats().traps_emulated;
    let r = std::thread::spawn(|| s1(5)).join().unwrap();
    assert_eq!(r, t2(5), "the call reached the poisoned update's target");
    assert!(static_call::stats().traps_emulated > before, "the int3 was emulated");
    assert_eq!(s1(6), t2(6));
    // A second unload (process exit runs it again) still keeps it.
    assert_eq!(unload_now(), "KeptPoisoned");
    assert_eq!(current_handler().sa_sigaction, ours);
    println!("\nchild poisoned_unload_child: done");
}
