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
    /// Neither `/proc/self/mem` nor `mprotect` could make text writable.
    TextNotWritable {
        /// The first address that could not be made writable.
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
    /// Another SIGTRAP handler replaced ours after `init`: a thread that met
    /// a breakpoint of an update would not be handled. Nothing was written.
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
            Error::TextNotWritable { address, errno, proc_mem_errno } => write!(
                f,
                "static_call: cannot write code at {address:#x}: /proc/self/mem refused (errno \
                 {proc_mem_errno}) and mprotect refused (errno {errno}); a policy forbids writing \
                 code (seccomp, SELinux execmod, prctl PR_SET_MDWE without /proc mounted): mount \
                 /proc, allow writes to /proc/self/mem, or build with the `portable` feature"
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
                 foreign traps on to it"
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
