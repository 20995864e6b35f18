//! `check()` verifies every property of our disposition that correctness
//! relies on, not only the handler address: our own entry re-installed by
//! other code with `SA_RESETHAND`, with `SA_ONSTACK`,
//! without `SA_SIGINFO` or with a mask that leaves an asynchronous signal
//! unblocked is "displaced": updates refuse and write nothing. `init()`
//! restores our disposition exactly. Ours has no `SA_NODEFER` (SIGTRAP
//! blocked while it runs, as for a handler installed alone); our entry put
//! back with it is accepted, nothing of ours relies on either.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::{t1, t2};
use static_call::{static_call, Error};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

fn action() -> libc::sigaction {
    let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: query only.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) }, 0);
    // SAFETY: filled in.
    unsafe { cur.assume_init() }
}

fn set(a: &libc::sigaction) {
    // SAFETY: a disposition derived from the one the kernel gave us.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, a, std::ptr::null_mut()) }, 0);
}

/// Set by glibc on every disposition it installs (`<asm/signal.h>`).
const SA_RESTORER: libc::c_int = 0x0400_0000;

fn same(a: &libc::sigaction, b: &libc::sigaction) -> bool {
    // SAFETY: valid sets.
    a.sa_sigaction == b.sa_sigaction
        && a.sa_flags & !SA_RESTORER == b.sa_flags & !SA_RESTORER
        && (1..=libc::SIGRTMAX())
            .all(|s| unsafe { libc::sigismember(&a.sa_mask, s) == libc::sigismember(&b.sa_mask, s) })
}

#[test]
fn our_entry_with_other_flags_or_mask_is_displaced_until_init() {
    static_call::init().unwrap();
    let ours = action();
    assert_eq!(ours.sa_flags & libc::SA_NODEFER, 0);
    let bytes = || {
        K.sites()
            .iter()
            .map(|s| common::read_bytes(common::patch_of(s.address()), common::PATCH_LEN))
            .collect::<Vec<_>>()
    };
    let before = bytes();

    let mut a = ours;
    a.sa_flags |= libc::SA_NODEFER;
    set(&a);
    K.try_update(t2).expect("our entry with SA_NODEFER is not displaced");
    assert_eq!(K.call(1), t2(1));
    K.try_update(t1).unwrap();
    assert_eq!(bytes(), before);
    // (init leaves an acceptable disposition as it is.)
    set(&ours);

    let mut cases: Vec<(&str, libc::sigaction)> = Vec::new();
    let mut a = ours;
    a.sa_flags |= libc::SA_RESETHAND;
    cases.push(("with SA_RESETHAND", a));
    let mut a = ours;
    a.sa_flags |= libc::SA_ONSTACK;
    cases.push(("with SA_ONSTACK", a));
    let mut a = ours;
    a.sa_flags &= !libc::SA_SIGINFO;
    cases.push(("without SA_SIGINFO", a));
    for unblocked in [libc::SIGALRM, libc::SIGUSR1, libc::SIGRTMIN() + 1] {
        let mut a = ours;
        // SAFETY: a valid set.
        unsafe { libc::sigdelset(&mut a.sa_mask, unblocked) };
        cases.push(("with an asynchronous signal unblocked", a));
    }
    for (what, a) in cases {
        set(&a);
        assert_eq!(K.try_update(t2), Err(Error::HandlerDisplaced { current: ours.sa_sigaction }), "our entry {what}");
        assert_eq!(bytes(), before, "nothing written ({what})");
        static_call::init().unwrap();
        assert!(same(&action(), &ours), "init restored our disposition exactly ({what})");
        K.try_update(t2).unwrap();
        assert_eq!(K.call(1), t2(1));
        K.try_update(t1).unwrap();
        assert_eq!(bytes(), before);
    }
}
