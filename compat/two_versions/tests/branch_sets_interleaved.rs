//! Static branches of two major versions of static_call in one executable
//! (DESIGN 3.8, 3.11, 9): `sc_a` (0.1) and `sc_b` (2) each declare two
//! branches, whose sites (both polarities) the two branch-site functions
//! interleave on one page. Each copy's `init` patches exactly its own eight
//! sites (its `branch_sites_patched` is 8, not 16). A copy sets the other
//! copy's branch through its own `static_call` (a key across copies): the
//! owner makes the set (its update count moves, the setter's does not) and
//! patches its four sites. Then both copies set their own branches from one
//! thread each, at once, while two threads run every site of both copies:
//! every result is judged against the values the key had during the call,
//! after each set every site of that key is in the state of its polarity
//! and the new value, each set rewrites exactly four sites of its own copy,
//! and each copy's SIGTRAP handler emulated jumps (x86-64; on aarch64 calls
//! started during sets of each copy). Run as a child process, with the
//! default writer and with `STATIC_CALL_WRITER=mprotect`, so that a SIGTRAP
//! or SIGSEGV (one copy's write undoing the other's) is a failure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use two_versions::common::{self, in_child, run_child};
use two_versions::{
    branch_of, branch_sites, branch_stats, branch_value, call_branches, init, name, set_branch, set_branch_by,
    BRANCHES, BRANCH_SITES_PER_KEY, COPIES,
};

#[test]
fn two_versions_set_branches_at_once() {
    let out = run_child("branch_sets_child", &[]);
    eprintln!("{out}");
}

#[test]
fn two_versions_set_branches_at_once_with_mprotect() {
    let out = run_child("branch_sets_child", &[("STATIC_CALL_WRITER", "mprotect")]);
    eprintln!("{out}");
}

/// Whether each site (by address) is a `likely` one, learned from the
/// states `init` gave them: exactly two of each polarity per branch.
type Polarity = HashMap<usize, bool>;

fn initial(b: usize) -> bool {
    sc_a::BRANCH_INITIAL[b]
}

/// Learns the polarity of every branch site from its state at the
/// declared value (an `unlikely` site jumps while the value is true).
fn learn_polarity() -> Polarity {
    let mut p = Polarity::new();
    for c in 0..COPIES {
        for b in 0..BRANCHES {
            let sites = branch_sites(c, b);
            assert_eq!(sites.len(), BRANCH_SITES_PER_KEY, "{} branch {b}: {sites:#x?}", name(c));
            assert!(sites.iter().all(|s| s.patched), "{} branch {b} patched by init: {sites:#x?}", name(c));
            let likely = sites.iter().filter(|s| s.taken != initial(b)).count();
            assert_eq!(likely, 2, "{} branch {b}: two sites of each polarity: {sites:#x?}", name(c));
            for s in sites {
                p.insert(s.address, s.taken != initial(b));
            }
        }
    }
    p
}

/// A page that holds sites of every branch of both copies.
fn one_page() -> usize {
    let page = |a: usize| a & !4095;
    let all: Vec<Vec<usize>> = (0..COPIES)
        .flat_map(|c| (0..BRANCHES).map(move |b| branch_sites(c, b).iter().map(|s| s.address).collect()))
        .collect();
    let mut candidates: Vec<usize> = all.iter().flatten().map(|&a| page(a)).collect();
    candidates.sort_unstable();
    candidates.dedup();
    candidates
        .into_iter()
        .find(|&p| all.iter().all(|key| key.iter().any(|&a| page(a) == p)))
        .unwrap_or_else(|| panic!("a page holds branch sites of every key of both copies: {all:#x?}"))
}

/// Whether branch `b` of copy `c` is `v` by `get()`, by the state of each
/// of its sites and by what both branch-site functions return for it.
fn check_branch(p: &Polarity, c: usize, b: usize, v: bool) -> Result<(), String> {
    if branch_value(c, b) != v {
        return Err(format!("{} branch {b}: get() is not {v}", name(c)));
    }
    for s in branch_sites(c, b) {
        let likely = p[&s.address];
        if !s.patched || s.taken != (v != likely) {
            return Err(format!(
                "{} branch {b} = {v}: {} site {:#x} is {s:?}",
                name(c),
                if likely { "likely" } else { "unlikely" },
                s.address
            ));
        }
    }
    for (j, r) in call_branches().iter().enumerate() {
        for (i, &got) in r.iter().enumerate() {
            if (branch_of(i).0, branch_of(i).1) == (c, b) && got != v {
                return Err(format!("{} branch {b} = {v}: site {i} of branch-site function {j} says {got}", name(c)));
            }
        }
    }
    Ok(())
}

#[track_caller]
fn assert_branch(p: &Polarity, c: usize, b: usize, v: bool) {
    if let Err(e) = check_branch(p, c, b, v) {
        panic!("{e}");
    }
}

/// Per branch: 2n while the branch is stable after `n` sets of the
/// interleaved phase, 2n - 1 while set `n` runs.
static GEN: [[AtomicU64; BRANCHES]; COPIES] = [const { [const { AtomicU64::new(0) }; BRANCHES] }; COPIES];
/// The value branch `b` has in state `n` of the interleaved phase.
fn value_in(b: usize, n: u64) -> bool {
    initial(b) ^ (n % 2 == 1)
}

#[test]
#[ignore = "child process of two_versions_set_branches_at_once"]
fn branch_sets_child() {
    if !in_child("branch_sets_child") {
        return;
    }
    static PROGRESS: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static OVERLAPPED: [AtomicU64; COPIES] = [const { AtomicU64::new(0) }; COPIES];
    /// Sets each copy made.
    static MADE: [AtomicU64; COPIES] = [const { AtomicU64::new(0) }; COPIES];
    static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let fail = |m: String| {
        let mut f = FAILURES.lock().unwrap();
        if f.len() < 20 {
            f.push(m);
        }
    };
    common::watchdog("two copies setting branches at once", &PROGRESS, std::time::Duration::from_secs(120));

    // Before init: the assembled tests read the values.
    for (i, v) in call_branches()[0].iter().enumerate() {
        assert_eq!(*v, initial(branch_of(i).1));
    }
    for c in 0..COPIES {
        init(c).unwrap_or_else(|e| panic!("{e}"));
        let per_copy = (BRANCHES * BRANCH_SITES_PER_KEY) as u64;
        assert_eq!(branch_stats(c).1, per_copy, "{}'s init patched its own {per_copy} branch sites", name(c));
    }
    let polarity = learn_polarity();
    let page = one_page();
    for c in 0..COPIES {
        for b in 0..BRANCHES {
            assert_branch(&polarity, c, b, initial(b));
        }
    }

    // Keys across copies: each copy sets the other's branch; the owner sets.
    for (by, owner) in [(0, 1), (1, 0)] {
        for b in 0..BRANCHES {
            let (before_by, before_owner) = (branch_stats(by), branch_stats(owner));
            let v = !initial(b);
            assert_eq!(set_branch_by(by, owner, b, v), Ok(!v));
            let (after_by, after_owner) = (branch_stats(by), branch_stats(owner));
            assert_eq!(after_owner.0, before_owner.0 + 1, "{} made the set", name(owner));
            assert_eq!(after_owner.1, before_owner.1 + 4, "{} rewrote its branch's four sites", name(owner));
            assert_eq!((after_by.0, after_by.1), (before_by.0, before_by.1), "{} wrote nothing", name(by));
            assert_branch(&polarity, owner, b, v);
            assert_branch(&polarity, by, b, initial(b));
            assert_eq!(set_branch(owner, b, initial(b)), Ok(v));
            assert_branch(&polarity, owner, b, initial(b));
        }
    }

    // Both copies set their own branches at once, callers judge every site.
    let sets = if cfg!(debug_assertions) { 2000u64 } else { 5000 };
    let base: Vec<(u64, u64, u64)> = (0..COPIES).map(branch_stats).collect();
    let snapshot =
        || -> [[u64; BRANCHES]; COPIES] { core::array::from_fn(|c| core::array::from_fn(|b| GEN[c][b].load(SeqCst))) };
    let callers = 2;
    let start = Arc::new(Barrier::new(callers + COPIES));
    let caller_threads: Vec<_> = (0..callers)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                while !STOP.load(SeqCst) {
                    let before = snapshot();
                    let r = call_branches();
                    let after = snapshot();
                    for c in 0..COPIES {
                        if before[c].iter().any(|g| g % 2 == 1) {
                            OVERLAPPED[c].fetch_add(1, SeqCst);
                        }
                    }
                    for (j, results) in r.iter().enumerate() {
                        for (i, &got) in results.iter().enumerate() {
                            let (c, b, likely) = branch_of(i);
                            let (min, max) = (before[c][b] / 2, after[c][b].div_ceil(2));
                            if !(min..=max).any(|n| value_in(b, n) == got) {
                                fail(format!(
                                    "{} {} site of branch {b} in function {j} said {got}, the branch in states \
                                     {min}..={max}",
                                    name(c),
                                    if likely { "likely" } else { "unlikely" },
                                ));
                            }
                        }
                    }
                    CALLS.fetch_add(1, SeqCst);
                    PROGRESS.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    let setters: Vec<_> = (0..COPIES)
        .map(|c| {
            let start = start.clone();
            let polarity = polarity.clone();
            std::thread::spawn(move || {
                start.wait();
                let base_traps = branch_stats(c).2;
                // At least `sets`, then until this copy's handler emulated
                // a jump (x86-64) or a call started during one of its sets.
                for n in 0.. {
                    let seen =
                        if common::TRAPS { branch_stats(c).2 > base_traps } else { OVERLAPPED[c].load(SeqCst) > 0 };
                    if n >= sets && (seen || n >= 200_000) {
                        MADE[c].store(n, SeqCst);
                        break;
                    }
                    let b = (n % BRANCHES as u64) as usize;
                    let s = GEN[c][b].load(SeqCst) / 2 + 1;
                    let v = value_in(b, s);
                    GEN[c][b].store(2 * s - 1, SeqCst);
                    let r = set_branch(c, b, v);
                    GEN[c][b].store(2 * s, SeqCst);
                    let r = match r {
                        Ok(old) if old != v => check_branch(&polarity, c, b, v),
                        Ok(old) => Err(format!("{} branch {b}: set to {v} returned {old}", name(c))),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = r {
                        fail(format!("set {n} of {}: {e}", name(c)));
                        return;
                    }
                    PROGRESS.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for s in setters {
        s.join().unwrap();
    }
    STOP.store(true, SeqCst);
    for c in caller_threads {
        c.join().unwrap();
    }
    let failures = FAILURES.lock().unwrap().clone();
    let after: Vec<(u64, u64, u64)> = (0..COPIES).map(branch_stats).collect();
    let overlapped: Vec<u64> = OVERLAPPED.iter().map(|o| o.load(SeqCst)).collect();
    eprintln!(
        "{:?} sets per copy on page {page:#x}, {} calls of both branch-site functions, calls during a set \
         {overlapped:?}; (updates, branch sites patched, traps) {base:?} -> {after:?}",
        MADE.iter().map(|m| m.load(SeqCst)).collect::<Vec<_>>(),
        CALLS.load(SeqCst)
    );
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert!(CALLS.load(SeqCst) > 0);
    for c in 0..COPIES {
        let made = MADE[c].load(SeqCst);
        assert!(made >= sets);
        assert_eq!(after[c].0 - base[c].0, made, "{} made its own sets", name(c));
        assert_eq!(after[c].1 - base[c].1, 4 * made, "{}: each set rewrote its branch's four sites, no more", name(c));
        if common::TRAPS {
            assert!(after[c].2 > base[c].2, "{}: no jump landed on an int3 of a set", name(c));
        } else {
            assert!(overlapped[c] > 0, "{}: no call started during a set", name(c));
        }
        for (b, g) in GEN[c].iter().enumerate() {
            assert_branch(&polarity, c, b, value_in(b, g.load(SeqCst) / 2));
        }
    }
    let writers = (static_call::text_writer(), sc_b::copy::text_writer().map(|w| w.to_string()));
    eprintln!("writers: {writers:?}");
    if std::env::var_os("STATIC_CALL_WRITER").is_some_and(|w| w == "mprotect") {
        assert_eq!(static_call::text_writer(), Some(static_call::TextWriter::Mprotect));
        assert_eq!(sc_b::copy::text_writer(), Some(sc_b::copy::TextWriter::Mprotect));
    } else {
        assert!(static_call::text_writer().is_some() && sc_b::copy::text_writer().is_some());
    }
    println!("child branch_sets_child: done");
}
