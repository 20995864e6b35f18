//! Keys: the typed handle behind each `#[static_call]` static.
//!
//! # Safety
//!
//! A key stores its target as a type-erased pointer. [`Key::__new`] is the only
//! constructor, is `unsafe`, and is called only by the macro, which states its
//! contract: `F` is an `extern "C"` function pointer type (so it is exactly one
//! pointer, and any non-null pointer stored came from an `F`). Every
//! conversion back to `F` below relies on that.
#![allow(unsafe_code)]

use crate::owner::{self, Change};
use crate::raw::{KeyPrefix, Target, CRATE_VERSION, KEY_ABI, KEY_MAGIC};
pub use crate::raw::{NoTarget, RawKey};
use crate::{Error, Site, Zeroable};
use core::marker::PhantomData;
use core::sync::atomic::AtomicPtr;

/// The no-target stubs a key's slot holds. They are called only through a
/// trampoline's `jmp [rip + slot]`, with the arguments of the key's type in
/// registers, which they ignore.
extern "C" fn none_unit() {}

extern "C" fn none_zero() -> u64 {
    0
}

/// A static call key of function-pointer type `F` returning `R`.
///
/// You do not name this type: `#[static_call]` declares a static that
/// dereferences to it, and whose own `call` method is the call site. `R` is
/// `F`'s return type with every lifetime made `'static` (it only decides
/// whether the key may be without a target).
#[repr(C)]
pub struct Key<F, R> {
    raw: RawKey,
    /// The naked function that emits the trampoline: referenced here so
    /// that the trampoline is emitted exactly when the key is.
    _trampoline: Option<extern "C" fn()>,
    _f: PhantomData<(F, fn() -> R)>,
}

impl<F: Copy, R> Key<F, R> {
    /// Used by the macro only.
    ///
    /// # Safety
    ///
    /// `F` is an `extern "C"` (or `unsafe extern "C"`, `extern "C-unwind"`)
    /// function pointer type whose return type is `R` up to lifetimes;
    /// `target` is null or an `F` cast to a pointer; `no_target` is
    /// [`NoTarget::Nop`] only if `R` is `()`; `target` is null only if `R:
    /// Zeroable`; `trampoline` is the function that emits the key's
    /// trampoline (never called).
    #[doc(hidden)]
    pub const unsafe fn __new(target: *mut (), no_target: NoTarget, trampoline: Option<extern "C" fn()>) -> Self {
        Key { raw: raw_key(Target::same(target), no_target, false), _trampoline: trampoline, _f: PhantomData }
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn __raw(&'static self) -> &'static RawKey {
        &self.raw
    }

    fn to_ptr(f: F) -> *mut () {
        const { assert!(size_of::<F>() == size_of::<*mut ()>()) };
        // SAFETY: `F` is a function pointer (the constructor's contract):
        // same size as a pointer, any value a valid pointer.
        unsafe { core::mem::transmute_copy(&f) }
    }

    fn from_ptr(p: *mut ()) -> Option<F> {
        // SAFETY: a non-null slot value came from an `F` (the constructor's
        // contract, and `update` stores only `F`s).
        (!p.is_null()).then(|| unsafe { core::mem::transmute_copy(&p) })
    }

    /// The current target, `None` if the key has none.
    ///
    /// This is the very pointer last given to `update`; compare targets by
    /// what they do rather than by address, since a function may have a copy
    /// per codegen unit and so more than one address.
    pub fn get(&self) -> Option<F> {
        // A key this copy cannot read (another copy's, of another layout)
        // has no target this copy could name.
        owner::owner_of(&self.raw).ok()?;
        Self::from_ptr(self.raw.load_shown())
    }

    /// Makes `f` the target of every call site of this key and of its
    /// trampoline, and returns the previous target.
    ///
    /// While it runs, each call reaches the old target or `f`; when it
    /// returns, every call started afterwards, on any thread, reaches `f`.
    ///
    /// # Threads still running the old target
    ///
    /// `update` does not wait for calls in progress. A call of this key
    /// starts when its thread executes the site's instruction; it then
    /// enters a target by one transfer of control: the site's `call`, or,
    /// for a site that calls the trampoline, the trampoline's `jmp` (or its
    /// load of the key's slot, for a far target, or in [`Mode::Slots`](crate::Mode)).
    /// A call that starts after `update` returned enters `f` (or a later
    /// target). A call that started before may enter the old target, or any
    /// target the key had while it was under way, and that includes *after*
    /// `update` returned: a thread that met the `int3` of an earlier update
    /// was sent to that update's target by the SIGTRAP handler, and can be
    /// descheduled before it executes the target's first instruction, for as
    /// long as the scheduler likes, while later updates complete. (It cannot
    /// be otherwise without making every update wait for every thread.) A
    /// thread that entered the old target may still be executing it, and
    /// anything it calls, for any length of time after `update` returns; it
    /// then returns normally to its caller. Nothing else changes: function
    /// pointers to the old target held elsewhere, other keys targeting it,
    /// and the old target's own calls still reach it.
    ///
    /// So `update` returning does not make the old target's code free to
    /// unmap. Before unloading a plugin, retarget every key away from its
    /// code, then wait until no thread is inside it or on its way into it (a
    /// quiescence point the host defines: an epoch each calling thread
    /// advances between calls, which a call still on its way has not), and
    /// only then `dlclose` it, with no update of any copy of this crate in
    /// progress. The `plugin_dispatch` example follows this sequence.
    ///
    /// Where patching is impossible in this process ([`Mode::Slots`](crate::Mode):
    /// seccomp denying `membarrier`, no text writer, shadow stacks, ...),
    /// the update stores the key's slot, which every call then reads: the
    /// same guarantees, nothing patched. A key owned by another module's
    /// copy of this crate (a plugin's key, reached through an exported
    /// reference) is updated by that copy, which owns its sites.
    ///
    /// # Panics
    ///
    /// Only for what the caller must fix, with a message that says what to
    /// do: our SIGTRAP handler replaced after `init` (call
    /// [`init`](crate::init) again to put it back on top), SIGTRAP blocked in
    /// the updating thread after `init` patched, a site or trampoline changed
    /// behind our back, an earlier update that failed half-way
    /// ([`Error::Poisoned`]), an update from a signal handler that
    /// interrupted an update ([`Error::Reentrant`]). Use [`Key::try_update`]
    /// to handle those as errors.
    #[track_caller]
    pub fn update(&self, f: F) -> Option<F> {
        match self.try_update(f) {
            Ok(old) => old,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Key::update`] that returns the reason as an [`Error`] instead of
    /// panicking. On error nothing changed: not the target, not a byte of
    /// text.
    pub fn try_update(&self, f: F) -> Result<Option<F>, Error> {
        owner::update_one(&self.raw, Target::same(Self::to_ptr(f))).map(|old| Self::from_ptr(old.shown))
    }

    /// The call sites of this key, in address order, with the instruction each
    /// holds now. Empty for `out_of_line` keys and on the portable backend.
    pub fn sites(&self) -> Vec<Site> {
        owner::sites(&self.raw)
    }
}

impl<F: Copy, R: Zeroable> Key<F, R> {
    /// Removes the target: calls do nothing and return zero (sites become a
    /// five-byte `nop`, or `mov eax, 0` when the return type is not `()`).
    /// Returns the previous target.
    ///
    /// # Panics
    ///
    /// As [`Key::update`].
    #[track_caller]
    pub fn reset(&self) -> Option<F> {
        match self.try_reset() {
            Ok(old) => old,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Key::reset`] that returns the reason as an [`Error`].
    pub fn try_reset(&self) -> Result<Option<F>, Error> {
        owner::update_one(&self.raw, Target::NONE).map(|old| Self::from_ptr(old.shown))
    }
}

impl<F, R> core::fmt::Debug for Key<F, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Read only of a key whose prefix this copy can read (as `get`).
        let target = owner::owner_of(&self.raw).ok().map(|_| self.raw.load_shown());
        f.debug_struct("Key").field("target", &target).finish()
    }
}

/// A key's untyped part, built where the key is declared (a `const`): the
/// stubs and the owner are those of the copy of this crate linked into the
/// key's module.
pub(crate) const fn raw_key(target: Target, no_target: NoTarget, rust: bool) -> RawKey {
    let none = match no_target {
        NoTarget::Nop => none_unit as extern "C" fn() as *mut (),
        NoTarget::Zero => none_zero as extern "C" fn() -> u64 as *mut (),
    };
    let slot = if target.code.is_null() { none } else { target.code };
    RawKey {
        prefix: KeyPrefix {
            magic: KEY_MAGIC,
            abi: KEY_ABI,
            version: CRATE_VERSION,
            owner: &owner::OWNER as *const owner::Owner as *const (),
        },
        slot: AtomicPtr::new(slot),
        target: AtomicPtr::new(target.code),
        shown: AtomicPtr::new(target.shown),
        none,
        no_target,
        rust,
        branch: false,
    }
}

/// A `#[static_call]` static: implemented by the type the macro declares,
/// so that [`batch`](crate::batch) can take any key.
pub trait StaticCall: core::ops::Deref<Target = Key<Self::Fn, Self::Ret>> {
    /// The declared function-pointer type.
    type Fn: Copy + 'static;
    /// Its return type, lifetimes made `'static`.
    type Ret: 'static;
    /// The key itself.
    fn key(&self) -> &'static Key<Self::Fn, Self::Ret>;
}

/// Updates of many keys applied together, with one set of core syncs: see
/// [`batch`](crate::batch).
pub struct Batch {
    pub(crate) changes: Vec<Change>,
}

/// A key that `f` can become the target of: every `extern "C"` key for its
/// function-pointer type, every key of a Rust `fn` type for its fn items and
/// non-capturing closures. What [`Batch::update`] takes.
///
/// # Safety
///
/// `__target` returns the key's untyped part and a target valid for it:
/// code that sites and the trampoline may call with the key's signature
/// (as the macro's expansion passes it), and what `get()` returns as the
/// key's function-pointer type. Implemented by this crate and by
/// `#[static_call]`'s expansion only.
pub unsafe trait Retarget<T> {
    #[doc(hidden)]
    fn __target(&self, f: T) -> (&'static RawKey, Target);
}

// SAFETY: an `extern "C"` key's target is an `F`, called as itself.
unsafe impl<K: StaticCall> Retarget<K::Fn> for K {
    fn __target(&self, f: K::Fn) -> (&'static RawKey, Target) {
        (self.key().__raw(), Target::same(Key::<K::Fn, K::Ret>::to_ptr(f)))
    }
}

impl Batch {
    /// Adds "make `f` the target of `key`" to the batch; a later change of the
    /// same key in the batch replaces this one.
    pub fn update<K: Retarget<T>, T>(&mut self, key: &K, f: T) -> &mut Self {
        let (key, new) = key.__target(f);
        // A Rust target's shim that only tail-jumps: its sites call where it
        // jumps, as after `update`. (`rust` is read only of a key whose
        // prefix says it is this copy's.)
        let new = if owner::owned_here(&key.prefix) && key.rust {
            Target::shim(crate::rust_fn::threaded(new.code), new.shown)
        } else {
            new
        };
        self.changes.push(Change { key, new });
        self
    }

    /// Adds "remove the target of `key`" to the batch.
    pub fn reset<K: StaticCall>(&mut self, key: &K) -> &mut Self
    where
        K::Ret: Zeroable,
    {
        self.changes.push(Change { key: key.key().__raw(), new: Target::NONE });
        self
    }
}
