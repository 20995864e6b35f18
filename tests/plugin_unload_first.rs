//! A plugin whose copy initializes before the host's: the host's handler is
//! installed over the plugin's and chains to it. When the plugin is unloaded,
//! its destructor has the host's handler relinked past it (to the user's
//! handler below), so the host keeps patching and a genuine `int3` still
//! reaches the user's handler. On aarch64 no copy installs a SIGTRAP
//! handler: the user's stays the disposition, and the host keeps patching
//! after the plugin whose copy initialized first is unloaded.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod plugin_support;

use plugin_support::{current_sigtrap_handler, fork_ok, install_user_handler, Plugin};
#[cfg(target_arch = "x86_64")]
use plugin_support::{genuine_int3, mapping_path, USER_TRAPS};
use static_call::{static_call, SiteState};
#[cfg(target_arch = "x86_64")]
use std::sync::atomic::Ordering::SeqCst;

extern "C" fn host_a(x: u64) -> u64 {
    x + 1
}
extern "C" fn host_b(x: u64) -> u64 {
    x + 2
}

#[static_call]
static HOST: extern "C" fn(u64) -> u64 = host_a;

#[test]
fn host_relinked_past_an_unloaded_plugin_below_it() {
    install_user_handler();
    let user = current_sigtrap_handler();
    let mut alpha = Plugin::load("alpha");
    let alpha_init: extern "C" fn() -> i32 = alpha.func("alpha_init");
    let alpha_mode: extern "C" fn(u32) -> i32 = alpha.func("alpha_set_mode");
    let alpha_work: extern "C" fn(u64) -> u64 = alpha.func("alpha_work");
    assert_eq!(alpha_init(), 0);
    #[cfg(target_arch = "x86_64")]
    assert!(alpha.contains(current_sigtrap_handler()));
    static_call::init().unwrap();
    #[cfg(target_arch = "x86_64")]
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    #[cfg(target_arch = "x86_64")]
    assert_eq!(mapping_path(current_sigtrap_handler()).map(std::path::PathBuf::from), Some(exe.clone()));
    assert_eq!(alpha_mode(1), 0, "the plugin accepts the host's handler above its own");
    assert_eq!(alpha_work(3), 300);

    #[cfg(target_arch = "x86_64")]
    let before = USER_TRAPS.load(SeqCst);
    #[cfg(target_arch = "x86_64")]
    genuine_int3();
    #[cfg(target_arch = "x86_64")]
    assert_eq!(USER_TRAPS.load(SeqCst), before + 1);
    #[cfg(not(target_arch = "x86_64"))]
    assert_eq!(current_sigtrap_handler(), user, "no copy installs a SIGTRAP handler on aarch64");

    alpha.unload();
    assert!(!alpha.mapped());
    #[cfg(target_arch = "x86_64")]
    assert_eq!(mapping_path(current_sigtrap_handler()).map(std::path::PathBuf::from), Some(exe));
    for i in 0..100u32 {
        HOST.update(if i.is_multiple_of(2) { host_b } else { host_a });
        assert_eq!(HOST.call(1), if i.is_multiple_of(2) { 3 } else { 2 });
    }
    assert!(HOST.sites().iter().all(|s| s.state() == SiteState::Direct));
    #[cfg(target_arch = "x86_64")]
    {
        let _ = user;
        genuine_int3();
        assert_eq!(
            USER_TRAPS.load(SeqCst),
            before + 2,
            "a genuine int3 reaches the user's handler, past the unloaded copy"
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    assert_eq!(current_sigtrap_handler(), user);
    assert!(fork_ok());
}
