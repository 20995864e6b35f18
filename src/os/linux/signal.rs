//! The SIGTRAP handler, as Linux signal plumbing: installing it, passing
//! the traps that are not ours on down the chain of handlers, with their
//! flags and mask, dying as the kernel would, relinking and taking the
//! handler out when its module is unloaded. What a trap is ours, and what
//! to do about it, is the business of the function the handler was
//! installed with ([`install`]: x86-64's `arch::x86_64::trap::handle`),
//! which it asks first about every trap the kernel raised for an `int3`.
//!
//! # Passing a trap on: a tail call
//!
//! The handler never calls a foreign handler and waits for it to return.
//! Its entry stub counts the thread in `IN_FLIGHT`, saves the kernel's
//! three arguments, calls [`dispatch`], restores them, uncounts the thread,
//! and then returns (the trap was ours, or dropped, or the process died) or
//! jumps to the handler `dispatch` answered:
//!
//! ```text
//! entry: lock inc IN_FLIGHT[(rsp >> 12) & 63]; push rdi; push rsi; push rdx
//!        call dispatch(sig, info, ctx, MAX_DEPTH)
//!        pop rdx; pop rsi; pop rdi; lock dec IN_FLIGHT[(rsp >> 12) & 63]
//!        test rax, rax; jz 1f; mov r11, rax; xor eax, eax; jmp r11
//!     1: ret
//! ```
//!
//! The foreign handler thus runs as if the kernel had called it: same
//! arguments, same stack pointer, returning straight to the kernel's
//! restorer (or into the foreign handler that called ours). A handler that
//! leaves with `siglongjmp` leaves nothing of ours behind: no count held,
//! no frame of ours abandoned. Before answering, `dispatch` sets the thread's signal mask to the
//! one the kernel would have given that handler: the interrupted mask
//! (`uc_sigmask`), plus the handler's `sa_mask`, plus SIGTRAP unless
//! `SA_NODEFER`. `sigreturn` restores the interrupted mask afterwards (a
//! foreign handler that called ours goes on with that mask once the
//! handler we jumped to returns to it).
//!
//! # Copies of the crate in one process
//!
//! Every module that links this crate (the executable, each plugin cdylib)
//! has its own copy of this file's statics and its own handler. The copy
//! that initializes later installs its handler over the earlier one and
//! chains to it, so the handlers form a chain, newest first. The copies
//! recognize each other's handlers by a versioned header emitted in front
//! of each entry stub:
//!
//! ```text
//! entry - 32: "SCALLSIG"        magic, 8 bytes
//! entry - 24: u32 2             ABI version (a version-1 handler is foreign)
//! entry - 20: u32 32            header size
//! entry - 16: i32 chains_to - . fn(handler: usize, depth: u32) -> bool
//! entry - 12: i32 relink - .    fn(dying: usize, replacement: *const sigaction, depth: u32) -> bool
//! entry -  8: i32 dispatch - .  fn(sig, info, ctx, depth: u32) -> usize
//! entry -  4: 4 bytes zero      reserved
//! ```
//!
//! The entry is 64-byte aligned plus 32, so our header never crosses a page
//! boundary, and the header of a foreign address is read only when it lies
//! in the page of that address (which is mapped: the kernel runs the handler
//! there). `dispatch` points to a stub of that copy that counts the thread
//! in the copy's own `IN_FLIGHT` around its [`dispatch`], so the copy is not
//! unloaded while a thread is inside it. When a copy's previous disposition
//! is a recognized handler, the copy calls its `dispatch` (our own code all
//! the way down: it returns, and never longjmps), counted as a reader of
//! its previous disposition meanwhile, and answers what it answered: only
//! the first foreign handler down the chain is jumped to, by the stub of
//! the copy on top. `chains_to(h)` says whether the copy's previous
//! disposition (or its fallback, see "Re-installing") is `h` or a
//! recognized handler that chains to `h`; `relink(dying, r)` replaces a
//! previous disposition (or fallback) equal to `dying` by `*r`, down the
//! chain. An update accepts a newer handler on top of ours when its chain
//! reaches ours ([`check`]), and a copy being unloaded takes its handler out
//! of the chain ([`take_out`]): it restores its previous disposition if it
//! is still current, else asks the current one to relink past it.
//! Incompatible future layouts use another magic or version; compatible
//! ones keep these fields and may grow the header.
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
//! with `SIG_IGN` is dropped. A previous handler with `SA_RESETHAND` runs
//! once; later traps get `SIG_DFL`. One difference remains: a previous
//! handler with `SA_ONSTACK` runs on the thread's stack, where ours runs.
//!
//! # Our disposition
//!
//! `SA_SIGINFO | SA_RESTART` (not `SA_NODEFER`: SIGTRAP is blocked while
//! ours runs, see [`FLAGS`]), no `SA_ONSTACK`, and every
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
//! not copied, and the passing-on and dying paths are separate functions.
//! The foreign handler runs where the kernel would have run it, our frames
//! gone; what stacks up is the copies' `dispatch` calls down the chain. A
//! genuine `int3` passed through three chained copies (beta, alpha, host)
//! to a user handler took 5,864 bytes below the stack pointer in a debug
//! build on a machine with a 3,632-byte signal frame (`AT_MINSIGSTKSZ`), red
//! zone included: about 700 bytes per copy (6,304 when each copy called the
//! next handler); 4,368 bytes in a release build
//! (`tests/signal_small_altstack.rs` measures it on a painted stack).
//!
//! # Re-installing
//!
//! A handler installed after ours (a crash reporter) displaces it: updates
//! refuse with `HandlerDisplaced`. `init()` again ([`install`]) puts ours
//! back on top: the newcomer becomes our previous disposition, and the one
//! we had replaced before it becomes our fallback. A newcomer that chains
//! to the handler it replaced calls ours again with the same `ucontext_t`.
//! So, before jumping to a foreign handler, the handler writes a token
//! unique to this copy (its entry's address) into the context's `uc_link`,
//! which the kernel sets to zero in every signal frame it builds (valgrind
//! in the one it makes up) and `sigreturn` ignores: a trap that arrives with
//! our token was passed back to us by the handler we jumped to, and goes to
//! the fallback. A handler that longjmps abandons the frame; the next trap
//! comes in a fresh one. A handler that passes back a *copy* of the context
//! is not recognized (the trap goes round again, without end). A copy that
//! re-installed over a newcomer restores the newcomer when it is unloaded,
//! and the newcomer still chains to the handler it recorded, ours: a plugin
//! in that state must not be unloaded.
//!
//! # Unloading
//!
//! The stubs count a thread in `IN_FLIGHT` with the first instructions they
//! run in this module, and uncount it a few instructions before they leave
//! it (`ret`, or the entry's `jmp`). [`take_out`]
//! (after taking the handler out of the chain) waits for the count to drop
//! to zero. A foreign handler we jumped to runs outside our module, with
//! nothing of ours on the stack, and is not counted. What remains, and
//! cannot be closed from user space: a thread for which the kernel already
//! chose our handler (it read the disposition and built the signal frame)
//! but that was descheduled before the stub's `lock inc`, and a thread
//! descheduled between the stub's `lock dec` and its `ret` or `jmp`. Both
//! are windows of a few instructions (plus however long the thread stays
//! descheduled there); the first is open only for a trap that arrived
//! before the disposition changed.
//!
//! `IN_FLIGHT` is a [`StackCounters`]: the stub counts itself on the cache
//! line that its stack pointer selects, so traps on different CPUs do not
//! write one shared line (the kernel moved its own `int3` descriptor's
//! reference count to per-CPU counters for that reason).
//!
//! While this copy is poisoned (an update failed and could not be undone),
//! its `int3`s may still be in its text: unload keeps the handler installed
//! and in the chain (`crate::patch`'s unload). Such a module can then not be
//! unloaded safely: its handler, still reached by SIGTRAP, would be
//! unmapped.
//!
//! # Fork
//!
//! A `fork()` child has one thread. The counts and the `WRITER` flag held
//! by other threads of the parent are reset there ([`after_fork_child`]);
//! counts are read as signed, so that the forking thread leaving our
//! handler in the child only takes them below zero.
//!
//! # Safety
//!
//! The handler runs asynchronously on any thread, possibly nested in another
//! signal handler, possibly while the interrupted thread holds the allocator's
//! or any other lock. Everything it does is async-signal-safe: atomic loads
//! and stores, reads of immutable tables published before the handler could
//! see them, writes to the interrupted context (`ucontext_t`: the `uc_link`
//! token), what the function it was installed with does (which obeys the
//! same rules), and
//! the async-signal-safe calls `sigaction`, `pthread_sigmask` and `raise`
//! when it passes a trap on or dies. It allocates nothing, takes no lock,
//! uses no thread-local storage and cannot panic (`get` for every index,
//! wrapping arithmetic, no `unwrap`). Run by the kernel, it runs with every
//! asynchronous signal blocked (called by a foreign handler, with that
//! handler's mask). `errno` is preserved. `chains_to`, `dispatch` and
//! `relink`'s reading half obey the same rules.
//!
//! The previous disposition lives in one of two slots; `CURRENT` says which.
//! A reader (the handler when it passes a trap on, `chains_to`, `relink`)
//! counts itself in `READERS[i]`, confirms `CURRENT == i`, reads slot `i` in
//! place, and holds the count while it calls a recognized handler's
//! `dispatch`; it releases it before it answers a foreign handler, so every
//! count is released by our own code returning. The only writer after
//! installation is `set_previous` (from `relink` or a re-install,
//! serialized by `WRITER` and by the loader's lock): it waits for the
//! readers of the spare slot to leave, writes it, flips `CURRENT`, and waits
//! for the readers of the old slot to leave, so that when it returns no
//! thread will still call the `dispatch` of a copy it replaced. Those waits,
//! and the wait for this copy's own stubs at unload, are bounded (a second).
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

use super::StackCounters;
use crate::Error;
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};

/// What the handler asks first about a trap the kernel raised for an
/// `int3` (`sent` false): whether it was ours and has been dealt with (the
/// context changed to resume the thread). Asked too about a SIGTRAP that a
/// process sent (`sent` true), which may carry the trap of an `int3` of
/// ours: the kernel keeps one SIGTRAP pending per thread, so an `int3`
/// executed while a sent one is pending merges into it, and the thread
/// arrives with the sent one's `siginfo` and rip just past our `int3`.
/// Must be async-signal-safe.
pub type Ours = fn(&mut libc::ucontext_t, bool) -> bool;

/// The [`Ours`] the handler was installed with (0: none yet).
static OURS: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------- entry stubs and header

/// The header's magic, version and size.
const MAGIC: [u8; 8] = *b"SCALLSIG";
const ABI_VERSION: u32 = 2;
const HEADER_SIZE: usize = 32;
/// How many recognized handlers a chain walk, or a trap passed down the
/// copies, follows at most.
const MAX_DEPTH: u32 = 64;

core::arch::global_asm!(
    ".pushsection .text.static_call_sigtrap, \"ax\", @progbits",
    ".balign 64, 0xcc",
    ".ascii \"SCALLSIG\"",
    ".long {version}",
    ".long {header_size}",
    ".long {chains_to} - .",
    ".long {relink} - .",
    ".long {d}_sc_dispatch - .",
    ".long 0",
    ".globl {d}_sc_entry",
    ".hidden {d}_sc_entry",
    ".type {d}_sc_entry, @function",
    // The handler the kernel runs (rdi: sig, rsi: info, rdx: ctx).
    "{d}_sc_entry:",
    // Counted by the first instructions the thread executes here (see
    // "Unloading" in the module docs), on the line its stack selects.
    "mov eax, esp",
    "shr eax, 6",
    "and eax, {slot_mask}",
    "lea rcx, [rip + {in_flight}]",
    "lock inc qword ptr [rcx + rax]",
    // The kernel enters a handler as if called (rsp = 8 mod 16): three
    // pushes keep the call aligned, and keep the arguments for the jump.
    "push rdi",
    "push rsi",
    "push rdx",
    "mov ecx, {max_depth}",
    "call {d}",
    "pop rdx",
    "pop rsi",
    "pop rdi",
    // The same stack pointer, so the same line.
    "mov ecx, esp",
    "shr ecx, 6",
    "and ecx, {slot_mask}",
    "lea r8, [rip + {in_flight}]",
    "lock dec qword ptr [r8 + rcx]",
    "test rax, rax",
    "jz 2f",
    // A foreign handler: entered as the kernel enters one (rax = 0).
    "mov r11, rax",
    "xor eax, eax",
    "jmp r11",
    "2:",
    "ret",
    ".size {d}_sc_entry, . - {d}_sc_entry",
    ".type {d}_sc_dispatch, @function",
    // The header's `dispatch`, for other copies (rdi, rsi, rdx, ecx: the
    // arguments of `dispatch`): the same counting around the call.
    "{d}_sc_dispatch:",
    "mov eax, esp",
    "shr eax, 6",
    "and eax, {slot_mask}",
    "lea r8, [rip + {in_flight}]",
    "lock inc qword ptr [r8 + rax]",
    "sub rsp, 8",
    "call {d}",
    "add rsp, 8",
    "mov ecx, esp",
    "shr ecx, 6",
    "and ecx, {slot_mask}",
    "lea r8, [rip + {in_flight}]",
    "lock dec qword ptr [r8 + rcx]",
    "ret",
    ".size {d}_sc_dispatch, . - {d}_sc_dispatch",
    ".popsection",
    d = sym dispatch,
    chains_to = sym chains_to,
    relink = sym relink,
    in_flight = sym IN_FLIGHT,
    version = const ABI_VERSION,
    header_size = const HEADER_SIZE,
    max_depth = const MAX_DEPTH,
    slot_mask = const super::STACK_SLOT_MASK,
);

/// The address our handler is installed at: the entry stub behind the header.
fn entry_address() -> usize {
    let a: usize;
    // SAFETY: `lea` only computes an address.
    unsafe {
        core::arch::asm!(
            "lea {a}, [rip + {d}_sc_entry]",
            a = out(reg) a,
            d = sym dispatch,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    a
}

type ChainsTo = extern "C" fn(usize, u32) -> bool;
type Relink = extern "C" fn(usize, *const libc::sigaction, u32) -> bool;
type Dispatch = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void, u32) -> usize;

/// The functions behind a recognized handler (ours or another copy's).
#[derive(Clone, Copy)]
struct Peer {
    chains_to: ChainsTo,
    relink: Relink,
    dispatch: Dispatch,
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
    let (c, r, d) = (rel(base + 16), rel(base + 20), rel(base + 24));
    // SAFETY: a header with our magic and version holds, by the v2 ABI,
    // offsets to functions of exactly these signatures in the same module.
    Some(unsafe {
        Peer {
            chains_to: std::mem::transmute::<usize, ChainsTo>(c),
            relink: std::mem::transmute::<usize, Relink>(r),
            dispatch: std::mem::transmute::<usize, Dispatch>(d),
        }
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
/// Threads inside this copy's stubs (its handler, and other copies'
/// handlers calling its `dispatch`). Counted and uncounted by the stubs' own
/// instructions, each on the line its stack pointer selects; read as a
/// signed sum.
static IN_FLIGHT: StackCounters = StackCounters::new();

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
/// a thread descheduled for that long in our code, or one that left it
/// without returning, which none of our code does). Not for signal handlers.
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
/// reads the one it replaces (or calls the `dispatch` of a copy it names);
/// false if that wait gave up. Not for signal handlers.
fn set_previous(chain: &Chain) -> bool {
    catch_up();
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
    catch_up();
    (
        IN_FLIGHT.sum(),
        [READERS[0].load(SeqCst) as isize, READERS[1].load(SeqCst) as isize],
        WRITER.load(SeqCst),
    )
}

/// In a `fork()` child (its only thread is the one that forked): the other
/// threads of the parent that were inside our handler, reading a slot or
/// holding `WRITER` do not exist here. Reset what they held. If the forking
/// thread itself was inside our code (a fork from a signal handler that
/// interrupted ours), its own uncounting takes the counts below zero, which
/// reads as idle; a thread the child creates before that and that enters
/// our handler meanwhile is then not waited for at unload.
///
/// Once per fork generation (`super::fork`): run by the atfork child handler
/// of the main program's copy, else by this module's own entry points
/// (`catch_up`) and by the patch lock's, the first time a child enters them.
pub fn after_fork_child() {
    let gen = super::fork::generation();
    if GENERATION.swap(gen, SeqCst) == gen {
        return;
    }
    IN_FLIGHT.reset();
    READERS.iter().for_each(|r| r.store(0, SeqCst));
    WRITER.store(false, SeqCst);
}

/// The fork generation this module's bookkeeping belongs to.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// In a `fork()` child that registered no atfork handler (a plugin's copy):
/// resets the parent's threads' bookkeeping the first time any entry point
/// runs. Async-signal-safe.
fn catch_up() {
    if GENERATION.load(SeqCst) != super::fork::generation() {
        after_fork_child();
    }
}

// ---------------------------------------------------------------- the v2 ABI functions

/// Whether a trap given to our handler reaches `handler` (our previous
/// disposition, or our fallback, is `handler`, or a recognized handler whose
/// chain reaches it). Part of the v2 header ABI; async-signal-safe.
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
/// the chain. Part of the v2 header ABI. Not for signal handlers: it waits
/// until no thread still calls `dying`'s `dispatch` through us.
extern "C" fn relink(dying: usize, replacement: *const libc::sigaction, depth: u32) -> bool {
    catch_up();
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

// ---------------------------------------------------------------- install, check, take out

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
///
/// Not `SA_NODEFER`: the kernel blocks SIGTRAP while our handler runs, as it
/// would for a handler installed without us. With `SA_NODEFER` a thread
/// sent SIGTRAPs faster than the kernel builds signal frames (`kill`,
/// `pthread_kill`) nested a new frame at our entry before it ran one
/// instruction, hundreds deep, until the stack overflowed
/// (`tests/branch_sent_sigtrap.rs`: SIGSEGV in 8 of 8 release runs), where
/// a program with its own handler alone has at most one pending. Nothing
/// of ours needs SIGTRAP deliverable: the handler executes no `int3`, and
/// a handler we pass a trap on to gets its own mask, SIGTRAP deliverable
/// again if it has `SA_NODEFER` (`pass_on`).
const FLAGS: libc::c_int = libc::SA_SIGINFO | libc::SA_RESTART;

/// The signals our mask leaves out: traps and faults (SIGTRAP itself is
/// blocked by the kernel while ours runs, no `SA_NODEFER`; a handler we
/// pass a trap on to gets the mask the kernel would give it). Every other
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
/// no `SA_RESETHAND`, no `SA_ONSTACK` (the handler and those it chains to
/// need the thread's stack), and every signal blocked that [`our_action`]
/// blocks. `SA_NODEFER` either way (see [`FLAGS`]: only a flood of sent
/// SIGTRAPs tells the difference).
fn flags_and_mask_ok(cur: &libc::sigaction) -> bool {
    let f = cur.sa_flags;
    if f & libc::SA_SIGINFO == 0 || f & (libc::SA_RESETHAND | libc::SA_ONSTACK) != 0 {
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

/// Installs the handler, remembering the disposition it replaces, with
/// `ours` as what it asks first about every `int3`; if it is installed but
/// displaced, installs it again on top (see "Re-installing"). Called with
/// the patch lock held, by `init`.
pub fn install(ours: Ours) -> Result<(), Error> {
    catch_up();
    OURS.store(ours as usize, SeqCst);
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
    // In a fork child (generation past 1) the handler may lie in text the
    // parent unmapped (see `mapped`): never read its header then.
    if cur.sa_sigaction != me && super::fork::generation() != 1 && !mapped(cur.sa_sigaction) {
        return Err(Error::HandlerDisplaced { current: cur.sa_sigaction });
    }
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

/// In a `fork()` child whose current handler is another copy's that the
/// parent was taking out of the chain: puts ours back on top (as `init()`
/// again would), without the loader's lock, which a child forked during a
/// `dlclose` inherits held by a thread it does not have. Only if the
/// current handler is a copy's (it carries our header), never over a
/// foreign one. Not for signal handlers.
///
/// The copy on top is dead in this child (its text unmapped, or taken out:
/// its chain reaches no one), so ours goes on top with the previous
/// disposition it already had, as the copy's removal would have left it; a
/// third copy between that one and ours loses its place in this child.
pub fn reinstall_in_child() -> Result<(), Error> {
    catch_up();
    let cur = current_action()?;
    let h = cur.sa_sigaction;
    let dead_copy = !mapped(h) || recognize(h).is_some_and(|peer| !(peer.chains_to)(entry_address(), MAX_DEPTH));
    if STATE.load(SeqCst) != INSTALLED || h == entry_address() || !dead_copy {
        return check();
    }
    let new = our_action();
    // SAFETY: valid pointers.
    if unsafe { libc::sigaction(libc::SIGTRAP, &new, std::ptr::null_mut()) } != 0 {
        return Err(Error::HandlerNotInstalled { errno: errno() });
    }
    check()
}

/// Whether the page of `addr` is mapped (a `fork()` child can inherit a
/// disposition whose handler's module its parent unmapped at the same time:
/// the kernel copies dispositions before memory). Not for signal handlers.
fn mapped(addr: usize) -> bool {
    // SAFETY: sysconf and mincore with a page-aligned address and a buffer
    // of one byte for one page; mincore only reports.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize;
        let mut v = 0u8;
        libc::mincore((addr & !(page - 1)) as *mut libc::c_void, 1, &mut v) == 0
    }
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
/// handler for a second); true, doing nothing, if it is not installed. Not
/// for signal handlers.
pub fn take_out() -> bool {
    catch_up();
    if STATE.load(SeqCst) != INSTALLED {
        return true;
    }
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
    wait_until(|| IN_FLIGHT.idle()) && clean
}

// ---------------------------------------------------------------- the handler

/// `si_code` of a breakpoint trap (`<asm-generic/siginfo.h>`).
const TRAP_BRKPT: libc::c_int = 1;

/// The handler proper, entered through a counting stub: ours (from the
/// kernel, or from a foreign handler that chains to ours), or the header's
/// `dispatch` (from another copy whose previous disposition is ours, with
/// `depth` one less). Answers 0 if the trap was dealt with (ours, dropped,
/// or the process died), else the address of the foreign handler to jump
/// to, with the thread's mask already set for it. Async-signal-safe.
extern "C" fn dispatch(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, depth: u32) -> usize {
    // SAFETY: the kernel (or a handler chaining to ours, or another copy)
    // passes valid `info` and `ctx` (SA_SIGINFO); `errno` is the thread's.
    unsafe {
        let errno = libc::__errno_location();
        let saved_errno = *errno;
        let code = (*info).si_code;
        let uc = ctx as *mut libc::ucontext_t;
        let to = if (*uc).uc_link as usize == entry_address() {
            // The handler we passed this very trap to passed it back.
            pass_on(sig, code, info, ctx, depth, Via::Fallback)
        } else if (code == libc::SI_KERNEL || code == TRAP_BRKPT) && ours(&mut *uc, false) {
            // An int3 arrives as SI_KERNEL from Linux, as TRAP_BRKPT from
            // valgrind's emulation of it; anything else (kill, raise, single
            // steps, hardware breakpoints) is never ours.
            0
        } else {
            if code <= 0 {
                // Sent by a process (kill, tkill, sigqueue): the trap of an
                // int3 of ours may have merged into it (see `Ours`). Deal
                // with that int3 first; the sent signal still goes on.
                ours(&mut *uc, true);
            }
            pass_on(sig, code, info, ctx, depth, Via::Previous)
        };
        *errno = saved_errno;
        to
    }
}

/// Asks the function the handler was installed with.
fn ours(uc: &mut libc::ucontext_t, sent: bool) -> bool {
    let f = OURS.load(SeqCst);
    if f == 0 {
        return false;
    }
    // SAFETY: only `install` stores here, an `Ours`.
    let f: Ours = unsafe { std::mem::transmute::<usize, Ours>(f) };
    f(uc, sent)
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

/// Passes a trap that is not ours on, as the kernel would have delivered it
/// to the disposition we replaced: `SIG_DFL`, and `SIG_IGN` for a trap the
/// kernel raised itself (a synchronous trap, which the kernel never lets a
/// process ignore), end the process with SIGTRAP; `SIG_IGN` for a SIGTRAP
/// sent by a process (`kill`, `raise`) drops it (both answer 0). Another
/// copy's handler is asked through its `dispatch`, and its answer is ours;
/// a foreign handler is answered, after setting the thread's mask to the
/// one the kernel would have given it and marking the context with our
/// token (see "Re-installing").
///
/// # Safety
///
/// Called from [`dispatch`] with its arguments.
#[inline(never)]
unsafe fn pass_on(
    sig: libc::c_int,
    code: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
    depth: u32,
    via: Via,
) -> usize {
    // Counted as a reader while we read the slot, and while a copy we ask
    // runs, so that a relink does not return while a thread may still run
    // the copy it took out.
    let prev = previous();
    let c = prev.chain();
    let a = match via {
        Via::Previous => &c.action,
        Via::Fallback if c.has_fallback => &c.fallback,
        Via::Fallback => {
            drop(prev);
            // SAFETY: async-signal-safe calls.
            unsafe { die() };
            return 0;
        }
    };
    let handler = if via == Via::Previous { prev.handler() } else { a.sa_sigaction };
    if handler == libc::SIG_IGN && code <= 0 {
        return 0;
    }
    if handler == libc::SIG_IGN || handler == libc::SIG_DFL {
        drop(prev);
        // SAFETY: async-signal-safe calls.
        unsafe { die() };
        return 0;
    }
    if let Some(peer) = recognize(handler) {
        let Some(depth) = depth.checked_sub(1) else {
            // A chain of copies longer than any real one: a cycle.
            drop(prev);
            // SAFETY: async-signal-safe calls.
            unsafe { die() };
            return 0;
        };
        // Our own code all the way: it returns, and the count with it.
        let to = (peer.dispatch)(sig, info, ctx, depth);
        drop(prev);
        return to;
    }
    if via == Via::Previous && a.sa_flags & libc::SA_RESETHAND != 0 {
        PREVIOUS_RESET.store(true, SeqCst);
    }
    // SAFETY: `ctx` is the kernel's ucontext. The foreign handler runs with
    // the mask the kernel would have given it had it been installed alone:
    // the interrupted thread's mask, plus its own `sa_mask`, plus the signal
    // unless `SA_NODEFER`; `sigreturn` restores the interrupted one.
    unsafe {
        let uc = ctx as *mut libc::ucontext_t;
        let mut mask = (*uc).uc_sigmask;
        for s in 1..=libc::SIGRTMAX() {
            if libc::sigismember(&a.sa_mask, s) == 1 {
                libc::sigaddset(&mut mask, s);
            }
        }
        if a.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, sig);
        }
        drop(prev);
        (*uc).uc_link = entry_address() as *mut libc::ucontext_t;
        libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
    }
    handler
}

/// The kernel's default action for SIGTRAP: restore it, unblock SIGTRAP
/// (blocked while our handler runs) and raise it, which ends the
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
        let at = |i: usize| read_u8(me.wrapping_add(i));
        let rel = |i: usize| i32::from_le_bytes([at(i), at(i + 1), at(i + 2), at(i + 3)]) as isize as usize;
        let in_flight = &IN_FLIGHT as *const StackCounters as usize;
        // The stub counts the thread first: `mov eax, esp; shr eax, 6; and
        // eax, 0xfc0; lea rcx, [rip + IN_FLIGHT]; lock inc qword [rcx + rax]`.
        assert_eq!([at(0), at(1), at(2), at(3), at(4), at(5), at(6)], [0x89, 0xe0, 0xc1, 0xe8, 0x06, 0x25, 0xc0]);
        assert_eq!([at(10), at(11), at(12)], [0x48, 0x8d, 0x0d]);
        assert_eq!(me.wrapping_add(17).wrapping_add(rel(13)), in_flight);
        assert_eq!([at(17), at(18), at(19), at(20), at(21)], [0xf0, 0x48, 0xff, 0x04, 0x01]);
        // The header's `dispatch` is a stub that counts the same way, then
        // calls `dispatch`.
        let d = peer.dispatch as usize;
        let at = |i: usize| read_u8(d.wrapping_add(i));
        let rel = |i: usize| i32::from_le_bytes([at(i), at(i + 1), at(i + 2), at(i + 3)]) as isize as usize;
        assert_eq!([at(10), at(11), at(12)], [0x4c, 0x8d, 0x05]);
        assert_eq!(d.wrapping_add(17).wrapping_add(rel(13)), in_flight);
        assert_eq!([at(17), at(18), at(19), at(20), at(21)], [0xf0, 0x49, 0xff, 0x04, 0x00]);
        assert_eq!([at(22), at(23), at(24), at(25), at(26)], [0x48, 0x83, 0xec, 0x08, 0xe8]);
        assert_eq!(d.wrapping_add(31).wrapping_add(rel(27)), dispatch as *const () as usize);
        // Not a header: the handler itself, SIG_DFL, SIG_IGN.
        assert!(recognize(dispatch as *const () as usize).is_none());
        assert!(recognize(libc::SIG_DFL).is_none() && recognize(libc::SIG_IGN).is_none());
    }
}
