//! Plugin `alpha`: a cdylib that links its own copy of `static_call`.
//!
//! Exports a dispatch target for the host (`alpha_dispatch`), and a key of
//! its own (`STEP`) whose call site, inside this library, is patched by this
//! library's copy of the crate. A static branch of its own, `pub` and
//! exported (`ALPHA_TRACE`, `alpha_trace_key`), whose two sites
//! (`alpha_traced`, `alpha_traced_likely`) this library's copy patches, and
//! that a host may set through its own copy: the set is routed here.
//!
//! # Safety
//!
//! The exported functions are `extern "C"` and `#[no_mangle]` so that the
//! host can look them up by name; they take and return plain integers.
#![allow(unsafe_code)]

use static_call::{static_branch, static_call, BranchKey};

/// What the host's dispatch key calls: `x * 3 + 1`.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_dispatch(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

extern "C" fn step_add(x: u64) -> u64 {
    x.wrapping_add(100)
}

extern "C" fn step_mul(x: u64) -> u64 {
    x.wrapping_mul(100)
}

#[static_call]
static STEP: extern "C" fn(u64) -> u64 = step_add;

/// Calls this library's own key (an inline site in this library's text).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn alpha_work(x: u64) -> u64 {
    STEP.call(x)
}

/// Retargets `STEP` (0: add 100, otherwise multiply by 100) with this
/// library's copy of the crate; 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_set_mode(mode: u32) -> i32 {
    let f: extern "C" fn(u64) -> u64 = if mode == 0 { step_add } else { step_mul };
    match STEP.try_update(f) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("alpha: {e}");
            -1
        }
    }
}

/// Initializes this library's copy (installs its SIGTRAP handler, patches its
/// sites); 0 on success.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_init() -> i32 {
    match static_call::init() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("alpha: {e}");
            -1
        }
    }
}

/// The number of `STEP`'s call sites in this library, and (high 32 bits)
/// how many of them call their target directly.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_sites() -> u64 {
    let sites = STEP.sites();
    let direct = sites.iter().filter(|s| s.state() == static_call::SiteState::Direct).count();
    (direct as u64) << 32 | sites.len() as u64
}

/// The address of `STEP`'s first call site (0 if none).
#[unsafe(no_mangle)]
pub extern "C" fn alpha_site_address() -> usize {
    STEP.sites().first().map_or(0, |s| s.address())
}

/// This copy's update count.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_updates() -> u64 {
    static_call::stats().updates
}

/// The type of `STEP` and of the keys `alpha_update` takes.
pub type StepKey = static_call::Key<extern "C" fn(u64) -> u64, u64>;

/// This library's key `STEP`, for a host (or another plugin) that
/// retargets it through its own copy of the crate: the update is made by
/// this library's copy, which owns the key's sites.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_step_key() -> &'static StepKey {
    use static_call::StaticCall;
    STEP.key()
}

/// Retargets a key of another module (the host's, another plugin's) to `f`
/// through this library's copy of the crate (0: none); 0 on success, -1 on
/// error.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_update(key: &'static StepKey, f: Option<extern "C" fn(u64) -> u64>) -> i32 {
    let r = match f {
        Some(f) => key.try_update(f),
        None => key.try_reset(),
    };
    match r {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("alpha: {e}");
            -1
        }
    }
}

/// This library's static branch: set by the host (through
/// [`alpha_trace_key`]) or by this library ([`alpha_set_trace`]).
#[static_branch]
pub static ALPHA_TRACE: bool = false;

/// An `unlikely` site of [`ALPHA_TRACE`](static@ALPHA_TRACE): `x + 1000` while it is set, else `x`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn alpha_traced(x: u64) -> u64 {
    if ALPHA_TRACE.unlikely() {
        x.wrapping_add(1000)
    } else {
        x
    }
}

/// A `likely` site of [`ALPHA_TRACE`](static@ALPHA_TRACE): `x + 1000` while it is set, else `x`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn alpha_traced_likely(x: u64) -> u64 {
    if ALPHA_TRACE.likely() {
        x.wrapping_add(1000)
    } else {
        std::hint::black_box(x)
    }
}

/// [`ALPHA_TRACE`](static@ALPHA_TRACE)'s key, for a host (or another plugin) that sets it
/// through its own copy of the crate: the set is made by this library's
/// copy, which owns the branch's sites.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_trace_key() -> &'static BranchKey {
    &ALPHA_TRACE
}

/// Sets [`ALPHA_TRACE`](static@ALPHA_TRACE) with this library's copy; the previous value (0 or
/// 1), or -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_set_trace(value: bool) -> i32 {
    set_branch(&ALPHA_TRACE, value)
}

/// Sets a static branch of another module (the host's, another plugin's)
/// through this library's copy of the crate; the previous value (0 or 1),
/// or -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_set_branch(key: &'static BranchKey, value: bool) -> i32 {
    set_branch(key, value)
}

fn set_branch(key: &'static BranchKey, value: bool) -> i32 {
    match key.try_set(value) {
        Ok(old) => i32::from(old),
        Err(e) => {
            eprintln!("alpha: {e}");
            -1
        }
    }
}

/// This copy's count of static-branch sites rewritten.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_branch_sites_patched() -> u64 {
    static_call::stats().branch_sites_patched
}

/// This copy's traps, emulated and rewound (x86-64; 0 on aarch64).
#[unsafe(no_mangle)]
pub extern "C" fn alpha_traps() -> u64 {
    let s = static_call::stats();
    s.traps_emulated + s.traps_rewound
}

/// A public key, so that this crate's documentation shows what a
/// downstream crate's `pub` key looks like in rustdoc (checked by CI).
#[static_call]
pub static ALPHA_HOOK: extern "C" fn(u64) -> u64 = alpha_dispatch;

/// Test hook: `hook` runs while this copy rewrites its SIGTRAP chain
/// (a relink when a copy below it is unloaded, or a re-install). x86-64
/// only: aarch64 has no SIGTRAP handler.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
pub extern "C" fn alpha_set_writer_hook(hook: Option<extern "C" fn()>) {
    static_call::__private::set_writer_hook(hook)
}

/// Test hook: 1 if this copy's SIGTRAP bookkeeping is idle (no thread
/// counted in its handler or as a reader of its previous disposition, its
/// writer lock free), else 0. x86-64 only.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
pub extern "C" fn alpha_signal_idle() -> i32 {
    i32::from(static_call::__private::signal_bookkeeping() == (0, [0, 0], false))
}

/// Test hook: runs this copy's unload path now (what `dlclose` runs); 1 if
/// it reported `Clean`, else 0. x86-64 only.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
pub extern "C" fn alpha_unload_now() -> i32 {
    i32::from(static_call::__private::unload_now() == "Clean")
}

/// Test hook: the function `alpha_set_unload_hook` stored, run by
/// [`ON_UNLOAD`] (on aarch64, where no SIGTRAP chain is relinked during an
/// unload, the only hook inside one; on x86-64 it runs before the relink).
static UNLOAD_HOOK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Test hook: `hook` runs inside this library's unload, from its
/// own destructor, which runs before its copy of the crate shuts down (that
/// copy's hook has priority 100: last). Its argument says what an update of
/// `STEP` from there returned: 1 `Ok` (as expected: the copy still works),
/// 0 `Reentrant` or `ShutDown`, 2 another error.
#[unsafe(no_mangle)]
pub extern "C" fn alpha_set_unload_hook(hook: Option<extern "C" fn(i32)>) {
    UNLOAD_HOOK.store(hook.map_or(0, |f| f as usize), std::sync::atomic::Ordering::SeqCst)
}

/// Runs the unload hook, if any. A plain `.fini_array` entry of this crate's
/// own object: it runs before `static_call`'s shut-down (priority 100, which
/// the linker sorts first in the array, and the array runs last to first).
/// The hook's argument checks that order.
extern "C" fn on_unload() {
    let hook = UNLOAD_HOOK.load(std::sync::atomic::Ordering::SeqCst);
    if hook != 0 {
        let code = match STEP.try_update(step_add) {
            Err(static_call::Error::Reentrant | static_call::Error::ShutDown) => 0,
            Ok(_) => 1,
            Err(_) => 2,
        };
        // SAFETY: only `alpha_set_unload_hook` stores here, an `extern "C" fn(i32)`.
        let f: extern "C" fn(i32) = unsafe { std::mem::transmute(hook) };
        f(code);
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static ON_UNLOAD: extern "C" fn() = on_unload;
