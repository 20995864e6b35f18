//! A key of a Rust `fn` type retargeted while other threads call it: every
//! result comes from one of the targets, every panic reaches its caller with
//! its payload, and the int3 path ran (x86-64; on aarch64, where an update
//! is plain stores and no trap, calls are proven to have overlapped updates
//! instead).
use static_call::static_call;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Whether updates go through `int3` and the SIGTRAP handler (x86-64).
const TRAPS: bool = cfg!(target_arch = "x86_64");

fn a(s: &str, x: u64) -> String {
    format!("a{}:{x}", s.len())
}
fn b(s: &str, x: u64) -> String {
    format!("b{}:{x}", s.len())
}
/// Panics for every seventh input, with the input as payload.
fn c(s: &str, x: u64) -> String {
    if x.is_multiple_of(7) {
        std::panic::panic_any(x);
    }
    format!("c{}:{x}", s.len())
}

#[static_call]
static K: fn(&str, u64) -> String = a;

static UPDATING: AtomicBool = AtomicBool::new(false);
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn call_k(s: &str, x: u64) -> Result<String, u64> {
    catch_unwind(AssertUnwindSafe(|| K.call(s, x))).map_err(|p| *p.downcast::<u64>().expect("the payload is the input"))
}

#[test]
fn callers_see_only_old_or_new_targets_and_their_panics() {
    std::panic::set_hook(Box::new(|_| {}));
    // On the slots (patching impossible here) init says why; calls and
    // updates work the same.
    let _ = static_call::init();
    let patched = matches!(static_call::mode(), static_call::Mode::Patching(_));
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let panics = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (stop, wrong, panics) = (stop.clone(), wrong.clone(), panics.clone());
            std::thread::spawn(move || {
                let mut x = t;
                while !stop.load(Ordering::Relaxed) {
                    x += 1;
                    let during = UPDATING.load(Ordering::SeqCst);
                    let r = call_k("four", x);
                    if during {
                        OVERLAPPED.fetch_add(1, Ordering::Relaxed);
                    }
                    match r {
                        Ok(s) if s == format!("a4:{x}") || s == format!("b4:{x}") => {}
                        Ok(s) if s == format!("c4:{x}") && !x.is_multiple_of(7) => {}
                        Err(p) if p == x && x.is_multiple_of(7) => {
                            panics.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let targets = [a as fn(&str, u64) -> String, b, c];
    let mut i = 0usize;
    while if patched && TRAPS {
        let s = static_call::stats();
        (s.traps_emulated + s.traps_rewound < 20 || panics.load(Ordering::Relaxed) < 20) && i < 2_000_000
    } else if patched {
        (i < 300 || OVERLAPPED.load(Ordering::Relaxed) < 20 || panics.load(Ordering::Relaxed) < 20) && i < 100_000
    } else {
        i < 10_000 || panics.load(Ordering::Relaxed) < 20
    } {
        UPDATING.store(true, Ordering::SeqCst);
        match i % 3 {
            0 => K.update(a),
            1 => K.update(b),
            _ => K.update(c),
        };
        UPDATING.store(false, Ordering::SeqCst);
        assert_eq!(call_k("xy", 1), Ok(targets[i % 3]("xy", 1)), "after update returns, calls reach the new target");
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let s = static_call::stats();
    let overlapped = OVERLAPPED.load(Ordering::Relaxed);
    eprintln!(
        "{i} updates, {} panics caught, {overlapped} calls during an update, {s:?}",
        panics.load(Ordering::Relaxed)
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    assert!(panics.load(Ordering::Relaxed) >= 20);
    if patched && TRAPS {
        assert!(s.traps_emulated + s.traps_rewound >= 20, "the int3 path never ran: {s:?}");
    } else if patched {
        assert!(overlapped >= 20, "calls never overlapped an update ({overlapped} in {i} updates)");
    }
    if patched {
        assert!(K.sites().iter().all(|s| s.state() == static_call::SiteState::Direct), "{:?}", K.sites());
    }
}
