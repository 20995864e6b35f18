//! The portable backend: each key is an atomic function pointer, each call
//! loads it and calls through it. Same API, same guarantees (an update is
//! one atomic store), nothing patched.

use crate::raw::{RawKey, Target};
use crate::owner::Change;
use crate::{Error, Mode, Site, Stats};
use std::sync::atomic::{AtomicU64, Ordering};

static UPDATES: AtomicU64 = AtomicU64::new(0);

pub fn stats() -> Stats {
    Stats { updates: UPDATES.load(Ordering::Relaxed), ..Stats::default() }
}

pub fn init() -> Result<(), Error> {
    Ok(())
}

pub fn mode() -> Mode {
    Mode::Portable
}

/// Serializes updates: a key's target is two words (its code, which calls
/// read, and what `get()` returns), stored together.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

std::thread_local! {
    /// This thread holds [`LOCK`] (an update from a signal handler that
    /// interrupted one).
    static HOLDING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Stores each key's target (null: none) and returns the previous targets
/// in `old`.
pub fn update_many(changes: &[Change], old: &mut [Target]) -> Result<(), Error> {
    if HOLDING.with(|h| h.replace(true)) {
        return Err(Error::Reentrant);
    }
    {
        let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        for (c, o) in changes.iter().zip(old.iter_mut()) {
            // Calls read `target` (null: no target); nothing here reads the
            // slot, which keeps what the key was built with. `shown` first:
            // a call never reads it, `get()` may see the new one early.
            let k = c.key();
            *o = Target::shim(k.target.load(Ordering::Acquire), k.shown.swap(c.new.shown, Ordering::AcqRel));
            k.target.store(c.new.code, Ordering::Release);
        }
    }
    HOLDING.with(|h| h.set(false));
    UPDATES.fetch_add(changes.len() as u64, Ordering::Relaxed);
    Ok(())
}

pub fn sites(_key: &RawKey) -> Vec<Site> {
    Vec::new()
}

pub fn disassemble(_at: usize, _bytes: &[u8]) -> String {
    String::new()
}

pub fn trampoline(_key: &RawKey) -> Option<usize> {
    None
}

pub fn sync_core_once() -> Result<(), Error> {
    Ok(())
}
