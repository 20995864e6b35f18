//! The late trap, deterministically: a caller lands on the `int3` of an update
//! and is held (by the test-only trap hook) until that update has finished and
//! retracted its plan. Released, the handler finds our address no longer
//! holds the `int3` and rewinds the thread, which then executes the new
//! instruction: the call reaches the new target (or the no-target form).
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;
use common::trap_hold::{futex, gettid, hold, CALLER_TID, HOOK};

use common::{t1, t2, t3};

use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

static STOP: AtomicBool = AtomicBool::new(false);
static PROGRESS: AtomicU64 = AtomicU64::new(0);

/// One round: update (target `to`, `None` for reset) until the caller is held
/// on an int3, let that update finish, release, and check what the held call
/// returned.
fn round(to: Option<extern "C" fn(u64) -> u64>, expect_tag: u64, result: &AtomicU64) {
    let before = static_call::stats();
    HOOK.store(0, SeqCst);
    result.store(u64::MAX, SeqCst);
    let targets = [t1 as extern "C" fn(u64) -> u64, t2, t3];
    let protections = common::page_protections(K.sites().iter().map(|s| s.address()), 5);
    let mut i = 0usize;
    // Bounded: each attempt is an update while the caller calls in a loop.
    loop {
        assert!(i < 200_000, "the caller never landed on an int3 in {i} updates");
        // The last update before the hold is the one that matters: alternate
        // between the others so each is a real change.
        let f = targets[i % 3];
        K.update(f);
        common::assert_text_protected(&protections);
        i += 1;
        if HOOK.load(SeqCst) == 1 {
            break;
        }
    }
    // The caller is parked in the handler. Possibly its trap came from an
    // update before the last one; either way no update is in progress now.
    // Make the final state the one under test, then release.
    match to {
        Some(f) => {
            if K.get().is_some_and(|g| std::ptr::fn_addr_eq(g, f)) {
                // Already there: go elsewhere and back so the held trap's
                // site certainly changed since it trapped.
                K.update(if std::ptr::fn_addr_eq(f, t1 as extern "C" fn(u64) -> u64) { t2 } else { t1 });
            }
            K.update(f);
        }
        None => {
            K.reset();
        }
    }
    common::assert_text_protected(&protections);
    let mid = static_call::stats();
    HOOK.store(2, SeqCst);
    futex(&HOOK, libc::FUTEX_WAKE, i32::MAX as u32);
    // The caller publishes the held call's result as soon as it returns.
    while result.load(SeqCst) == u64::MAX {
        std::thread::yield_now();
    }
    let r = result.load(SeqCst);
    let after = static_call::stats();
    eprintln!("held after {i} updates; result {r:#x}; stats before {before:?} after {after:?}");
    assert_eq!(r >> 48, expect_tag, "the rewound call reached the target current after the update");
    if expect_tag != 0 {
        assert_eq!(r & 0xffff_ffff_ffff, 7, "argument preserved across the rewind");
    }
    assert!(after.traps_rewound > mid.traps_rewound, "the held trap was rewound: {mid:?} -> {after:?}");
}

#[test]
fn a_trap_handled_after_the_update_finished_is_rewound_to_the_new_instruction() {
    static_call::init().unwrap();
    common::watchdog("late_trap", &PROGRESS, std::time::Duration::from_secs(120));
    static_call::__private::set_trap_hook(Some(hold));
    static RESULT: AtomicU64 = AtomicU64::new(u64::MAX);
    let caller = std::thread::spawn(|| {
        CALLER_TID.store(gettid(), SeqCst);
        while !STOP.load(SeqCst) {
            let r = site(7);
            PROGRESS.fetch_add(1, SeqCst);
            // A call that was held: publish what it returned.
            if HOOK.compare_exchange(2, 3, SeqCst, SeqCst).is_ok() {
                RESULT.store(r, SeqCst);
            }
        }
    });
    round(Some(t3), 3, &RESULT);
    round(Some(t2), 2, &RESULT);
    round(None, 0, &RESULT);
    round(Some(t1), 1, &RESULT);
    STOP.store(true, SeqCst);
    caller.join().unwrap();
    static_call::__private::set_trap_hook(None);
    assert!(K.sites().iter().all(|s| s.state() == static_call::SiteState::Direct));
    assert_eq!(site(5), t1(5));
}
