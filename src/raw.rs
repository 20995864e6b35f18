//! The untyped part of a key: its versioned prefix, the slot, the recorded
//! target. What the patcher, the trampolines, the registry and other copies
//! of this crate see of a key.
//!
//! # Safety
//!
//! `RawKey` is `Sync`: everything but the slot and the target is written
//! only at construction (a `const` in the key's static), and those two are
//! atomic. The prefix's owner pointer is set at construction to the owner
//! table of the copy that built the key, a static of that copy's module.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicPtr, Ordering};

/// What calls return while the key has no target.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NoTarget {
    /// Return type `()`: sites become a 5-byte `nop`, the trampoline `ret`.
    Nop = 0,
    /// A zeroable return type: `mov eax, 0` (x86-64), a `bl` to the key's zeroing stub (aarch64).
    Zero = 1,
}

/// The first bytes of every key, in every version of this crate: what a copy
/// checks before it follows any pointer in a key that another copy built (a
/// host reading a plugin's key through an exported reference, DESIGN 3.8).
/// Its layout never changes; `abi` names the layout of everything after it.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct KeyPrefix {
    /// [`KEY_MAGIC`].
    pub(crate) magic: [u8; 8],
    /// The layout of the rest of the key ([`KEY_ABI`]).
    pub(crate) abi: u32,
    /// The crate version that built the key (`major << 16 | minor << 8 |
    /// patch`, each saturated at 255).
    pub(crate) version: u32,
    /// The owner table (`owner::Owner`) of the copy of this crate that owns
    /// the key's trampoline and sites; read only once `magic` and `abi`
    /// were checked (`owner::owner_of`).
    pub(crate) owner: *const (),
}

/// "SCALLKEY": the magic of every key.
pub(crate) const KEY_MAGIC: [u8; 8] = *b"SCALLKEY";
/// The layout of [`RawKey`] after its prefix. Version 1 (no prefix, the slot
/// first) is never recognized; version 2 had no `shown`; version 3 had no
/// `branch` (so a copy of that version would plan a branch key's sites as
/// calls: it must never recognize one).
pub(crate) const KEY_ABI: u32 = 4;

/// This copy's crate version, packed as in [`KeyPrefix::version`].
pub(crate) const CRATE_VERSION: u32 = {
    const fn num(s: &str) -> u32 {
        let b = s.as_bytes();
        let mut i = 0;
        let mut n = 0u32;
        while i < b.len() {
            n = n * 10 + (b[i] - b'0') as u32;
            i += 1;
        }
        if n > 255 {
            255
        } else {
            n
        }
    }
    num(env!("CARGO_PKG_VERSION_MAJOR")) << 16
        | num(env!("CARGO_PKG_VERSION_MINOR")) << 8
        | num(env!("CARGO_PKG_VERSION_PATCH"))
};

/// The untyped part of a key, which the patcher and the trampoline see: the
/// prefix, then the slot that a trampoline's far form jumps through
/// (`jmp [rip + key + SLOT_OFFSET]`).
///
/// The slot of a call key is never null: a key without a target holds `none`, a stub of
/// the owning copy of this crate that does what "no target" means (returns,
/// or returns zero), so that a thread loading the slot at any instant of any
/// update jumps to a valid target of the key's type. Whether the key has a
/// target is what `target` records (null: none), never inferred from the
/// slot: the optimizer may give a user's function the stub's very address
/// (identical-code folding, MergeFunctions).
#[doc(hidden)]
#[repr(C)]
pub struct RawKey {
    pub(crate) prefix: KeyPrefix,
    pub(crate) slot: AtomicPtr<()>,
    /// The target's code, null for none: what sites and the trampoline
    /// call (for a key of a Rust `fn` type, the target's shim).
    pub(crate) target: AtomicPtr<()>,
    /// What `get()` returns, null for none: the target itself (for a key
    /// of a Rust `fn` type, a Rust function pointer that calls it). Stored
    /// with `target`, by the same lock holder.
    pub(crate) shown: AtomicPtr<()>,
    /// The stub the slot holds while the key has no target.
    pub(crate) none: *mut (),
    pub(crate) no_target: NoTarget,
    /// A key of a Rust `fn` type: its code is a shim that init may thread
    /// (`rust_fn::threaded`).
    pub(crate) rust: bool,
    /// A branch key (`#[static_branch]`, `crate::branch`): it has no
    /// trampoline, its slot, `target` and `shown` hold its value (null:
    /// false, [`BRANCH_TRUE`]: true), `none` is null, and its sites are
    /// branch sites (`registry::BranchEntry`).
    pub(crate) branch: bool,
}

/// What a branch key's slot, `target` and `shown` hold while its value is
/// `true` (null: `false`). Never called: a branch key has no trampoline.
pub(crate) const BRANCH_TRUE: *mut () = core::ptr::dangling_mut::<()>();

/// Where the slot lies in a key: the assembly templates spell this number
/// (`arch::*`), checked here.
pub const SLOT_OFFSET: usize = 24;
const _: () = assert!(core::mem::offset_of!(RawKey, slot) == SLOT_OFFSET);
const _: () = assert!(core::mem::offset_of!(RawKey, prefix) == 0);
const _: () = assert!(core::mem::size_of::<KeyPrefix>() == 24);

// SAFETY: `prefix`, `none` and `no_target` are never written after
// construction and point to code and to an immutable static; the slot, the
// target and `shown` are atomic.
unsafe impl Sync for RawKey {}
// SAFETY: as above.
unsafe impl Send for RawKey {}

/// A key's target as an update stores it: the code sites call and the
/// pointer `get()` returns (both null: none; equal but for keys of a Rust
/// `fn` type, whose code is the target's shim).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Target {
    pub(crate) code: *mut (),
    pub(crate) shown: *mut (),
}

impl Target {
    /// No target.
    pub const NONE: Target = Target { code: core::ptr::null_mut(), shown: core::ptr::null_mut() };

    /// A target whose code is what `get()` returns (an `extern "C"` key's).
    pub const fn same(p: *mut ()) -> Target {
        Target { code: p, shown: p }
    }

    /// A target whose code (a shim) differs from what `get()` returns.
    pub const fn shim(code: *mut (), shown: *mut ()) -> Target {
        Target { code, shown }
    }
}

impl RawKey {
    /// The current target's code, null for none.
    #[inline(always)]
    pub fn load(&self) -> *mut () {
        self.target.load(Ordering::Acquire)
    }

    /// The current target as stored (code and shown).
    #[cfg_attr(
        not(all(
            any(target_arch = "x86_64", target_arch = "aarch64"),
            target_os = "linux",
            not(feature = "portable"),
            not(miri)
        )),
        allow(dead_code)
    )]
    pub(crate) fn load_target(&self) -> Target {
        Target { code: self.target.load(Ordering::Acquire), shown: self.shown.load(Ordering::Acquire) }
    }

    /// What `get()` returns, null for none.
    #[inline]
    pub fn load_shown(&self) -> *mut () {
        self.shown.load(Ordering::Acquire)
    }

    /// Makes `target` (null: none) the key's target: the slot then holds
    /// `target`, or the key's no-target stub (never null). Only the
    /// patcher's lock holder stores (the portable backend swaps `target`).
    #[cfg_attr(
        not(all(
            any(target_arch = "x86_64", target_arch = "aarch64"),
            target_os = "linux",
            not(feature = "portable"),
            not(miri)
        )),
        allow(dead_code)
    )]
    #[inline]
    pub(crate) fn store(&self, t: Target) {
        self.slot.store(if t.code.is_null() { self.none } else { t.code }, Ordering::Release);
        self.target.store(t.code, Ordering::Release);
        self.shown.store(t.shown, Ordering::Release);
    }
}
