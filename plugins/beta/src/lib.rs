//! Plugin `beta`: a cdylib that links its own copy of `static_call`.
//!
//! Exports a dispatch target for the host (`beta_dispatch`), and a key of
//! its own (`STEP`) whose call site, inside this library, is patched by this
//! library's copy of the crate.
//!
//! # Safety
//!
//! The exported functions are `extern "C"` and `#[no_mangle]` so that the
//! host can look them up by name; they take and return plain integers.
#![allow(unsafe_code)]

use static_call::static_call;

/// What the host's dispatch key calls: `x * 5 + 2`.
#[unsafe(no_mangle)]
pub extern "C" fn beta_dispatch(x: u64) -> u64 {
    x.wrapping_mul(5).wrapping_add(2)
}

extern "C" fn step_add(x: u64) -> u64 {
    x.wrapping_add(200)
}

extern "C" fn step_mul(x: u64) -> u64 {
    x.wrapping_mul(200)
}

#[static_call]
static STEP: extern "C" fn(u64) -> u64 = step_add;

/// Calls this library's own key (an inline site in this library's text).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn beta_work(x: u64) -> u64 {
    STEP.call(x)
}

/// Retargets `STEP` (0: add 200, otherwise multiply by 200) with this
/// library's copy of the crate; 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn beta_set_mode(mode: u32) -> i32 {
    let f: extern "C" fn(u64) -> u64 = if mode == 0 { step_add } else { step_mul };
    match STEP.try_update(f) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("beta: {e}");
            -1
        }
    }
}

/// Initializes this library's copy (installs its SIGTRAP handler, patches its
/// sites); 0 on success.
#[unsafe(no_mangle)]
pub extern "C" fn beta_init() -> i32 {
    match static_call::init() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("beta: {e}");
            -1
        }
    }
}

/// The number of `STEP`'s call sites in this library, and (high 32 bits)
/// how many of them call their target directly.
#[unsafe(no_mangle)]
pub extern "C" fn beta_sites() -> u64 {
    let sites = STEP.sites();
    let direct = sites.iter().filter(|s| s.state() == static_call::SiteState::Direct).count();
    (direct as u64) << 32 | sites.len() as u64
}

/// The address of `STEP`'s first call site (0 if none).
#[unsafe(no_mangle)]
pub extern "C" fn beta_site_address() -> usize {
    STEP.sites().first().map_or(0, |s| s.address())
}

/// This copy's update count.
#[unsafe(no_mangle)]
pub extern "C" fn beta_updates() -> u64 {
    static_call::stats().updates
}

/// The type of `STEP` and of the keys `beta_update` takes.
pub type StepKey = static_call::Key<extern "C" fn(u64) -> u64, u64>;

/// This library's key `STEP`, for a host (or another plugin) that
/// retargets it through its own copy of the crate: the update is made by
/// this library's copy, which owns the key's sites.
#[unsafe(no_mangle)]
pub extern "C" fn beta_step_key() -> &'static StepKey {
    use static_call::StaticCall;
    STEP.key()
}

/// Retargets a key of another module (the host's, another plugin's) to `f`
/// through this library's copy of the crate (0: none); 0 on success, -1 on
/// error.
#[unsafe(no_mangle)]
pub extern "C" fn beta_update(key: &'static StepKey, f: Option<extern "C" fn(u64) -> u64>) -> i32 {
    let r = match f {
        Some(f) => key.try_update(f),
        None => key.try_reset(),
    };
    match r {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("beta: {e}");
            -1
        }
    }
}

/// Sets a static branch of another module (the host's, another plugin's)
/// through this library's copy of the crate; the previous value (0 or 1),
/// or -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn beta_set_branch(key: &'static static_call::BranchKey, value: bool) -> i32 {
    match key.try_set(value) {
        Ok(old) => i32::from(old),
        Err(e) => {
            eprintln!("beta: {e}");
            -1
        }
    }
}

/// Test hook: `hook` runs while this copy rewrites its SIGTRAP chain
/// (a relink when a copy below it is unloaded, or a re-install). x86-64
/// only: aarch64 has no SIGTRAP handler.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
pub extern "C" fn beta_set_writer_hook(hook: Option<extern "C" fn()>) {
    static_call::__private::set_writer_hook(hook)
}

/// Test hook: 1 if this copy's SIGTRAP bookkeeping is idle (no thread
/// counted in its handler or as a reader of its previous disposition, its
/// writer lock free), else 0. x86-64 only.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
pub extern "C" fn beta_signal_idle() -> i32 {
    i32::from(static_call::__private::signal_bookkeeping() == (0, [0, 0], false))
}

/// Test hook: runs this copy's unload path now (what `dlclose` runs); 1 if
/// it reported `Clean`, else 0. x86-64 only.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
pub extern "C" fn beta_unload_now() -> i32 {
    i32::from(static_call::__private::unload_now() == "Clean")
}
