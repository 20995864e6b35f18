//! How this process makes static calls: [`mode`](crate::mode) and
//! [`text_writer`](crate::text_writer), on every backend.

use crate::Error;

/// How this process writes machine code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TextWriter {
    /// `pwrite` to `/proc/self/mem`: no protection change, never W+X.
    ProcMem,
    /// `mprotect` adds write (keeping execute) for the duration of an update,
    /// then restores each page's original protection. Used only where
    /// `/proc/self/mem` is unavailable or `STATIC_CALL_WRITER=mprotect`
    /// forces it.
    Mprotect,
}

impl core::fmt::Display for TextWriter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TextWriter::ProcMem => "/proc/self/mem",
            TextWriter::Mprotect => "mprotect",
        })
    }
}

/// How calls are made in this process (per copy of this crate: each module
/// that links it has its own mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Patching is available but [`init`](crate::init) has not run (nor any
    /// update): every site calls its trampoline, which jumps through the
    /// key's slot.
    NotInitialized,
    /// Call sites are patched in place; code is written with this writer.
    Patching(TextWriter),
    /// Patching is impossible in this process, for this reason (seccomp
    /// denying `membarrier`, no text writer, CET shadow stacks, SIGTRAP
    /// blocked, `STATIC_CALL_WRITER=none`): nothing is patched, every site
    /// calls its trampoline, which jumps through the key's slot, and an
    /// update stores the slot. Results are the same; a call costs an
    /// indirect jump more.
    Slots(Error),
    /// The atomic-function-pointer backend (another target, the `portable`
    /// feature, or Miri).
    Portable,
}

impl core::fmt::Display for Mode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Mode::NotInitialized => f.write_str("not initialized yet (sites call their trampolines)"),
            Mode::Patching(w) => write!(f, "patching call sites (code written through {w})"),
            Mode::Slots(e) => write!(f, "calls through the keys' slots, because {e}"),
            Mode::Portable => f.write_str("portable: calls through atomic function pointers"),
        }
    }
}
