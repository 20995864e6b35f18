//! A signal handler that calls a Rust key (a `&str` and a `u64` in
//! registers, the frame pointer) while the key is retargeted on another
//! thread, and while the interrupted thread is itself inside a call of it.
use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

fn a(s: &str, x: u64) -> u64 {
    s.len() as u64 * 1000 + x
}
fn b(s: &str, x: u64) -> u64 {
    s.len() as u64 * 2000 + x
}

#[static_call]
static K: fn(&str, u64) -> u64 = a;

static WRONG: AtomicU64 = AtomicU64::new(0);
static IN_HANDLER: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sig(_: libc::c_int) {
    let r = K.call("abc", 7);
    if r != 3007 && r != 6007 {
        WRONG.fetch_add(1, Ordering::Relaxed);
    }
    IN_HANDLER.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn handlers_calling_a_rust_key_during_updates() {
    let _ = static_call::init();
    // SAFETY: installs a handler that only calls the key and counts
    // (async-signal-safe: a patched call, an atomic add).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sig as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    static STOP: AtomicBool = AtomicBool::new(false);
    let caller = std::thread::spawn(|| {
        // SAFETY: always safe to call.
        let me = unsafe { libc::pthread_self() };
        let mut n = 0u64;
        let mut bad = 0u64;
        while !STOP.load(Ordering::Relaxed) {
            n += 1;
            let r = K.call("hello", n);
            if r != 5000 + n && r != 10000 + n {
                bad += 1;
            }
        }
        (me, n, bad)
    });
    use std::os::unix::thread::JoinHandleExt;
    let tid = caller.as_pthread_t();
    for i in 0..20_000 {
        if i % 2 == 0 {
            K.update(b);
        } else {
            K.update(a);
        }
        // SAFETY: `tid` is the caller thread, alive until joined below.
        unsafe { libc::pthread_kill(tid, libc::SIGUSR1) };
    }
    STOP.store(true, Ordering::Relaxed);
    let (_, n, bad) = caller.join().unwrap();
    assert_eq!(bad, 0, "{n} calls");
    assert_eq!(WRONG.load(Ordering::Relaxed), 0);
    assert!(IN_HANDLER.load(Ordering::Relaxed) > 100);
}
