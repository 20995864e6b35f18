//! A text write that fails during an update to or from a far target (x86-64:
//! the indirect form `call qword ptr [rip + slot]`, written on the site's
//! last `cs` prefix) leaves every site, the trampoline, the target and the
//! slot as they were, while callers run; a failure at the protocol's last
//! step (x86-64: the first bytes) is finished instead, and the update is
//! complete. Every transition between a near target, a far one and none,
//! with the failure injected at every write of the update in turn; then
//! failed updates to a far target repeated until a caller was emulated as
//! an indirect call during one (x86-64).
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::__private::{fail_text_write_after, text_writes, trampoline_of};
use static_call::{static_call, SiteState, StaticCall};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;

type F = extern "C" fn(u64) -> u64;

extern "C" fn plus1(x: u64) -> u64 {
    x + 1
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

/// The bytes an update of `K` may change (x86-64: six per site, from the
/// byte before its address; four on aarch64), its trampoline, its target
/// and its slot.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Snapshot {
    sites: Vec<(usize, Vec<u8>, SiteState)>,
    tramp: Vec<u8>,
    target: Option<usize>,
    slot: usize,
}

fn snapshot() -> Snapshot {
    let (before, len) = if common::TRAPS { (1, 6) } else { (0, 4) };
    let sites =
        K.sites().iter().map(|s| (s.address(), common::read_bytes(s.address() - before, len), s.state())).collect();
    let slot_at = K.key() as *const _ as usize + 24;
    Snapshot {
        sites,
        tramp: common::read_bytes(trampoline_of(K.key()).unwrap(), 32),
        target: K.get().map(|f| f as usize),
        // SAFETY: the key's slot, an aligned pointer-sized atomic.
        slot: unsafe { (*(slot_at as *const AtomicU64)).load(SeqCst) } as usize,
    }
}

fn set(target: Option<F>) -> Result<(), static_call::Error> {
    match target {
        Some(f) => K.try_update(f).map(drop),
        None => K.try_reset().map(drop),
    }
}

#[test]
fn failed_writes_to_and_from_far_targets_roll_back() {
    static_call::init().unwrap();
    let page = common::far_page(k_a as fn(u64) -> u64 as usize);
    // SAFETY: the page holds `x + 7` at 0, of this type.
    let plus7: F = unsafe { std::mem::transmute::<usize, F>(page) };
    assert!(K.sites().iter().all(|s| !common::reaches(s.address(), page)));
    assert_eq!(K.sites().len(), 2);

    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..2)
        .map(|t| {
            let (stop, wrong) = (stop.clone(), wrong.clone());
            std::thread::spawn(move || {
                let call: fn(u64) -> u64 = if t == 0 { k_a } else { k_b };
                let none = if t == 0 { 0 } else { u64::MAX };
                while !stop.load(Relaxed) {
                    if ![101, 107, none].contains(&call(100)) {
                        wrong.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();

    let targets: [(Option<F>, &str, u64); 3] =
        [(Some(plus1), "near", 101), (Some(plus7), "far", 107), (None, "none", 0)];
    let mut snaps = Vec::new();
    for &(t, _, _) in &targets {
        set(t).unwrap();
        snaps.push(snapshot());
    }
    let far_state = if common::TRAPS { SiteState::Indirect } else { SiteState::Trampoline };
    assert!(snaps[1].sites.iter().all(|s| s.2 == far_state), "{:?}", snaps[1]);
    let (mut rolled_back, mut finished) = (0, 0);
    for (from, &(ft, fname, fexpect)) in targets.iter().enumerate() {
        for (to, &(tt, tname, _)) in targets.iter().enumerate() {
            if from == to || (from != 1 && to != 1) {
                continue;
            }
            // The writes of this transition, counted on a clean run.
            set(ft).unwrap();
            let w = text_writes();
            set(tt).unwrap();
            let writes = text_writes() - w;
            // x86-64: three steps; aarch64: one (a write per page-run with
            // the mprotect writer, per instruction with /proc/self/mem).
            assert!(writes >= if common::TRAPS { 3 } else { 1 }, "{fname} -> {tname}: {writes} writes");
            assert_eq!(snapshot(), snaps[to]);
            for n in 0..writes {
                set(ft).unwrap();
                assert_eq!(snapshot(), snaps[from]);
                fail_text_write_after(n, 1);
                let r = set(tt);
                fail_text_write_after(0, 0);
                match r {
                    Err(e) => {
                        assert!(matches!(e, static_call::Error::TextNotWritable { .. }), "{e:?}");
                        assert_eq!(snapshot(), snaps[from], "{fname} -> {tname}, write {n} failed: not rolled back");
                        assert_eq!(k_a(100), fexpect);
                        rolled_back += 1;
                    }
                    Ok(()) => {
                        if !common::TRAPS {
                            panic!("{fname} -> {tname}, write {n} failed: aarch64 rolls back a failure at any write");
                        }
                        assert_eq!(snapshot(), snaps[to], "{fname} -> {tname}, write {n} failed: not finished");
                        finished += 1;
                    }
                }
            }
        }
    }
    eprintln!("{rolled_back} failed updates rolled back, {finished} finished");
    assert!(rolled_back >= 4 && (finished >= 4 || !common::TRAPS));

    // Failed updates near -> far while callers land on their int3s: until a
    // caller was emulated as an indirect call during one (x86-64).
    if common::TRAPS {
        set(Some(plus1)).unwrap();
        let w = text_writes();
        set(Some(plus7)).unwrap();
        let writes = text_writes() - w;
        set(Some(plus1)).unwrap();
        let base = static_call::__private::indirect_traps().0;
        let mut i = 0usize;
        while static_call::__private::indirect_traps().0 == base && i < 200_000 {
            // A failure in step 1 or 2 (never the first write: some int3 is
            // written): rolled back every time.
            fail_text_write_after(1 + i % (writes / 2), 1);
            let r = set(Some(plus7));
            fail_text_write_after(0, 0);
            r.expect_err("the injected failure fails the update");
            assert_eq!(snapshot(), snaps[0]);
            i += 1;
        }
        eprintln!("{i} failed updates to the far target until a caller was emulated as an indirect call");
        assert!(static_call::__private::indirect_traps().0 > base, "no caller met the int3 in {i} failed updates");
    }
    stop.store(true, Relaxed);
    callers.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(wrong.load(Relaxed), 0, "a call reached none of the targets");
    set(Some(plus1)).unwrap();
    assert_eq!((k_a(1), k_b(1)), (2, 2));
}
