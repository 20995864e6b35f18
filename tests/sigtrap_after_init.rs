//! A SIGTRAP handler installed after `init` displaces ours: the next update
//! refuses with `HandlerDisplaced` and writes nothing (it would otherwise patch
//! with nobody to handle its breakpoints). So does our own entry put back
//! without our signal mask. Putting ours back exactly makes updates work
//! again.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2};

use static_call::{static_call, Error};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

static USER_TRAPS: AtomicU64 = AtomicU64::new(0);

extern "C" fn user_handler(_: libc::c_int) {
    USER_TRAPS.fetch_add(1, SeqCst);
}

fn set_handler(handler: usize, flags: i32) -> libc::sigaction {
    // SAFETY: plain sigaction calls with valid structures.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, &mut old), 0);
        old
    }
}

fn site_bytes() -> Vec<Vec<u8>> {
    let mut v: Vec<_> =
        K.sites().iter().map(|s| common::read_bytes(common::patch_of(s.address()), common::PATCH_LEN)).collect();
    v.push(common::read_bytes(static_call::__private::trampoline_of(&K).unwrap(), 32));
    v
}

#[test]
fn a_handler_installed_after_init_makes_updates_refuse() {
    static_call::init().unwrap();
    let protections = common::page_protections(K.sites().iter().map(|s| s.address()), 5);
    let before = site_bytes();

    let ours = set_handler(user_handler as *const () as usize, 0);
    match K.try_update(t2) {
        Err(Error::HandlerDisplaced { current }) => assert_eq!(current, user_handler as *const () as usize),
        other => panic!("expected HandlerDisplaced, got {other:?}"),
    }
    assert_eq!(site_bytes(), before, "nothing written");
    assert_eq!(site(3), t1(3), "the target did not change");
    common::assert_text_protected(&protections);
    // A genuine int3 goes to the new handler directly.
    // SAFETY: the handler returns to the instruction after int3.
    unsafe { core::arch::asm!("int3", options(nomem, nostack)) };
    assert_eq!(USER_TRAPS.load(SeqCst), 1);
    // The panicking form says what to do.
    let msg = std::panic::catch_unwind(|| K.update(t2)).unwrap_err();
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.contains("before"), "{msg}");

    // SIG_DFL and SIG_IGN displace ours too.
    for (h, name) in [(libc::SIG_DFL, "SIG_DFL"), (libc::SIG_IGN, "SIG_IGN")] {
        set_handler(h, 0);
        assert_eq!(K.try_update(t2), Err(Error::HandlerDisplaced { current: h }), "{name}");
        assert_eq!(site_bytes(), before, "nothing written");
    }

    // Our entry back with our flags but without our mask: still displaced
    // (the mask is what keeps an asynchronous signal from deadlocking an
    // update behind a handler counted as a reader).
    set_handler(ours.sa_sigaction, ours.sa_flags);
    assert_eq!(K.try_update(t2), Err(Error::HandlerDisplaced { current: ours.sa_sigaction }));
    assert_eq!(site_bytes(), before, "nothing written");

    // Ours back as it was: updates work, with a caller landing on the int3s.
    // SAFETY: the disposition the kernel gave us.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, &ours, std::ptr::null_mut()) }, 0);
    static STOP: AtomicBool = AtomicBool::new(false);
    let caller = std::thread::spawn(|| {
        while !STOP.load(SeqCst) {
            let r = site(7);
            assert!(matches!(r >> 48, 1..=2) && r & 0xffff == 7, "{r:#x}");
        }
    });
    let mut i = 0;
    while static_call::stats().traps_emulated + static_call::stats().traps_rewound < 20 {
        assert!(i < 1_000_000, "no trap in {i} updates");
        let f = if i % 2 == 0 { t2 } else { t1 };
        K.try_update(f).unwrap();
        common::assert_text_protected(&protections);
        assert_eq!(site(1), f(1));
        i += 1;
    }
    STOP.store(true, SeqCst);
    caller.join().unwrap();
    assert_eq!(USER_TRAPS.load(SeqCst), 1, "our traps never reached the displaced handler");
    eprintln!("{i} updates after restoring the handler, {:?}", static_call::stats());
}
