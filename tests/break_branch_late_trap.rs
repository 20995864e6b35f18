//! `tests/late_trap.rs` for static branches: an execution of a branch
//! site lands on the `int3` of a `set` and is held (by the test-only trap
//! hook) until that update and more have finished and retracted their
//! plans. Released, the handler finds the site's patch no longer holds the
//! `int3` and rewinds the thread onto the site's last `cs` prefix, from
//! which it executes the current form: the held execution takes the branch
//! of the value current when it was released.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;
use common::trap_hold::{futex, gettid, hold, CALLER_TID, HOOK};

use static_call::static_branch;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[static_branch]
static B: bool = false;

/// Which of the two sites the caller runs (one per execution, so the held
/// one is the only one of its call): both return the value.
static LIKELY: AtomicBool = AtomicBool::new(false);

#[inline(never)]
fn site() -> u64 {
    let taken = if LIKELY.load(SeqCst) { B.likely() } else { B.unlikely() };
    std::hint::black_box(u64::from(taken))
}

static STOP: AtomicBool = AtomicBool::new(false);
static PROGRESS: AtomicU64 = AtomicU64::new(0);

/// One round: flip the branch until the caller is held on an int3, make
/// `want` the value (through at least one more `set`), release, and check
/// what the held execution returned.
fn round(want: bool, result: &AtomicU64) {
    HOOK.store(0, SeqCst);
    result.store(u64::MAX, SeqCst);
    let mut i = 0usize;
    loop {
        assert!(i < 200_000, "the caller never landed on an int3 in {i} sets");
        B.set(i.is_multiple_of(2));
        i += 1;
        if HOOK.load(SeqCst) == 1 {
            break;
        }
    }
    // The caller is parked in the handler, no set in progress: the site
    // changes at least once more before the release.
    B.set(!want);
    B.set(want);
    let mid = static_call::stats();
    HOOK.store(2, SeqCst);
    futex(&HOOK, libc::FUTEX_WAKE, i32::MAX as u32);
    while result.load(SeqCst) == u64::MAX {
        std::thread::yield_now();
    }
    let r = result.load(SeqCst);
    let after = static_call::stats();
    eprintln!("held after {i} sets (likely site: {}); result {r}; stats {mid:?} -> {after:?}", LIKELY.load(SeqCst));
    assert_eq!(r, u64::from(want), "the rewound execution took the branch of the value current at release");
    assert!(after.traps_rewound > mid.traps_rewound, "the held trap was rewound: {mid:?} -> {after:?}");
}

#[test]
fn a_branch_trap_handled_after_the_set_finished_is_rewound_to_the_current_form() {
    static_call::init().unwrap();
    common::watchdog("branch_late_trap", &PROGRESS, std::time::Duration::from_secs(120));
    static_call::__private::set_trap_hook(Some(hold));
    static RESULT: AtomicU64 = AtomicU64::new(u64::MAX);
    let caller = std::thread::spawn(|| {
        CALLER_TID.store(gettid(), SeqCst);
        while !STOP.load(SeqCst) {
            let r = site();
            PROGRESS.fetch_add(1, SeqCst);
            if HOOK.compare_exchange(2, 3, SeqCst, SeqCst).is_ok() {
                RESULT.store(r, SeqCst);
            }
        }
    });
    for (i, want) in [true, false, true, false, true, false, true, false].into_iter().enumerate() {
        // Both polarities, both values: a rewind onto a `nop` and onto a `jmp`.
        LIKELY.store(i % 4 >= 2, SeqCst);
        round(want, &RESULT);
    }
    STOP.store(true, SeqCst);
    caller.join().unwrap();
    static_call::__private::set_trap_hook(None);
}
