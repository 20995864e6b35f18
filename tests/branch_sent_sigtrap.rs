//! A SIGTRAP sent to a thread (`pthread_kill`) at the instant it executes
//! one of our `int3`s: the kernel keeps one SIGTRAP pending per thread, so
//! the `int3`'s trap merges with the sent one and the handler sees the
//! sent one's `siginfo` (`SI_TKILL`) with rip just past our `int3`.
//! Our handler used to pass such a signal on untouched (only `SI_KERNEL`
//! traps were asked about): the program's handler saw rip on
//! `Site::address()`, inside the site, and the thread resumed there,
//! skipping our `int3` onto bytes being rewritten (31 to 83 times per run
//! of this test, of some 2,500 to 5,000 SIGTRAPs delivered). It must deal
//! with the `int3` first (emulate or rewind it), then pass the sent signal
//! on: the program's handler sees every sent SIGTRAP and never rip just
//! past one of our patches' first byte. A thread runs the site while
//! another sets its key, and the main thread sends it SIGTRAPs.
//!
//! Then a flood, sent without pause: our handler was installed with
//! `SA_NODEFER`, so each new SIGTRAP nested a signal frame at its entry
//! before it ran an instruction, until the stack overflowed (SIGSEGV in 8
//! of 8 release runs, 1,300 frames deep in the core); a program's own
//! handler alone has SIGTRAP blocked while it runs. Ours now does too.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

use static_call::static_branch;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

#[static_branch]
static G: bool = false;

#[inline(never)]
fn g_site() -> bool {
    std::hint::black_box(1);
    if G.unlikely() {
        std::hint::black_box(true)
    } else {
        std::hint::black_box(false)
    }
}

static SEEN: AtomicU64 = AtomicU64::new(0);
static MERGED: AtomicU64 = AtomicU64::new(0);
static OURS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn program_handler(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO arguments.
    let (code, uc) = unsafe { ((*info).si_code, &mut *(ctx as *mut libc::ucontext_t)) };
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
    if code == libc::SI_TKILL {
        SEEN.fetch_add(1, SeqCst);
        if rip.wrapping_sub(1) == OURS.load(SeqCst) {
            MERGED.fetch_add(1, SeqCst);
        }
    }
}

extern "C" fn on_segv(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO arguments.
    let (addr, rip) = unsafe {
        (
            (*info).si_addr() as usize,
            (*(ctx as *mut libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] as usize,
        )
    };
    let mut buf = [0u8; 64];
    let mut n = 0;
    for v in [rip, addr, OURS.load(SeqCst)] {
        for i in (0..16).rev() {
            buf[n] = b"0123456789abcdef"[(v >> (i * 4)) & 15];
            n += 1;
        }
        buf[n] = b' ';
        n += 1;
    }
    buf[n] = b'\n';
    // SAFETY: async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n + 1);
        libc::_exit(99);
    }
}

#[test]
fn a_sent_sigtrap_merged_with_our_int3_is_dealt_with_then_passed_on() {
    // A fault says where, on the alternate stack (a stack overflow too).
    // SAFETY: an async-signal-safe handler that ends the process.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
    }
    // SAFETY: a plain SA_SIGINFO handler installed before init.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = program_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
    static_call::init().unwrap();
    OURS.store(G.sites()[0].address() - 1, SeqCst);
    static STOP: AtomicBool = AtomicBool::new(false);
    let runner = std::thread::spawn(|| {
        while !STOP.load(SeqCst) {
            std::hint::black_box(g_site());
        }
    });
    let setter = std::thread::spawn(|| {
        while !STOP.load(SeqCst) {
            G.set(!G.get());
        }
    });
    use std::os::unix::thread::JoinHandleExt;
    let t = runner.as_pthread_t();
    let mut sent = 0u64;
    while sent < 900_000 {
        // SAFETY: the runner lives until joined below.
        unsafe { libc::pthread_kill(t, libc::SIGTRAP) };
        sent += 1;
        // Paced, then the flood.
        if sent < 600_000 {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
        }
    }
    STOP.store(true, SeqCst);
    runner.join().unwrap();
    setter.join().unwrap();
    eprintln!(
        "sent {sent}, seen {}, merged with our int3 {}; {:?}",
        SEEN.load(SeqCst),
        MERGED.load(SeqCst),
        static_call::stats()
    );
    assert_eq!(MERGED.load(SeqCst), 0, "a sent SIGTRAP merged with our int3 reached the program with rip past it");
    assert!(SEEN.load(SeqCst) > 0, "no sent SIGTRAP arrived");
    assert!(static_call::stats().traps_emulated > 0, "the runner never met our int3");
}
