//! Under gdb (`handle SIGTRAP nostop noprint pass` once the program runs), a program that patches
//! while callers run exits normally: the traps of the int3 protocol reach our
//! handler through the debugger. The test runs its own binary under gdb,
//! filtered to `gdb_child`, which does the work only when asked to.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;
use static_call::static_call;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

extern "C" fn t1(x: u64) -> u64 {
    (1 << 48) | x
}
extern "C" fn t2(x: u64) -> u64 {
    (2 << 48) | x
}
extern "C" fn t3(x: u64) -> u64 {
    (3 << 48) | x
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

const CHILD_ENV: &str = "STATIC_CALL_GDB_CHILD";

/// The program gdb runs: callers and an updater until the int3 path ran.
#[test]
fn gdb_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    static_call::init().unwrap();
    static STOP: AtomicBool = AtomicBool::new(false);
    let callers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                while !STOP.load(SeqCst) {
                    let r = site(7);
                    assert!(r == 0 || (matches!(r >> 48, 1..=3) && r & 0xffff == 7), "{r:#x}");
                }
            })
        })
        .collect();
    let mut i = 0;
    while static_call::stats().traps_emulated + static_call::stats().traps_rewound < 20 {
        assert!(i < 1_000_000, "no trap in {i} updates");
        match i % 4 {
            0 => K.update(t2),
            1 => K.reset(),
            2 => K.update(t3),
            _ => K.update(t1),
        };
        i += 1;
    }
    STOP.store(true, SeqCst);
    for c in callers {
        c.join().unwrap();
    }
    println!("GDB_CHILD_DONE updates={i} {:?}", static_call::stats());
}

#[test]
fn patching_under_gdb_exits_normally() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    common::child_exits_normally_under_gdb("gdb_child", CHILD_ENV);
}
