//! The portable backend: each key is an atomic function pointer, each call
//! loads it and calls through it. Same API, same guarantees (an update is
//! one atomic store), nothing patched.

use crate::key::RawKey;
use crate::{Error, Site, Stats};
use std::sync::atomic::{AtomicU64, Ordering};

static UPDATES: AtomicU64 = AtomicU64::new(0);

pub fn stats() -> Stats {
    Stats { updates: UPDATES.load(Ordering::Relaxed), ..Stats::default() }
}

pub fn init() -> Result<(), Error> {
    Ok(())
}

pub fn update_one(key: &RawKey, new: *mut ()) -> Result<*mut (), Error> {
    let old = key.slot.swap(new, Ordering::AcqRel);
    UPDATES.fetch_add(1, Ordering::Relaxed);
    Ok(old)
}

pub fn update_many(changes: &mut Vec<(&'static RawKey, *mut ())>) -> Result<(), Error> {
    for &(key, new) in changes.iter() {
        update_one(key, new)?;
    }
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
