//! Why an update or `init` could not patch. Values only: building or
//! displaying one allocates nothing, so updates can fail from a signal handler.

use core::fmt;

/// Why patching is impossible or was refused. When an update returns an
/// error, no byte of text was changed (the two exceptions,
/// [`Error::Poisoned`] and [`Error::ProtectionNotRestored`], say so).
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
    /// The `mprotect` writer could not give a page of text back its
    /// protection after writing it, even after retries: that page may be
    /// left writable and executable. The update itself completed, or was
    /// rolled back, as the other errors say; no further update is attempted.
    ProtectionNotRestored {
        /// The first address of the range left writable.
        address: usize,
        /// errno of the last `mprotect` that failed.
        errno: i32,
    },
    /// The process runs with user-space shadow stacks (CET): a call
    /// emulated by the SIGTRAP handler would push a return address the
    /// shadow stack never saw, so nothing is patched; calls go through the
    /// keys' slots.
    ShadowStack,
    /// SIGTRAP is blocked in the thread that would patch (typically in every
    /// thread: servers that block all signals in `main` and `sigwait` in one
    /// thread). A thread meeting an `int3` with SIGTRAP blocked kills the
    /// whole process, so no `int3` is written.
    SigtrapBlocked,
    /// A key was given to a copy of this crate that does not own it (an
    /// internal routing error between copies).
    ForeignKey,
    /// The copy of this crate that owns the key was shut down for good: its
    /// module (a plugin) is being unloaded with `dlclose`, or the process is
    /// exiting and its destructors ran. Nothing was changed. The copy in the
    /// executable itself never shuts down: its keys can be updated until the
    /// process ends.
    ShutDown,
    /// The key was built by a copy of this crate (in another module, or a
    /// second version linked into this one) whose key layout this copy does
    /// not know, or the reference does not point to a key at all: nothing
    /// in it was followed.
    IncompatibleCopy {
        /// This copy's versions.
        ours: CopyVersion,
        /// The versions the key (or its owner table) carries; `None` when
        /// it carries no key prefix at all.
        theirs: Option<CopyVersion>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoCoreSync { errno } => write!(
                f,
                "static_call: the kernel cannot serialize cores across threads \
                 (membarrier SYNC_CORE failed, errno {errno}); patching needs Linux 4.16 or later \
                 with CONFIG_MEMBARRIER and a seccomp profile that allows membarrier; until then \
                 calls go through the keys' slots (correct, an indirect jump each)"
            ),
            Error::TextNotWritable { address, errno: 0, proc_mem_errno: 0 } => write!(
                f,
                "static_call: cannot write code at {address:#x}: no text writer was tried, because \
                 STATIC_CALL_WRITER is set to `none` or to an unknown value; unset it (or set it to \
                 `procmem` or `mprotect`) to patch; until then calls go through the keys' slots"
            ),
            Error::TextNotWritable { address, errno, proc_mem_errno } => write!(
                f,
                "static_call: cannot write code at {address:#x}: the /proc/self/mem writer {}; the \
                 mprotect writer {}. To patch, {}; until then calls go through the keys' slots \
                 (correct, an indirect jump each)",
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
            Error::ShadowStack => write!(
                f,
                "static_call: this process runs with CET shadow stacks, which the int3 protocol's \
                 emulated calls would break; call sites are not patched and every call goes through \
                 its key's slot (correct, at the cost of an indirect jump)"
            ),
            Error::SigtrapBlocked => write!(
                f,
                "static_call: SIGTRAP is blocked in the thread that would patch (and, with a mask \
                 inherited from main, in every thread): a thread meeting the int3 of an update would \
                 kill the process. Call static_call::init() before blocking signals (it then patches \
                 from an unblocked thread, and later updates must also run where SIGTRAP is not \
                 blocked), or leave SIGTRAP out of the blocked set; without patching, calls go \
                 through the keys' slots"
            ),
            Error::ForeignKey => write!(f, "static_call: a key was routed to a copy of the crate that does not own it"),
            Error::ShutDown => write!(
                f,
                "static_call: the key belongs to a module (a plugin) whose copy of static_call has shut \
                 down: the module is being unloaded, or the process is exiting and its destructors \
                 ran; nothing was changed (the executable's own keys keep working until the end)"
            ),
            Error::IncompatibleCopy { ours, theirs: Some(theirs) } => write!(
                f,
                "static_call: the key was built by static_call {theirs}, whose key layout this copy \
                 ({ours}) does not know; nothing in it was followed. Update it from the module that \
                 declared it, or build both with versions that share the key layout"
            ),
            Error::IncompatibleCopy { ours, theirs: None } => write!(
                f,
                "static_call: the reference given as a key does not start with a key prefix (this copy \
                 is {ours}): it is not a key of any version of static_call, or it was corrupted; \
                 nothing in it was followed"
            ),
            Error::Poisoned { address, errno } => write!(
                f,
                "static_call: an earlier update failed to write {address:#x} (errno {errno}) and \
                 could not be undone; calls stay correct but no further update is attempted"
            ),
            Error::ProtectionNotRestored { address, errno } => write!(
                f,
                "static_call: could not restore the protection of the code page at {address:#x} after \
                 writing it (mprotect errno {errno}): the page may be left writable and executable; \
                 calls stay correct but no further update is attempted. Restart the process; to avoid \
                 it, let the /proc/self/mem writer work (it changes no protection: mount /proc, unset \
                 STATIC_CALL_WRITER), or, for ENOMEM, raise vm.max_map_count"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// The versions a copy of this crate stamps into every key it builds, so
/// that another copy can tell before it follows any pointer in the key
/// whether it understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CopyVersion {
    /// The layout of the key after its prefix (and of what the copies
    /// exchange): copies with the same `abi` interoperate.
    pub abi: u32,
    /// The crate version, `major << 16 | minor << 8 | patch`.
    pub version: u32,
}

impl fmt::Display for CopyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.version;
        write!(f, "{}.{}.{} (key layout {})", v >> 16, (v >> 8) & 0xff, v & 0xff, self.abi)
    }
}

// Linux errno values that the text-writer message explains (written out:
// this module builds on every target, `libc` is a Linux dependency).
const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EIO: i32 = 5;
const EINVAL: i32 = 22;
const ENOMEM: i32 = 12;
const EACCES: i32 = 13;
/// Linux's value on every supported architecture.
const EOPNOTSUPP: i32 = 95;
const ESTALE: i32 = 116;

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
        EINVAL => PAGE_SIZE_UNUSABLE,
        EOPNOTSUPP => {
            "was not used: on this aarch64 CPU (FEAT_MOPS) the kernel's copy may not write an instruction \
             with one 32-bit store"
        }
        ESTALE => {
            "was not used: what it wrote was not what threads then executed (an emulator such as QEMU \
             user mode 7.2 keeps running the code it translated before)"
        }
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
        EINVAL => "was not used either (no usable page size), or mprotect refused the protection asked (EINVAL)",
        _ => "failed",
    }
}

/// Why neither writer is used when `getauxval(AT_PAGESZ)` is unusable.
const PAGE_SIZE_UNUSABLE: &str = "was not used: the kernel reported no usable page size (getauxval(AT_PAGESZ) \
     is 0, not a power of two, or below 4 KiB), and both writers work page by page";

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
        EOPNOTSUPP | ESTALE => "allow write+execute mappings for the mprotect writer",
        EINVAL => "run under a kernel (or emulator) that reports its page size in the auxiliary vector",
        _ => "allow writes to /proc/self/mem, or write+execute mappings for the mprotect writer",
    }
}

// ---------------------------------------------------------------- across copies

use crate::owner::RawError;

impl From<Error> for RawError {
    fn from(e: Error) -> RawError {
        let mut r = RawError::default();
        match e {
            Error::NoCoreSync { errno } => (r.tag, r.errno) = (1, errno),
            Error::TextNotWritable { address, errno, proc_mem_errno } => {
                (r.tag, r.address, r.errno, r.errno2) = (2, address, errno, proc_mem_errno)
            }
            Error::UnexpectedBytes { address, found, expected } => {
                (r.tag, r.address, r.found, r.expected) = (3, address, found, expected)
            }
            Error::HandlerDisplaced { current } => (r.tag, r.address) = (4, current),
            Error::HandlerNotInstalled { errno } => (r.tag, r.errno) = (5, errno),
            Error::Reentrant => r.tag = 6,
            Error::Poisoned { address, errno } => (r.tag, r.address, r.errno) = (7, address, errno),
            Error::ShadowStack => r.tag = 8,
            Error::SigtrapBlocked => r.tag = 9,
            Error::ForeignKey => r.tag = 10,
            Error::IncompatibleCopy { ours, theirs } => {
                r.tag = 11;
                r.address = ((ours.abi as usize) << 32) | ours.version as usize;
                (r.errno, r.errno2) = theirs.map_or((-1, 0), |t| (t.abi as i32, t.version as i32));
            }
            Error::ProtectionNotRestored { address, errno } => (r.tag, r.address, r.errno) = (12, address, errno),
            Error::ShutDown => r.tag = 13,
        }
        r
    }
}

impl From<RawError> for Error {
    fn from(r: RawError) -> Error {
        match r.tag {
            1 => Error::NoCoreSync { errno: r.errno },
            2 => Error::TextNotWritable { address: r.address, errno: r.errno, proc_mem_errno: r.errno2 },
            3 => Error::UnexpectedBytes { address: r.address, found: r.found, expected: r.expected },
            4 => Error::HandlerDisplaced { current: r.address },
            5 => Error::HandlerNotInstalled { errno: r.errno },
            6 => Error::Reentrant,
            7 => Error::Poisoned { address: r.address, errno: r.errno },
            8 => Error::ShadowStack,
            9 => Error::SigtrapBlocked,
            11 => Error::IncompatibleCopy {
                ours: CopyVersion { abi: (r.address >> 32) as u32, version: r.address as u32 },
                theirs: (r.errno >= 0).then_some(CopyVersion { abi: r.errno as u32, version: r.errno2 as u32 }),
            },
            12 => Error::ProtectionNotRestored { address: r.address, errno: r.errno },
            13 => Error::ShutDown,
            _ => Error::ForeignKey,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aarch64_refusals_say_why_and_what_to_do() {
        let stale = Error::TextNotWritable { address: 0x1000, errno: EACCES, proc_mem_errno: ESTALE }.to_string();
        assert!(stale.contains("not what threads then executed") && stale.contains("QEMU"), "{stale}");
        assert!(stale.contains("allow write+execute mappings"), "{stale}");
        let mops = Error::TextNotWritable { address: 0x1000, errno: EACCES, proc_mem_errno: EOPNOTSUPP }.to_string();
        assert!(mops.contains("FEAT_MOPS") && !mops.contains("allow writes to /proc/self/mem"), "{mops}");
    }
}
