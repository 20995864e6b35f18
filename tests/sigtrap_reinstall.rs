//! A crash reporter installs its SIGTRAP handler after `init` (recording ours
//! as its previous and chaining to it). Updates refuse (`HandlerDisplaced`)
//! until `init()` is called again, which puts ours back on top, chaining to
//! the newcomer. Then updates with emulated traps work, and a genuine `int3`
//! reaches the newcomer exactly once and, when the newcomer passes it back
//! to us, the handler we replaced at the start exactly once: no loop.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2};
use static_call::{static_call, Error};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

static FIRST_TRAPS: AtomicU64 = AtomicU64::new(0);
static REPORTER_TRAPS: AtomicU64 = AtomicU64::new(0);
/// The handler the reporter replaced (ours), which it chains to.
static REPORTER_PREVIOUS: AtomicUsize = AtomicUsize::new(0);

/// Installed before `init`: the disposition our handler replaces.
extern "C" fn first(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    FIRST_TRAPS.fetch_add(1, SeqCst);
}

/// The crash reporter: counts, then chains to the handler it replaced, as
/// Breakpad and Crashpad do for signals they do not consume.
extern "C" fn reporter(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    REPORTER_TRAPS.fetch_add(1, SeqCst);
    let prev = REPORTER_PREVIOUS.load(SeqCst);
    if prev > 1 {
        // SAFETY: an SA_SIGINFO handler address the kernel gave us.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(prev) };
        f(sig, info, ctx);
    }
}

fn install(handler: usize) -> libc::sigaction {
    // SAFETY: a valid SA_SIGINFO handler; valid structures.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, &mut old), 0);
        old
    }
}

fn current() -> usize {
    let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: query only.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) }, 0);
    // SAFETY: filled in.
    unsafe { cur.assume_init() }.sa_sigaction
}

fn int3() {
    // SAFETY: a genuine breakpoint; the handlers return past it.
    unsafe { core::arch::asm!("int3", options(nomem, nostack)) };
}

#[test]
fn init_again_puts_our_handler_back_on_top_of_a_crash_reporter() {
    install(first as *const () as usize);
    static_call::init().unwrap();
    let ours = current();

    // The reporter arrives after init.
    let replaced = install(reporter as *const () as usize);
    assert_eq!(replaced.sa_sigaction, ours);
    REPORTER_PREVIOUS.store(replaced.sa_sigaction, SeqCst);
    let reporter_addr = reporter as *const () as usize;
    assert_eq!(K.try_update(t2), Err(Error::HandlerDisplaced { current: reporter_addr }));
    // A genuine int3 now: reporter, then ours (chained to), then first.
    int3();
    assert_eq!((REPORTER_TRAPS.load(SeqCst), FIRST_TRAPS.load(SeqCst)), (1, 1));

    // init() again: ours on top, chaining to the reporter.
    static_call::init().unwrap();
    assert_eq!(current(), ours, "our handler is back on top");
    static_call::init().unwrap();
    assert_eq!(current(), ours, "a second init changes nothing");

    // Updates with callers landing on the int3s.
    static STOP: AtomicBool = AtomicBool::new(false);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    let caller = std::thread::spawn(|| {
        while !STOP.load(SeqCst) {
            let r = site(7);
            if !matches!(r >> 48, 1..=2) || r & 0xffff != 7 {
                WRONG.fetch_add(1, SeqCst);
            }
        }
    });
    let mut i = 0u32;
    while static_call::stats().traps_emulated < 10 {
        assert!(i < 1_000_000, "no trap emulated in {i} updates");
        let f = if i.is_multiple_of(2) { t2 } else { t1 };
        K.try_update(f).unwrap();
        assert_eq!(site(1), f(1));
        i += 1;
    }
    STOP.store(true, SeqCst);
    caller.join().unwrap();
    assert_eq!(WRONG.load(SeqCst), 0);
    assert_eq!(
        (REPORTER_TRAPS.load(SeqCst), FIRST_TRAPS.load(SeqCst)),
        (1, 1),
        "our own traps reached neither the reporter nor the first handler"
    );

    // Genuine int3s: the reporter sees each once; it passes each back to us,
    // and we pass it to the handler we replaced at first, once; no loop.
    for n in 2..=4 {
        int3();
        assert_eq!((REPORTER_TRAPS.load(SeqCst), FIRST_TRAPS.load(SeqCst)), (n, n));
    }
    // From other threads too.
    let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(int3)).collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!((REPORTER_TRAPS.load(SeqCst), FIRST_TRAPS.load(SeqCst)), (8, 8));
    eprintln!("{i} updates after re-installing, {:?}", static_call::stats());
}
