//! Scale: one key with 10,000 call sites. Every update patches all of them
//! (checked through `sites()`), every call is correct afterwards, and an
//! update with callers running keeps every call valid.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2, t3};

use static_call::{static_call, SiteState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

/// What calls must return: the target with this tag (0: no target), or
/// `ANY` state (a call during an update).
const ANY: u64 = u64::MAX;

/// Not inlined: each site stays one asm block and one call (compile time).
#[inline(never)]
fn wrong(r: u64, x: u64, want: u64) -> u32 {
    let of = |tag: u64| if tag == 0 { 0 } else { (tag << 48) | x };
    let ok = if want == ANY { (0..=3).any(|t| r == of(t)) } else { r == of(want) };
    (!ok) as u32
}

macro_rules! x10 {
    ($($t:tt)*) => { $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* };
}

macro_rules! blocks {
    ($($name:ident = $n:literal)*) => {
        $(
            /// 1,000 call sites of `K`; returns how many calls were wrong.
            /// (Each block uses its own argument, so that no two are
            /// identical functions, which release builds would merge.)
            #[inline(never)]
            fn $name(x: u64, want: u64) -> u32 {
                let mut bad = 0u32;
                let x = x + $n;
                x10! { x10! { x10! { bad += wrong(K.call(x), x, want); } } }
                bad
            }
        )*
        const BLOCKS: &[fn(u64, u64) -> u32] = &[$($name),*];
    };
}

blocks!(b0 = 0 b1 = 100 b2 = 200 b3 = 300 b4 = 400 b5 = 500 b6 = 600 b7 = 700 b8 = 800 b9 = 900);

fn call_all(x: u64, want: u64) -> u32 {
    BLOCKS.iter().map(|b| b(x, want)).sum()
}

#[test]
fn ten_thousand_sites_of_one_key() {
    let t = std::time::Instant::now();
    static_call::init().unwrap();
    eprintln!("init: {:?}", t.elapsed());
    let sites = K.sites();
    assert_eq!(sites.len(), 10_000);
    let not_direct: Vec<String> =
        sites.iter().filter(|s| s.state() != SiteState::Direct).take(5).map(|s| s.to_string()).collect();
    assert!(not_direct.is_empty(), "all patched at init: {not_direct:#?}");
    let protections = common::page_protections(sites.iter().map(|s| s.address()), common::INSN_LEN);
    assert_eq!(call_all(5, 1), 0);

    // Sequential: every state, exact results.
    for (f, state) in [
        (Some(t2 as extern "C" fn(u64) -> u64), SiteState::Direct),
        (None, SiteState::Zero),
        (Some(t3), SiteState::Direct),
        (Some(t1), SiteState::Direct),
    ] {
        let before = static_call::stats();
        let t = std::time::Instant::now();
        match f {
            Some(f) => K.update(f),
            None => K.reset(),
        };
        let took = t.elapsed();
        let after = static_call::stats();
        common::assert_text_protected(&protections);
        assert_eq!(after.sites_patched - before.sites_patched, 10_000);
        assert!(K.sites().iter().all(|s| s.state() == state));
        let want = f.map_or(0, |f| f(0) >> 48);
        assert_eq!(call_all(6, want), 0, "every call reaches the new state");
        eprintln!("update of 10,000 sites to {state:?}: {took:?}");
    }

    // Concurrent: a caller sweeps all sites while the key changes.
    // x86-64: until callers met 10 traps. aarch64 (no trap; under QEMU):
    // until 3 sweeps started during an update (`UPDATING` is set around
    // each), at least 10 updates either way.
    static STOP: AtomicBool = AtomicBool::new(false);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static UPDATING: AtomicBool = AtomicBool::new(false);
    static OVERLAPPED: AtomicU64 = AtomicU64::new(0);
    let caller = std::thread::spawn(|| {
        let mut bad = 0;
        while !STOP.load(SeqCst) {
            let during = UPDATING.load(SeqCst);
            bad += call_all(7, ANY);
            if during {
                OVERLAPPED.fetch_add(1, SeqCst);
            }
            CALLS.fetch_add(10_000, SeqCst);
        }
        bad
    });
    let start = static_call::stats();
    let targets = [t2 as extern "C" fn(u64) -> u64, t3, t1];
    let mut i = 0;
    let interesting = || {
        if common::TRAPS {
            static_call::stats().traps_emulated - start.traps_emulated >= 10
        } else {
            OVERLAPPED.load(SeqCst) >= 3
        }
    };
    while !interesting() || i < 10 {
        if common::TRAPS {
            assert!(i < 100_000, "no trap in {i} updates");
        } else {
            assert!(i < 1_000, "no sweep overlapped an update in {i} updates");
        }
        UPDATING.store(true, SeqCst);
        if i % 4 == 3 {
            K.reset();
        } else {
            K.update(targets[i % 3]);
        }
        UPDATING.store(false, SeqCst);
        common::assert_text_protected(&protections);
        i += 1;
    }
    STOP.store(true, SeqCst);
    let bad = caller.join().unwrap();
    let s = static_call::stats();
    eprintln!(
        "{i} updates with a caller running: {} calls ({} sweeps started during an update), {s:?}",
        CALLS.load(SeqCst),
        OVERLAPPED.load(SeqCst)
    );
    assert_eq!(bad, 0);
    K.update(t2);
    assert!(K.sites().iter().all(|s| s.state() == SiteState::Direct));
    assert_eq!(call_all(8, 2), 0);
}
