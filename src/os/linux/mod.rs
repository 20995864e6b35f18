//! Linux system interfaces: core serialization, writing text, futexes,
//! counters of threads inside a section ([`StackCounters`]), and (x86-64)
//! the SIGTRAP handler.
//!
//! # Safety
//!
//! `thread_id` and the futex calls are plain system calls on a valid,
//! aligned word; the submodules state their own rules.
#![allow(unsafe_code)]

pub mod membarrier;
#[cfg(target_arch = "x86_64")]
pub mod signal;
pub mod text;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};

/// One counter alone on its cache line.
#[repr(C, align(64))]
struct Line(AtomicUsize);

/// How many threads are inside a section of code (a signal handler, a
/// reader of a published plan), counted without a cache line that every
/// thread writes: [`STACK_SLOTS`] counters, each on a cache line of its
/// own, a thread counting itself in the one that bits 12..17 of its stack
/// pointer select (threads run on different stacks) and uncounting itself
/// in the same one (with the same stack pointer). The section is idle when
/// the signed sum of all counters is at most zero: a count is exact per
/// counter, and a `fork()` child, which [`reset`](Self::reset)s them, may see
/// the forking thread leave a section it entered in the parent, taking one
/// below zero. Async-signal-safe.
///
/// `#[repr(C)]`: the SIGTRAP handler's entry stub counts itself in
/// assembly, at byte offset `(rsp >> 6) & 0xfc0` ([`STACK_SLOT_MASK`]).
#[repr(C)]
pub struct StackCounters([Line; STACK_SLOTS]);

/// How many counters a [`StackCounters`] has.
pub const STACK_SLOTS: usize = 64;
/// The byte offset of a stack pointer's counter is `(sp >> 6) & STACK_SLOT_MASK`.
pub const STACK_SLOT_MASK: usize = (STACK_SLOTS - 1) << 6;

impl StackCounters {
    pub const fn new() -> Self {
        Self([const { Line(AtomicUsize::new(0)) }; STACK_SLOTS])
    }

    /// The counter of a stack address (any address in the caller's frame,
    /// the same for its `enter` and its `leave`).
    fn line(&self, sp: usize) -> Option<&AtomicUsize> {
        self.0.get((sp & (STACK_SLOT_MASK << 6)) >> 12).map(|l| &l.0)
    }

    /// Counts the calling thread in, by an address in its current frame.
    pub fn enter(&self, sp: usize) {
        if let Some(c) = self.line(sp) {
            c.fetch_add(1, SeqCst);
        }
    }

    /// Counts the calling thread out, by the address it entered with.
    pub fn leave(&self, sp: usize) {
        if let Some(c) = self.line(sp) {
            c.fetch_sub(1, SeqCst);
        }
    }

    /// The signed number of threads inside.
    pub fn sum(&self) -> isize {
        self.0.iter().fold(0isize, |s, l| s.wrapping_add(l.0.load(SeqCst) as isize))
    }

    /// No thread inside (see the type's docs).
    pub fn idle(&self) -> bool {
        self.sum() <= 0
    }

    /// In a `fork()` child: no thread of the parent but the forking one
    /// exists, and it is counted wherever it still is by leaving.
    pub fn reset(&self) {
        self.0.iter().for_each(|l| l.0.store(0, SeqCst));
    }
}

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
