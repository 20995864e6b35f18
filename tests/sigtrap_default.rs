//! With no handler of the program's own, a genuine `int3` gets the default
//! action (the process dies of SIGTRAP), as it would without us: our handler
//! does not swallow it. Run in a fork child.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

use static_call::static_call;

extern "C" fn t1(x: u64) -> u64 {
    x + 1
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[test]
fn a_genuine_int3_without_a_handler_of_ours_kills_with_sigtrap() {
    static_call::init().unwrap();
    assert_eq!(K.call(1), 2);
    // SAFETY: the child runs only async-signal-safe code: asm and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: int3 with our handler installed; it should re-raise with the
        // default action, which ends the process before _exit.
        unsafe {
            core::arch::asm!("int3", options(nomem, nostack));
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTRAP,
        "the child ended with status {status:#x}, not killed by SIGTRAP"
    );
}
