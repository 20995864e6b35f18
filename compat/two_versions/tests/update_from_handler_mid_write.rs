//! Lock order between a copy's patch lock and the module's text lock. T1
//! updates copy A (sc_a) in a loop: it takes A's patch lock, then waits for
//! the text lock. T2 updates copy B (sc_b) in a loop; a signal handler on
//! T2, run while T2 holds the text lock (in B's write), updates a key of
//! copy A. Found by review: A's patch lock was held by T1, waiting for the
//! text lock T2 holds, and both slept for ever. It must return `Reentrant`
//! (as with one copy) or succeed, and nothing may hang (a hang is detected
//! as five seconds without any update finishing, and fails).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use two_versions::*;

extern "C" {
    static static_call_text_lock_v1: AtomicU32;
}

static IN_HANDLER_UPDATES: AtomicU64 = AtomicU64::new(0);
static IN_HANDLER_OTHER_ERRORS: AtomicU64 = AtomicU64::new(0);
static HANDLER_ENTERED: AtomicU64 = AtomicU64::new(0);
static PROGRESS: AtomicU64 = AtomicU64::new(0);

fn gettid() -> u32 {
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

extern "C" fn on_usr1(_: libc::c_int) {
    // SAFETY: the crate's lock word.
    if unsafe { static_call_text_lock_v1.load(SeqCst) } != gettid() {
        return;
    }
    HANDLER_ENTERED.fetch_add(1, SeqCst);
    // An update of the other copy from a signal handler (allowed after init).
    match update(0, 1, target(0, 1, HANDLER_ENTERED.load(SeqCst) as usize)) {
        Ok(_) => {}
        Err(e) if e.contains("update from inside an update") => {}
        Err(_) => {
            IN_HANDLER_OTHER_ERRORS.fetch_add(1, SeqCst);
        }
    }
    IN_HANDLER_UPDATES.fetch_add(1, SeqCst);
}

#[test]
fn update_from_handler_interrupting_other_copys_write() {
    init(0).unwrap();
    init(1).unwrap();
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let s1 = stop.clone();
    let t1 = std::thread::spawn(move || {
        let mut n = 0;
        while !s1.load(SeqCst) {
            n += 1;
            let _ = update(0, 0, target(0, 0, n));
            PROGRESS.fetch_add(1, SeqCst);
        }
    });
    let tid2 = std::sync::Arc::new(AtomicU32::new(0));
    let (s2, t2id) = (stop.clone(), tid2.clone());
    let t2 = std::thread::spawn(move || {
        t2id.store(gettid(), SeqCst);
        let mut n = 0;
        while !s2.load(SeqCst) {
            n += 1;
            let _ = update(1, 0, target(1, 0, n));
            PROGRESS.fetch_add(1, SeqCst);
        }
    });
    while tid2.load(SeqCst) == 0 {
        std::hint::spin_loop();
    }
    let pid = unsafe { libc::getpid() };
    let start = std::time::Instant::now();
    let mut last = (0, std::time::Instant::now());
    while IN_HANDLER_UPDATES.load(SeqCst) < 200 && start.elapsed() < std::time::Duration::from_secs(120) {
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid2.load(SeqCst), libc::SIGUSR1) };
        std::thread::sleep(std::time::Duration::from_micros(100));
        let p = PROGRESS.load(SeqCst);
        if p != last.0 {
            last = (p, std::time::Instant::now());
        } else if last.1.elapsed() > std::time::Duration::from_secs(5) {
            let owner = unsafe { static_call_text_lock_v1.load(SeqCst) };
            eprintln!(
                "DEADLOCK: no update finished for 5 s; text lock held by tid {owner} (T2 = {}); \
                 handler entered {} times, {} handler updates returned; progress {p}",
                tid2.load(SeqCst),
                HANDLER_ENTERED.load(SeqCst),
                IN_HANDLER_UPDATES.load(SeqCst)
            );
            unsafe { libc::_exit(3) };
        }
    }
    stop.store(true, SeqCst);
    t1.join().unwrap();
    t2.join().unwrap();
    eprintln!(
        "no deadlock: progress {}, handler entered {}, returned {}",
        PROGRESS.load(SeqCst),
        HANDLER_ENTERED.load(SeqCst),
        IN_HANDLER_UPDATES.load(SeqCst)
    );
    assert!(IN_HANDLER_UPDATES.load(SeqCst) > 0, "no handler ran inside a write: the interesting path did not run");
    assert_eq!(IN_HANDLER_OTHER_ERRORS.load(SeqCst), 0, "an update from the handler failed with another error");
}
