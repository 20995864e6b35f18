//! Linux system interfaces: core serialization, writing text, the SIGTRAP
//! handler.
//!
//! # Safety
//!
//! `thread_id` is a plain system call; the submodules state their own rules.
#![allow(unsafe_code)]

pub mod membarrier;
pub mod signal;
pub mod text;

/// The kernel's id of the calling thread. Async-signal-safe.
pub fn thread_id() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}
