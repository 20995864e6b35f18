//! Scale: 1,000 keys retargeted in one batch: every site of every key is
//! patched and every call reaches its key's new target.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2, t3};

use static_call::{static_call, Batch, Site, SiteState};

type F = extern "C" fn(u64) -> u64;

const TARGETS: [Option<F>; 4] = [None, Some(t1), Some(t2), Some(t3)];

/// One key, reached through plain function pointers (each key's static has
/// its own type).
struct Handle {
    call: fn(u64) -> u64,
    add: fn(&mut Batch, Option<F>),
    sites: fn() -> Vec<Site>,
}

macro_rules! x10 {
    ($($t:tt)*) => { $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* };
}

macro_rules! key {
    () => {{
        #[static_call]
        static K: extern "C" fn(u64) -> u64 = t1;
        #[inline(never)]
        fn call(x: u64) -> u64 {
            K.call(x)
        }
        fn add(b: &mut Batch, f: Option<F>) {
            match f {
                Some(f) => b.update(&K, f),
                None => b.reset(&K),
            };
        }
        fn sites() -> Vec<Site> {
            K.sites()
        }
        Handle { call, add, sites }
    }};
}

fn keys() -> Vec<Handle> {
    let mut v = Vec::with_capacity(1000);
    x10! { x10! { x10! { v.push(key!()); } } }
    v
}

#[test]
fn a_thousand_keys_in_one_batch() {
    let keys = keys();
    assert_eq!(keys.len(), 1000);
    static_call::init().unwrap();
    let addrs: Vec<usize> = keys.iter().flat_map(|k| (k.sites)()).map(|s| s.address()).collect();
    assert_eq!(addrs.len(), 1000, "one site per key");
    let protections = common::page_protections(addrs, common::INSN_LEN);
    for round in 0..8usize {
        let state = |i: usize| TARGETS[(i + round) % 4];
        let before = static_call::stats();
        let t = std::time::Instant::now();
        static_call::batch(|b| {
            for (i, k) in keys.iter().enumerate() {
                (k.add)(b, state(i));
            }
        })
        .unwrap();
        let took = t.elapsed();
        let after = static_call::stats();
        common::assert_text_protected(&protections);
        assert_eq!(after.updates - before.updates, 1000);
        for (i, k) in keys.iter().enumerate() {
            let want = state(i).map_or(0, |f| f(i as u64 + 1));
            assert_eq!((k.call)(i as u64 + 1), want, "key {i} after round {round}");
            let expect = if state(i).is_some() { SiteState::Direct } else { SiteState::Zero };
            assert!((k.sites)().iter().all(|s| s.state() == expect), "key {i} round {round}");
        }
        eprintln!(
            "round {round}: batch of 1,000 keys in {took:?}, {} sites rewritten",
            after.sites_patched - before.sites_patched
        );
    }
}
