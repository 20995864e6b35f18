//! Far targets at function-pointer cost (issue 19): on x86-64 a site whose
//! target is out of rel32 reach becomes one indirect call through its key's
//! slot, `call qword ptr [rip + slot]` (`ff 15 disp32`, `SiteState::Indirect`),
//! which starts on the site's last `cs` prefix and ends where the `call
//! rel32` ended. Every transition is checked against the text and against
//! the calls: Trampoline -> Indirect (at `init`, a key whose default target
//! is libc's `labs`), Direct <-> Indirect, Indirect -> Indirect (only the
//! slot changes), Zero <-> Indirect, Nop <-> Indirect. The trampoline keeps
//! its far form for whoever calls it.
//!
//! On aarch64 (no indirect site form: a `bl` cannot become a load and a
//! branch in one instruction) far sites stay on the trampoline, whose far
//! head is a `nop` that falls through into `adrp; ldr x16; br x16`.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::reaches;
use static_call::{static_call, NotDirect, Site, SiteState, StaticCall};

type F = extern "C" fn(u64) -> u64;
type Store = extern "C" fn(*mut u64);

unsafe extern "C" {
    /// libc's `labs`: in a shared library, far from this executable's text
    /// (a position-independent executable is mapped far from the
    /// libraries).
    safe fn labs(x: i64) -> i64;
}

extern "C" fn near(x: u64) -> u64 {
    x + 1
}

extern "C" fn double(x: i64) -> i64 {
    x * 2
}

extern "C" fn near_store(p: *mut u64) {
    // SAFETY: callers pass a valid pointer to a u64.
    unsafe { p.write(1) }
}

/// A key whose default target lives in libc: its sites go from the
/// trampoline straight to the far form at `init`.
#[static_call]
static LABS: extern "C" fn(i64) -> i64 = labs;

#[static_call]
static FAR: extern "C" fn(u64) -> u64 = near;

#[static_call]
static ZERO: extern "C" fn(u64) -> u64;

#[static_call]
static STORE: extern "C" fn(*mut u64);

#[inline(never)]
fn labs_site(x: i64) -> i64 {
    LABS.call(x)
}

#[inline(never)]
fn far(x: u64) -> u64 {
    FAR.call(x)
}

#[inline(never)]
fn far_twice(x: u64) -> u64 {
    FAR.call(FAR.call(x ^ 3) ^ 3)
}

/// What `far_twice` returns when the target is `f`.
fn twice(f: impl Fn(u64) -> u64, x: u64) -> u64 {
    f(f(x ^ 3) ^ 3)
}

#[inline(never)]
fn zero(x: u64) -> u64 {
    ZERO.call(x)
}

#[inline(never)]
fn store() -> u64 {
    let mut v = 0u64;
    STORE.call(&mut v);
    v
}

/// The key's slot: the word after its 24-byte versioned prefix.
fn slot_of<K: StaticCall>(k: &K) -> usize {
    k.key() as *const _ as usize + 24
}

/// The trampoline head of the far form: x86-64 `jmp +3` (to `jmp [rip +
/// slot]` at +8), aarch64 `nop` (falls through into `adrp x16; ldr x16;
/// br x16`).
#[cfg(target_arch = "x86_64")]
const FAR_HEAD: &[u8] = &[0xe9, 0x03, 0x00, 0x00, 0x00];
#[cfg(target_arch = "aarch64")]
const FAR_HEAD: &[u8] = &0xd503_201fu32.to_le_bytes();

fn head_of<K: StaticCall>(k: &K) -> Vec<u8> {
    let t = static_call::__private::trampoline_of(k.key()).expect("a trampoline");
    common::read_bytes(t, FAR_HEAD.len())
}

/// Calls the key's trampoline directly, as an `out_of_line` call or a
/// refused site would.
fn via_trampoline(k: &FAR, x: u64) -> u64 {
    let t = static_call::__private::trampoline_of(k.key()).expect("a trampoline");
    // SAFETY: the trampoline reaches FAR's target (or its no-target stub),
    // an `extern "C" fn(u64) -> u64`.
    // SAFETY: `t` is the address of a function of type `F` (a copy of one).
    let f: F = unsafe { std::mem::transmute::<usize, F>(t) };
    f(x)
}

/// A site whose target is far: x86-64 `call qword ptr [rip + slot]` on its
/// last prefix, ending where the site ends; aarch64 still `bl trampoline`.
#[track_caller]
fn assert_far_form(s: &Site, slot: usize, tramp: usize) {
    assert_eq!((s.state(), s.reason()), (far_state(), Some(NotDirect::OutOfReach)), "{s}");
    #[cfg(target_arch = "aarch64")]
    {
        assert_eq!(common::call_target(s.address(), s.bytes()), Some(tramp), "{s}");
        let _ = slot;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};
        let at = s.address();
        assert_ne!(common::call_target(at, s.bytes()), Some(tramp), "{s}: not a call of the trampoline");
        let text = common::read_bytes(at - 3, 8);
        assert_eq!(text[..3], [0x2e, 0x2e, 0xff], "{s}: two cs prefixes left, then the opcode on the third");
        assert_eq!(text[3], 0x15, "{s}");
        assert_eq!(s.bytes()[..], text[3..], "Site::bytes are the five bytes at the site's address");
        for start in [at - 3, at - 1] {
            let bytes = common::read_bytes(start, 16);
            let i = Decoder::with_ip(64, &bytes, start as u64, DecoderOptions::NONE).decode();
            assert_eq!(i.mnemonic(), Mnemonic::Call, "{s} from {start:#x}");
            assert_eq!(i.op0_kind(), OpKind::Memory, "{s}");
            assert!(i.is_ip_rel_memory_operand(), "{s}");
            assert_eq!(i.ip_rel_memory_address(), slot as u64, "{s}: reads the key's slot");
            assert_eq!(i.next_ip(), at as u64 + 5, "{s}: ends where the call rel32 ended");
        }
        let shown = s.to_string();
        assert!(shown.contains("call qword ptr"), "{shown}");
        assert!(shown.contains("ff 15"), "{shown}");
        assert!(shown.contains("out of rel32 reach"), "{shown}");
    }
}

fn far_state() -> SiteState {
    if cfg!(target_arch = "x86_64") {
        SiteState::Indirect
    } else {
        SiteState::Trampoline
    }
}

#[track_caller]
fn assert_all(sites: &[Site], state: SiteState, reason: Option<NotDirect>) {
    assert!(!sites.is_empty());
    for s in sites {
        assert_eq!((s.state(), s.reason()), (state, reason), "{s}");
    }
}

#[test]
fn far_targets_are_one_indirect_call_through_the_slot() {
    // Before init: the libc key's sites call the trampoline.
    assert_eq!(labs_site(-5), 5);
    assert_all(&LABS.sites(), SiteState::Trampoline, Some(NotDirect::NotInitialized));

    // init: Trampoline -> the far form (if libc is out of reach).
    static_call::init().unwrap();
    let labs_far = !reaches(LABS.sites()[0].address(), labs as *const () as usize);
    eprintln!("labs at {:#x}: {}", labs as *const () as usize, if labs_far { "far" } else { "near" });
    let labs_tramp = static_call::__private::trampoline_of(LABS.key()).unwrap();
    for s in LABS.sites() {
        if labs_far {
            assert_far_form(&s, slot_of(&LABS), labs_tramp);
        } else {
            assert_eq!(s.state(), SiteState::Direct, "{s}");
        }
    }
    assert_eq!((labs_site(-5), labs_site(7)), (5, 7));

    // Direct -> far: one instruction through the slot.
    let page = common::far_page(far as fn(u64) -> u64 as usize);
    // SAFETY: the page holds `x + 7` at 0 and `x + 9` at 16, of this type.
    let (plus7, plus9): (F, F) =
        unsafe { (std::mem::transmute::<usize, F>(page), std::mem::transmute::<usize, F>(page + 16)) };
    let sites = FAR.sites();
    assert_eq!(sites.len(), 3);
    assert!(sites.iter().all(|s| !reaches(s.address(), page)));
    assert_all(&sites, SiteState::Direct, None);
    let tramp = static_call::__private::trampoline_of(FAR.key()).unwrap();
    let patched = static_call::stats().sites_patched;
    FAR.update(plus7);
    assert_eq!((far(1), far_twice(1)), (8, twice(|x| x + 7, 1)));
    for s in FAR.sites() {
        assert_far_form(&s, slot_of(&FAR), tramp);
    }
    let rewritten = static_call::stats().sites_patched - patched;
    if cfg!(target_arch = "x86_64") {
        assert_eq!(rewritten, 3, "a site moved to the indirect form counts as patched");
    } else {
        assert_eq!(rewritten, 3, "each site moved back to the trampoline");
    }
    // The trampoline keeps its far form, for whoever calls it.
    assert_eq!(head_of(&FAR), FAR_HEAD);
    assert_eq!(via_trampoline(&FAR, 1), 8);

    // Far -> far: only the slot changes, no site is rewritten.
    let patched = static_call::stats().sites_patched;
    FAR.update(plus9);
    assert_eq!(static_call::stats().sites_patched, patched, "far to far rewrites no site");
    assert_eq!((far(1), via_trampoline(&FAR, 1)), (10, 10));
    for s in FAR.sites() {
        assert_far_form(&s, slot_of(&FAR), tramp);
    }

    // Far -> near: direct again.
    FAR.update(near);
    assert_eq!((far(1), far_twice(1)), (2, twice(|x| x + 1, 1)));
    assert_all(&FAR.sites(), SiteState::Direct, None);
    assert_ne!(head_of(&FAR), FAR_HEAD);
    assert_eq!(via_trampoline(&FAR, 1), 2);

    // Zero <-> far.
    assert_eq!(zero(5), 0);
    assert_all(&ZERO.sites(), SiteState::Zero, Some(NotDirect::NoTarget));
    ZERO.update(plus7);
    assert_eq!(zero(5), 12);
    let zero_tramp = static_call::__private::trampoline_of(ZERO.key()).unwrap();
    for s in ZERO.sites() {
        assert_far_form(&s, slot_of(&ZERO), zero_tramp);
    }
    ZERO.reset();
    assert_eq!(zero(5), 0);
    assert_all(&ZERO.sites(), SiteState::Zero, Some(NotDirect::NoTarget));

    // Nop <-> far (a key returning `()`): the far function stores 42.
    assert_eq!(store(), 0);
    assert_all(&STORE.sites(), SiteState::Nop, Some(NotDirect::NoTarget));
    // SAFETY: the page holds `*p = 42` at 32, of this type.
    let store42: Store = unsafe { std::mem::transmute::<usize, Store>(page + 32) };
    STORE.update(store42);
    assert_eq!(store(), 42);
    let store_tramp = static_call::__private::trampoline_of(STORE.key()).unwrap();
    for s in STORE.sites() {
        assert_far_form(&s, slot_of(&STORE), store_tramp);
    }
    STORE.update(near_store);
    assert_eq!(store(), 1);
    assert_all(&STORE.sites(), SiteState::Direct, None);
    STORE.update(store42);
    assert_eq!(store(), 42);
    STORE.reset();
    assert_eq!(store(), 0);
    assert_all(&STORE.sites(), SiteState::Nop, Some(NotDirect::NoTarget));

    // A far target and back, then none, and the libc key back to its own.
    FAR.update(plus7);
    FAR.reset();
    assert_eq!(far(1), 0);
    assert_all(&FAR.sites(), SiteState::Zero, Some(NotDirect::NoTarget));
    FAR.update(near);
    assert_eq!(far(1), 2);
    LABS.update(double);
    assert_eq!(labs_site(-5), -10);
    LABS.update(labs);
    assert_eq!(labs_site(-5), 5);
    for s in LABS.sites() {
        if labs_far {
            assert_far_form(&s, slot_of(&LABS), labs_tramp);
        }
    }
}
