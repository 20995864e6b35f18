//! A real-time updater must not live-lock: `retract` waits for the SIGTRAP
//! handlers still reading the plan, and a reader preempted on the updater's
//! CPU can only finish if the updater sleeps (a SCHED_FIFO thread that spins
//! with `sched_yield` never lets a SCHED_OTHER thread of its CPU run, short
//! of the kernel's real-time throttling). The updater runs SCHED_FIFO on
//! CPU 0; a caller on CPU 1 lands on an update's `int3` and, while counted
//! as a reader (the reader hook), moves itself to CPU 0, so the updater
//! reaches `retract` with that reader runnable behind it. Judged by how
//! often `retract` had to wait (it sleeps and is woken once, where a spin
//! counts every pass), with a watchdog for a hang. Skipped, with the reason
//! printed, where SCHED_FIFO or two CPUs are not available.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2};
use static_call::__private::{retract_waits, set_reader_hook};
use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

static PROGRESS: AtomicU64 = AtomicU64::new(0);
static CALLER: AtomicI32 = AtomicI32::new(0);
/// 1: the next reader of the caller thread moves to CPU 0; 2: it is doing
/// so; 3: it left.
static ARM: AtomicU32 = AtomicU32::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn pin(cpu: usize) -> bool {
    // SAFETY: a valid cpu set for the calling thread (async-signal-safe
    // system call).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Runs in the caller's SIGTRAP handler while it is counted as a reader.
extern "C" fn reader_hook() {
    if gettid() != CALLER.load(SeqCst) || ARM.compare_exchange(1, 2, SeqCst, SeqCst).is_err() {
        return;
    }
    // Onto the updater's CPU: from here on this thread runs only when the
    // SCHED_FIFO updater sleeps.
    pin(0);
    pin(1);
    ARM.store(3, SeqCst);
}

#[test]
fn a_sched_fifo_updater_sleeps_until_the_reader_leaves() {
    // SAFETY: queries only.
    let cpus = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        libc::CPU_COUNT(&set)
    };
    if cpus < 2
        || !(0..2).all(|c| {
            // SAFETY: query.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
                libc::CPU_ISSET(c, &set)
            }
        })
    {
        eprintln!("skipped: CPUs 0 and 1 are not both available to this process");
        return;
    }
    static_call::init().unwrap();
    common::watchdog("SCHED_FIFO updater", &PROGRESS, std::time::Duration::from_secs(120));
    set_reader_hook(Some(reader_hook));

    let caller = std::thread::spawn(|| {
        assert!(pin(1));
        CALLER.store(gettid(), SeqCst);
        while !STOP.load(SeqCst) {
            let r = site(7);
            assert!(matches!(r >> 48, 1..=2) && r & 0xffff == 7, "{r:#x}");
            PROGRESS.fetch_add(1, SeqCst);
        }
    });
    let updater = std::thread::spawn(|| -> Option<(u32, u64)> {
        assert!(pin(0));
        let param = libc::sched_param { sched_priority: 10 };
        // SAFETY: valid arguments, for the calling thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            eprintln!("skipped: sched_setscheduler(SCHED_FIFO) refused: {}", std::io::Error::last_os_error());
            return None;
        }
        let rounds = 3;
        let waits = retract_waits();
        let mut updates = 0u32;
        for _ in 0..rounds {
            ARM.store(1, SeqCst);
            while ARM.load(SeqCst) != 3 {
                assert!(updates < 2_000_000, "the caller never landed on an int3");
                K.update(if updates.is_multiple_of(2) { t2 } else { t1 });
                updates += 1;
                PROGRESS.fetch_add(1, SeqCst);
            }
        }
        // Back to normal scheduling before leaving.
        let normal = libc::sched_param { sched_priority: 0 };
        // SAFETY: as above.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal) };
        Some((updates, retract_waits() - waits))
    });
    let result = updater.join().unwrap();
    STOP.store(true, SeqCst);
    caller.join().unwrap();
    set_reader_hook(None);
    let Some((updates, waits)) = result else { return };
    eprintln!("{updates} updates; retract waited {waits} times for 3 held readers; {:?}", static_call::stats());
    assert!(waits >= 1, "retract found a reader at least once");
    // One wait per held reader, plus the rare ordinary trap that overlaps a
    // retract; a spin counts millions of passes (one per `sched_yield`).
    assert!(waits < 1000, "retract slept until woken ({waits} waits for 3 held readers), it did not spin");
}
