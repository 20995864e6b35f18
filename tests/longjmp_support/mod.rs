//! `sigsetjmp(env, 1)` / `siglongjmp` for tests, as a signal handler of a
//! crash reporter, a JIT guard or a test harness uses them: [`guarded`]
//! runs a function and returns `false`, unless a signal handler that the
//! function provoked called [`escape`], which abandons every frame above
//! `guarded`'s (the function's, the kernel's signal frame, the handlers')
//! and makes `guarded` return `true`, with the signal mask `guarded` was
//! entered with restored (as `siglongjmp` restores what `sigsetjmp(env, 1)`
//! saved).
//!
//! Written in assembly, so that Rust only ever sees an ordinary function
//! (`sc_test_guarded`) that returns once: its callee-saved registers and
//! stack pointer are what they were at the call, as after any call. (A
//! Rust call of libc's `sigsetjmp`, which returns twice, is not sound.)
#![allow(dead_code)]

use std::cell::Cell;
use std::mem::MaybeUninit;

/// The saved state: rbx, rbp, r12-r15, the stack pointer `guarded`
/// returns with, its return address; the signal mask.
#[repr(C)]
struct JmpBuf {
    regs: [u64; 8],
    mask: libc::sigset_t,
}

core::arch::global_asm!(
    ".pushsection .text.sc_test_longjmp, \"ax\", @progbits",
    ".globl sc_test_guarded",
    ".hidden sc_test_guarded",
    ".type sc_test_guarded, @function",
    // rdi: the buffer, rsi: the function to run.
    "sc_test_guarded:",
    "mov [rdi], rbx",
    "mov [rdi + 8], rbp",
    "mov [rdi + 16], r12",
    "mov [rdi + 24], r13",
    "mov [rdi + 32], r14",
    "mov [rdi + 40], r15",
    "lea rax, [rsp + 8]",
    "mov [rdi + 48], rax",
    "mov rax, [rsp]",
    "mov [rdi + 56], rax",
    "sub rsp, 8",
    "call rsi",
    "add rsp, 8",
    "xor eax, eax",
    "ret",
    ".size sc_test_guarded, . - sc_test_guarded",
    ".globl sc_test_escape",
    ".hidden sc_test_escape",
    ".type sc_test_escape, @function",
    // rdi: the buffer. Returns from `sc_test_guarded` with 1.
    "sc_test_escape:",
    "mov rbx, [rdi]",
    "mov rbp, [rdi + 8]",
    "mov r12, [rdi + 16]",
    "mov r13, [rdi + 24]",
    "mov r14, [rdi + 32]",
    "mov r15, [rdi + 40]",
    "mov rsp, [rdi + 48]",
    "mov eax, 1",
    "jmp qword ptr [rdi + 56]",
    ".size sc_test_escape, . - sc_test_escape",
    ".popsection",
);

unsafe extern "C" {
    fn sc_test_guarded(buf: *mut JmpBuf, f: extern "C" fn()) -> u64;
    fn sc_test_escape(buf: *const JmpBuf) -> !;
}

thread_local! {
    /// The innermost `guarded` of this thread (null: none).
    static CURRENT: Cell<*const JmpBuf> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f`; true if a signal handler left it through [`escape`]. `f` and
/// everything it calls must hold nothing that needs dropping or releasing
/// at the point it traps: those frames are abandoned.
pub fn guarded(f: extern "C" fn()) -> bool {
    let mut buf = MaybeUninit::<JmpBuf>::zeroed();
    let p = buf.as_mut_ptr();
    // SAFETY: queries the mask into the buffer; then the assembly above,
    // which returns once, like any call, with the callee-saved registers and
    // the stack pointer of the call.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut (*p).mask);
        let outer = CURRENT.with(|c| c.replace(p));
        let escaped = sc_test_guarded(p, f) != 0;
        CURRENT.with(|c| c.set(outer));
        escaped
    }
}

/// From a signal handler: leaves to the innermost [`guarded`] of this
/// thread, restoring its signal mask (`siglongjmp`). Async-signal-safe.
/// Aborts if there is none.
pub fn escape() -> ! {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        std::process::abort();
    }
    // SAFETY: `p` is the buffer of a `guarded` still running on this
    // thread, below whose frame every frame is abandoned now.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &(*p).mask, std::ptr::null_mut());
        sc_test_escape(p)
    }
}

/// A genuine `int3`; counts in `returned` if the handler returned to it
/// instead of escaping.
pub extern "C" fn genuine_int3() {
    // SAFETY: a breakpoint; a handler that returns resumes past it.
    unsafe { core::arch::asm!("int3", options(nomem, nostack)) };
    RETURNED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Genuine `int3`s whose handler returned instead of escaping.
pub static RETURNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Installs `handler` (`SA_SIGINFO`, no other flag, an empty `sa_mask`) for
/// SIGTRAP; returns the disposition it replaced.
pub fn install(handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)) -> libc::sigaction {
    // SAFETY: a valid SA_SIGINFO handler; valid structures.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, &mut old), 0);
        old
    }
}

/// Whether SIGTRAP is blocked in the calling thread.
pub fn sigtrap_blocked() -> bool {
    // SAFETY: queries the mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        libc::sigismember(&set, libc::SIGTRAP) == 1
    }
}
