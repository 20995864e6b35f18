//! Updates one key with one call site `N` times (default 2,000), alternating
//! two targets, while another thread calls it: what `strace -c` counts the
//! system calls of (BENCHMARKS.md, "System calls per update").
//!
//! ```sh
//! cargo build --release --example update_loop
//! strace -f -c ./target/release/examples/update_loop 2000
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

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(2000, |a| a.parse().expect("a count"));
    static_call::init().expect("patching available");
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
        K.update(if i % 2 == 0 { two } else { one });
    }
    STOP.store(true, Relaxed);
    let calls = caller.join().unwrap();
    let s = static_call::stats();
    println!(
        "{n} updates of a one-site key, {calls} calls meanwhile; traps emulated {}, rewound {}",
        s.traps_emulated - before.traps_emulated,
        s.traps_rewound - before.traps_rewound
    );
}
