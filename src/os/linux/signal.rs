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
//! entry:      jmp on_sigtrap    the address given to sigaction
//! ```
//!
//! The entry is 64-byte aligned plus 32, so our header never crosses a page
//! boundary, and the header of a foreign address is read only when it lies
//! in the page of that address (which is mapped: the kernel runs the handler
//! there). `chains_to(h)` says whether the copy's previous disposition is `h`
//! or a recognized handler that chains to `h`; `relink(dying, r)` replaces a
//! previous disposition equal to `dying` by `*r`, down the chain. An update
//! accepts a newer handler on top of ours when its chain reaches ours
//! ([`check`]), and a copy being unloaded takes its handler out of the chain
//! ([`unload`], from `.fini_array`): it restores its previous disposition if
//! it is still current, else asks the current one to relink past it.
//! Incompatible future layouts use another magic; compatible ones keep these
//! fields and may grow the header.
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
//! chains. It allocates nothing, takes no lock and cannot panic (indexing
//! only of the register array by constant in-range indices, wrapping
//! arithmetic, no `unwrap`). It runs with every asynchronous signal blocked.
//! `errno` is preserved. `chains_to` and `relink`'s reading half obey the
//! same rules.
//!
//! The previous disposition lives in one of two slots; `CURRENT` says which.
//! A reader (the handler when it chains, `chains_to`, `relink`) counts
//! itself in `READERS[i]`, confirms `CURRENT == i`, copies slot `i` out, and
//! holds the count while it calls the previous handler. The only writer
//! after installation is `relink` (serialized by `WRITER`, and in practice by
//! the dynamic loader's lock, since it runs from a destructor): it waits for
//! the readers of the spare slot to leave, writes it, flips `CURRENT`, and
//! waits for the readers of the old slot to leave, so that when it returns
//! no thread will still call the handler it replaced. Those waits, and the
//! wait for this copy's own handlers at unload, are bounded (a handler that
//! `siglongjmp`s out never uncounts itself).
//!
//! Reading another handler's header: the address is that of the handler the
//! kernel would run now, or one a live copy chains to (mapped as long as
//! every copy unloaded so far took itself out of the chain, which its
//! destructor does unless a foreign handler sits above it), and the bytes
//! read lie in the same page, so they are mapped; executable pages are
//! readable on x86-64 unless made execute-only with protection keys, which
//! no SIGTRAP handler lives in. Only addresses at 32 modulo 64 are read at
//! all.
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
    "jmp {handler}",
    ".size {handler}_sc_entry, . - {handler}_sc_entry",
    ".popsection",
    handler = sym on_sigtrap,
    chains_to = sym chains_to,
    relink = sym relink,
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

struct Slots([UnsafeCell<MaybeUninit<libc::sigaction>>; 2]);
// SAFETY: slot `i` is written only while no reader is counted in
// `READERS[i]` and `CURRENT != i` (see the module's Safety section).
unsafe impl Sync for Slots {}

static PREVIOUS: Slots = Slots([UnsafeCell::new(MaybeUninit::uninit()), UnsafeCell::new(MaybeUninit::uninit())]);
/// Which slot holds the previous disposition.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// Readers of each slot.
static READERS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// Serializes `relink`'s writes.
static WRITER: AtomicBool = AtomicBool::new(false);
/// The previous handler had `SA_RESETHAND` and has run once: it is now
/// `SIG_DFL`.
static PREVIOUS_RESET: AtomicBool = AtomicBool::new(false);
/// Threads inside this copy's handler (or in a handler it chained to).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

const NOT_INSTALLED: u8 = 0;
const INSTALLED: u8 = 1;
const UNLOADED: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(NOT_INSTALLED);

/// A counted copy of the previous disposition; uncounts on drop.
struct Previous {
    slot: usize,
    action: libc::sigaction,
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
        let (Some(readers), Some(slot)) = (READERS.get(i), PREVIOUS.0.get(i)) else { continue };
        readers.fetch_add(1, SeqCst);
        if CURRENT.load(SeqCst) & 1 == i {
            // SAFETY: slot `i` is current and we are counted in its readers:
            // no writer touches it until we leave. It was initialized before
            // it became current.
            let mut action = unsafe { (*slot.get()).assume_init_read() };
            if PREVIOUS_RESET.load(SeqCst) {
                action.sa_sigaction = libc::SIG_DFL;
            }
            return Previous { slot: i, action };
        }
        readers.fetch_sub(1, SeqCst);
    }
}

/// Spins until `cond` holds, or gives up after about a second (a handler
/// that never returned: `siglongjmp`). Not for signal handlers.
fn wait_until(cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > std::time::Duration::from_secs(1) {
            return;
        }
        std::thread::yield_now();
    }
}

/// Makes `action` the previous disposition. Waits until no thread still
/// reads (or calls) the one it replaces. Not for signal handlers.
fn set_previous(action: &libc::sigaction) {
    while WRITER.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
        std::thread::yield_now();
    }
    let old = CURRENT.load(SeqCst) & 1;
    let new = old ^ 1;
    wait_until(|| READERS[new].load(SeqCst) == 0);
    // SAFETY: slot `new` is not current and has no readers (a reader that
    // counts itself now sees `CURRENT == old` and backs off without reading).
    unsafe { (*PREVIOUS.0[new].get()).write(*action) };
    PREVIOUS_RESET.store(false, SeqCst);
    CURRENT.store(new, SeqCst);
    wait_until(|| READERS[old].load(SeqCst) == 0);
    WRITER.store(false, SeqCst);
}

// ---------------------------------------------------------------- the v1 ABI functions

/// Whether a trap given to our handler reaches `handler` (our previous
/// disposition is `handler`, or a recognized handler whose chain reaches
/// it). Part of the v1 header ABI; async-signal-safe.
extern "C" fn chains_to(handler: usize, depth: u32) -> bool {
    if STATE.load(SeqCst) != INSTALLED {
        return false;
    }
    let prev = previous().action.sa_sigaction;
    if prev == handler {
        return true;
    }
    match (depth.checked_sub(1), recognize(prev)) {
        (Some(d), Some(peer)) => (peer.chains_to)(handler, d),
        _ => false,
    }
}

/// If our previous disposition is the handler at `dying`, makes `*replacement`
/// our previous disposition instead; otherwise passes the request down the
/// chain. Part of the v1 header ABI. Not for signal handlers: it waits until
/// no thread still calls `dying` through us.
extern "C" fn relink(dying: usize, replacement: *const libc::sigaction, depth: u32) -> bool {
    if STATE.load(SeqCst) != INSTALLED || replacement.is_null() {
        return false;
    }
    let prev = previous().action.sa_sigaction;
    if prev == dying {
        // SAFETY: the caller passes a valid `sigaction`, read before it returns.
        set_previous(unsafe { &*replacement });
        return true;
    }
    match (depth.checked_sub(1), recognize(prev)) {
        (Some(d), Some(peer)) => (peer.relink)(dying, replacement, d),
        _ => false,
    }
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

/// Installs the handler (once), remembering the disposition it replaces.
/// Called with the patch lock held.
pub fn install() -> Result<(), Error> {
    match STATE.load(SeqCst) {
        INSTALLED => return check(),
        UNLOADED => return Err(Error::HandlerDisplaced { current: current_action()?.sa_sigaction }),
        _ => {}
    }
    let old = current_action()?;
    let me = entry_address();
    debug_assert_eq!(me % 64, HEADER_SIZE);
    // SAFETY: slot 0 is current and not installed yet: no handler of ours
    // runs, and no other copy calls `chains_to`/`relink` on us before our
    // handler is installed (they find us through the kernel's disposition).
    unsafe { (*PREVIOUS.0[0].get()).write(old) };
    CURRENT.store(0, SeqCst);
    STATE.store(INSTALLED, SeqCst);
    // SAFETY: plain-old-data structures for sigaction, valid pointers.
    let r = unsafe {
        let mut new = MaybeUninit::<libc::sigaction>::zeroed().assume_init();
        new.sa_sigaction = me;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESTART;
        // Block every asynchronous signal while our handler runs: a signal
        // handler that interrupted it while it is counted as a reader of the
        // patch plan, and then waited for the patch lock, would wait forever
        // on an update that waits for that reader. Traps and faults stay
        // deliverable (nested traps in a chained handler must work).
        libc::sigfillset(&mut new.sa_mask);
        for sync in [libc::SIGTRAP, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
            libc::sigdelset(&mut new.sa_mask, sync);
        }
        libc::sigaction(libc::SIGTRAP, &new, std::ptr::null_mut())
    };
    if r != 0 {
        STATE.store(NOT_INSTALLED, SeqCst);
        return Err(Error::HandlerNotInstalled { errno: errno() });
    }
    Ok(())
}

/// Checks that a SIGTRAP reaches our handler: it is the one the kernel
/// runs, or the one the kernel runs is another copy's whose chain reaches
/// ours. Any other handler installed after ours would swallow the traps of
/// an update. Async-signal-safe.
pub fn check() -> Result<(), Error> {
    let cur = current_action()?;
    let me = entry_address();
    if STATE.load(SeqCst) == INSTALLED && cur.sa_flags & libc::SA_SIGINFO != 0 {
        if cur.sa_sigaction == me {
            return Ok(());
        }
        if recognize(cur.sa_sigaction).is_some_and(|peer| (peer.chains_to)(me, MAX_DEPTH)) {
            return Ok(());
        }
    }
    Err(Error::HandlerDisplaced { current: cur.sa_sigaction })
}

/// Takes our handler out of the SIGTRAP chain, for good: this copy's module
/// is being unloaded (or the process exits). If ours is the current handler,
/// the disposition it replaced is restored; if another copy's handler is
/// current, it is asked to relink past ours. Then waits until no thread runs
/// our handler any more. Not for signal handlers.
fn take_out() {
    let me = entry_address();
    let prev = previous();
    let replacement = prev.action;
    drop(prev);
    let Ok(cur) = current_action() else { return };
    if cur.sa_sigaction == me {
        let mut displaced = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: valid pointers; `replacement` is a disposition the kernel
        // gave us.
        let r = unsafe { libc::sigaction(libc::SIGTRAP, &replacement, displaced.as_mut_ptr()) };
        // SAFETY: filled in on success.
        if r == 0 && unsafe { displaced.assume_init_ref() }.sa_sigaction != me {
            // Another copy installed itself between our query and our
            // restore: put it back, and have it relink past us.
            // SAFETY: as above.
            let d = unsafe { displaced.assume_init() };
            // SAFETY: valid pointers.
            unsafe { libc::sigaction(libc::SIGTRAP, &d, std::ptr::null_mut()) };
            if let Some(peer) = recognize(d.sa_sigaction) {
                (peer.relink)(me, &replacement, MAX_DEPTH);
            }
        }
    } else if let Some(peer) = recognize(cur.sa_sigaction) {
        (peer.relink)(me, &replacement, MAX_DEPTH);
    }
    STATE.store(UNLOADED, SeqCst);
    wait_until(|| IN_FLIGHT.load(SeqCst) == 0);
}

/// Runs when this copy's module is unloaded (`dlclose`) or the process
/// exits: stops this copy's updates (waiting for one in progress), then
/// takes its handler out of the chain, so that nothing in the process still
/// refers to this module's memory through SIGTRAP.
extern "C" fn unload() {
    if STATE.load(SeqCst) != INSTALLED {
        return;
    }
    if crate::patch::shut_down() {
        take_out();
        // No update of this copy can run any more: its `/proc/self/mem`
        // descriptor would only leak (one per load of a plugin).
        crate::os::linux::text::close();
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static UNLOAD: extern "C" fn() = unload;

// ---------------------------------------------------------------- the handler

/// `si_code` of a breakpoint trap (`<asm-generic/siginfo.h>`).
const TRAP_BRKPT: libc::c_int = 1;

extern "C" fn on_sigtrap(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    IN_FLIGHT.fetch_add(1, SeqCst);
    // SAFETY: the kernel (or a newer copy's handler chaining to us) passes
    // valid `info` and `ctx` (SA_SIGINFO).
    unsafe {
        let saved_errno = *libc::__errno_location();
        // An int3 arrives as SI_KERNEL from Linux, as TRAP_BRKPT from
        // valgrind's emulation of it; anything else (kill, raise, single
        // steps, hardware breakpoints) is never ours.
        let code = (*info).si_code;
        let int3 = code == libc::SI_KERNEL || code == TRAP_BRKPT;
        if !int3 || !handle(&mut *(ctx as *mut libc::ucontext_t)) {
            chain(sig, info, ctx);
        }
        *libc::__errno_location() = saved_errno;
    }
    IN_FLIGHT.fetch_sub(1, SeqCst);
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
    let (at, trap) = match crate::patch::on_trap(rip.wrapping_sub(1)) {
        Trap::NotOurs => (rip, crate::patch::on_trap(rip)),
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

/// Passes a trap that is not ours to the disposition we replaced, honouring
/// its flags; with no handler of its own, the default action (terminate with
/// a core dump) happens, as it would have without us.
///
/// # Safety
///
/// Called from the signal handler with the kernel's arguments.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Counted as a reader until the previous handler returns, so that a
    // relink does not return while a thread may still enter the handler it
    // replaced.
    let prev = previous();
    let action = prev.action.sa_sigaction;
    if action == libc::SIG_IGN {
        return;
    }
    if action == libc::SIG_DFL {
        // SAFETY: async-signal-safe calls with valid arguments. With our
        // handler gone and SIGTRAP unblocked (SA_NODEFER), the raise delivers
        // the default action at once.
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
        return;
    }
    if prev.action.sa_flags & libc::SA_RESETHAND != 0 {
        PREVIOUS_RESET.store(true, SeqCst);
    }
    // SAFETY: `ctx` is the kernel's ucontext. The previous handler runs with
    // the mask the kernel would have given it had it been installed alone:
    // the interrupted thread's mask, plus its own `sa_mask`, plus the signal
    // unless `SA_NODEFER`; ours is restored afterwards.
    unsafe {
        let mut mask = (*(ctx as *const libc::ucontext_t)).uc_sigmask;
        for s in 1..=libc::SIGRTMAX() {
            if libc::sigismember(&prev.action.sa_mask, s) == 1 {
                libc::sigaddset(&mut mask, s);
            }
        }
        if prev.action.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, sig);
        }
        let mut old = MaybeUninit::<libc::sigset_t>::zeroed().assume_init();
        libc::pthread_sigmask(libc::SIG_SETMASK, &mask, &mut old);
        if prev.action.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(action);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(action);
            f(sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    drop(prev);
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
        // The stub is `jmp rel32` to the handler.
        let at = |i: usize| read_u8(me + i);
        assert_eq!(at(0), 0xe9);
        let rel = i32::from_le_bytes([at(1), at(2), at(3), at(4)]);
        assert_eq!(me.wrapping_add(5).wrapping_add(rel as isize as usize), on_sigtrap as *const () as usize);
        // Not a header: the handler itself, SIG_DFL, SIG_IGN.
        assert!(recognize(on_sigtrap as *const () as usize).is_none());
        assert!(recognize(libc::SIG_DFL).is_none() && recognize(libc::SIG_IGN).is_none());
    }
}
