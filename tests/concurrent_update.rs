//! Callers on several threads while another thread retargets the key: every
//! result comes from one of the targets, and the int3 path ran (x86-64; on
//! aarch64, where an update is plain stores and no trap, calls are proven to
//! have overlapped updates instead).
use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Whether updates go through `int3` and the SIGTRAP handler (x86-64).
const TRAPS: bool = cfg!(target_arch = "x86_64");

extern "C" fn a(x: u64) -> u64 {
    x + 1
}
extern "C" fn b(x: u64) -> u64 {
    x + 2
}
extern "C" fn c(x: u64) -> u64 {
    x + 3
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = a;

/// Set around each update (aarch64's proof that calls overlapped updates).
static UPDATING: AtomicBool = AtomicBool::new(false);
/// Calls that started while an update was in progress.
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn call_k(x: u64) -> u64 {
    K.call(x)
}

#[test]
fn callers_see_only_old_or_new_targets_and_traps_are_handled() {
    static_call::init().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (stop, wrong, calls) = (stop.clone(), wrong.clone(), calls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let during = UPDATING.load(Ordering::SeqCst);
                    let r = call_k(100);
                    if during {
                        OVERLAPPED.fetch_add(1, Ordering::Relaxed);
                    }
                    if !(101..=103).contains(&r) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let targets = [a as extern "C" fn(u64) -> u64, b, c];
    let mut i = 0usize;
    // Bounded: update until the int3 path ran at least a few times (the
    // portable backend has no int3 path: a fixed number of updates; aarch64
    // has none either, and runs under QEMU: a few hundred updates, more
    // until 20 calls overlapped one).
    while if static_call::PATCHING && TRAPS {
        let s = static_call::stats();
        s.traps_emulated + s.traps_rewound < 20 && i < 2_000_000
    } else if static_call::PATCHING {
        (i < 300 || OVERLAPPED.load(Ordering::Relaxed) < 20) && i < 100_000
    } else {
        i < 10_000
    } {
        UPDATING.store(true, Ordering::SeqCst);
        K.update(targets[i % 3]);
        UPDATING.store(false, Ordering::SeqCst);
        assert_eq!(call_k(0), (i % 3) as u64 + 1, "after update returns, calls reach the new target");
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let s = static_call::stats();
    let overlapped = OVERLAPPED.load(Ordering::Relaxed);
    eprintln!("{i} updates, {} calls ({overlapped} during an update), {s:?}", calls.load(Ordering::Relaxed));
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    if static_call::PATCHING && TRAPS {
        assert!(s.traps_emulated + s.traps_rewound >= 20, "the int3 path never ran: {s:?}");
    } else if static_call::PATCHING {
        assert!(overlapped >= 20, "calls never overlapped an update ({overlapped} in {i} updates)");
    }
    if static_call::PATCHING {
        assert!(!K.sites().is_empty());
        assert!(K.sites().iter().all(|s| s.state() == static_call::SiteState::Direct));
    }
}
