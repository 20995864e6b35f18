//! an update to a far target whose writes all
//! fail from step 2 on (the rollback fails too: `Poisoned`). The int3s left
//! on the sites' last `cs` prefixes must keep being emulated as the new
//! instruction, the indirect call through the slot (which holds the new
//! target), from this thread and under load; `sites()` must not panic on the
//! torn patch (`cc` then the indirect call's body); later updates refuse.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::__private::fail_text_write_after;
use static_call::{static_call, Error};

type F = extern "C" fn(u64) -> u64;

extern "C" fn a(x: u64) -> u64 {
    x + 1
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = a;

#[inline(never)]
fn s1(x: u64) -> u64 {
    K.call(x)
}
#[inline(never)]
fn s2(x: u64) -> u64 {
    K.call(std::hint::black_box(x))
}

#[test]
fn poisoned_far_update() {
    common::run_child("poisoned_far_child", &[]);
    common::run_child("poisoned_far_child", &[("STATIC_CALL_WRITER", "mprotect")]);
}

#[test]
#[ignore]
fn poisoned_far_child() {
    if !common::in_child("poisoned_far_child") {
        return;
    }
    static_call::init().unwrap();
    let page = common::far_page(s1 as fn(u64) -> u64 as usize);
    // SAFETY: `x + 7` at the page's start.
    let far: F = unsafe { std::mem::transmute::<usize, F>(page) };
    let runs = common::page_runs(
        K.sites().iter().map(|s| common::patch_of(s.address())).chain(static_call::__private::trampoline_of(&*K)),
    );
    // Step 1 (one write per page-run) succeeds, then every write fails.
    fail_text_write_after(runs, usize::MAX);
    let e = K.try_update(far).expect_err("the injected failures fail the update");
    assert!(matches!(e, Error::Poisoned { .. }), "{e:?}");
    fail_text_write_after(0, 0);
    for s in K.sites() {
        let p = common::read_bytes(common::patch_of(s.address()), 6);
        assert_eq!(p[0], 0xcc, "{p:02x?}");
        eprintln!("poisoned site: {s} / {:?} {:?}", s.state(), s.reason());
    }
    let before = static_call::__private::indirect_traps();
    assert_eq!((s1(1), s2(1)), (8, 8));
    let after = static_call::__private::indirect_traps();
    assert!(after.0 >= before.0 + 2, "{before:?} {after:?}");
    let t: Vec<_> =
        (0..2).map(|_| std::thread::spawn(|| (0..100_000).all(|i| s1(i) == i + 7 && s2(i) == i + 7))).collect();
    assert!(t.into_iter().all(|t| t.join().unwrap()));
    assert!(matches!(K.try_update(a), Err(Error::Poisoned { .. })));
    assert_eq!((s1(1), s2(1)), (8, 8));
    eprintln!("child poisoned_far_child: done");
}
