//! The SIGTRAP handler: emulates the instruction being patched for a thread
//! that lands on the guarding `int3`, and passes every other trap on.
//!
//! # Safety
//!
//! The handler runs asynchronously on any thread, possibly nested in another
//! signal handler, possibly while the interrupted thread holds the allocator's
//! or any other lock. Everything it does is async-signal-safe: atomic loads
//! and stores, reads of immutable tables published before the handler could
//! see them, writes to the interrupted context (`ucontext_t`) and to the
//! interrupted thread's stack just below its stack pointer (the red zone, which
//! the call site's inline asm leaves free because it is not `nostack`), and the
//! async-signal-safe calls `sigaction`, `pthread_sigmask` and `raise` when it
//! chains. It allocates nothing, takes no lock and cannot panic (no indexing,
//! no arithmetic that can overflow in debug builds, no `unwrap`). `errno` is
//! preserved.
//!
//! The previous disposition is recorded before ours is installed and never
//! changes afterwards (but for `SA_RESETHAND`, which is honoured with an atomic
//! flag), so the handler reads it without synchronization beyond the
//! `INSTALLED` flag's acquire load.
#![allow(unsafe_code)]

use crate::arch::x86_64::{Insn, INSN_LEN};
use crate::Error;
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the patcher says about a trap at an address.
pub enum Trap {
    /// The address is being patched: execute this instruction in the
    /// thread's stead.
    Emulate(Insn),
    /// The address is ours and no longer holds the `int3`: the trap arrived
    /// after the update finished; run the instruction again.
    Rewind,
    /// Not ours: pass it on.
    NotOurs,
}

struct Previous(UnsafeCell<MaybeUninit<libc::sigaction>>);
// SAFETY: written only before `INSTALLED` is set (under the patch lock), read
// only after it is seen set.
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous(UnsafeCell::new(MaybeUninit::uninit()));
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The previous handler had `SA_RESETHAND` and has run once: it is now
/// `SIG_DFL`.
static PREVIOUS_RESET: AtomicBool = AtomicBool::new(false);

fn handler_address() -> usize {
    on_sigtrap as *const () as usize
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Installs the handler (once), remembering the disposition it replaces.
/// Called with the patch lock held.
pub fn install() -> Result<(), Error> {
    if INSTALLED.load(Ordering::Acquire) {
        return check();
    }
    // SAFETY: plain-old-data structures for sigaction; the pointers passed
    // are valid for the calls. PREVIOUS is written before INSTALLED is set
    // and before our handler can run (it is not installed yet).
    unsafe {
        let mut old = MaybeUninit::<libc::sigaction>::zeroed();
        if libc::sigaction(libc::SIGTRAP, std::ptr::null(), old.as_mut_ptr()) != 0 {
            return Err(Error::HandlerNotInstalled { errno: errno() });
        }
        (*PREVIOUS.0.get()).write(old.assume_init());
        INSTALLED.store(true, Ordering::Release);

        let mut new = MaybeUninit::<libc::sigaction>::zeroed().assume_init();
        new.sa_sigaction = handler_address();
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER | libc::SA_RESTART;
        libc::sigemptyset(&mut new.sa_mask);
        if libc::sigaction(libc::SIGTRAP, &new, std::ptr::null_mut()) != 0 {
            INSTALLED.store(false, Ordering::Release);
            return Err(Error::HandlerNotInstalled { errno: errno() });
        }
    }
    Ok(())
}

/// Checks that our handler is still the one the kernel will run: a handler
/// installed after ours would swallow the traps of an update.
pub fn check() -> Result<(), Error> {
    let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: querying only; `cur` is valid for writing.
    let r = unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) };
    if r != 0 {
        return Err(Error::HandlerNotInstalled { errno: errno() });
    }
    // SAFETY: sigaction filled it in.
    let cur = unsafe { cur.assume_init() };
    if cur.sa_sigaction == handler_address() && cur.sa_flags & libc::SA_SIGINFO != 0 {
        Ok(())
    } else {
        Err(Error::HandlerDisplaced { current: cur.sa_sigaction })
    }
}

extern "C" fn on_sigtrap(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes valid `info` and `ctx` (SA_SIGINFO).
    unsafe {
        let saved_errno = *libc::__errno_location();
        if (*info).si_code != libc::SI_KERNEL || !handle(&mut *(ctx as *mut libc::ucontext_t)) {
            chain(sig, info, ctx);
        }
        *libc::__errno_location() = saved_errno;
    }
}

/// Emulates or rewinds a trap on an address being patched; false if it is not
/// ours.
fn handle(uc: &mut libc::ucontext_t) -> bool {
    let regs = &mut uc.uc_mcontext.gregs;
    let rip = regs[libc::REG_RIP as usize] as usize;
    let at = rip.wrapping_sub(1);
    match crate::patch::on_trap(at) {
        Trap::NotOurs => false,
        Trap::Rewind => {
            regs[libc::REG_RIP as usize] = at as i64;
            true
        }
        Trap::Emulate(insn) => {
            let next = at.wrapping_add(INSN_LEN) as i64;
            let rsp = regs[libc::REG_RSP as usize] as usize;
            match insn {
                Insn::Call(target) => {
                    let sp = rsp.wrapping_sub(8);
                    // SAFETY: the thread was about to execute a call, which
                    // would have pushed the same word at the same place; the
                    // site's inline asm is not `nostack`, so the red zone
                    // below rsp holds nothing of the thread's.
                    unsafe { (sp as *mut i64).write(next) };
                    regs[libc::REG_RSP as usize] = sp as i64;
                    regs[libc::REG_RIP as usize] = target as i64;
                }
                Insn::Jmp(target) => regs[libc::REG_RIP as usize] = target as i64,
                Insn::Nop => regs[libc::REG_RIP as usize] = next,
                Insn::Zero => {
                    regs[libc::REG_RAX as usize] = 0;
                    regs[libc::REG_RIP as usize] = next;
                }
                Insn::Ret => {
                    // SAFETY: the thread was about to execute `ret`, which
                    // reads the same word.
                    let ret = unsafe { (rsp as *const i64).read() };
                    regs[libc::REG_RSP as usize] = rsp.wrapping_add(8) as i64;
                    regs[libc::REG_RIP as usize] = ret;
                }
            }
            true
        }
    }
}

/// Passes a trap that is not ours to the disposition we replaced, honouring
/// its flags; with no handler of its own, the default action (terminate with
/// a core dump) happens, as it would have without us.
///
/// # Safety
///
/// Called from the signal handler with the kernel's arguments.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: PREVIOUS is initialized whenever our handler is installed.
    let prev = unsafe { (*PREVIOUS.0.get()).assume_init_ref() };
    let action = if PREVIOUS_RESET.load(Ordering::Acquire) { libc::SIG_DFL } else { prev.sa_sigaction };
    if action == libc::SIG_IGN {
        return;
    }
    if action == libc::SIG_DFL {
        // SAFETY: async-signal-safe calls with valid arguments. With our
        // handler gone and SIGTRAP unblocked (SA_NODEFER), the raise delivers
        // the default action at once.
        unsafe {
            let mut dfl = MaybeUninit::<libc::sigaction>::zeroed().assume_init();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGTRAP, &dfl, std::ptr::null_mut());
            let mut set = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTRAP);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(libc::SIGTRAP);
        }
        return;
    }
    if prev.sa_flags & libc::SA_RESETHAND != 0 {
        PREVIOUS_RESET.store(true, Ordering::Release);
    }
    // SAFETY: the mask is the previous handler's own; restored afterwards.
    unsafe {
        let mut mask = prev.sa_mask;
        if prev.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, sig);
        }
        let mut old = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::pthread_sigmask(libc::SIG_BLOCK, &mask, &mut old);
        if prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(action);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(action);
            f(sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}
