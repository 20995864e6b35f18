//! Static branches (DESIGN 9): the example as written, both
//! polarities, `set`/`try_set`/`get`/`sites` before and after `init()`,
//! and sites in a loop, in a generic fn and in a fn called from many
//! places. On the portable backend the same values, no sites.
use static_call::{static_branch, static_call, Mode, SiteState};

#[static_branch]
static TRACE: bool = false;

/// A documented, public branch whose value is a const expression.
#[static_branch]
pub static FAST: bool = LEVEL > 2;

const LEVEL: u32 = 3;

extern "C" fn fnv(x: u64) -> u64 {
    x ^ 0xcbf2_9ce4_8422_2325
}
extern "C" fn sip(x: u64) -> u64 {
    x.rotate_left(7)
}

#[static_call]
static HASH: extern "C" fn(u64) -> u64 = fnv;

#[inline(never)]
fn trace(x: u64) -> u64 {
    // The shape: `if TRACE.unlikely() { record(x) }`.
    let mut r = 0;
    if TRACE.unlikely() {
        r = x + 1000;
    }
    r
}

#[inline(never)]
fn fast(x: u64) -> &'static str {
    let _ = x;
    if FAST.likely() {
        "fast"
    } else {
        "slow"
    }
}

/// A branch in a loop: how many of `n` iterations took it.
#[inline(never)]
fn count_in_loop(n: u64) -> u64 {
    let mut taken = 0;
    for i in 0..n {
        if TRACE.unlikely() {
            taken += 1;
        }
        std::hint::black_box(i);
    }
    taken
}

/// A branch in a generic fn: one site per instantiation.
#[inline(never)]
fn generic<T: Copy + Into<u64>>(x: T) -> u64 {
    if FAST.likely() {
        x.into()
    } else {
        0
    }
}

/// A fn inlined into many callers: each inlined copy is a site.
#[inline(always)]
fn inlined() -> bool {
    TRACE.unlikely()
}

#[inline(never)]
fn caller1() -> bool {
    inlined()
}
#[inline(never)]
fn caller2() -> bool {
    inlined()
}
#[inline(never)]
fn caller3() -> bool {
    std::hint::black_box(inlined())
}

fn check(trace_on: bool, fast_on: bool) {
    assert_eq!(TRACE.get(), trace_on);
    assert_eq!(FAST.get(), fast_on);
    assert_eq!(trace(1), if trace_on { 1001 } else { 0 });
    assert_eq!(fast(1), if fast_on { "fast" } else { "slow" });
    assert_eq!(count_in_loop(100), if trace_on { 100 } else { 0 });
    assert_eq!(generic(7u8), if fast_on { 7 } else { 0 });
    assert_eq!(generic(9u32), if fast_on { 9 } else { 0 });
    assert_eq!([caller1(), caller2(), caller3()], [trace_on; 3]);
    assert_eq!(TRACE.unlikely(), trace_on);
    assert_eq!(FAST.likely(), fast_on);
}

/// A key with sites of both polarities: after init, the `likely` ones are
/// taken while it is false, the `unlikely` ones not, and the other way
/// round.
#[static_branch]
static BOTH: bool = false;

#[inline(never)]
fn both() -> (bool, bool) {
    (BOTH.likely(), BOTH.unlikely())
}

fn states(sites: &[static_call::Site]) -> Vec<SiteState> {
    sites.iter().map(|s| s.state()).collect()
}

#[test]
fn static_branches() {
    let patching = static_call::PATCHING;
    // Before init: the built forms test the value.
    check(false, true);
    let sites = TRACE.sites();
    if patching {
        // trace, the loop, the inlined copies (identical callers may be
        // merged in release builds), the one in `check`.
        assert!(sites.len() >= 4, "{sites:?}");
        for s in &sites {
            assert_eq!(s.state(), SiteState::Trampoline, "{s}");
            assert_eq!(s.reason(), Some(static_call::NotDirect::NotInitialized), "{s}");
        }
        assert!(FAST.sites().len() >= 4);
    } else {
        assert!(sites.is_empty());
    }
    assert!(!TRACE.set(true));
    check(true, true);
    assert_eq!(TRACE.try_set(false), Ok(true));
    check(false, true);

    let init = static_call::init();
    let patched = matches!(static_call::mode(), Mode::Patching(_));
    if patching {
        assert!(init.is_ok() == patched, "{init:?}");
    }
    check(false, true);
    if patched {
        // Unlikely sites of a false key and likely sites of a true one fall
        // through; every site was patched by init.
        assert!(static_call::stats().branch_sites_patched >= (TRACE.sites().len() + FAST.sites().len()) as u64);
        assert!(states(&TRACE.sites()).iter().all(|&s| s == SiteState::NotTaken), "{:?}", TRACE.sites());
        assert!(states(&FAST.sites()).iter().all(|&s| s == SiteState::NotTaken), "{:?}", FAST.sites());
        for s in TRACE.sites() {
            assert_eq!(s.reason(), None);
            let nop =
                if cfg!(target_arch = "aarch64") { [0x1f, 0x20, 0x03, 0xd5, 0] } else { [0x0f, 0x1f, 0x44, 0, 0] };
            assert_eq!(s.bytes(), nop, "{s}");
        }
    }
    let before = static_call::stats();
    assert!(!TRACE.set(true));
    check(true, true);
    assert!(FAST.set(false));
    check(true, false);
    if patched {
        assert!(states(&TRACE.sites()).iter().all(|&s| s == SiteState::Taken), "{:?}", TRACE.sites());
        assert!(states(&FAST.sites()).iter().all(|&s| s == SiteState::Taken), "{:?}", FAST.sites());
        let after = static_call::stats();
        assert_eq!(
            after.branch_sites_patched - before.branch_sites_patched,
            (TRACE.sites().len() + FAST.sites().len()) as u64
        );
        assert_eq!(after.sites_patched, before.sites_patched, "branch sites are counted apart");
        // Taken sites jump to their label, and say so.
        let shown = TRACE.sites()[0].to_string();
        let jump = if cfg!(target_arch = "aarch64") { "  b 0x" } else { "  jmp 0x" };
        assert!(shown.contains(jump), "{shown}");
    }
    // Setting the value it has changes nothing.
    assert_eq!(TRACE.try_set(true), Ok(true));
    check(true, false);
    assert!(!FAST.set(true));
    assert!(TRACE.set(false));
    check(false, true);

    assert_eq!(both(), (false, false));
    if patched {
        let st = states(&BOTH.sites());
        assert_eq!(st.len(), 2);
        assert!(st.contains(&SiteState::Taken) && st.contains(&SiteState::NotTaken), "{st:?}");
    }
    BOTH.set(true);
    assert_eq!(both(), (true, true));
    if patched {
        let st = states(&BOTH.sites());
        assert!(st.contains(&SiteState::Taken) && st.contains(&SiteState::NotTaken), "{st:?}");
    }

    // A batch with a branch and a call key.
    static_call::batch(|b| {
        b.set(&TRACE, true);
        b.update(&HASH, sip);
    })
    .unwrap();
    check(true, true);
    assert_eq!(HASH.call(1), sip(1));
    assert_eq!(format!("{:?}", TRACE), format!("TRACE {{ value: true, sites: {} }}", TRACE.sites().len()));
}
