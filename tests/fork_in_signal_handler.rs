//! `fork()` from a signal handler that interrupted an update on the same
//! thread (the one case where the fork cannot wait for the update): the child
//! is that thread, still inside the update. There, as in the parent, an update
//! from the handler is refused with `Reentrant`; once the handler returns, the
//! interrupted update completes in the child too, and the child's text and
//! key agree and can be updated.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2, t3};

use static_call::{static_call, Error};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

static FORKED: AtomicBool = AtomicBool::new(false);
static IN_CHILD: AtomicBool = AtomicBool::new(false);
static CHILD_PID: AtomicI32 = AtomicI32::new(0);
/// In the child: what the handler's update returned (0 Reentrant, 1 Ok, 2
/// another error).
static CHILD_HANDLER_UPDATE: AtomicI32 = AtomicI32::new(-1);
static STOP: AtomicBool = AtomicBool::new(false);
static PROGRESS: AtomicU64 = AtomicU64::new(0);
static HANDLER_OK: AtomicU64 = AtomicU64::new(0);
static HANDLER_REENTRANT: AtomicU64 = AtomicU64::new(0);

fn code(r: Result<Option<extern "C" fn(u64) -> u64>, Error>) -> i32 {
    match r {
        Err(Error::Reentrant) => 0,
        Ok(_) => 1,
        Err(_) => 2,
    }
}

extern "C" fn on_usr1(_: libc::c_int) {
    let r = K.try_update(t3);
    match r {
        Ok(_) => {
            HANDLER_OK.fetch_add(1, SeqCst);
        }
        Err(Error::Reentrant) => {
            HANDLER_REENTRANT.fetch_add(1, SeqCst);
            if FORKED.compare_exchange(false, true, SeqCst, SeqCst).is_ok() {
                // SAFETY: fork from a signal handler; the child continues
                // this handler and then the interrupted update.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    IN_CHILD.store(true, SeqCst);
                    CHILD_HANDLER_UPDATE.store(code(K.try_update(t3)), SeqCst);
                } else {
                    CHILD_PID.store(pid, SeqCst);
                }
            }
        }
        Err(e) => panic!("update from a signal handler: {e}"),
    }
}

/// In the child, once the interrupted update returned. Exit status is the
/// result.
fn child_checks() -> ! {
    let status = (|| {
        let h = CHILD_HANDLER_UPDATE.load(SeqCst);
        if h != 0 {
            return 10 + h; // the handler's update in the child was not refused
        }
        let want = K.get().map_or(0, |f| f(5));
        if site(5) != want {
            return 20;
        }
        for f in [t1 as extern "C" fn(u64) -> u64, t2, t3] {
            match K.try_update(f) {
                Ok(_) => {}
                Err(Error::UnexpectedBytes { .. }) => return 30,
                Err(Error::Reentrant) => return 31,
                Err(_) => return 32,
            }
            if site(7) != f(7) {
                return 40;
            }
        }
        0
    })();
    // SAFETY: leaves the child without unwinding into the parent's test
    // harness state.
    unsafe { libc::_exit(status) }
}

#[test]
fn fork_from_a_handler_that_interrupted_an_update() {
    static_call::init().unwrap();
    let protections = common::page_protections(K.sites().iter().map(|s| s.address()), common::INSN_LEN);
    common::watchdog("fork_in_signal_handler", &PROGRESS, std::time::Duration::from_secs(60));
    // SAFETY: installing a handler for SIGUSR1, which nothing else uses.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let updater = std::thread::spawn(|| {
        let targets = [t1 as extern "C" fn(u64) -> u64, t2];
        let mut i = 0;
        while !STOP.load(SeqCst) {
            let f = targets[i % 2];
            let handler_updates = HANDLER_OK.load(SeqCst);
            let r = K.try_update(f);
            if IN_CHILD.load(SeqCst) {
                child_checks();
            }
            // The parent's own text must never be written by anyone else.
            if let Err(e) = r {
                return Err(format!("parent update {i}: {e}"));
            }
            // Unless the signal handler retargeted the key in between (a
            // signal that arrived outside the lock), calls reach `f`.
            let got = site(3);
            if got != f(3) && HANDLER_OK.load(SeqCst) == handler_updates {
                return Err(format!("parent update {i}: the call does not reach the new target ({got:#x})"));
            }
            i += 1;
            PROGRESS.fetch_add(1, SeqCst);
        }
        Ok(i)
    });
    let thread = updater.as_pthread_t();
    let mut kills = 0u64;
    while !FORKED.load(SeqCst) {
        if updater.is_finished() {
            panic!("the updater stopped before the fork: {:?}", updater.join());
        }
        assert!(kills < 50_000_000, "no signal interrupted an update in {kills} signals");
        // SAFETY: the updater thread is alive until STOP.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        kills += 1;
    }
    while CHILD_PID.load(SeqCst) == 0 {
        std::thread::yield_now();
    }
    let pid = CHILD_PID.load(SeqCst);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    PROGRESS.fetch_add(1, SeqCst);
    // A few more parent updates after the child is gone.
    let more = static_call::stats().updates + 100;
    while static_call::stats().updates < more && !updater.is_finished() {
        std::thread::yield_now();
    }
    STOP.store(true, SeqCst);
    let parent = updater.join().unwrap();
    common::assert_text_protected(&protections);
    eprintln!(
        "{kills} signals; handler updates: {} ok, {} reentrant; child status {status:#x}",
        HANDLER_OK.load(SeqCst),
        HANDLER_REENTRANT.load(SeqCst)
    );
    assert!(parent.is_ok(), "{parent:?}");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child failed: wait status {status:#x} (exit code {}, signal {})",
        libc::WEXITSTATUS(status),
        if libc::WIFSIGNALED(status) { libc::WTERMSIG(status) } else { 0 }
    );
}
