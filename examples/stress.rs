//! Stress: callers on many threads judge every result while one thread
//! retargets the keys as fast as it can.
//!
//! ```sh
//! cargo run --release --example stress -- --threads 3 --seconds 10 --keys 4
//! cargo run --release --example stress -- --threads 2 --seconds 10 --keys 4 --far
//! cargo run --release --example stress -- --threads 3 --seconds 10 --keys 4 --branches
//! ```
//!
//! With `--branches`, the keys are static branches (`#[static_branch]`),
//! each with a `likely` and an `unlikely` site, walked through a fixed
//! pseudo-random sequence of values (repeats included) with `set`; every
//! few rounds all of them and the first call key change in one `batch`.
//! Callers judge each branch execution with the same epochs (and the call
//! key's sites as below).
//!
//! With `--far` (x86-64), the third target is a copy of `t3` on a page
//! mapped at least 4 GiB from the executable: a key in that state calls it
//! through its slot, one indirect call at each site (`SiteState::Indirect`),
//! so updates move sites between direct calls, the indirect form and the
//! no-target form.
//!
//! Each key has two call sites (two `#[inline(never)]` functions). The targets
//! return their own tag and echo the argument; the no-target state returns 0.
//! The updater walks every key through a fixed cycle of three targets and the
//! no-target state, and publishes an epoch per key: odd while an update of the
//! key is in progress, even once it returned. A caller reads the epoch before
//! and after each call; the result is a violation unless it is the state of
//! some epoch in between (the state an update in progress installs counts
//! from the moment it started). Every few rounds the updater retargets all keys
//! in one `batch`.
//!
//! Prints calls, updates per second, calls that overlapped an update, traps
//! emulated and rewound, violations. Exits 1 on a violation, 2 if a thread
//! panicked, 3 if the interesting path never ran (a run too short to prove
//! anything: on x86-64 no call met an `int3`; on aarch64, which writes no
//! `int3`, no call overlapped an update), 4 on bad arguments.

use static_call::{static_branch, static_call};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

type F = extern "C" fn(u64) -> u64;

const TAG_SHIFT: u32 = 48;
const ARG_MASK: u64 = (1 << TAG_SHIFT) - 1;

extern "C" fn t1(x: u64) -> u64 {
    (1 << TAG_SHIFT) | x
}
extern "C" fn t2(x: u64) -> u64 {
    (2 << TAG_SHIFT) | x
}
extern "C" fn t3(x: u64) -> u64 {
    (3 << TAG_SHIFT) | x
}

/// The state a key is in after `n` completed updates: the index of its target
/// given by [`target`], or 0 for no target. Every step changes the state; all four
/// states occur, in more than one order.
const CYCLE: [u8; 12] = [1, 2, 3, 0, 2, 1, 0, 3, 1, 0, 2, 3];
const NEAR: [Option<F>; 4] = [None, Some(t1), Some(t2), Some(t3)];

/// The far copy of `t3`, with `--far`.
static FAR_T3: std::sync::OnceLock<F> = std::sync::OnceLock::new();

/// The target of state `i` (0: none).
fn target(i: u8) -> Option<F> {
    match (i, FAR_T3.get()) {
        (3, Some(&f)) => Some(f),
        (i, _) => NEAR[i as usize],
    }
}

/// A copy of `t3` (`movabs rax, 3 << 48; or rax, rdi; ret`) on a page
/// mapped at least 4 GiB from this executable, read-execute (never
/// writable and executable at once), never unmapped.
#[cfg(target_arch = "x86_64")]
fn far_t3() -> F {
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(&(3u64 << TAG_SHIFT).to_le_bytes());
    code.extend_from_slice(&[0x48, 0x09, 0xf8, 0xc3]);
    let text = t3 as F as usize;
    for k in 4..64usize {
        let hint = (text & !0xfff).wrapping_add(k << 30);
        // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping; the page is
        // written while read-write, then made read-execute.
        unsafe {
            let p = libc::mmap(
                hint as *mut libc::c_void,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            if p == libc::MAP_FAILED || p as usize != hint {
                continue;
            }
            std::ptr::copy_nonoverlapping(code.as_ptr(), p.cast::<u8>(), code.len());
            assert_eq!(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC), 0);
            let f = std::mem::transmute::<*mut libc::c_void, F>(p);
            assert_eq!(f(5), t3(5));
            return f;
        }
    }
    panic!("no page 4..64 GiB away could be mapped");
}

#[cfg(not(target_arch = "x86_64"))]
fn far_t3() -> F {
    eprintln!("stress: --far maps x86-64 code");
    std::process::exit(4);
}

/// The state after `n` updates of key `k` (keys start at different points).
fn state(k: usize, n: u64) -> u8 {
    CYCLE[(n as usize + 3 * k) % CYCLE.len()]
}

/// What the sites, the epoch and the updater need of one key.
struct KeyOps {
    site_a: fn(u64) -> u64,
    site_b: fn(u64) -> u64,
    update: fn(Option<F>) -> Option<F>,
    add_to_batch: fn(&mut static_call::Batch, Option<F>),
    sites: fn() -> Vec<static_call::Site>,
}

macro_rules! keys {
    ($($m:ident),* $(,)?) => {
        $(
            mod $m {
                use super::*;
                // No target at first; `main` puts it in its epoch-0 state.
                #[static_call]
                static KEY: extern "C" fn(u64) -> u64;

                #[inline(never)]
                fn site_a(x: u64) -> u64 {
                    KEY.call(x)
                }
                #[inline(never)]
                fn site_b(x: u64) -> u64 {
                    // A different site, with a different argument shape.
                    match KEY.call(x ^ 0x5a5a) {
                        0 => 0,
                        r => r ^ 0x5a5a,
                    }
                }
                fn update(f: Option<F>) -> Option<F> {
                    match f {
                        Some(f) => KEY.update(f),
                        None => KEY.reset(),
                    }
                }
                fn add_to_batch(b: &mut static_call::Batch, f: Option<F>) {
                    match f {
                        Some(f) => b.update(&KEY, f),
                        None => b.reset(&KEY),
                    };
                }
                fn sites() -> Vec<static_call::Site> {
                    KEY.sites()
                }
                pub const OPS: KeyOps = KeyOps { site_a, site_b, update, add_to_batch, sites };
            }
        )*
        const ALL: &[KeyOps] = &[$($m::OPS),*];
    };
}

keys!(k0, k1, k2, k3, k4, k5, k6, k7);

/// What the callers and the updater need of one branch key (`--branches`).
struct BranchOps {
    likely: fn() -> bool,
    unlikely: fn() -> bool,
    set: fn(bool) -> bool,
    add_to_batch: fn(&mut static_call::Batch, bool),
    sites: fn() -> Vec<static_call::Site>,
}

macro_rules! branches {
    ($($m:ident = $n:literal),* $(,)?) => {
        $(
            mod $m {
                use super::*;
                #[static_branch]
                static KEY: bool = false;

                #[inline(never)]
                fn likely() -> bool {
                    std::hint::black_box($n);
                    if KEY.likely() {
                        std::hint::black_box(true)
                    } else {
                        std::hint::black_box(false)
                    }
                }
                #[inline(never)]
                fn unlikely() -> bool {
                    std::hint::black_box($n + 100);
                    if KEY.unlikely() {
                        std::hint::black_box(true)
                    } else {
                        std::hint::black_box(false)
                    }
                }
                fn set(v: bool) -> bool {
                    KEY.set(v)
                }
                fn add_to_batch(b: &mut static_call::Batch, v: bool) {
                    b.set(&KEY, v);
                }
                fn sites() -> Vec<static_call::Site> {
                    KEY.sites()
                }
                pub const OPS: BranchOps = BranchOps { likely, unlikely, set, add_to_batch, sites };
            }
        )*
        const BRANCHES: &[BranchOps] = &[$($m::OPS),*];
    };
}

branches!(b0 = 0, b1 = 1, b2 = 2, b3 = 3, b4 = 4, b5 = 5, b6 = 6, b7 = 7);

/// Per branch key: 2 * completed sets, plus 1 while a set is in progress.
static BRANCH_EPOCH: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// The value of branch key `k` after `n` completed sets (false at first).
fn branch_value(k: usize, n: u64) -> bool {
    n != 0 && (n.wrapping_add((k as u64) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63 == 1
}

/// Whether a branch execution that started after epoch `e0` and ended
/// before `e1` may have taken `r`.
fn judge_branch(k: usize, r: bool, e0: u64, e1: u64) -> bool {
    (e0 / 2..=e1.div_ceil(2)).any(|n| branch_value(k, n) == r)
}

fn branch_caller(id: usize, keys: usize) -> u64 {
    let mut calls = 0u64;
    let mut overlapped = 0u64;
    let mut x = 1 + id as u64 * 0x1_0000_0001;
    while !STOP.load(SeqCst) {
        for (k, ops) in BRANCHES[..keys].iter().enumerate() {
            for site in [ops.likely, ops.unlikely] {
                let e0 = BRANCH_EPOCH[k].load(SeqCst);
                let r = site();
                std::sync::atomic::fence(SeqCst);
                let e1 = BRANCH_EPOCH[k].load(SeqCst);
                calls += 1;
                if e0 % 2 == 1 || e1 != e0 {
                    overlapped += 1;
                }
                if !judge_branch(k, r, e0, e1) {
                    violation(format_args!("thread {id} branch {k}: took {r}, epochs {e0}..{e1}"));
                }
            }
        }
        // The call key that the batches retarget.
        for site in [ALL[0].site_a, ALL[0].site_b] {
            x = (x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) & ARG_MASK) | 1;
            let e0 = EPOCH[0].load(SeqCst);
            let r = site(x);
            let e1 = EPOCH[0].load(SeqCst);
            calls += 1;
            if e0 % 2 == 1 || e1 != e0 {
                overlapped += 1;
            }
            if !judge(0, x, r, e0, e1) {
                violation(format_args!("thread {id} key 0: f({x:#x}) = {r:#x}, epochs {e0}..{e1}"));
            }
        }
    }
    OVERLAPPED.fetch_add(overlapped, SeqCst);
    calls
}

/// The updater of `--branches`: sets until `deadline`; returns the sets
/// and updates made.
fn branch_updater(keys: usize, deadline: Instant) -> u64 {
    let mut sets = 0u64;
    let mut done = [0u64; 8];
    let mut call_done = 0u64;
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        if round.is_multiple_of(8) {
            for (k, e) in BRANCH_EPOCH[..keys].iter().enumerate() {
                e.store(2 * done[k] + 1, SeqCst);
            }
            EPOCH[0].store(2 * call_done + 1, SeqCst);
            static_call::batch(|b| {
                for (k, ops) in BRANCHES[..keys].iter().enumerate() {
                    (ops.add_to_batch)(b, branch_value(k, done[k] + 1));
                }
                (ALL[0].add_to_batch)(b, target(state(0, call_done + 1)));
            })
            .expect("batch");
            for (k, e) in BRANCH_EPOCH[..keys].iter().enumerate() {
                done[k] += 1;
                e.store(2 * done[k], SeqCst);
            }
            call_done += 1;
            EPOCH[0].store(2 * call_done, SeqCst);
            sets += keys as u64 + 1;
        } else {
            let k = (round as usize) % keys;
            let ops = &BRANCHES[k];
            let want = branch_value(k, done[k] + 1);
            BRANCH_EPOCH[k].store(2 * done[k] + 1, SeqCst);
            let old = (ops.set)(want);
            done[k] += 1;
            BRANCH_EPOCH[k].store(2 * done[k], SeqCst);
            sets += 1;
            if old != branch_value(k, done[k] - 1) {
                violation(format_args!("set of branch {k} returned {old}"));
            }
            // Once set returned, this thread's executions take the new branch.
            if (ops.likely)() != want || (ops.unlikely)() != want {
                violation(format_args!("branch {k} after set({want}) returned"));
            }
        }
    }
    sets
}

/// Per key: 2 * completed updates, plus 1 while an update is in progress.
static EPOCH: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static STOP: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicU64 = AtomicU64::new(0);
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

struct Args {
    threads: usize,
    seconds: f64,
    keys: usize,
    far: bool,
    branches: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: stress [--threads N (default 2)] [--seconds S (default 5)] [--keys K (1..=8, default 2)] [--far] \
         [--branches]"
    );
    std::process::exit(4);
}

fn parse_args() -> Args {
    let mut a = Args { threads: 2, seconds: 5.0, keys: 2, far: false, branches: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--far" {
            a.far = true;
            continue;
        }
        if flag == "--branches" {
            a.branches = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--threads" => a.threads = value.parse().unwrap_or_else(|_| usage()),
            "--seconds" => a.seconds = value.parse().unwrap_or_else(|_| usage()),
            "--keys" => a.keys = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.threads == 0 || a.keys == 0 || a.keys > ALL.len() || a.seconds.is_nan() || a.seconds <= 0.0 {
        usage();
    }
    a
}

/// Whether `r`, returned for argument `x` by a call that started after the
/// epoch was `e0` and ended before it was `e1`, is the result of a state the
/// key was in (or was being updated to) in between.
fn judge(k: usize, x: u64, r: u64, e0: u64, e1: u64) -> bool {
    let s = if r == 0 {
        0
    } else if r & ARG_MASK == x {
        (r >> TAG_SHIFT) as u8
    } else {
        return false;
    };
    // Completed updates when the call started, and updates started (so
    // possibly visible) when it ended.
    let (first, last) = (e0 / 2, e1.div_ceil(2));
    if last - first >= CYCLE.len() as u64 {
        return true; // every state occurred in the window
    }
    (first..=last).any(|n| state(k, n) == s)
}

/// Counts a violation; prints the first few.
fn violation(what: std::fmt::Arguments) {
    if VIOLATIONS.fetch_add(1, SeqCst) < 10 {
        eprintln!("VIOLATION: {what}");
    }
}

fn caller(id: usize, keys: usize) -> u64 {
    let mut calls = 0u64;
    let mut overlapped = 0u64;
    let mut x = 1 + id as u64 * 0x1_0000_0001;
    while !STOP.load(SeqCst) {
        for (k, ops) in ALL[..keys].iter().enumerate() {
            for site in [ops.site_a, ops.site_b] {
                x = (x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) & ARG_MASK) | 1;
                let e0 = EPOCH[k].load(SeqCst);
                let r = site(x);
                let e1 = EPOCH[k].load(SeqCst);
                calls += 1;
                if e0 % 2 == 1 || e1 != e0 {
                    overlapped += 1;
                }
                if !judge(k, x, r, e0, e1) {
                    violation(format_args!(
                        "thread {id} key {k}: f({x:#x}) = {r:#x}, epochs {e0}..{e1} allow states {:?}",
                        (e0 / 2..=e1.div_ceil(2)).map(|n| state(k, n)).collect::<Vec<_>>()
                    ));
                }
            }
        }
    }
    OVERLAPPED.fetch_add(overlapped, SeqCst);
    calls
}

/// Calls during which an update of their key was in progress.
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

fn main() {
    let args = parse_args();
    static_call::init().expect("static_call::init");
    if args.far {
        let _ = FAR_T3.set(far_t3());
    }
    // Epoch 0: put every key in its initial state (keys start without target).
    for (k, ops) in ALL.iter().enumerate() {
        (ops.update)(target(state(k, 0)));
    }
    let start_stats = static_call::stats();
    let callers: Vec<_> = (0..args.threads)
        .map(|id| {
            std::thread::Builder::new()
                .name(format!("caller-{id}"))
                .spawn(move || if args.branches { branch_caller(id, args.keys) } else { caller(id, args.keys) })
                .expect("spawn caller")
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let t0 = Instant::now();
    let mut updates = 0u64;
    let mut done = [0u64; 8];
    let mut round = 0u64;
    let updater = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if args.branches {
            updates = branch_updater(args.keys, deadline);
            return;
        }
        while Instant::now() < deadline {
            round += 1;
            if round.is_multiple_of(8) {
                // All keys in one batch.
                for (k, e) in EPOCH[..args.keys].iter().enumerate() {
                    e.store(2 * done[k] + 1, SeqCst);
                }
                static_call::batch(|b| {
                    for (k, ops) in ALL[..args.keys].iter().enumerate() {
                        (ops.add_to_batch)(b, target(state(k, done[k] + 1)));
                    }
                })
                .expect("batch");
                for (k, e) in EPOCH[..args.keys].iter().enumerate() {
                    done[k] += 1;
                    e.store(2 * done[k], SeqCst);
                }
                updates += args.keys as u64;
            } else {
                let k = (round as usize) % args.keys;
                let ops = &ALL[k];
                let want = state(k, done[k] + 1);
                EPOCH[k].store(2 * done[k] + 1, SeqCst);
                let old = (ops.update)(target(want));
                done[k] += 1;
                EPOCH[k].store(2 * done[k], SeqCst);
                updates += 1;
                let prev = target(state(k, done[k] - 1));
                // Compared by behaviour: the same function may have several addresses.
                if old.map(|f| f(1)) != prev.map(|f| f(1)) {
                    violation(format_args!("update of key {k} returned {old:?}, expected {prev:?}"));
                }
                // Once update returned, this thread's calls reach the new state.
                let r = (ops.site_a)(3);
                let expect = target(want).map_or(0, |f| f(3));
                if r != expect {
                    violation(format_args!("key {k} after update: {r:#x}, expected {expect:#x}"));
                }
            }
        }
    }));
    let elapsed = t0.elapsed().as_secs_f64();
    STOP.store(true, SeqCst);
    let mut crashed = updater.is_err() as u64;
    for c in callers {
        match c.join() {
            Ok(n) => {
                CALLS.fetch_add(n, SeqCst);
            }
            Err(_) => crashed += 1,
        }
    }
    let s = static_call::stats();
    let emulated = s.traps_emulated - start_stats.traps_emulated;
    let rewound = s.traps_rewound - start_stats.traps_rewound;
    let violations = VIOLATIONS.load(SeqCst);
    let not_direct: usize = ALL[..args.keys]
        .iter()
        .flat_map(|o| (o.sites)())
        .filter(|s| {
            let far = args.far && s.state() == static_call::SiteState::Indirect;
            !far && !matches!(s.state(), static_call::SiteState::Direct | static_call::SiteState::Zero)
        })
        .count()
        + if args.branches {
            BRANCHES[..args.keys]
                .iter()
                .flat_map(|o| (o.sites)())
                .filter(|s| !matches!(s.state(), static_call::SiteState::Taken | static_call::SiteState::NotTaken))
                .count()
        } else {
            0
        };
    let indirect = static_call::__private::indirect_traps();
    let wx = std::fs::read_to_string("/proc/self/maps")
        .map(|m| {
            m.lines()
                .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('w') && p.contains('x')))
                .count()
        })
        .unwrap_or(0);
    let (keys, calls, updates_word, during) = if args.branches {
        ("branch keys", "executions", "sets", "a set")
    } else {
        ("keys", "calls", "updates", "an update")
    };
    println!(
        "stress: {} threads, {} {keys}, {elapsed:.1} s: {} {calls} ({} during {during}), {updates} {updates_word} \
         ({:.0}/s), \
         traps emulated {emulated} ({} as an indirect call), rewound {rewound} ({} onto one), violations \
         {violations}, crashed threads {crashed}, sites not patched {not_direct}, W+X mappings {wx}",
        args.threads,
        args.keys,
        CALLS.load(SeqCst),
        OVERLAPPED.load(SeqCst),
        updates as f64 / elapsed,
        indirect.0,
        indirect.1,
    );
    if violations > 0 || not_direct > 0 || wx > 0 {
        std::process::exit(1);
    }
    if crashed > 0 {
        std::process::exit(2);
    }
    if cfg!(target_arch = "x86_64") && (emulated == 0 || rewound == 0) {
        // Rewinds are the path the two-sync protocol relies on (a core that
        // still executes a stale `int3` after the last step): it must run.
        eprintln!(
            "stress: the int3 path never ran (emulated {emulated}, rewound {rewound}): run longer or with more threads"
        );
        std::process::exit(3);
    }
    if OVERLAPPED.load(SeqCst) == 0 {
        eprintln!("stress: no call overlapped an update: run longer or with more threads");
        std::process::exit(3);
    }
}
