//! A signal handler interrupts copy A's (sc_a, 0.1) text write on its own
//! thread and forks; in the child, still inside the handler, it updates a
//! key of copy B (sc_b, 2), whose sites share the page. The module's text
//! lock is then held under the parent's thread id by the child's only
//! thread, in the middle of A's write: B's update must be `Reentrant`, as it
//! is without the fork (found by review: B took the lock over, and with the
//! mprotect writer restored the page's protection under A's session, A then
//! faulting; with /proc/self/mem A's page span wrote back bytes read before
//! B wrote, undoing B's "successful" update). After A's update returns in
//! the child, both copies' keys are judged. Both writers (the parent test
//! runs the mprotect case in a child process through the environment).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering::SeqCst};
use two_versions::*;

extern "C" {
    static static_call_text_lock_v1: AtomicU32;
}

static IN_CHILD: AtomicBool = AtomicBool::new(false);
static CHILD_B_RESULT: AtomicI32 = AtomicI32::new(-1);
static FORKS: AtomicUsize = AtomicUsize::new(0);
static STATUSES: [AtomicI32; 64] = [const { AtomicI32::new(-1) }; 64];
const MAX_FORKS: usize = 40;

fn gettid() -> u32 {
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

extern "C" fn on_usr1(_: libc::c_int) {
    // SAFETY: an atomic u32 defined by the crate's global_asm.
    let owner = unsafe { static_call_text_lock_v1.load(SeqCst) };
    if IN_CHILD.load(SeqCst) || owner != gettid() {
        return;
    }
    let n = FORKS.fetch_add(1, SeqCst);
    if n >= MAX_FORKS {
        return;
    }
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        IN_CHILD.store(true, SeqCst);
        // Copy B's update, from the handler, in the child.
        if std::env::var_os("REVIEW_NO_B").is_some() {
            CHILD_B_RESULT.store(0, SeqCst);
            return;
        }
        let r = match update(1, 0, target(1, 0, 3)) {
            Ok(_) => 0,
            Err(e) if e.contains("update from inside an update") => 1,
            Err(_) => 2,
        };
        CHILD_B_RESULT.store(r, SeqCst);
        return; // back into copy A's interrupted write
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    STATUSES[n].store(status, SeqCst);
}

#[test]
fn fork_in_handler_during_a_write_then_other_copy_updates() {
    init(0).unwrap();
    init(1).unwrap();
    let page = assert_one_page();
    eprintln!("sites on page {page:#x}, writer {:?}", static_call::text_writer());
    update(1, 0, target(1, 0, 0)).unwrap();
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let tid = std::sync::Arc::new(AtomicU32::new(0));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (t2, s2) = (tid.clone(), stop.clone());
    let updater = std::thread::spawn(move || {
        t2.store(gettid(), SeqCst);
        let mut n = 0usize;
        while !s2.load(SeqCst) && FORKS.load(SeqCst) < MAX_FORKS {
            n += 1;
            // Keys 0 of both copies have sites interleaved on one page.
            let _ = update(0, 0, target(0, 0, n));
            if IN_CHILD.load(SeqCst) {
                // The child: copy A's update has returned. Judge copy B's key.
                let b = CHILD_B_RESULT.load(SeqCst);
                let verdict = match b {
                    0 if std::env::var_os("REVIEW_NO_B").is_none() => check_key_reaches(1, 0, target(1, 0, 3)),
                    _ => Ok(()),
                };
                let a = check_key_reaches(0, 0, target(0, 0, n));
                let code = match (b, &verdict, &a) {
                    (0 | 1, Ok(()), Ok(())) => 0,
                    (0, Err(e), _) => {
                        eprintln!("CHILD: B's update returned Ok but: {e}");
                        3
                    }
                    (0 | 1, Ok(()), Err(e)) => {
                        eprintln!("CHILD: A's key: {e}");
                        4
                    }
                    (_, _, _) => 5,
                };
                unsafe { libc::_exit(code) };
            }
        }
    });
    let pid = unsafe { libc::getpid() };
    while tid.load(SeqCst) == 0 {
        std::hint::spin_loop();
    }
    let start = std::time::Instant::now();
    while FORKS.load(SeqCst) < MAX_FORKS && start.elapsed() < std::time::Duration::from_secs(60) {
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid.load(SeqCst), libc::SIGUSR1) };
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
    stop.store(true, SeqCst);
    updater.join().unwrap();
    let mut bad = Vec::new();
    for (i, s) in STATUSES.iter().enumerate().take(FORKS.load(SeqCst).min(MAX_FORKS)) {
        let s = s.load(SeqCst);
        let desc = if libc::WIFSIGNALED(s) {
            format!("killed by signal {}", libc::WTERMSIG(s))
        } else {
            format!("exit {}", libc::WEXITSTATUS(s))
        };
        if !(libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0) {
            bad.push(format!("child {i}: {desc}"));
        }
    }
    let forks = FORKS.load(SeqCst).min(MAX_FORKS);
    eprintln!("{forks} forks inside copy A's write, {} bad: {bad:#?}", bad.len());
    assert!(forks > 0, "no signal landed inside a write: the interesting path did not run");
    assert!(bad.is_empty(), "children (codes: 3 B's Ok update undone, 4 A's key wrong, 5 B's update failed otherwise)");
}

#[test]
fn with_the_mprotect_writer() {
    if std::env::var_os("STATIC_CALL_WRITER").is_some() {
        return;
    }
    let out = two_versions::common::self_command()
        .args(["--exact", "fork_in_handler_during_a_write_then_other_copy_updates", "--nocapture"])
        .env("STATIC_CALL_WRITER", "mprotect")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("forks inside copy A's write") && text.contains("test result: ok. 1 passed"), "{text}");
}
