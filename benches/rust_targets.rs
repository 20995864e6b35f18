//! Keys of Rust `fn` types (DESIGN §8) against direct calls of the same
//! Rust functions: a dependent loop (each call takes the previous result).
//!
//! ```text
//! RUSTFLAGS="-C llvm-args=-align-loops=64" cargo bench -p static_call_benches --bench rust_targets -- --table
//! RUSTFLAGS="-C llvm-args=-align-loops=64" cargo bench -p static_call_benches --bench rust_targets
//! ```
//!
//! `--table` interleaves the cases (31 rounds, each case once per round)
//! and prints the medians and their ratios to the direct call; without it,
//! criterion's group `rust`. Every figure is nanoseconds per call.

use criterion::Criterion;
use static_call::static_call;
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// Calls per timed loop.
const N: u64 = 4096;

/// The target a key tail-jumps to: not inlined into its shim.
#[inline(never)]
fn step(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7) ^ 1
}

/// The same, inlinable: the key's shim becomes this function.
fn step_inline(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7) ^ 1
}

#[inline(never)]
fn count(s: &str) -> usize {
    s.len() ^ (s.as_bytes()[0] as usize)
}

#[inline(never)]
fn maybe_panic(x: u64) -> u64 {
    if x != u64::MAX {
        std::panic::panic_any(x);
    }
    x
}

/// A target that may panic (not on the inputs measured): its shim keeps a
/// catch frame and calls it.
#[inline(never)]
fn may_panic(x: u64) -> u64 {
    if x == 0 {
        panic!("zero");
    }
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7) | 1
}

#[static_call]
static MAY_PANIC: fn(u64) -> u64 = may_panic;

/// The same, inlinable: the shim is its body and a landing pad.
fn may_panic_inline(x: u64) -> u64 {
    if x == 0 {
        panic!("zero");
    }
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7) | 1
}

#[static_call]
static MAY_PANIC_INLINE: fn(u64) -> u64 = may_panic_inline;

#[inline(never)]
fn key_may_inline(mut x: u64) -> u64 {
    for _ in 0..N {
        x = MAY_PANIC_INLINE.call(x);
    }
    x
}

#[inline(never)]
fn direct_may(mut x: u64) -> u64 {
    for _ in 0..N {
        x = may_panic(x);
    }
    x
}

#[inline(never)]
fn key_may(mut x: u64) -> u64 {
    for _ in 0..N {
        x = MAY_PANIC.call(x);
    }
    x
}

extern "C" fn step_c(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7) ^ 1
}

#[static_call]
static STEP: fn(u64) -> u64 = step;

#[static_call]
static STEP_INLINE: fn(u64) -> u64 = step_inline;

#[static_call]
static COUNT: fn(&str) -> usize = count;

#[static_call]
static PANICS: fn(u64) -> u64 = maybe_panic;

#[static_call]
static STEP_C: extern "C" fn(u64) -> u64 = step_c;

#[inline(never)]
fn direct(mut x: u64) -> u64 {
    for _ in 0..N {
        x = step(x);
    }
    x
}

#[inline(never)]
fn key(mut x: u64) -> u64 {
    for _ in 0..N {
        x = STEP.call(x);
    }
    x
}

#[inline(never)]
fn direct_inline(mut x: u64) -> u64 {
    for _ in 0..N {
        x = black_box(step_inline(x));
    }
    x
}

#[inline(never)]
fn key_inline(mut x: u64) -> u64 {
    for _ in 0..N {
        x = black_box(STEP_INLINE.call(x));
    }
    x
}

#[inline(never)]
fn c_key(mut x: u64) -> u64 {
    for _ in 0..N {
        x = STEP_C.call(x);
    }
    x
}

const WORDS: [&str; 4] = ["alpha", "be", "gamma delta", "e"];

#[inline(never)]
fn direct_str(mut x: u64) -> u64 {
    for _ in 0..N {
        x = x.wrapping_add(count(WORDS[(x & 3) as usize]) as u64);
    }
    x
}

#[inline(never)]
fn key_str(mut x: u64) -> u64 {
    for _ in 0..N {
        x = x.wrapping_add(COUNT.call(WORDS[(x & 3) as usize]) as u64);
    }
    x
}

/// Panics per loop (each caught): unwinding dominates, so fewer.
const P: u64 = 64;

#[inline(never)]
fn direct_panic(mut x: u64) -> u64 {
    for _ in 0..P {
        x = x.wrapping_add(
            catch_unwind(AssertUnwindSafe(|| maybe_panic(black_box(x))))
                .unwrap_err()
                .downcast::<u64>()
                .map_or(0, |b| *b)
                | 1,
        );
    }
    x
}

#[inline(never)]
fn key_panic(mut x: u64) -> u64 {
    for _ in 0..P {
        x = x.wrapping_add(
            catch_unwind(AssertUnwindSafe(|| PANICS.call(black_box(x))))
                .unwrap_err()
                .downcast::<u64>()
                .map_or(0, |b| *b)
                | 1,
        );
    }
    x
}

type Case = (&'static str, fn(u64) -> u64, u64);

const CASES: [Case; 12] = [
    ("direct fn(u64) -> u64", direct, N),
    ("key fn(u64) -> u64 (shim: tail jump)", key, N),
    ("extern \"C\" key, same fn", c_key, N),
    ("direct, inlinable target", direct_inline, N),
    ("key, target inlined in its shim", key_inline, N),
    ("direct fn(&str) -> usize", direct_str, N),
    ("key fn(&str) -> usize", key_str, N),
    ("direct fn that may panic (does not)", direct_may, N),
    ("key, target may panic (does not)", key_may, N),
    ("key, same target inlinable", key_may_inline, N),
    ("direct call that panics (caught)", direct_panic, P),
    ("key call that panics (caught)", key_panic, P),
];

fn time(f: fn(u64) -> u64, per: u64) -> f64 {
    let t = Instant::now();
    black_box(f(black_box(1)));
    t.elapsed().as_secs_f64() * 1e9 / per as f64
}

/// Patches the sites (init also threads a shim that only tail-jumps: its
/// sites then call the target itself).
fn setup() {
    std::panic::set_hook(Box::new(|_| {}));
    static_call::init().expect("patching");
}

fn table() {
    setup();
    let rounds = 31;
    let mut samples = vec![Vec::new(); CASES.len()];
    for _ in 0..rounds {
        for (i, (_, f, per)) in CASES.iter().enumerate() {
            for _ in 0..3 {
                time(*f, *per);
            }
            let reps = if *per == P { 4 } else { 64 };
            let mut best = f64::MAX;
            for _ in 0..reps {
                best = best.min(time(*f, *per));
            }
            samples[i].push(best);
        }
    }
    let med: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            s[s.len() / 2]
        })
        .collect();
    println!("{:<40} {:>10} {:>8}", "case", "ns/call", "ratio");
    let base = [0, 0, 0, 3, 3, 5, 5, 7, 7, 7, 10, 10];
    for (i, (name, _, _)) in CASES.iter().enumerate() {
        println!("{:<40} {:>10.3} {:>8.3}", name, med[i], med[i] / med[base[i]]);
    }
    let sites = STEP.sites();
    println!("STEP sites: {:?}", sites.iter().map(|s| s.state()).collect::<Vec<_>>());
}

fn bench(c: &mut Criterion) {
    setup();
    let mut g = c.benchmark_group("rust");
    g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (name, f, per) in CASES {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(f(black_box(1)));
                }
                t.elapsed() / per as u32
            })
        });
    }
    g.finish();
}

fn main() {
    if std::env::args().any(|a| a == "--table") {
        table();
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
