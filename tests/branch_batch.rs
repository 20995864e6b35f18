//! `batch` switches a static branch and a call key together, with one set
//! of syncs: both take effect, and the branch sites and the call site are
//! patched by the same update.
use static_call::{static_branch, static_call};

#[static_branch]
static TRACE: bool = false;

extern "C" fn fnv(x: u64) -> u64 {
    x ^ 0xcbf2_9ce4_8422_2325
}
extern "C" fn sip(x: u64) -> u64 {
    x.rotate_left(7)
}

#[static_call]
static HASH: extern "C" fn(u64) -> u64 = fnv;

#[inline(never)]
fn work(x: u64) -> (u64, bool) {
    let h = HASH.call(x);
    let t = if TRACE.unlikely() { std::hint::black_box(true) } else { false };
    (h, t)
}

#[test]
fn batch_sets_a_branch_and_updates_a_call_key() {
    let _ = static_call::init();
    let patching = matches!(static_call::mode(), static_call::Mode::Patching(_));
    assert_eq!(work(5), (fnv(5), false));
    let before = static_call::stats();
    static_call::batch(|b| {
        b.set(&TRACE, true);
        b.update(&HASH, sip);
    })
    .unwrap();
    assert_eq!(work(5), (sip(5), true));
    assert!(TRACE.get());
    assert_eq!(HASH.get().map(|f| f(3)), Some(sip(3)));
    let after = static_call::stats();
    assert_eq!(after.updates - before.updates, 2, "one batch of two keys");
    if patching {
        assert_eq!(after.branch_sites_patched - before.branch_sites_patched, TRACE.sites().len() as u64);
        assert!(after.sites_patched > before.sites_patched);
        assert!(TRACE.sites().iter().all(|s| s.state() == static_call::SiteState::Taken));
    }
    // The last change of a key in a batch wins.
    static_call::batch(|b| {
        b.set(&TRACE, true);
        b.update(&HASH, fnv);
        b.set(&TRACE, false);
    })
    .unwrap();
    assert_eq!(work(5), (fnv(5), false));
    assert!(!TRACE.get());
}
