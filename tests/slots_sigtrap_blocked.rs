//! SIGTRAP blocked: the common server pattern blocks every signal in `main`
//! (so every thread inherits the mask) and `sigwait`s in one thread. A
//! thread that meets an `int3` with SIGTRAP blocked kills the whole process
//! (exit 133, no message), so no `int3` is ever written while the updating
//! thread blocks SIGTRAP: `init` from such a thread runs on the slots, and a
//! later update from such a thread (after an `init` that patched) returns
//! `Error::SigtrapBlocked`, changing nothing. Before, both killed the
//! process.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;
mod slots_support;

use common::{in_child, run_child};
use static_call::{static_call, Error, Mode, SiteState};

fn block_sigtrap(how: libc::c_int) {
    // SAFETY: plain signal-mask calls on a valid set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTRAP);
        assert_eq!(libc::pthread_sigmask(how, &set, std::ptr::null_mut()), 0);
    }
}

#[test]
fn blocked_at_init_runs_on_the_slots() {
    run_child("blocked_at_init_child", &[]);
}

#[test]
#[ignore = "child process of blocked_at_init_runs_on_the_slots"]
fn blocked_at_init_child() {
    if !in_child("blocked_at_init_child") {
        return;
    }
    // Every thread spawned afterwards (the callers) inherits the mask.
    slots_support::run(
        "blocked_at_init_child",
        || block_sigtrap(libc::SIG_BLOCK),
        |e| *e == Error::SigtrapBlocked,
        false,
    );
    println!("\nchild blocked_at_init_child: done");
}

extern "C" fn one(x: u64) -> u64 {
    x + 1
}
extern "C" fn two(x: u64) -> u64 {
    x + 2
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = one;

#[inline(never)]
fn call_k(x: u64) -> u64 {
    K.call(x)
}

#[test]
fn blocked_later_is_refused_without_a_write() {
    run_child("blocked_later_child", &[]);
}

#[test]
#[ignore = "child process of blocked_later_is_refused_without_a_write"]
fn blocked_later_child() {
    if !in_child("blocked_later_child") {
        return;
    }
    static_call::init().unwrap();
    assert!(matches!(static_call::mode(), Mode::Patching(_)));
    assert!(K.sites().iter().all(|s| s.state() == SiteState::Direct));
    let patches = || {
        K.sites()
            .iter()
            .map(|s| common::read_bytes(common::patch_of(s.address()), common::PATCH_LEN))
            .collect::<Vec<_>>()
    };
    let bytes = patches();
    let writes = static_call::__private::text_writes();

    block_sigtrap(libc::SIG_BLOCK);
    assert_eq!(K.try_update(two), Err(Error::SigtrapBlocked));
    assert_eq!(K.try_reset(), Err(Error::SigtrapBlocked));
    assert_eq!(
        static_call::batch(|b| {
            b.update(&K, two);
        }),
        Err(Error::SigtrapBlocked)
    );
    let msg = std::panic::catch_unwind(|| K.update(two)).expect_err("update panics").downcast::<String>().unwrap();
    assert!(msg.contains("SIGTRAP is blocked"), "{msg}");
    assert_eq!(static_call::__private::text_writes(), writes, "nothing written");
    assert_eq!(patches(), bytes);
    assert_eq!(call_k(1), 2);
    assert_eq!(K.get().map(|f| f(1)), Some(2));

    block_sigtrap(libc::SIG_UNBLOCK);
    K.update(two);
    assert_eq!(call_k(1), 3);
    println!("\nchild blocked_later_child: done");
}
