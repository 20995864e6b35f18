//! A breakpoint (`int3`) on the first byte of a static-branch site's
//! instruction (its first `cs` prefix, one byte before the patch: where a
//! disassembler, and so a debugger's `break *addr` or another patcher,
//! sees the instruction `cs cs jmp` / `cs cs nop` start) is not ours: it
//! must reach the SIGTRAP handler installed before ours (guarantee 5),
//! with or without an update in progress. The kernel reports that trap
//! with rip on the patch's first byte, which is one of our addresses: the
//! handler must not take it for a debugger that moved rip back onto our
//! `int3`, rewind the thread and swallow the trap.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::{static_branch, SiteState};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering::*};

#[static_branch]
static B: bool = false;

#[inline(never)]
fn site() -> bool {
    B.unlikely()
}

static HITS: AtomicU64 = AtomicU64::new(0);
static BP: AtomicUsize = AtomicUsize::new(0);
static ORIG: AtomicUsize = AtomicUsize::new(0);
static MEM: AtomicI32 = AtomicI32::new(-1);

/// A debugger's stand-in: on its own breakpoint, puts the byte back and
/// resumes on the breakpoint's address.
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

fn child(taken: bool) {
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
    B.set(taken);
    let s = B.sites()[0].clone();
    assert_eq!(s.state(), if taken { SiteState::Taken } else { SiteState::NotTaken });
    // The instruction starts two bytes before the address: `cs cs`.
    let bp = s.address() - 2;
    assert_eq!(common::read_bytes(bp, 2), [0x2e, 0x2e]);
    eprintln!("site: {s}; breakpoint at {bp:#x}");
    BP.store(bp, SeqCst);
    ORIG.store(0x2e, SeqCst);
    common::poke_text(bp, &[0xcc]);
    let r = site();
    assert_eq!(HITS.load(SeqCst), 1, "the breakpoint on the site's first byte reached the debugger");
    assert_eq!(r, taken);
    eprintln!("child {}: done", if taken { "taken_child" } else { "not_taken_child" });
}

#[test]
#[ignore]
fn not_taken_child() {
    if common::in_child("not_taken_child") {
        child(false)
    }
}

#[test]
#[ignore]
fn taken_child() {
    if common::in_child("taken_child") {
        child(true)
    }
}

#[test]
fn breakpoint_at_a_not_taken_branch_sites_first_byte_traps() {
    common::run_child("not_taken_child", &[]);
}

#[test]
fn breakpoint_at_a_taken_branch_sites_first_byte_traps() {
    common::run_child("taken_child", &[]);
}
