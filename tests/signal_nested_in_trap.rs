//! A signal whose handler updates, raised while the thread is inside our
//! SIGTRAP handler (it landed on an int3): deterministic, via the trap hook,
//! which sends the signal to its own thread. Whether the kernel runs that
//! handler nested (if our handler leaves it unblocked: then on the small
//! alternate signal stack our handler runs on) or right after ours returns,
//! its update must work (it waits for the update in progress on another
//! thread), and the trapped call then reaches a valid target.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2, t3};

use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

static CALLER_TID: AtomicI64 = AtomicI64::new(0);
static ARMED: AtomicBool = AtomicBool::new(true);
static NESTED_RAN: AtomicU64 = AtomicU64::new(0);
static NESTED_OK: AtomicU64 = AtomicU64::new(0);
static NESTED_ON_ALTSTACK: AtomicU64 = AtomicU64::new(0);
/// Bytes of stack left below the nested handler's frame when it ran on the
/// alternate signal stack.
static ALTSTACK_ROOM: AtomicI64 = AtomicI64::new(-1);
static STOP: AtomicBool = AtomicBool::new(false);
static PROGRESS: AtomicU64 = AtomicU64::new(0);

fn gettid() -> i64 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// In our SIGTRAP handler: the first trap of the caller sends SIGUSR2 to its
/// own thread, which the kernel delivers at once, nested in this handler.
extern "C" fn send_nested() {
    if gettid() == CALLER_TID.load(SeqCst) && ARMED.swap(false, SeqCst) {
        // SAFETY: tgkill to our own thread.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), gettid(), libc::SIGUSR2) };
    }
}

extern "C" fn on_usr2(_: libc::c_int) {
    NESTED_RAN.fetch_add(1, SeqCst);
    // SAFETY: querying the alternate stack; `ss` is valid for writing.
    let ss = unsafe {
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        ss
    };
    if ss.ss_flags & libc::SS_ONSTACK != 0 {
        NESTED_ON_ALTSTACK.fetch_add(1, SeqCst);
        let here = &ss as *const _ as i64;
        ALTSTACK_ROOM.store(here - ss.ss_sp as i64, SeqCst);
    }
    if K.try_update(t3).is_ok() {
        NESTED_OK.fetch_add(1, SeqCst);
    }
}

#[test]
fn an_update_from_a_signal_nested_in_the_sigtrap_handler() {
    static_call::init().unwrap();
    common::watchdog("signal_nested_in_trap", &PROGRESS, std::time::Duration::from_secs(60));
    // SAFETY: a handler for SIGUSR2, which nothing else uses.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr2 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    static_call::__private::set_trap_hook(Some(send_nested));
    let caller = std::thread::spawn(|| {
        CALLER_TID.store(gettid(), SeqCst);
        let mut bad = 0;
        while !STOP.load(SeqCst) {
            let r = site(7);
            if !(matches!(r >> 48, 1..=3) && r & 0xffff == 7) {
                bad += 1;
            }
            PROGRESS.fetch_add(1, SeqCst);
        }
        bad
    });
    let mut i = 0;
    while NESTED_RAN.load(SeqCst) == 0 || NESTED_OK.load(SeqCst) == 0 {
        assert!(i < 1_000_000, "the caller never trapped in {i} updates");
        K.update(if i % 2 == 0 { t2 } else { t1 });
        PROGRESS.fetch_add(1, SeqCst);
        i += 1;
    }
    STOP.store(true, SeqCst);
    let bad = caller.join().unwrap();
    static_call::__private::set_trap_hook(None);
    eprintln!(
        "{i} updates; nested handler ran {} times ({} on the alternate signal stack, {} bytes left there), {} updates \
         ok; {:?}",
        NESTED_RAN.load(SeqCst),
        NESTED_ON_ALTSTACK.load(SeqCst),
        ALTSTACK_ROOM.load(SeqCst),
        NESTED_OK.load(SeqCst),
        static_call::stats()
    );
    assert_eq!(bad, 0);
    assert_eq!(NESTED_OK.load(SeqCst), NESTED_RAN.load(SeqCst));
}
