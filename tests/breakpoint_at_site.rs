//! A debugger's breakpoint (`int3`) on a site's instruction reaches the
//! SIGTRAP handler installed before ours (guarantee 5): at
//! `Site::address()` for a `Direct` site (`cs cs cs int3 ..`), and for an
//! `Indirect` site one byte before it, where its `Display` starts (the
//! `ff` of `ff 15`). The handler (a debugger's stand-in) puts the original
//! byte back and resumes on the breakpoint's address, as gdb does.
//!
//! Not tested because it cannot hold: a breakpoint at `Site::address()`
//! of an `Indirect` site lands on the `ff 15`'s ModRM byte, in the middle
//! of the instruction (`cs cs ff cc` is `dec esp`): the process dies, as
//! it would with any breakpoint inside an instruction. `Site::address()`
//! and `SiteState::Indirect` say where the instruction starts.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::{static_call, SiteState};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering::*};

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

static HITS: AtomicU64 = AtomicU64::new(0);
static BP: AtomicUsize = AtomicUsize::new(0);
static ORIG: AtomicUsize = AtomicUsize::new(0);
static MEM: AtomicI32 = AtomicI32::new(-1);

extern "C" fn debugger(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO arguments.
    let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
    let bp = BP.load(SeqCst);
    if rip == bp + 1 {
        let b = ORIG.load(SeqCst) as u8;
        // SAFETY: pwrite is async-signal-safe; our /proc/self/mem fd.
        unsafe { libc::pwrite(MEM.load(SeqCst), &b as *const u8 as *const libc::c_void, 1, bp as libc::off_t) };
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] = bp as i64;
        HITS.fetch_add(1, SeqCst);
    }
}

fn child(far: bool, before: bool) {
    // SAFETY: installing a plain SA_SIGINFO handler before init; opening
    // /proc/self/mem.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = debugger as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
        MEM.store(libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR), SeqCst);
    }
    static_call::init().unwrap();
    let page = common::far_page(k_a as fn(u64) -> u64 as usize);
    // SAFETY: `x + 7` at the page's start.
    let plus7: F = unsafe { std::mem::transmute::<usize, F>(page) };
    let (f, want, state) = if far { (plus7, 107, SiteState::Indirect) } else { (plus1 as F, 101, SiteState::Direct) };
    K.update(f);
    let s = K.sites()[0].clone();
    assert_eq!(s.state(), state);
    eprintln!("site: {s}");
    let bp = if before { s.address() - 1 } else { s.address() };
    BP.store(bp, SeqCst);
    ORIG.store(common::read_bytes(bp, 1)[0] as usize, SeqCst);
    common::poke_text(bp, &[0xcc]);
    let r = k_a(100);
    assert_eq!(HITS.load(SeqCst), 1, "the breakpoint at Site::address() reached the debugger");
    assert_eq!(r, want);
    eprintln!(
        "child {}: done",
        if before {
            "indirect_before_child"
        } else if far {
            "indirect_child"
        } else {
            "direct_child"
        }
    );
}

#[test]
#[ignore]
fn direct_child() {
    if common::in_child("direct_child") {
        child(false, false)
    }
}

#[test]
fn breakpoint_at_direct_site_address_traps() {
    common::run_child("direct_child", &[]);
}

#[test]
#[ignore]
fn indirect_before_child() {
    if common::in_child("indirect_before_child") {
        child(true, true)
    }
}

/// Held: the breakpoint on the byte Display shows for an Indirect site
/// (the `ff`, one before `Site::address()`) reaches the debugger.
#[test]
fn breakpoint_at_indirect_site_display_address_traps() {
    common::run_child("indirect_before_child", &[]);
}
