//! Bytes changed behind our back (a debugger's breakpoint, another patcher):
//! the update is refused with an error naming that address, and nothing of it
//! is written: no site, no trampoline, no target of any key in the batch.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2};

use static_call::{static_call, Error};

extern "C" fn intruder(x: u64) -> u64 {
    (9 << 48) | x
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;
#[static_call]
static OTHER: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn k_a(x: u64) -> u64 {
    K.call(x)
}
// Each site function differs (release builds merge identical functions).
#[inline(never)]
fn k_b(x: u64) -> u64 {
    K.call(x ^ 1) ^ 1
}
#[inline(never)]
fn k_c(x: u64) -> u64 {
    K.call(x ^ 2) ^ 2
}
#[inline(never)]
fn other(x: u64) -> u64 {
    OTHER.call(x)
}

/// A debugger's breakpoint: `int3` on the first byte (x86-64), `brk #0`
/// in place of the instruction (aarch64).
const BREAKPOINT: &[u8] = if cfg!(target_arch = "aarch64") { &[0x00, 0x00, 0x20, 0xd4] } else { &[0xcc] };

/// A direct call (`call rel32`, `bl`) at `at` to `to`; or a jump (`jmp
/// rel32`, `b`).
fn branch(at: usize, to: usize, call: bool) -> Vec<u8> {
    if cfg!(target_arch = "aarch64") {
        let words = ((to as i64 - at as i64) >> 2) as u32 & 0x03ff_ffff;
        ((if call { 0x9400_0000u32 } else { 0x1400_0000 }) | words).to_le_bytes().to_vec()
    } else {
        let rel = (to as i64 - (at as i64 + 5)) as i32;
        let mut v = vec![if call { 0xe8 } else { 0xe9 }];
        v.extend_from_slice(&rel.to_le_bytes());
        v
    }
}

/// Every byte this test's keys may change: each site's patch (six bytes
/// from the one before its address on x86-64, four on aarch64), each
/// trampoline's thirty-two.
fn snapshot() -> Vec<(usize, Vec<u8>)> {
    let mut v: Vec<_> = K
        .sites()
        .iter()
        .chain(OTHER.sites().iter())
        .map(|s| (s.address(), common::read_bytes(common::patch_of(s.address()), common::PATCH_LEN)))
        .collect();
    for t in [static_call::__private::trampoline_of(&K), static_call::__private::trampoline_of(&OTHER)] {
        let t = t.expect("trampoline");
        v.push((t, common::read_bytes(t, 32)));
    }
    v
}

fn all_addrs() -> Vec<usize> {
    snapshot().iter().map(|(a, _)| *a).collect()
}

#[track_caller]
fn assert_refused(r: Result<(), Error>, at: usize, before: &[(usize, Vec<u8>)]) {
    match r {
        Err(Error::UnexpectedBytes { address, found, expected }) => {
            assert_eq!(address, at, "the error names the changed instruction");
            let n = common::INSN_LEN;
            assert_eq!(found[..n], common::read_bytes(at, n), "it reports what is there");
            assert!(found[n..].iter().chain(&expected[n..]).all(|&b| b == 0), "{found:02x?} {expected:02x?}");
            assert_ne!(found, expected);
        }
        other => panic!("expected UnexpectedBytes at {at:#x}, got {other:?}"),
    }
    assert_eq!(snapshot(), before, "nothing was written");
}

#[test]
fn changed_bytes_refuse_the_whole_update_and_nothing_is_written() {
    static_call::init().unwrap();
    let sites = K.sites();
    assert_eq!(sites.len(), 3);
    assert_eq!(OTHER.sites().len(), 1);
    let protections = common::page_protections(all_addrs(), 32);
    let site = sites[1].address();
    let original = common::read_bytes(site, common::INSN_LEN);

    // 1. A debugger's breakpoint on one site.
    common::poke_text(site, BREAKPOINT);
    // `Site`'s `Display` shows what is there: with the `disasm` feature
    // iced-x86 decodes the breakpoint; without it (the default) the crate's
    // own decoder says, after the bytes, that it is none of its forms.
    let shown = K.sites()[1].to_string();
    let decoded =
        if cfg!(all(feature = "disasm", target_arch = "x86_64")) { " int3" } else { " (not a static_call form)" };
    assert!(shown.starts_with(&format!("{site:#x}: ")) && shown.contains(decoded), "{shown}");
    let before = snapshot();
    assert_refused(K.try_update(t2).map(drop), site, &before);
    common::assert_text_protected(&protections);
    assert_eq!(K.get().map(|f| f(0)), Some(t1(0)), "the target did not change");
    // The same through a batch that also changes another key: that key is
    // not changed either.
    assert_refused(
        static_call::batch(|b| {
            b.update(&OTHER, t2);
            b.update(&K, t2);
        }),
        site,
        &before,
    );
    assert_eq!(OTHER.get().map(|f| f(0)), Some(t1(0)));
    assert_eq!(other(5), t1(5));
    // And the panicking form says what happened.
    let msg = std::panic::catch_unwind(|| K.update(t2)).unwrap_err();
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.contains(&format!("{site:#x}")), "{msg}");
    assert_eq!(snapshot(), before);

    // 1b. x86-64: a breakpoint on the byte before the site, the last `cs`
    // prefix, where the indirect form's opcode and our own `int3` go: the
    // error names that byte.
    if cfg!(target_arch = "x86_64") {
        common::poke_text(site, &original);
        common::poke_text(site - 1, BREAKPOINT);
        let before = snapshot();
        assert_refused(K.try_update(t2).map(drop), site - 1, &before);
        assert_eq!(K.get().map(|f| f(0)), Some(t1(0)), "the target did not change");
        common::poke_text(site - 1, &[0x2e]);
    }

    // 2. Another patcher retargeted the site to a function of its own (a
    // valid call: calling it is fine, and reaches the intruder).
    common::poke_text(site, &branch(site, intruder as *const () as usize, true));
    assert_eq!(k_b(5), intruder(5 ^ 1) ^ 1);
    let before = snapshot();
    assert_refused(K.try_update(t2).map(drop), site, &before);
    assert_refused(K.try_reset().map(drop), site, &before);
    common::assert_text_protected(&protections);
    assert_eq!((k_a(5), k_b(5), k_c(5)), (t1(5), intruder(5 ^ 1) ^ 1, t1(5)));

    // Put the bytes back: updates work again.
    common::poke_text(site, &original);
    K.update(t2);
    common::assert_text_protected(&protections);
    assert_eq!((k_a(5), k_b(5), k_c(5)), (t2(5), t2(5), t2(5)));

    // 3. The trampoline's head changed behind our back.
    let tramp = static_call::__private::trampoline_of(&K).unwrap();
    let head = common::read_bytes(tramp, common::INSN_LEN);
    common::poke_text(tramp, &branch(tramp, intruder as *const () as usize, false));
    let before = snapshot();
    assert_refused(K.try_update(t1).map(drop), tramp, &before);
    common::assert_text_protected(&protections);
    common::poke_text(tramp, &head);
    K.update(t1);
    common::assert_text_protected(&protections);
    assert_eq!((k_a(5), k_b(5), k_c(5), other(5)), (t1(5), t1(5), t1(5), t1(5)));
    assert!(K.sites().iter().all(|s| s.state() == static_call::SiteState::Direct));
}
