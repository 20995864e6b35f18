//! The portable backend: each key is an atomic function pointer, each call
//! loads it and calls through it. Same API, same guarantees (an update is
//! one atomic store), nothing patched.

use crate::raw::RawKey;
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

/// Swaps each key's target (null: none) and returns the previous targets
/// in `old`.
pub fn update_many(changes: &[Change], old: &mut [*mut ()]) -> Result<(), Error> {
    for (c, o) in changes.iter().zip(old.iter_mut()) {
        // Calls read `target` (null: no target); nothing here reads the
        // slot, which keeps what the key was built with.
        *o = c.key().target.swap(c.new, Ordering::AcqRel);
    }
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
