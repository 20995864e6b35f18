//! Linux system interfaces: core serialization, writing text, futexes,
//! counters of threads inside a section ([`StackCounters`]), and (x86-64)
//! the SIGTRAP handler.
//!
//! # Safety
//!
//! `thread_id` and the futex calls are plain system calls on a valid,
//! aligned word; the submodules state their own rules.
#![allow(unsafe_code)]

pub mod fork;
#[cfg(target_arch = "x86_64")]
mod counters;
pub mod membarrier;
#[cfg(target_arch = "x86_64")]
pub mod signal;
pub mod text;
pub mod text_lock;

#[cfg(target_arch = "x86_64")]
pub use counters::{StackCounters, STACK_SLOT_MASK};

use std::sync::atomic::AtomicU32;


/// The kernel's id of the calling thread. Async-signal-safe.
pub fn thread_id() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

#[cfg(target_arch = "x86_64")]
/// Whether SIGTRAP is blocked in the calling thread. Async-signal-safe.
pub fn sigtrap_blocked() -> bool {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: queries the mask only; `set` is valid for writing.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), set.as_mut_ptr()) };
    // SAFETY: filled in on success.
    r == 0 && unsafe { libc::sigismember(set.as_ptr(), libc::SIGTRAP) } == 1
}

#[cfg(target_arch = "x86_64")]
/// Test hook: makes [`shadow_stack_enabled`] answer true, as on a process
/// that runs with CET user shadow stacks (which this machine may not have).
pub static ASSUME_SHADOW_STACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(target_arch = "x86_64")]
/// Whether the calling thread runs with a user-space shadow stack (x86 CET,
/// Linux 6.6+: `arch_prctl(ARCH_SHSTK_STATUS)`). glibc enables it for the
/// whole process at startup or not at all.
pub fn shadow_stack_enabled() -> bool {
    const ARCH_SHSTK_STATUS: libc::c_int = 0x5005;
    const ARCH_SHSTK_SHSTK: u64 = 1;
    if ASSUME_SHADOW_STACK.load(std::sync::atomic::Ordering::SeqCst) {
        return true;
    }
    let mut status: u64 = 0;
    // SAFETY: ARCH_SHSTK_STATUS writes one u64 to the address given; older
    // kernels fail with EINVAL and write nothing.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SHSTK_STATUS, &mut status as *mut u64) };
    r == 0 && status & ARCH_SHSTK_SHSTK != 0
}

/// Whether the kernel thread `tid` belongs to this process (a lock word
/// inherited by a `fork()` child names a thread of its parent).
/// Async-signal-safe.
pub fn thread_alive(tid: u32) -> bool {
    // SAFETY: getpid has no preconditions; tgkill with signal 0 sends
    // nothing, it only reports whether the thread exists in the group.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid as libc::c_int, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether `addr` lies in the main program (the executable, never
/// unloaded), not in a shared object. Takes the loader's lock: not for
/// signal handlers.
pub fn in_main_program(addr: usize) -> bool {
    unsafe extern "C" fn first(info: *mut libc::dl_phdr_info, _: libc::size_t, data: *mut libc::c_void) -> libc::c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info` whose `dlpi_phdr`
        // points to `dlpi_phnum` program headers; `data` is the pair below.
        let (info, data) = unsafe { (&*info, &mut *data.cast::<(usize, bool)>()) };
        if !info.dlpi_phdr.is_null() {
            // SAFETY: as above.
            let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
            let base = info.dlpi_addr as usize;
            data.1 = phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD).any(|p| {
                let lo = base.wrapping_add(p.p_vaddr as usize);
                (lo..lo.wrapping_add(p.p_memsz as usize)).contains(&data.0)
            });
        }
        // The first object is the main program: stop there.
        1
    }
    let mut data = (addr, false);
    // SAFETY: a valid callback reading only what the loader passes it;
    // `data` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(first), (&raw mut data).cast()) };
    data.1
}

/// Sleeps while `word` holds `val` (or until woken). Async-signal-safe.
pub fn futex_wait(word: &AtomicU32, val: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 with no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            val,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes every thread sleeping on `word`. Async-signal-safe.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX);
    }
}
