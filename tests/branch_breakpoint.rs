//! A debugger's breakpoint on a static-branch site reaches the SIGTRAP
//! handler installed before ours (guarantee 5), wherever on the site it
//! is: on the instruction's first byte (its first `cs` prefix, two bytes
//! before `Site::address()`, where a disassembler shows `cs cs jmp` or
//! `cs nop` begin), on the byte before `Site::address()` (the start of our
//! patch) and on `Site::address()` itself, with the site taken and not
//! taken, `likely` and `unlikely`. The handler (a debugger's stand-in)
//! puts the original byte back and resumes on the breakpoint's address, as
//! gdb does; the branch then goes where the key's value says.
//!
//! Then the same on the instruction's first byte while another thread
//! flips the key with `set` as fast as it can (the byte is outside what
//! `set` writes, so `set` goes on): every breakpoint reaches the debugger
//! exactly once, and every execution takes the old or the new branch.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::{static_branch, SiteState};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::*};

/// Each key has one site, so that a `set` of one writes only that site's
/// patch (no span of a page run covers another site's first prefix).
#[static_branch]
static U: bool = false;
#[static_branch]
static L: bool = false;

#[inline(never)]
fn u_site() -> bool {
    std::hint::black_box(1);
    if U.unlikely() {
        std::hint::black_box(true)
    } else {
        std::hint::black_box(false)
    }
}

#[inline(never)]
fn l_site() -> bool {
    std::hint::black_box(2);
    if L.likely() {
        std::hint::black_box(true)
    } else {
        std::hint::black_box(false)
    }
}

static HITS: AtomicU64 = AtomicU64::new(0);
/// Traps the debugger saw at an address that is not its breakpoint.
static STRAY: AtomicU64 = AtomicU64::new(0);
static BP: AtomicUsize = AtomicUsize::new(0);
static ORIG: AtomicUsize = AtomicUsize::new(0);
static MEM: AtomicI32 = AtomicI32::new(-1);

extern "C" fn debugger(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO arguments.
    let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
    let bp = BP.load(SeqCst);
    if bp != 0 && rip == bp + 1 {
        let b = ORIG.load(SeqCst) as u8;
        // SAFETY: pwrite is async-signal-safe; our /proc/self/mem fd.
        let n = unsafe { libc::pwrite(MEM.load(SeqCst), &b as *const u8 as *const libc::c_void, 1, bp as libc::off_t) };
        if n != 1 {
            // SAFETY: async-signal-safe; the process cannot go on.
            unsafe { libc::abort() };
        }
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] = bp as i64;
        HITS.fetch_add(1, SeqCst);
    } else {
        STRAY.fetch_add(1, SeqCst);
    }
}

/// Puts a breakpoint at `bp`, runs `site` once, and checks that the
/// debugger saw it and put the byte back; returns what the site returned.
#[track_caller]
fn through_breakpoint(bp: usize, site: fn() -> bool) -> bool {
    let before = HITS.load(SeqCst);
    let orig = common::read_bytes(bp, 1)[0];
    assert_ne!(orig, 0xcc);
    ORIG.store(orig as usize, SeqCst);
    BP.store(bp, SeqCst);
    common::poke_text(bp, &[0xcc]);
    let r = site();
    BP.store(0, SeqCst);
    let restored = common::read_bytes(bp, 1)[0];
    if restored == 0xcc {
        // The debugger never ran: take the breakpoint out before failing.
        common::poke_text(bp, &[orig]);
    }
    assert_eq!(HITS.load(SeqCst), before + 1, "the breakpoint at {bp:#x} reached the debugger once");
    assert_eq!(restored, orig, "the debugger put the byte back");
    r
}

/// A branch key and a function running its one site.
type KeyAndSite = (&'static static_call::BranchKey, fn() -> bool);

fn site_of(key: &'static static_call::BranchKey) -> static_call::Site {
    let sites = key.sites();
    assert_eq!(sites.len(), 1, "{sites:?}");
    sites[0].clone()
}

#[test]
fn breakpoints_on_branch_sites_reach_the_debugger() {
    // SAFETY: a plain SA_SIGINFO handler installed before init; opening
    // /proc/self/mem for it.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = debugger as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
        MEM.store(libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR), SeqCst);
    }
    assert!(MEM.load(SeqCst) >= 0);
    if let Err(e) = static_call::init() {
        eprintln!("patching impossible here ({e}): nothing to test");
        return;
    }
    let keys: [KeyAndSite; 2] = [(&U, u_site), (&L, l_site)];
    for (key, site) in keys {
        for value in [false, true] {
            key.set(value);
            let s = site_of(key);
            assert_eq!(
                s.state(),
                if value == (site as usize == u_site as fn() -> bool as usize) {
                    // An `unlikely` site jumps when the value is true, a
                    // `likely` one when it is false.
                    SiteState::Taken
                } else {
                    SiteState::NotTaken
                },
                "{s}"
            );
            // The instruction's first byte, our patch's first byte,
            // `Site::address()`.
            for (offset, what) in [(2, "instruction start"), (1, "patch start"), (0, "Site::address()")] {
                let bp = s.address() - offset;
                let r = through_breakpoint(bp, site);
                assert_eq!(r, value, "{what} {bp:#x}, value {value}: the branch of the value");
                assert_eq!(site(), value);
            }
        }
    }
    assert_eq!(STRAY.load(SeqCst), 0, "no trap of ours reached the debugger");

    // On the instruction's first byte while another thread sets the key.
    static STOP: AtomicBool = AtomicBool::new(false);
    static SETS: AtomicU64 = AtomicU64::new(0);
    let start = static_call::stats();
    for (key, site) in keys {
        STOP.store(false, SeqCst);
        let setter = std::thread::spawn(move || {
            let mut v = false;
            while !STOP.load(SeqCst) {
                v = !v;
                key.set(v);
                SETS.fetch_add(1, SeqCst);
            }
        });
        let bp = site_of(key).address() - 2;
        let hits = HITS.load(SeqCst);
        let mut n = 0u64;
        // Until executions met the setter's int3s (or enough tries),
        // at least 300 breakpoints.
        while n < 300 || (static_call::stats().traps_emulated == start.traps_emulated && n < 200_000) {
            through_breakpoint(bp, site);
            // Plain executions too: these are the ones that meet the int3s.
            for _ in 0..20 {
                site();
            }
            n += 1;
        }
        STOP.store(true, SeqCst);
        setter.join().unwrap();
        assert_eq!(HITS.load(SeqCst), hits + n, "every breakpoint reached the debugger once");
    }
    let s = static_call::stats();
    eprintln!(
        "{} hits, {} sets; traps emulated {}, rewound {}",
        HITS.load(SeqCst),
        SETS.load(SeqCst),
        s.traps_emulated - start.traps_emulated,
        s.traps_rewound - start.traps_rewound
    );
    assert_eq!(STRAY.load(SeqCst), 0, "no trap of ours reached the debugger");
    assert!(
        s.traps_emulated > start.traps_emulated,
        "no execution met a set's int3: the concurrent part proved nothing"
    );
}
