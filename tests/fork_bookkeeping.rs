//! A `fork()` child does not inherit the SIGTRAP handler's bookkeeping of
//! threads that do not exist in it: one thread of the parent is inside our
//! handler, counted in `IN_FLIGHT` and as a reader of our previous
//! disposition (a genuine `int3` passed on to the `dispatch` of what our
//! handler takes for another copy of the crate, a v2 header made up here,
//! which holds it there), another holds our `WRITER` (a relink held by the
//! test hook). The child then relinks (it would spin forever on the
//! inherited `WRITER`) and runs the unload path (it would wait a second for
//! the inherited `IN_FLIGHT` and report that it gave up). Judged by the
//! child's exit status, with a watchdog for a hang.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use common::t1;
use static_call::__private::{set_writer_hook, signal_bookkeeping, unload_now};
use static_call::static_call;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

static PROGRESS: AtomicU64 = AtomicU64::new(0);

fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn futex(word: &AtomicU32, op: i32, val: u32) {
    // SAFETY: a valid, aligned u32; FUTEX_WAIT/WAKE without timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

/// 0: let through; 1: hold; 2: a thread is held; 3: released.
static PEER_GATE: AtomicU32 = AtomicU32::new(0);
static WRITER_GATE: AtomicU32 = AtomicU32::new(0);
static WRITER_TID: AtomicI32 = AtomicI32::new(0);
static PEER_TRAPS: AtomicU64 = AtomicU64::new(0);

/// Parks the calling thread at `gate` (async-signal-safe: atomics, futex).
fn park(gate: &AtomicU32) {
    if gate.compare_exchange(1, 2, SeqCst, SeqCst).is_ok() {
        futex(gate, libc::FUTEX_WAKE, i32::MAX as u32);
        while gate.load(SeqCst) == 2 {
            futex(gate, libc::FUTEX_WAIT, 2);
        }
    }
}

fn release(gate: &AtomicU32) {
    gate.store(3, SeqCst);
    futex(gate, libc::FUTEX_WAKE, i32::MAX as u32);
}

fn wait_parked(gate: &AtomicU32) {
    while gate.load(SeqCst) != 2 {
        futex(gate, libc::FUTEX_WAIT, 1);
    }
}

// A handler with the v2 header of a copy of static_call: what our handler
// passes a trap on to through the header's `dispatch`, counted as a reader
// of its previous disposition meanwhile.
core::arch::global_asm!(
    ".pushsection .text.fake_peer, \"ax\", @progbits",
    ".balign 64, 0xcc",
    ".ascii \"SCALLSIG\"",
    ".long 2",
    ".long 32",
    ".long {chains_to} - .",
    ".long {relink} - .",
    ".long {dispatch} - .",
    ".long 0",
    "fake_peer_entry:",
    "ret",
    ".popsection",
    chains_to = sym peer_chains_to,
    relink = sym peer_relink,
    dispatch = sym peer_dispatch,
);

extern "C" fn peer_chains_to(_: usize, _: u32) -> bool {
    false
}

extern "C" fn peer_relink(_: usize, _: *const libc::sigaction, _: u32) -> bool {
    false
}

/// Holds the thread when asked; answers "dealt with".
extern "C" fn peer_dispatch(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void, _: u32) -> usize {
    PEER_TRAPS.fetch_add(1, SeqCst);
    park(&PEER_GATE);
    0
}

fn fake_peer_entry() -> usize {
    let a: usize;
    // SAFETY: `lea` only computes an address.
    unsafe {
        core::arch::asm!("lea {}, [rip + fake_peer_entry]", out(reg) a, options(nomem, nostack, preserves_flags))
    };
    a
}

extern "C" fn writer_hook() {
    if gettid() == WRITER_TID.load(SeqCst) {
        park(&WRITER_GATE);
    }
}

fn current_action() -> libc::sigaction {
    let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: query only.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) }, 0);
    // SAFETY: filled in.
    unsafe { cur.assume_init() }
}

/// Calls `relink(dying, replacement, 64)` of the copy whose handler is
/// current, through its v2 header (as another copy's unload would).
fn relink_current(dying: usize, replacement: &libc::sigaction) -> bool {
    let h = current_action().sa_sigaction;
    assert_eq!(h % 64, 32, "our entry is current");
    let at = h - 32 + 20;
    // SAFETY: our header (checked by the unit tests): a 32-bit offset from
    // this field to the copy's `relink`.
    let relink: extern "C" fn(usize, *const libc::sigaction, u32) -> bool = unsafe {
        let rel = std::ptr::read_unaligned(at as *const i32);
        std::mem::transmute(at.wrapping_add(rel as isize as usize))
    };
    relink(dying, replacement, 64)
}

#[test]
fn a_fork_child_resets_the_handler_bookkeeping_it_cannot_own() {
    common::watchdog("fork bookkeeping", &PROGRESS, std::time::Duration::from_secs(60));
    // The made-up copy's handler below ours, which holds a thread when asked.
    assert_eq!(fake_peer_entry() % 64, 32);
    // SAFETY: a valid SA_SIGINFO handler (never run by the kernel: ours is
    // installed over it before any trap).
    let peer = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = fake_peer_entry();
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
        sa
    };
    static_call::init().unwrap();
    assert_eq!(K.call(1), t1(1));
    set_writer_hook(Some(writer_hook));

    // Thread T: inside our handler (in the made-up copy's dispatch, which
    // holds it).
    PEER_GATE.store(1, SeqCst);
    let t = std::thread::spawn(|| {
        // SAFETY: a genuine breakpoint; dealt with, it resumes past it.
        unsafe { core::arch::asm!("int3", options(nomem, nostack)) };
    });
    wait_parked(&PEER_GATE);
    // Thread D: holds WRITER (a relink of the made-up copy onto itself).
    WRITER_GATE.store(1, SeqCst);
    let d = std::thread::spawn(move || {
        WRITER_TID.store(gettid(), SeqCst);
        assert!(relink_current(peer.sa_sigaction, &peer));
    });
    wait_parked(&WRITER_GATE);
    let (in_flight, readers, writer) = signal_bookkeeping();
    assert!(in_flight >= 1 && readers.iter().sum::<isize>() >= 1 && writer, "{:?}", signal_bookkeeping());

    // SAFETY: the child only reads atomics, relinks and unloads (no lock
    // another parent thread may hold), then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // A hung child must not outlive the parent's watchdog.
        // SAFETY: async-signal-safe.
        unsafe { libc::alarm(120) };
        let mut code = 0;
        if signal_bookkeeping() != (0, [0, 0], false) {
            code |= 1;
        }
        if !relink_current(peer.sa_sigaction, &peer) {
            code |= 2;
        }
        if unload_now() != "Clean" {
            code |= 4;
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    PROGRESS.fetch_add(1, SeqCst);
    let codes = "bits: 1 bookkeeping inherited, 2 relink refused, 4 unload gave up or did nothing";
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x} ({codes})");

    // The parent's own threads finish normally.
    release(&PEER_GATE);
    release(&WRITER_GATE);
    t.join().unwrap();
    d.join().unwrap();
    assert_eq!(PEER_TRAPS.load(SeqCst), 1);
    assert_eq!(signal_bookkeeping(), (0, [0, 0], false));
    set_writer_hook(None);
}
