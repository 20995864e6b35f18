//! The only door to writing machine code.
//!
//! Two writers, probed once in this order:
//!
//! 1. [`TextWriter::ProcMem`]: `pwrite` to `/proc/self/mem`. The kernel writes
//!    through its own mapping of the page (breaking copy-on-write the first
//!    time), so no protection ever changes and no page is ever writable and
//!    executable at once. This works where W+X is refused
//!    (`prctl(PR_SET_MDWE)`, SELinux `execmod`, systemd's
//!    `MemoryDenyWriteExecute`). Every update uses it whenever it works,
//!    whatever its size: speed is no reason for a W+X window.
//! 2. [`TextWriter::Mprotect`], only where `/proc/self/mem` is unavailable or
//!    `STATIC_CALL_WRITER=mprotect` forces it: `mprotect` adds write to each
//!    page while keeping execute, and the session restores each page's
//!    original protection on every path, including a failed write. The
//!    protections of text come from the ELF program headers of this copy's
//!    own module (`dl_iterate_phdr`, read once when the writer is probed, into
//!    fixed storage; `PROT_BTI` included where the loader set it, see below),
//!    so this writer needs no `/proc` and allocates nothing.
//!    A restore that fails (even after retries) is reported as
//!    [`Error::ProtectionNotRestored`] and refuses every later session.
//!
//! On aarch64 every instruction is written with one aligned 32-bit store,
//! as concurrent modification requires (Arm ARM B2.2.5). The mprotect
//! writer stores a `u32` (`str w`). The `/proc/self/mem` writer makes one
//! 4-byte `pwrite` per instruction, at its 4-aligned address: the kernel
//! (`mem_rw` → `access_remote_vm` → `copy_to_user_page`) copies it from a
//! page-aligned bounce buffer with arm64's `memcpy`, which for 4 bytes is one
//! `str w` (Linux 4.16 to 5.13, `copy_template.S`) or two identical ones
//! (5.14 on, the optimized-routines `memcpy`), then cleans and invalidates
//! the caches for the executable mapping; it does not context-synchronize
//! other CPUs, which our `membarrier` does. Longer spans are copied with
//! 8- and 16-byte stores aligned to the span, which could tear a changing
//! instruction, so pages are not joined there. Two cases make this writer
//! refuse itself on aarch64 (the mprotect writer is tried next):
//!
//! - the CPU has FEAT_MOPS (`HWCAP2_MOPS`): from Linux 6.13 the kernel's
//!   `memcpy` is `CPYP/CPYM/CPYE`, whose access sizes are implementation
//!   defined (`proc_mem_errno` is `EOPNOTSUPP`);
//! - the probe finds that what it wrote is not what threads execute: it
//!   flips the branch of a function of ours and calls it (`ESTALE`). QEMU
//!   user mode 7.2 is such a case: it invalidates the code it translated
//!   only through its own page protections, which a kernel write bypasses,
//!   while a store through an `mprotect`ed page goes through them.
//!
//! `STATIC_CALL_WRITER=procmem` or `=mprotect` in the environment forces one
//! for every update (for tests, and for debugging a policy), `=none` refuses
//! both.
//!
//! # One write per run of pages and step (x86-64)
//!
//! The protocol writes in steps ([`Session::write_step`]: the `int3`s, the
//! bodies, the first bytes). The `/proc/self/mem` writer makes one `pwrite`
//! per run of adjacent pages with writes and step, not one per instruction:
//! the span from the first to the last byte that changes there, the bytes
//! in between written back with the values read (under the patch lock)
//! just before the step. No thread can see those bytes change: they are
//! written with what they hold, and every byte that does change, changes
//! once (a single first byte, or a body under its `int3`). The trade-off: a
//! foreign writer of those very in-between bytes in the microseconds
//! between our read and our `pwrite` (a debugger inserting a breakpoint, a
//! uprobe attached at that moment, a second patcher) would have its write
//! undone. Our own writes are serialized by the patch lock, every copy of
//! this crate in a module writes its text under the module's text lock
//! (`text_lock`), and each module's text lies on pages of its own. The
//! mprotect writer stores only the bytes that change (single-byte stores
//! for first bytes), so it has no such window.
//!
//! A span goes on onto the next page only when its next write starts
//! there (`Spans::crossing`), so every byte written back, and every byte
//! read to fill the gaps, lies on a page that holds one of the span's own
//! writes: this module's text. A span is also at most `BUF_LEN` (16 pages
//! of 4 KiB + 64) bytes, the size of the static buffer it is assembled in.
//! Gaps are filled by reading ahead to the end of a page, one read per
//! page, not per gap. Joining is done on x86-64 only. So a key's 4,096
//! dense sites take one `pwrite` per 64 KiB and step, and a site and its
//! trampoline on adjacent pages one per step. The planning (`Spans`,
//! `next_span_bytes`, and the mprotect writer's `page_runs`) is pure,
//! parameterized by the page size, and unit-tested with 4, 16 and 64 KiB
//! pages.
//!
//! # Page size
//!
//! Both writers work page by page, with the page size the kernel reports,
//! `getauxval(AT_PAGESZ)`, read once by the probe: 4 KiB on x86-64; 4, 16 or
//! 64 KiB on arm64, as the kernel was built. A value that is not a power of
//! two of at least 4 KiB (0: not reported) makes the probe refuse both
//! writers ([`Error::TextNotWritable`], `EINVAL` for each): the process runs
//! on the keys' slots, correct and never frozen.
//!
//! # Protection restored: `PROT_BTI` (aarch64)
//!
//! The mprotect writer gives each page back the protection the loader gave
//! it. On arm64 that is `PROT_BTI` too, for the executable segments of an
//! object whose `PT_GNU_PROPERTY` note (`NT_GNU_PROPERTY_TYPE_0`, owner
//! "GNU") has `GNU_PROPERTY_AARCH64_FEATURE_1_BTI` in its
//! `GNU_PROPERTY_AARCH64_FEATURE_1_AND` property, when the CPU has BTI
//! (`AT_HWCAP2 & HWCAP2_BTI`): glibc's `_dl_bti_protect` maps every such
//! object so (and `mprotect`s the main program), the kernel the dynamic
//! loader and static executables. No glibc tunable changes that
//! (`glibc.cpu.aarch64_bti` only decides whether an unmarked object may be
//! loaded). Restoring only the `PF_*` flags would silently drop branch
//! protection, so the note is parsed here, from the program headers
//! `dl_iterate_phdr` gives (only the `PT_GNU_PROPERTY` segment, 8-aligned,
//! where both loaders look; a `PT_NOTE` is not consulted, since neither
//! loader applies BTI from one), bounds-checked and allocation-free: a
//! malformed note means no BTI. While a page is writable it keeps
//! `PROT_BTI`. This follows glibc and the kernel; another loader that
//! applies BTI differently (musl's dynamic linker, 1.2, applies it to none of the objects it maps)
//! would be misread. The probe does not compare with what the kernel holds
//! (only `/proc/self/smaps` says, and this writer must not need `/proc`).
//! On x86-64 nothing is added.
//!
//! # Safety
//!
//! Writing to text is sound only where no thread can execute the bytes being
//! written in a torn state: the patch protocol in `crate::patch` guarantees that
//! (an `int3` guards every multi-byte write). This module only checks that the
//! addresses are mapped text; it is `pub(crate)` and called by the protocol
//! alone, under the patch lock, which also guards the page buffer of the
//! `/proc/self/mem` writer (`PAGE_BUF`). The `/proc/self/mem` descriptor is
//! verified before each session (process id, and `st_dev`/`st_ino` recorded
//! at open): a descriptor number that no longer names our file is never
//! written through nor closed. `dl_iterate_phdr`'s callback reads only the
//! program headers the loader passes it.
#![allow(unsafe_code)]

use crate::Error;
use std::cell::UnsafeCell;
use std::iter::Peekable;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

pub use crate::mode::TextWriter;

const UNPROBED: u8 = 0;
const PROC_MEM: u8 = 1;
const MPROTECT: u8 = 2;
const NONE: u8 = 3;

static CHOSEN: AtomicU8 = AtomicU8::new(UNPROBED);
/// errno of the probes that failed, for the error message: proc-mem, mprotect.
static PROBE_ERRNO: [AtomicI32; 2] = [AtomicI32::new(0), AtomicI32::new(0)];
static MEM_FD: AtomicI32 = AtomicI32::new(-1);
/// The fork generation (`super::fork`) `MEM_FD` was opened or re-pointed
/// in: a `fork()` child's descriptor names its parent's memory until then.
static MEM_FD_GEN: AtomicU64 = AtomicU64::new(0);
/// `st_dev` and `st_ino` of `MEM_FD` when we opened it.
static MEM_FD_DEV: AtomicU64 = AtomicU64::new(0);
static MEM_FD_INO: AtomicU64 = AtomicU64::new(0);

/// A page whose protection could not be restored (0: none), and the errno.
static LEFT_WRITABLE_AT: AtomicUsize = AtomicUsize::new(0);
static LEFT_WRITABLE_ERRNO: AtomicI32 = AtomicI32::new(0);

// ---------------------------------------------------------------- test hooks

/// Injected failures of one kind: calls to let through first, then how many
/// fail (`usize::MAX`: all), and how many calls were made.
struct Hook {
    skip: AtomicUsize,
    times: AtomicUsize,
    calls: AtomicUsize,
}

impl Hook {
    const fn new() -> Hook {
        Hook { skip: AtomicUsize::new(0), times: AtomicUsize::new(0), calls: AtomicUsize::new(0) }
    }

    fn arm(&self, after: usize, times: usize) {
        self.times.store(0, Ordering::SeqCst);
        self.skip.store(after, Ordering::SeqCst);
        self.times.store(times, Ordering::SeqCst);
    }

    /// Counts a call; whether it is to fail. Only the patch-lock holder
    /// writes and protects, so these read-modify-writes do not race.
    fn fails(&self) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let times = self.times.load(Ordering::SeqCst);
        if times == 0 {
            return false;
        }
        let skip = self.skip.load(Ordering::SeqCst);
        if skip > 0 {
            self.skip.store(skip - 1, Ordering::SeqCst);
            return false;
        }
        if times != usize::MAX {
            self.times.store(times - 1, Ordering::SeqCst);
        }
        true
    }
}

/// Writes: one per span (`/proc/self/mem`) or page-run (mprotect) of a
/// [`Session::write_step`].
static WRITES: Hook = Hook::new();
/// Protection changes of the mprotect writer's sessions (adding write, and
/// restoring), not the probe's.
static PROTECTS: Hook = Hook::new();

/// Test hook: the next `after` writes (one per span and protocol step, see
/// [`Session::write_step`]) proceed, then `times` writes fail with `EIO`
/// without writing (`usize::MAX`: every later one; `0` disarms). Probes are
/// not counted.
pub fn fail_writes(after: usize, times: usize) {
    WRITES.arm(after, times);
}

/// How many writes were attempted (test introspection).
pub fn writes() -> usize {
    WRITES.calls.load(Ordering::SeqCst)
}

/// Test hook: the next `after` protection changes of the mprotect writer's
/// sessions (each range made writable, then each restored) proceed, then
/// `times` fail with `ENOMEM` without changing anything (`usize::MAX`: every
/// later one; `0` disarms). The probe's are not counted.
pub fn fail_protects(after: usize, times: usize) {
    PROTECTS.arm(after, times);
}

/// How many protection changes the mprotect writer's sessions attempted
/// (test introspection).
pub fn protects() -> usize {
    PROTECTS.calls.load(Ordering::SeqCst)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

// ---------------------------------------------------------------- page size

/// The page size, `getauxval(AT_PAGESZ)`: read once, by the probe (0 until
/// then, and for good if it is unusable). 4 KiB on x86-64; 4, 16 or 64 KiB
/// on arm64, as the kernel was built.
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Test hook: the value `AT_PAGESZ` is taken to hold (`usize::MAX`: none).
static PAGE_SIZE_INJECTED: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Test hook: the probe takes `AT_PAGESZ` to be `n`. Call before `init`
/// (the page size is read once).
pub fn inject_page_size(n: usize) {
    PAGE_SIZE_INJECTED.store(n, Ordering::SeqCst);
}

/// The smallest page Linux uses, on every architecture.
const MIN_PAGE: usize = 4096;

/// `AT_PAGESZ` as a page size: a power of two, at least 4 KiB. Anything else
/// (0: the kernel did not say) would make both writers round wrong, so the
/// probe then chooses neither, and the process runs on the keys' slots.
fn valid_page_size(n: usize) -> Option<usize> {
    (n.is_power_of_two() && n >= MIN_PAGE).then_some(n)
}

/// Reads the page size, once; `EINVAL` if `AT_PAGESZ` is not a usable one.
fn read_page_size() -> Result<usize, i32> {
    let cached = PAGE_SIZE.load(Ordering::Acquire);
    if cached != 0 {
        return Ok(cached);
    }
    let raw = match PAGE_SIZE_INJECTED.load(Ordering::SeqCst) {
        // SAFETY: getauxval reads the auxiliary vector; no preconditions.
        usize::MAX => unsafe { libc::getauxval(libc::AT_PAGESZ) as usize },
        injected => injected,
    };
    let page = valid_page_size(raw).ok_or(libc::EINVAL)?;
    PAGE_SIZE.store(page, Ordering::Release);
    Ok(page)
}

/// The page size the probe read (0: it did not run, or found none, and no
/// session opens).
fn page_size() -> usize {
    PAGE_SIZE.load(Ordering::Acquire)
}

// ---------------------------------------------------------------- choosing

/// The writer in use, probing on first use. `probe_at` is an address of text
/// this crate owns (a trampoline) and whose bytes the probe rewrites with
/// themselves. Call under the patch lock, not from a signal handler the first
/// time (the probe reads the environment and the program headers).
pub fn probe(probe_at: usize) -> Result<TextWriter, Error> {
    let chosen = match CHOSEN.load(Ordering::Acquire) {
        UNPROBED => {
            let forced = std::env::var("STATIC_CALL_WRITER").ok();
            let want = |name: &str| forced.as_deref().is_none_or(|f| f == name);
            let c = if let Err(errno) = read_page_size() {
                // Both writers round to pages: neither is used.
                PROBE_ERRNO[0].store(errno, Ordering::Relaxed);
                PROBE_ERRNO[1].store(errno, Ordering::Relaxed);
                NONE
            } else if want("procmem") && probe_proc_mem(probe_at) {
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
    if let Some(e) = left_writable() {
        return Err(e);
    }
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

/// The writer for an update: the probed one, for every update whatever its
/// size. Allocation-free once probed.
pub fn for_update(probe_at: usize) -> Result<TextWriter, Error> {
    probe(probe_at)
}

/// The writer chosen by the probe, if it ran and one works.
pub fn current() -> Option<TextWriter> {
    match CHOSEN.load(Ordering::Acquire) {
        PROC_MEM => Some(TextWriter::ProcMem),
        MPROTECT => Some(TextWriter::Mprotect),
        _ => None,
    }
}

/// The error that refuses every session once a page's protection could not
/// be restored.
fn left_writable() -> Option<Error> {
    match LEFT_WRITABLE_AT.load(Ordering::Acquire) {
        0 => None,
        address => Some(Error::ProtectionNotRestored { address, errno: LEFT_WRITABLE_ERRNO.load(Ordering::Relaxed) }),
    }
}

fn probe_proc_mem(at: usize) -> bool {
    // SAFETY: `at` is text this crate owns; the byte written is the byte read.
    let byte = unsafe { std::ptr::read_volatile(at as *const u8) };
    match mem_fd().and_then(|fd| pwrite_all(fd, at, &[byte])).and_then(|()| proc_mem_executes()) {
        Ok(()) => true,
        Err(e) => {
            PROBE_ERRNO[0].store(e, Ordering::Relaxed);
            false
        }
    }
}

/// aarch64: whether this writer may write code at all here. The kernel's
/// copy must be whole 32-bit stores (no FEAT_MOPS `memcpy`:
/// `EOPNOTSUPP`), and what it writes must be what threads then execute,
/// which the probe proves by flipping a function of ours and calling it
/// (`ESTALE` otherwise: QEMU 7.2 user mode, for one, keeps running the code
/// it translated before the write).
#[cfg(target_arch = "aarch64")]
fn proc_mem_executes() -> Result<(), i32> {
    use crate::arch::native::protocol;
    if !protocol::proc_mem_stores_whole_words() {
        return Err(libc::EOPNOTSUPP);
    }
    let fd = mem_fd()?;
    protocol::writes_are_executed(&mut |at, insn| pwrite_all(fd, at, &insn))
}

/// x86-64: the kernel's copy is what `write_step` relies on (see the module
/// docs), and the instruction stream sees it.
#[cfg(not(target_arch = "aarch64"))]
fn proc_mem_executes() -> Result<(), i32> {
    Ok(())
}

fn probe_mprotect(at: usize) -> bool {
    if !collect_segments(at, page_size()) {
        PROBE_ERRNO[1].store(libc::EFAULT, Ordering::Relaxed);
        return false;
    }
    let errno = match Unlocked::open(std::iter::once(at), 1, page_size(), false) {
        Ok(mut guard) => match guard.restore() {
            Ok(()) => return true,
            Err(Error::ProtectionNotRestored { errno, .. }) => errno,
            Err(_) => libc::EFAULT,
        },
        Err(Error::TextNotWritable { errno, .. }) => errno,
        Err(_) => libc::EFAULT,
    };
    PROBE_ERRNO[1].store(errno, Ordering::Relaxed);
    false
}

// ---------------------------------------------------------------- /proc/self/mem

/// `st_dev` and `st_ino` of `fd`, if it is open.
fn identity(fd: i32) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes a `stat` into the buffer; any descriptor number
    // is acceptable (EBADF otherwise).
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: filled in by the successful fstat.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
}

/// Whether `fd` is still the file we opened as `/proc/self/mem`.
fn still_ours(fd: i32) -> bool {
    identity(fd) == Some((MEM_FD_DEV.load(Ordering::Acquire), MEM_FD_INO.load(Ordering::Acquire)))
}

/// The descriptor of this process's `/proc/self/mem`, verified: reopened
/// after a fork, and when the number we cached no longer names the file we
/// opened (a daemon that closed every descriptor, its number reused). A
/// number that is no longer ours is left alone. Allocation-free.
fn mem_fd() -> Result<i32, i32> {
    let gen = super::fork::generation();
    let fd = MEM_FD.load(Ordering::Acquire);
    let ours = fd >= 0 && still_ours(fd);
    if ours && MEM_FD_GEN.load(Ordering::Acquire) == gen {
        return Ok(fd);
    }
    // SAFETY: a NUL-terminated path; the flags ask for a close-on-exec fd.
    let new = unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if new < 0 {
        return Err(errno());
    }
    let Some((dev, ino)) = identity(new) else {
        let e = errno();
        // SAFETY: `new` was just opened by us and is used by no one else.
        unsafe { libc::close(new) };
        return Err(e);
    };
    if ours {
        // Still our file, but opened by another process (we are a `fork()`
        // child the atfork handler did not see): it names the parent's
        // address space, so never write through it again. Callers hold the
        // patch lock, so no other thread of this process is using it.
        // SAFETY: `fd` is ours (verified above) and no longer used.
        unsafe { libc::close(fd) };
    }
    MEM_FD_DEV.store(dev, Ordering::Release);
    MEM_FD_INO.store(ino, Ordering::Release);
    MEM_FD_GEN.store(gen, Ordering::Release);
    MEM_FD.store(new, Ordering::Release);
    Ok(new)
}

/// In a `fork()` child (the `pthread_atfork` child handler): makes the
/// descriptor number this process used for `/proc/self/mem` name the child's
/// own memory, so that a write the forking thread was about to make with it
/// (a fork from a signal handler that interrupted an update) lands in the
/// child, never in the parent. Async-signal-safe.
///
/// Once per fork generation: from the main program's atfork child handler,
/// the patch lock's first entry in a child, or the write path itself (a
/// copy without atfork handlers whose forking thread goes on with the
/// update a signal handler forked from).
pub fn after_fork_child() {
    let gen = super::fork::generation();
    if MEM_FD_GEN.swap(gen, Ordering::AcqRel) == gen {
        return;
    }
    let fd = MEM_FD.load(Ordering::Acquire);
    if fd < 0 || !still_ours(fd) {
        // Not ours any more (closed, or its number reused): the next session
        // opens a new one.
        MEM_FD.store(-1, Ordering::Release);
        return;
    }
    // SAFETY: open/dup3/close/getpid/fstat are async-signal-safe; `fd` is
    // ours (verified above).
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
        if let Some((dev, ino)) = identity(fd) {
            MEM_FD_DEV.store(dev, Ordering::Release);
            MEM_FD_INO.store(ino, Ordering::Release);
        }

    }
}

/// Closes the `/proc/self/mem` descriptor for good: this copy's module is
/// being unloaded, and its patch lock is held forever (no writer left). A
/// number that no longer names our file is left open: it is someone else's.
pub fn close() {
    let fd = MEM_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 && still_ours(fd) {
        // SAFETY: `fd` is ours (verified), and no write can use it any more.
        unsafe { libc::close(fd) };
    }
}

fn pwrite_all(fd: i32, at: usize, bytes: &[u8]) -> Result<(), i32> {
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: the buffer is valid for `len - done` bytes; the offset is an
        // address in our own address space. The raw system call, not libc's
        // `pwrite`, which is a cancellation point: a `pthread_cancel` of the
        // updating thread must never unwind out of the middle of an update.
        let n = unsafe {
            libc::syscall(
                libc::SYS_pwrite64,
                fd,
                bytes[done..].as_ptr(),
                bytes.len() - done,
                (at + done) as libc::off_t,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(libc::EIO),
            _ if errno() == libc::EINTR => {}
            _ => return Err(errno()),
        }
    }
    Ok(())
}

/// The longest span of the `/proc/self/mem` writer: 16 pages of 4 KiB
/// (x86-64's), plus the instruction that may straddle the last one's end.
/// The span length is bounded by this buffer, not by the page size, and
/// the buffer is static (zero pages until an update first joins writes).
const BUF_LEN: usize = 16 * 4096 + 64;

/// The span a `/proc/self/mem` page-run writes, assembled here: static, not
/// on the stack (an update may run from a signal handler on a small stack).
struct PageBuf(UnsafeCell<[u8; BUF_LEN]>);

// SAFETY: used only by `Session::write_step`, whose callers hold the patch
// lock (one thread at a time per copy of this crate).
unsafe impl Sync for PageBuf {}

static PAGE_BUF: PageBuf = PageBuf(UnsafeCell::new([0; BUF_LEN]));

// ---------------------------------------------------------------- sessions

/// A step that failed: the error, and how many of the step's writes (in the
/// order given) may have been written: every write of the page-runs before
/// the failed one, and those of the failed run.
#[derive(Clone, Copy, Debug)]
pub struct StepFailed {
    pub error: Error,
    pub reached: usize,
}

/// Text made writable for one update: for the mprotect writer, every page that
/// holds an address given to [`Session::open`] has write added until
/// [`Session::close`] (or drop), when each page gets back exactly the
/// protection it had; for `/proc/self/mem`, a verified descriptor.
#[must_use = "closing the session restores page protections"]
pub struct Session {
    writer: TextWriter,
    unlocked: Unlocked,
    /// The page size (read by the probe).
    page: usize,
}

impl Session {
    /// Prepares to write at `addrs` (sorted; each the start of at most
    /// `max_len` bytes to be written). Nothing is written yet; on error no
    /// protection is left changed (or, if one could not be restored, the
    /// error is [`Error::ProtectionNotRestored`]). Allocation-free.
    pub fn open(writer: TextWriter, addrs: impl Iterator<Item = usize>, max_len: usize) -> Result<Session, Error> {
        if let Some(e) = left_writable() {
            return Err(e);
        }
        let mut addrs = addrs.peekable();
        let page = page_size();
        if page == 0 {
            // Not probed, or no usable page size: the probe refused both.
            let address = addrs.peek().copied().unwrap_or(0);
            return Err(Error::TextNotWritable { address, errno: libc::EINVAL, proc_mem_errno: libc::EINVAL });
        }
        match writer {
            TextWriter::ProcMem => {
                mem_fd().map_err(|errno| Error::TextNotWritable {
                    address: addrs.next().unwrap_or(0),
                    errno: 0,
                    proc_mem_errno: errno,
                })?;
                Ok(Session { writer, unlocked: Unlocked::empty(page), page })
            }
            TextWriter::Mprotect => Ok(Session { writer, unlocked: Unlocked::open(addrs, max_len, page, true)?, page }),
        }
    }

    /// One step of the protocol: writes each `(address, bytes)` of `writes`
    /// (sorted by address, not overlapping). The writes are grouped in runs
    /// (`Spans`). The `/proc/self/mem` writer makes one `pwrite` per run
    /// (on x86-64 a run of adjacent pages with writes, up to `BUF_LEN`
    /// bytes), of the span from its first to its last byte, with the bytes
    /// in between read from text just before (see the module docs); the
    /// mprotect writer's runs are page-runs (a run starts at a write whose
    /// page differs from the page where the current run started), and it
    /// stores each byte of each write (first bytes with single-byte
    /// stores). Each run counts as one write for the failure-injection
    /// hook, which fails a run before it writes anything.
    ///
    /// The error is [`Error::TextNotWritable`] with the errno of the writer in
    /// use (the other writer's errno is 0) and the run's first address.
    ///
    /// # Safety
    ///
    /// Every byte written lies within the addresses the session was opened
    /// for; the caller holds the patch lock, and no thread executes any byte
    /// of a multi-byte write while it is torn (the int3 protocol).
    pub unsafe fn write_step<'a>(&self, writes: impl IntoIterator<Item = (usize, &'a [u8])>) -> Result<(), StepFailed> {
        let failed = |at: usize, errno: i32, reached: usize| {
            let error = match self.writer {
                TextWriter::ProcMem => Error::TextNotWritable { address: at, errno: 0, proc_mem_errno: errno },
                TextWriter::Mprotect => Error::TextNotWritable { address: at, errno, proc_mem_errno: 0 },
            };
            StepFailed { error, reached }
        };
        let page = self.page;
        let mut reached = 0;
        match self.writer {
            TextWriter::ProcMem => {
                let max = if JOIN_SPANS { BUF_LEN } else { 0 };
                let mut spans = Spans::crossing(writes.into_iter(), page, max);
                // SAFETY: the patch lock (the caller's contract) makes this
                // thread the buffer's only user.
                let buf = unsafe { &mut *PAGE_BUF.0.get() };
                // SAFETY: `read` is given bytes of pages that each hold one
                // of the span's writes (`Spans::crossing`,
                // `next_span_bytes`): mapped text of this module (the
                // caller's contract), readable; only the holder of the
                // module's text lock writes it (every copy of the crate in
                // the module takes it: `text_lock`), and it is us.
                let read = |at: usize, into: &mut [u8]| unsafe {
                    std::ptr::copy_nonoverlapping(at as *const u8, into.as_mut_ptr(), into.len())
                };
                while let Some((span, bytes)) = next_span_bytes(&mut spans, buf, read) {
                    // A failed `pwrite` may have written a prefix of the
                    // span: `reached` counts the whole span.
                    reached += span.writes;
                    if WRITES.fails() {
                        return Err(failed(span.start, libc::EIO, reached));
                    }
                    // `MEM_FD` rather than a descriptor kept in the session:
                    // after a `fork()` in the middle of an update, the child
                    // finishes it through its own `/proc/self/mem` (the
                    // number re-pointed, or cleared, once per fork
                    // generation: by the atfork handler, or here).
                    if MEM_FD_GEN.load(Ordering::Acquire) != super::fork::generation() {
                        after_fork_child();
                    }
                    let fd = MEM_FD.load(Ordering::Acquire);
                    let r = if fd < 0 { Err(libc::EBADF) } else { pwrite_all(fd, span.start, bytes) };
                    r.map_err(|errno| failed(span.start, errno, reached))?;
                }
            }
            TextWriter::Mprotect => {
                // Page-runs: no length bound, nothing between the writes
                // is written.
                let mut spans = Spans::new(writes.into_iter(), page, usize::MAX);
                while let Some(start) = spans.next_start() {
                    if WRITES.fails() {
                        return Err(failed(start, libc::EIO, reached + 1));
                    }
                    let run = spans.next_span(store);
                    reached += run.map_or(0, |r| r.writes);
                }
            }
        }
        Ok(())
    }

    /// Ends the session: the mprotect writer restores every page's original
    /// protection, retrying; if one still fails, the error is
    /// [`Error::ProtectionNotRestored`] and every later session is refused
    /// with it.
    pub fn close(mut self) -> Result<(), Error> {
        self.unlocked.restore()
    }
}

/// Copies a write's few bytes into the page buffer (a loop, not a `memcpy`
/// call: writes are one to five bytes).
fn overlay(to: &mut [u8], from: &[u8]) {
    for (t, &f) in to.iter_mut().zip(from) {
        *t = f;
    }
}

// ---------------------------------------------------------------- spans (pure)

/// The writes of a step that one write of the text writer covers: the bytes
/// `start..end`, the first `writes` writes still to come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    writes: usize,
}

/// The writes of one step (`(address, bytes)`, sorted by address, not
/// overlapping) grouped in spans, one at a time. A span starts at a write and
/// takes in each next write that starts on the same page as the span's
/// first (`crossing`: on the page where the span ends, or the next one),
/// and that keeps the span within `max` bytes. So the bytes of a span that
/// are no write's (the gaps) all lie on the page of its first write
/// (`crossing`: on pages that hold one of its writes); without crossing a
/// span never crosses a page boundary, except that its last write may run
/// past the page's end, with its own bytes. `max` 0: every write is a span
/// of its own; `usize::MAX`: spans are page-runs. Pure: nothing is read or
/// written here.
struct Spans<I: Iterator> {
    writes: Peekable<I>,
    page: usize,
    max: usize,
    /// Whether a span may go on onto the page after the one its last write
    /// ends on (`/proc/self/mem` spans; not the mprotect writer's runs).
    cross: bool,
}

impl<'a, I: Iterator<Item = (usize, &'a [u8])>> Spans<I> {
    /// `page`: the page size, a power of two.
    fn new(writes: I, page: usize, max: usize) -> Spans<I> {
        debug_assert!(page.is_power_of_two());
        Spans { writes: writes.peekable(), page, max, cross: false }
    }

    /// As `new`, but a span goes on across a page boundary when the next
    /// write starts on the page after the one where the span ends: its
    /// gaps then lie on pages that each hold one of its writes.
    fn crossing(writes: I, page: usize, max: usize) -> Spans<I> {
        Spans { cross: true, ..Spans::new(writes, page, max) }
    }

    /// Where the next span starts, if one is left.
    fn next_start(&mut self) -> Option<usize> {
        self.writes.peek().map(|&(a, _)| a)
    }

    /// The next span; `each` is given each of its writes, in order.
    fn next_span(&mut self, mut each: impl FnMut(usize, &'a [u8])) -> Option<Span> {
        let (start, first) = self.writes.next()?;
        each(start, first);
        let page_of = |at: usize| at & !(self.page - 1);
        let on_page = page_of(start);
        let mut span = Span { start, end: start + first.len(), writes: 1 };
        while let Some(&(a, b)) = self.writes.peek() {
            let near = if self.cross {
                // The gap `span.end..a` lies on the page of the span's last
                // byte and on `a`'s, the next one at most.
                page_of(a).wrapping_sub(page_of(span.end - 1)) <= self.page
            } else {
                page_of(a) == on_page
            };
            let joins = a >= span.end
                && near
                && (a - start).checked_add(b.len()).is_some_and(|len| len <= self.max);
            if !joins {
                break;
            }
            each(a, b);
            span.end = a + b.len();
            span.writes += 1;
            self.writes.next();
        }
        Some(span)
    }
}

/// The next span of `spans` and its bytes: a span of one write is that
/// write's own bytes; a longer one is assembled in `buf`, from each write's
/// bytes and, between them, what text holds there now (`read(at, into)`
/// fills `into` with the bytes at `at`). Text is read ahead, to the end of
/// the page of the write that needs a gap filled (or of the buffer): one
/// read per page a span touches, not one per gap (a dense plan has
/// thousands), and only of pages that hold one of the span's writes.
/// `spans`' `max` must be at most `buf.len()`.
fn next_span_bytes<'b, 'a: 'b, I: Iterator<Item = (usize, &'a [u8])>>(
    spans: &mut Spans<I>,
    buf: &'b mut [u8],
    mut read: impl FnMut(usize, &mut [u8]),
) -> Option<(Span, &'b [u8])> {
    debug_assert!(spans.max <= buf.len());
    let page = spans.page;
    // `base`: the span's start; `known`: the end of what `buf` holds so
    // far (written or read), past every write overlaid yet.
    let (mut started, mut base, mut known, mut first): (bool, usize, usize, &'a [u8]) = (false, 0, 0, &[]);
    let span = spans.next_span(|a, b| {
        if !started {
            (started, base, first) = (true, a, b);
            if b.len() <= buf.len() {
                overlay(&mut buf[..b.len()], b);
            }
        } else {
            if a > known {
                // `Spans` keeps `a - base + b.len()` within `buf`, so
                // `until > a`; `a`'s page holds a write, so it is mapped.
                let until = ((a | (page - 1)) + 1).min(base + buf.len());
                read(known, &mut buf[known - base..until - base]);
                known = until;
            }
            overlay(&mut buf[a - base..a - base + b.len()], b);
        }
        known = known.max(a + b.len());
    })?;
    let bytes = if span.writes == 1 { first } else { &buf[..span.end - span.start] };
    Some((span, bytes))
}

/// Stores `bytes` at `at` through the mprotect writer's writable mapping.
#[cfg(target_arch = "x86_64")]
fn store(at: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        // SAFETY: the page is writable for the session's lifetime (the
        // caller's contract); single-byte volatile stores, so that the first
        // byte of an instruction changes atomically.
        unsafe { std::ptr::write_volatile((at + i) as *mut u8, b) };
    }
}

/// Stores `bytes` (whole instructions) at `at` through the mprotect
/// writer's writable mapping: one aligned 32-bit store (`str w`) per
/// instruction, single-copy atomic, as concurrent modification requires.
#[cfg(target_arch = "aarch64")]
fn store(at: usize, bytes: &[u8]) {
    debug_assert!(at.is_multiple_of(4) && bytes.len().is_multiple_of(4));
    for (i, word) in bytes.chunks_exact(4).enumerate() {
        let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        // SAFETY: the page is writable for the session's lifetime (the
        // caller's contract); `at` is an instruction's address, 4-aligned.
        unsafe { std::ptr::write_volatile((at + 4 * i) as *mut u32, word) };
    }
}

/// Whether the `/proc/self/mem` writer may join a page's writes of one step
/// into one `pwrite` (x86-64). On aarch64 each instruction is its own
/// 4-byte `pwrite` at its 4-aligned address: the kernel copies such a
/// write with one aligned 32-bit store (arm64 `memcpy` for 4 bytes), but a
/// longer span is copied with 8- and 16-byte stores whose alignment follows
/// the span, not the instructions, and may tear a changing instruction.
const JOIN_SPANS: bool = cfg!(target_arch = "x86_64");

// ---------------------------------------------------------------- program headers

/// Loadable segments of this copy's module: `[start, end, PROT_*]`, page
/// aligned, in program-header order. Written once by the probe (under the
/// patch lock, before `CHOSEN` is published), read by sessions.
const MAX_SEGMENTS: usize = 16;
static SEGMENTS: [[AtomicUsize; 3]; MAX_SEGMENTS] =
    [const { [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)] }; MAX_SEGMENTS];
static SEGMENT_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Reads the `PT_LOAD` program headers of the module that holds `at` (this
/// copy's module: `at` is one of its trampolines), with `page` the page
/// size. Takes the loader's lock: never from an update.
fn collect_segments(at: usize, page: usize) -> bool {
    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _: libc::size_t, data: *mut libc::c_void) -> libc::c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info` whose `dlpi_phdr`
        // points to `dlpi_phnum` program headers; `data` is the pair below.
        let (info, (at, page)) = unsafe { (&*info, *data.cast::<(usize, usize)>()) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: as above.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let base = info.dlpi_addr as usize;
        let loads = || phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD);
        let range = |p: &libc::Elf64_Phdr| {
            let lo = base.wrapping_add(p.p_vaddr as usize);
            (lo, lo.wrapping_add(p.p_memsz as usize))
        };
        if !loads().any(|p| (range(p).0..range(p).1).contains(&at)) {
            return 0;
        }
        // The loader guards executable text with `PROT_BTI` (aarch64) when
        // the CPU has BTI and the module's property note asks for it.
        let hwcap2 = hwcap2();
        let feature_1_and = if hwcap2 & HWCAP2_BTI != 0 { feature_1_and(phdrs, base) } else { None };
        let guarded = bti_guarded(hwcap2, feature_1_and);
        let mut n = 0;
        for p in loads().take(MAX_SEGMENTS) {
            let (lo, hi) = range(p);
            SEGMENTS[n][0].store(lo & !(page - 1), Ordering::Relaxed);
            SEGMENTS[n][1].store(hi.wrapping_add(page - 1) & !(page - 1), Ordering::Relaxed);
            SEGMENTS[n][2].store(segment_protection(p.p_flags, guarded) as usize, Ordering::Relaxed);
            n += 1;
        }
        SEGMENT_COUNT.store(n, Ordering::Release);
        1
    }
    let mut data = (at, page);
    // SAFETY: the callback matches the expected signature and reads only
    // what the loader passes it (the program headers, and the property note
    // they locate in mapped, readable memory); `data` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut data).cast()) };
    SEGMENT_COUNT.load(Ordering::Acquire) > 0
}

// ---------------------------------------------------------------- protections (BTI)

/// `PROT_BTI` (arm64): the pages are guarded, an indirect branch into them
/// must land on a `bti` (or `paciasp`...) instruction.
const PROT_BTI: i32 = 0x10;
/// `HWCAP2_BTI` (arm64 `AT_HWCAP2`): the CPU and the kernel support BTI.
const HWCAP2_BTI: u64 = 1 << 17;
/// The program header of the `.note.gnu.property` section.
const PT_GNU_PROPERTY: u32 = 0x6474_e553;
const NT_GNU_PROPERTY_TYPE_0: u32 = 5;
const GNU_PROPERTY_AARCH64_FEATURE_1_AND: u32 = 0xc000_0000;
const GNU_PROPERTY_AARCH64_FEATURE_1_BTI: u32 = 1;

/// The protection the loader gives a `PT_LOAD` segment whose flags are
/// `p_flags`: `PF_R`/`PF_W`/`PF_X` as `PROT_READ`/`PROT_WRITE`/`PROT_EXEC`,
/// and `PROT_BTI` on an executable one when `guarded` (glibc's
/// `_dl_bti_protect`: `PROT_EXEC | PROT_BTI`, plus read and write as the
/// flags say).
fn segment_protection(p_flags: u32, guarded: bool) -> i32 {
    let prot = [(libc::PF_R, libc::PROT_READ), (libc::PF_W, libc::PROT_WRITE), (libc::PF_X, libc::PROT_EXEC)]
        .iter()
        .filter(|&&(f, _)| p_flags & f != 0)
        .fold(0, |acc, &(_, prot)| acc | prot);
    if guarded && prot & libc::PROT_EXEC != 0 {
        prot | PROT_BTI
    } else {
        prot
    }
}

/// Whether the loader guards a module's executable segments with
/// `PROT_BTI`: the CPU has BTI (`HWCAP2_BTI` in `hwcap2`) and the module's
/// `GNU_PROPERTY_AARCH64_FEATURE_1_AND` property (`feature_1_and`) has
/// `GNU_PROPERTY_AARCH64_FEATURE_1_BTI`. glibc (`_dl_process_gnu_property`,
/// for every object it maps, and the main program) and the kernel (for
/// the dynamic loader itself and static executables) decide just so; no
/// tunable changes it (`glibc.cpu.aarch64_bti` only decides whether an
/// object without the marking may be loaded).
fn bti_guarded(hwcap2: u64, feature_1_and: Option<u32>) -> bool {
    hwcap2 & HWCAP2_BTI != 0 && feature_1_and.is_some_and(|f| f & GNU_PROPERTY_AARCH64_FEATURE_1_BTI != 0)
}

/// `AT_HWCAP2` where BTI exists (aarch64); 0 elsewhere, so that nothing is
/// ever guarded there.
#[cfg(target_arch = "aarch64")]
fn hwcap2() -> u64 {
    // SAFETY: getauxval reads the auxiliary vector; no preconditions.
    unsafe { libc::getauxval(libc::AT_HWCAP2) as u64 }
}

/// See the aarch64 `hwcap2`.
#[cfg(not(target_arch = "aarch64"))]
fn hwcap2() -> u64 {
    0
}

/// The `GNU_PROPERTY_AARCH64_FEATURE_1_AND` property of the module whose
/// program headers are `phdrs` (loaded at `base`), read from its
/// `PT_GNU_PROPERTY` segment as the loaders read it: only that segment
/// (neither glibc nor the kernel looks for the property in a `PT_NOTE`),
/// 8-aligned (glibc skips another alignment), and only where it lies in
/// the file-backed bytes of a readable `PT_LOAD` segment, so it is mapped
/// and readable. `None` for anything else, malformed included.
fn feature_1_and(phdrs: &[libc::Elf64_Phdr], base: usize) -> Option<u32> {
    let note = phdrs.iter().find(|p| p.p_type == PT_GNU_PROPERTY)?;
    if note.p_align != 8 {
        return None;
    }
    let (lo, len) = (note.p_vaddr, note.p_memsz);
    let hi = lo.checked_add(len)?;
    let mapped = phdrs.iter().any(|p| {
        p.p_type == libc::PT_LOAD
            && p.p_flags & libc::PF_R != 0
            && p.p_vaddr <= lo
            && p.p_vaddr.checked_add(p.p_filesz).is_some_and(|end| hi <= end)
    });
    if !mapped {
        return None;
    }
    // SAFETY: `lo..hi` lies in the file-backed bytes of a readable loaded
    // segment of a module the loader is reporting (mapped, and not unloaded
    // while `dl_iterate_phdr` holds its lock); only read.
    let bytes = unsafe { std::slice::from_raw_parts(base.wrapping_add(lo as usize) as *const u8, len as usize) };
    gnu_property(bytes, GNU_PROPERTY_AARCH64_FEATURE_1_AND)
}

/// The 4-byte property `want` of the `NT_GNU_PROPERTY_TYPE_0` note (owner
/// "GNU") in `notes`, the bytes of an ELF64 note segment (notes and
/// properties 8-aligned), as glibc's `_dl_process_pt_gnu_property` reads
/// it: the first such note only, its properties in ascending type order,
/// each within the note. Everything is bounds-checked; anything malformed
/// (truncated, out of order, a size that does not fit, a `want` property
/// that is not 4 bytes) is `None`.
fn gnu_property(notes: &[u8], want: u32) -> Option<u32> {
    const ALIGN: usize = 8;
    const HEADER: usize = 12;
    let align = |n: usize| n.checked_add(ALIGN - 1).map(|n| n & !(ALIGN - 1));
    let mut at = 0usize;
    while at.checked_add(HEADER)? < notes.len() {
        let (namesz, descsz, ty) = (word(notes, at)? as usize, word(notes, at + 4)? as usize, word(notes, at + 8)?);
        let desc_at = align(at.checked_add(HEADER)?.checked_add(namesz)?)?;
        if namesz == 4 && ty == NT_GNU_PROPERTY_TYPE_0 && notes.get(at + HEADER..at + HEADER + 4)? == b"GNU\0" {
            if descsz < 8 || descsz % ALIGN != 0 {
                return None;
            }
            let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
            let (mut p, mut last) = (0usize, 0u32);
            while desc.len() - p >= 8 {
                let (ty, datasz) = (word(desc, p)?, word(desc, p + 4)? as usize);
                if ty < last {
                    return None;
                }
                let data = desc.get(p + 8..(p + 8).checked_add(datasz)?)?;
                if ty == want {
                    return if datasz == 4 { word(data, 0) } else { None };
                }
                last = ty;
                p = (p + 8).checked_add(align(datasz)?)?.min(desc.len());
            }
            // Only the first property note counts.
            return None;
        }
        at = align(desc_at.checked_add(descsz)?)?;
    }
    None
}

/// The native-endian `u32` at `at` in `bytes`, if it fits.
fn word(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// The protection the program headers give the page at `page` (the last
/// segment that covers it wins: the loader maps segments in order), if it is
/// executable text of this module.
fn text_protection(page: usize) -> Option<i32> {
    let n = SEGMENT_COUNT.load(Ordering::Acquire);
    let prot = SEGMENTS[..n]
        .iter()
        .filter(|s| (s[0].load(Ordering::Relaxed)..s[1].load(Ordering::Relaxed)).contains(&page))
        .last()
        .map(|s| s[2].load(Ordering::Relaxed) as i32)?;
    (prot & libc::PROT_EXEC != 0).then_some(prot)
}

// ---------------------------------------------------------------- mprotect

/// The most ranges one session changes; past it, a range is extended over the
/// gap to the next page (same segment, same protection) instead.
const MAX_RANGES: usize = 64;

/// How many times a failed restore is tried again before giving up.
const RESTORE_RETRIES: usize = 3;

/// Pages with write added; [`Unlocked::restore`] (or drop) gives each range
/// back its original protection (execute is never removed, at any point).
/// Fixed storage: no allocation.
struct Unlocked {
    /// `(start, end, original protection)` of each range changed, in order.
    ranges: [(usize, usize, i32); MAX_RANGES],
    len: usize,
    /// Counted by the failure-injection hook (sessions, not the probe).
    hooked: bool,
    /// The page size.
    page: usize,
}

impl Unlocked {
    fn empty(page: usize) -> Unlocked {
        Unlocked { ranges: [(0, 0, 0); MAX_RANGES], len: 0, hooked: false, page }
    }

    /// Adds write to every page that holds a byte of `addrs[i]..addrs[i] +
    /// max_len` (`addrs` sorted), one `mprotect` per run of contiguous pages
    /// of the same protection. On error, what was changed is restored.
    fn open(addrs: impl Iterator<Item = usize>, max_len: usize, page: usize, hooked: bool) -> Result<Unlocked, Error> {
        let mut u = Unlocked { hooked, ..Unlocked::empty(page) };
        match u.unlock_all(addrs, max_len) {
            Ok(()) => Ok(u),
            // Put back what was changed; if that fails too, say so first.
            Err(e) => Err(u.restore().err().unwrap_or(e)),
        }
    }

    fn unlock_all(&mut self, addrs: impl Iterator<Item = usize>, max_len: usize) -> Result<(), Error> {
        let prot_of = |p: usize| text_protection(p).ok_or_else(|| not_writable(p, libc::EFAULT));
        page_runs(addrs, max_len, self.page, prot_of, |run| self.unlock(run))
    }

    /// Adds write to `lo..hi` and records it. When the storage is full, the
    /// last range is extended over the gap instead, if the gap is text of
    /// the same protection.
    fn unlock(&mut self, (lo, hi, prot): (usize, usize, i32)) -> Result<(), Error> {
        let (lo, slot) = if self.len < MAX_RANGES {
            (lo, self.len)
        } else {
            let (last_lo, last_hi, last_prot) = self.ranges[MAX_RANGES - 1];
            let same =
                last_prot == prot && (last_hi..lo).step_by(self.page).all(|p| text_protection(p) == Some(prot));
            if !same {
                return Err(not_writable(lo, libc::ENOMEM));
            }
            debug_assert!(last_lo < last_hi);
            (last_hi, MAX_RANGES - 1)
        };
        self.protect(lo, hi, prot | libc::PROT_WRITE).map_err(|e| not_writable(lo, e))?;
        if slot == self.len {
            self.ranges[slot] = (lo, hi, prot);
            self.len += 1;
        } else {
            self.ranges[slot].1 = hi;
        }
        Ok(())
    }

    fn protect(&self, lo: usize, hi: usize, prot: i32) -> Result<(), i32> {
        if self.hooked && PROTECTS.fails() {
            return Err(libc::ENOMEM);
        }
        // SAFETY: `lo..hi` is text of this module (program headers); only
        // write is added or removed, execute stays.
        match unsafe { libc::mprotect(lo as *mut libc::c_void, hi - lo, prot) } {
            0 => Ok(()),
            _ => Err(errno()),
        }
    }

    /// Gives every range back its protection, in reverse order, each tried
    /// up to `1 + RESTORE_RETRIES` times. A range that still fails is
    /// recorded (every later session is refused) and reported; the others
    /// are restored all the same.
    fn restore(&mut self) -> Result<(), Error> {
        let mut result = Ok(());
        while self.len > 0 {
            self.len -= 1;
            let (lo, hi, prot) = self.ranges[self.len];
            let mut r = self.protect(lo, hi, prot);
            for _ in 0..RESTORE_RETRIES {
                if r.is_ok() {
                    break;
                }
                r = self.protect(lo, hi, prot);
            }
            if let Err(errno) = r {
                LEFT_WRITABLE_ERRNO.store(errno, Ordering::Relaxed);
                LEFT_WRITABLE_AT.store(lo, Ordering::Release);
                result = Err(Error::ProtectionNotRestored { address: lo, errno });
            }
        }
        result
    }
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        // A session dropped without `close` (an early return): restore all
        // the same; a failure is recorded and refuses every later session.
        let _ = self.restore();
    }
}

/// The runs of pages that hold a byte of `addrs[i]..addrs[i] + max_len`
/// (`addrs` sorted): each `(start, end, protection)`, page aligned, as long
/// as its pages are contiguous and of one protection (`prot_of(page)`, whose
/// error stops the walk), given to `run` in address order. Pure: `prot_of`
/// and `run` do what is done.
fn page_runs<E>(
    addrs: impl Iterator<Item = usize>,
    max_len: usize,
    page: usize,
    mut prot_of: impl FnMut(usize) -> Result<i32, E>,
    mut run: impl FnMut((usize, usize, i32)) -> Result<(), E>,
) -> Result<(), E> {
    debug_assert!(page.is_power_of_two());
    let mut current: Option<(usize, usize, i32)> = None;
    for a in addrs {
        let (first, last) = (a & !(page - 1), (a + max_len.max(1) - 1) & !(page - 1));
        let mut p = first;
        while p <= last {
            let prot = prot_of(p)?;
            current = match current {
                Some((lo, hi, pr)) if pr == prot && (lo..=hi).contains(&p) => Some((lo, hi.max(p + page), pr)),
                Some(r) => {
                    run(r)?;
                    Some((p, p + page, prot))
                }
                None => Some((p, p + page, prot)),
            };
            p += page;
        }
    }
    match current {
        Some(r) => run(r),
        None => Ok(()),
    }
}

fn not_writable(address: usize, errno: i32) -> Error {
    Error::TextNotWritable { address, errno, proc_mem_errno: PROBE_ERRNO[0].load(Ordering::Relaxed) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGES: [usize; 3] = [4096, 16384, 65536];
    const INT3: &[u8] = &[0xcc];

    /// Every span of `writes` (`max` as in `Spans`), with the writes each
    /// was given.
    fn plan(writes: &[(usize, &'static [u8])], page: usize, max: usize) -> Vec<(Span, Vec<usize>)> {
        spans_of(Spans::new(writes.iter().copied(), page, max))
    }

    /// As `plan`, with spans that may cross onto the next page.
    fn plan_crossing(writes: &[(usize, &'static [u8])], page: usize, max: usize) -> Vec<(Span, Vec<usize>)> {
        spans_of(Spans::crossing(writes.iter().copied(), page, max))
    }

    fn spans_of<'a, I: Iterator<Item = (usize, &'a [u8])>>(mut spans: Spans<I>) -> Vec<(Span, Vec<usize>)> {
        let mut out = Vec::new();
        loop {
            let mut given = Vec::new();
            match spans.next_span(|a, _| given.push(a)) {
                Some(span) => out.push((span, given)),
                None => return out,
            }
        }
    }

    /// The page-runs of instructions of 5 bytes at `addrs`.
    fn runs<E>(addrs: &[usize], page: usize, prot: impl FnMut(usize) -> Result<i32, E>) -> Result<Vec<(usize, usize, i32)>, E> {
        let mut out = Vec::new();
        page_runs(addrs.iter().copied(), 5, page, prot, |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    fn span(start: usize, end: usize, writes: usize) -> Span {
        Span { start, end, writes }
    }

    #[test]
    fn page_size_must_be_a_power_of_two_of_at_least_4k() {
        for bad in [0, 1, 2, 3, 1024, 2048, 4095, 4097, 12288, usize::MAX] {
            assert_eq!(valid_page_size(bad), None, "{bad}");
        }
        for good in PAGES.into_iter().chain([1 << 21]) {
            assert_eq!(valid_page_size(good), Some(good));
        }
    }

    /// The spans follow the page size they are given: two writes 0x20
    /// apart across a 4 KiB boundary share a 16 KiB (or 64 KiB) page, and
    /// so one `pwrite`; on 4 KiB pages they are two.
    #[test]
    fn spans_follow_the_page_size() {
        let writes = [(0x1ff0, INT3), (0x2010, INT3)];
        assert_eq!(plan(&writes, 4096, BUF_LEN), [(span(0x1ff0, 0x1ff1, 1), vec![0x1ff0]), (span(0x2010, 0x2011, 1), vec![0x2010])]);
        for page in [16384, 65536] {
            assert_eq!(plan(&writes, page, BUF_LEN), [(span(0x1ff0, 0x2011, 2), vec![0x1ff0, 0x2010])], "{page}");
        }
        // Across a 16 KiB boundary: two on 16 KiB pages, one on 64 KiB.
        let writes = [(0x3ff0, INT3), (0x4010, INT3)];
        assert_eq!(plan(&writes, 16384, BUF_LEN).len(), 2);
        assert_eq!(plan(&writes, 65536, BUF_LEN).len(), 1);
        // The mprotect writer's page-runs (no length bound): a whole 64 KiB
        // page is one run; spans stop at the length they are given.
        let writes = [(0x10_0000, INT3), (0x10_8000, INT3), (0x10_fffe, INT3)];
        assert_eq!(plan(&writes, 65536, usize::MAX), [(span(0x10_0000, 0x10_ffff, 3), vec![0x10_0000, 0x10_8000, 0x10_fffe])]);
        assert_eq!(plan(&writes, 65536, 4096 + 64).len(), 3);
        assert_eq!(plan(&writes, 16384, usize::MAX).len(), 3);
        // `max` 0 (aarch64's `/proc/self/mem` writer): one write each.
        let writes = [(0x1000, &[0u8; 4][..]), (0x1004, &[0u8; 4][..])];
        assert_eq!(plan(&writes, 16384, 0).len(), 2);
    }

    /// Crossing spans (`/proc/self/mem` on x86-64) go on onto the next page
    /// when their next write starts there, and only there: every gap lies
    /// on a page that holds a write. They stop at the length they are
    /// given, as the others.
    #[test]
    fn crossing_spans_join_the_next_page_only() {
        let page = 4096;
        let writes = [(0x1ff0, INT3), (0x2010, INT3)];
        assert_eq!(plan_crossing(&writes, page, BUF_LEN), [(span(0x1ff0, 0x2011, 2), vec![0x1ff0, 0x2010])]);
        // A page between them that holds no write: two spans.
        let writes = [(0x1ff0, INT3), (0x3010, INT3)];
        assert_eq!(plan_crossing(&writes, page, BUF_LEN).len(), 2);
        // A write at the start of a page and one at the end of the next:
        // one span (both pages hold a write).
        let writes = [(0x1000, INT3), (0x2fff, INT3)];
        assert_eq!(plan_crossing(&writes, page, BUF_LEN), [(span(0x1000, 0x3000, 2), vec![0x1000, 0x2fff])]);
        // A chain of adjacent pages is one span, up to the length given.
        let writes: Vec<(usize, &[u8])> = (0..8).map(|i| (0x10_0ff0 + i * page, INT3)).collect();
        assert_eq!(plan_crossing(&writes, page, BUF_LEN).len(), 1);
        assert_eq!(plan_crossing(&writes, page, 2 * page).len(), 4);
        // An instruction straddling a page's end brings the next page in.
        let writes = [(0x1ffe, &[1u8, 2, 3, 4][..]), (0x2ff0, INT3)];
        assert_eq!(plan_crossing(&writes, page, BUF_LEN).len(), 1);
        // `max` 0: one write each, as without crossing.
        assert_eq!(plan_crossing(&writes, page, 0).len(), 2);
    }

    /// The last write of a span may run past its page's end (an instruction
    /// that straddles it brings its own bytes); the next page's writes start
    /// a span of their own.
    #[test]
    fn only_the_last_write_runs_past_the_page() {
        for page in PAGES {
            let writes = [(page - 8, INT3), (page - 2, &[1u8, 2, 3, 4][..]), (page + 2, INT3)];
            assert_eq!(
                plan(&writes, page, BUF_LEN),
                [(span(page - 8, page + 2, 2), vec![page - 8, page - 2]), (span(page + 2, page + 3, 1), vec![page + 2])]
            );
        }
    }

    /// The span's bytes: each write's own, and in between what text holds,
    /// read ahead once to the end of the page (or of the buffer).
    #[test]
    fn span_bytes_are_the_writes_over_the_current_text() {
        let (base, page) = (0x4000, 16384);
        let text: Vec<u8> = (0..page).map(|i| i as u8).collect();
        let writes = [(base + 2, &[0xaa, 0xbb][..]), (base + 7, INT3), (base + 9, &[0xdd][..])];
        let mut spans = Spans::crossing(writes.iter().copied(), page, BUF_LEN);
        let mut buf = vec![0u8; BUF_LEN];
        let mut reads = Vec::new();
        let read = |at: usize, into: &mut [u8]| {
            reads.push((at, into.len()));
            into.copy_from_slice(&text[at - base..at - base + into.len()]);
        };
        let (s, bytes) = next_span_bytes(&mut spans, &mut buf, read).unwrap();
        assert_eq!(s, span(base + 2, base + 10, 3));
        assert_eq!(bytes, [0xaa, 0xbb, 4, 5, 6, 0xcc, 8, 0xdd]);
        // One read, from the first gap to the end of the page.
        assert_eq!(reads, [(base + 4, page - 4)]);
        // A span of one write is that write's own bytes, nothing read.
        let writes = [(base + 2, &[0xaa, 0xbb][..])];
        let mut spans = Spans::crossing(writes.iter().copied(), page, BUF_LEN);
        let (s, bytes) = next_span_bytes(&mut spans, &mut buf, |_, _| panic!("read")).unwrap();
        assert_eq!((s, bytes), (span(base + 2, base + 4, 1), &[0xaa, 0xbb][..]));
        // The read stops at the buffer's end where that comes first.
        let writes = [(base, INT3), (base + 100, INT3)];
        let mut spans = Spans::crossing(writes.iter().copied(), page, 200);
        let mut reads = Vec::new();
        let read = |at: usize, into: &mut [u8]| {
            reads.push((at, into.len()));
            into.copy_from_slice(&text[at - base..at - base + into.len()]);
        };
        let (s, _) = next_span_bytes(&mut spans, &mut buf[..200], read).unwrap();
        assert_eq!(s, span(base, base + 101, 2));
        assert_eq!(reads, [(base + 1, 199)]);
    }

    #[test]
    fn page_runs_follow_the_page_size() {
        let runs = |addrs: &[usize], page: usize| runs(addrs, page, |_| Ok::<_, ()>(5)).unwrap();
        // Two instructions 8 KiB apart: one 16 KiB page, two 4 KiB ones.
        assert_eq!(runs(&[0x1000, 0x3000], 16384), [(0, 0x4000, 5)]);
        assert_eq!(runs(&[0x1000, 0x3000], 4096), [(0x1000, 0x2000, 5), (0x3000, 0x4000, 5)]);
        // An instruction across a 16 KiB boundary: both pages.
        assert_eq!(runs(&[0x3ffe], 16384), [(0, 0x8000, 5)]);
        assert_eq!(runs(&[0x3ffe], 65536), [(0, 0x10000, 5)]);
        // Pages apart are runs apart.
        assert_eq!(runs(&[0x1000, 0x9000], 16384), [(0, 0x4000, 5), (0x8000, 0xc000, 5)]);
    }

    #[test]
    fn page_runs_split_at_a_protection_change_and_stop_at_unmapped() {
        let page = 16384;
        let prot = |p: usize| match p / page {
            0 | 1 => Ok(5),
            2 => Ok(5 | PROT_BTI),
            _ => Err(p),
        };
        assert_eq!(runs(&[0x10, 0x4010, 0x8010], page, prot), Ok(vec![(0, 0x8000, 5), (0x8000, 0xc000, 5 | PROT_BTI)]));
        assert_eq!(runs(&[0x10, 0xc010], page, prot), Err(0xc000));
    }

    /// Writes of one to five bytes, sorted and apart, in four pages of
    /// `page` from `BASE`; the text's current bytes.
    const BASE: usize = 0x40_0000;
    /// The page size, the writes, the text.
    type Case = (usize, Vec<(usize, Vec<u8>)>, Vec<u8>);
    fn writes_strategy() -> impl Strategy<Value = Case> {
        let gap = prop_oneof![0usize..8, 0usize..600, 0usize..20000];
        (prop::sample::select(PAGES.to_vec()), prop::collection::vec((gap, prop::collection::vec(any::<u8>(), 1..=5)), 0..80))
            .prop_flat_map(|(page, items)| {
                let mut at = BASE;
                let mut writes = Vec::new();
                for (gap, bytes) in items {
                    at += gap;
                    if at + bytes.len() > BASE + 4 * page {
                        break;
                    }
                    let len = bytes.len();
                    writes.push((at, bytes));
                    at += len;
                }
                let text = any::<u8>().prop_map(move |seed| (0..4 * page + 8).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect());
                (Just(page), Just(writes), text)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every write lands exactly once, the bytes between writes are the
        /// text's, no span is longer than the buffer, every byte read or
        /// written back lies on a page that holds one of the span's writes
        /// (without crossing: the page of its first write), and writes are
        /// joined wherever those rules let them (4 KiB pages: a page's
        /// writes are always one `pwrite`; crossing, so are adjacent
        /// pages').
        #[test]
        fn spans_write_exactly_the_writes((page, writes, text) in writes_strategy(), crossing in any::<bool>()) {
            let it = writes.iter().map(|(a, b)| (*a, &b[..]));
            let mut spans = if crossing { Spans::crossing(it, page, BUF_LEN) } else { Spans::new(it, page, BUF_LEN) };
            let mut buf = vec![0u8; BUF_LEN];
            let mut via_spans = text.clone();
            let mut planned = Vec::new();
            let mut count = 0;
            let page_of = |at: usize| at & !(page - 1);
            loop {
                let mut reads = Vec::new();
                let read = |at: usize, into: &mut [u8]| {
                    assert!(at >= BASE && at + into.len() <= BASE + text.len());
                    reads.push((at, into.len()));
                    into.copy_from_slice(&text[at - BASE..at - BASE + into.len()]);
                };
                let Some((s, bytes)) = next_span_bytes(&mut spans, &mut buf, read) else { break };
                count += s.writes;
                prop_assert_eq!(bytes.len(), s.end - s.start);
                prop_assert!(s.end - s.start <= BUF_LEN);
                let span_writes = &writes[count - s.writes..count];
                prop_assert_eq!(span_writes[0].0, s.start);
                let last = span_writes.last().unwrap();
                prop_assert_eq!(last.0 + last.1.len(), s.end);
                // The pages that hold a byte of one of the span's writes.
                let held = |at: usize| {
                    span_writes.iter().any(|(a, b)| page_of(*a) == page_of(at) || page_of(a + b.len() - 1) == page_of(at))
                };
                for (at, len) in &reads {
                    prop_assert!(held(*at) && held(at + len - 1), "read {:#x}+{} off the span's pages", at, len);
                }
                for at in s.start..s.end {
                    prop_assert!(held(at), "byte {:#x} written back off the span's pages", at);
                }
                if !crossing {
                    for (a, _) in span_writes {
                        prop_assert_eq!(page_of(*a), page_of(s.start), "a write from another page joined");
                    }
                }
                if let Some(&(next, ref b)) = writes.get(count) {
                    // Not joined: too far, or the buffer is full.
                    let far = if crossing {
                        page_of(next) - page_of(s.end - 1) > page
                    } else {
                        page_of(next) != page_of(s.start)
                    };
                    prop_assert!(far || next + b.len() - s.start > BUF_LEN);
                }
                via_spans[s.start - BASE..s.end - BASE].copy_from_slice(bytes);
                planned.push(s);
            }
            prop_assert_eq!(count, writes.len());
            let mut direct = text.clone();
            for (a, b) in &writes {
                direct[a - BASE..a - BASE + b.len()].copy_from_slice(b);
            }
            prop_assert_eq!(via_spans, direct);
            if page == 4096 && !crossing {
                let (mut runs, mut run_page) = (0, usize::MAX);
                for (a, _) in &writes {
                    if a / page != run_page {
                        (runs, run_page) = (runs + 1, a / page);
                    }
                }
                prop_assert_eq!(planned.len(), runs, "one span per page-run");
            }
        }

        /// The page-runs cover every byte of every instruction, once; each
        /// is page aligned and of one protection; adjacent runs of one
        /// protection are merged; no page is included that holds no byte.
        #[test]
        fn page_runs_cover_exactly_the_instructions(
            page in prop::sample::select(PAGES.to_vec()),
            mut offsets in prop::collection::vec(0usize..(1 << 20), 0..40),
        ) {
            offsets.sort_unstable();
            let addrs: Vec<usize> = offsets.iter().map(|o| BASE + o).collect();
            let prot = |p: usize| Ok::<_, ()>(if (p / page) % 3 == 2 { 5 | PROT_BTI } else { 5 });
            let runs = runs(&addrs, page, prot).unwrap();
            for w in runs.windows(2) {
                prop_assert!(w[0].1 <= w[1].0, "runs overlap or are out of order");
                prop_assert!(w[0].1 != w[1].0 || w[0].2 != w[1].2, "adjacent runs of one protection");
            }
            for &(lo, hi, pr) in &runs {
                prop_assert!(lo % page == 0 && hi % page == 0 && lo < hi);
                for p in (lo..hi).step_by(page) {
                    prop_assert_eq!(prot(p).unwrap(), pr);
                    prop_assert!(addrs.iter().any(|&a| a < p + page && p < a + 5), "page {:#x} holds no byte", p);
                }
            }
            for &a in &addrs {
                for b in a..a + 5 {
                    prop_assert_eq!(runs.iter().filter(|r| (r.0..r.1).contains(&b)).count(), 1);
                }
            }
        }
    }

    // ------------------------------------------------------------ BTI

    /// An ELF64 note: header, name, descriptor, each padded to 8.
    fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_ne_bytes());
        n.extend((desc.len() as u32).to_ne_bytes());
        n.extend(ty.to_ne_bytes());
        n.extend(name);
        n.resize(n.len().next_multiple_of(8), 0);
        n.extend(desc);
        n.resize(n.len().next_multiple_of(8), 0);
        n
    }

    /// A GNU property: type, size, data padded to 8.
    fn property(ty: u32, data: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend(ty.to_ne_bytes());
        p.extend((data.len() as u32).to_ne_bytes());
        p.extend(data);
        p.resize(p.len().next_multiple_of(8), 0);
        p
    }

    fn properties(props: &[Vec<u8>]) -> Vec<u8> {
        note(b"GNU\0", NT_GNU_PROPERTY_TYPE_0, &props.concat())
    }

    const AND: u32 = GNU_PROPERTY_AARCH64_FEATURE_1_AND;
    const BTI: u32 = GNU_PROPERTY_AARCH64_FEATURE_1_BTI;
    /// `GNU_PROPERTY_AARCH64_FEATURE_1_PAC`.
    const PAC: u32 = 2;
    /// `GNU_PROPERTY_X86_FEATURE_1_AND`, with IBT and SHSTK.
    const X86_AND: u32 = 0xc000_0002;
    /// `GNU_PROPERTY_1_NEEDED`.
    const NEEDED: u32 = 0xb000_8000;

    #[test]
    fn property_note_bti_set_or_clear() {
        let bti = properties(&[property(AND, &(BTI | PAC).to_ne_bytes())]);
        assert_eq!(gnu_property(&bti, AND), Some(BTI | PAC));
        let pac = properties(&[property(AND, &PAC.to_ne_bytes())]);
        assert_eq!(gnu_property(&pac, AND), Some(PAC));
        assert!(!bti_guarded(HWCAP2_BTI, gnu_property(&pac, AND)));
        assert!(bti_guarded(HWCAP2_BTI, gnu_property(&bti, AND)));
    }

    #[test]
    fn property_note_after_other_properties_and_notes() {
        let props = properties(&[property(NEEDED, &1u32.to_ne_bytes()), property(AND, &BTI.to_ne_bytes())]);
        assert_eq!(gnu_property(&props, AND), Some(BTI));
        // A build-id note first (another type), and one of another owner.
        let other = [note(b"GNU\0", 3, &[7; 20]), note(b"Go\0\0", NT_GNU_PROPERTY_TYPE_0, &[0; 8]), props].concat();
        assert_eq!(gnu_property(&other, AND), Some(BTI));
        // A property with 12 bytes of data, padded, before it.
        let padded = properties(&[property(NEEDED, &[1; 12]), property(AND, &BTI.to_ne_bytes())]);
        assert_eq!(gnu_property(&padded, AND), Some(BTI));
    }

    #[test]
    fn property_note_x86_or_none() {
        let x86 = properties(&[property(X86_AND, &3u32.to_ne_bytes())]);
        assert_eq!(gnu_property(&x86, AND), None);
        assert!(!bti_guarded(HWCAP2_BTI, gnu_property(&x86, AND)));
        assert_eq!(gnu_property(&[], AND), None);
        assert_eq!(gnu_property(&properties(&[]), AND), None);
        // Not the owner "GNU".
        let gnv = note(b"GNV\0", NT_GNU_PROPERTY_TYPE_0, &property(AND, &BTI.to_ne_bytes()));
        assert_eq!(gnu_property(&gnv, AND), None);
        // Only the first property note counts (as in glibc).
        let two = [properties(&[property(NEEDED, &1u32.to_ne_bytes())]), properties(&[property(AND, &BTI.to_ne_bytes())])]
            .concat();
        assert_eq!(gnu_property(&two, AND), None);
    }

    #[test]
    fn property_note_malformed_means_no_bti() {
        let good = properties(&[property(NEEDED, &1u32.to_ne_bytes()), property(AND, &BTI.to_ne_bytes())]);
        // Every truncation.
        for len in 0..good.len() {
            assert_eq!(gnu_property(&good[..len], AND), None, "truncated to {len}");
        }
        let set = |at: usize, v: u32| {
            let mut n = good.clone();
            n[at..at + 4].copy_from_slice(&v.to_ne_bytes());
            n
        };
        // namesz, descsz huge; descsz not a multiple of 8, too small.
        for (at, v) in [(0, u32::MAX), (4, u32::MAX), (4, 20), (4, 4), (0, 5)] {
            assert_eq!(gnu_property(&set(at, v), AND), None, "word {at} = {v:#x}");
        }
        // A property's datasz past the descriptor, or huge.
        for v in [0x100, u32::MAX] {
            assert_eq!(gnu_property(&set(16 + 4, v), AND), None);
        }
        // The feature word is not 4 bytes.
        let wide = properties(&[property(AND, &u64::from(BTI).to_ne_bytes())]);
        assert_eq!(gnu_property(&wide, AND), None);
        // Out of order.
        let unordered = properties(&[property(AND | 0x10, &1u32.to_ne_bytes()), property(AND, &BTI.to_ne_bytes())]);
        assert_eq!(gnu_property(&unordered, AND), None);
    }

    proptest! {
        #[test]
        fn property_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = gnu_property(&bytes, AND);
        }

        #[test]
        fn property_parser_survives_corruption(at in 0usize..48, v in any::<u8>()) {
            let mut n = properties(&[property(NEEDED, &1u32.to_ne_bytes()), property(AND, &BTI.to_ne_bytes())]);
            let at = at % n.len();
            n[at] = v;
            let _ = gnu_property(&n, AND);
        }
    }

    #[test]
    fn protection_adds_bti_to_executable_segments_only() {
        let (rx, r, rw) = (libc::PF_R | libc::PF_X, libc::PF_R, libc::PF_R | libc::PF_W);
        let exec = libc::PROT_READ | libc::PROT_EXEC;
        assert_eq!(segment_protection(rx, false), exec);
        assert_eq!(segment_protection(rx, true), exec | PROT_BTI);
        assert_eq!(segment_protection(libc::PF_X, true), libc::PROT_EXEC | PROT_BTI);
        assert_eq!(segment_protection(r, true), libc::PROT_READ);
        assert_eq!(segment_protection(rw, true), libc::PROT_READ | libc::PROT_WRITE);
        // The CPU's support and the note's request, both needed.
        let other_hwcap2 = 1 << 1;
        assert!(bti_guarded(HWCAP2_BTI | other_hwcap2, Some(BTI)));
        assert!(!bti_guarded(other_hwcap2, Some(BTI)));
        assert!(!bti_guarded(0, Some(BTI | PAC)));
        assert!(!bti_guarded(HWCAP2_BTI, Some(PAC)));
        assert!(!bti_guarded(HWCAP2_BTI, None));
        // Where BTI does not exist, nothing is ever guarded.
        if cfg!(not(target_arch = "aarch64")) {
            assert_eq!(hwcap2(), 0);
        }
    }

    fn phdr(p_type: u32, p_flags: u32, p_vaddr: u64, p_filesz: u64, p_memsz: u64, p_align: u64) -> libc::Elf64_Phdr {
        libc::Elf64_Phdr { p_type, p_flags, p_offset: p_vaddr, p_vaddr, p_paddr: p_vaddr, p_filesz, p_memsz, p_align }
    }

    /// The note is found through the program headers, in memory, only where
    /// a readable loaded segment holds it.
    #[test]
    fn property_note_through_program_headers() {
        let note = properties(&[property(AND, &BTI.to_ne_bytes())]);
        // A "module" whose image is `image`, loaded at its address; the
        // note at offset 64.
        let mut image = vec![0u8; 256];
        image[64..64 + note.len()].copy_from_slice(&note);
        let base = image.as_ptr() as usize;
        let n = note.len() as u64;
        let load = |flags, filesz| phdr(libc::PT_LOAD, flags, 0, filesz, 256, 4096);
        let prop = |align| phdr(PT_GNU_PROPERTY, libc::PF_R, 64, n, n, align);
        assert_eq!(feature_1_and(&[load(libc::PF_R, 256), prop(8)], base), Some(BTI));
        // glibc skips a property segment not 8-aligned.
        assert_eq!(feature_1_and(&[load(libc::PF_R, 256), prop(4)], base), None);
        // Not in a readable segment's file-backed bytes: not read.
        assert_eq!(feature_1_and(&[load(libc::PF_X, 256), prop(8)], base), None);
        assert_eq!(feature_1_and(&[load(libc::PF_R, 64 + n - 1), prop(8)], base), None);
        assert_eq!(feature_1_and(&[prop(8)], base), None);
        // No property segment (a PT_NOTE is not where the loaders look).
        let pt_note = phdr(libc::PT_NOTE, libc::PF_R, 64, n, n, 8);
        assert_eq!(feature_1_and(&[load(libc::PF_R, 256), pt_note], base), None);
        // A size that overflows.
        let huge = phdr(PT_GNU_PROPERTY, libc::PF_R, 64, u64::MAX, u64::MAX, 8);
        assert_eq!(feature_1_and(&[load(libc::PF_R, 256), huge], base), None);
    }
}
