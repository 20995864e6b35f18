//! a caller that traps on an update's `int3`,
//! is held in the SIGTRAP handler until that update finished (so the
//! handler rewinds it onto the site's last `cs` prefix), and is then parked
//! right there (a SIGUSR1 delivered on the sigreturn, its context's rip on
//! the patch's first byte) while the key moves through every form (near,
//! far = indirect, none = zero) many times. Released, it executes from the
//! last prefix whatever is there. Each cycle ends in a different form; the
//! parked call's result is judged, strictly (the final target) and loosely
//! (any target).
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::{static_call, SiteState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

type F = extern "C" fn(u64) -> u64;

extern "C" fn plus1(x: u64) -> u64 {
    x + 1
}
extern "C" fn plus2(x: u64) -> u64 {
    x + 2
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = plus1;

#[inline(never)]
fn k_a(x: u64) -> u64 {
    K.call(x)
}

static ARMED: AtomicBool = AtomicBool::new(false);
static IN_HOOK: AtomicBool = AtomicBool::new(false);
static U1_DONE: AtomicBool = AtomicBool::new(false);
static PARKED: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);
static PARKED_RIP: AtomicUsize = AtomicUsize::new(0);
static PARK_COUNT: AtomicU64 = AtomicU64::new(0);
static TID: AtomicUsize = AtomicUsize::new(0);

fn nap() {
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 200_000 };
    // SAFETY: nanosleep is async-signal-safe.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

extern "C" fn hook() {
    // SAFETY: gettid.
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as usize;
    if me != TID.load(SeqCst) || !ARMED.swap(false, SeqCst) {
        return;
    }
    // SIGUSR1 blocked for the rest of this handler only (sigreturn restores
    // the interrupted mask), and raised: delivered right after sigreturn,
    // with the context the SIGTRAP handler left (the rewound rip).
    // SAFETY: plain signal-mask and tgkill calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::syscall(libc::SYS_tgkill, libc::getpid(), me as libc::c_long, libc::SIGUSR1);
    }
    IN_HOOK.store(true, SeqCst);
    while !U1_DONE.load(SeqCst) {
        nap();
    }
}

extern "C" fn on_usr1(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO handler: a ucontext_t.
    let uc = unsafe { &*(uc as *const libc::ucontext_t) };
    PARKED_RIP.store(uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize, SeqCst);
    PARK_COUNT.fetch_add(1, SeqCst);
    PARKED.store(true, SeqCst);
    while !RELEASE.load(SeqCst) {
        nap();
    }
}

#[test]
fn rewound_onto_last_prefix_and_parked_across_updates() {
    static_call::init().unwrap();
    // SAFETY: installing a plain SA_SIGINFO handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    static_call::__private::set_trap_hook(Some(hook));
    let page = common::far_page(k_a as fn(u64) -> u64 as usize);
    // SAFETY: the page holds `x + 7` at 0 and `x + 9` at 16.
    let (plus7, plus9): (F, F) =
        unsafe { (std::mem::transmute::<usize, F>(page), std::mem::transmute::<usize, F>(page + 16)) };
    let site = K.sites()[0].address();

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let wrong = std::sync::Arc::new(AtomicU64::new(0));
    let caller = {
        let (stop, results, wrong) = (stop.clone(), results.clone(), wrong.clone());
        std::thread::spawn(move || {
            // SAFETY: gettid.
            TID.store(unsafe { libc::syscall(libc::SYS_gettid) } as usize, SeqCst);
            while !stop.load(Relaxed) {
                let before = PARK_COUNT.load(SeqCst);
                let r = k_a(100);
                if ![101, 102, 107, 109, 0].contains(&r) {
                    wrong.fetch_add(1, Relaxed);
                }
                let after = PARK_COUNT.load(SeqCst);
                if after != before {
                    results.lock().unwrap().push((after, r));
                }
            }
        })
    };
    while TID.load(SeqCst) == 0 {
        std::hint::spin_loop();
    }

    // Each cycle: the update the caller traps on, then the forms it is
    // parked across, ending in `finals[c]`.
    let forms: [(Option<F>, u64); 5] =
        [(Some(plus7), 107), (Some(plus2), 102), (None, 0), (Some(plus9), 109), (Some(plus1), 101)];
    let finals: [(Option<F>, u64, SiteState); 4] = [
        (Some(plus9), 109, SiteState::Indirect),
        (Some(plus2), 102, SiteState::Direct),
        (None, 0, SiteState::Zero),
        (Some(plus7), 107, SiteState::Indirect),
    ];
    let set = |t: Option<F>| match t {
        Some(f) => drop(K.update(f)),
        None => drop(K.reset()),
    };
    let mut expected = Vec::new();
    for (c, &(fin, fin_val, fin_state)) in finals.iter().enumerate() {
        IN_HOOK.store(false, SeqCst);
        U1_DONE.store(false, SeqCst);
        PARKED.store(false, SeqCst);
        RELEASE.store(false, SeqCst);
        ARMED.store(true, SeqCst);
        let mut i = 0usize;
        let mut tries = 0u64;
        while !IN_HOOK.load(SeqCst) {
            set(forms[i % forms.len()].0);
            i += 1;
            tries += 1;
            assert!(tries < 2_000_000, "cycle {c}: the caller never trapped");
        }
        // The update it trapped on has returned: let the handler go on
        // (it finds no plan and no int3: a rewind).
        U1_DONE.store(true, SeqCst);
        let t0 = std::time::Instant::now();
        while !PARKED.load(SeqCst) {
            assert!(t0.elapsed().as_secs() < 10, "cycle {c}: never parked");
            std::hint::spin_loop();
        }
        let rip = PARKED_RIP.load(SeqCst);
        // Across every form, many times.
        for j in 0..200 {
            set(forms[j % forms.len()].0);
        }
        set(fin);
        assert!(K.sites().iter().all(|s| s.state() == fin_state), "cycle {c}: {:?}", K.sites());
        expected.push((c as u64 + 1, fin_val, rip));
        RELEASE.store(true, SeqCst);
        let t0 = std::time::Instant::now();
        while results.lock().unwrap().len() < c + 1 {
            assert!(t0.elapsed().as_secs() < 10, "cycle {c}: parked call never returned");
            std::hint::spin_loop();
        }
    }
    stop.store(true, SeqCst);
    caller.join().unwrap();
    static_call::__private::set_trap_hook(None);
    let results = results.lock().unwrap().clone();
    eprintln!("site {site:#x}; parked at / results: {expected:x?} / {results:?}");
    assert_eq!(wrong.load(Relaxed), 0, "a call reached none of the targets");
    for (c, &(n, want, rip)) in expected.iter().enumerate() {
        assert_eq!(rip, site - 1, "cycle {c}: not parked on the last prefix (rewind)");
        let got = results.iter().find(|r| r.0 == n).map(|r| r.1);
        assert_eq!(got, Some(want), "cycle {c}: the parked call after the final update");
    }
}
