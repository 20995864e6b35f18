//! A static-branch site whose bytes were changed behind our back (a
//! debugger's breakpoint): `set` and a batch with it are refused with an
//! error naming the address, and nothing is written: not the value, not a
//! byte of any site of the batch, not the call key in the same batch.
//! Once the bytes are back, `set` patches every site again.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::{static_branch, static_call, Error, SiteState};

#[static_branch]
static B: bool = false;
#[static_branch]
static OTHER: bool = false;

extern "C" fn one(x: u64) -> u64 {
    x + 1
}
extern "C" fn two(x: u64) -> u64 {
    x + 2
}
#[static_call]
static K: extern "C" fn(u64) -> u64 = one;

#[inline(never)]
fn b1() -> bool {
    B.unlikely()
}
#[inline(never)]
fn b2() -> bool {
    std::hint::black_box(2);
    B.likely()
}
#[inline(never)]
fn other() -> bool {
    OTHER.unlikely()
}

const BREAKPOINT: &[u8] = if cfg!(target_arch = "aarch64") { &[0x00, 0x00, 0x20, 0xd4] } else { &[0xcc] };

fn snapshot() -> Vec<Vec<u8>> {
    B.sites()
        .iter()
        .chain(OTHER.sites().iter())
        .chain(K.sites().iter())
        .map(|s| common::read_bytes(common::patch_of(s.address()), common::PATCH_LEN))
        .collect()
}

#[test]
fn a_changed_branch_site_refuses_the_set_and_writes_nothing() {
    if static_call::init().is_err() {
        eprintln!("patching impossible here: nothing to test");
        return;
    }
    assert_eq!((b1(), b2(), other(), K.call(1)), (false, false, false, 2));
    let site = B.sites()[0].address();
    let at = common::patch_of(site);
    let original = common::read_bytes(at, BREAKPOINT.len());
    common::poke_text(at, BREAKPOINT);
    let before = snapshot();

    let e = B.try_set(true).expect_err("a breakpoint on the site");
    assert!(matches!(e, Error::UnexpectedBytes { address, .. } if address == at), "{e:?}");
    let e = static_call::batch(|b| {
        b.set(&OTHER, true);
        b.update(&K, two);
        b.set(&B, true);
    })
    .expect_err("a breakpoint on a site of the batch");
    assert!(matches!(e, Error::UnexpectedBytes { address, .. } if address == at), "{e:?}");
    assert_eq!(snapshot(), before, "nothing of the refused update is written");
    assert!(!B.get() && !OTHER.get());
    assert_eq!(K.get().map(|f| f(1)), Some(2));

    common::poke_text(at, &original);
    // The sites not poked still run, on the old value.
    assert_eq!((b2(), other(), K.call(1)), (false, false, 2));
    assert!(!B.set(true));
    assert_eq!((b1(), b2()), (true, true));
    assert!(B.sites().iter().all(|s| matches!(s.state(), SiteState::Taken | SiteState::NotTaken)));
}
