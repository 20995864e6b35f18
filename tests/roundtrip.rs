//! Every supported argument and return type, and mixed signatures, round-trip
//! through an inline call site in each of its states:
//!
//! 1. before `init`: the site calls the trampoline, which jumps to the target;
//! 2. after `init`: the site calls the target directly;
//! 3. after `update` to a second target that transforms values differently;
//! 4. after `reset`, where the return type allows it: the site is `mov eax,
//!    0` on x86-64, a `bl` to a zeroing stub on aarch64 (or a `nop`), and
//!    the call returns zero (or does nothing).
//!
//! The targets written in assembly (registers as the callee sees them,
//! garbage above narrow return values, a callee that destroys every
//! caller-saved register, the stack alignment on entry) exist for x86-64
//! (System V) and aarch64 (AAPCS64).
//!
//! The oracle is the target itself, called as a plain function pointer; the
//! site states are asserted at each phase so that the test proves which path
//! ran. Everything runs in one `#[test]`: `init` is process-wide.
// `char` is a supported one-register type (it travels as its `u32` value),
// which the FFI-safety lint does not know.
#![allow(improper_ctypes_definitions)]

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use static_call::{static_call, IntegerRegister, SiteState, StaticCall, Zeroable};
use std::cell::RefCell;
use std::ptr::NonNull;

mod common;
use common::call_target;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    BeforeInit,
    Init,
    Updated,
    Reset,
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() })
}

/// Asserts what every site of `key` holds in `phase`: `target` is the address
/// the sites must call once patched; `no_target` the state after `reset`.
#[track_caller]
fn assert_sites<K: StaticCall>(key: &K, phase: Phase, target: usize, no_target: SiteState) {
    let sites = key.key().sites();
    if !static_call::PATCHING {
        assert!(sites.is_empty(), "the portable backend has no sites");
        return;
    }
    assert!(!sites.is_empty(), "{phase:?}: the key has no call site");
    for s in &sites {
        match phase {
            Phase::BeforeInit => {
                assert_eq!(s.state(), SiteState::Trampoline, "{phase:?}: {s}");
                assert_eq!(s.reason(), Some(static_call::NotDirect::NotInitialized), "{s}");
                let t = call_target(s.address(), s.bytes()).expect("a call");
                assert_ne!(t, target, "{phase:?}: calls the trampoline, not the target: {s}");
            }
            Phase::Init | Phase::Updated => {
                assert_eq!(s.state(), SiteState::Direct, "{phase:?}: {s}");
                assert_eq!(s.reason(), None);
                assert_eq!(call_target(s.address(), s.bytes()), Some(target), "{phase:?}: {s}");
            }
            Phase::Reset => assert_eq!(s.state(), no_target, "{phase:?}: {s}"),
        }
    }
}

/// Equality that is bit equality for floats and identity for references.
trait Same {
    fn same(&self, other: &Self) -> bool;
}
macro_rules! same_eq {
    ($($t:ty),*) => {$(
        impl Same for $t {
            fn same(&self, other: &Self) -> bool { self == other }
        }
    )*};
}
same_eq!(
    u8,
    u16,
    u32,
    u64,
    usize,
    i8,
    i16,
    i32,
    i64,
    isize,
    bool,
    char,
    *const u8,
    *mut u8,
    NonNull<u8>,
    Option<NonNull<u8>>,
    Handle
);
impl Same for f32 {
    fn same(&self, other: &Self) -> bool {
        self.to_bits() == other.to_bits()
    }
}
impl Same for f64 {
    fn same(&self, other: &Self) -> bool {
        self.to_bits() == other.to_bits()
    }
}
impl Same for &'static u64 {
    fn same(&self, other: &Self) -> bool {
        std::ptr::eq(*self, *other)
    }
}
impl Same for Option<&'static u64> {
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Some(a), Some(b)) => std::ptr::eq(*a, *b),
            (None, None) => true,
            _ => false,
        }
    }
}

/// A user type that travels in one register.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Handle(u32);

// SAFETY: `Handle` is a transparent `u32`, passed and returned as one in the
// low 32 bits of a register; any `u32` is a valid `Handle`.
unsafe impl IntegerRegister for Handle {
    fn into_register(self) -> u64 {
        self.0 as u64
    }
    unsafe fn from_register(bits: u64) -> Self {
        Handle(bits as u32)
    }
}
// SAFETY: zero is a valid `Handle`, returned in `rax`.
unsafe impl Zeroable for Handle {}

static CELLS: [u64; 16] = [0; 16];

fn cell(i: usize) -> &'static u64 {
    &CELLS[i % CELLS.len()]
}

fn cell_index(r: &u64) -> usize {
    (r as *const u64 as usize - CELLS.as_ptr() as usize) / size_of::<u64>()
}

/// One key `extern "C" fn(T) -> T` per type, with two targets; `zero` is the
/// value a call returns after `reset`, for the types that have one.
macro_rules! roundtrip {
    ($name:ident: $t:ty = $strategy:expr; f1 = |$x1:ident| $e1:expr; f2 = |$x2:ident| $e2:expr $(; zero = $zero:expr)?) => {
        mod $name {
            use super::*;

            extern "C" fn f1($x1: $t) -> $t {
                $e1
            }
            extern "C" fn f2($x2: $t) -> $t {
                $e2
            }

            #[static_call]
            static KEY: extern "C" fn($t) -> $t = f1;

            #[inline(never)]
            fn site(x: $t) -> $t {
                KEY.call(x)
            }

            pub fn run(phase: Phase) {
                let (f1p, f2p): (extern "C" fn($t) -> $t, extern "C" fn($t) -> $t) = (f1, f2);
                let target = match phase {
                    Phase::BeforeInit | Phase::Init => f1p,
                    Phase::Updated => f2p,
                    Phase::Reset => {
                        $(
                            assert!(KEY.reset().is_some());
                            assert_sites(&KEY, phase, 0, SiteState::Zero);
                            runner()
                                .run(&$strategy, |x| {
                                    let got = site(x);
                                    prop_assert!(got.same(&$zero), "reset: {:?} -> {:?}", x, got);
                                    Ok(())
                                })
                                .unwrap();
                        )?
                        return;
                    }
                };
                if phase == Phase::Updated {
                    assert!(KEY.update(f2p).is_some());
                    // (Only a pointer that flowed from the same coercion
                    // compares equal: a small function may have a copy per
                    // codegen unit.)
                    assert_eq!(KEY.get().map(|f| f as usize), Some(f2p as usize));
                }
                assert_sites(&KEY, phase, KEY.get().unwrap() as usize, SiteState::Zero);
                runner()
                    .run(&$strategy, |x| {
                        let (got, want) = (site(x), target(x));
                        prop_assert!(got.same(&want), "{:?}: {:?} -> {:?}, want {:?}", phase, x, got, want);
                        Ok(())
                    })
                    .unwrap();
            }
        }
    };
}

roundtrip!(t_u8: u8 = any::<u8>(); f1 = |x| x.wrapping_mul(3).wrapping_add(1); f2 = |x| !x; zero = 0);
roundtrip!(t_u16: u16 = any::<u16>(); f1 = |x| x.wrapping_mul(3).wrapping_add(1); f2 = |x| !x; zero = 0);
roundtrip!(t_u32: u32 = any::<u32>(); f1 = |x| x.wrapping_mul(3).wrapping_add(1); f2 = |x| !x; zero = 0);
roundtrip!(t_u64: u64 = any::<u64>(); f1 = |x| x.wrapping_mul(3).wrapping_add(1); f2 = |x| !x; zero = 0);
roundtrip!(t_usize: usize = any::<usize>(); f1 = |x| x.wrapping_mul(3).wrapping_add(1); f2 = |x| !x; zero = 0);
roundtrip!(t_i8: i8 = any::<i8>(); f1 = |x| x.wrapping_mul(3).wrapping_sub(1); f2 = |x| x.wrapping_neg(); zero = 0);
roundtrip!(t_i16: i16 = any::<i16>(); f1 = |x| x.wrapping_mul(3).wrapping_sub(1); f2 = |x| x.wrapping_neg(); zero = 0);
roundtrip!(t_i32: i32 = any::<i32>(); f1 = |x| x.wrapping_mul(3).wrapping_sub(1); f2 = |x| x.wrapping_neg(); zero = 0);
roundtrip!(t_i64: i64 = any::<i64>(); f1 = |x| x.wrapping_mul(3).wrapping_sub(1); f2 = |x| x.wrapping_neg(); zero = 0);
roundtrip!(t_isize: isize = any::<isize>(); f1 = |x| x.wrapping_mul(3).wrapping_sub(1); f2 = |x| x.wrapping_neg(); zero = 0);
roundtrip!(t_bool: bool = any::<bool>(); f1 = |x| x; f2 = |x| !x; zero = false);
roundtrip!(t_char: char = any::<char>(); f1 = |x| x; f2 = |x| char::from_u32(x as u32 ^ 1).unwrap(); zero = '\0');
roundtrip!(t_const_ptr: *const u8 = any::<usize>().prop_map(std::ptr::without_provenance::<u8>);
    f1 = |x| x; f2 = |x| x.wrapping_add(1); zero = std::ptr::null());
roundtrip!(t_mut_ptr: *mut u8 = any::<usize>().prop_map(std::ptr::without_provenance_mut::<u8>);
    f1 = |x| x; f2 = |x| x.wrapping_sub(1); zero = std::ptr::null_mut());
roundtrip!(t_ref: &'static u64 = (0..16usize).prop_map(cell); f1 = |x| x; f2 = |x| cell(cell_index(x) + 1));
roundtrip!(t_non_null: NonNull<u8> = (1..=usize::MAX).prop_map(|a| NonNull::new(std::ptr::without_provenance_mut(a)).unwrap());
    f1 = |x| x; f2 = |x| NonNull::new(std::ptr::without_provenance_mut((x.as_ptr() as usize).rotate_left(1))).unwrap());
roundtrip!(t_option_ref: Option<&'static u64> = proptest::option::of((0..16usize).prop_map(cell));
    f1 = |x| x; f2 = |x| match x { Some(_) => None, None => Some(cell(3)) }; zero = None);
roundtrip!(t_option_non_null: Option<NonNull<u8>> = any::<usize>().prop_map(|a| NonNull::new(std::ptr::without_provenance_mut(a)));
    f1 = |x| x; f2 = |x| x.and_then(|p| NonNull::new(std::ptr::without_provenance_mut((p.as_ptr() as usize).rotate_left(1))));
    zero = None);
roundtrip!(t_f32: f32 = any::<f32>(); f1 = |x| x * 2.0; f2 = |x| 1.5 - x);
roundtrip!(t_f64: f64 = any::<f64>(); f1 = |x| x * 2.0; f2 = |x| 1.5 - x);
roundtrip!(t_handle: Handle = any::<u32>().prop_map(Handle); f1 = |x| Handle(x.0.wrapping_add(7)); f2 = |x| Handle(x.0.rotate_left(3));
    zero = Handle(0));

// ---------------------------------------------------------------- &mut T

mod t_mut_ref {
    use super::*;

    extern "C" fn f1(x: &'static mut u64) -> &'static mut u64 {
        *x = x.wrapping_add(1);
        x
    }
    extern "C" fn f2(x: &'static mut u64) -> &'static mut u64 {
        *x = x.wrapping_mul(3);
        x
    }

    #[static_call]
    static KEY: extern "C" fn(&'static mut u64) -> &'static mut u64 = f1;

    #[inline(never)]
    fn site(x: &'static mut u64) -> &'static mut u64 {
        KEY.call(x)
    }

    pub fn run(phase: Phase) {
        let target: extern "C" fn(&'static mut u64) -> &'static mut u64 = match phase {
            Phase::BeforeInit | Phase::Init => f1,
            Phase::Updated => f2,
            Phase::Reset => return, // `&mut T` has no zero value
        };
        if phase == Phase::Updated {
            KEY.update(f2);
        }
        assert_sites(&KEY, phase, KEY.get().unwrap() as usize, SiteState::Zero);
        runner()
            .run(&any::<u64>(), |v| {
                let (a, b) = (Box::leak(Box::new(v)), Box::leak(Box::new(v)));
                let pa: *const u64 = a;
                let got = site(a);
                prop_assert!(std::ptr::eq(got, pa), "the same reference comes back");
                prop_assert_eq!(*got, *target(b), "the target wrote through it");
                Ok(())
            })
            .unwrap();
    }
}

mod t_option_mut_ref {
    use super::*;

    extern "C" fn f1(x: Option<&'static mut u64>) -> Option<&'static mut u64> {
        x.map(|r| {
            *r = r.wrapping_add(1);
            r
        })
    }
    extern "C" fn f2(x: Option<&'static mut u64>) -> Option<&'static mut u64> {
        x.filter(|r| **r % 2 == 0)
    }

    #[static_call]
    static KEY: extern "C" fn(Option<&'static mut u64>) -> Option<&'static mut u64> = f1;

    #[inline(never)]
    fn site(x: Option<&'static mut u64>) -> Option<&'static mut u64> {
        KEY.call(x)
    }

    pub fn run(phase: Phase) {
        let target: Option<extern "C" fn(Option<&'static mut u64>) -> Option<&'static mut u64>> = match phase {
            Phase::BeforeInit | Phase::Init => Some(f1),
            Phase::Updated => {
                KEY.update(f2);
                Some(f2)
            }
            Phase::Reset => {
                KEY.reset();
                None
            }
        };
        assert_sites(&KEY, phase, KEY.get().map_or(0, |f| f as usize), SiteState::Zero);
        runner()
            .run(&proptest::option::of(any::<u64>()), |v| {
                let a = v.map(|v| &mut *Box::leak(Box::new(v)));
                let pa = a.as_deref().map(|r| r as *const u64);
                let got = site(a).map(|r| (r as *const u64, *r));
                let want = match target {
                    Some(t) => t(v.map(|v| &mut *Box::leak(Box::new(v)))).map(|r| *r),
                    None => None,
                };
                prop_assert_eq!(got.map(|g| g.1), want, "value");
                if let Some((p, _)) = got {
                    prop_assert_eq!(Some(p), pa, "the same reference comes back");
                }
                Ok(())
            })
            .unwrap();
    }
}

// ---------------------------------------------------------------- unit return

mod t_unit {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static SEEN: AtomicU64 = AtomicU64::new(0);

    extern "C" fn f1(x: u64, y: f32) {
        SEEN.store(x ^ y.to_bits() as u64, Ordering::Relaxed);
    }
    extern "C" fn f2(x: u64, y: f32) {
        SEEN.store(x.wrapping_add(y.to_bits() as u64), Ordering::Relaxed);
    }

    #[static_call]
    static KEY: extern "C" fn(u64, f32) = f1;

    #[inline(never)]
    fn site(x: u64, y: f32) {
        KEY.call(x, y)
    }

    pub fn run(phase: Phase) {
        let target: Option<extern "C" fn(u64, f32)> = match phase {
            Phase::BeforeInit | Phase::Init => Some(f1),
            Phase::Updated => {
                KEY.update(f2);
                Some(f2)
            }
            Phase::Reset => {
                KEY.reset();
                None
            }
        };
        assert_sites(&KEY, phase, KEY.get().map_or(0, |f| f as usize), SiteState::Nop);
        runner()
            .run(&(any::<u64>(), any::<f32>()), |(x, y)| {
                SEEN.store(u64::MAX, Ordering::Relaxed);
                site(x, y);
                let got = SEEN.swap(u64::MAX, Ordering::Relaxed);
                let want = match target {
                    Some(f) => {
                        f(x, y);
                        SEEN.load(Ordering::Relaxed)
                    }
                    None => u64::MAX, // nothing ran
                };
                prop_assert_eq!(got, want);
                Ok(())
            })
            .unwrap();
    }
}

// ---------------------------------------------------------------- mixed signatures

thread_local! {
    /// What the last mixed-signature target saw: a tag naming the target,
    /// then the bits of every argument.
    static SEEN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn record(v: &[u64]) {
    SEEN.with(|s| *s.borrow_mut() = v.to_vec());
}

fn take_record() -> Vec<u64> {
    SEEN.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

mod mixed_7 {
    use super::*;
    type F = extern "C" fn(u8, f64, i32, f32, *const u8, bool, f64) -> f64;

    extern "C" fn f1(a: u8, b: f64, c: i32, d: f32, e: *const u8, f: bool, g: f64) -> f64 {
        record(&[1, a as u64, b.to_bits(), c as u64, d.to_bits() as u64, e as usize as u64, f as u64, g.to_bits()]);
        b * 2.0 + g
    }
    extern "C" fn f2(a: u8, b: f64, c: i32, d: f32, e: *const u8, f: bool, g: f64) -> f64 {
        record(&[2, a as u64, b.to_bits(), c as u64, d.to_bits() as u64, e as usize as u64, f as u64, g.to_bits()]);
        if f {
            g - b
        } else {
            d as f64 + c as f64 + a as f64
        }
    }

    #[static_call]
    static KEY: extern "C" fn(u8, f64, i32, f32, *const u8, bool, f64) -> f64 = f1;

    #[inline(never)]
    fn site(a: u8, b: f64, c: i32, d: f32, e: *const u8, f: bool, g: f64) -> f64 {
        KEY.call(a, b, c, d, e, f, g)
    }

    pub fn run(phase: Phase) {
        let target: F = match phase {
            Phase::BeforeInit | Phase::Init => f1,
            Phase::Updated => {
                KEY.update(f2);
                f2
            }
            Phase::Reset => return, // f64 has no zero value
        };
        assert_sites(&KEY, phase, KEY.get().unwrap() as usize, SiteState::Zero);
        let args = (any::<u8>(), any::<f64>(), any::<i32>(), any::<f32>(), any::<usize>(), any::<bool>(), any::<f64>());
        runner()
            .run(&args, |(a, b, c, d, e, f, g)| {
                let e = std::ptr::without_provenance::<u8>(e);
                let got = site(a, b, c, d, e, f, g);
                let seen = take_record();
                let want = target(a, b, c, d, e, f, g);
                prop_assert_eq!(seen, take_record(), "every argument reached its parameter");
                prop_assert_eq!(got.to_bits(), want.to_bits());
                Ok(())
            })
            .unwrap();
    }
}

mod mixed_14 {
    use super::*;
    /// Six integer-class and eight floating-point arguments, interleaved.
    type F = extern "C" fn(f64, u64, f32, i32, f64, u16, f32, i8, f64, usize, f32, isize, f64, f32) -> u64;

    macro_rules! target {
        ($name:ident, $tag:expr, $ret:expr) => {
            #[allow(clippy::too_many_arguments)]
            extern "C" fn $name(
                a: f64,
                b: u64,
                c: f32,
                d: i32,
                e: f64,
                f: u16,
                g: f32,
                h: i8,
                i: f64,
                j: usize,
                k: f32,
                l: isize,
                m: f64,
                n: f32,
            ) -> u64 {
                record(&[
                    $tag,
                    a.to_bits(),
                    b,
                    c.to_bits() as u64,
                    d as u64,
                    e.to_bits(),
                    f as u64,
                    g.to_bits() as u64,
                    h as u64,
                    i.to_bits(),
                    j as u64,
                    k.to_bits() as u64,
                    l as u64,
                    m.to_bits(),
                    n.to_bits() as u64,
                ]);
                let ret: fn(u64, i32, i8, u64) -> u64 = $ret;
                ret(b, d, h, (j as u64) ^ (l as u64) ^ f as u64)
            }
        };
    }
    target!(f1, 1, |b, d, h, x| b.wrapping_add(d as u64).wrapping_add(h as u64) ^ x);
    target!(f2, 2, |b, d, h, x| b.wrapping_mul(3) ^ (d as u64).rotate_left(7) ^ (h as u64) ^ x.rotate_left(13));

    #[static_call]
    static KEY: extern "C" fn(f64, u64, f32, i32, f64, u16, f32, i8, f64, usize, f32, isize, f64, f32) -> u64 = f1;

    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn site(
        a: f64,
        b: u64,
        c: f32,
        d: i32,
        e: f64,
        f: u16,
        g: f32,
        h: i8,
        i: f64,
        j: usize,
        k: f32,
        l: isize,
        m: f64,
        n: f32,
    ) -> u64 {
        KEY.call(a, b, c, d, e, f, g, h, i, j, k, l, m, n)
    }

    pub fn run(phase: Phase) {
        let target: Option<F> = match phase {
            Phase::BeforeInit | Phase::Init => Some(f1),
            Phase::Updated => {
                KEY.update(f2);
                Some(f2)
            }
            Phase::Reset => {
                KEY.reset();
                None
            }
        };
        assert_sites(&KEY, phase, KEY.get().map_or(0, |f| f as usize), SiteState::Zero);
        let args = (
            (any::<f64>(), any::<u64>(), any::<f32>(), any::<i32>(), any::<f64>(), any::<u16>(), any::<f32>()),
            (any::<i8>(), any::<f64>(), any::<usize>(), any::<f32>(), any::<isize>(), any::<f64>(), any::<f32>()),
        );
        runner()
            .run(&args, |((a, b, c, d, e, f, g), (h, i, j, k, l, m, n))| {
                take_record();
                let got = site(a, b, c, d, e, f, g, h, i, j, k, l, m, n);
                let seen = take_record();
                match target {
                    Some(t) => {
                        let want = t(a, b, c, d, e, f, g, h, i, j, k, l, m, n);
                        prop_assert_eq!(seen, take_record(), "every argument reached its parameter");
                        prop_assert_eq!(got, want);
                    }
                    None => {
                        prop_assert!(seen.is_empty(), "no target ran");
                        prop_assert_eq!(got, 0);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}

mod mixed_small_ints {
    use super::*;
    /// Six integers narrower than a register, of both signednesses.
    type F = extern "C" fn(i8, u8, i16, u16, i32, u32) -> i32;

    extern "C" fn f1(a: i8, b: u8, c: i16, d: u16, e: i32, f: u32) -> i32 {
        record(&[1, a as u64, b as u64, c as u64, d as u64, e as u64, f as u64]);
        (a as i32).wrapping_add(b as i32).wrapping_add(c as i32).wrapping_add(d as i32).wrapping_add(e) ^ f as i32
    }
    extern "C" fn f2(a: i8, b: u8, c: i16, d: u16, e: i32, f: u32) -> i32 {
        record(&[2, a as u64, b as u64, c as u64, d as u64, e as u64, f as u64]);
        (a as i32).wrapping_mul(c as i32) ^ (b as i32).wrapping_mul(d as i32) ^ e.wrapping_sub(f as i32)
    }

    #[static_call]
    static KEY: extern "C" fn(i8, u8, i16, u16, i32, u32) -> i32 = f1;

    #[inline(never)]
    fn site(a: i8, b: u8, c: i16, d: u16, e: i32, f: u32) -> i32 {
        KEY.call(a, b, c, d, e, f)
    }

    pub fn run(phase: Phase) {
        let target: Option<F> = match phase {
            Phase::BeforeInit | Phase::Init => Some(f1),
            Phase::Updated => {
                KEY.update(f2);
                Some(f2)
            }
            Phase::Reset => {
                KEY.reset();
                None
            }
        };
        assert_sites(&KEY, phase, KEY.get().map_or(0, |f| f as usize), SiteState::Zero);
        let args = (any::<i8>(), any::<u8>(), any::<i16>(), any::<u16>(), any::<i32>(), any::<u32>());
        runner()
            .run(&args, |(a, b, c, d, e, f)| {
                take_record();
                let got = site(a, b, c, d, e, f);
                let seen = take_record();
                match target {
                    Some(t) => {
                        let want = t(a, b, c, d, e, f);
                        prop_assert_eq!(seen, take_record());
                        prop_assert_eq!(got, want);
                    }
                    None => {
                        prop_assert!(seen.is_empty());
                        prop_assert_eq!(got, 0);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}

mod eight_floats {
    use super::*;
    type F = extern "C" fn(f32, f64, f32, f64, f32, f64, f32, f64) -> f32;

    #[allow(clippy::too_many_arguments)]
    extern "C" fn f1(a: f32, b: f64, c: f32, d: f64, e: f32, f: f64, g: f32, h: f64) -> f32 {
        record(&[
            1,
            a.to_bits() as u64,
            b.to_bits(),
            c.to_bits() as u64,
            d.to_bits(),
            e.to_bits() as u64,
            f.to_bits(),
            g.to_bits() as u64,
            h.to_bits(),
        ]);
        a + c * 2.0 - e + g * 4.0
    }
    #[allow(clippy::too_many_arguments)]
    extern "C" fn f2(a: f32, b: f64, c: f32, d: f64, e: f32, f: f64, g: f32, h: f64) -> f32 {
        record(&[
            2,
            a.to_bits() as u64,
            b.to_bits(),
            c.to_bits() as u64,
            d.to_bits(),
            e.to_bits() as u64,
            f.to_bits(),
            g.to_bits() as u64,
            h.to_bits(),
        ]);
        (b - d + f - h) as f32
    }

    #[static_call]
    static KEY: extern "C" fn(f32, f64, f32, f64, f32, f64, f32, f64) -> f32 = f1;

    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn site(a: f32, b: f64, c: f32, d: f64, e: f32, f: f64, g: f32, h: f64) -> f32 {
        KEY.call(a, b, c, d, e, f, g, h)
    }

    pub fn run(phase: Phase) {
        let target: F = match phase {
            Phase::BeforeInit | Phase::Init => f1,
            Phase::Updated => {
                KEY.update(f2);
                f2
            }
            Phase::Reset => return, // f32 has no zero value
        };
        assert_sites(&KEY, phase, KEY.get().unwrap() as usize, SiteState::Zero);
        let args = (
            any::<f32>(),
            any::<f64>(),
            any::<f32>(),
            any::<f64>(),
            any::<f32>(),
            any::<f64>(),
            any::<f32>(),
            any::<f64>(),
        );
        runner()
            .run(&args, |(a, b, c, d, e, f, g, h)| {
                let got = site(a, b, c, d, e, f, g, h);
                let seen = take_record();
                let want = target(a, b, c, d, e, f, g, h);
                prop_assert_eq!(seen, take_record());
                prop_assert_eq!(got.to_bits(), want.to_bits());
                Ok(())
            })
            .unwrap();
    }
}

// ---------------------------------------------------------------- registers as the callee sees them

/// What the last `raw_*` target found in the six argument registers.
static REGS: [std::sync::atomic::AtomicU64; 6] = [const { std::sync::atomic::AtomicU64::new(0) }; 6];

fn regs() -> [u64; 6] {
    REGS.each_ref().map(|r| r.load(std::sync::atomic::Ordering::SeqCst))
}

/// A target that stores the six integer argument registers, whole, in
/// `REGS`, and returns the first (`rdi`, `x0`).
macro_rules! raw_regs_target {
    ($name:ident: fn($($t:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        extern "C" fn $name($(_: $t),*) -> u64 {
            core::arch::naked_asm!(
                "mov qword ptr [rip + {regs}], rdi",
                "mov qword ptr [rip + {regs} + 8], rsi",
                "mov qword ptr [rip + {regs} + 16], rdx",
                "mov qword ptr [rip + {regs} + 24], rcx",
                "mov qword ptr [rip + {regs} + 32], r8",
                "mov qword ptr [rip + {regs} + 40], r9",
                "mov rax, rdi",
                "ret",
                regs = sym REGS,
            )
        }
        #[cfg(target_arch = "aarch64")]
        #[unsafe(naked)]
        extern "C" fn $name($(_: $t),*) -> u64 {
            core::arch::naked_asm!(
                "adrp x9, {regs}",
                "add x9, x9, :lo12:{regs}",
                "stp x0, x1, [x9]",
                "stp x2, x3, [x9, #16]",
                "stp x4, x5, [x9, #32]",
                "ret",
                regs = sym REGS,
            )
        }
    };
}

mod extension {
    //! Narrow integers are extended by their signedness before the call: a
    //! C callee (which may read `edi` whole) sees an `i8` -1 as -1. The site
    //! extends to 64 bits; Rust's own calls (the portable backend) extend
    //! to 32, which is what the C ABI's users rely on.
    use super::*;

    raw_regs_target!(raw_a: fn(i8, i16, i32, u8, u16, u32));
    raw_regs_target!(raw_b: fn(bool, char, i8, i16, u8, u16));

    #[static_call]
    static A: extern "C" fn(i8, i16, i32, u8, u16, u32) -> u64 = raw_a;
    #[static_call]
    static B: extern "C" fn(bool, char, i8, i16, u8, u16) -> u64 = raw_b;

    #[inline(never)]
    fn site_a(a: i8, b: i16, c: i32, d: u8, e: u16, f: u32) -> u64 {
        A.call(a, b, c, d, e, f)
    }
    #[inline(never)]
    fn site_b(a: bool, b: char, c: i8, d: i16, e: u8, f: u16) -> u64 {
        B.call(a, b, c, d, e, f)
    }

    #[track_caller]
    fn check(got: [u64; 6], want: [u64; 6]) -> Result<(), TestCaseError> {
        // The site extends to 64 bits; a plain Rust call to 32.
        let mask = if static_call::PATCHING { u64::MAX } else { u32::MAX as u64 };
        prop_assert_eq!(got.map(|r| r & mask), want.map(|r| r & mask));
        Ok(())
    }

    pub fn run(phase: Phase) {
        if phase == Phase::Reset {
            A.reset();
            assert_sites(&A, phase, 0, SiteState::Zero);
            assert_eq!(site_a(-1, -1, -1, 1, 1, 1), 0, "no target: zero");
            return;
        }
        assert_sites(&A, phase, A.get().unwrap() as usize, SiteState::Zero);
        assert_sites(&B, phase, B.get().unwrap() as usize, SiteState::Zero);
        let args = (any::<i8>(), any::<i16>(), any::<i32>(), any::<u8>(), any::<u16>(), any::<u32>());
        runner()
            .run(&args, |(a, b, c, d, e, f)| {
                let rdi = site_a(a, b, c, d, e, f);
                let want = [a as i64 as u64, b as i64 as u64, c as i64 as u64, d as u64, e as u64, f as u64];
                check(regs(), want)?;
                prop_assert_eq!(rdi, regs()[0]);
                Ok(())
            })
            .unwrap();
        let args = (any::<bool>(), any::<char>(), any::<i8>(), any::<i16>(), any::<u8>(), any::<u16>());
        runner()
            .run(&args, |(a, b, c, d, e, f)| {
                site_b(a, b, c, d, e, f);
                let want = [a as u64, b as u64, c as i64 as u64, d as i64 as u64, e as u64, f as u64];
                check(regs(), want)
            })
            .unwrap();
        // The boundary values, by name.
        site_a(-1, i16::MIN, i32::MIN, u8::MAX, u16::MAX, u32::MAX);
        check(regs(), [u64::MAX, i16::MIN as i64 as u64, i32::MIN as i64 as u64, 0xff, 0xffff, 0xffff_ffff]).unwrap();
    }
}

// ---------------------------------------------------------------- garbage above a narrow return value

/// Targets that return their argument with garbage in the bits of the return
/// register (`rax`, `x0`) the C ABI leaves unspecified: the site must ignore
/// them. With the portable backend, Rust's own call reads the value; only
/// bits 32..64 are garbage there (what any caller must ignore). `$extend`
/// names how the argument is first put in the return register: `zext32`,
/// `zext16`, `zext8` or `sext8` (to 32 bits).
macro_rules! garbage_target {
    ($name:ident: fn($t:ty) -> $r:ty, $extend:ident, $garbage:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        extern "C" fn $name(_: $t) -> $r {
            core::arch::naked_asm!(
                garbage_target!(@x86_64 $extend),
                "movabs rcx, {garbage}",
                "or rax, rcx",
                "ret",
                garbage = const $garbage,
            )
        }
        #[cfg(target_arch = "aarch64")]
        #[unsafe(naked)]
        extern "C" fn $name(_: $t) -> $r {
            core::arch::naked_asm!(
                garbage_target!(@aarch64 $extend),
                "movz x9, #{g0}",
                "movk x9, #{g1}, lsl #16",
                "movk x9, #{g2}, lsl #32",
                "movk x9, #{g3}, lsl #48",
                "orr x0, x0, x9",
                "ret",
                g0 = const $garbage & 0xffff,
                g1 = const ($garbage >> 16) & 0xffff,
                g2 = const ($garbage >> 32) & 0xffff,
                g3 = const ($garbage >> 48) & 0xffff,
            )
        }
    };
    (@x86_64 zext32) => { "mov eax, edi" };
    (@x86_64 zext16) => { "movzx eax, di" };
    (@x86_64 zext8) => { "movzx eax, dil" };
    (@x86_64 sext8) => { "movsx eax, dil" };
    (@aarch64 zext32) => { "mov w0, w0" };
    (@aarch64 zext16) => { "and x0, x0, #0xffff" };
    (@aarch64 zext8) => { "and x0, x0, #0xff" };
    (@aarch64 sext8) => { "sxtb w0, w0" };
}

garbage_target!(g_u32_a: fn(u32) -> u32, zext32, 0xdeadbeef00000000u64);
garbage_target!(g_u32_b: fn(u32) -> u32, zext32, 0x0123456700000000u64);
garbage_target!(g_bool_a: fn(bool) -> bool, zext8, 0xdeadbeefcafe5a00u64);
garbage_target!(g_bool_b: fn(bool) -> bool, zext8, 0x7777777700000000u64);
garbage_target!(g_i8_a: fn(i8) -> i8, zext8, 0xfedcba9876543200u64);
garbage_target!(g_i8_b: fn(i8) -> i8, sext8, 0x1111111100000000u64);
garbage_target!(g_u16_a: fn(u16) -> u16, zext16, 0xabababababab0000u64);
garbage_target!(g_u16_b: fn(u16) -> u16, zext16, 0x2222222200000000u64);

mod garbage {
    use super::*;

    // Garbage below bit 32 only where the site reads the value.
    #[static_call]
    static U32: extern "C" fn(u32) -> u32 = g_u32_a;
    #[static_call]
    static BOOL: extern "C" fn(bool) -> bool = if static_call::PATCHING { g_bool_a } else { g_bool_b };
    #[static_call]
    static I8: extern "C" fn(i8) -> i8 = if static_call::PATCHING { g_i8_a } else { g_i8_b };
    #[static_call]
    static U16: extern "C" fn(u16) -> u16 = if static_call::PATCHING { g_u16_a } else { g_u16_b };

    #[inline(never)]
    fn site_u32(x: u32) -> u32 {
        U32.call(x)
    }
    #[inline(never)]
    fn site_bool(x: bool) -> bool {
        BOOL.call(x)
    }
    #[inline(never)]
    fn site_i8(x: i8) -> i8 {
        I8.call(x)
    }
    #[inline(never)]
    fn site_u16(x: u16) -> u16 {
        U16.call(x)
    }

    pub fn run(phase: Phase) {
        match phase {
            Phase::BeforeInit | Phase::Init => {}
            Phase::Updated => {
                U32.update(g_u32_b);
                BOOL.update(g_bool_b);
                I8.update(g_i8_b);
                U16.update(g_u16_b);
            }
            Phase::Reset => {
                U32.reset();
                BOOL.reset();
                I8.reset();
                U16.reset();
                assert_sites(&U32, phase, 0, SiteState::Zero);
                assert_sites(&BOOL, phase, 0, SiteState::Zero);
                assert_eq!((site_u32(7), site_bool(true), site_i8(-1), site_u16(9)), (0, false, 0, 0));
                return;
            }
        }
        assert_sites(&U32, phase, U32.get().unwrap() as usize, SiteState::Zero);
        assert_sites(&BOOL, phase, BOOL.get().unwrap() as usize, SiteState::Zero);
        assert_sites(&I8, phase, I8.get().unwrap() as usize, SiteState::Zero);
        assert_sites(&U16, phase, U16.get().unwrap() as usize, SiteState::Zero);
        runner()
            .run(&(any::<u32>(), any::<bool>(), any::<i8>(), any::<u16>()), |(a, b, c, d)| {
                prop_assert_eq!(site_u32(a), a);
                prop_assert_eq!(site_bool(b), b);
                prop_assert_eq!(site_i8(c), c);
                prop_assert_eq!(site_u16(d), d);
                Ok(())
            })
            .unwrap();
    }
}

// ---------------------------------------------------------------- what a call may destroy, and the stack it gets

mod abi_contract {
    //! A target may overwrite every caller-saved register and the flags:
    //! values the caller keeps live across the site must survive (the site
    //! declares the C clobbers). And the target finds the stack aligned as a
    //! call requires (`rsp` = 8 mod 16 on entry on x86-64, `sp` = 0 mod 16
    //! on aarch64).
    use super::*;
    use std::hint::black_box;

    /// Returns `x + 1` after overwriting every caller-saved general-purpose
    /// and SSE register, and the flags.
    #[cfg(target_arch = "x86_64")]
    #[unsafe(naked)]
    extern "C" fn trash(_: u64) -> u64 {
        core::arch::naked_asm!(
            "lea rax, [rdi + 1]",
            "mov rcx, -1",
            "mov rdx, -1",
            "mov rsi, -1",
            "mov rdi, -1",
            "mov r8, -1",
            "mov r9, -1",
            "mov r10, -1",
            "mov r11, -1",
            "pcmpeqd xmm0, xmm0",
            "pcmpeqd xmm1, xmm1",
            "pcmpeqd xmm2, xmm2",
            "pcmpeqd xmm3, xmm3",
            "pcmpeqd xmm4, xmm4",
            "pcmpeqd xmm5, xmm5",
            "pcmpeqd xmm6, xmm6",
            "pcmpeqd xmm7, xmm7",
            "pcmpeqd xmm8, xmm8",
            "pcmpeqd xmm9, xmm9",
            "pcmpeqd xmm10, xmm10",
            "pcmpeqd xmm11, xmm11",
            "pcmpeqd xmm12, xmm12",
            "pcmpeqd xmm13, xmm13",
            "pcmpeqd xmm14, xmm14",
            "pcmpeqd xmm15, xmm15",
            "cmp rcx, 0",
            "ret",
        )
    }

    /// Returns `x + 1` after overwriting every caller-saved general-purpose
    /// register (`x1`..`x18`), every caller-saved SIMD register (`v0`..`v7`,
    /// `v16`..`v31` whole; the upper halves of `v8`..`v15`, whose lower
    /// halves AAPCS64 makes callee-saved), and the flags.
    #[cfg(target_arch = "aarch64")]
    #[unsafe(naked)]
    extern "C" fn trash(_: u64) -> u64 {
        core::arch::naked_asm!(
            "add x0, x0, #1",
            "mov x1, #-1",
            "mov x2, #-1",
            "mov x3, #-1",
            "mov x4, #-1",
            "mov x5, #-1",
            "mov x6, #-1",
            "mov x7, #-1",
            "mov x8, #-1",
            "mov x9, #-1",
            "mov x10, #-1",
            "mov x11, #-1",
            "mov x12, #-1",
            "mov x13, #-1",
            "mov x14, #-1",
            "mov x15, #-1",
            "mov x16, #-1",
            "mov x17, #-1",
            "mov x18, #-1",
            "movi v0.2d, #0xffffffffffffffff",
            "movi v1.2d, #0xffffffffffffffff",
            "movi v2.2d, #0xffffffffffffffff",
            "movi v3.2d, #0xffffffffffffffff",
            "movi v4.2d, #0xffffffffffffffff",
            "movi v5.2d, #0xffffffffffffffff",
            "movi v6.2d, #0xffffffffffffffff",
            "movi v7.2d, #0xffffffffffffffff",
            "mov v8.d[1], x1",
            "mov v9.d[1], x1",
            "mov v10.d[1], x1",
            "mov v11.d[1], x1",
            "mov v12.d[1], x1",
            "mov v13.d[1], x1",
            "mov v14.d[1], x1",
            "mov v15.d[1], x1",
            "movi v16.2d, #0xffffffffffffffff",
            "movi v17.2d, #0xffffffffffffffff",
            "movi v18.2d, #0xffffffffffffffff",
            "movi v19.2d, #0xffffffffffffffff",
            "movi v20.2d, #0xffffffffffffffff",
            "movi v21.2d, #0xffffffffffffffff",
            "movi v22.2d, #0xffffffffffffffff",
            "movi v23.2d, #0xffffffffffffffff",
            "movi v24.2d, #0xffffffffffffffff",
            "movi v25.2d, #0xffffffffffffffff",
            "movi v26.2d, #0xffffffffffffffff",
            "movi v27.2d, #0xffffffffffffffff",
            "movi v28.2d, #0xffffffffffffffff",
            "movi v29.2d, #0xffffffffffffffff",
            "movi v30.2d, #0xffffffffffffffff",
            "movi v31.2d, #0xffffffffffffffff",
            "cmp x1, #0",
            "ret",
        )
    }

    /// The stack pointer mod 16 on entry: 8 on x86-64 (the call pushed the
    /// return address onto a 16-aligned stack), 0 on aarch64 (`sp` is
    /// 16-aligned at every call).
    #[cfg(target_arch = "x86_64")]
    #[unsafe(naked)]
    extern "C" fn entry_alignment(_: u64) -> u64 {
        core::arch::naked_asm!("mov rax, rsp", "and rax, 15", "ret")
    }
    #[cfg(target_arch = "aarch64")]
    #[unsafe(naked)]
    extern "C" fn entry_alignment(_: u64) -> u64 {
        core::arch::naked_asm!("mov x0, sp", "and x0, x0, #15", "ret")
    }
    /// What [`entry_alignment`] returns when the site aligned the stack.
    const ENTRY_SP_MOD_16: u64 = if cfg!(target_arch = "x86_64") { 8 } else { 0 };

    extern "C" fn plain(x: u64) -> u64 {
        x + 1
    }

    #[static_call]
    static TRASH: extern "C" fn(u64) -> u64 = trash;
    #[static_call]
    static ALIGN: extern "C" fn(u64) -> u64 = entry_alignment;

    /// Many values live across the site, in whatever registers the compiler
    /// picks.
    #[inline(never)]
    fn live_across(seed: u64) -> (u64, f64) {
        let s = black_box(seed);
        let (a, b, c, d, e, f, g, h) =
            (s ^ 1, s.rotate_left(5), s.wrapping_mul(3), !s, s >> 3, s << 7, s ^ 0xff, s.wrapping_add(99));
        let (x, y, z, w) = (s as f64 * 0.5, (s >> 11) as f64 + 0.25, -(s as f64), (s % 1000) as f64 / 7.0);
        let r = TRASH.call(s);
        let ints = a ^ b.wrapping_add(c) ^ d.wrapping_mul(e) ^ f.rotate_left(3) ^ g ^ h ^ r;
        (ints, x + y * 2.0 - z + w * 3.0)
    }

    fn live_across_reference(seed: u64) -> (u64, f64) {
        let s = seed;
        let (a, b, c, d, e, f, g, h) =
            (s ^ 1, s.rotate_left(5), s.wrapping_mul(3), !s, s >> 3, s << 7, s ^ 0xff, s.wrapping_add(99));
        let (x, y, z, w) = (s as f64 * 0.5, (s >> 11) as f64 + 0.25, -(s as f64), (s % 1000) as f64 / 7.0);
        let r = s + 1;
        let ints = a ^ b.wrapping_add(c) ^ d.wrapping_mul(e) ^ f.rotate_left(3) ^ g ^ h ^ r;
        (ints, x + y * 2.0 - z + w * 3.0)
    }

    /// Frames of different sizes around the same kind of site.
    #[inline(never)]
    fn aligned_small() -> u64 {
        ALIGN.call(0)
    }
    #[inline(never)]
    fn aligned_odd_frame(n: u64) -> u64 {
        let buf = black_box([n as u8; 24]);
        ALIGN.call(buf[3] as u64)
    }
    #[inline(never)]
    fn aligned_big_frame(n: u64) -> u64 {
        let buf = black_box([n; 37]);
        ALIGN.call(buf[36]) + buf[0] - n
    }

    pub fn run(phase: Phase) {
        match phase {
            Phase::BeforeInit | Phase::Init => {}
            Phase::Updated => {
                // Through another target and back: the same sites, repatched.
                TRASH.update(plain);
                assert_eq!(live_across(5), live_across_reference(5));
                TRASH.update(trash);
                ALIGN.update(entry_alignment);
            }
            Phase::Reset => return, // covered by the other keys
        }
        assert_sites(&TRASH, phase, TRASH.get().unwrap() as usize, SiteState::Zero);
        assert_sites(&ALIGN, phase, ALIGN.get().unwrap() as usize, SiteState::Zero);
        runner()
            .run(&any::<u64>().prop_filter("no overflow", |s| *s < u64::MAX), |s| {
                let (ints, floats) = live_across(s);
                let (want_ints, want_floats) = live_across_reference(s);
                prop_assert_eq!(ints, want_ints, "an integer live across the call was destroyed");
                prop_assert_eq!(floats.to_bits(), want_floats.to_bits(), "a float live across the call was destroyed");
                Ok(())
            })
            .unwrap();
        for n in 0..4 {
            assert_eq!(
                (aligned_small(), aligned_odd_frame(n), aligned_big_frame(n)),
                (ENTRY_SP_MOD_16, ENTRY_SP_MOD_16, ENTRY_SP_MOD_16),
                "stack pointer on entry"
            );
        }
    }
}

// ---------------------------------------------------------------- the phases

fn run_all(phase: Phase) {
    t_u8::run(phase);
    t_u16::run(phase);
    t_u32::run(phase);
    t_u64::run(phase);
    t_usize::run(phase);
    t_i8::run(phase);
    t_i16::run(phase);
    t_i32::run(phase);
    t_i64::run(phase);
    t_isize::run(phase);
    t_bool::run(phase);
    t_char::run(phase);
    t_const_ptr::run(phase);
    t_mut_ptr::run(phase);
    t_ref::run(phase);
    t_mut_ref::run(phase);
    t_option_mut_ref::run(phase);
    t_non_null::run(phase);
    t_option_ref::run(phase);
    t_option_non_null::run(phase);
    t_f32::run(phase);
    t_f64::run(phase);
    t_handle::run(phase);
    t_unit::run(phase);
    mixed_7::run(phase);
    mixed_14::run(phase);
    mixed_small_ints::run(phase);
    eight_floats::run(phase);
    extension::run(phase);
    garbage::run(phase);
    abi_contract::run(phase);
}

#[test]
fn every_type_round_trips_in_every_site_state() {
    run_all(Phase::BeforeInit);
    static_call::init().unwrap();
    run_all(Phase::Init);
    run_all(Phase::Updated);
    run_all(Phase::Reset);
    if static_call::PATCHING {
        assert!(static_call::stats().sites_patched > 0);
    }
}
