//! The SIGTRAP handler: emulates the instruction being patched for a thread
//! that lands on the guarding `int3`, and passes every other trap on.
//!
//! # Copies of the crate in one process
//!
//! Every module that links this crate (the executable, each plugin cdylib)
//! has its own copy of this file's statics and its own handler. The copy that
//! initializes later installs its handler over the earlier one and chains to
//! it, so the handlers form a chain, newest first. For an older copy the
//! newer handler is "not ours", yet its traps still reach it; so the copies
//! recognize each other's handlers by a versioned header emitted in front of
//! each handler's entry point:
//!
//! ```text
//! entry - 32: "SCALLSIG"        magic, 8 bytes
//! entry - 24: u32 1             ABI version
//! entry - 20: u32 32            header size
//! entry - 16: i32 chains_to - . fn(handler: usize, depth: u32) -> bool
//! entry - 12: i32 relink - .    fn(dying: usize, replacement: *const sigaction, depth: u32) -> bool
//! entry -  8: 8 bytes zero      reserved
//! entry:      lock inc [IN_FLIGHT]; sub rsp, 8; call on_sigtrap;
//!             add rsp, 8; lock dec [IN_FLIGHT]; ret
//! ```
//!
//! The entry is 64-byte aligned plus 32, so our header never crosses a page
//! boundary, and the header of a foreign address is read only when it lies
//! in the page of that address (which is mapped: the kernel runs the handler
//! there). `chains_to(h)` says whether the copy's previous disposition (or
//! its fallback, see "Re-installing") is `h` or a recognized handler that
//! chains to `h`; `relink(dying, r)` replaces a previous disposition (or
//! fallback) equal to `dying` by `*r`, down the chain. An update accepts a
//! newer handler on top of ours when its chain reaches ours ([`check`]), and
//! a copy being unloaded takes its handler out of the chain ([`unload`],
//! from `.fini_array`): it restores its previous disposition if it is still
//! current, else asks the current one to relink past it. Incompatible
//! future layouts use another magic; compatible ones keep these fields and
//! may grow the header.
//!
//! Every copy's install, re-install and removal runs inside a
//! `dl_iterate_phdr` callback ([`serialized`]): glibc holds its loader
//! write lock around the callbacks, one lock for the whole process, so two
//! copies initializing at the same moment never both read the same previous
//! disposition (and lose one handler). Code that is not a copy of this
//! crate does not take that lock; so `install` keeps what `sigaction`
//! really replaced, not what it read just before.
//!
//! # What the kernel would do
//!
//! A trap that is not ours goes where it would have gone without us: to the
//! previous handler with its own flags and mask, or, for `SIG_DFL`, the
//! default action (the process dies of SIGTRAP). A trap the kernel raised
//! itself (an `int3`: `si_code > 0`) with the previous disposition
//! `SIG_IGN` also kills, as the kernel forces `SIG_DFL` for a synchronous
//! trap it cannot deliver; a SIGTRAP sent by a process (`kill`, `raise`)
//! with `SIG_IGN` is dropped.
//!
//! # Our disposition
//!
//! `SA_SIGINFO | SA_NODEFER | SA_RESTART`, no `SA_ONSTACK`, and every
//! signal blocked but the synchronous ones (traps and faults). [`check`]
//! requires all of it of the disposition the kernel runs: our entry put back
//! by other code with another mask or flags is displaced like a foreign
//! handler, since it brings back the deadlocks the mask prevents.
//!
//! # Stack
//!
//! The handler runs on the interrupted thread's own stack (no `SA_ONSTACK`):
//! Rust gives each thread an 8 KiB alternate stack, and a CPU with AVX-512
//! spends 3.6 KiB of it on the kernel's signal frame alone. Its frames stay
//! small in debug builds too: the previous disposition is read in place,
//! not copied, and the chaining and dying paths are separate functions. A
//! genuine `int3` passed through three chained copies (beta, alpha, host)
//! to a user handler took 6,304 bytes below the stack pointer in a debug
//! build on a machine with a 3,632-byte signal frame (`AT_MINSIGSTKSZ`),
//! red zone included: about 850 bytes per copy; 4,736 bytes in a release
//! build (`tests/signal_small_altstack.rs` measures it on a painted stack).
//!
//! # Re-installing
//!
//! A handler installed after ours (a crash reporter) displaces it: updates
//! refuse with `HandlerDisplaced`. `init()` again ([`install`]) puts ours
//! back on top: the newcomer becomes our previous disposition, and the one
//! we had replaced before it becomes our fallback. A newcomer that chains to
//! the handler it replaced calls ours again with the same `ucontext_t`; our
//! handler notes every context it is passing on (`CHAINING`, a fixed table:
//! no allocation, no thread-local storage, which a dlopen'd copy may
//! allocate), recognizes that re-entry as a loop, and passes the trap to the
//! fallback instead. With more than 64 traps being passed on at once, a
//! further one is not noted (a newcomer that passes it back then loops).
//! A copy that re-installed over a newcomer restores the newcomer when it
//! is unloaded, and the newcomer still chains to the handler it recorded,
//! ours: a plugin in that state must not be unloaded.
//!
//! # Unloading
//!
//! The stub counts a thread in `IN_FLIGHT` with the first instruction it
//! runs in this module, and uncounts it with the last but one. Unloading
//! (after taking the handler out of the chain) waits for the count to drop
//! to zero. What remains, and cannot be closed from user space: a thread
//! for which the kernel already chose our handler (it read the disposition
//! and built the signal frame) but that was descheduled before executing
//! the stub's first instruction, and a thread descheduled between the
//! stub's `lock dec` and its `ret`. Both are windows of a few instructions
//! (plus however long the thread stays descheduled there); the first is
//! open only for a trap that arrived before the disposition changed.
//!
//! While this copy is poisoned (an update failed and could not be undone),
//! its `int3`s may still be in its text: unload keeps the handler installed
//! and in the chain. Such a module can then not be unloaded safely: its
//! handler, still reached by SIGTRAP, would be unmapped.
//!
//! # Fork
//!
//! A `fork()` child has one thread. The counts and the `WRITER` flag held
//! by other threads of the parent are reset there
//! ([`after_fork_child`]); counts are read as signed, so that the forking
//! thread leaving our handler in the child only takes them below zero.
//!
//! # Safety
//!
//! The handler runs asynchronously on any thread, possibly nested in another
//! signal handler, possibly while the interrupted thread holds the allocator's
//! or any other lock. Everything it does is async-signal-safe: atomic loads
//! and stores, reads of immutable tables published before the handler could
//! see them, writes to the interrupted context (`ucontext_t`) and to the
//! interrupted thread's stack just below its stack pointer (the red zone, which
//! the call site's inline asm leaves free because it is not `nostack`), and the
//! async-signal-safe calls `sigaction`, `pthread_sigmask` and `raise` when it
//! chains or dies, and `futex` (wake) when it leaves the patch plan. It
//! allocates nothing, takes no lock, uses no thread-local storage and cannot
//! panic (indexing only of the register array by constant in-range indices,
//! `get` elsewhere, wrapping arithmetic, no `unwrap`). It runs with every
//! asynchronous signal blocked. `errno` is preserved. `chains_to` and
//! `relink`'s reading half obey the same rules.
//!
//! The previous disposition lives in one of two slots; `CURRENT` says which.
//! A reader (the handler when it chains, `chains_to`, `relink`) counts
//! itself in `READERS[i]`, confirms `CURRENT == i`, reads slot `i` in place,
//! and holds the count while it calls the previous handler. The only writer
//! after installation is `set_previous` (from `relink` or a re-install,
//! serialized by `WRITER` and by the loader's lock): it waits for the
//! readers of the spare slot to leave, writes it, flips `CURRENT`, and waits
//! for the readers of the old slot to leave, so that when it returns no
//! thread will still call the handler it replaced. Those waits, and the
//! wait for this copy's own handlers at unload, are bounded (a handler that
//! `siglongjmp`s out never uncounts itself).
//!
//! Reading another handler's header: the address is that of the handler the
//! kernel would run now, or one a live copy chains to (mapped as long as
//! every copy unloaded so far took itself out of the chain, which its
//! destructor does unless a foreign handler sits above it or it is
//! poisoned), and the bytes read lie in the same page, so they are mapped;
//! executable pages are readable on x86-64 unless made execute-only with
//! protection keys, which no SIGTRAP handler lives in. Only addresses at 32
//! modulo 64 are read at all.
#![allow(unsafe_code)]

use crate::arch::x86_64::{Insn, INSN_LEN};
use crate::Error;
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};

/// What the patcher says about a trap at an address.
pub enum Trap {
    /// The address is being patched: execute this instruction in the
    /// thread's stead.
    Emulate(Insn),
    /// The address is ours and no longer holds the `int3`: the trap arrived
    /// after the update finished; run the instruction again.
    Rewind,
    /// Not ours: pass it on.
    NotOurs,
}

// ---------------------------------------------------------------- entry stub and header

/// The header's magic, version and size.
const MAGIC: [u8; 8] = *b"SCALLSIG";
const ABI_VERSION: u32 = 1;
const HEADER_SIZE: usize = 32;
/// How many recognized handlers a chain walk follows at most.
const MAX_DEPTH: u32 = 64;

core::arch::global_asm!(
    ".pushsection .text.static_call_sigtrap, \"ax\", @progbits",
    ".balign 64, 0xcc",
    ".ascii \"SCALLSIG\"",
    ".long 1",
    ".long 32",
    ".long {chains_to} - .",
    ".long {relink} - .",
    ".long 0, 0",
    ".globl {handler}_sc_entry",
    ".hidden {handler}_sc_entry",
    ".type {handler}_sc_entry, @function",
    "{handler}_sc_entry:",
    // Counted by the first instruction the thread executes here (see
    // "Unloading" in the module docs), uncounted by the last but one.
    "lock inc qword ptr [rip + {in_flight}]",
    // The kernel enters a handler as if called (rsp = 8 mod 16): keep
    // the handler's stack aligned across our own call.
    "sub rsp, 8",
    "call {handler}",
    "add rsp, 8",
    "lock dec qword ptr [rip + {in_flight}]",
    "ret",
    ".size {handler}_sc_entry, . - {handler}_sc_entry",
    ".popsection",
    handler = sym on_sigtrap,
    chains_to = sym chains_to,
    relink = sym relink,
    in_flight = sym IN_FLIGHT,
);

/// The address our handler is installed at: the entry stub behind the header.
fn entry_address() -> usize {
    let a: usize;
    // SAFETY: `lea` only computes an address.
    unsafe {
        core::arch::asm!(
            "lea {a}, [rip + {h}_sc_entry]",
            a = out(reg) a,
            h = sym on_sigtrap,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    a
}

type ChainsTo = extern "C" fn(usize, u32) -> bool;
type Relink = extern "C" fn(usize, *const libc::sigaction, u32) -> bool;

/// The functions behind a recognized handler (ours or another copy's).
#[derive(Clone, Copy)]
struct Peer {
    chains_to: ChainsTo,
    relink: Relink,
}

/// One byte of a handler's header.
///
/// Only for addresses in the page of a handler that the kernel runs now or
/// that a live copy chains to: mapped (every copy unloaded so far took its
/// handler out of the chain), and executable text is readable.
fn read_u8(at: usize) -> u8 {
    // SAFETY: the rule above.
    unsafe { std::ptr::read_volatile(at as *const u8) }
}

fn read_u32(at: usize) -> u32 {
    u32::from_le_bytes([
        read_u8(at),
        read_u8(at.wrapping_add(1)),
        read_u8(at.wrapping_add(2)),
        read_u8(at.wrapping_add(3)),
    ])
}

/// The functions of the handler installed at `handler`, if it carries a
/// header this copy understands. `handler` is the disposition the kernel
/// runs now, or one that a live copy chains to. Async-signal-safe.
fn recognize(handler: usize) -> Option<Peer> {
    // Our entry points are at 32 modulo 64: anything else is foreign, and
    // the header then lies in the handler's own page, which `read_u8` needs.
    if handler < 4096 || handler % 64 != HEADER_SIZE {
        return None;
    }
    let base = handler - HEADER_SIZE;
    if MAGIC.iter().enumerate().any(|(i, &m)| read_u8(base + i) != m) {
        return None;
    }
    if read_u32(base + 8) != ABI_VERSION || (read_u32(base + 12) as usize) < HEADER_SIZE {
        return None;
    }
    let rel = |at: usize| at.wrapping_add(read_u32(at) as i32 as isize as usize);
    let (c, r) = (rel(base + 16), rel(base + 20));
    // SAFETY: a header with our magic and version holds, by the v1 ABI,
    // offsets to functions of exactly these signatures in the same module.
    Some(unsafe {
        Peer { chains_to: std::mem::transmute::<usize, ChainsTo>(c), relink: std::mem::transmute::<usize, Relink>(r) }
    })
}

// ---------------------------------------------------------------- the previous disposition

/// What this copy passes traps that are not its own to.
#[derive(Clone, Copy)]
struct Chain {
    /// The disposition our handler replaced (or, after a re-install over a
    /// newcomer, that newcomer's).
    action: libc::sigaction,
    /// After a re-install over a newcomer ([`install`]): the disposition we
    /// had replaced before it, which is what a trap the newcomer passes
    /// back to us gets (see "Re-installing"). `SIG_DFL` when unused.
    fallback: libc::sigaction,
    has_fallback: bool,
}

struct Slots([UnsafeCell<MaybeUninit<Chain>>; 2]);
// SAFETY: slot `i` is written only while no reader is counted in
// `READERS[i]` and `CURRENT != i` (see the module's Safety section).
unsafe impl Sync for Slots {}

static PREVIOUS: Slots = Slots([UnsafeCell::new(MaybeUninit::uninit()), UnsafeCell::new(MaybeUninit::uninit())]);
/// Which slot holds the previous disposition.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// Readers of each slot. Read as signed: a `fork()` child resets them to
/// zero, after which a reader the forking thread was can take one below.
static READERS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// Serializes `set_previous`.
static WRITER: AtomicBool = AtomicBool::new(false);
/// The previous handler had `SA_RESETHAND` and has run once: it is now
/// `SIG_DFL`.
static PREVIOUS_RESET: AtomicBool = AtomicBool::new(false);
/// Threads inside this copy's entry stub (the handler, and any handler it
/// chained to). Counted and uncounted by the stub's own instructions; read
/// as signed (see [`READERS`]).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// The `ucontext_t` addresses of the traps this copy's handler is passing on
/// right now (0: free). A trap that arrives again with one of them was
/// passed back to us by the handler we chained to: a loop (see
/// "Re-installing").
static CHAINING: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];

const NOT_INSTALLED: u8 = 0;
const INSTALLED: u8 = 1;
const UNLOADED: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(NOT_INSTALLED);

/// A counted reference to the current slot; uncounts on drop. Read in place
/// (no copy: small frames, also in debug builds).
struct Previous {
    slot: usize,
}

impl Previous {
    fn chain(&self) -> &Chain {
        let slot = PREVIOUS.0.get(self.slot & 1).map_or(std::ptr::null_mut(), |s| s.get());
        // SAFETY: the slot was current when we counted ourselves in its
        // readers: no writer touches it until we leave. It was initialized
        // before it became current.
        unsafe { (*slot).assume_init_ref() }
    }

    /// The handler the trap goes to: `chain.action`'s, or `SIG_DFL` once an
    /// `SA_RESETHAND` handler ran.
    fn handler(&self) -> usize {
        if PREVIOUS_RESET.load(SeqCst) {
            libc::SIG_DFL
        } else {
            self.chain().action.sa_sigaction
        }
    }
}

impl Drop for Previous {
    fn drop(&mut self) {
        if let Some(r) = READERS.get(self.slot) {
            r.fetch_sub(1, SeqCst);
        }
    }
}

/// The previous disposition, counted as a reader. Async-signal-safe.
fn previous() -> Previous {
    loop {
        let i = CURRENT.load(SeqCst) & 1;
        let Some(readers) = READERS.get(i) else { continue };
        readers.fetch_add(1, SeqCst);
        if CURRENT.load(SeqCst) & 1 == i {
            return Previous { slot: i };
        }
        readers.fetch_sub(1, SeqCst);
    }
}

/// No thread counted in `c` (signed: see [`READERS`]).
fn idle(c: &AtomicUsize) -> bool {
    c.load(SeqCst) as isize <= 0
}

/// Spins until `cond` holds (true), or gives up after about a second (false:
/// a handler that never returned, `siglongjmp`). Not for signal handlers.
fn wait_until(cond: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > std::time::Duration::from_secs(1) {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// Makes `chain` the previous disposition. Waits until no thread still
/// reads (or calls) the one it replaces; false if that wait gave up. Not for
/// signal handlers.
fn set_previous(chain: &Chain) -> bool {
    while WRITER.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
        std::thread::yield_now();
    }
    writer_hook();
    let old = CURRENT.load(SeqCst) & 1;
    let new = old ^ 1;
    let mut clean = wait_until(|| idle(&READERS[new]));
    // SAFETY: slot `new` is not current and has no readers (a reader that
    // counts itself now sees `CURRENT == old` and backs off without reading).
    unsafe { (*PREVIOUS.0[new].get()).write(*chain) };
    PREVIOUS_RESET.store(false, SeqCst);
    CURRENT.store(new, SeqCst);
    clean &= wait_until(|| idle(&READERS[old]));
    WRITER.store(false, SeqCst);
    clean
}

/// Test hook point: runs while `set_previous` holds `WRITER`.
fn writer_hook() {
    let hook = WRITER_HOOK.load(SeqCst);
    if hook != 0 {
        // SAFETY: only `set_writer_hook` stores here, an `extern "C" fn()`.
        let f: extern "C" fn() = unsafe { std::mem::transmute(hook) };
        f();
    }
}

static WRITER_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Test hook: `hook` runs while this copy's `set_previous` holds `WRITER`.
pub fn set_writer_hook(hook: Option<extern "C" fn()>) {
    WRITER_HOOK.store(hook.map_or(0, |f| f as usize), SeqCst);
}

/// This copy's bookkeeping, for tests: threads in the handler, readers of
/// each slot (signed), whether `WRITER` is held.
pub fn bookkeeping() -> (isize, [isize; 2], bool) {
    (
        IN_FLIGHT.load(SeqCst) as isize,
        [READERS[0].load(SeqCst) as isize, READERS[1].load(SeqCst) as isize],
        WRITER.load(SeqCst),
    )
}

/// In a `fork()` child (its only thread is the one that forked): the other
/// threads of the parent that were inside our handler, reading a slot or
/// holding `WRITER` do not exist here. Reset what they held. If the forking
/// thread itself was inside our handler (a fork from a handler we chained
/// to), its own uncounting takes the counts below zero, which reads as
/// idle; a thread the child creates before that and that enters our
/// handler meanwhile is then not waited for at unload.
pub fn after_fork_child() {
    IN_FLIGHT.store(0, SeqCst);
    READERS.iter().for_each(|r| r.store(0, SeqCst));
    WRITER.store(false, SeqCst);
    CHAINING.iter().for_each(|c| c.store(0, SeqCst));
}

// ---------------------------------------------------------------- the v1 ABI functions

/// Whether a trap given to our handler reaches `handler` (our previous
/// disposition, or our fallback, is `handler`, or a recognized handler whose
/// chain reaches it). Part of the v1 header ABI; async-signal-safe.
extern "C" fn chains_to(handler: usize, depth: u32) -> bool {
    if STATE.load(SeqCst) != INSTALLED {
        return false;
    }
    let prev = previous();
    let c = prev.chain();
    let fallback = if c.has_fallback { c.fallback.sa_sigaction } else { libc::SIG_DFL };
    for h in [prev.handler(), fallback] {
        if h == handler {
            return true;
        }
        if let (Some(d), Some(peer)) = (depth.checked_sub(1), recognize(h)) {
            if (peer.chains_to)(handler, d) {
                return true;
            }
        }
    }
    false
}

/// If our previous disposition (or fallback) is the handler at `dying`,
/// makes `*replacement` take its place; otherwise passes the request down
/// the chain. Part of the v1 header ABI. Not for signal handlers: it waits
/// until no thread still calls `dying` through us.
extern "C" fn relink(dying: usize, replacement: *const libc::sigaction, depth: u32) -> bool {
    if STATE.load(SeqCst) != INSTALLED || replacement.is_null() {
        return false;
    }
    let prev = previous();
    let mut c = *prev.chain();
    drop(prev);
    let mut hit = false;
    if c.action.sa_sigaction == dying {
        // SAFETY: the caller passes a valid `sigaction`, read before it returns.
        c.action = unsafe { *replacement };
        hit = true;
    }
    if c.has_fallback && c.fallback.sa_sigaction == dying {
        // SAFETY: as above.
        c.fallback = unsafe { *replacement };
        hit = true;
    }
    if hit {
        set_previous(&c);
        return true;
    }
    let Some(d) = depth.checked_sub(1) else { return false };
    let below = [Some(c.action.sa_sigaction), c.has_fallback.then_some(c.fallback.sa_sigaction)];
    below.into_iter().flatten().filter_map(recognize).any(|peer| (peer.relink)(dying, replacement, d))
}

// ---------------------------------------------------------------- install, check, unload

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn current_action() -> Result<libc::sigaction, Error> {
    let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: querying only; `cur` is valid for writing.
    if unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) } != 0 {
        return Err(Error::HandlerNotInstalled { errno: errno() });
    }
    // SAFETY: sigaction filled it in.
    Ok(unsafe { cur.assume_init() })
}

/// The flags our handler is installed with.
const FLAGS: libc::c_int = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESTART;

/// The signals that stay deliverable while our handler runs: traps and
/// faults (a nested trap in a chained handler must work). Every other
/// signal is blocked: a signal handler that interrupted ours while it is
/// counted as a reader of the patch plan, and then waited for the patch
/// lock, would wait forever on an update that waits for that reader.
const SYNCHRONOUS: [libc::c_int; 5] = [libc::SIGTRAP, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// Our disposition: entry, flags and mask.
fn our_action() -> libc::sigaction {
    // SAFETY: plain-old-data; the set functions get a valid set.
    unsafe {
        let mut new = MaybeUninit::<libc::sigaction>::zeroed().assume_init();
        new.sa_sigaction = entry_address();
        new.sa_flags = FLAGS;
        libc::sigfillset(&mut new.sa_mask);
        for sync in SYNCHRONOUS {
            libc::sigdelset(&mut new.sa_mask, sync);
        }
        new
    }
}

/// Whether `cur` (a disposition running one of the copies' entries) has
/// everything our handler relies on: `SA_SIGINFO` (it reads the context),
/// `SA_NODEFER` (a nested trap in a chained handler), no `SA_RESETHAND`, no
/// `SA_ONSTACK` (the handler and those it chains to need the thread's
/// stack), and every signal blocked that [`our_action`] blocks.
fn flags_and_mask_ok(cur: &libc::sigaction) -> bool {
    let f = cur.sa_flags;
    if f & libc::SA_SIGINFO == 0 || f & libc::SA_NODEFER == 0 || f & (libc::SA_RESETHAND | libc::SA_ONSTACK) != 0 {
        return false;
    }
    let want = our_action().sa_mask;
    // SAFETY: valid sets.
    (1..=libc::SIGRTMAX()).all(|s| unsafe {
        s == libc::SIGKILL
            || s == libc::SIGSTOP
            || libc::sigismember(&want, s) != 1
            || libc::sigismember(&cur.sa_mask, s) == 1
    })
}

/// Runs `f` while holding the dynamic loader's lock, which every copy of
/// this crate in the process shares (glibc holds its loader write lock
/// around `dl_iterate_phdr` callbacks): the copies' installs, relinks and
/// removals never interleave. Not for signal handlers.
fn serialized<F: FnOnce() -> R, R>(f: F) -> R {
    struct Ctx<F, R> {
        f: Option<F>,
        r: Option<R>,
    }
    extern "C" fn callback<F: FnOnce() -> R, R>(
        _: *mut libc::dl_phdr_info,
        _: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `Ctx` below, alive for the whole call.
        let ctx = unsafe { &mut *(data as *mut Ctx<F, R>) };
        if let Some(f) = ctx.f.take() {
            ctx.r = Some(f());
        }
        1
    }
    let mut ctx: Ctx<F, R> = Ctx { f: Some(f), r: None };
    // SAFETY: a valid callback and a pointer to `ctx`, used only during the call.
    unsafe { libc::dl_iterate_phdr(Some(callback::<F, R>), &mut ctx as *mut Ctx<F, R> as *mut libc::c_void) };
    match (ctx.r, ctx.f) {
        (Some(r), _) => r,
        // No object to iterate (cannot happen: the executable is one).
        (None, Some(f)) => f(),
        (None, None) => unreachable!("the callback ran f"),
    }
}

/// Installs the handler, remembering the disposition it replaces; if it is
/// installed but displaced, installs it again on top (see
/// "Re-installing"). Called with the patch lock held, by `init`.
pub fn install() -> Result<(), Error> {
    match STATE.load(SeqCst) {
        INSTALLED => {
            if check().is_ok() {
                return Ok(());
            }
            serialized(reinstall)?;
            return check();
        }
        UNLOADED => return Err(Error::HandlerDisplaced { current: current_action()?.sa_sigaction }),
        _ => {}
    }
    serialized(|| {
        let old = current_action()?;
        debug_assert_eq!(entry_address() % 64, HEADER_SIZE);
        let chain = Chain { action: old, fallback: old, has_fallback: false };
        // SAFETY: slot 0 is current and not installed yet: no handler of
        // ours runs, and no other copy calls `chains_to`/`relink` on us
        // before our handler is installed (they find us through the
        // kernel's disposition).
        unsafe { (*PREVIOUS.0[0].get()).write(chain) };
        CURRENT.store(0, SeqCst);
        STATE.store(INSTALLED, SeqCst);
        let new = our_action();
        let mut replaced = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: valid pointers.
        if unsafe { libc::sigaction(libc::SIGTRAP, &new, replaced.as_mut_ptr()) } != 0 {
            STATE.store(NOT_INSTALLED, SeqCst);
            return Err(Error::HandlerNotInstalled { errno: errno() });
        }
        // SAFETY: filled in on success.
        let replaced = unsafe { replaced.assume_init() };
        if replaced.sa_sigaction != old.sa_sigaction {
            // Code that does not take the loader's lock (not a copy of this
            // crate) changed the disposition between our query and our
            // install: chain to what we really replaced.
            set_previous(&Chain { action: replaced, ..chain });
        }
        Ok(())
    })?;
    check()
}

/// Our handler is installed but displaced: puts it back on top. If our
/// entry is current with other flags or mask, only those are restored.
/// Otherwise the handler now current (the newcomer) becomes our previous
/// disposition, and what we replaced before becomes the fallback for traps
/// the newcomer passes back to us. Runs under [`serialized`].
fn reinstall() -> Result<(), Error> {
    let cur = current_action()?;
    let me = entry_address();
    if cur.sa_sigaction != me {
        let prev = previous();
        let mut c = *prev.chain();
        drop(prev);
        if !c.has_fallback {
            c.fallback = c.action;
            c.has_fallback = true;
        }
        c.action = cur;
        set_previous(&c);
    }
    let new = our_action();
    // SAFETY: valid pointers.
    if unsafe { libc::sigaction(libc::SIGTRAP, &new, std::ptr::null_mut()) } != 0 {
        return Err(Error::HandlerNotInstalled { errno: errno() });
    }
    Ok(())
}

/// Checks that a SIGTRAP reaches our handler as we installed it: it is the
/// one the kernel runs, or the one the kernel runs is another copy's whose
/// chain reaches ours; and the disposition has our flags and mask
/// ([`flags_and_mask_ok`]). Anything else is "displaced": another handler
/// installed after ours would swallow the traps of an update, and our entry
/// re-installed with another mask or flags brings back the deadlocks they
/// prevent. Async-signal-safe.
pub fn check() -> Result<(), Error> {
    let cur = current_action()?;
    let me = entry_address();
    if STATE.load(SeqCst) == INSTALLED && flags_and_mask_ok(&cur) {
        if cur.sa_sigaction == me {
            return Ok(());
        }
        if recognize(cur.sa_sigaction).is_some_and(|peer| (peer.chains_to)(me, MAX_DEPTH)) {
            return Ok(());
        }
    }
    Err(Error::HandlerDisplaced { current: cur.sa_sigaction })
}

/// Whether this copy's handler is installed (and not taken out).
pub fn installed() -> bool {
    STATE.load(SeqCst) == INSTALLED
}

/// Takes our handler out of the SIGTRAP chain, for good: this copy's module
/// is being unloaded (or the process exits). If ours is the current handler,
/// the disposition it replaced is restored; if another copy's handler is
/// current, it is asked to relink past ours. Then waits until no thread runs
/// our handler any more. False if a wait gave up (a thread stayed in a
/// handler for a second). Not for signal handlers.
fn take_out() -> bool {
    let me = entry_address();
    let clean = serialized(|| {
        let prev = previous();
        let replacement = prev.chain().action;
        drop(prev);
        let Ok(cur) = current_action() else { return true };
        let mut clean = true;
        if cur.sa_sigaction == me {
            // SAFETY: valid pointers; `replacement` is a disposition the
            // kernel gave us.
            unsafe { libc::sigaction(libc::SIGTRAP, &replacement, std::ptr::null_mut()) };
        } else if let Some(peer) = recognize(cur.sa_sigaction) {
            clean = (peer.relink)(me, &replacement, MAX_DEPTH) || clean;
        }
        STATE.store(UNLOADED, SeqCst);
        clean
    });
    wait_until(|| idle(&IN_FLIGHT)) && clean
}

/// What [`unload`] did, for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unloaded {
    /// Not installed, or already taken out: nothing to do.
    Nothing,
    /// Taken out of the chain; every wait ended with its condition met.
    Clean,
    /// Taken out, but a wait gave up after a second.
    GaveUp,
    /// An update poisoned this copy: the handler stays (see "Unloading").
    KeptPoisoned,
    /// The unloading thread is inside an update of this copy.
    Busy,
}

/// Runs when this copy's module is unloaded (`dlclose`) or the process
/// exits: stops this copy's updates (waiting for one in progress), then
/// takes its handler out of the chain, so that nothing in the process still
/// refers to this module's memory through SIGTRAP. While this copy is
/// poisoned, its `int3`s may still be in the text: the handler stays.
pub fn unload() -> Unloaded {
    if STATE.load(SeqCst) != INSTALLED {
        return Unloaded::Nothing;
    }
    match crate::patch::shut_down() {
        crate::patch::ShutDown::Done => {
            let clean = take_out();
            // No update of this copy can run any more: its `/proc/self/mem`
            // descriptor would only leak (one per load of a plugin).
            crate::os::linux::text::close();
            if clean {
                Unloaded::Clean
            } else {
                Unloaded::GaveUp
            }
        }
        crate::patch::ShutDown::Poisoned => Unloaded::KeptPoisoned,
        crate::patch::ShutDown::Busy => Unloaded::Busy,
    }
}

extern "C" fn unload_at_exit() {
    if crate::patch::unloadable() {
        unload();
    }
}

/// Priority 100: after every destructor of the module with a priority of
/// its own (101 and up) or none (see `patch::unloadable`).
#[used]
#[unsafe(link_section = ".fini_array.00100")]
static UNLOAD: extern "C" fn() = unload_at_exit;

// ---------------------------------------------------------------- the handler

/// `si_code` of a breakpoint trap (`<asm-generic/siginfo.h>`).
const TRAP_BRKPT: libc::c_int = 1;

/// The handler proper, entered through the counting stub.
extern "C" fn on_sigtrap(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel (or a newer copy's handler chaining to us) passes
    // valid `info` and `ctx` (SA_SIGINFO).
    unsafe {
        let saved_errno = *libc::__errno_location();
        let code = (*info).si_code;
        if CHAINING.iter().any(|c| c.load(SeqCst) == ctx as usize) {
            // The handler we passed this very trap to passed it back.
            chain(sig, code, info, ctx, Via::Fallback);
        } else {
            // An int3 arrives as SI_KERNEL from Linux, as TRAP_BRKPT from
            // valgrind's emulation of it; anything else (kill, raise, single
            // steps, hardware breakpoints) is never ours.
            let int3 = code == libc::SI_KERNEL || code == TRAP_BRKPT;
            if !int3 || !handle(&mut *(ctx as *mut libc::ucontext_t)) {
                chain(sig, code, info, ctx, Via::Previous);
            }
        }
        *libc::__errno_location() = saved_errno;
    }
}

/// Emulates or rewinds a trap on an address being patched; false if it is not
/// ours.
fn handle(uc: &mut libc::ucontext_t) -> bool {
    let regs = &mut uc.uc_mcontext.gregs;
    let rip = regs[libc::REG_RIP as usize] as usize;
    // The kernel reports an int3 with rip just past it. A debugger that
    // passes the trap on to the program may first have moved rip back onto
    // the int3 (gdb does so for every SI_KERNEL trap): no instruction of ours
    // ends just before one of our addresses (sites start behind their own
    // prefixes, trampolines behind int3 padding), so rip at our address can
    // only mean that.
    let (at, trap) = match crate::arch::native::protocol::on_trap(rip.wrapping_sub(1)) {
        Trap::NotOurs => (rip, crate::arch::native::protocol::on_trap(rip)),
        trap => (rip.wrapping_sub(1), trap),
    };
    match trap {
        Trap::NotOurs => false,
        Trap::Rewind => {
            regs[libc::REG_RIP as usize] = at as i64;
            true
        }
        Trap::Emulate(insn) => {
            let next = at.wrapping_add(INSN_LEN) as i64;
            let rsp = regs[libc::REG_RSP as usize] as usize;
            match insn {
                Insn::Call(target) => {
                    let sp = rsp.wrapping_sub(8);
                    // SAFETY: the thread was about to execute a call, which
                    // would have pushed the same word at the same place; the
                    // site's inline asm is not `nostack`, so the red zone
                    // below rsp holds nothing of the thread's.
                    unsafe { (sp as *mut i64).write(next) };
                    regs[libc::REG_RSP as usize] = sp as i64;
                    regs[libc::REG_RIP as usize] = target as i64;
                }
                Insn::Jmp(target) => regs[libc::REG_RIP as usize] = target as i64,
                Insn::Nop => regs[libc::REG_RIP as usize] = next,
                Insn::Zero => {
                    regs[libc::REG_RAX as usize] = 0;
                    regs[libc::REG_RIP as usize] = next;
                }
                Insn::Ret => {
                    // SAFETY: the thread was about to execute `ret`, which
                    // reads the same word.
                    let ret = unsafe { (rsp as *const i64).read() };
                    regs[libc::REG_RSP as usize] = rsp.wrapping_add(8) as i64;
                    regs[libc::REG_RIP as usize] = ret;
                }
            }
            true
        }
    }
}

/// Which disposition a trap that is not ours goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The one we replaced (or the newcomer we re-installed over).
    Previous,
    /// The newcomer passed the trap back: the one we had replaced before
    /// it, or the kernel's default if there is none.
    Fallback,
}

/// Passes a trap that is not ours to the disposition we replaced, honouring
/// its flags, exactly as the kernel would have delivered it: `SIG_DFL`, and
/// `SIG_IGN` for a trap the kernel raised itself (a synchronous trap, which
/// the kernel never lets a process ignore), end the process with SIGTRAP;
/// `SIG_IGN` for a SIGTRAP sent by a process (`kill`, `raise`) drops it.
///
/// # Safety
///
/// Called from the signal handler with the kernel's arguments.
#[inline(never)]
unsafe fn chain(sig: libc::c_int, code: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, via: Via) {
    // Counted as a reader until the previous handler returns, so that a
    // relink does not return while a thread may still enter the handler it
    // replaced.
    let prev = previous();
    let c = prev.chain();
    let a = match via {
        Via::Previous => &c.action,
        Via::Fallback if c.has_fallback => &c.fallback,
        Via::Fallback => {
            drop(prev);
            // SAFETY: async-signal-safe calls.
            unsafe { die() };
            return;
        }
    };
    let handler = if via == Via::Previous { prev.handler() } else { a.sa_sigaction };
    if handler == libc::SIG_IGN && code <= 0 {
        return;
    }
    if handler == libc::SIG_IGN || handler == libc::SIG_DFL {
        drop(prev);
        // SAFETY: async-signal-safe calls.
        unsafe { die() };
        return;
    }
    if via == Via::Previous && a.sa_flags & libc::SA_RESETHAND != 0 {
        PREVIOUS_RESET.store(true, SeqCst);
    }
    // Remember the trap while the handler runs, to recognize it if that
    // handler passes it back to us (a full table: not remembered).
    let mark = CHAINING.iter().find(|m| m.compare_exchange(0, ctx as usize, SeqCst, SeqCst).is_ok());
    // SAFETY: `ctx` is the kernel's ucontext. The previous handler runs with
    // the mask the kernel would have given it had it been installed alone:
    // the interrupted thread's mask, plus its own `sa_mask`, plus the signal
    // unless `SA_NODEFER`; ours is restored afterwards.
    unsafe {
        let mut mask = (*(ctx as *const libc::ucontext_t)).uc_sigmask;
        for s in 1..=libc::SIGRTMAX() {
            if libc::sigismember(&a.sa_mask, s) == 1 {
                libc::sigaddset(&mut mask, s);
            }
        }
        if a.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, sig);
        }
        let mut old = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::pthread_sigmask(libc::SIG_SETMASK, &mask, &mut old);
        if a.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(handler);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    if let Some(m) = mark {
        m.store(0, SeqCst);
    }
    drop(prev);
}

/// The kernel's default action for SIGTRAP: restore it, unblock SIGTRAP
/// (SA_NODEFER leaves it unblocked anyway) and raise it, which ends the
/// process with SIGTRAP (and a core dump where enabled) before `raise`
/// returns.
///
/// # Safety
///
/// Async-signal-safe calls only; ends the process.
#[inline(never)]
unsafe fn die() {
    // SAFETY: async-signal-safe calls with valid arguments.
    unsafe {
        let mut dfl = MaybeUninit::<libc::sigaction>::zeroed().assume_init();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGTRAP, &dfl, std::ptr::null_mut());
        let mut set = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTRAP);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGTRAP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_entry_carries_a_header_we_recognize() {
        let me = entry_address();
        assert_eq!(me % 64, HEADER_SIZE, "the header shares the entry's page");
        let peer = recognize(me).expect("our own header");
        assert_eq!(peer.chains_to as usize, chains_to as *const () as usize);
        assert_eq!(peer.relink as usize, relink as *const () as usize);
        // The stub counts the thread first (`lock inc qword [rip + IN_FLIGHT]`),
        // then calls the handler.
        let at = |i: usize| read_u8(me + i);
        let rel = |i: usize| i32::from_le_bytes([at(i), at(i + 1), at(i + 2), at(i + 3)]) as isize as usize;
        assert_eq!([at(0), at(1), at(2), at(3)], [0xf0, 0x48, 0xff, 0x05]);
        assert_eq!(me.wrapping_add(8).wrapping_add(rel(4)), &IN_FLIGHT as *const AtomicUsize as usize);
        assert_eq!([at(8), at(9), at(10), at(11), at(12)], [0x48, 0x83, 0xec, 0x08, 0xe8]);
        assert_eq!(me.wrapping_add(17).wrapping_add(rel(13)), on_sigtrap as *const () as usize);
        // Not a header: the handler itself, SIG_DFL, SIG_IGN.
        assert!(recognize(on_sigtrap as *const () as usize).is_none());
        assert!(recognize(libc::SIG_DFL).is_none() && recognize(libc::SIG_IGN).is_none());
    }
}
