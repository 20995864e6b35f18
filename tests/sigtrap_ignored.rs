//! SIGTRAP set to `SIG_IGN` before `init`: a genuine `int3` still ends the
//! process with SIGTRAP, exactly as without this crate (the kernel never
//! lets a process ignore a trap it raised itself). A SIGTRAP sent with
//! `raise` is still ignored, as the kernel would. Each case runs in a fork
//! child; the reference is a child that never touches static_call.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::t1;
use static_call::static_call;

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

fn ignore_sigtrap() {
    // SAFETY: plain sigaction call with a valid structure.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
}

/// Runs `body` in a fork child with core dumps off, and returns its wait
/// status (`body` ends the child, or it exits 0).
fn in_fork(body: fn()) -> i32 {
    // SAFETY: the child runs async-signal-safe code only (body: sigaction,
    // asm, raise) and `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: valid arguments; then the body and `_exit`.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            body();
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

fn int3() {
    // SAFETY: a genuine breakpoint; whatever handles it either ends the
    // process or resumes after the int3.
    unsafe { core::arch::asm!("int3", options(nomem, nostack)) };
}

fn describe(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exited with {}", libc::WEXITSTATUS(status))
    }
}

#[test]
fn a_genuine_int3_with_sigtrap_ignored_kills_as_without_us() {
    // Without static_call: SIG_IGN, then int3.
    let reference = in_fork(|| {
        ignore_sigtrap();
        int3();
    });
    assert!(libc::WIFSIGNALED(reference) && libc::WTERMSIG(reference) == libc::SIGTRAP, "{}", describe(reference));
    // A raised SIGTRAP is ignored without us.
    let raised_reference = in_fork(|| {
        ignore_sigtrap();
        // SAFETY: async-signal-safe.
        unsafe { libc::raise(libc::SIGTRAP) };
    });
    assert!(libc::WIFEXITED(raised_reference), "{}", describe(raised_reference));

    // With us: SIG_IGN is our previous disposition.
    ignore_sigtrap();
    static_call::init().unwrap();
    assert_eq!(K.call(1), t1(1));
    assert_ne!(
        current_handler(),
        libc::SIG_IGN,
        "our handler is installed over SIG_IGN (else this test proves nothing)"
    );
    let with_us = in_fork(int3);
    assert_eq!(describe(with_us), describe(reference), "a genuine int3 ends the process as without us");
    let raised = in_fork(|| {
        // SAFETY: async-signal-safe.
        unsafe { libc::raise(libc::SIGTRAP) };
    });
    assert_eq!(describe(raised), describe(raised_reference), "a raised SIGTRAP is ignored as without us");
    // And the process itself patches on.
    K.update(common::t2);
    assert_eq!(K.call(1), common::t2(1));
}

fn current_handler() -> usize {
    let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: query only.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) }, 0);
    // SAFETY: filled in.
    unsafe { cur.assume_init() }.sa_sigaction
}
