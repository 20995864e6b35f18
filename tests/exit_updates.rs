//! Updates at the end of the process. The executable's copy of the crate is
//! never unloaded, so it must keep working through `exit`: an update of one
//! of the executable's keys from a `.fini_array` destructor or from an
//! `atexit` handler retargets its sites (the call after it reaches the new
//! target), `try_update` there is `Ok`, and a thread that keeps updating a
//! key while `main` returns neither fails nor makes the exit hang (and still
//! completes updates after the crate's own destructor ran). Each
//! scenario runs in a child process (this binary again) whose output the
//! parent checks; what runs at exit writes with `libc::write(1, ..)` (std's
//! stdout may be gone by then). The parent gives each child a generous
//! bound, after which it kills it and fails: a hang is a failure.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::time::Duration;

extern "C" fn plus1(x: u64) -> u64 {
    x + 1
}
extern "C" fn plus500(x: u64) -> u64 {
    x + 500
}
extern "C" fn plus1000(x: u64) -> u64 {
    x + 1000
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = plus1;

#[inline(never)]
fn call_k(x: u64) -> u64 {
    K.call(x)
}

/// What runs at exit in this process (0: nothing, the parent).
static MODE: AtomicU8 = AtomicU8::new(0);
const FINI: u8 = 1;
const ATEXIT: u8 = 2;
const THREAD: u8 = 3;
const FINI_TRY: u8 = 4;

/// Updates the looping thread completed (scenario `thread`).
static THREAD_UPDATES: AtomicU64 = AtomicU64::new(0);
/// The looping thread stopped on an error.
static THREAD_STOPPED: AtomicBool = AtomicBool::new(false);

/// Writes `s` to fd 1 with one `write` (std's stdout may be gone).
fn say(s: &str) {
    // SAFETY: a valid buffer of that length.
    unsafe { libc::write(1, s.as_ptr().cast(), s.len()) };
}

/// `K.update(plus1000)` (which panics on an error, aborting the process
/// from an `extern "C"` function, its message on stderr), then a call.
fn update_then_call(from: &str) {
    let old = K.update(plus1000);
    let r = call_k(1);
    say(&format!("{from}: update returned {:?}, call -> {r}\n", old.map(|f| f(1))));
}

extern "C" fn at_fini() {
    match MODE.load(SeqCst) {
        FINI => update_then_call("fini"),
        FINI_TRY => match K.try_update(plus1000) {
            Ok(old) => say(&format!("fini: try_update Ok({:?}), call -> {}\n", old.map(|f| f(1)), call_k(1))),
            Err(e) => say(&format!("fini: try_update Err({e:?}): {e}\n")),
        },
        THREAD => {
            // Runs after the crate's own `.fini_array` entry (this object's
            // entries run after those of the rlibs linked after it): the
            // thread must still complete updates.
            let seen = THREAD_UPDATES.load(SeqCst);
            loop {
                if THREAD_UPDATES.load(SeqCst) >= seen + 2 {
                    say(&format!("fini: the thread made 2 more updates after {seen}\n"));
                    break;
                }
                if THREAD_STOPPED.load(SeqCst) {
                    say(&format!("fini: the thread stopped after {seen} updates\n"));
                    break;
                }
                std::thread::yield_now();
            }
        }
        _ => {}
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static D: extern "C" fn() = at_fini;

extern "C" fn at_exit() {
    if MODE.load(SeqCst) == ATEXIT {
        update_then_call("atexit");
    }
}

/// Runs the child scenario `mode` and returns its stdout; panics unless it
/// exited 0 within a generous bound (a hang is killed and fails).
fn run(mode: &str) -> String {
    let (status, stdout, stderr) =
        common::run_child_bounded("exit_child", &[("EXIT_UPDATES_MODE", mode)], Duration::from_secs(60));
    let text = format!("{stdout}{stderr}");
    assert!(status.success(), "child `{mode}` failed ({status}):\n{text}");
    assert!(stdout.contains("child exit_child: main returns"), "child `{mode}` did not run:\n{text}");
    eprintln!("{text}");
    stdout
}

#[test]
fn update_from_a_fini_array_destructor() {
    let out = run("fini");
    assert!(out.contains("fini: update returned Some(2), call -> 1001"), "the destructor's update took effect:\n{out}");
}

#[test]
fn update_from_an_atexit_handler() {
    let out = run("atexit");
    assert!(out.contains("atexit: update returned Some(2), call -> 1001"), "the handler's update took effect:\n{out}");
}

#[test]
fn try_update_from_a_destructor_is_ok() {
    let out = run("fini_try");
    assert!(out.contains("fini: try_update Ok(Some(2)), call -> 1001"), "try_update in the destructor:\n{out}");
}

#[test]
fn a_thread_updating_while_main_returns() {
    let out = run("thread");
    assert!(!out.contains("thread:"), "the updating thread saw no error and no wrong result:\n{out}");
    assert!(
        out.contains("fini: the thread made 2 more updates"),
        "the thread kept updating through exit (after the crate's destructor):\n{out}"
    );
}

#[test]
#[ignore = "child process of the tests above"]
fn exit_child() {
    if !common::in_child("exit_child") {
        return;
    }
    static_call::init().unwrap();
    // The sites are patched and updates work before exit.
    K.update(plus500);
    assert_eq!(call_k(1), 501);
    K.update(plus1);
    assert_eq!(call_k(1), 2);
    let mode = std::env::var("EXIT_UPDATES_MODE").unwrap();
    match mode.as_str() {
        "fini" => MODE.store(FINI, SeqCst),
        "fini_try" => MODE.store(FINI_TRY, SeqCst),
        "atexit" => {
            MODE.store(ATEXIT, SeqCst);
            // SAFETY: a plain `extern "C" fn()`.
            assert_eq!(unsafe { libc::atexit(at_exit) }, 0);
        }
        "thread" => {
            MODE.store(THREAD, SeqCst);
            std::thread::spawn(|| {
                let targets: [extern "C" fn(u64) -> u64; 2] = [plus500, plus1000];
                for i in 0u64.. {
                    let f = targets[(i % 2) as usize];
                    match K.try_update(f) {
                        Ok(_) => {
                            let r = call_k(1);
                            if r != f(1) {
                                say(&format!("thread: update {i}: call -> {r}, not {}\n", f(1)));
                            }
                        }
                        Err(e) => {
                            say(&format!("thread: update {i}: Err({e:?}): {e}\n"));
                            THREAD_STOPPED.store(true, SeqCst);
                            return;
                        }
                    }
                    THREAD_UPDATES.fetch_add(1, SeqCst);
                }
            });
            // `main` returns while the thread is in its loop: it has made
            // updates already and never stops.
            while THREAD_UPDATES.load(SeqCst) < 200 {
                std::thread::yield_now();
            }
        }
        other => panic!("unknown mode {other}"),
    }
    say("child exit_child: main returns\n");
}
