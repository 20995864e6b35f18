//! The text lock: one per module, shared by every copy of this crate linked
//! into it.
//!
//! Two copies of the crate can sit in one module (cargo links two
//! semver-incompatible versions into one executable), and their sites may
//! share a page. Each copy's own patch lock serializes only its own updates;
//! this lock serializes every copy's writes of that module's text: the
//! `/proc/self/mem` writer's page spans put back the bytes between the
//! changed ones with the values read just before, which would undo a write
//! of the other copy in that microsecond, and the `mprotect` writer of one
//! copy would give a page back its protection while the other still writes
//! it. Modules never share a page, so a lock per module is enough.
//!
//! # The lock's ABI (every version of this crate keeps it)
//!
//! A 64-byte, 64-aligned object named `static_call_text_lock_v1`, hidden,
//! defined weak in a COMDAT group of the same name, so the linker keeps one
//! per module however many copies define it (and the assembler one per
//! object, `.ifndef`, when fat LTO joins the copies' module assembly). At
//! offset 0 (`u32`): 0 when free, else the kernel thread id of its holder.
//! At 4 (`u32`): how many threads wait or are about to wait (a futex on the
//! first word, private); the holder wakes them when it releases. At 8
//! (`usize`): the holder's `pthread_self()`, which survives a `fork()` of
//! the holding thread (its thread id does not). A holder that is not a
//! thread of this process is one a `fork()` child inherited: if it is the
//! calling thread itself (it forked from a signal handler that interrupted
//! its own write, which goes on when the handler returns), the lock stays
//! with it, under its new thread id, and the caller gets `Reentrant`;
//! otherwise (another thread of the parent, in the middle of a write) it is
//! taken over: the bytes that thread was writing are its own copy's, which
//! finishes them (`crate::patch`).
//!
//! Lock order: a copy takes its own patch lock, then this one. A thread
//! that holds this one never waits for a patch lock (`held_here`): an update
//! from a signal handler that interrupted any copy's write of this module
//! returns `Reentrant` instead of waiting for a patch lock whose holder
//! waits for this one.
//!
//! # Safety
//!
//! The object is defined by the `global_asm!` below in every copy, with the
//! size and alignment of `Words`; the two words are only accessed
//! atomically. The system calls (`futex`, `tgkill` with signal 0, which
//! only checks that the thread exists) take integer arguments or a pointer
//! to that object.
#![allow(unsafe_code)]

use super::{futex_wait, futex_wake, thread_id, thread_alive as alive};
use crate::Error;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::*};

#[repr(C, align(64))]
struct Words {
    owner: AtomicU32,
    waiters: AtomicU32,
    holder: AtomicUsize,
}

/// The calling thread's `pthread_self()` (a read of the thread pointer).
fn self_thread() -> usize {
    // SAFETY: no preconditions.
    unsafe { libc::pthread_self() as usize }
}

/// Whether the calling thread holds the text lock of this module (it is
/// writing text of some copy, and a signal handler interrupted it). The
/// patch locks ask before they wait (see "Lock order"). Async-signal-safe.
pub fn held_here() -> bool {
    let w = words();
    let o = w.owner.load(SeqCst);
    o != 0 && (o == thread_id() || (w.holder.load(SeqCst) == self_thread() && !alive(o)))
}

core::arch::global_asm!(
    ".ifndef static_call_text_lock_v1",
    ".pushsection .bss.static_call_text_lock_v1, \"awG\", %nobits, static_call_text_lock_v1, comdat",
    ".balign 64",
    ".weak static_call_text_lock_v1",
    ".hidden static_call_text_lock_v1",
    ".type static_call_text_lock_v1, %object",
    ".size static_call_text_lock_v1, 64",
    "static_call_text_lock_v1:",
    ".zero 64",
    ".popsection",
    ".endif",
);

extern "C" {
    static static_call_text_lock_v1: Words;
}

fn words() -> &'static Words {
    // SAFETY: the object above, zero-initialized, 64 bytes, 64-aligned.
    unsafe { &static_call_text_lock_v1 }
}

/// Holds the module's text lock; releases it on drop.
#[must_use]
pub struct TextLock(());

impl TextLock {
    /// Takes the lock, waiting for another copy's (or this copy's, from
    /// another thread) write of this module's text to finish. `Reentrant`
    /// if this thread holds it already (a signal handler that interrupted
    /// an update of another copy). Async-signal-safe; no allocation.
    #[cfg(test)]
    pub fn take() -> Result<TextLock, Error> {
        Self::take_as(thread_id())
    }

    /// [`take`](Self::take) by a caller that knows its own thread id (the
    /// patch lock's holder: one `gettid` less per update).
    pub fn take_as(me: u32) -> Result<TextLock, Error> {
        let w = words();
        let held = || {
            w.holder.store(self_thread(), SeqCst);
            Ok(TextLock(()))
        };
        if w.owner.compare_exchange(0, me, Acquire, Relaxed).is_ok() {
            return held();
        }
        w.waiters.fetch_add(1, SeqCst);
        let r = loop {
            match w.owner.compare_exchange(0, me, Acquire, Relaxed) {
                Ok(_) => break held(),
                Err(o) if o == me => break Err(Error::Reentrant),
                Err(o) if !alive(o) => {
                    if w.holder.load(SeqCst) == self_thread() {
                        // This very thread, under its parent's thread id: it
                        // forked from a signal handler that interrupted its
                        // own write, which goes on when the handler returns.
                        let _ = w.owner.compare_exchange(o, me, AcqRel, Relaxed);
                        break Err(Error::Reentrant);
                    }
                    if w.owner.compare_exchange(o, me, Acquire, Relaxed).is_ok() {
                        break held();
                    }
                }
                Err(o) => futex_wait(&w.owner, o),
            }
        };
        w.waiters.fetch_sub(1, SeqCst);
        r
    }
}

impl Drop for TextLock {
    fn drop(&mut self) {
        let w = words();
        w.holder.store(0, SeqCst);
        w.owner.store(0, SeqCst);
        if w.waiters.load(SeqCst) > 0 {
            futex_wake(&w.owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share the lock word with each other.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn one_holder_and_reentry_refused() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let g = TextLock::take().unwrap();
        assert_eq!(words().owner.load(SeqCst), thread_id());
        assert!(matches!(TextLock::take(), Err(Error::Reentrant)));
        let t = std::thread::spawn(|| TextLock::take().map(drop).is_ok());
        // The other thread waits until we release.
        while words().waiters.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        drop(g);
        assert!(t.join().unwrap());
        assert_eq!(words().owner.load(SeqCst), 0);
    }

    #[test]
    fn a_holder_that_is_not_a_thread_of_this_process_is_taken_over() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // pid 1's thread is never one of ours.
        words().owner.store(1, SeqCst);
        let g = TextLock::take().expect("taken over");
        assert_eq!(words().owner.load(SeqCst), thread_id());
        drop(g);
    }
}
