//! The memory cost of patching: a written page of text stops being shared
//! with the file (the page cache) and becomes a private copy of this
//! process, with either writer. Measured in `/proc/self/smaps` over the
//! mappings that hold the sites and the trampoline, before `init`, after it, and after updates, with
//! 1,000 call sites: `Anonymous` (the private copies made by copy-on-write;
//! the measure) and `Private_Dirty` (which also counts page-cache pages of a
//! freshly linked binary not yet written back, mapped by this process only).
//! Printed for docs/hardened.md:
//!
//! ```text
//! cargo test --release --test writer_memory_cost -- --nocapture
//! ```
//!
//! The assertion is the model: the cost is one page per distinct page that
//! holds a patched site or trampoline, whatever the writer, and updates after
//! the first add nothing. (Not every executable mapping: under QEMU user
//! mode, the aarch64 tests' runner, `/proc/self/smaps` is the host's view,
//! where the guest's text is mapped without execute and the emulator's own
//! code buffer, executable, grows as it translates.) The `/proc/self/mem`
//! writer is refused under QEMU (its child says so).
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child};

use static_call::static_call;
use std::collections::BTreeSet;

extern "C" fn a(x: u64) -> u64 {
    x.wrapping_mul(3) ^ 1
}
extern "C" fn b(x: u64) -> u64 {
    x.wrapping_mul(5) ^ 2
}

#[static_call]
static K: extern "C" fn(u64) -> u64 = a;

macro_rules! x10 {
    ($e:expr) => {{
        $e;
        $e;
        $e;
        $e;
        $e;
        $e;
        $e;
        $e;
        $e;
        $e;
    }};
}

/// 1,000 call sites of `K`.
#[inline(never)]
fn many_sites(x: u64) -> u64 {
    let mut acc = x;
    x10!(x10!(x10!(acc = K.call(acc))));
    acc
}

const SITES: usize = 1000;

/// KiB of `Anonymous` and of `Private_Dirty` summed over the mappings that
/// hold one of `pages` (page numbers: the text of the sites and the
/// trampoline), and the number of such mappings (the mprotect writer splits
/// them while it writes).
fn text_kib(pages: &BTreeSet<usize>) -> (u64, u64, usize) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let (mut anon, mut dirty, mut maps, mut held) = (0, 0, 0, false);
    for line in smaps.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some(range), Some(perms)) if range.contains('-') && perms.len() == 4 => {
                let (lo, hi) = range.split_once('-').unwrap();
                let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
                held = pages.range(lo / 4096..hi / 4096).next().is_some();
                maps += held as usize;
            }
            (Some("Anonymous:"), Some(n)) if held => anon += n.parse::<u64>().unwrap(),
            (Some("Private_Dirty:"), Some(n)) if held => dirty += n.parse::<u64>().unwrap(),
            _ => {}
        }
    }
    (anon, dirty, maps)
}

#[test]
fn memory_cost_of_patched_pages() {
    for writer in ["procmem", "mprotect"] {
        let out = run_child("memory_cost_child", &[("STATIC_CALL_WRITER", writer)]);
        for l in out.lines().filter(|l| l.starts_with("child ") && !l.ends_with("done")) {
            eprintln!("{l}");
        }
    }
}

#[test]
#[ignore = "child process of memory_cost_of_patched_pages"]
fn memory_cost_child() {
    if !in_child("memory_cost_child") {
        return;
    }
    let page = 4096;
    let sites = K.sites();
    assert_eq!(sites.len(), SITES);
    let tramp = static_call::__private::trampoline_of(&*K).unwrap();
    // Every page that holds a byte of a site or of the trampoline.
    let pages: BTreeSet<usize> =
        sites.iter().map(|s| s.address()).chain([tramp]).flat_map(|a| [a / page, (a + 4) / page]).collect();
    let expected_kib = pages.len() as u64 * page as u64 / 1024;

    let before = text_kib(&pages);
    let init = static_call::init();
    if let Some(errno) = common::proc_mem_refused(&init) {
        println!("\nchild memory_cost_child: skipped: the /proc/self/mem writer is refused here (errno {errno})");
        println!("\nchild memory_cost_child: done");
        return;
    }
    init.unwrap();
    let writer = static_call::text_writer().unwrap();
    let after_init = text_kib(&pages);
    let first = many_sites(1);
    common::assert_no_wx();
    K.update(b);
    common::assert_no_wx();
    let after_update = text_kib(&pages);
    for i in 0..9 {
        K.update(if i % 2 == 0 { a } else { b });
        common::assert_no_wx();
    }
    let after_10 = text_kib(&pages);
    assert_eq!(many_sites(1), first, "after an even number of updates the target is `a` again");
    println!(
        "\nchild memory_cost_child: {writer:?}: {SITES} sites + 1 trampoline on {} pages ({expected_kib} KiB); \
         their mappings' Anonymous / Private_Dirty KiB: before init {} / {}, after init {} / {}, after 1 \
         update {} / {}, after 10 updates {} / {} ({} mappings before, {} after)",
        pages.len(),
        before.0,
        before.1,
        after_init.0,
        after_init.1,
        after_update.0,
        after_update.1,
        after_10.0,
        after_10.1,
        before.2,
        after_10.2,
    );
    assert_eq!(after_init.0 - before.0, expected_kib, "init makes one private copy per patched page");
    assert_eq!(after_10.0, after_init.0, "later updates write the same pages: no further cost");
    println!("\nchild memory_cost_child: done");
}
