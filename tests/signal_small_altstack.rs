//! The SIGTRAP handler runs on the interrupted thread's own stack, never on
//! an alternate signal stack, with small frames in debug builds too. Caller
//! threads install a deliberately small alternate stack (`MINSIGSTKSZ`,
//! 2 KiB, smaller than this CPU's signal frame alone where AVX-512 is
//! present) and call sites of three copies of the crate whose handlers are
//! chained (beta's on alpha's on the host's on a user handler) while all
//! three update, so traps are emulated through the whole chain; a genuine
//! `int3` on such a thread passes through all three to the user's handler.
//! With `SA_ONSTACK` the first trap overflows the 2 KiB stack (SIGSEGV).
//!
//! It also measures the stack a genuine `int3` takes through the whole chain
//! (kernel signal frame, three copies' handlers, the user's handler) by
//! painting the stack below the stack pointer and finding the deepest byte
//! written, and prints it.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod plugin_support;

use plugin_support::{current_sigtrap_handler, install_user_handler, Plugin, USER_TRAPS};
use static_call::static_call;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

extern "C" fn host_a(x: u64) -> u64 {
    x + 1
}
extern "C" fn host_b(x: u64) -> u64 {
    x + 2
}

#[static_call]
static HOST: extern "C" fn(u64) -> u64 = host_a;

#[inline(never)]
fn host(x: u64) -> u64 {
    HOST.call(x)
}

/// Installs a `MINSIGSTKSZ` alternate signal stack for the calling thread
/// (leaked: it must outlive the thread's use of it).
fn small_altstack() {
    let size = libc::MINSIGSTKSZ;
    let mem: &'static mut [u8] = Vec::leak(vec![0u8; size]);
    let ss = libc::stack_t { ss_sp: mem.as_mut_ptr().cast(), ss_flags: 0, ss_size: size };
    // SAFETY: a valid, leaked buffer of `size` bytes.
    assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
}

fn int3() {
    // SAFETY: a genuine breakpoint; the user's handler returns past it.
    unsafe { core::arch::asm!("int3", options(nomem, nostack)) };
}

/// The bytes below the stack pointer that a genuine `int3` wrote (the
/// deepest changed byte), from a painted stack.
#[inline(never)]
fn stack_used_by_int3() -> usize {
    const PATTERN: u64 = 0xa5c3_5a3c_a5c3_5a3c;
    const DEPTH: usize = 256 * 1024;
    let sp: usize;
    // SAFETY: reads rsp.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    let (lo, hi) = ((sp - DEPTH) & !7, (sp - 2048) & !7);
    let mut a = lo;
    while a < hi {
        // SAFETY: below our own frame, inside this thread's 4 MiB stack,
        // and nothing of ours lives there (calls made here use the 2 KiB
        // just below rsp).
        unsafe { std::ptr::write_volatile(a as *mut u64, PATTERN) };
        a += 8;
    }
    int3();
    let mut a = lo;
    // SAFETY: as above.
    while a < hi && unsafe { std::ptr::read_volatile(a as *const u64) } == PATTERN {
        a += 8;
    }
    sp - a
}

#[test]
fn three_chained_handlers_on_threads_with_a_tiny_altstack() {
    install_user_handler();
    static_call::init().unwrap();
    let alpha = Plugin::load("alpha");
    let beta = Plugin::load("beta");
    let alpha_init: extern "C" fn() -> i32 = alpha.func("alpha_init");
    let beta_init: extern "C" fn() -> i32 = beta.func("beta_init");
    let alpha_mode: extern "C" fn(u32) -> i32 = alpha.func("alpha_set_mode");
    let beta_mode: extern "C" fn(u32) -> i32 = beta.func("beta_set_mode");
    let alpha_work: extern "C" fn(u64) -> u64 = alpha.func("alpha_work");
    let beta_work: extern "C" fn(u64) -> u64 = beta.func("beta_work");
    assert_eq!(alpha_init(), 0);
    assert_eq!(beta_init(), 0);
    assert!(beta.contains(current_sigtrap_handler()), "beta's handler is on top of the chain");

    // The whole chain's stack use, measured on a thread of our own.
    let used = std::thread::Builder::new().stack_size(4 << 20).spawn(stack_used_by_int3).unwrap().join().unwrap();
    // SAFETY: a plain query.
    let frame = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    eprintln!(
        "a genuine int3 through three copies to the user's handler used {used} bytes of stack \
         (AT_MINSIGSTKSZ {frame}: about {} bytes besides the kernel's frame and the red zone)",
        used.saturating_sub(frame + 128)
    );
    assert_eq!(USER_TRAPS.load(SeqCst), 1);
    assert!(
        used < frame + 128 + 3 * 2048,
        "three copies' handlers in a debug build stay within 2 KiB each ({used} bytes)"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, calls) = (stop.clone(), calls.clone());
            std::thread::spawn(move || {
                small_altstack();
                int3();
                while !stop.load(SeqCst) {
                    assert!(matches!(host(100), 101 | 102));
                    assert!(matches!(alpha_work(3), 103 | 300));
                    assert!(matches!(beta_work(3), 203 | 600));
                    calls.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    let base = static_call::stats();
    let mut i = 0u32;
    while static_call::stats().traps_emulated < base.traps_emulated + 20 {
        assert!(i < 1_000_000, "no trap in {i} updates");
        HOST.update(if i.is_multiple_of(2) { host_b } else { host_a });
        assert_eq!(alpha_mode(i % 2), 0);
        assert_eq!(beta_mode(i % 2), 0);
        i += 1;
    }
    stop.store(true, SeqCst);
    callers.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(USER_TRAPS.load(SeqCst), 4, "each caller's genuine int3 reached the user's handler once");
    eprintln!("{i} rounds of updates, {} calls, {:?}", calls.load(SeqCst), static_call::stats());
}
