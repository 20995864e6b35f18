//! Rust functions as targets (DESIGN §8): what a key of a Rust `fn` type is,
//! and how its call sites reach the target without depending on the Rust
//! ABI.
//!
//! A site of such a key calls, with the C calling convention, a *shim*: an
//! `extern "C"` function the macro defines per key and monomorphizes per
//! target type (a fn item's or a closure's zero-sized type), into which the
//! target inlines (or to which it tail-jumps). The shim's first argument is
//! a pointer to the caller's [`Frame`]; then come the register-class
//! arguments, each as one or two `u64` (integers, `bool`, `char`; references
//! and raw pointers as one or two words: `&str` and slices are two), and
//! `f32`/`f64` in their own registers. Every other argument is moved into
//! the caller's frame and passed as a pointer in [`Frame::spill`]; a result
//! of another class is written to [`Frame::ret`]. A panic in the target is
//! caught in the shim, stored in [`Frame::panic`], and resumed by the caller
//! after the site's asm returned: nothing unwinds through asm.
//!
//! # Safety
//!
//! [`to_pair`] and [`from_pair`] move a reference or raw pointer (one or two
//! words, every byte initialized) through two `u64`; the macro uses them
//! only for types written as `&T`, `&mut T`, `*const T` or `*mut T`, and
//! only in pairs (what one wrote for a type, the other reads as that type).
//! [`conjure`] makes a value of a zero-sized type, which has no bytes to be
//! invalid; the macro calls it only for a target type it was given a value
//! of (and checked to be zero-sized). A [`RustKey`]'s target is stored only
//! through [`RustKey::__try_update`], whose contract is that the code is a
//! shim of the key's signature and `shown` a function pointer of its type.
#![allow(unsafe_code)]

use crate::owner;
use crate::raw::{NoTarget, RawKey, Target};
use crate::{Error, Site};
use core::any::Any;
use core::marker::PhantomData;
use core::mem::MaybeUninit;

/// A panic's payload, as `catch_unwind` returns it.
pub type Payload = Box<dyn Any + Send + 'static>;

/// What a call site of a key of a Rust `fn` type passes to the target's
/// shim (`Copy`: nothing in it is dropped), in its own stack frame: where a panic goes, the arguments that do
/// not travel in registers (`N` pointers to the caller's moved values), and
/// the result when it does not travel in registers.
#[doc(hidden)]
#[repr(C)]
pub struct Frame<R, const N: usize> {
    /// The target's panic, if it panicked (a leaked `Box<Payload>`, null
    /// if not): the caller resumes it. One word, no drop glue, so that the
    /// caller's check is one compare with zero.
    pub panic: *mut Payload,
    /// Pointers to the arguments passed in memory, each moved out of the
    /// caller (which does not drop them) and read by the shim.
    pub spill: [*mut u8; N],
    /// The result, written by the shim when the target returned (and only
    /// then), if it is passed in memory.
    pub ret: MaybeUninit<R>,
}

impl<R, const N: usize> Frame<R, N> {
    /// A frame with no panic, no spilled argument yet, no result.
    #[inline(always)]
    pub fn new() -> Self {
        Frame { panic: core::ptr::null_mut(), spill: [core::ptr::null_mut(); N], ret: MaybeUninit::uninit() }
    }

    /// Resumes the target's panic, if it panicked. Called after the site's
    /// asm returned, in the caller's own Rust code.
    #[inline(always)]
    pub fn rethrow(&mut self) {
        if !self.panic.is_null() {
            resume(self.panic)
        }
    }

    /// Records the target's panic (the shim's landing pad).
    #[cold]
    pub fn caught(&mut self, p: Payload) {
        self.panic = Box::into_raw(Box::new(p));
    }
}

impl<R, const N: usize> Default for Frame<R, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cold]
#[inline(never)]
fn resume(p: *mut Payload) -> ! {
    // SAFETY: a non-null `panic` is a `Box<Payload>` leaked by `caught`,
    // resumed once (the caller returns no further).
    std::panic::resume_unwind(*unsafe { Box::from_raw(p) })
}

/// Runs a target in a shim, catching its panic. A target that cannot
/// unwind leaves no trace of this: the shim is then a tail jump to it, or
/// the target itself, inlined.
#[inline(always)]
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Payload> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

/// Two registers: a reference or raw pointer (one word, or two for `&str`,
/// slices and trait objects), or a result returned in `rax:rdx` (`x0:x1`).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Pair(pub u64, pub u64);

/// `p` as two words: its address, then its metadata (zero for a thin
/// pointer).
///
/// # Safety
///
/// `P` is a reference or raw pointer type (`&T`, `&mut T`, `*const T`,
/// `*mut T`, `T` sized or not): one or two words, every byte initialized.
/// The caller owns `p`'s meaning from here: [`from_pair`] with the same `P`
/// gives it back.
#[inline(always)]
pub unsafe fn to_pair<P>(p: P) -> Pair {
    const { assert!(size_of::<P>() == 8 || size_of::<P>() == 16) };
    let mut words = [0u64; 2];
    // SAFETY: `P` is one or two initialized words (the contract), copied
    // into two words; `p` is forgotten, so its value moves into `words`.
    unsafe {
        core::ptr::copy_nonoverlapping(&p as *const P as *const u8, words.as_mut_ptr() as *mut u8, size_of::<P>())
    };
    core::mem::forget(p);
    Pair(words[0], words[1])
}

/// The `P` that [`to_pair`] made `pair` from.
///
/// # Safety
///
/// `pair` is what `to_pair::<P>` returned for a value of this `P` (up to
/// lifetimes, which the caller's types carry), not used since.
#[inline(always)]
pub unsafe fn from_pair<P>(pair: Pair) -> P {
    const { assert!(size_of::<P>() == 8 || size_of::<P>() == 16) };
    let words = [pair.0, pair.1];
    let mut out = MaybeUninit::<P>::uninit();
    // SAFETY: the words hold the bytes of a `P` (the contract).
    unsafe {
        core::ptr::copy_nonoverlapping(words.as_ptr() as *const u8, out.as_mut_ptr() as *mut u8, size_of::<P>());
        out.assume_init()
    }
}

/// The value of a zero-sized target type (a fn item's or a non-capturing
/// closure's), made where it is called.
///
/// # Safety
///
/// `T` is zero-sized (checked at compile time) and the caller was given a
/// value of it, which it forgot: a fn item or non-capturing closure has no
/// state, so this is that value again.
#[inline(always)]
pub unsafe fn conjure<T: Copy>() -> T {
    const { assert!(size_of::<T>() == 0) };
    // SAFETY: a zero-sized type has no bytes, so no invalid ones.
    unsafe { core::mem::zeroed() }
}

/// A static call key of a Rust function-pointer type `F` (DESIGN §8).
///
/// You do not name this type: `#[static_call]` on a `static NAME: fn(..) ->
/// R = target;` declares a static of its own type, whose methods (`call`,
/// `update`, `try_update`, `get`, `sites`) use this one. Its sites call the
/// current target's shim; [`get`](Self::get) returns a plain `F`.
#[repr(C)]
pub struct RustKey<F> {
    raw: RawKey,
    /// The naked function that emits the trampoline (see `Key`).
    _trampoline: Option<extern "C" fn()>,
    _f: PhantomData<F>,
}

impl<F: Copy> RustKey<F> {
    /// Used by the macro only.
    ///
    /// # Safety
    ///
    /// `target.code` is the shim of a target of type `F` for this key's
    /// signature (the macro's `__shim::<T>`), `target.shown` an `F` that
    /// calls the same target; `trampoline` emits the key's trampoline.
    #[doc(hidden)]
    pub const unsafe fn __new(target: Target, trampoline: Option<extern "C" fn()>) -> Self {
        RustKey { raw: crate::key::raw_key(target, NoTarget::Nop, true), _trampoline: trampoline, _f: PhantomData }
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn __raw(&'static self) -> &'static RawKey {
        &self.raw
    }

    /// The current target: a plain function pointer that calls it (for a
    /// target given as a fn item or closure, a function of this crate's
    /// making that calls it; compare targets by what they do, not by
    /// address).
    pub fn get(&self) -> Option<F> {
        owner::owner_of(&self.raw).ok()?;
        shown::<F>(self.raw.load_shown())
    }

    /// Makes `target` the key's target; returns the previous one.
    ///
    /// # Safety
    ///
    /// As [`RustKey::__new`] for `target`.
    #[doc(hidden)]
    pub unsafe fn __try_update(&self, target: Target) -> Result<Option<F>, Error> {
        let target = Target::shim(threaded(target.code), target.shown);
        owner::update_one(&self.raw, target).map(|old| shown::<F>(old.shown))
    }

    /// The call sites of this key, in address order, with the instruction
    /// each holds now.
    pub fn sites(&self) -> Vec<Site> {
        owner::sites(&self.raw)
    }
}

impl<F> core::fmt::Debug for RustKey<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Read only of a key whose prefix this copy can read (as `get`).
        let target = owner::owner_of(&self.raw).ok().map(|_| self.raw.load_shown());
        f.debug_struct("RustKey").field("target", &target).finish()
    }
}

/// The code a shim's callers may call instead of the shim: where it jumps,
/// when its first instruction is an unconditional direct jump (a target
/// that cannot unwind, not inlined into its shim); else the shim itself.
///
/// One jump only, the shim's own: the shim is this crate's expansion,
/// compiled once and never changed, while the target's own first
/// instruction may be changed by others later (a tracer's detour, a hot
/// patch), so the sites call the target's entry, as a direct call would.
pub(crate) fn threaded(code: *mut ()) -> *mut () {
    #[cfg(all(
        any(target_arch = "x86_64", target_arch = "aarch64"),
        target_os = "linux",
        not(feature = "portable"),
        not(miri)
    ))]
    {
        let here = code as usize;
        {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `here` is a function of this process (a shim, or where
            // a shim's jump leads), mapped and readable, as the patcher's
            // checks also read text; the decoder asks only for bytes of the
            // instruction it decodes, so none past the function's end.
            let next = crate::arch::native::jumps::tail_jump(here, &|i| unsafe {
                core::ptr::read_volatile((here + i) as *const u8)
            });
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above, one aligned instruction word at a time.
            let next = crate::arch::native::jumps::tail_jump(here, &|i| unsafe {
                core::ptr::read_volatile((here + 4 * i) as *const u32)
            });
            next.unwrap_or(here) as *mut ()
        }
    }
    #[cfg(not(all(
        any(target_arch = "x86_64", target_arch = "aarch64"),
        target_os = "linux",
        not(feature = "portable"),
        not(miri)
    )))]
    {
        code
    }
}

/// A stored `shown` pointer as the key's `F`.
fn shown<F: Copy>(p: *mut ()) -> Option<F> {
    const { assert!(size_of::<F>() == size_of::<*mut ()>()) };
    // SAFETY: a non-null `shown` of this key is an `F` (stored only by
    // `__new` and `__try_update`, whose contracts say so).
    (!p.is_null()).then(|| unsafe { core::mem::transmute_copy::<*mut (), F>(&p) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_thin_and_fat_pointers() {
        let s = "hello";
        // SAFETY: `&str` is a reference; read back as the same type.
        let back: &str = unsafe { from_pair(to_pair(s)) };
        assert_eq!(back, "hello");
        let v = [1u8, 2, 3];
        // SAFETY: as above, a slice reference.
        let back: &[u8] = unsafe { from_pair(to_pair(&v[..])) };
        assert_eq!(back, &[1, 2, 3]);
        let x = 7u64;
        // SAFETY: as above, a thin reference.
        let p = unsafe { to_pair(&x) };
        assert_eq!(p.1, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { *from_pair::<&u64>(p) }, 7);
        let d: &dyn core::fmt::Display = &x;
        // SAFETY: as above, a trait object reference.
        let back: &dyn core::fmt::Display = unsafe { from_pair(to_pair(d)) };
        assert_eq!(back.to_string(), "7");
    }

    #[test]
    fn frames_resume_a_caught_panic_with_its_payload() {
        let mut frame = Frame::<(), 0>::new();
        frame.caught(catch(|| -> () { std::panic::panic_any(41u32) }).unwrap_err());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| frame.rethrow())).unwrap_err();
        assert_eq!(caught.downcast_ref::<u32>(), Some(&41));
        let mut clean = Frame::<(), 0>::new();
        clean.rethrow();
    }
}
