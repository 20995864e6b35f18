//! Core serialization across all threads of the process.
//!
//! # Safety
//!
//! Only the `membarrier(2)` system call, with integer arguments; no memory is
//! passed to the kernel.
#![allow(unsafe_code)]

use crate::Error;
use std::sync::atomic::{AtomicU64, Ordering};

const CMD_QUERY: libc::c_int = 0;
const CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 5;
const CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_int = 1 << 6;

/// The fork generation that registered (0: none): a `fork()` child starts
/// unregistered (its address space is new), so registration is per
/// generation (`super::fork`).
static REGISTERED: AtomicU64 = AtomicU64::new(0);

fn membarrier(cmd: libc::c_int) -> Result<libc::c_long, i32> {
    // SAFETY: membarrier takes three integers and touches no user memory.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_uint, 0 as libc::c_int) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

/// Registers the process for `MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE`.
/// Registration is slow once a process has many threads, which is why
/// [`crate::init`] exists. Idempotent; async-signal-safe.
pub fn register() -> Result<(), Error> {
    let generation = super::fork::generation();
    if REGISTERED.load(Ordering::Acquire) == generation {
        return Ok(());
    }
    let supported = membarrier(CMD_QUERY).map_err(|errno| Error::NoCoreSync { errno })?;
    if supported & (CMD_PRIVATE_EXPEDITED_SYNC_CORE as libc::c_long) == 0 {
        return Err(Error::NoCoreSync { errno: libc::EINVAL });
    }
    membarrier(CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE).map_err(|errno| Error::NoCoreSync { errno })?;
    REGISTERED.store(generation, Ordering::Release);
    Ok(())
}

/// Whether this process registered (so that [`sync_core`] works): not in
/// a process that runs on the slots because `membarrier` is refused.
/// (x86-64's unload asks.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub fn registered() -> bool {
    REGISTERED.load(Ordering::Acquire) == super::fork::generation()
}

/// Makes every thread of the process execute a core-serializing instruction
/// before it next runs user code, so that none keeps executing stale
/// instructions. Async-signal-safe.
pub fn sync_core() {
    // After a successful registration this command cannot fail (the kernel
    // returns an error only for unregistered processes or bad flags), and the
    // patch protocol never runs before registration succeeded. A `fork()`
    // child that finishes an update its parent's thread was in the middle of
    // registers here (a no-op otherwise: the fork generation matches).
    let _ = register();
    let r = membarrier(CMD_PRIVATE_EXPEDITED_SYNC_CORE);
    debug_assert!(r.is_ok(), "membarrier sync_core failed after registration: {r:?}");
}

/// One `membarrier` sync_core call, for benchmarks that measure the floor an
/// update cannot go below. Registers first.
pub fn sync_core_once() -> Result<(), Error> {
    register()?;
    membarrier(CMD_PRIVATE_EXPEDITED_SYNC_CORE).map_err(|errno| Error::NoCoreSync { errno })?;
    Ok(())
}
