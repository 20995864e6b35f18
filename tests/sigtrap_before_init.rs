//! A SIGTRAP handler the program installed before `init` keeps receiving the
//! traps that are not ours (a genuine `int3`, a `raise`), during updates too,
//! and never sees ours; patching works meanwhile.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2, t3};

use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

static USER_TRAPS: AtomicU64 = AtomicU64::new(0);
static USER_BAD: AtomicU64 = AtomicU64::new(0);
/// The address just past our genuine `int3`, where the kernel leaves rip.
static AFTER_INT3: AtomicUsize = AtomicUsize::new(0);

extern "C" fn user_handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO handler arguments from the kernel (or passed on
    // unchanged by static_call's handler).
    let (code, rip) =
        unsafe { ((*info).si_code, (*(ctx as *mut libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize]) };
    let ok = sig == libc::SIGTRAP
        && ((code == libc::SI_KERNEL && rip as usize == AFTER_INT3.load(SeqCst)) || code == libc::SI_TKILL);
    if !ok {
        USER_BAD.fetch_add(1, SeqCst);
    }
    USER_TRAPS.fetch_add(1, SeqCst);
}

/// Executes a genuine `int3`, recording where the kernel will report it.
#[inline(never)]
fn genuine_int3() {
    let after: usize;
    // SAFETY: `int3` traps to the SIGTRAP handler, which returns to the next
    // instruction; `lea` computes that instruction's address. No memory or
    // stack is touched by the asm itself.
    unsafe {
        core::arch::asm!("lea {a}, [rip + 2f]", a = out(reg) after, options(nomem, nostack, preserves_flags));
        AFTER_INT3.store(after, SeqCst);
        core::arch::asm!("int3", "2:", options(nomem, nostack));
    }
}

#[test]
fn a_handler_installed_before_init_still_gets_genuine_traps() {
    // SAFETY: installing a plain SA_SIGINFO handler before any thread uses
    // SIGTRAP.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = user_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
    genuine_int3();
    assert_eq!(USER_TRAPS.load(SeqCst), 1, "before init");

    static_call::init().unwrap();
    let protections = common::page_protections(K.sites().iter().map(|s| s.address()), 5);
    genuine_int3();
    assert_eq!(USER_TRAPS.load(SeqCst), 2, "after init: passed on by static_call's handler");
    // SAFETY: raise is a plain system call.
    unsafe { libc::raise(libc::SIGTRAP) };
    assert_eq!(USER_TRAPS.load(SeqCst), 3, "a raised SIGTRAP is passed on too");

    // Callers land on our int3s while another thread executes genuine ones:
    // the user's handler sees exactly the genuine ones.
    static STOP: AtomicBool = AtomicBool::new(false);
    static GENUINE: AtomicU64 = AtomicU64::new(3);
    let caller = std::thread::spawn(|| {
        let mut calls = 0u64;
        while !STOP.load(SeqCst) {
            let r = site(7);
            assert!(matches!(r >> 48, 1..=3) && r & 0xffff == 7, "{r:#x}");
            calls += 1;
        }
        calls
    });
    let trapper = std::thread::spawn(|| {
        while !STOP.load(SeqCst) {
            genuine_int3();
            GENUINE.fetch_add(1, SeqCst);
        }
    });
    let targets = [t1 as extern "C" fn(u64) -> u64, t2, t3];
    let mut i = 0;
    while static_call::stats().traps_emulated < 50 {
        assert!(i < 1_000_000, "no caller landed on an int3 in {i} updates");
        K.update(targets[i % 3]);
        common::assert_text_protected(&protections);
        assert_eq!(site(1), targets[i % 3](1));
        i += 1;
    }
    STOP.store(true, SeqCst);
    let calls = caller.join().unwrap();
    trapper.join().unwrap();
    let s = static_call::stats();
    eprintln!("{i} updates, {calls} calls, {} genuine traps, {s:?}", GENUINE.load(SeqCst));
    // Genuine int3s at unrelated addresses cannot be mistaken for ours.
    genuine_int3();
    assert_eq!(USER_TRAPS.load(SeqCst), GENUINE.load(SeqCst) + 1, "every genuine trap, and only those");
    assert_eq!(USER_BAD.load(SeqCst), 0, "the user's handler saw the kernel's siginfo and context");
}
