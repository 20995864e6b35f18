//! x86-64: how an update's plan is committed to text, the `int3` protocol.
//!
//! The plan (sorted by address, every old instruction verified) is
//! published for the SIGTRAP handler, then
//!
//! 1. `int3` is written on each first byte, and all cores sync;
//! 2. bytes 1..5 of each instruction (where they change), sync;
//! 3. each first byte, sync;
//! 4. the plan is retracted ([`retire`]), waiting until no handler still
//!    reads it.
//!
//! "Sync" is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`. A
//! thread that executes an `int3` while it is in place traps; the handler
//! (`os::linux::signal`) asks [`on_trap`], which emulates the new
//! instruction for it (or, if the update finished before the handler
//! looked, rewinds it to execute the instruction again). Every instruction
//! written is a single five-byte instruction, so a thread is never inside
//! one.
//!
//! # Safety
//!
//! The descriptor the handler reads is the patch plan, which lives in the
//! lock-protected state of `crate::patch` and is neither moved nor reused
//! until every handler that might read it has finished (`READERS` drops to
//! zero, or below in a fork child, after `SEQ` turns even). `retire` sleeps
//! on `READERS` as a futex and the last reader to leave wakes it
//! (`FUTEX_WAKE` is async-signal-safe), so a real-time updater never spins
//! against a reader preempted on its CPU. Text is written only through
//! `os::linux::text::Session`, at addresses from the registry, after their
//! bytes were verified, and only a byte at a time while no `int3` guards
//! the instruction.
#![allow(unsafe_code)]

use super::{decode, Insn, INT3};
use crate::os::linux::signal::{self, Trap};
use crate::os::linux::text::{Session, StepFailed};
use crate::os::linux::{futex_wait, futex_wake, membarrier, shadow_stack_enabled, sigtrap_blocked};
use crate::patch::{Patch, TRAPS_EMULATED, TRAPS_REWOUND};
use crate::registry;
use crate::Error;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// What patching needs of the process before anything else, in order: no
/// CET shadow stack (an emulated `call` would push a return address the
/// shadow stack never saw), and SIGTRAP not blocked in the initializing
/// thread (a thread meeting an `int3` with SIGTRAP blocked kills the
/// process, and that thread's mask is usually everyone's).
pub fn requirements() -> Result<(), Error> {
    if shadow_stack_enabled() {
        return Err(Error::ShadowStack);
    }
    if sigtrap_blocked() {
        return Err(Error::SigtrapBlocked);
    }
    Ok(())
}

/// Installs (or puts back on top) the SIGTRAP handler.
pub fn install() -> Result<(), Error> {
    signal::install()
}

/// Whether the handler is still the one the kernel runs, as installed.
pub fn check_handler() -> Result<(), Error> {
    signal::check()
}

/// Whether this copy's handler is installed.
pub fn installed() -> bool {
    signal::installed()
}

/// In a `fork()` child: handlers of other parent threads counted in
/// `READERS` do not exist there; the handler's own bookkeeping is reset the
/// same way.
pub fn after_fork_child() {
    READERS.store(0, SeqCst);
    signal::after_fork_child();
}

fn sync() {
    membarrier::sync_core();
}

/// Whether this thread may write text now: never an `int3` while it blocks
/// SIGTRAP, since its mask is usually every thread's, and a thread meeting
/// the `int3` with SIGTRAP blocked kills the process.
pub fn may_write() -> Result<(), Error> {
    if sigtrap_blocked() {
        return Err(Error::SigtrapBlocked);
    }
    Ok(())
}

/// Publishes `plan` (sorted by address) for the handler, then steps 1 to 3.
/// On failure: the error, and whether the repair (the rollback) restored
/// every instruction; the plan stays published either way (the caller
/// retires it once the breakpoints are gone, or never).
pub fn write(session: &Session, plan: &[Patch]) -> Result<(), (Error, Result<(), Error>)> {
    publish(plan);
    write_protocol(session, plan)
}

/// Writes a plan again from step 1 (a `fork()` child finishing an update
/// that a thread of its parent was making): publishes it unless it still is
/// (the child inherited it published), then steps 1 to 3. Valid from any
/// mixture of old, guarded and new instructions.
pub fn resume(session: &Session, plan: &[Patch]) -> Result<(), (Error, Result<(), Error>)> {
    if SEQ.load(SeqCst).is_multiple_of(2) {
        publish(plan);
    }
    write_protocol(session, plan)
}

/// Odd while a plan is published; bumped on publish and on retire.
static SEQ: AtomicUsize = AtomicUsize::new(0);
static PLAN_PTR: AtomicUsize = AtomicUsize::new(0);
static PLAN_LEN: AtomicUsize = AtomicUsize::new(0);
/// Handlers currently reading the published plan (a futex word: the last
/// reader to leave wakes a waiting `retire`). Read as signed: a fork child
/// resets it to zero, after which a reader the forking thread was takes it
/// below.
static READERS: AtomicU32 = AtomicU32::new(0);
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

fn publish(plan: &[Patch]) {
    PLAN_PTR.store(plan.as_ptr() as usize, SeqCst);
    PLAN_LEN.store(plan.len(), SeqCst);
    SEQ.fetch_add(1, SeqCst);
}

/// Unpublishes the plan (after it was written, or undone) and waits until no handler still reads it. Sleeps
/// on the READERS futex (never spins: a real-time updater spinning would
/// starve a reader preempted on its CPU); the last reader to leave wakes it.
pub fn retire() {
    SEQ.fetch_add(1, SeqCst);
    RETRACTING.store(true, SeqCst);
    loop {
        let r = READERS.load(SeqCst);
        if r as i32 <= 0 {
            break;
        }
        RETRACT_WAITS.fetch_add(1, Relaxed);
        futex_wait(&READERS, r);
    }
    RETRACTING.store(false, SeqCst);
}

/// How many times `retire` waited for readers (tests).
pub fn retract_waits() -> u64 {
    RETRACT_WAITS.load(Relaxed)
}

fn run_hook(hook: &AtomicUsize) {
    let h = hook.load(SeqCst);
    if h != 0 {
        // SAFETY: only the `set_*_hook` functions store here, an `extern "C" fn()`.
        let f: extern "C" fn() = unsafe { std::mem::transmute(h) };
        f();
    }
}

/// The instruction the published plan writes at `at`, if a plan is published
/// (`seq` odd) and has it. Async-signal-safe.
fn published_insn(at: usize) -> (usize, Option<Insn>) {
    READERS.fetch_add(1, SeqCst);
    let seq = SEQ.load(SeqCst);
    let mut found = None;
    if seq % 2 == 1 {
        let (ptr, len) = (PLAN_PTR.load(SeqCst), PLAN_LEN.load(SeqCst));
        // SAFETY: while `seq` is odd and we are counted in READERS, the plan
        // is live and unchanged (`retire` waits for us).
        let plan = unsafe { std::slice::from_raw_parts(ptr as *const Patch, len) };
        if let Ok(i) = plan.binary_search_by_key(&at, |p| p.at) {
            found = plan.get(i).and_then(|p| decode(p.at, &p.new));
        }
    }
    run_hook(&READER_HOOK);
    // The last reader out wakes a waiting `retire` (FUTEX_WAKE is
    // async-signal-safe). SeqCst on both sides: either `retire` sees our
    // decrement, or we see it waiting.
    if READERS.fetch_sub(1, SeqCst) == 1 && RETRACTING.load(SeqCst) {
        futex_wake(&READERS);
    }
    (seq, found)
}

/// What the SIGTRAP handler should do about a trap whose `int3` was at `at`.
/// Async-signal-safe.
pub fn on_trap(at: usize) -> Trap {
    let Some(reg) = registry::published() else { return Trap::NotOurs };
    if !reg.is_ours(at) {
        return Trap::NotOurs;
    }
    run_hook(&TRAP_HOOK);
    loop {
        let (seq, insn) = published_insn(at);
        if let Some(insn) = insn {
            TRAPS_EMULATED.fetch_add(1, Relaxed);
            return Trap::Emulate(insn);
        }
        // Not being patched now. If our int3 is gone, the update finished
        // between the trap and this handler: run the instruction again.
        // SAFETY: `at` is an instruction of ours (registry), mapped readable.
        let byte = unsafe { std::ptr::read_volatile(at as *const u8) };
        std::sync::atomic::fence(SeqCst);
        if byte != INT3 {
            TRAPS_REWOUND.fetch_add(1, Relaxed);
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

pub fn set_trap_hook(hook: Option<extern "C" fn()>) {
    TRAP_HOOK.store(hook.map_or(0, |f| f as usize), SeqCst);
}

pub fn set_reader_hook(hook: Option<extern "C" fn()>) {
    READER_HOOK.store(hook.map_or(0, |f| f as usize), SeqCst);
}

/// One step of the protocol: `writes` sorted by address.
fn step<'a>(session: &Session, writes: impl IntoIterator<Item = (usize, &'a [u8])>) -> Result<(), StepFailed> {
    // SAFETY: addresses from the registry, verified by `apply` and covered
    // by the session; a multi-byte write happens only while an int3 guards
    // its instruction and after all cores synced on that int3 (the callers
    // below); `apply`'s caller holds the patch lock.
    unsafe { session.write_step(writes) }
}

/// Steps 1 to 3 of the protocol, each one `step` (one write per page), and
/// the syncs. On failure: the error, and whether the repair (the rollback)
/// restored every instruction.
fn write_protocol(session: &Session, plan: &[Patch]) -> Result<(), (Error, Result<(), Error>)> {
    // Step 1: guard every instruction with int3.
    if let Err(f) = step(session, plan.iter().map(|p| (p.at, &[INT3][..]))) {
        // Bytes 1..5 are untouched: removing the int3s that may have been
        // written restores the old instructions.
        let undo = step(session, plan[..f.reached].iter().map(|p| (p.at, &p.old[..1])));
        return Err((f.error, undo.map_err(|u| u.error)));
    }
    sync();

    // Step 2: the bodies, where they change.
    let changed = |p: &&Patch| p.new[1..] != p.old[1..];
    let body_changed = plan.iter().any(|p| changed(&p));
    if let Err(f) = step(session, plan.iter().filter(changed).map(|p| (p.at + 1, &p.new[1..]))) {
        // Every instruction is still guarded: put the old bodies back,
        // then the old first bytes.
        let undo = step(session, plan.iter().filter(changed).map(|p| (p.at + 1, &p.old[1..]))).and_then(|()| {
            sync();
            step(session, plan.iter().map(|p| (p.at, &p.old[..1])))
        });
        return Err((f.error, undo.map_err(|u| u.error)));
    }
    if body_changed {
        sync();
    }

    // Step 3: the first bytes. A failure here leaves some instructions new
    // and the rest guarded with new bodies: finishing them is the way out.
    let first_bytes = || plan.iter().map(|p| (p.at, &p.new[..1]));
    if step(session, first_bytes()).is_err() {
        if let Err(f) = step(session, first_bytes()) {
            return Err((f.error, Err(f.error)));
        }
    }
    sync();
    Ok(())
}
