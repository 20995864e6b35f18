//! The only door to writing machine code.
//!
//! Two writers, probed once in this order:
//!
//! 1. [`TextWriter::ProcMem`]: `pwrite` to `/proc/self/mem`. The kernel writes
//!    through its own mapping of the page (breaking copy-on-write the first
//!    time), so no protection ever changes and no page is ever writable and
//!    executable at once. This works where W+X is refused
//!    (`prctl(PR_SET_MDWE)`, SELinux `execmod`, systemd's
//!    `MemoryDenyWriteExecute`).
//! 2. [`TextWriter::Mprotect`]: `mprotect` adds write to each page while keeping
//!    execute, and a guard restores each page's original protection on every
//!    path, including a failed write.
//!
//! Large updates ([`BULK_THRESHOLD`] instructions or more, such as `init` of
//! a big program) use the mprotect writer even when `/proc/self/mem` works,
//! where the process allows it: it is some forty times faster for thousands of
//! sites, at the price of pages that are writable and executable for the
//! duration of that update. `STATIC_CALL_WRITER=procmem` or `=mprotect` in the
//! environment forces one for every update (for tests, for debugging a policy,
//! and for processes that want no W+X window at all), `=none` refuses both.
//!
//! # Safety
//!
//! Writing to text is sound only where no thread can execute the bytes being
//! written in a torn state: the patch protocol in `crate::patch` guarantees that
//! (an `int3` guards every multi-byte write). This module only checks that the
//! addresses are mapped text; it is `pub(crate)` and called by the protocol
//! alone. The `/proc/self/mem` descriptor is reopened after `fork()` (it names
//! the address space that opened it), detected by a change of process id.
#![allow(unsafe_code)]

use crate::Error;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};

pub use crate::mode::TextWriter;

const UNPROBED: u8 = 0;
const PROC_MEM: u8 = 1;
const MPROTECT: u8 = 2;
const NONE: u8 = 3;

static CHOSEN: AtomicU8 = AtomicU8::new(UNPROBED);
/// errno of the probes that failed, for the error message: proc-mem, mprotect.
static PROBE_ERRNO: [AtomicI32; 2] = [AtomicI32::new(0), AtomicI32::new(0)];
static MEM_FD: AtomicI32 = AtomicI32::new(-1);
static MEM_FD_PID: AtomicI32 = AtomicI32::new(0);

/// Test hook ([`fail_writes`]): writes to let through before injected
/// failures start, and how many writes then fail (`usize::MAX`: all).
static FAIL_SKIP: AtomicUsize = AtomicUsize::new(0);
static FAIL_TIMES: AtomicUsize = AtomicUsize::new(0);
/// [`Session::write`] calls so far (test introspection).
static WRITES: AtomicUsize = AtomicUsize::new(0);

/// Test hook: the next `after` calls of [`Session::write`] proceed, then
/// `times` calls fail with `EIO` without writing (`usize::MAX`: every later
/// call; `0` disarms). Probes are not counted.
pub fn fail_writes(after: usize, times: usize) {
    FAIL_TIMES.store(0, Ordering::SeqCst);
    FAIL_SKIP.store(after, Ordering::SeqCst);
    FAIL_TIMES.store(times, Ordering::SeqCst);
}

/// How many times [`Session::write`] was called (test introspection).
pub fn writes() -> usize {
    WRITES.load(Ordering::SeqCst)
}

/// Whether the failure-injection hook fails this write. Only the patch-lock
/// holder writes, so the read-modify-writes below do not race each other.
fn injected_failure() -> bool {
    WRITES.fetch_add(1, Ordering::SeqCst);
    let times = FAIL_TIMES.load(Ordering::SeqCst);
    if times == 0 {
        return false;
    }
    let skip = FAIL_SKIP.load(Ordering::SeqCst);
    if skip > 0 {
        FAIL_SKIP.store(skip - 1, Ordering::SeqCst);
        return false;
    }
    if times != usize::MAX {
        FAIL_TIMES.store(times - 1, Ordering::SeqCst);
    }
    true
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The writer in use, probing on first use. `probe_at` is an address of text
/// this crate owns (a trampoline) and whose bytes the probe rewrites with
/// themselves.
pub fn probe(probe_at: usize) -> Result<TextWriter, Error> {
    let chosen = match CHOSEN.load(Ordering::Acquire) {
        UNPROBED => {
            let forced = std::env::var("STATIC_CALL_WRITER").ok();
            let want = |name: &str| forced.as_deref().is_none_or(|f| f == name);
            let c = if want("procmem") && probe_proc_mem(probe_at) {
                PROC_MEM
            } else if want("mprotect") && probe_mprotect(probe_at) {
                MPROTECT
            } else {
                NONE
            };
            CHOSEN.store(c, Ordering::Release);
            c
        }
        c => c,
    };
    match chosen {
        PROC_MEM => Ok(TextWriter::ProcMem),
        MPROTECT => Ok(TextWriter::Mprotect),
        _ => Err(Error::TextNotWritable {
            address: probe_at,
            errno: PROBE_ERRNO[1].load(Ordering::Relaxed),
            proc_mem_errno: PROBE_ERRNO[0].load(Ordering::Relaxed),
        }),
    }
}

/// Updates of at least this many instructions use the mprotect writer when
/// `/proc/self/mem` is the default, the process allows W+X, and no writer is
/// forced: three `pwrite`s per instruction cost about 2 µs, while an mprotect
/// session costs a few tens of µs in all (4,096 sites: 8 ms against 0.2 ms;
/// see BENCHMARKS.md).
pub const BULK_THRESHOLD: usize = 32;

const BULK_UNPROBED: u8 = 0;
const BULK_YES: u8 = 1;
const BULK_NO: u8 = 2;
static BULK: AtomicU8 = AtomicU8::new(BULK_UNPROBED);

/// The writer for an update of `len` instructions: the probed one, except
/// that large updates switch from `/proc/self/mem` to mprotect where that is
/// allowed and not overridden by `STATIC_CALL_WRITER`.
pub fn for_update(probe_at: usize, len: usize) -> Result<TextWriter, Error> {
    let w = probe(probe_at)?;
    if w != TextWriter::ProcMem || len < BULK_THRESHOLD {
        return Ok(w);
    }
    let bulk = match BULK.load(Ordering::Acquire) {
        BULK_UNPROBED => {
            let allowed = std::env::var_os("STATIC_CALL_WRITER").is_none() && Unlocked::new(&[probe_at]).is_ok();
            let b = if allowed { BULK_YES } else { BULK_NO };
            BULK.store(b, Ordering::Release);
            b
        }
        b => b,
    };
    Ok(if bulk == BULK_YES { TextWriter::Mprotect } else { w })
}

/// The writer chosen by the probe, if it ran and one works.
pub fn current() -> Option<TextWriter> {
    match CHOSEN.load(Ordering::Acquire) {
        PROC_MEM => Some(TextWriter::ProcMem),
        MPROTECT => Some(TextWriter::Mprotect),
        _ => None,
    }
}

fn probe_proc_mem(at: usize) -> bool {
    // SAFETY: `at` is text this crate owns; the byte written is the byte read.
    let byte = unsafe { std::ptr::read_volatile(at as *const u8) };
    match mem_fd().and_then(|fd| pwrite_all(fd, at, &[byte])) {
        Ok(()) => true,
        Err(e) => {
            PROBE_ERRNO[0].store(e, Ordering::Relaxed);
            false
        }
    }
}

fn probe_mprotect(at: usize) -> bool {
    match Unlocked::new(&[at]) {
        Ok(guard) => {
            drop(guard);
            true
        }
        Err(Error::TextNotWritable { errno, .. }) => {
            PROBE_ERRNO[1].store(errno, Ordering::Relaxed);
            false
        }
        Err(_) => false,
    }
}

/// The descriptor of this process's `/proc/self/mem`, reopened after a fork.
fn mem_fd() -> Result<i32, i32> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let fd = MEM_FD.load(Ordering::Acquire);
    if fd >= 0 && MEM_FD_PID.load(Ordering::Acquire) == pid {
        return Ok(fd);
    }
    // SAFETY: a NUL-terminated path; the flags ask for a close-on-exec fd.
    let new = unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if new < 0 {
        return Err(errno());
    }
    if fd >= 0 {
        // The inherited descriptor names the parent's address space: never
        // write through it again. Callers hold the patch lock, so no other
        // thread of this process is using it.
        // SAFETY: `fd` is ours and no longer used.
        unsafe { libc::close(fd) };
    }
    MEM_FD_PID.store(pid, Ordering::Release);
    MEM_FD.store(new, Ordering::Release);
    Ok(new)
}

/// In a `fork()` child (the `pthread_atfork` child handler): makes the
/// descriptor number this process used for `/proc/self/mem` name the child's
/// own memory, so that a write the forking thread was about to make with it
/// (a fork from a signal handler that interrupted an update) lands in the
/// child, never in the parent. Async-signal-safe.
pub fn after_fork_child() {
    let fd = MEM_FD.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    // SAFETY: open/dup2/close/getpid are async-signal-safe; `fd` is ours.
    unsafe {
        let new = libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if new < 0 {
            // Never write through the parent's memory: without a descriptor
            // of our own, writes fail (EBADF) and the update rolls back.
            libc::close(fd);
            MEM_FD.store(-1, Ordering::Release);
            return;
        }
        libc::dup3(new, fd, libc::O_CLOEXEC);
        libc::close(new);
        MEM_FD_PID.store(libc::getpid(), Ordering::Release);
    }
}

/// Closes the `/proc/self/mem` descriptor for good: this copy's module is
/// being unloaded, and its patch lock is held forever (no writer left).
pub fn close() {
    let fd = MEM_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: `fd` is ours, and no write can use it any more.
        unsafe { libc::close(fd) };
    }
}

fn pwrite_all(fd: i32, at: usize, bytes: &[u8]) -> Result<(), i32> {
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: the buffer is valid for `len - done` bytes; the offset is an
        // address in our own address space.
        let n =
            unsafe { libc::pwrite(fd, bytes[done..].as_ptr().cast(), bytes.len() - done, (at + done) as libc::off_t) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(libc::EIO),
            _ if errno() == libc::EINTR => {}
            _ => return Err(errno()),
        }
    }
    Ok(())
}

/// Text made writable for one update: for the mprotect writer, every page that
/// holds an address given to [`Session::open`] has write added until the
/// session drops, when each page gets back exactly the protection it had.
#[must_use = "dropping the session restores page protections"]
pub struct Session {
    writer: TextWriter,
    _unlocked: Option<Unlocked>,
}

impl Session {
    /// Prepares to write at `addrs` (each the start of at most
    /// `max_len` bytes to be written). Nothing is written yet; on error no
    /// protection is left changed.
    pub fn open(writer: TextWriter, addrs: impl Iterator<Item = usize>, max_len: usize) -> Result<Session, Error> {
        match writer {
            TextWriter::ProcMem => {
                let mut addrs = addrs;
                mem_fd().map_err(|errno| Error::TextNotWritable {
                    address: addrs.next().unwrap_or(0),
                    errno: 0,
                    proc_mem_errno: errno,
                })?;
                Ok(Session { writer, _unlocked: None })
            }
            TextWriter::Mprotect => {
                let mut ends = Vec::new();
                for a in addrs {
                    ends.push(a);
                    ends.push(a + max_len - 1);
                }
                ends.sort_unstable();
                Ok(Session { writer, _unlocked: Some(Unlocked::new(&ends)?) })
            }
        }
    }

    /// Writes `bytes` at `at`. The error is [`Error::TextNotWritable`] with
    /// the errno of the writer in use (the other writer's errno is 0); a
    /// failed single-byte write wrote nothing.
    ///
    /// # Safety
    ///
    /// `at..at + bytes.len()` lies within the addresses the session was opened
    /// for, and no thread executes those bytes while they are torn (the caller
    /// holds the patch lock and follows the int3 protocol).
    pub unsafe fn write(&self, at: usize, bytes: &[u8]) -> Result<(), Error> {
        let failed = |errno| match self.writer {
            TextWriter::ProcMem => Error::TextNotWritable { address: at, errno: 0, proc_mem_errno: errno },
            TextWriter::Mprotect => Error::TextNotWritable { address: at, errno, proc_mem_errno: 0 },
        };
        if injected_failure() {
            return Err(failed(libc::EIO));
        }
        match self.writer {
            // A failed `pwrite` of more than one byte may have written a
            // prefix; the protocol writes several bytes only where an int3
            // guards them, and rewrites them all when it rolls back.
            // `mem_fd` rather than a descriptor kept in the session: after a
            // `fork()` in the middle of an update, the child finishes it
            // through its own `/proc/self/mem`, never its parent's.
            TextWriter::ProcMem => mem_fd().and_then(|fd| pwrite_all(fd, at, bytes)).map_err(failed),
            TextWriter::Mprotect => {
                for (i, &b) in bytes.iter().enumerate() {
                    // SAFETY: the page is writable for the session's lifetime
                    // (the caller's contract); single-byte volatile stores so
                    // that the first byte of an instruction changes atomically.
                    unsafe { std::ptr::write_volatile((at + i) as *mut u8, b) };
                }
                Ok(())
            }
        }
    }
}

/// Pages with write added; dropping restores each region's original
/// protection (execute is never removed, at any point).
struct Unlocked {
    /// `(start, len, original protection)` of each range changed, in order.
    changed: Vec<(usize, usize, region::Protection)>,
}

impl Unlocked {
    /// `addrs` sorted. Adds write to every page that holds one of them.
    ///
    /// The protections are queried once for the whole span (a query reads
    /// `/proc/self/maps`, tens of microseconds), then each run of contiguous
    /// pages is changed region by region.
    fn new(addrs: &[usize]) -> Result<Unlocked, Error> {
        let page = region::page::size();
        let mut unlocked = Unlocked { changed: Vec::new() };
        let (Some(&first), Some(&last)) = (addrs.first(), addrs.last()) else { return Ok(unlocked) };
        let (span_start, span_end) = (first & !(page - 1), (last & !(page - 1)) + page);
        let regions = region::query_range(span_start as *const u8, span_end - span_start)
            .map_err(|e| not_writable(span_start, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| not_writable(span_start, e))?;
        let mut i = 0;
        while i < addrs.len() {
            // One run of contiguous pages.
            let start = addrs[i] & !(page - 1);
            let mut end = start + page;
            while i < addrs.len() {
                let p = addrs[i] & !(page - 1);
                if p > end {
                    break;
                }
                end = end.max(p + page);
                i += 1;
            }
            for r in regions.iter().filter(|r| r.as_range().start < end && r.as_range().end > start) {
                let lo = r.as_range().start.max(start);
                let hi = r.as_range().end.min(end);
                // SAFETY: the range is mapped (just queried); we only add
                // write to its current protection, and `drop` puts the
                // current protection back (also when a later run fails and
                // `unlocked` is dropped on the way out).
                unsafe { region::protect(lo as *const u8, hi - lo, r.protection() | region::Protection::WRITE) }
                    .map_err(|e| not_writable(lo, e))?;
                unlocked.changed.push((lo, hi - lo, r.protection()));
            }
        }
        Ok(unlocked)
    }
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        // Restore in reverse order of change.
        while let Some((lo, len, protection)) = self.changed.pop() {
            // SAFETY: puts back the protection this range had before `new`
            // added write to it.
            let r = unsafe { region::protect(lo as *const u8, len, protection) };
            debug_assert!(r.is_ok(), "restoring the protection of {lo:#x}: {r:?}");
        }
    }
}

fn not_writable(address: usize, e: region::Error) -> Error {
    let errno = match e {
        region::Error::SystemCall(io) => io.raw_os_error().unwrap_or(0),
        _ => libc::EFAULT,
    };
    Error::TextNotWritable { address, errno, proc_mem_errno: PROBE_ERRNO[0].load(Ordering::Relaxed) }
}
