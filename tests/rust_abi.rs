//! Argument and result types and counts at the edges of the shim's
//! classification (registers, memory, fat pointers, alignment).
#![allow(clippy::type_complexity, clippy::too_many_arguments)]
use static_call::static_call;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(align(64))]
pub struct Aligned(u64);

#[derive(Debug, PartialEq, Clone, Copy)]
pub struct Zst;

pub trait Shape {
    fn area(&self) -> f64;
}
pub struct Sq(f64);
impl Shape for Sq {
    fn area(&self) -> f64 {
        self.0 * self.0
    }
}

#[static_call]
static MIX: fn(u8, f32, i16, f64, bool, f32, char, f64, u64, f32) -> f64 = |a, b, c, d, e, f, g, h, i, j| {
    a as f64 + b as f64 + c as f64 + d + (e as u8) as f64 + f as f64 + (g as u32) as f64 + h + i as f64 + j as f64
};

#[test]
fn mixed_ints_and_floats() {
    let r = MIX.call(1, 2.5, -3, 4.25, true, 0.5, 'A', 8.0, 100, 0.25);
    assert_eq!(r, 1.0 + 2.5 - 3.0 + 4.25 + 1.0 + 0.5 + 65.0 + 8.0 + 100.0 + 0.25);
}

#[static_call]
static MANY: fn(f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f64, u64, u64, u64, u64, u64, u64, u64, u64) -> f64 =
    |a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s| {
        (a + b + c + d + e + f + g + h + i + j) as f64 * 1000.0 + k + (l + m + n + o + p + q + r + s) as f64
    };

#[test]
fn more_floats_and_ints_than_registers() {
    let r = MANY.call(1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 0.5, 1, 2, 3, 4, 5, 6, 7, 8);
    assert_eq!(r, 55.0 * 1000.0 + 0.5 + 36.0);
}

#[static_call]
static WIDE: fn(u128, i128, u64) -> (u128, i128) = |a, b, c| (a.wrapping_add(c as u128), b - 1);

#[test]
fn wide_integers() {
    assert_eq!(WIDE.call(u128::MAX - 5, i128::MIN + 1, 3), (u128::MAX - 2, i128::MIN));
}

#[static_call]
static ALIGNED: fn(u8, Aligned, Aligned) -> Aligned = |_, a, b| {
    assert_eq!(&a as *const Aligned as usize % 64, 0);
    Aligned(a.0 + b.0)
};

#[test]
fn over_aligned() {
    assert_eq!(ALIGNED.call(1, Aligned(2), Aligned(3)), Aligned(5));
}

#[static_call]
static UNITS: fn((), Zst, u64, ()) -> Zst = |(), z, x, ()| {
    assert_eq!(x, 9);
    z
};

#[test]
fn zero_sized_arguments() {
    assert_eq!(UNITS.call((), Zst, 9, ()), Zst);
}

#[static_call]
static DYN: fn(&dyn Shape, &mut dyn FnMut(f64), *const [u16], Option<&u32>) -> Option<&'static str> =
    |s, sink, p, o| {
        sink(s.area());
        let n = p.len();
        if n == 3 && o == Some(&5) {
            Some("yes")
        } else {
            None
        }
    };

#[test]
fn fat_pointers_and_options() {
    let mut got = 0.0;
    let v = [1u16, 2, 3];
    let r = DYN.call(&Sq(3.0), &mut |a| got = a, &v[..] as *const [u16], Some(&5));
    assert_eq!((r, got), (Some("yes"), 9.0));
}

#[static_call]
static BOOLS: fn(u64) -> bool = |x| x > 5;
#[static_call]
static CHARS: fn(u32) -> char = |x| char::from_u32(x).unwrap_or('?');
#[static_call]
static SMALL: fn(u8, i8) -> i8 = |a, b| (a as i8).wrapping_add(b);

#[test]
fn small_results() {
    assert!(BOOLS.call(6));
    assert!(!BOOLS.call(1));
    assert_eq!(CHARS.call(0x1F600), '\u{1F600}');
    assert_eq!(SMALL.call(200, -1), -57);
}

static DROPS: AtomicUsize = AtomicUsize::new(0);
pub struct D(u64);
impl Drop for D {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}
pub struct PanicDrop;
impl Drop for PanicDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop panics");
        }
    }
}

#[static_call]
static TAKE: fn(D, D, &str, D) -> u64 = |a, b, s, c| {
    if s == "boom" {
        panic!("boom");
    }
    a.0 + b.0 + c.0
};

#[test]
fn values_dropped_once_even_when_the_target_panics() {
    DROPS.store(0, Ordering::SeqCst);
    assert_eq!(TAKE.call(D(1), D(2), "ok", D(3)), 6);
    assert_eq!(DROPS.load(Ordering::SeqCst), 3);
    let r = std::panic::catch_unwind(|| TAKE.call(D(1), D(2), "boom", D(3)));
    assert!(r.is_err());
    assert_eq!(DROPS.load(Ordering::SeqCst), 6);
}

#[static_call]
static DROP_PANICS: fn(PanicDrop, u64) -> u64 = |_p, x| x;

#[test]
fn a_drop_that_panics_in_the_target_reaches_the_caller() {
    let r = std::panic::catch_unwind(|| DROP_PANICS.call(PanicDrop, 4));
    assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"drop panics"));
}

#[static_call]
static RET_BIG: fn(u64) -> [u64; 32] = |x| [x; 32];
#[static_call]
static RET_STRING: fn(&str, String) -> (String, usize) = |a, b| (format!("{a}{b}"), b.len());

#[test]
fn big_results() {
    assert_eq!(RET_BIG.call(7), [7; 32]);
    assert_eq!(RET_STRING.call("a", "bc".into()), ("abc".to_string(), 2));
}

trait Scale {
    fn half(x: u64) -> u64;
}
struct S;
impl Scale for S {
    fn half(x: u64) -> u64 {
        x / 2
    }
}
#[static_call]
static HALF: fn(u64) -> u64 = <S as Scale>::half;

#[test]
fn trait_assoc_fn() {
    assert_eq!(HALF.call(8), 4);
}

#[static_call]
static UPDATE_IN_SIGNAL: fn(u64) -> u64 = |x| x + 1;

#[test]
fn updates_many_threads() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = UPDATE_IN_SIGNAL.call(10);
                    assert!(r == 11 || r == 20, "{r}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..300 {
        if i % 2 == 0 {
            UPDATE_IN_SIGNAL.update(|x| x * 2);
        } else {
            UPDATE_IN_SIGNAL.update(|x| x + 1);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
}
