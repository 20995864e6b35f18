//! Static branches: the key behind each `#[static_branch]` static (DESIGN 9).
//!
//! A branch key is a [`RawKey`] like any other (same prefix, so the owner
//! routing, the lock, the plan, [`batch`](crate::batch) and the fork and
//! unload machinery are shared), marked `branch`, with no trampoline: its
//! slot, `target` and `shown` hold its value, null for `false` and
//! `BRANCH_TRUE` for `true`. Each `KEY.likely()` / `KEY.unlikely()` is a
//! site, emitted by the macro (`arch::*` branch templates): assembled as a
//! jump to an out-of-line test of the slot (right before `init()` and in
//! `Mode::Slots`), patched to a `nop` or a jump to the branch's label.

use crate::owner::{self, Change};
use crate::raw::{KeyPrefix, NoTarget, RawKey, Target, BRANCH_TRUE, CRATE_VERSION, KEY_ABI, KEY_MAGIC};
use crate::{Batch, Error, Site};
use core::sync::atomic::{AtomicPtr, Ordering};

/// The key of a static branch: a `bool` that every site of the branch
/// tests for free (a `nop` or a `jmp` patched in place).
///
/// You do not name this type: `#[static_branch]` declares a static that
/// dereferences to it, and whose own `likely` and `unlikely` methods are
/// the sites.
#[repr(C)]
pub struct BranchKey {
    raw: RawKey,
}

const fn value_of(v: bool) -> *mut () {
    if v {
        BRANCH_TRUE
    } else {
        core::ptr::null_mut()
    }
}

impl BranchKey {
    /// Used by the macro only: a branch key whose value is `value`.
    #[doc(hidden)]
    pub const fn __new(value: bool) -> Self {
        let v = value_of(value);
        BranchKey {
            raw: RawKey {
                prefix: KeyPrefix {
                    magic: KEY_MAGIC,
                    abi: KEY_ABI,
                    version: CRATE_VERSION,
                    owner: &owner::OWNER as *const owner::Owner as *const (),
                },
                slot: AtomicPtr::new(v),
                target: AtomicPtr::new(v),
                shown: AtomicPtr::new(v),
                none: core::ptr::null_mut(),
                no_target: NoTarget::Nop,
                rust: false,
                branch: true,
            },
        }
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn __raw(&'static self) -> &'static RawKey {
        &self.raw
    }

    /// The value, read with a relaxed load: what a site of the portable
    /// backend tests.
    #[doc(hidden)]
    #[inline(always)]
    pub fn __relaxed(&self) -> bool {
        !self.raw.target.load(Ordering::Relaxed).is_null()
    }

    /// The current value. (`false` for a key this copy cannot read: another
    /// copy's, of another layout.)
    pub fn get(&self) -> bool {
        owner::owner_of(&self.raw).is_ok() && !self.raw.load_shown().is_null()
    }

    /// Makes `value` the value of the branch, retargeting every site, and
    /// returns the previous value.
    ///
    /// While it runs, each execution of a site takes the branch of the old
    /// value or of the new; once it returns, every execution started
    /// afterwards, on any thread, takes the branch of `value`. The rules
    /// are those of `Key::update` (the same lock, the same protocol, the
    /// same modes): see there.
    ///
    /// # Panics
    ///
    /// As `Key::update`: only for what the caller must fix. Use
    /// [`BranchKey::try_set`] to handle those as errors.
    #[track_caller]
    pub fn set(&self, value: bool) -> bool {
        match self.try_set(value) {
            Ok(old) => old,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`BranchKey::set`] that returns the reason as an [`Error`] instead of
    /// panicking. On error nothing changed: not the value, not a byte of
    /// text.
    pub fn try_set(&self, value: bool) -> Result<bool, Error> {
        owner::update_one(&self.raw, Target::same(value_of(value))).map(|old| !old.shown.is_null())
    }

    /// The sites of this branch, in address order, with the instruction each
    /// holds now ([`SiteState::Taken`](crate::SiteState::Taken),
    /// [`NotTaken`](crate::SiteState::NotTaken), or
    /// [`Trampoline`](crate::SiteState::Trampoline) for a site still on its
    /// assembled test of the value, with the reason). Empty on the portable
    /// backend.
    pub fn sites(&self) -> Vec<Site> {
        owner::sites(&self.raw)
    }
}

impl core::fmt::Debug for BranchKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BranchKey").field("value", &self.get()).finish()
    }
}

impl Batch {
    /// Adds "make `value` the value of the branch `key`" to the batch; a
    /// later change of the same key in the batch replaces this one.
    pub fn set(&mut self, key: &'static BranchKey, value: bool) -> &mut Self {
        self.changes.push(Change { key: &key.raw, new: Target::same(value_of(value)) });
        self
    }
}
