//! Telling a `fork()` child from its parent, with no `pthread_atfork`
//! handler.
//!
//! A copy of this crate in a plugin can be unloaded, and glibc runs each
//! atfork handler with its own lock dropped, so a handler registered by a
//! copy that is then `dlclose`d can be called after its text is unmapped (a
//! fork racing the end of a `dlclose` crashed 5 of 5 runs). So only the copy
//! in the main program, which is never unloaded, registers one
//! (`crate::patch`). Every copy maps one page with `MADV_WIPEONFORK`
//! (Linux 4.14): the kernel gives a child that page zeroed, so a copy that
//! finds it zero knows it runs in a child that has not caught up yet, and
//! bumps [`generation`]. Whatever depends on the process (the
//! `/proc/self/mem` descriptor, the `membarrier` registration, the patch
//! lock's holder, the SIGTRAP handler's counts) remembers the generation it
//! was set up in, and is set up again when it differs. Where the advice is
//! refused (an older kernel), the process id is compared instead (one
//! `getpid` per check).
//!
//! # Safety
//!
//! `mmap`, `madvise` and `getpid` with plain arguments; the page is only
//! accessed through one aligned atomic word and is never unmapped.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering::*};

/// The wiped-on-fork word (null: not mapped yet, or the advice refused).
static WORD: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// Set once `arm` ran (whatever it found).
static ARMED: AtomicI32 = AtomicI32::new(0);
/// The process id seen last, where the page could not be had.
static PID: AtomicI32 = AtomicI32::new(0);
/// Bumped once (or, racing, twice: harmless) in every child.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Maps the page. Call once, early (`init`), not from a signal handler: it
/// is never mapped otherwise, and the process id is compared instead.
pub fn arm() {
    if ARMED.swap(1, AcqRel) != 0 {
        return;
    }
    // SAFETY: a fresh private anonymous page; `madvise` on it only.
    unsafe {
        PID.store(libc::getpid(), Release);
        let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize;
        let p = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return;
        }
        if libc::madvise(p, page, libc::MADV_WIPEONFORK) != 0 {
            libc::munmap(p, page);
            return;
        }
        let w = p as *mut AtomicU64;
        (*w).store(1, Release);
        WORD.store(w, Release);
    }
}

/// Whether the process id is compared even where the page is mapped:
/// aarch64, where the tests run under QEMU user mode, which accepts
/// `MADV_WIPEONFORK` without honouring it (the child finds the page as its
/// parent left it). One `getpid` per check there; none on x86-64.
const ALSO_PID: bool = cfg!(target_arch = "aarch64");

/// The fork generation of this process: it differs in a `fork()` child
/// from what its parent saw. Async-signal-safe; no system call once `arm`
/// mapped the page (but on aarch64, see [`ALSO_PID`]).
pub fn generation() -> u64 {
    let w = WORD.load(Acquire);
    if w.is_null() || ALSO_PID {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let seen = PID.swap(pid, AcqRel);
        if seen != 0 && seen != pid {
            GENERATION.fetch_add(1, AcqRel);
        }
    }
    if !w.is_null() {
        // SAFETY: the page `arm` mapped, never unmapped.
        let w = unsafe { &*w };
        if w.load(Acquire) == 0 {
            GENERATION.fetch_add(1, AcqRel);
            w.store(1, Release);
        }
    }
    GENERATION.load(Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_sees_a_new_generation_and_the_parent_does_not() {
        arm();
        let before = generation();
        assert_eq!(generation(), before, "stable in one process");
        // SAFETY: the child only makes async-signal-safe calls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let child = generation();
            let again = generation();
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(if child != before && again == child { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
        assert_eq!(generation(), before, "the parent's generation is unchanged");
    }
}
