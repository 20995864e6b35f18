//! x86-64: how an update's plan is committed to text, the `int3` protocol.
//!
//! The plan (sorted by address, every old instruction verified) is
//! published for the SIGTRAP handler, then
//!
//! 1. `int3` is written on each first byte, and all cores sync;
//! 2. bytes 1..6 of each patch (where they change), sync;
//! 3. each first byte, and no sync (see `write_protocol`: a core that still
//!    executes a stale `int3` is rewound by the handler);
//! 4. the plan is retracted ([`retire`]), waiting until no handler still
//!    reads it.
//!
//! "Sync" is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`. A
//! thread that executes an `int3` while it is in place traps; the SIGTRAP
//! handler (`os::linux::signal`, installed here with [`trap::handle`] as
//! what it asks first) emulates the new instruction for it (or, if the
//! update finished before the handler looked, rewinds it to execute the
//! instruction again): see [`trap`]. Every patch written holds a single
//! instruction (`arch::x86_64`, "Patches"), so a thread is never inside
//! one: it is before the patch's first byte, where the `int3` goes, or past
//! the instruction's end.
//!
//! # Safety
//!
//! The plan published for the handler stays live until [`retire`] returns
//! (see [`trap`]). Text is written only through `os::linux::text::Session`,
//! at addresses from the registry, after their bytes were verified, and
//! only a byte at a time while no `int3` guards the instruction.
#![allow(unsafe_code)]

use super::{trap, INT3};
use crate::os::linux::signal;
use crate::os::linux::text::{Session, StepFailed};
use crate::os::linux::{membarrier, shadow_stack_enabled, sigtrap_blocked};
use crate::patch::Patch;
use crate::Error;

pub use trap::{indirect_trap_stats, retire, retract_waits, set_reader_hook, set_trap_hook};

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

/// Installs (or puts back on top) the SIGTRAP handler, which asks
/// [`trap::handle`] first about every `int3`.
pub fn install() -> Result<(), Error> {
    signal::install(trap::handle)
}

/// Whether the handler is still the one the kernel runs, as installed.
pub fn check_handler() -> Result<(), Error> {
    signal::check()
}

/// In a `fork()` child: puts our handler back on top of another copy's
/// that the parent was taking out (see `patch::check_handler`).
pub fn reinstall_in_child() -> Result<(), Error> {
    signal::reinstall_in_child()
}

/// Whether this copy's handler is installed.
pub fn installed() -> bool {
    signal::installed()
}

/// This copy's module is being unloaded (or the process exits), and no
/// update of it will run again: takes the handler out of the SIGTRAP chain
/// and waits until no thread runs it. False if that wait gave up. Syncs
/// every core first: the last update did not (see `write_protocol`), and a
/// core may not execute a stale `int3` of ours once no handler catches it.
pub fn take_out() -> bool {
    // Only where patching ran (a copy on the slots wrote no `int3`, and its
    // `membarrier` may be refused).
    if membarrier::registered() {
        sync();
    }
    signal::take_out()
}

/// In a `fork()` child: handlers of other parent threads counted as
/// readers of the plan do not exist there; the handler's own bookkeeping is
/// reset the same way.
pub fn after_fork_child() {
    trap::after_fork_child();
    signal::after_fork_child();
}

/// Traps emulated and rewound so far (`stats()`).
pub fn trap_stats() -> (u64, u64) {
    trap::trap_stats()
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
    trap::publish(plan);
    write_protocol(session, plan)
}

/// Writes a plan again from step 1 (a `fork()` child finishing an update
/// that a thread of its parent was making): publishes it unless it still is
/// (the child inherited it published), then steps 1 to 3. Valid from any
/// mixture of old, guarded and new instructions.
pub fn resume(session: &Session, plan: &[Patch]) -> Result<(), (Error, Result<(), Error>)> {
    if !trap::published() {
        trap::publish(plan);
    }
    write_protocol(session, plan)
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
    // No sync after step 3 (two per update, not three). Cross-modifying
    // code (Intel SDM vol. 3, 8.1.3; AMD APM vol. 2, 7.6.1): a processor
    // that has not serialized since a store to code may still execute what
    // it fetched before. Here that can only be the `int3`: the old first
    // byte was replaced by it and every core serialized (step 1), and the
    // body was written and every core serialized (step 2) before the first
    // byte changed. So a thread either executes the new instruction whole,
    // or traps on a stale `int3`; the handler then finds the byte no longer
    // 0xCC (its data read is coherent) and rewinds the thread to the
    // instruction (`trap::Trap::Rewind`), and the return from the signal
    // (`iret`, serializing) makes it fetch the new one. Guarantee 1 holds:
    // a call started after `update` returns reaches the new instruction,
    // directly or through one rewind. Before a copy's handler leaves the
    // chain (unload) every core is synced once, so no stale `int3` of ours
    // outlives it.
    Ok(())
}
