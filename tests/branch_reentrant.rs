//! `set` from inside a branch's own blocks (DESIGN 2.2: an update from
//! inside a target neither deadlocks nor corrupts text; here the "target"
//! is the code a site jumped to).
//!
//! One thread first: the taken `unlikely` block sets its key false (the
//! very first `set` of the process, before `init()`, so that it
//! initializes and patches the site the thread just jumped from); the
//! out-of-line `else` of a `likely` site sets its key true; the in-line
//! block of a `likely` site sets it false; a block sets its key and a call
//! key in one `batch`; a block sets another branch and runs that branch's
//! site in the same block. Each `set` returns the value that made the site
//! jump, and the next execution takes the new branch.
//!
//! Then several threads at once run sites of one key whose blocks set that
//! key (the `unlikely` block clears it, the `likely` site's `else` sets
//! it), while another thread sets it too: nothing deadlocks, an execution
//! during which no `set` was in flight takes the branch `get()` showed
//! just before it, and the values `set` returned chain (every value set
//! but the last was returned by the next `set`, the first returned the
//! initial value). On x86-64 the `int3` path must have run.
use static_call::{static_branch, static_call, SiteState};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering::*};

#[static_branch]
static A: bool = true;
#[static_branch]
static B: bool = false;
#[static_branch]
static C: bool = false;
/// The key of the concurrent part.
#[static_branch]
static S: bool = false;

extern "C" fn one(x: u64) -> u64 {
    x + 1
}
extern "C" fn two(x: u64) -> u64 {
    x + 2
}
#[static_call]
static K: extern "C" fn(u64) -> u64 = one;

/// An `unlikely` site whose taken block sets its key false: returns what
/// that `set` returned, or `None` if the site did not jump.
#[inline(never)]
fn unlikely_clears() -> Option<bool> {
    std::hint::black_box(1);
    if A.unlikely() {
        Some(A.set(false))
    } else {
        None
    }
}

/// A `likely` site whose out-of-line `else` sets its key true, and whose
/// in-line block sets it false: returns (the value it saw, what its `set`
/// returned).
#[inline(never)]
fn likely_flips() -> (bool, bool) {
    std::hint::black_box(2);
    if B.likely() {
        (true, B.set(false))
    } else {
        (false, B.set(true))
    }
}

/// A block that sets its key and retargets a call key in one batch.
#[inline(never)]
fn batch_in_block() -> bool {
    std::hint::black_box(3);
    if A.unlikely() {
        static_call::batch(|b| {
            b.set(&A, false);
            b.update(&K, two);
        })
        .expect("batch from a branch block");
        true
    } else {
        false
    }
}

#[inline(never)]
fn c_site() -> bool {
    std::hint::black_box(4);
    C.unlikely()
}

/// A block that sets another branch and runs its site there.
#[inline(never)]
fn other_in_block() -> Option<bool> {
    std::hint::black_box(5);
    if A.unlikely() {
        let was = C.set(!C.get());
        assert_eq!(c_site(), !was, "the other branch's site, run from inside the block");
        Some(c_site())
    } else {
        None
    }
}

#[inline(never)]
fn k_site(x: u64) -> u64 {
    K.call(x)
}

/// `S`: sets in flight and completed; of its sets, how many set `true` and
/// how many returned `true`.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
static SET_TRUE: AtomicU64 = AtomicU64::new(0);
static WAS_TRUE: AtomicU64 = AtomicU64::new(0);
static STRICT: AtomicU64 = AtomicU64::new(0);
static WRONG: AtomicU64 = AtomicU64::new(0);
static BLOCK_SETS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

fn set_s(v: bool) -> bool {
    IN_FLIGHT.fetch_add(1, SeqCst);
    let old = S.set(v);
    DONE.fetch_add(1, SeqCst);
    IN_FLIGHT.fetch_sub(1, SeqCst);
    SET_TRUE.fetch_add(u64::from(v), SeqCst);
    WAS_TRUE.fetch_add(u64::from(old), SeqCst);
    old
}

/// An `unlikely` site of `S` whose block clears `S`; returns the value the
/// site saw.
#[inline(never)]
fn s_unlikely_clears() -> bool {
    std::hint::black_box(6);
    if S.unlikely() {
        set_s(false);
        BLOCK_SETS.fetch_add(1, Relaxed);
        true
    } else {
        false
    }
}

/// A `likely` site of `S` whose `else` sets `S`; returns the value the site
/// saw.
#[inline(never)]
fn s_likely_sets() -> bool {
    std::hint::black_box(7);
    if S.likely() {
        true
    } else {
        set_s(true);
        BLOCK_SETS.fetch_add(1, Relaxed);
        false
    }
}

/// Plain sites of `S` (their blocks set nothing).
#[inline(never)]
fn s_likely() -> bool {
    std::hint::black_box(8);
    if S.likely() {
        std::hint::black_box(true)
    } else {
        std::hint::black_box(false)
    }
}
#[inline(never)]
fn s_unlikely() -> bool {
    std::hint::black_box(9);
    if S.unlikely() {
        std::hint::black_box(true)
    } else {
        std::hint::black_box(false)
    }
}

static RUNS: AtomicU64 = AtomicU64::new(0);
/// Sets from inside a block the runners may make now.
static TOKENS: AtomicU64 = AtomicU64::new(0);

fn wait_runs(n: u64) {
    let r = RUNS.load(SeqCst);
    while RUNS.load(SeqCst) < r + n {
        std::thread::yield_now();
    }
}

/// Runs `site`, judging it if no `set` of `S` was in flight.
fn judged(site: fn() -> bool) {
    let d0 = DONE.load(SeqCst);
    let f0 = IN_FLIGHT.load(SeqCst);
    let g = S.get();
    let r = site();
    fence(SeqCst);
    // The site's own block may have set S: then it was not quiescent.
    let f1 = IN_FLIGHT.load(SeqCst);
    let d1 = DONE.load(SeqCst);
    if f0 == 0 && f1 == 0 && d0 == d1 {
        STRICT.fetch_add(1, Relaxed);
        if r != g {
            WRONG.fetch_add(1, Relaxed);
        }
    }
}

#[test]
fn set_from_inside_branch_blocks() {
    // Before init: the first set initializes, from inside the block.
    if static_call::PATCHING {
        assert!(matches!(static_call::mode(), static_call::Mode::NotInitialized));
    }
    assert_eq!(unlikely_clears(), Some(true), "taken, and set(false) returned true");
    assert!(!A.get());
    assert_eq!(unlikely_clears(), None, "not taken after the set");
    let patched = matches!(static_call::mode(), static_call::Mode::Patching(_));
    if patched {
        assert!(A.sites().iter().all(|s| matches!(s.state(), SiteState::Taken | SiteState::NotTaken)));
    }

    // A likely site: the out-of-line else sets, the in-line block clears.
    for _ in 0..3 {
        assert_eq!(likely_flips(), (false, false));
        assert!(B.get());
        assert_eq!(likely_flips(), (true, true));
        assert!(!B.get());
    }

    // A batch of the key and a call key from inside the block.
    assert!(!batch_in_block());
    A.set(true);
    assert_eq!(k_site(10), 11);
    assert!(batch_in_block());
    assert!(!A.get());
    assert_eq!(k_site(10), 12, "the batch retargeted the call key");
    assert!(!batch_in_block());

    // Another branch set and run inside the block.
    A.set(true);
    assert_eq!(other_in_block(), Some(true));
    assert_eq!(other_in_block(), Some(false));
    assert!(c_site() == C.get() && !C.get());
    A.set(false);
    assert_eq!(other_in_block(), None);

    // Concurrent: threads run S's sites whose blocks set S, another sets S.
    let before = static_call::stats();
    let runners: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                // Plain sites, and for each token taken one whose block
                // sets S (the one that jumps, as far as `get` knows), so
                // that some executions see no set in flight.
                while !STOP.load(SeqCst) {
                    let token = TOKENS.fetch_update(SeqCst, SeqCst, |t| t.checked_sub(1)).is_ok();
                    let site: fn() -> bool = match (token, S.get()) {
                        (true, true) => s_unlikely_clears,
                        (true, false) => s_likely_sets,
                        (false, _) if (n + t).is_multiple_of(2) => s_likely,
                        (false, _) => s_unlikely,
                    };
                    judged(site);
                    n += 1;
                    RUNS.fetch_add(1, SeqCst);
                }
                n
            })
        })
        .collect();
    let rounds: u64 = if cfg!(target_arch = "aarch64") { 60 } else { 250 };
    let mut i = 0u64;
    let need_trap = patched && cfg!(target_arch = "x86_64");
    while i < rounds || (need_trap && static_call::stats().traps_emulated == before.traps_emulated && i < 20 * rounds) {
        set_s(!i.is_multiple_of(3));
        // Let the runners run between sets (counting runs, no sleep), then
        // let one or both of them set S from inside a block.
        wait_runs(64);
        TOKENS.store(1 + i % 2, SeqCst);
        while TOKENS.load(SeqCst) > 0 {
            std::thread::yield_now();
        }
        wait_runs(64);
        i += 1;
    }
    STOP.store(true, SeqCst);
    let runs: u64 = runners.into_iter().map(|r| r.join().expect("a runner panicked")).sum();
    let s = static_call::stats();
    eprintln!(
        "{i} sets from outside, {} from inside blocks, {runs} runs ({} judged strictly, {} wrong); traps emulated {}, \
         rewound {}",
        BLOCK_SETS.load(SeqCst),
        STRICT.load(SeqCst),
        WRONG.load(SeqCst),
        s.traps_emulated - before.traps_emulated,
        s.traps_rewound - before.traps_rewound
    );
    assert_eq!(WRONG.load(SeqCst), 0, "an execution with no set in flight did not take get()'s branch");
    assert!(STRICT.load(SeqCst) > 100, "too few executions judged");
    assert!(BLOCK_SETS.load(SeqCst) > rounds / 2, "too few blocks set their key");
    let (set_true, was_true) = (SET_TRUE.load(SeqCst), WAS_TRUE.load(SeqCst));
    assert_eq!(was_true, set_true - u64::from(S.get()), "the values set returned do not chain (initial false)");
    let v = S.get();
    assert_eq!(s_unlikely_clears(), v);
    if patched {
        let states: Vec<_> = S.sites().iter().map(|s| s.state()).collect();
        // Two likely and two unlikely sites: whatever the value, half jump.
        assert_eq!(states.len(), 4, "{states:?}");
        assert_eq!(states.iter().filter(|&&s| s == SiteState::Taken).count(), 2, "{states:?}");
        assert_eq!(states.iter().filter(|&&s| s == SiteState::NotTaken).count(), 2, "{states:?}");
        if cfg!(target_arch = "x86_64") {
            assert!(s.traps_emulated > before.traps_emulated, "no execution met an int3");
        }
    }
}
