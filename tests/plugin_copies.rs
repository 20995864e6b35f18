//! Three copies of the crate in one process: the host's (this test) and those
//! of two plugin cdylibs, each with its own SIGTRAP handler installed over the
//! previous one. Every copy keeps updating (each patches only its own text)
//! while callers run, because each recognizes the newer handlers above its own
//! and verifies that their chain reaches it; a foreign handler on top is still
//! refused. On aarch64 no copy installs a handler (no trap there): the
//! disposition stays untouched, a foreign handler does not stop updates, and
//! calls are proven to have overlapped updates instead of meeting traps.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;

use plugin_support::{current_sigtrap_handler, mapping_path, Plugin};
use static_call::{static_call, Error, SiteState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;

type F = extern "C" fn(u64) -> u64;

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

struct Api {
    init: extern "C" fn() -> i32,
    work: F,
    set_mode: extern "C" fn(u32) -> i32,
    sites: extern "C" fn() -> u64,
    site_address: extern "C" fn() -> usize,
}

fn api(p: &Plugin, name: &str) -> Api {
    Api {
        init: p.func(&format!("{name}_init")),
        work: p.func(&format!("{name}_work")),
        set_mode: p.func(&format!("{name}_set_mode")),
        sites: p.func(&format!("{name}_sites")),
        site_address: p.func(&format!("{name}_site_address")),
    }
}

/// Set around each round of updates under load (aarch64's proof that calls
/// overlapped updates: no trap there).
static UPDATING: AtomicBool = AtomicBool::new(false);
/// Calls that started while a round of updates was in progress.
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);

/// (sites, direct sites) of a plugin's own key.
fn plugin_sites(a: &Api) -> (u64, u64) {
    let s = (a.sites)();
    (s & 0xffff_ffff, s >> 32)
}

#[test]
fn copies_chain_their_handlers_and_each_patches_its_own_text() {
    let disposition = current_sigtrap_handler();
    static_call::init().unwrap();
    let host_handler = current_sigtrap_handler();
    if common::TRAPS {
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(
            mapping_path(host_handler).map(std::path::PathBuf::from),
            Some(exe),
            "the host's handler is in the host"
        );
    } else {
        assert_eq!(host_handler, disposition, "no SIGTRAP handler on aarch64");
    }

    let alpha = Plugin::load("alpha");
    let beta = Plugin::load("beta");
    let (a, b) = (api(&alpha, "alpha"), api(&beta, "beta"));
    assert_eq!((a.init)(), 0);
    if common::TRAPS {
        assert!(alpha.contains(current_sigtrap_handler()), "alpha's handler installed over the host's");
    } else {
        assert_eq!(current_sigtrap_handler(), disposition, "no SIGTRAP handler on aarch64");
    }
    assert_eq!(
        HOST.try_update(host_b).map(|g| g.map(|g| g as usize)),
        Ok(Some(host_a as *const () as usize)),
        "the host accepts alpha's handler: it chains to ours"
    );
    assert_eq!((b.init)(), 0);
    if common::TRAPS {
        assert!(beta.contains(current_sigtrap_handler()), "beta's handler installed over alpha's");
    } else {
        assert_eq!(current_sigtrap_handler(), disposition, "no SIGTRAP handler on aarch64");
    }
    assert_eq!(
        HOST.try_update(host_a).map(|g| g.map(|g| g as usize)),
        Ok(Some(host_b as *const () as usize)),
        "the chain beta -> alpha -> host reaches ours"
    );
    assert_eq!((a.set_mode)(1), 0, "alpha accepts beta's handler above its own");

    // Each copy found and patched its own sites, in its own text.
    assert_eq!(plugin_sites(&a), (1, 1));
    assert_eq!(plugin_sites(&b), (1, 1));
    assert!(alpha.contains((a.site_address)()));
    assert!(beta.contains((b.site_address)()));
    assert!(HOST.sites().iter().all(|s| s.state() == SiteState::Direct));
    assert_eq!((a.work)(3), 300);
    assert_eq!((b.work)(3), 203);

    // Under load: callers of all three keys while all three copies update.
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let (aw, bw) = (a.work, b.work);
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (stop, wrong) = (stop.clone(), wrong.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let during = UPDATING.load(SeqCst);
                    let ok = [101, 102].contains(&host(100))
                        && [200, 10_000].contains(&aw(100))
                        && [300, 20_000].contains(&bw(100));
                    if !ok {
                        wrong.fetch_add(1, Relaxed);
                    }
                    if during {
                        OVERLAPPED.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    let base = static_call::stats();
    let mut i = 0u32;
    // x86-64: until the host's copy met 10 traps; aarch64 (under QEMU): at
    // least 200 rounds, until 10 calls started during one.
    loop {
        let s = static_call::stats();
        let done = if common::TRAPS {
            s.traps_emulated + s.traps_rewound >= base.traps_emulated + base.traps_rewound + 10 || i >= 100_000
        } else {
            i >= 200 && OVERLAPPED.load(SeqCst) >= 10 || i >= 100_000
        };
        if done {
            break;
        }
        UPDATING.store(true, SeqCst);
        HOST.update(if i.is_multiple_of(2) { host_b } else { host_a });
        assert_eq!((a.set_mode)(i % 2), 0);
        assert_eq!((b.set_mode)((i + 1) % 2), 0);
        UPDATING.store(false, SeqCst);
        assert_eq!(host(0), if i.is_multiple_of(2) { 2 } else { 1 });
        assert_eq!((a.work)(1), if i.is_multiple_of(2) { 101 } else { 100 });
        assert_eq!((b.work)(1), if i.is_multiple_of(2) { 200 } else { 201 });
        i += 1;
    }
    stop.store(true, Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(wrong.load(Relaxed), 0);
    let s = static_call::stats();
    eprintln!("{i} rounds of updates in three copies ({} calls during one); host {s:?}", OVERLAPPED.load(SeqCst));
    if common::TRAPS {
        assert!(
            s.traps_emulated + s.traps_rewound > base.traps_emulated + base.traps_rewound,
            "no trap reached the host"
        );
    } else {
        assert!(OVERLAPPED.load(SeqCst) >= 10, "calls never overlapped the updates");
    }
    assert_eq!(plugin_sites(&a), (1, 1));
    assert_eq!(plugin_sites(&b), (1, 1));

    HOST.update(host_a);

    // A foreign handler on top of the chain is still refused, by every copy
    // (x86-64); on aarch64, where no copy uses SIGTRAP, it changes nothing.
    extern "C" fn foreign(_: libc::c_int) {}
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: plain sigaction calls; the old disposition is put back below.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = foreign as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, old.as_mut_ptr()), 0);
    }
    if common::TRAPS {
        assert!(matches!(HOST.try_update(host_b), Err(Error::HandlerDisplaced { .. })));
        assert_eq!((a.set_mode)(0), -1);
    } else {
        assert_eq!(HOST.try_update(host_b).map(|g| g.map(|g| g as usize)), Ok(Some(host_a as *const () as usize)));
        assert_eq!((a.set_mode)(1), 0);
        assert_eq!((host(1), (a.work)(3)), (3, 300));
        HOST.update(host_a);
    }
    // SAFETY: restores beta's handler.
    unsafe { assert_eq!(libc::sigaction(libc::SIGTRAP, old.as_ptr(), std::ptr::null_mut()), 0) };
    assert_eq!(HOST.try_update(host_b).map(|g| g.map(|g| g as usize)), Ok(Some(host_a as *const () as usize)));
    assert_eq!((a.set_mode)(0), 0);
}
