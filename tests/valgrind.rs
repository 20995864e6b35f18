//! Under valgrind (`--smc-check=all`, as the README says), patched sites in
//! every form run: a direct call, the no-target forms (`nop`, and the zero
//! form, which once was `cs cs cs xor eax, eax` behind the site's own `cs`
//! padding: nine prefixes, refused by valgrind as an illegal instruction),
//! the indirect call of a far target (`cs`.. `call qword ptr [rip +
//! slot]`), and back. Skipped, with a message, where valgrind is not installed (CI
//! installs it).
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::in_child;
use static_call::{static_call, SiteState};

extern "C" fn plus1(x: u64) -> u64 {
    x + 1
}

static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
extern "C" fn seen(x: u32) {
    SEEN.fetch_add(x as u64, std::sync::atomic::Ordering::SeqCst);
}

#[static_call]
static ZERO: extern "C" fn(u64) -> u64;
#[static_call]
static UNIT: extern "C" fn(u32);

/// Sites of `ZERO` at every alignment of the asm's start, so that the
/// site's `cs` padding takes each of its lengths (3 to 6 prefixes).
macro_rules! zero_sites {
    ($($name:ident: $($nop:literal)*;)*) => {$(
        #[inline(never)]
        fn $name(x: u64) -> u64 {
            // SAFETY: one-byte nops.
            unsafe { core::arch::asm!($($nop,)* "", options(nomem, nostack, preserves_flags)) };
            ZERO.call(x)
        }
    )*};
}
zero_sites! {
    zero0: ;
    zero1: "nop";
    zero2: "nop" "nop";
    zero3: "nop" "nop" "nop";
}

fn zero(x: u64) -> u64 {
    let r = [zero0(x), zero1(x), zero2(x), zero3(x)];
    assert!(r.iter().all(|&v| v == r[0]), "{r:?}");
    r[0]
}
#[inline(never)]
fn unit(x: u32) {
    UNIT.call(x)
}

#[test]
fn every_site_form_runs_under_valgrind() {
    common::child_runs_under_valgrind("valgrind_child");
}

#[test]
#[ignore = "child process of every_site_form_runs_under_valgrind"]
fn valgrind_child() {
    if !in_child("valgrind_child") {
        return;
    }
    static_call::init().unwrap();
    let pads: std::collections::BTreeSet<usize> = ZERO
        .sites()
        .iter()
        .map(|s| (1..=6).take_while(|i| common::read_bytes(s.address() - i, 1)[0] == 0x2e).count())
        .collect();
    println!("child valgrind_child: cs prefixes before the sites: {pads:?}");
    // The case valgrind refused: six `cs` of padding before a five-byte form
    // (with the old zero form, nine prefixes).
    assert!(pads.contains(&6), "no site with six prefixes: {pads:?}");
    assert!(ZERO.sites().iter().all(|s| s.state() == SiteState::Zero));
    assert!(UNIT.sites().iter().all(|s| s.state() == SiteState::Nop));
    assert_eq!(zero(41), 0);
    unit(5);
    assert_eq!(SEEN.load(std::sync::atomic::Ordering::SeqCst), 0);
    ZERO.update(plus1);
    UNIT.update(seen);
    assert!(ZERO.sites().iter().all(|s| s.state() == SiteState::Direct));
    assert_eq!(zero(41), 42);
    unit(5);
    assert_eq!(SEEN.load(std::sync::atomic::Ordering::SeqCst), 5);
    // A far target: the indirect form `call qword ptr [rip + slot]` behind
    // each site's remaining prefixes (two to five), and back.
    let page = common::far_page(zero0 as fn(u64) -> u64 as usize);
    // SAFETY: the page holds `x + 7` at 0, of this type.
    let plus7: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute::<usize, extern "C" fn(u64) -> u64>(page) };
    ZERO.update(plus7);
    assert!(ZERO.sites().iter().all(|s| s.state() == SiteState::Indirect), "{:?}", ZERO.sites());
    assert_eq!(zero(41), 48);
    ZERO.update(plus1);
    assert_eq!(zero(41), 42);
    ZERO.reset();
    UNIT.reset();
    assert_eq!(zero(41), 0);
    unit(5);
    assert_eq!(SEEN.load(std::sync::atomic::Ordering::SeqCst), 5);
    println!("\nchild valgrind_child: done");
}
