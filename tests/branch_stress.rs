//! Stress: several threads `set` the same static branches (one key at a
//! time, and in batches that also retarget a call key) while other threads
//! run every site; every execution and every `set`'s return value is judged.
//!
//! Keys `A` and `B` (and the call key `K`) walk through fixed pseudo-random
//! sequences, so that the value after `n` completed sets is known
//! ([`value`]; repeats included: a `set` to the value the key has). Their
//! setters serialize their own bookkeeping with one mutex per key: holding
//! it, a setter marks the key's sequence odd, makes the next step (`set`,
//! or a `batch` of all three keys holding all three mutexes), checks the
//! returned previous value, marks the sequence even, runs a site itself
//! (once `set` returned it must see the new value) and lets go. A reader
//! reads the sequence before and after each execution: with no `set` in
//! between (the same even number) the execution must take the branch of
//! that value; overlapped, the branch of a value the key had or was being
//! set to in that window.
//!
//! Key `R` is set by the same threads with no mutex at all: truly
//! concurrent `set`s of one key. An execution during which no `set` of `R`
//! was in flight must take the branch `R.get()` showed just before it; at
//! the end, the values `set` returned must be the values set, minus the
//! last (`R.get()`), plus the initial one (the sets form one chain).
//!
//! On x86-64 the `int3` path must have run (`traps_emulated > 0`); on the
//! portable backend (relaxed loads) the same judge holds, with no sites.
mod common;

use common::{t1, t2, t3};
use static_call::{static_branch, static_call, BranchKey, SiteState};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering::*};
use std::sync::Mutex;

#[static_branch]
static A: bool = false;
#[static_branch]
static B: bool = true;
#[static_branch]
static R: bool = false;

type F = extern "C" fn(u64) -> u64;

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

const TARGETS: [F; 3] = [t1, t2, t3];

/// The value of key `k` (0: `A`, 1: `B`) after `n` completed sets.
fn value(k: usize, n: u64) -> bool {
    if n == 0 {
        return k == 1;
    }
    (n.wrapping_add((k as u64) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63 == 1
}

/// The index in [`TARGETS`] of `K`'s target after `n` completed updates.
fn target(n: u64) -> usize {
    if n == 0 {
        return 0;
    }
    ((n.wrapping_mul(0xd1b5_4a32_d192_ed03) >> 32) % 3) as usize
}

macro_rules! branch_sites {
    ($key:ident: $likely:ident = $a:literal, $unlikely:ident = $b:literal) => {
        #[inline(never)]
        fn $likely() -> bool {
            std::hint::black_box($a);
            if $key.likely() {
                std::hint::black_box(true)
            } else {
                std::hint::black_box(false)
            }
        }
        #[inline(never)]
        fn $unlikely() -> bool {
            std::hint::black_box($b);
            if $key.unlikely() {
                std::hint::black_box(true)
            } else {
                std::hint::black_box(false)
            }
        }
    };
}
branch_sites!(A: a_likely = 1, a_unlikely = 2);
branch_sites!(B: b_likely = 3, b_unlikely = 4);
branch_sites!(R: r_likely = 5, r_unlikely = 6);

#[inline(never)]
fn k_site(x: u64) -> u64 {
    K.call(x)
}

/// Per serialized key (0: `A`, 1: `B`, 2: `K`): its setters' mutex, and
/// 2 * completed sets, plus 1 while one is in progress.
static LOCKS: [Mutex<()>; 3] = [const { Mutex::new(()) }; 3];
static SEQ: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// `R`: sets in flight, and sets completed.
static R_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
static R_DONE: AtomicU64 = AtomicU64::new(0);
/// Of `R`'s sets: how many set `true`, how many returned `true`.
static R_SET_TRUE: AtomicU64 = AtomicU64::new(0);
static R_WAS_TRUE: AtomicU64 = AtomicU64::new(0);

static STOP: AtomicBool = AtomicBool::new(false);
static RUNS: AtomicU64 = AtomicU64::new(0);
static STRICT: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);
static OPS: AtomicU64 = AtomicU64::new(0);
static BATCHES: AtomicU64 = AtomicU64::new(0);

fn violation(what: std::fmt::Arguments) {
    if VIOLATIONS.fetch_add(1, SeqCst) < 10 {
        eprintln!("VIOLATION: {what}");
    }
}

fn branch(k: usize) -> &'static BranchKey {
    if k == 0 {
        &A
    } else {
        &B
    }
}
const SITES: [[fn() -> bool; 2]; 2] = [[a_likely, a_unlikely], [b_likely, b_unlikely]];

/// Judges one execution of a site of serialized key `k` (0, 1: branches;
/// 2: the call key, whose result `r` says which target ran).
fn judge(k: usize, s0: u64, s1: u64, ok: impl Fn(u64) -> bool, what: std::fmt::Arguments) {
    if s0 == s1 && s0.is_multiple_of(2) {
        STRICT[k].fetch_add(1, Relaxed);
        if !ok(s0 / 2) {
            violation(format_args!("{what}: no set overlapped, after {} sets", s0 / 2));
        }
        return;
    }
    OVERLAPPED.fetch_add(1, Relaxed);
    let (first, last) = (s0 / 2, s1.div_ceil(2));
    if !(first..=last).any(ok) {
        violation(format_args!("{what}: sets {first}..={last} overlapped"));
    }
}

fn reader(id: u64) {
    let mut i = id;
    while !STOP.load(SeqCst) {
        i += 1;
        for k in 0..2 {
            let site = SITES[k][(i % 2) as usize];
            let s0 = SEQ[k].load(SeqCst);
            let r = site();
            // Orders the portable backend's relaxed load before the read below.
            fence(SeqCst);
            let s1 = SEQ[k].load(SeqCst);
            judge(k, s0, s1, |n| value(k, n) == r, format_args!("key {k} site {} took {r}", i % 2));
        }
        let x = i & 0xffff;
        let s0 = SEQ[2].load(SeqCst);
        let r = k_site(x);
        let s1 = SEQ[2].load(SeqCst);
        judge(2, s0, s1, |n| TARGETS[target(n)](x) == r, format_args!("K({x}) = {r:#x}"));

        // R: quiescent if no set was in flight at either end and none
        // completed in between.
        let site = if i.is_multiple_of(2) { r_likely } else { r_unlikely };
        let d0 = R_DONE.load(SeqCst);
        let f0 = R_IN_FLIGHT.load(SeqCst);
        let g = R.get();
        let r = site();
        fence(SeqCst);
        let f1 = R_IN_FLIGHT.load(SeqCst);
        let d1 = R_DONE.load(SeqCst);
        if f0 == 0 && f1 == 0 && d0 == d1 {
            R_STRICT.fetch_add(1, Relaxed);
            if r != g {
                violation(format_args!("R: no set in flight, get() {g}, the site took {r}"));
            }
        }
        RUNS.fetch_add(1, SeqCst);
    }
}

static R_STRICT: AtomicU64 = AtomicU64::new(0);

/// One step of serialized key `k` (0, 1), holding its mutex.
fn set_one(k: usize) {
    let _g = LOCKS[k].lock().unwrap();
    let n = SEQ[k].load(SeqCst) / 2;
    SEQ[k].store(2 * n + 1, SeqCst);
    let want = value(k, n + 1);
    let old = branch(k).set(want);
    SEQ[k].store(2 * n + 2, SeqCst);
    if old != value(k, n) {
        violation(format_args!("key {k}: set returned {old}, expected {}", value(k, n)));
    }
    // Once `set` returned, this thread's executions take the new branch.
    for site in SITES[k] {
        if site() != want {
            violation(format_args!("key {k}: after set({want}) returned, a site did not take its branch"));
        }
    }
    if branch(k).get() != want {
        violation(format_args!("key {k}: get() after set({want})"));
    }
}

/// One step of all three serialized keys in one batch, holding all three
/// mutexes (always taken in this order).
fn set_batch() {
    let _g: Vec<_> = LOCKS.iter().map(|l| l.lock().unwrap()).collect();
    let n: Vec<u64> = SEQ.iter().map(|s| s.load(SeqCst) / 2).collect();
    for (s, n) in SEQ.iter().zip(&n) {
        s.store(2 * n + 1, SeqCst);
    }
    static_call::batch(|b| {
        b.set(&A, value(0, n[0] + 1));
        b.update(&K, TARGETS[target(n[2] + 1)]);
        b.set(&B, value(1, n[1] + 1));
    })
    .expect("batch");
    for (s, n) in SEQ.iter().zip(&n) {
        s.store(2 * n + 2, SeqCst);
    }
    for k in 0..2 {
        let want = value(k, n[k] + 1);
        if SITES[k].iter().any(|site| site() != want) || branch(k).get() != want {
            violation(format_args!("key {k}: after the batch returned, not {want}"));
        }
    }
    if k_site(5) != TARGETS[target(n[2] + 1)](5) {
        violation(format_args!("K after the batch returned"));
    }
    BATCHES.fetch_add(1, Relaxed);
}

/// A set of `R`, with nothing but the library serializing it.
fn set_racing(v: bool) {
    R_IN_FLIGHT.fetch_add(1, SeqCst);
    let old = R.set(v);
    R_DONE.fetch_add(1, SeqCst);
    R_IN_FLIGHT.fetch_sub(1, SeqCst);
    R_SET_TRUE.fetch_add(u64::from(v), SeqCst);
    R_WAS_TRUE.fetch_add(u64::from(old), SeqCst);
}

/// Operations per setter thread; more (up to 20 times) on x86-64 until an
/// execution met an `int3`.
const MIN_OPS: u64 = if cfg!(target_arch = "aarch64") { 100 } else { 400 };

fn setter(id: u64) {
    let mut x = 0x2545_f491_4f6c_dd1d_u64.wrapping_mul(id + 1);
    let need_trap = cfg!(target_arch = "x86_64") && matches!(static_call::mode(), static_call::Mode::Patching(_));
    let mut ops = 0u64;
    while ops < MIN_OPS || (need_trap && static_call::stats().traps_emulated == 0 && ops < 20 * MIN_OPS) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 10 {
            0..=3 => set_one(0),
            4..=6 => set_one(1),
            7 => set_batch(),
            _ => set_racing(x & (1 << 20) != 0),
        }
        ops += 1;
        OPS.fetch_add(1, Relaxed);
        // Let the readers run between steps (no sleeping: count runs).
        let r = RUNS.load(SeqCst);
        while RUNS.load(SeqCst) < r + 10 {
            std::thread::yield_now();
        }
    }
}

#[test]
fn several_setters_and_batches_while_every_site_runs() {
    let _ = static_call::init();
    let readers: Vec<_> = (0..3).map(|id| std::thread::spawn(move || reader(id))).collect();
    while RUNS.load(SeqCst) < 100 {
        std::thread::yield_now();
    }
    let setters: Vec<_> = (0..3).map(|id| std::thread::spawn(move || setter(id))).collect();
    for s in setters {
        s.join().expect("a setter panicked");
    }
    STOP.store(true, SeqCst);
    for r in readers {
        r.join().expect("a reader panicked");
    }
    let s = static_call::stats();
    eprintln!(
        "{} ops ({} batches), {} reader rounds, strict A {} B {} K {} R {}, overlapped {}, violations {}; traps \
         emulated {} rewound {}, branch sites patched {}; mode {:?}",
        OPS.load(SeqCst),
        BATCHES.load(SeqCst),
        RUNS.load(SeqCst),
        STRICT[0].load(SeqCst),
        STRICT[1].load(SeqCst),
        STRICT[2].load(SeqCst),
        R_STRICT.load(SeqCst),
        OVERLAPPED.load(SeqCst),
        VIOLATIONS.load(SeqCst),
        s.traps_emulated,
        s.traps_rewound,
        s.branch_sites_patched,
        static_call::mode()
    );
    assert_eq!(VIOLATIONS.load(SeqCst), 0, "executions or set results the keys' histories do not allow");

    // The keys end where their histories say.
    for k in 0..2 {
        let n = SEQ[k].load(SeqCst) / 2;
        assert!(n > 0, "key {k} was never set");
        assert_eq!(branch(k).get(), value(k, n));
        for site in SITES[k] {
            assert_eq!(site(), value(k, n));
        }
    }
    assert_eq!(k_site(9), TARGETS[target(SEQ[2].load(SeqCst) / 2)](9));
    // R's sets formed one chain: every value set but the last was returned
    // by the next set, and the first set returned the initial value.
    let (set_true, was_true) = (R_SET_TRUE.load(SeqCst), R_WAS_TRUE.load(SeqCst));
    assert!(R_DONE.load(SeqCst) > 0);
    assert_eq!(was_true, set_true - u64::from(R.get()), "R's set results do not chain (initial false)");
    assert_eq!(r_likely(), R.get());
    assert_eq!(r_unlikely(), R.get());

    // Each judge ran, strictly and overlapped.
    for (k, name) in ["A", "B", "K"].iter().enumerate() {
        assert!(STRICT[k].load(SeqCst) > 0, "no execution of {name} was judged strictly");
    }
    assert!(R_STRICT.load(SeqCst) > 0, "no execution of R was judged strictly");
    assert!(BATCHES.load(SeqCst) > 0);
    assert!(OVERLAPPED.load(SeqCst) > 0, "no execution overlapped a set");

    if matches!(static_call::mode(), static_call::Mode::Patching(_)) {
        // One `likely` and one `unlikely` site per key: whatever the
        // value, one jumps and the other does not.
        for key in [&*A, &*B, &*R] {
            let states: Vec<_> = key.sites().iter().map(|s| s.state()).collect();
            assert_eq!(states.len(), 2, "{states:?}");
            assert!(states.contains(&SiteState::Taken) && states.contains(&SiteState::NotTaken), "{states:?}");
        }
        assert!(s.branch_sites_patched > 0);
        if cfg!(target_arch = "x86_64") {
            assert!(s.traps_emulated > 0, "no execution met an int3: the interesting path did not run");
        }
    }
}
