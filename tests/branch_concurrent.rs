//! Threads running many static-branch sites while another thread flips the
//! key with `set`: each execution is judged. While a `set` runs, a site may
//! take the old or the new branch; an execution that started after the
//! `set(v)` returned and ended before the next began must take `v`'s
//! branch (the epoch scheme of `tests/concurrent_update.rs`). On x86-64 the
//! int3 path must have run (`traps_emulated > 0`).
use static_call::static_branch;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;

#[static_branch]
static FLAG: bool = false;

/// Sets begun and sets completed; after `n` completed sets the value is
/// `n % 2 == 1`.
static STARTED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);

macro_rules! sites {
    ($($name:ident = $n:literal),*) => {
        $(
            #[inline(never)]
            fn $name(likely: bool) -> bool {
                // Distinct bodies: identical functions would be merged.
                std::hint::black_box($n);
                if likely {
                    if FLAG.likely() { std::hint::black_box(true) } else { std::hint::black_box(false) }
                } else if FLAG.unlikely() {
                    std::hint::black_box(true)
                } else {
                    std::hint::black_box(false)
                }
            }
        )*
        const SITES: &[fn(bool) -> bool] = &[$($name),*];
    };
}
sites!(
    s0 = 0,
    s1 = 1,
    s2 = 2,
    s3 = 3,
    s4 = 4,
    s5 = 5,
    s6 = 6,
    s7 = 7,
    s8 = 8,
    s9 = 9,
    s10 = 10,
    s11 = 11,
    s12 = 12,
    s13 = 13,
    s14 = 14,
    s15 = 15
);

#[test]
fn executions_take_the_old_or_new_branch_and_the_new_once_set_returned() {
    let _ = static_call::init();
    let n_sites = FLAG.sites().len() as u64;
    // The portable backend lists no sites.
    assert!(!static_call::PATCHING || n_sites >= 2 * SITES.len() as u64, "{n_sites} sites");
    let stop = Arc::new(AtomicBool::new(false));
    let (wrong, strict, runs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (stop, wrong, strict, runs) = (stop.clone(), wrong.clone(), strict.clone(), runs.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Relaxed) {
                    let site = SITES[i % SITES.len()];
                    let likely = i % 3 == 0;
                    i += 1;
                    let done = DONE.load(SeqCst);
                    let r = site(likely);
                    let started = STARTED.load(SeqCst);
                    if started == done {
                        // No set overlapped this execution: it must see
                        // the value of the last completed one.
                        strict.fetch_add(1, Relaxed);
                        if r != (done % 2 == 1) {
                            wrong.fetch_add(1, Relaxed);
                        }
                    }
                    runs.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    // Wait until every thread runs.
    while runs.load(Relaxed) < 1000 {
        std::hint::spin_loop();
    }
    let sets = 2000u64;
    for n in 0..sets {
        STARTED.fetch_add(1, SeqCst);
        let was = FLAG.set(n % 2 == 0);
        DONE.fetch_add(1, SeqCst);
        assert_eq!(was, n % 2 == 1, "set returns the previous value");
        // Let executions run between sets, so that some are judged strictly
        // (no sleeping: count executions instead).
        if n % 8 == 0 {
            let r = runs.load(Relaxed);
            while runs.load(Relaxed) < r + 30 {
                std::hint::spin_loop();
            }
        }
    }
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let s = static_call::stats();
    eprintln!(
        "runs {} strict {} wrong {} traps emulated {} rewound {} branch sites patched {}",
        runs.load(Relaxed),
        strict.load(Relaxed),
        wrong.load(Relaxed),
        s.traps_emulated,
        s.traps_rewound,
        s.branch_sites_patched
    );
    assert_eq!(wrong.load(Relaxed), 0, "an execution took a branch of a value the key did not have");
    assert!(strict.load(Relaxed) > 1000, "too few executions judged strictly");
    assert!(!FLAG.get());
    if matches!(static_call::mode(), static_call::Mode::Patching(_)) {
        assert!(s.branch_sites_patched >= sets * n_sites);
        if cfg!(target_arch = "x86_64") {
            assert!(s.traps_emulated > 0, "no execution landed on an int3: the interesting path did not run");
        }
    }
}
