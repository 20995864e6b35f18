//! x86-64: the SIGTRAP handler's side of the `int3` protocol. The plan an
//! update is writing is published here ([`publish`], [`retire`]), and
//! [`handle`], which `os::linux::signal` runs for every trap the kernel
//! raised for an `int3`, looks the trapping address up in it and executes
//! the new instruction in the thread's stead (or, if the update finished
//! before the handler looked, rewinds the thread to execute it again).
//! Anything else is not ours: `handle` returns false and the signal module
//! passes the trap on.
//!
//! # Safety
//!
//! The descriptor [`handle`] reads is the patch plan, which lives in the
//! lock-protected state of `crate::patch` and is neither moved nor reused
//! until every handler that might read it has finished: a reader counts
//! itself in `READERS` before it reads `SEQ`, and [`retire`] makes `SEQ`
//! even, then waits until `READERS` is idle. `READERS` is a
//! [`StackCounters`] (no cache line that every trapping CPU writes); `retire`
//! sleeps on the futex `WAKE`, which a reader leaving while `RETRACTING` is
//! set bumps and wakes (`FUTEX_WAKE` is async-signal-safe), so a real-time
//! updater never spins against a reader preempted on its CPU. `retire`
//! reads `WAKE` before it sums the counters, and a reader bumps it after
//! uncounting itself, all `SeqCst`: a wake-up is never lost.
//!
//! [`handle`] runs in the signal handler: it allocates nothing, takes no
//! lock and cannot panic (the register array is indexed only by constant
//! in-range indices, the plan with `get`). It writes the interrupted
//! context, and the word just below the interrupted stack pointer for an
//! emulated `call` (the red zone, which the call site's inline asm leaves
//! free because it is not `nostack`); it reads the word at the stack
//! pointer for an emulated `ret`, a key's slot for an emulated indirect
//! call (an address the plan's bytes name, which this copy encoded from a
//! key: see [`Insn::CallIndirect`]), and our own text (a byte of an address
//! the registry holds).
//!
//! Where a trap lands: the `int3` is on a patch's first byte (a
//! trampoline's head; for a site the byte before its address, its last
//! `cs` prefix: see the module `arch::x86_64`, "Patches"). The emulated
//! instruction is the new one of the plan, and it returns (a call) or
//! continues (`nop`, `mov eax, 0`) to the address where the patch's
//! instruction ends, which is the site's end in every form. A rewind puts
//! the thread back on the patch's first byte, where every form decodes as
//! the whole instruction.
#![allow(unsafe_code)]

use super::{decode_patch, Insn, INT3};
use crate::os::linux::{futex_wait, futex_wake, StackCounters};
use crate::patch::Patch;
use crate::registry;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// What the published plan says about a trap at an address.
enum Trap {
    /// The address is being patched: execute this instruction, which ends
    /// at the given address, in the thread's stead.
    Emulate(Insn, usize),
    /// The address is ours and no longer holds the `int3`: the trap arrived
    /// after the update finished; run the instruction again.
    Rewind,
    /// Not ours: pass it on.
    NotOurs,
}

/// Odd while a plan is published; bumped on publish and on retire.
static SEQ: AtomicUsize = AtomicUsize::new(0);
static PLAN_PTR: AtomicUsize = AtomicUsize::new(0);
static PLAN_LEN: AtomicUsize = AtomicUsize::new(0);
/// Handlers currently reading the published plan.
static READERS: StackCounters = StackCounters::new();
/// Bumped (and woken) by a reader that leaves while `RETRACTING` is set.
static WAKE: AtomicU32 = AtomicU32::new(0);
/// `retire` is waiting (or about to wait) for READERS.
static RETRACTING: AtomicBool = AtomicBool::new(false);
/// How many times `retire` found readers and waited (for tests: it must
/// sleep until woken, never spin).
static RETRACT_WAITS: AtomicU64 = AtomicU64::new(0);
/// Test hook: called first thing by the SIGTRAP handler for our traps.
static TRAP_HOOK: AtomicUsize = AtomicUsize::new(0);
/// Test hook: called by the SIGTRAP handler while it is counted as a reader
/// of the published plan.
static READER_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Publishes `plan` (sorted by address) for the handler.
/// Whether a plan is published now.
pub fn published() -> bool {
    SEQ.load(SeqCst) % 2 == 1
}

pub fn publish(plan: &[Patch]) {
    PLAN_PTR.store(plan.as_ptr() as usize, SeqCst);
    PLAN_LEN.store(plan.len(), SeqCst);
    SEQ.fetch_add(1, SeqCst);
}

/// Unpublishes the plan (after it was written, or undone) and waits until
/// no handler still reads it. Sleeps on `WAKE` (never spins: a real-time
/// updater spinning would starve a reader preempted on its CPU); each
/// reader that leaves meanwhile wakes it.
pub fn retire() {
    SEQ.fetch_add(1, SeqCst);
    RETRACTING.store(true, SeqCst);
    loop {
        let w = WAKE.load(SeqCst);
        if READERS.idle() {
            break;
        }
        RETRACT_WAITS.fetch_add(1, Relaxed);
        futex_wait(&WAKE, w);
    }
    RETRACTING.store(false, SeqCst);
}

/// How many times `retire` waited for readers (tests).
pub fn retract_waits() -> u64 {
    RETRACT_WAITS.load(Relaxed)
}

/// In a `fork()` child: the parent's other threads reading the plan do not
/// exist there.
pub fn after_fork_child() {
    READERS.reset();
}

fn run_hook(hook: &AtomicUsize) {
    let h = hook.load(SeqCst);
    if h != 0 {
        // SAFETY: only the `set_*_hook` functions store here, an `extern "C" fn()`.
        let f: extern "C" fn() = unsafe { std::mem::transmute(h) };
        f();
    }
}

pub fn set_trap_hook(hook: Option<extern "C" fn()>) {
    TRAP_HOOK.store(hook.map_or(0, |f| f as usize), SeqCst);
}

pub fn set_reader_hook(hook: Option<extern "C" fn()>) {
    READER_HOOK.store(hook.map_or(0, |f| f as usize), SeqCst);
}

/// The instruction the published plan writes at `at` and where it ends, if
/// a plan is published (`seq` odd) and has it. Async-signal-safe.
#[inline(never)]
fn published_insn(at: usize) -> (usize, Option<(Insn, usize)>) {
    // Any address in this frame selects our counter, the same on leaving.
    let here = 0u8;
    let sp = &here as *const u8 as usize;
    READERS.enter(sp);
    let seq = SEQ.load(SeqCst);
    let mut found = None;
    if seq % 2 == 1 {
        let (ptr, len) = (PLAN_PTR.load(SeqCst), PLAN_LEN.load(SeqCst));
        // SAFETY: while `seq` is odd and we are counted in READERS, the plan
        // is live and unchanged (`retire` waits for us).
        let plan = unsafe { std::slice::from_raw_parts(ptr as *const Patch, len) };
        if let Ok(i) = plan.binary_search_by_key(&at, |p| p.at) {
            found = plan.get(i).and_then(|p| decode_patch(p.at, &p.new));
        }
    }
    run_hook(&READER_HOOK);
    READERS.leave(sp);
    // A waiting `retire` is woken (FUTEX_WAKE is async-signal-safe). SeqCst
    // on both sides: either `retire` sees our leaving, or we see it waiting
    // and change the word it sleeps on after it read it.
    if RETRACTING.load(SeqCst) {
        WAKE.fetch_add(1, SeqCst);
        futex_wake(&WAKE);
    }
    (seq, found)
}

/// Traps emulated and rewound (`stats()`): counted, like the readers, on
/// the cache line of the trapping thread's stack, never on one that every
/// CPU writes (a count that is only ever entered is a plain sum).
static TRAPS_EMULATED: StackCounters = StackCounters::new();
static TRAPS_REWOUND: StackCounters = StackCounters::new();
/// Of those, the traps emulated as an indirect call through a key's slot,
/// and those rewound onto an indirect call (tests).
static INDIRECT_EMULATED: StackCounters = StackCounters::new();
static INDIRECT_REWOUND: StackCounters = StackCounters::new();

/// The traps emulated and rewound so far.
pub fn trap_stats() -> (u64, u64) {
    (TRAPS_EMULATED.sum() as u64, TRAPS_REWOUND.sum() as u64)
}

/// The traps emulated as an indirect call, and those rewound onto one.
pub fn indirect_trap_stats() -> (u64, u64) {
    (INDIRECT_EMULATED.sum() as u64, INDIRECT_REWOUND.sum() as u64)
}

/// What the SIGTRAP handler should do about a trap whose `int3` was at `at`.
/// Async-signal-safe.
fn on_trap(at: usize) -> Trap {
    let Some(reg) = registry::published() else { return Trap::NotOurs };
    if !reg.is_ours(at) {
        return Trap::NotOurs;
    }
    run_hook(&TRAP_HOOK);
    loop {
        let (seq, insn) = published_insn(at);
        if let Some((insn, end)) = insn {
            let sp = &insn as *const Insn as usize;
            TRAPS_EMULATED.enter(sp);
            if let Insn::CallIndirect(_) = insn {
                INDIRECT_EMULATED.enter(sp);
            }
            return Trap::Emulate(insn, end);
        }
        // Not being patched now. If our int3 is gone, the update finished
        // between the trap and this handler: run the instruction again.
        // SAFETY: `at` is an instruction of ours (registry), mapped readable.
        let byte = unsafe { std::ptr::read_volatile(at as *const u8) };
        std::sync::atomic::fence(SeqCst);
        if byte != INT3 {
            TRAPS_REWOUND.enter(&byte as *const u8 as usize);
            // `ff` begins no trampoline head of ours: an indirect call.
            if byte == super::CALL_RIP[0] {
                INDIRECT_REWOUND.enter(&byte as *const u8 as usize);
            }
            return Trap::Rewind;
        }
        // Our int3 is still there. If no update started or ended since we
        // looked at the plan, this int3 is not ours (a debugger's
        // breakpoint on our address): pass it on. Otherwise look again.
        if SEQ.load(SeqCst) == seq {
            return Trap::NotOurs;
        }
    }
}

/// Whether `rip` is where a site's patch starts and the byte before it (the
/// site's own `cs` prefix, which we never write) holds an `int3`: someone
/// else's breakpoint, whose trap the kernel reports with rip at our patch.
/// Async-signal-safe.
fn foreign_int3_before(rip: usize) -> bool {
    let Some(reg) = registry::published() else { return false };
    // SAFETY: the byte before a site's patch is its own `cs` prefix, in our
    // text (registry), mapped readable.
    reg.is_site_patch(rip) && unsafe { std::ptr::read_volatile(rip.wrapping_sub(1) as *const u8) } == INT3
}

/// For the SIGTRAP handler, on a trap the kernel raised for an `int3`:
/// emulates or rewinds a trap on an address being patched; false if it is
/// not ours. With `sent`, for a SIGTRAP a process sent, which may carry the
/// trap of an `int3` of ours merged into it (`os::linux::signal::Ours`):
/// only then is rip just past one of our addresses (no thread stops inside
/// a patch otherwise), and the debugger's case below does not arise.
/// Async-signal-safe (see the module's Safety section).
pub fn handle(uc: &mut libc::ucontext_t, sent: bool) -> bool {
    let regs = &mut uc.uc_mcontext.gregs;
    let rip = regs[libc::REG_RIP as usize] as usize;
    // The kernel reports an int3 with rip just past it. A debugger that
    // passes the trap on to the program may first have moved rip back onto
    // the int3 (gdb does so for every SI_KERNEL trap): no instruction of ours
    // ends just before one of our addresses (a call site's patch starts
    // behind at least two of its own prefixes, a static-branch site's behind
    // one, a trampoline behind int3 padding),
    // so rip at our address can only mean that, unless the byte before it
    // is an int3 that is not ours: someone else's breakpoint on a site's
    // first `cs` prefix (where a static-branch site's `cs cs jmp` begins,
    // which is where a debugger puts it), which the kernel reports with
    // rip just past it, on our patch. That trap is not ours.
    let (at, trap) = match on_trap(rip.wrapping_sub(1)) {
        // A sent signal may find a thread on a trampoline's head: never a
        // trap of ours.
        Trap::NotOurs if sent || foreign_int3_before(rip) => (rip, Trap::NotOurs),
        Trap::NotOurs => (rip, on_trap(rip)),
        trap => (rip.wrapping_sub(1), trap),
    };
    match trap {
        Trap::NotOurs => false,
        Trap::Rewind => {
            regs[libc::REG_RIP as usize] = at as i64;
            true
        }
        Trap::Emulate(insn, end) => {
            let next = end as i64;
            let rsp = regs[libc::REG_RSP as usize] as usize;
            let call = |regs: &mut [libc::greg_t; 23], target: usize| {
                let sp = rsp.wrapping_sub(8);
                // SAFETY: the thread was about to execute a call, which
                // would have pushed the same word at the same place; the
                // site's inline asm is not `nostack`, so the red zone
                // below rsp holds nothing of the thread's.
                unsafe { (sp as *mut i64).write(next) };
                regs[libc::REG_RSP as usize] = sp as i64;
                regs[libc::REG_RIP as usize] = target as i64;
            };
            match insn {
                Insn::Call(target) => call(regs, target),
                Insn::CallIndirect(slot) => {
                    // What `call qword ptr [rip + slot]` would call now: the
                    // slot's value at this instant, which is never null and
                    // always a target of the key's type (DESIGN 3.2).
                    // SAFETY: the plan's bytes were encoded by this copy
                    // from a key's slot (`patch::site_form`: `key +
                    // SLOT_OFFSET`), a pointer-sized, aligned atomic in a
                    // static of this module, live while its sites are.
                    let slot = unsafe { &*(slot as *const AtomicUsize) };
                    call(regs, slot.load(Acquire));
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
