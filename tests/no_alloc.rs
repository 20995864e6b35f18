//! Updates after `init` allocate nothing, with either writer: a one-site
//! update, a 40-site update, a reset, and an update made from inside a
//! signal handler (SIGUSR1 raised at the updating thread), each counted by a
//! `#[global_allocator]` that counts the allocations of the thread that
//! armed it. Each writer runs in a child process (this binary re-executed
//! with the `#[ignore]`d test selected), because the writer is chosen once
//! per process.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child, t1, t2, t3};

use static_call::{static_call, TextWriter};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        ALLOCS.fetch_add(1, SeqCst);
        BYTES.fetch_add(size, SeqCst);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; counting
// touches only atomics and a const thread-local without destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with this thread's allocations counted: its result, and how many
/// allocations and bytes it made.
fn counted<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    let (a, b) = (ALLOCS.load(SeqCst), BYTES.load(SeqCst));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.load(SeqCst) - a, BYTES.load(SeqCst) - b)
}

#[static_call]
static ONE: extern "C" fn(u64) -> u64 = t1;
#[static_call]
static K40: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn one(x: u64) -> u64 {
    ONE.call(x)
}

macro_rules! x10 {
    ($($t:tt)*) => { $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* };
}

/// 40 sites of `K40`; each tagged target keeps the tag of its argument, so
/// the result is `tag << 48 | x` (0 once reset).
#[inline(never)]
fn forty(x: u64) -> u64 {
    let mut y = x;
    x10! { y = K40.call(y); }
    x10! { y = K40.call(y); }
    x10! { y = K40.call(y); }
    x10! { y = K40.call(y); }
    y
}

#[test]
fn updates_allocate_nothing_with_the_default_writer() {
    // x86-64: `/proc/self/mem`; aarch64: whichever the probe chose (the
    // mprotect writer where it refuses `/proc/self/mem`: QEMU user mode).
    let expect = if cfg!(target_arch = "aarch64") { "probed" } else { "procmem" };
    let out = run_child("no_alloc_child", &[("EXPECT_WRITER", expect)]);
    eprintln!("{}", out.lines().filter(|l| l.starts_with("child ")).collect::<Vec<_>>().join("\n"));
}

#[test]
fn updates_allocate_nothing_with_the_mprotect_writer() {
    let out = run_child("no_alloc_child", &[("STATIC_CALL_WRITER", "mprotect"), ("EXPECT_WRITER", "mprotect")]);
    eprintln!("{}", out.lines().filter(|l| l.starts_with("child ")).collect::<Vec<_>>().join("\n"));
}

static IN_HANDLER_OK: AtomicBool = AtomicBool::new(false);
static IN_HANDLER_RAN: AtomicBool = AtomicBool::new(false);
static IN_HANDLER_ALLOCS: AtomicUsize = AtomicUsize::new(usize::MAX);

extern "C" fn on_usr1(_: libc::c_int) {
    // No formatting, no allocation: counts and flags only.
    let (r, allocs, _) = counted(|| K40.try_update(t3));
    IN_HANDLER_OK.store(r.is_ok(), SeqCst);
    IN_HANDLER_ALLOCS.store(allocs, SeqCst);
    IN_HANDLER_RAN.store(true, SeqCst);
}

#[test]
#[ignore = "child process of the updates_allocate_nothing_* tests"]
fn no_alloc_child() {
    if !in_child("no_alloc_child") {
        return;
    }
    assert_eq!(K40.sites().len(), 40);
    assert_eq!((one(5), forty(5)), ((1 << 48) | 5, (1 << 48) | 5));
    static_call::init().unwrap();
    let writer = match std::env::var("EXPECT_WRITER").as_deref() {
        Ok("mprotect") => TextWriter::Mprotect,
        Ok("probed") => static_call::text_writer().expect("a writer"),
        _ => TextWriter::ProcMem,
    };
    assert_eq!(static_call::text_writer(), Some(writer));
    let tag = |n: u64, x: u64| if n == 0 { 0 } else { (n << 48) | x };

    // The counter counts: an allocation on this thread is seen.
    let (_, allocs, bytes) = counted(|| std::hint::black_box(Box::new([0u8; 24])));
    assert_eq!((allocs, bytes), (1, 24), "the counting allocator missed an allocation");

    // Each case counted on its first run after init: nothing warmed up.
    let patched = static_call::stats().sites_patched;
    let (r, allocs, bytes) = counted(|| ONE.try_update(t2));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!((allocs, bytes), (0, 0), "a one-site update allocated");
    assert_eq!(one(5), tag(2, 5));

    let (r, allocs, bytes) = counted(|| K40.try_update(t2));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!((allocs, bytes), (0, 0), "a 40-site update allocated");
    assert_eq!(forty(5), tag(2, 5));

    let (r, allocs, bytes) = counted(|| K40.try_reset());
    assert!(r.is_ok(), "{r:?}");
    assert_eq!((allocs, bytes), (0, 0), "a reset of 40 sites allocated");
    assert_eq!(forty(5), 0);
    assert_eq!(static_call::stats().sites_patched - patched, 81, "the updates patched every site");

    // From a signal handler, on the thread that raised it.
    // SAFETY: installs a handler that only updates and stores atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        assert_eq!(libc::raise(libc::SIGUSR1), 0);
    }
    assert!(IN_HANDLER_RAN.load(SeqCst), "the handler ran");
    assert!(IN_HANDLER_OK.load(SeqCst), "the update from the handler succeeded");
    assert_eq!(IN_HANDLER_ALLOCS.load(SeqCst), 0, "the update from the handler allocated");
    assert_eq!(forty(5), tag(3, 5));
    assert_eq!(static_call::text_writer(), Some(writer));
    println!("\nchild no_alloc_child: {writer:?}: 0 allocations in 4 updates");
    println!("\nchild no_alloc_child: done");
}
