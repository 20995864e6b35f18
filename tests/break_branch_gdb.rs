//! `tests/gdb.rs` for static branches: under gdb (`handle SIGTRAP nostop
//! noprint pass` once the program runs), a program that flips a branch
//! while threads run its sites exits normally, every execution taking the
//! old or the new branch: the traps of the int3 protocol on branch sites
//! reach our handler through the debugger (which moves rip back onto the
//! `int3` before it passes the signal on; the byte before it, the site's
//! first `cs`, is not an `int3`: the handler takes the trap as ours).
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;
use static_call::static_branch;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

#[static_branch]
static B: bool = false;

#[inline(never)]
fn site() -> u64 {
    let mut r = 0;
    if B.unlikely() {
        r |= 1;
    }
    if B.likely() {
        r |= 2;
    }
    std::hint::black_box(r)
}

const CHILD_ENV: &str = "STATIC_CALL_BRANCH_GDB_CHILD";

/// The program gdb runs: callers and an updater until the int3 path ran.
#[test]
fn branch_gdb_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    static_call::init().unwrap();
    static STOP: AtomicBool = AtomicBool::new(false);
    let callers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                while !STOP.load(SeqCst) {
                    // Each site takes the old or the new branch: any of the four.
                    assert!(site() <= 3);
                }
            })
        })
        .collect();
    let mut i = 0;
    while static_call::stats().traps_emulated + static_call::stats().traps_rewound < 20 {
        assert!(i < 1_000_000, "no trap in {i} updates");
        B.set(i % 2 == 0);
        i += 1;
    }
    STOP.store(true, SeqCst);
    for c in callers {
        c.join().unwrap();
    }
    B.set(true);
    assert_eq!(site(), 3);
    B.set(false);
    assert_eq!(site(), 0);
    println!("GDB_CHILD_DONE updates={i} {:?}", static_call::stats());
}

#[test]
fn branches_flipped_under_gdb_exit_normally() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    common::child_exits_normally_under_gdb("branch_gdb_child", CHILD_ENV);
}
