//! 64 keys, each with its own target and one call site, for the
//! indirect-branch-predictor pressure case and the 64-key batch. Included by
//! the benches with `#[path = "common/many.rs"] mod many;`.
#![allow(dead_code)]

use static_call::static_call;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The alternative target every key is retargeted to by `retarget_all`.
#[inline(never)]
pub extern "C" fn alt(x: u64) -> u64 {
    x ^ 0x5a
}

/// An `extern "C" fn(u64) -> u64` held in an atomic pointer, called.
#[inline(always)]
fn pointer_call(p: &AtomicPtr<()>, x: u64) -> u64 {
    // SAFETY: the pointers below hold only `extern "C" fn(u64) -> u64`s.
    let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(p.load(Ordering::Acquire)) };
    f(x)
}

macro_rules! many_keys {
    ($($key:ident $target:ident $n:literal),* $(,)?) => {
        $(
            #[inline(never)]
            pub extern "C" fn $target(x: u64) -> u64 {
                x.wrapping_mul(3).wrapping_add($n)
            }
            #[static_call]
            pub static $key: extern "C" fn(u64) -> u64 = $target;
        )*

        /// The targets, in key order.
        pub static TARGETS: [extern "C" fn(u64) -> u64; 64] = [$($target),*];

        /// The same targets as atomic function pointers.
        pub static POINTERS: [AtomicPtr<()>; 64] = [$(AtomicPtr::new($target as *mut ())),*];

        /// One call of each key, in sequence: 64 patched sites.
        #[inline(never)]
        pub fn call_each_key(mut x: u64) -> u64 {
            $( x = $key.call(x); )*
            x
        }

        /// One call through each pointer, in sequence: 64 indirect call sites,
        /// each with one target.
        #[inline(never)]
        pub fn call_each_pointer(mut x: u64) -> u64 {
            $( x = pointer_call(&POINTERS[$n], x); )*
            x
        }

        /// One plain call of each target, in sequence: the floor.
        #[inline(never)]
        pub fn call_each_direct(mut x: u64) -> u64 {
            $( x = $target(x); )*
            x
        }

        /// One retpoline call through each pointer, in sequence.
        #[cfg(target_arch = "x86_64")]
        #[inline(never)]
        pub fn call_each_retpoline(mut x: u64) -> u64 {
            // SAFETY: the pointers hold only `extern "C" fn(u64) -> u64`s.
            $( x = unsafe { crate::costs::retpoline_call(POINTERS[$n].load(Ordering::Acquire), x) }; )*
            x
        }

        /// Retargets every key, in one batch: to `alt`, or back to its own.
        pub fn retarget_all(to_alt: bool) -> Result<(), static_call::Error> {
            static_call::batch(|b| {
                $( b.update(&$key, if to_alt { alt } else { $target }); )*
            })
        }

        /// Stores each pointer's own value into it through `black_box`:
        /// pointers never stored to are constants to LLVM, which then
        /// calls the targets directly (`call_each_pointer` did, before).
        pub fn make_pointers_opaque() {
            for p in &POINTERS {
                p.store(std::hint::black_box(p.load(Ordering::Relaxed)), Ordering::Release);
            }
        }

        /// The number of sites of each key (1 each, when linked).
        pub fn site_counts() -> Vec<usize> {
            vec![$($key.sites().len()),*]
        }
    };
}

many_keys!(
    K00 t00 0,
    K01 t01 1,
    K02 t02 2,
    K03 t03 3,
    K04 t04 4,
    K05 t05 5,
    K06 t06 6,
    K07 t07 7,
    K08 t08 8,
    K09 t09 9,
    K10 t10 10,
    K11 t11 11,
    K12 t12 12,
    K13 t13 13,
    K14 t14 14,
    K15 t15 15,
    K16 t16 16,
    K17 t17 17,
    K18 t18 18,
    K19 t19 19,
    K20 t20 20,
    K21 t21 21,
    K22 t22 22,
    K23 t23 23,
    K24 t24 24,
    K25 t25 25,
    K26 t26 26,
    K27 t27 27,
    K28 t28 28,
    K29 t29 29,
    K30 t30 30,
    K31 t31 31,
    K32 t32 32,
    K33 t33 33,
    K34 t34 34,
    K35 t35 35,
    K36 t36 36,
    K37 t37 37,
    K38 t38 38,
    K39 t39 39,
    K40 t40 40,
    K41 t41 41,
    K42 t42 42,
    K43 t43 43,
    K44 t44 44,
    K45 t45 45,
    K46 t46 46,
    K47 t47 47,
    K48 t48 48,
    K49 t49 49,
    K50 t50 50,
    K51 t51 51,
    K52 t52 52,
    K53 t53 53,
    K54 t54 54,
    K55 t55 55,
    K56 t56 56,
    K57 t57 57,
    K58 t58 58,
    K59 t59 59,
    K60 t60 60,
    K61 t61 61,
    K62 t62 62,
    K63 t63 63,
);

/// Calls through one indirect call site whose target changes at random
/// among the 64: what a dispatch table costs when the predictor cannot keep
/// up.
#[inline(never)]
pub fn call_random_pointer(mut x: u64, n: u64) -> u64 {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..n {
        s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        x = pointer_call(&POINTERS[(s >> 58) as usize], x);
    }
    x
}
