//! The types an inline call site can pass and return, and the types that have
//! a value when a key has no target.
//!
//! # Safety
//!
//! The implementations below state facts about the System V x86-64 calling
//! convention: each type listed travels as one INTEGER-class eightbyte whose
//! value is what `into_register` returns, and every bit pattern a callee of
//! that type may return in `rax` is turned back into a valid value by
//! `from_register`.
#![allow(unsafe_code)]

use core::ptr::NonNull;

/// A value passed and returned in one general-purpose register by the C
/// calling convention, so that an inline call site can bind it to `rdi`,
/// `rsi`, `rdx`, `rcx`, `r8`, `r9` or `rax`.
///
/// Implemented for integers up to 64 bits, `bool`, `char`, raw pointers,
/// references to sized types, `NonNull`, and `Option` of a reference or of a
/// `NonNull`. Implement it for your own one-register types (a
/// `#[repr(transparent)]` newtype of one of those, a `#[repr(C)]` struct of
/// at most 8 bytes of integers).
///
/// # Safety
///
/// The C ABI must pass `Self` in a single general-purpose register whose low
/// bits are `into_register(self)` as the callee reads them, and
/// `from_register` must return a valid `Self` for every value a callee
/// returning `Self` may leave in `rax` (the upper bits beyond `Self`'s size
/// are unspecified).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be passed or returned in one integer register at an inline static call site",
    label = "not a one-register value",
    note = "a value larger than a register (a struct, `u128`): pass a reference to it or a raw pointer; \
            a reference to a slice or `str` (a pointer and a length, two registers): pass `*const T` and \
            `usize` as two arguments; a one-register type of your own: implement \
            `static_call::IntegerRegister` for it; or declare the key `#[static_call(out_of_line)]`, which \
            allows any `extern \"C\"` signature"
)]
pub unsafe trait IntegerRegister: Sized {
    /// The register's value for `self`.
    fn into_register(self) -> u64;
    /// The value a callee returned in `rax`.
    ///
    /// # Safety
    ///
    /// `bits` is what a callee whose return type is `Self` left in `rax`.
    unsafe fn from_register(bits: u64) -> Self;
}

macro_rules! integers {
    ($($t:ty => $wide:ty),* $(,)?) => {$(
        // SAFETY: an integer travels in one register; extending it to 64
        // bits (sign- or zero-, by its signedness) satisfies every reading
        // of the ABI; truncation recovers it.
        unsafe impl IntegerRegister for $t {
            #[inline(always)]
            fn into_register(self) -> u64 { self as $wide as u64 }
            #[inline(always)]
            unsafe fn from_register(bits: u64) -> Self { bits as $t }
        }
    )*};
}
integers!(u8 => u64, u16 => u64, u32 => u64, u64 => u64, usize => u64,
          i8 => i64, i16 => i64, i32 => i64, i64 => i64, isize => i64);

// SAFETY: `bool` travels as 0 or 1 in the low byte.
unsafe impl IntegerRegister for bool {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self as u64
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        bits as u8 != 0
    }
}

// SAFETY: `char` travels as its 32-bit scalar value; a callee returning
// `char` returns a valid one.
unsafe impl IntegerRegister for char {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self as u64
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        // SAFETY: the callee's return type is `char` (this function's
        // contract).
        unsafe { char::from_u32_unchecked(bits as u32) }
    }
}

// SAFETY: thin pointers travel as their address.
unsafe impl<T> IntegerRegister for *const T {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self as usize as u64
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        bits as usize as *const T
    }
}

// SAFETY: as for `*const T`.
unsafe impl<T> IntegerRegister for *mut T {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self as usize as u64
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        bits as usize as *mut T
    }
}

// SAFETY: references to sized types are thin pointers; a callee returning
// `&'a T` returns a valid one.
unsafe impl<T> IntegerRegister for &T {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self as *const T as usize as u64
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        // SAFETY: the callee's return type is `&T`.
        unsafe { &*(bits as usize as *const T) }
    }
}

// SAFETY: as for `&'a T`.
unsafe impl<T> IntegerRegister for &mut T {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self as *mut T as usize as u64
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        // SAFETY: the callee's return type is `&mut T`.
        unsafe { &mut *(bits as usize as *mut T) }
    }
}

// SAFETY: `Option<&T>` is a nullable pointer.
unsafe impl<T> IntegerRegister for Option<&T> {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self.map_or(0, |r| r as *const T as usize as u64)
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        // SAFETY: the callee's return type is `Option<&T>`.
        unsafe { (bits as usize as *const T).as_ref() }
    }
}

// SAFETY: `Option<&mut T>` is a nullable pointer.
unsafe impl<T> IntegerRegister for Option<&mut T> {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self.map_or(0, |r| r as *mut T as usize as u64)
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        // SAFETY: the callee's return type is `Option<&mut T>`.
        unsafe { (bits as usize as *mut T).as_mut() }
    }
}

// SAFETY: `NonNull<T>` is a non-null thin pointer.
unsafe impl<T> IntegerRegister for NonNull<T> {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self.as_ptr() as usize as u64
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        // SAFETY: the callee's return type is `NonNull<T>`.
        unsafe { NonNull::new_unchecked(bits as usize as *mut T) }
    }
}

// SAFETY: `Option<NonNull<T>>` is a nullable pointer.
unsafe impl<T> IntegerRegister for Option<NonNull<T>> {
    #[inline(always)]
    fn into_register(self) -> u64 {
        self.map_or(0, |p| p.as_ptr() as usize as u64)
    }
    #[inline(always)]
    unsafe fn from_register(bits: u64) -> Self {
        NonNull::new(bits as usize as *mut T)
    }
}

/// `f32` or `f64`: passed and returned in an SSE register (`xmm0`..`xmm7`).
/// Sealed: the inline site binds the value itself to the register.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `f32` or `f64`",
    note = "only `f32` and `f64`, written by those names, travel in SSE registers at an inline static call site; \
            a type of your own named `f64` or `f32`: write it with its path (`units::f64`), and it travels as \
            any other type"
)]
pub trait FloatRegister: sealed::Sealed + Copy {}
impl FloatRegister for f32 {}
impl FloatRegister for f64 {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A return type with a value for calls made while a key has no target: all
/// bits zero (what the zero form, `mov eax, 0`, leaves in `rax`; on aarch64
/// the key's stub zeroes `x0`). Required by `reset` and by a declaration
/// without a target.
///
/// # Safety
///
/// The all-zero bit pattern in `rax` must be a valid `Self` as
/// [`IntegerRegister::from_register`] reads it, and `Self` must be returned
/// in `rax` (or be `()`).
#[diagnostic::on_unimplemented(
    message = "a key returning `{Self}` cannot be without a target",
    label = "a call with no target returns all-zero bits in `rax`, which is not a `{Self}`",
    note = "a call made while a key has no target (declared without one, or after `reset`) returns \
            nothing, or zero in `rax`: the return type must be `()`, an integer, `bool`, `char`, a raw \
            pointer, or an `Option` of a reference or `NonNull` (floats come back in `xmm0`, which the \
            no-target forms leave alone; references are never null); give the key a target instead, \
            and retarget it to a function that returns a default value rather than resetting it"
)]
pub unsafe trait Zeroable {}

macro_rules! zeroable {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: zero is a valid value, returned in `rax` (or nothing, for `()`).
        unsafe impl Zeroable for $t {}
    )*};
}
zeroable!((), u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, bool, char);
// SAFETY: null raw pointers and `None` are all-zero.
unsafe impl<T> Zeroable for *const T {}
// SAFETY: as above.
unsafe impl<T> Zeroable for *mut T {}
// SAFETY: as above.
unsafe impl<T> Zeroable for Option<&T> {}
// SAFETY: as above.
unsafe impl<T> Zeroable for Option<&mut T> {}
// SAFETY: as above.
unsafe impl<T> Zeroable for Option<NonNull<T>> {}
