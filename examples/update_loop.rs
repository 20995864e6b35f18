//! Updates one key with one call site `N` times (default 2,000), alternating
//! two targets, while another thread calls it: what `strace -c` counts the
//! system calls of (BENCHMARKS.md, "System calls per update"). With `far`,
//! the second target is a copy of the first mapped more than 2 GiB away, so
//! that every update moves the site between `call target` and the indirect
//! call through the key's slot (x86-64).
//!
//! ```sh
//! cargo build --release --example update_loop
//! strace -f -c ./target/release/examples/update_loop 2000
//! strace -f -c ./target/release/examples/update_loop 2000 far
//! ```

use static_call::static_call;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

extern "C" fn one(x: u64) -> u64 {
    x + 1
}
extern "C" fn two(x: u64) -> u64 {
    x + 2
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = one;

#[inline(never)]
fn site(x: u64) -> u64 {
    K.call(x)
}

/// A copy of `two` (`lea rax, [rdi + 2]; ret`) on a page mapped at least 4
/// GiB from this executable, read-execute (never writable and executable).
#[cfg(target_arch = "x86_64")]
fn far_two() -> extern "C" fn(u64) -> u64 {
    const CODE: [u8; 5] = [0x48, 0x8d, 0x47, 0x02, 0xc3];
    let text = site as fn(u64) -> u64 as usize;
    for k in 4..64usize {
        let hint = (text & !0xfff).wrapping_add(k << 30);
        // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping; the page is
        // written while read-write, then made read-execute, never unmapped.
        unsafe {
            let p = libc::mmap(
                hint as *mut libc::c_void,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            if p == libc::MAP_FAILED || p as usize != hint {
                continue;
            }
            std::ptr::copy_nonoverlapping(CODE.as_ptr(), p.cast::<u8>(), CODE.len());
            assert_eq!(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC), 0);
            return std::mem::transmute::<*mut libc::c_void, extern "C" fn(u64) -> u64>(p);
        }
    }
    panic!("no page 4..64 GiB away could be mapped");
}

#[cfg(not(target_arch = "x86_64"))]
fn far_two() -> extern "C" fn(u64) -> u64 {
    panic!("`far` maps x86-64 code")
}

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(2000, |a| a.parse().expect("a count"));
    let far = std::env::args().nth(2).is_some_and(|a| a == "far");
    static_call::init().expect("patching available");
    let second = if far { far_two() } else { two };
    K.update(second);
    let state = K.sites()[0].state();
    K.update(one);
    let (at, tramp) = (K.sites()[0].address(), static_call::__private::trampoline_of(&K).expect("a trampoline"));
    let pages = if at / 4096 == tramp / 4096 { "one page" } else { "two pages" };
    println!("site {at:#x}, trampoline {tramp:#x}: {pages}");
    static STOP: AtomicBool = AtomicBool::new(false);
    let caller = std::thread::spawn(|| {
        let mut calls = 0u64;
        while !STOP.load(Relaxed) {
            let r = site(1);
            assert!(r == 2 || r == 3, "{r}");
            calls += 1;
        }
        calls
    });
    let before = static_call::stats();
    for i in 0..n {
        K.update(if i % 2 == 0 { second } else { one });
    }
    STOP.store(true, Relaxed);
    let calls = caller.join().unwrap();
    let s = static_call::stats();
    println!(
        "{n} updates of a one-site key (between call target and {state:?}), {calls} calls meanwhile; traps emulated {}, rewound {}",
        s.traps_emulated - before.traps_emulated,
        s.traps_rewound - before.traps_rewound
    );
}
