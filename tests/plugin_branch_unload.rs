//! Unloading a plugin with static branches while another thread keeps
//! setting a host branch. A user SIGTRAP handler, then the host's copy,
//! alpha's and beta's, each handler chained to the previous one (beta ->
//! alpha -> host -> user). Alpha has a branch the host sets through the
//! `&'static BranchKey` alpha exports.
//!
//! While alpha (whose handler lies below beta's) is unloaded, a host thread
//! sets the host's branch without pause (each set then checks that the
//! host's sites follow) and callers run the host's sites; a second thread
//! sets alpha's branch through the host's copy until that returns
//! `ShutDown`. Inside the unload the test waits, in alpha's own destructor
//! (before its copy shuts down), for 20 host sets and (x86-64) a host trap
//! that passed through beta's and alpha's handlers; on x86-64 also in
//! beta's writer hook, while beta relinks past alpha after alpha's copy
//! shut down (alpha still mapped): until the plugin's setter met
//! `ShutDown`, then again for 20 sets and a trap. On aarch64 the destructor
//! hook stops the plugin's setter instead.
//!
//! After the unload, sentinel pages are mapped where alpha's branch sites
//! were, and host sets go on: every one succeeds, and no byte of the
//! sentinels changes (nothing writes into the unmapped text). A genuine
//! `int3` still reaches the user's handler, `fork` works. Alpha is loaded
//! again: its branch is back at its built-in value, its sites are patched
//! by its new copy, the host sets it; (x86-64) its copy shuts down with
//! alpha loaded, and a set of its branch, and a batch of it with a host
//! branch, are refused, the host's part put back. Then alpha, whose handler
//! is on top now, and beta are unloaded as docs/plugins.md says (no update
//! while `dlclose` runs, no caller on its way into the plugin), see
//! [`unload_on_top`]: sets running through those unloads crash the process
//! (19 SIGSEGV and 2 spurious `HandlerDisplaced` in 40 runs of a version of
//! this test that kept setting through every unload).
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;

use plugin_support::{
    assert_branch_patched, current_sigtrap_handler, fork_ok, install_user_handler, mapping_path, Plugin,
};
#[cfg(target_arch = "x86_64")]
use plugin_support::{genuine_int3, USER_TRAPS};
use static_call::{static_branch, BranchKey, Error, NotDirect, SiteState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};

type F = extern "C" fn(u64) -> u64;

#[static_branch]
static HOST_TRACE: bool = false;

#[inline(never)]
fn host_unlikely(x: u64) -> u64 {
    if HOST_TRACE.unlikely() {
        x + 1
    } else {
        x
    }
}

#[inline(never)]
fn host_likely(x: u64) -> u64 {
    if HOST_TRACE.likely() {
        x + 1
    } else {
        std::hint::black_box(x)
    }
}

/// A second host branch, set only by a batch that also sets the branch of a
/// plugin whose copy shut down (x86-64 only, as that part of the test).
#[cfg(target_arch = "x86_64")]
#[static_branch]
static HOST_OTHER: bool = false;

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn host_other() -> bool {
    HOST_OTHER.unlikely()
}

/// Completed sets of the host's branch (by the host's setter thread).
static SETS: AtomicU64 = AtomicU64::new(0);
/// Calls that started while the host's setter was inside a set (aarch64's
/// proof that calls overlapped sets).
static SETTING: AtomicBool = AtomicBool::new(false);
static OVERLAPPED: AtomicU64 = AtomicU64::new(0);
static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn fail(m: String) {
    let mut f = FAILURES.lock().unwrap_or_else(|p| p.into_inner());
    if f.len() < 20 {
        f.push(m);
    }
}

/// Alpha's branch key, for the plugin's setter thread (0: none).
static ALPHA_KEY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Sets of alpha's branch that returned `Ok`.
static PLUGIN_SETS: AtomicU64 = AtomicU64::new(0);
/// The plugin's setter met `ShutDown` (and stopped).
static PLUGIN_SHUT: AtomicBool = AtomicBool::new(false);
/// The plugin's setter stopped (for any reason).
static PLUGIN_DONE: AtomicBool = AtomicBool::new(false);
/// aarch64: asks the plugin's setter to stop.
#[cfg(target_arch = "aarch64")]
static PLUGIN_STOP: AtomicBool = AtomicBool::new(false);

/// What the hooks inside alpha's unload saw: times each ran, host sets and
/// host traps inside alpha's destructor.
static DESTRUCTOR_HOOK_RAN: AtomicU64 = AtomicU64::new(0);
#[cfg(target_arch = "x86_64")]
static RELINK_HOOK_RAN: AtomicU64 = AtomicU64::new(0);
static SETS_IN_UNLOAD: AtomicU64 = AtomicU64::new(0);
static TRAPS_IN_UNLOAD: AtomicU64 = AtomicU64::new(0);
/// x86-64: host sets and traps inside beta's relink past alpha.
#[cfg(target_arch = "x86_64")]
static SETS_IN_RELINK: AtomicU64 = AtomicU64::new(0);
#[cfg(target_arch = "x86_64")]
static TRAPS_IN_RELINK: AtomicU64 = AtomicU64::new(0);
/// Asks the host's setter to pause (and it says it has).
static PAUSE: AtomicBool = AtomicBool::new(false);
static PAUSED: AtomicBool = AtomicBool::new(false);

/// What the relink hook saw, for the log.
fn relink_text() -> String {
    #[cfg(target_arch = "x86_64")]
    return format!(", {} and {} inside beta's relink", SETS_IN_RELINK.load(SeqCst), TRAPS_IN_RELINK.load(SeqCst));
    #[cfg(not(target_arch = "x86_64"))]
    String::new()
}

fn host_traps() -> u64 {
    let s = static_call::stats();
    s.traps_emulated + s.traps_rewound
}

/// Waits until the host's setter completed `n` more sets and (x86-64) the
/// host's handler emulated one more jump, bounded by the host's progress (a
/// missing trap is then reported by the test, not a hang); returns how many
/// sets and traps that took.
fn host_sets_and_a_trap(n: u64) -> (u64, u64) {
    let (s0, t0) = (SETS.load(SeqCst), host_traps());
    loop {
        let (s, t) = (SETS.load(SeqCst), host_traps());
        let trapped = !common::TRAPS || t > t0;
        if s >= s0 + n && trapped || s >= s0 + 300_000 {
            return (s - s0, t - t0);
        }
        std::thread::yield_now();
    }
}

/// Alpha's unload hook, in alpha's own destructor inside its `dlclose`,
/// before its copy shuts down (`update` is what an update of alpha's key
/// from there returned: 1, `Ok`). Host sets go on here, and the host's traps
/// pass through beta's handler and alpha's, both still in the chain.
/// aarch64 (no later hook): stops the plugin's setter first.
extern "C" fn in_alpha_destructor(update: i32) {
    DESTRUCTOR_HOOK_RAN.fetch_add(1, SeqCst);
    if update != 1 {
        fail(format!("alpha's copy refused an update in its own destructor: {update}"));
    }
    #[cfg(target_arch = "aarch64")]
    {
        PLUGIN_STOP.store(true, SeqCst);
        let s0 = SETS.load(SeqCst);
        while !PLUGIN_DONE.load(SeqCst) && SETS.load(SeqCst) < s0 + 300_000 {
            std::thread::yield_now();
        }
    }
    let (sets, traps) = host_sets_and_a_trap(20);
    SETS_IN_UNLOAD.store(sets, SeqCst);
    TRAPS_IN_UNLOAD.store(traps, SeqCst);
}

/// x86-64: beta's writer hook, run while beta relinks its chain past alpha,
/// inside alpha's `dlclose`, after alpha's copy shut down: alpha is still
/// mapped, and beta's handler still passes traps to alpha's. Waits until
/// the plugin's setter met `ShutDown`, then for 20 more host sets and a
/// host trap (through beta's and alpha's handlers).
#[cfg(target_arch = "x86_64")]
extern "C" fn in_alpha_relink() {
    RELINK_HOOK_RAN.fetch_add(1, SeqCst);
    while !PLUGIN_DONE.load(SeqCst) {
        std::thread::yield_now();
    }
    let (sets, traps) = host_sets_and_a_trap(20);
    SETS_IN_RELINK.store(sets, SeqCst);
    TRAPS_IN_RELINK.store(traps, SeqCst);
}

/// Sets alpha's branch (through the host's copy) until alpha's copy shuts
/// down (x86-64: `ShutDown`) or it is asked to stop (aarch64).
fn plugin_setter() -> std::thread::JoinHandle<()> {
    std::thread::spawn(|| {
        // SAFETY: `ALPHA_KEY` holds alpha's `&'static BranchKey` while alpha
        // is loaded; this thread stops using it before alpha is unmapped
        // (the unload hook waits for `PLUGIN_DONE`).
        let key: &'static BranchKey = unsafe { &*(ALPHA_KEY.load(SeqCst) as *const BranchKey) };
        let mut v = false;
        loop {
            #[cfg(target_arch = "aarch64")]
            if PLUGIN_STOP.load(SeqCst) {
                break;
            }
            v = !v;
            match key.try_set(v) {
                Ok(_) => {
                    PLUGIN_SETS.fetch_add(1, SeqCst);
                }
                Err(Error::ShutDown) => {
                    PLUGIN_SHUT.store(true, SeqCst);
                    break;
                }
                Err(e) => {
                    fail(format!("a set of alpha's branch failed with {e}"));
                    break;
                }
            }
        }
        PLUGIN_DONE.store(true, SeqCst);
    })
}

/// Sets the host's branch without pause until `stop`; after each set the
/// host's sites follow.
fn host_setter(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let mut v = HOST_TRACE.get();
        while !stop.load(SeqCst) {
            if PAUSE.load(SeqCst) {
                PAUSED.store(true, SeqCst);
                while PAUSE.load(SeqCst) {
                    std::thread::yield_now();
                }
                PAUSED.store(false, SeqCst);
            }
            v = !v;
            SETTING.store(true, SeqCst);
            let r = HOST_TRACE.try_set(v);
            SETTING.store(false, SeqCst);
            match r {
                Ok(old) if old != v => {}
                r => {
                    fail(format!("a set of the host's branch to {v} returned {r:?}"));
                    v = HOST_TRACE.get();
                    continue;
                }
            }
            let want = if v { 101 } else { 100 };
            if (host_unlikely(100), host_likely(100)) != (want, want) {
                fail(format!("the host's sites do not follow its branch set to {v}"));
            }
            SETS.fetch_add(1, SeqCst);
        }
        v
    })
}

/// Callers of the host's sites: every result is one of the two values.
fn callers(stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    EPOCHS[i].fetch_add(1, SeqCst);
                    let during = SETTING.load(SeqCst);
                    let (u, l) = (host_unlikely(100), host_likely(100));
                    if ![100, 101].contains(&u) || ![100, 101].contains(&l) {
                        fail(format!("a call of the host's sites returned {u}, {l}"));
                    }
                    if during {
                        OVERLAPPED.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect()
}

/// Calls each caller thread started (its epoch).
static EPOCHS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Unloads `p`, whose handler is the current one, as docs/plugins.md says
/// (steps 2 and 3): the host's setter paused (no update of any copy while
/// `dlclose` runs), then every caller through one more call (none is still
/// on its way into the plugin's handler). Without this, sets running
/// through such an unload crash it (see the module docs): the copy restores
/// the handler it replaced and waits for the threads counted in its
/// handler, but a trap the kernel delivered to its handler before the
/// restore, on a thread descheduled before the handler's first counting
/// instruction, runs in the unmapped text later (the window the signal
/// module's docs name); and a set that read the disposition before the
/// restore reads that handler's header after the unmap. Unloading a copy
/// whose handler is below another's is safe with sets and traps running
/// (alpha's first unload): the copy above holds a reader count while it
/// passes a trap to it, and waits for its readers when it relinks.
fn unload_on_top(p: &mut Plugin) {
    quiesce();
    p.unload();
    PAUSE.store(false, SeqCst);
}

/// Pauses the host's setter, then waits until every caller made one more
/// call ([`unload_on_top`]); the caller resumes the setter (`PAUSE`).
fn quiesce() {
    PAUSE.store(true, SeqCst);
    while !PAUSED.load(SeqCst) {
        std::thread::yield_now();
    }
    let seen: Vec<u64> = EPOCHS.iter().map(|e| e.load(SeqCst)).collect();
    for (e, s) in EPOCHS.iter().zip(seen) {
        while e.load(SeqCst) < s + 2 {
            std::thread::yield_now();
        }
    }
}

/// Waits until the host's setter completed `n` more sets.
fn host_sets(n: u64) {
    let s0 = SETS.load(SeqCst);
    while SETS.load(SeqCst) < s0 + n {
        std::thread::yield_now();
    }
}

/// Alpha's exports for its branch.
struct Alpha {
    key: &'static BranchKey,
    traced: F,
    traced_likely: F,
}

fn alpha_api(p: &Plugin) -> Alpha {
    Alpha {
        key: p.func::<extern "C" fn() -> &'static BranchKey>("alpha_trace_key")(),
        traced: p.func("alpha_traced"),
        traced_likely: p.func("alpha_traced_likely"),
    }
}

#[track_caller]
fn assert_alpha(a: &Alpha, p: &Plugin, value: bool) {
    assert_eq!(a.key.get(), value);
    let r = if value { 1001 } else { 1 };
    assert_eq!(((a.traced)(1), (a.traced_likely)(1)), (r, r), "alpha's sites with its branch {value}");
    let sites = a.key.sites();
    assert_eq!(sites.len(), 2, "{sites:?}");
    assert!(sites.iter().all(|s| p.contains(s.address())), "{sites:?}");
    assert_branch_patched("alpha's branch", &sites, a.traced as usize, a.traced_likely as usize, value);
}

/// x86-64: a genuine `int3` reaches the user's handler, once. aarch64: the
/// user's handler is still the disposition.
fn genuine_trap_reaches_user_handler(user: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = user;
        let before = USER_TRAPS.load(SeqCst);
        genuine_int3();
        assert_eq!(USER_TRAPS.load(SeqCst), before + 1, "a genuine int3 reaches the user's handler, once");
    }
    #[cfg(not(target_arch = "x86_64"))]
    assert_eq!(current_sigtrap_handler(), user, "no copy installs a SIGTRAP handler on aarch64");
}

/// Maps a page filled with a pattern (then read and execute only, as text)
/// at each page of `addrs` that nothing is mapped at; returns those pages.
fn sentinels(addrs: &[usize]) -> Vec<usize> {
    let mut pages: Vec<usize> = addrs.iter().map(|a| a & !4095).collect();
    pages.dedup();
    pages
        .into_iter()
        .filter(|&p| {
            // SAFETY: a fresh anonymous mapping at an address where nothing
            // is mapped (MAP_FIXED_NOREPLACE fails otherwise).
            let m = unsafe {
                libc::mmap(
                    p as *mut libc::c_void,
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if m as usize != p {
                eprintln!("page {p:#x} of an unloaded site is in use again: not checked ({m:?})");
                if m != libc::MAP_FAILED {
                    // SAFETY: the mapping we just made, elsewhere.
                    unsafe { libc::munmap(m, 4096) };
                }
                return false;
            }
            // SAFETY: our own page, writable.
            unsafe {
                std::ptr::write_bytes(p as *mut u8, 0xa5, 4096);
                assert_eq!(libc::mprotect(p as *mut libc::c_void, 4096, libc::PROT_READ | libc::PROT_EXEC), 0);
            }
            true
        })
        .collect()
}

#[test]
fn unloading_a_plugin_while_a_host_branch_is_set() {
    install_user_handler();
    let user = current_sigtrap_handler();
    static_call::init().unwrap();
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let in_exe = |a: usize| mapping_path(a).map(std::path::PathBuf::from) == Some(exe.clone());
    assert_branch_patched(
        "the host's branch",
        &HOST_TRACE.sites(),
        host_unlikely as fn(u64) -> u64 as usize,
        host_likely as fn(u64) -> u64 as usize,
        false,
    );

    let mut alpha = Plugin::load("alpha");
    let mut beta = Plugin::load("beta");
    assert_eq!(alpha.func::<extern "C" fn() -> i32>("alpha_init")(), 0);
    assert_eq!(beta.func::<extern "C" fn() -> i32>("beta_init")(), 0);
    assert!(!common::TRAPS || beta.contains(current_sigtrap_handler()));
    let a = alpha_api(&alpha);
    assert!(!a.key.set(true), "the host sets alpha's branch");
    assert_alpha(&a, &alpha, true);
    let old_sites: Vec<usize> = a.key.sites().iter().map(|s| s.address()).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let callers = callers(stop.clone());
    let setter = host_setter(stop.clone());
    // From now on the host's sets never stop for long: a deadlock (of a set,
    // or of an unload waiting for one) is a failure with a message.
    common::watchdog("host branch sets during plugin unloads", &SETS, std::time::Duration::from_secs(120));
    ALPHA_KEY.store(a.key as *const BranchKey as usize, SeqCst);
    let plugin = plugin_setter();
    host_sets(50);
    while PLUGIN_SETS.load(SeqCst) < 50 && !PLUGIN_DONE.load(SeqCst) {
        std::thread::yield_now();
    }

    // Unload alpha (in the middle of the chain) with both setters running.
    #[cfg(target_arch = "x86_64")]
    let hook: extern "C" fn(Option<extern "C" fn()>) = beta.func("beta_set_writer_hook");
    #[cfg(target_arch = "x86_64")]
    hook(Some(in_alpha_relink));
    alpha.func::<extern "C" fn(Option<extern "C" fn(i32)>)>("alpha_set_unload_hook")(Some(in_alpha_destructor));
    alpha.unload();
    assert!(!alpha.mapped(), "dlclose unmapped {}", alpha.path.display());
    #[cfg(target_arch = "x86_64")]
    hook(None);
    plugin.join().unwrap();
    assert_eq!(DESTRUCTOR_HOOK_RAN.load(SeqCst), 1, "alpha's destructor hook ran inside its unload");
    #[cfg(target_arch = "x86_64")]
    assert_eq!(RELINK_HOOK_RAN.load(SeqCst), 1, "beta's relink hook ran inside alpha's unload");
    assert!(PLUGIN_DONE.load(SeqCst));
    assert!(PLUGIN_SETS.load(SeqCst) >= 50, "sets of alpha's branch ran before the unload");
    #[cfg(target_arch = "x86_64")]
    {
        assert!(PLUGIN_SHUT.load(SeqCst), "a set of alpha's branch inside the unload returned ShutDown");
        assert!(SETS_IN_RELINK.load(SeqCst) >= 20, "host sets ran inside beta's relink past alpha");
        assert!(TRAPS_IN_RELINK.load(SeqCst) >= 1, "a host trap passed beta's and alpha's handlers in the relink");
    }
    assert!(SETS_IN_UNLOAD.load(SeqCst) >= 20, "host sets ran inside the unload");
    if common::TRAPS {
        assert!(
            TRAPS_IN_UNLOAD.load(SeqCst) >= 1,
            "a host trap passed beta's and alpha's handlers inside alpha's destructor ({} sets)",
            SETS_IN_UNLOAD.load(SeqCst)
        );
        assert!(beta.contains(current_sigtrap_handler()), "beta's handler, relinked past alpha's");
    }
    eprintln!(
        "alpha unloaded: {} sets of its branch before; {} host sets and {} host traps inside its destructor{}",
        PLUGIN_SETS.load(SeqCst),
        SETS_IN_UNLOAD.load(SeqCst),
        TRAPS_IN_UNLOAD.load(SeqCst),
        if cfg!(target_arch = "x86_64") { relink_text() } else { String::new() }
    );

    // Nothing writes where alpha's sites were.
    let pages = sentinels(&old_sites);
    let traps0 = host_traps();
    host_sets(2000);
    for &p in &pages {
        let bytes = common::read_bytes(p, 4096);
        assert!(bytes.iter().all(|&b| b == 0xa5), "a byte changed on {p:#x}, where alpha's sites were");
        // SAFETY: our own sentinel page, unmapped before anything reuses it.
        assert_eq!(unsafe { libc::munmap(p as *mut libc::c_void, 4096) }, 0);
    }
    eprintln!("{} sentinel pages intact, {} host traps after the unload", pages.len(), host_traps() - traps0);
    genuine_trap_reaches_user_handler(user);
    assert!(fork_ok());

    // Reload: the branch is back at its built-in value, patched by the new
    // copy; the host sets it; unload again, alpha's handler on top now.
    let mut alpha = Plugin::open(alpha.path.clone());
    let a = alpha_api(&alpha);
    assert!(!a.key.get(), "a fresh load: the built-in value");
    assert!(a
        .key
        .sites()
        .iter()
        .all(|s| s.state() == SiteState::Trampoline && s.reason() == Some(NotDirect::NotInitialized)));
    assert_eq!(((a.traced)(1), (a.traced_likely)(1)), (1, 1));
    assert_eq!(alpha.func::<extern "C" fn() -> i32>("alpha_init")(), 0);
    assert!(!common::TRAPS || alpha.contains(current_sigtrap_handler()));
    assert_alpha(&a, &alpha, false);
    assert!(!a.key.set(true));
    assert_alpha(&a, &alpha, true);
    host_sets(200);
    // x86-64: alpha's copy shuts down now, alpha staying loaded (what its
    // unload runs): its branch is frozen at true, a set of it is refused,
    // and a batch with it and a host branch is refused as a whole (the
    // host's part put back, if it went first).
    #[cfg(target_arch = "x86_64")]
    {
        // (Its handler is on top: taken out as by `dlclose`, so as in
        // `unload_on_top`.)
        let unload_now: extern "C" fn() -> i32 = alpha.func("alpha_unload_now");
        quiesce();
        assert_eq!(unload_now(), 1, "alpha's copy shut down cleanly");
        PAUSE.store(false, SeqCst);
        assert!(beta.contains(current_sigtrap_handler()), "alpha's handler taken out: beta's restored");
        assert_eq!(a.key.try_set(false), Err(Error::ShutDown));
        let r = static_call::batch(|b| {
            b.set(&HOST_OTHER, true);
            b.set(a.key, false);
        });
        assert_eq!(r, Err(Error::ShutDown), "a batch with a shut-down copy's branch");
        assert!(!HOST_OTHER.get() && !host_other(), "nothing of the batch kept");
        assert!(HOST_OTHER.sites().iter().all(|s| s.state() == SiteState::NotTaken), "{:?}", HOST_OTHER.sites());
        // Batches are applied owner by owner in the order of the owners'
        // tables, statics of the two modules: the host's part went first
        // (and was put back) when the executable lies below the plugin.
        let host_first = (host_other as fn() -> bool as usize) < (a.traced as usize);
        eprintln!("the batch's host part was applied first and put back: {host_first}");
        assert_alpha(&a, &alpha, true);
        host_sets(200);
    }
    unload_on_top(&mut alpha);
    assert!(!alpha.mapped());
    assert!(!common::TRAPS || beta.contains(current_sigtrap_handler()), "beta's handler restored");
    host_sets(200);

    // Unload beta, whose handler is current: the host's is restored.
    unload_on_top(&mut beta);
    assert!(!beta.mapped());
    assert!(!common::TRAPS || in_exe(current_sigtrap_handler()), "the host's handler is current again");
    let traps1 = host_traps();
    let overlapped = OVERLAPPED.load(SeqCst);
    let s0 = SETS.load(SeqCst);
    while SETS.load(SeqCst) < s0 + 200
        || (common::TRAPS && host_traps() == traps1 || !common::TRAPS && OVERLAPPED.load(SeqCst) == overlapped)
            && SETS.load(SeqCst) < s0 + 300_000
    {
        std::thread::yield_now();
    }
    stop.store(true, SeqCst);
    let last = setter.join().unwrap();
    callers.into_iter().for_each(|t| t.join().unwrap());
    let failures = FAILURES.lock().unwrap().clone();
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    if common::TRAPS {
        assert!(host_traps() > traps1, "the host's handler emulated jumps after every plugin left");
    } else {
        assert!(OVERLAPPED.load(SeqCst) > overlapped, "calls overlapped sets after every plugin left");
    }
    assert_branch_patched(
        "the host's branch",
        &HOST_TRACE.sites(),
        host_unlikely as fn(u64) -> u64 as usize,
        host_likely as fn(u64) -> u64 as usize,
        last,
    );
    genuine_trap_reaches_user_handler(user);
    assert!(fork_ok());
    eprintln!("{} host sets, {:?}", SETS.load(SeqCst), static_call::stats());
}
