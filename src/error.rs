//! Why an update or `init` could not patch. Values only: building or
//! displaying one allocates nothing, so updates can fail from a signal handler.

use core::fmt;

/// Why patching is impossible or was refused. When an update returns an
/// error, no byte of text was changed (the one exception, [`Error::Poisoned`],
/// says so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The kernel cannot serialize the cores of all threads
    /// (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`, Linux 4.16 and
    /// later), so patching live code would be unsafe.
    NoCoreSync {
        /// errno of the failed `membarrier` call.
        errno: i32,
    },
    /// No text writer works: the `/proc/self/mem` writer and the `mprotect`
    /// writer were refused (by a policy such as `prctl(PR_SET_MDWE)`, seccomp
    /// or an LSM), or not tried (`STATIC_CALL_WRITER`). Also reported when a
    /// write fails in the middle of an update that could then be rolled back
    /// (the field of the writer in use holds the errno, the other is 0).
    /// Nothing was changed.
    TextNotWritable {
        /// The first address that could not be written.
        address: usize,
        /// errno of the `mprotect` writer (0 if it was not tried).
        errno: i32,
        /// errno of the `/proc/self/mem` writer (0 if it was not tried).
        proc_mem_errno: i32,
    },
    /// A site or trampoline does not hold what this crate last wrote there
    /// (a debugger's breakpoint, another patcher): nothing was written.
    UnexpectedBytes {
        /// The first byte of the instruction.
        address: usize,
        /// The five bytes found there.
        found: [u8; 5],
        /// The five bytes expected.
        expected: [u8; 5],
    },
    /// Another SIGTRAP handler replaced ours after `init`, or our handler
    /// was put back with other flags or another signal mask: a thread that
    /// met a breakpoint of an update would not be handled (or could
    /// deadlock). Nothing was written. Calling `init()` again puts ours back
    /// on top, chaining to the newcomer.
    HandlerDisplaced {
        /// The address of the handler now installed (0 for `SIG_DFL`, 1 for
        /// `SIG_IGN`).
        current: usize,
    },
    /// Our SIGTRAP handler could not be installed.
    HandlerNotInstalled {
        /// errno of `sigaction`.
        errno: i32,
    },
    /// This thread is already inside an update (an update from a signal
    /// handler that interrupted one): it would deadlock, so it is refused.
    Reentrant,
    /// A write failed half-way through an earlier update and could not be
    /// undone; the breakpoints it left are still handled, but no further
    /// update is attempted.
    Poisoned {
        /// The address whose write failed.
        address: usize,
        /// errno of that write.
        errno: i32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoCoreSync { errno } => write!(
                f,
                "static_call: the kernel cannot serialize cores across threads \
                 (membarrier SYNC_CORE failed, errno {errno}); patching needs Linux 4.16 or later \
                 with CONFIG_MEMBARRIER, or build with the `portable` feature"
            ),
            Error::TextNotWritable { address, errno: 0, proc_mem_errno: 0 } => write!(
                f,
                "static_call: cannot write code at {address:#x}: no text writer was tried, because \
                 STATIC_CALL_WRITER is set to `none` or to an unknown value; unset it (or set it to \
                 `procmem` or `mprotect`), or build with the `portable` feature"
            ),
            Error::TextNotWritable { address, errno, proc_mem_errno } => write!(
                f,
                "static_call: cannot write code at {address:#x}: the /proc/self/mem writer {}; the \
                 mprotect writer {}. To patch, {}; or build with the `portable` feature (an atomic \
                 function pointer, nothing patched)",
                Why(proc_mem_errno, proc_mem_reason(proc_mem_errno)),
                Why(errno, mprotect_reason(errno)),
                remedy(proc_mem_errno),
            ),
            Error::UnexpectedBytes { address, found, expected } => write!(
                f,
                "static_call: refusing to patch {address:#x}: found {found:02x?}, expected \
                 {expected:02x?}; something else (a debugger breakpoint, another patcher) changed \
                 this code, and nothing was written"
            ),
            Error::HandlerDisplaced { current } => write!(
                f,
                "static_call: another SIGTRAP handler ({current:#x}) replaced ours after init; \
                 install your handler before calling static_call::init(), and ours will pass \
                 foreign traps on to it, or call static_call::init() again to put ours back \
                 on top of it"
            ),
            Error::HandlerNotInstalled { errno } => {
                write!(f, "static_call: cannot install the SIGTRAP handler (errno {errno})")
            }
            Error::Reentrant => write!(
                f,
                "static_call: update from inside an update on the same thread (a signal handler \
                 interrupted it); retry after the handler returns"
            ),
            Error::Poisoned { address, errno } => write!(
                f,
                "static_call: an earlier update failed to write {address:#x} (errno {errno}) and \
                 could not be undone; calls stay correct but no further update is attempted"
            ),
        }
    }
}

impl std::error::Error for Error {}

// Linux errno values that the text-writer message explains (written out:
// this module builds on every target, `libc` is a Linux dependency).
const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EIO: i32 = 5;
const ENOMEM: i32 = 12;
const EACCES: i32 = 13;

/// A writer's outcome: its reason, and its errno unless it was not tried.
struct Why(i32, &'static str);

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str(self.1),
            errno => write!(f, "{} (errno {errno})", self.1),
        }
    }
}

fn proc_mem_reason(errno: i32) -> &'static str {
    match errno {
        0 => "was not used (not tried, or STATIC_CALL_WRITER chose the other one)",
        ENOENT => "found no /proc/self/mem (/proc is not mounted)",
        EPERM | EACCES => "was denied by a security policy (seccomp, or an LSM: SELinux, AppArmor, Landlock)",
        EIO => "failed to write (EIO: the kernel refuses forced writes, e.g. proc_mem.force_override=never)",
        _ => "failed",
    }
}

fn mprotect_reason(errno: i32) -> &'static str {
    match errno {
        0 => "was not tried",
        EACCES => {
            "was refused write+execute by a W^X policy (prctl PR_SET_MDWE, systemd \
             MemoryDenyWriteExecute=yes, SELinux execmod/execmem, PaX MPROTECT)"
        }
        EPERM => "was denied by seccomp or a security module",
        ENOMEM => "found the address unmapped, or hit the limit on the number of mappings",
        EIO => "failed to write",
        _ => "failed",
    }
}

/// What to do, given why the `/proc/self/mem` writer (the one that works
/// under W^X policies) did not work.
fn remedy(proc_mem_errno: i32) -> &'static str {
    match proc_mem_errno {
        0 => "unset STATIC_CALL_WRITER if set, so that the /proc/self/mem writer (which works under W^X policies) is tried",
        ENOENT => "mount /proc in this process's mount namespace",
        EPERM | EACCES => {
            "allow this process to open and write its own /proc/self/mem (the W^X policy can stay), \
             or allow it write+execute mappings"
        }
        _ => "allow writes to /proc/self/mem, or write+execute mappings for the mprotect writer",
    }
}
