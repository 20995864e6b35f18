//! A key moved between near targets, far ones (x86-64: its sites then call
//! through the slot, `SiteState::Indirect`) and no target while two threads
//! call it at two sites: every result is judged (one of the targets, or 0),
//! and after each update the updating thread's own call reaches the new
//! target. x86-64: until callers met the `int3` of an indirect-call write
//! and the handler emulated that indirect call (it reads the slot at trap
//! time), and a caller was rewound onto the indirect form; aarch64 (under
//! QEMU, no breakpoint): until calls started during updates.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::{static_call, SiteState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;

type F = extern "C" fn(u64) -> u64;

extern "C" fn plus1(x: u64) -> u64 {
    x + 1
}

extern "C" fn plus2(x: u64) -> u64 {
    x + 2
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = plus1;

#[inline(never)]
fn k_a(x: u64) -> u64 {
    K.call(x)
}

#[inline(never)]
fn k_b(x: u64) -> u64 {
    K.call(x + 1).wrapping_sub(1)
}

static UPDATING: AtomicBool = AtomicBool::new(false);
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

#[test]
fn near_far_and_none_while_threads_call() {
    static_call::init().unwrap();
    let page = common::far_page(k_a as fn(u64) -> u64 as usize);
    // SAFETY: the page holds `x + 7` at 0 and `x + 9` at 16, of this type.
    let (plus7, plus9): (F, F) =
        unsafe { (std::mem::transmute::<usize, F>(page), std::mem::transmute::<usize, F>(page + 16)) };
    assert!(K.sites().iter().all(|s| !common::reaches(s.address(), page)));
    let far_state = if common::TRAPS { SiteState::Indirect } else { SiteState::Trampoline };

    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (stop, wrong, calls) = (stop.clone(), wrong.clone(), calls.clone());
            std::thread::spawn(move || {
                let call: fn(u64) -> u64 = if t == 0 { k_a } else { k_b };
                while !stop.load(Relaxed) {
                    let during = UPDATING.load(SeqCst);
                    let r = call(100);
                    // No target: 0 at `k_a`, 0 - 1 at `k_b`.
                    let none = if t == 0 { 0 } else { u64::MAX };
                    if ![101, 102, 107, 109, none].contains(&r) {
                        wrong.fetch_add(1, Relaxed);
                    }
                    if during {
                        OVERLAPPED.fetch_add(1, SeqCst);
                    }
                    calls.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();

    // Near -> far -> near -> far -> far (slot only) -> none -> far -> ...
    let steps: [(Option<F>, u64); 8] = [
        (Some(plus7), 107),
        (Some(plus2), 102),
        (Some(plus9), 109),
        (Some(plus7), 107),
        (None, 0),
        (Some(plus9), 109),
        (None, 0),
        (Some(plus1), 101),
    ];
    let base = static_call::__private::indirect_traps();
    let mut i = 0usize;
    loop {
        let (emulated, rewound) = static_call::__private::indirect_traps();
        let done = if common::TRAPS {
            i >= 4_000 && emulated >= base.0 + 10 && rewound > base.1 || i >= 400_000
        } else {
            i >= 300 && OVERLAPPED.load(SeqCst) >= 10 || i >= 50_000
        };
        if done && i.is_multiple_of(steps.len()) {
            break;
        }
        let (target, expect) = steps[i % steps.len()];
        UPDATING.store(true, SeqCst);
        match target {
            Some(f) => drop(K.update(f)),
            None => drop(K.reset()),
        }
        UPDATING.store(false, SeqCst);
        assert_eq!((k_a(100), k_b(100)), (expect, if expect == 0 { u64::MAX } else { expect }), "step {i}");
        if i < steps.len() {
            let want = match target {
                Some(f) if f as usize == page || f as usize == page + 16 => far_state,
                Some(_) => SiteState::Direct,
                None => SiteState::Zero,
            };
            assert!(K.sites().iter().all(|s| s.state() == want), "step {i}: {:?}", K.sites());
        }
        // Let the callers make progress between updates.
        let c = calls.load(Relaxed);
        while calls.load(Relaxed) < c + 2 {
            std::hint::spin_loop();
        }
        i += 1;
    }
    stop.store(true, Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    let (emulated, rewound) = static_call::__private::indirect_traps();
    eprintln!(
        "{i} updates, {} calls ({} during one); indirect calls emulated {}, rewound onto {}; {:?}",
        calls.load(Relaxed),
        OVERLAPPED.load(SeqCst),
        emulated - base.0,
        rewound - base.1,
        static_call::stats()
    );
    assert_eq!(wrong.load(Relaxed), 0, "a call reached none of the targets");
    if common::TRAPS {
        assert!(emulated >= base.0 + 10, "too few traps at an indirect-call write were emulated");
        assert!(rewound > base.1, "no caller was rewound onto an indirect call");
    } else {
        assert!(OVERLAPPED.load(SeqCst) >= 10, "calls never overlapped an update");
        assert_eq!(emulated, 0, "aarch64 writes no int3");
    }
    assert_eq!(k_a(1), 2);
    assert!(K.sites().iter().all(|s| s.state() == SiteState::Direct));
}
