//! aarch64: how an update's plan is committed to text.
//!
//! Every instruction of the plan is one of `B`, `BL`, `NOP`, before and
//! after (see the parent module), so each is replaced in place while other
//! threads may execute it, with no breakpoint:
//!
//! 1. each changed instruction is written with one aligned 32-bit store
//!    (`Session::write_step`: the mprotect writer stores a `u32` through
//!    the writable view of the page; the `/proc/self/mem` writer makes one
//!    4-byte `pwrite` per instruction, which the kernel copies with 32-bit
//!    stores, see `os::linux::text`);
//! 2. one cache-maintenance pass over the written instructions: `dc cvau`
//!    on each data-cache line, `dsb ish`, `ic ivau` on each instruction-cache
//!    line, `dsb ish`, `isb` (line sizes from `CTR_EL0`; the cleaning or
//!    the invalidation is skipped where `CTR_EL0.IDC` or `.DIC` says the
//!    hardware keeps the caches coherent);
//! 3. one `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`: every
//!    thread of the process context-synchronizes before it next runs user
//!    code, so none keeps executing a stale instruction.
//!
//! A batch shares steps 2 and 3. What a thread executes meanwhile is the
//! old instruction or the new one, both valid (old or new target): that is
//! what the architecture promises for these instructions, and this is the
//! sequence the Linux kernel uses for `aarch64_insn_patch_text_nosync`. No
//! signal handler is involved, so the SIGTRAP rules of x86-64 do not apply.
//!
//! # Safety
//!
//! The only `unsafe` here is the writes (through `Session`, at addresses
//! the registry verified, each an aligned 4-byte instruction) and the cache
//! maintenance instructions, which take any mapped address of our text and
//! have no other effect than on caches; `CTR_EL0` is readable from EL0 on
//! Linux (the kernel emulates it where an erratum traps it).
#![allow(unsafe_code)]

use super::{encode, Insn, INSN_LEN};
use crate::os::linux::membarrier;
use crate::os::linux::text::Session;
use crate::patch::Patch;
use crate::Error;
use core::arch::asm;

/// What patching needs of the process before anything else: nothing more
/// than core serialization and a writer (no shadow-stack or signal-mask
/// constraint: no instruction is emulated).
pub fn requirements() -> Result<(), Error> {
    Ok(())
}

/// No signal handler on aarch64.
pub fn install() -> Result<(), Error> {
    Ok(())
}

/// No signal handler on aarch64: nothing can displace it.
pub fn check_handler() -> Result<(), Error> {
    Ok(())
}

/// No handler: nothing to put back.
pub fn reinstall_in_child() -> Result<(), Error> {
    Ok(())
}

/// Any thread may write text: no breakpoint is ever written.
pub fn may_write() -> Result<(), Error> {
    Ok(())
}

/// Nothing to do after a plan is written (no handler reads it).
pub fn retire() {}

/// Nothing to reset in a `fork()` child.
pub fn after_fork_child() {}

/// Traps emulated and rewound: none, no breakpoint is ever written.
pub fn trap_stats() -> (u64, u64) {
    (0, 0)
}

/// Whether a handler of this copy is installed: never on aarch64.
pub fn installed() -> bool {
    false
}

/// Writes a plan again (a `fork()` child finishing an update a thread of its
/// parent was making): every instruction holds its old or its new form, and
/// writing all of them again is the same update.
pub fn resume(session: &Session, plan: &[Patch]) -> Result<(), (Error, Result<(), Error>)> {
    write(session, plan)
}

/// No signal handler to take out when this copy's module is unloaded.
pub fn take_out() -> bool {
    true
}

/// Writes `plan` (sorted by address; every `old` verified), then the cache
/// maintenance and the sync. On failure: the error, and whether putting
/// back the old instructions (for every write that may have happened)
/// succeeded. Either way each instruction holds its old or its new form,
/// both valid, and the maintenance and sync have run.
pub fn write(session: &Session, plan: &[Patch]) -> Result<(), (Error, Result<(), Error>)> {
    // SAFETY: addresses from the registry, verified by `apply` and covered
    // by the session; every write is one whole aligned instruction of the
    // set that may be modified concurrently; the caller holds the patch lock.
    let written = unsafe { session.write_step(plan.iter().map(|p| (p.at, &p.new[..]))) };
    let r = written.map_err(|f| {
        // SAFETY: as above, the old instructions at the same addresses.
        let undo = unsafe { session.write_step(plan[..f.reached].iter().map(|p| (p.at, &p.old[..]))) };
        (f.error, undo.map_err(|u| u.error))
    });
    sync_icache(plan.iter().map(|p| p.at));
    membarrier::sync_core();
    r
}

/// `CTR_EL0`: the cache geometry and coherence bits.
fn ctr_el0() -> u64 {
    let ctr: u64;
    // SAFETY: reads a system register that Linux makes readable at EL0.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    ctr
}

/// Cleans the data cache and invalidates the instruction cache to the point
/// of unification for the instructions at `addrs` (sorted), as
/// `__clear_cache` does, with one pass of each and two barriers for all.
fn sync_icache(addrs: impl Iterator<Item = usize> + Clone) {
    let ctr = ctr_el0();
    let dline = 4usize << ((ctr >> 16) & 0xf);
    let iline = 4usize << (ctr & 0xf);
    let each_line = |line: usize, op: &dyn Fn(usize)| {
        let mut last = usize::MAX;
        for a in addrs.clone() {
            let l = a & !(line - 1);
            if l != last {
                op(l);
                last = l;
            }
        }
    };
    if ctr & (1 << 28) == 0 {
        // SAFETY: `l` is a line of our mapped text; cache maintenance only.
        each_line(dline, &|l| unsafe { asm!("dc cvau, {}", in(reg) l, options(nostack, preserves_flags)) });
    }
    // SAFETY: a barrier.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    if ctr & (1 << 29) == 0 {
        // SAFETY: as above.
        each_line(iline, &|l| unsafe { asm!("ic ivau, {}", in(reg) l, options(nostack, preserves_flags)) });
    }
    // SAFETY: barriers; `isb` resynchronizes this thread (membarrier does
    // the others).
    unsafe { asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
}

// ---------------------------------------------------------------- the /proc/self/mem writer

/// `HWCAP2_MOPS` (Linux 6.5+): the CPU has the memory-copy instructions.
const HWCAP2_MOPS: u64 = 1 << 43;

/// Whether the kernel's copy for a 4-byte `pwrite` to `/proc/self/mem` at a
/// 4-aligned address is known to be aligned 32-bit stores. It is for arm64
/// `memcpy` from Linux 4.16 to 6.12 (one `str w`; from 5.14 two identical
/// ones), and later where the CPU lacks FEAT_MOPS. From 6.13 on a CPU with
/// FEAT_MOPS the kernel copies with `CPYP/CPYM/CPYE`, whose access sizes the
/// architecture leaves implementation defined: a changing instruction could
/// be torn. The hardware capability is checked, not the kernel version (a
/// distribution may backport the MOPS `memcpy`): with MOPS, this writer is
/// never used.
pub fn proc_mem_stores_whole_words() -> bool {
    // SAFETY: getauxval reads the auxiliary vector; no preconditions.
    let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) } as u64;
    hwcap2 & HWCAP2_MOPS == 0
}

/// The probe's own function: its first instruction is `b +12` (returns 1)
/// or `b +4` (returns 2). Only [`writes_are_executed`] calls it or writes
/// it, under the patch lock.
#[unsafe(naked)]
extern "C" fn flip() -> u64 {
    core::arch::naked_asm!(".inst 0x14000003", "mov x0, #2", "ret", "mov x0, #1", "ret")
}

/// Whether code written by `write` (one whole instruction at a time) is
/// what threads then execute, after the cache maintenance and the core
/// sync: the probe flips [`flip`]'s branch, calls it, and flips it back.
/// A writer whose writes reach memory but not the instruction stream
/// (`/proc/self/mem` under QEMU 7.2 user mode, whose translated code is
/// invalidated only through its own page protections) fails with `ESTALE`.
/// Call with core sync registered, under the patch lock.
pub fn writes_are_executed(write: &mut dyn FnMut(usize, [u8; INSN_LEN]) -> Result<(), i32>) -> Result<(), i32> {
    let f = flip as extern "C" fn() -> u64;
    let at = f as usize;
    let call = || core::hint::black_box(f)();
    let to = |off: usize| encode(at, Insn::Jmp(at + off)).expect("within the function");
    if call() != 1 {
        return Err(libc::EFAULT);
    }
    let mut set = |off: usize| -> Result<u64, i32> {
        write(at, to(off))?;
        sync_icache(core::iter::once(at));
        membarrier::sync_core();
        Ok(call())
    };
    let flipped = set(4)?;
    let back = set(12)?;
    if (flipped, back) == (2, 1) {
        Ok(())
    } else {
        Err(libc::ESTALE)
    }
}
