//! Two copies of the crate initializing at the same moment (plugins alpha
//! and beta, `init` from two threads released together) must not lose a
//! handler: installs are serialized process-wide, so each copy's previous
//! disposition is what it really replaced. Many rounds of load, racing
//! init, checks (each copy updates, so its handler is reachable; a genuine
//! `int3` reaches the user's handler exactly once), unload.
//! x86-64 only: what races here is the SIGTRAP handler install, and on
//! aarch64 no copy installs a handler (updates are single stores, no trap).
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod plugin_support;

use plugin_support::{current_sigtrap_handler, genuine_int3, install_user_handler, plugin, Plugin, USER_TRAPS};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Barrier};

#[test]
fn two_copies_initializing_at_once_keep_both_handlers() {
    install_user_handler();
    static_call::init().unwrap();
    let host = current_sigtrap_handler();
    let (alpha_path, beta_path) = (plugin("alpha"), plugin("beta"));
    let load = |path: &std::path::Path| {
        // SAFETY: our own plugin crates, whose initializers only set up Rust's runtime.
        let lib = unsafe { libloading::Library::new(path) }.expect("dlopen plugin");
        Plugin { lib: Some(lib), path: path.to_path_buf() }
    };
    for round in 0..300 {
        let mut alpha = load(&alpha_path);
        let mut beta = load(&beta_path);
        let alpha_init: extern "C" fn() -> i32 = alpha.func("alpha_init");
        let beta_init: extern "C" fn() -> i32 = beta.func("beta_init");
        let alpha_mode: extern "C" fn(u32) -> i32 = alpha.func("alpha_set_mode");
        let beta_mode: extern "C" fn(u32) -> i32 = beta.func("beta_set_mode");
        let alpha_work: extern "C" fn(u64) -> u64 = alpha.func("alpha_work");
        let beta_work: extern "C" fn(u64) -> u64 = beta.func("beta_work");

        let barrier = Arc::new(Barrier::new(2));
        let b = barrier.clone();
        let other = std::thread::spawn(move || {
            b.wait();
            beta_init()
        });
        barrier.wait();
        assert_eq!(alpha_init(), 0, "round {round}: alpha init");
        assert_eq!(other.join().unwrap(), 0, "round {round}: beta init");
        let top = current_sigtrap_handler();
        assert!(alpha.contains(top) || beta.contains(top), "round {round}: a plugin's handler is on top");

        // Both copies' handlers are in the chain: each copy's update checks
        // that SIGTRAP reaches its handler.
        assert_eq!(alpha_mode(1), 0, "round {round}: alpha's handler is reachable");
        assert_eq!(beta_mode(1), 0, "round {round}: beta's handler is reachable");
        assert_eq!((alpha_work(3), beta_work(3)), (300, 600));
        assert_eq!(static_call::__private::sync_core_once(), Ok(()));
        let before = USER_TRAPS.load(SeqCst);
        genuine_int3();
        assert_eq!(USER_TRAPS.load(SeqCst), before + 1, "round {round}: the int3 reached the user's handler once");

        if round % 2 == 0 {
            alpha.unload();
            beta.unload();
        } else {
            beta.unload();
            alpha.unload();
        }
        assert_eq!(current_sigtrap_handler(), host, "round {round}: the host's handler is current again");
        let before = USER_TRAPS.load(SeqCst);
        genuine_int3();
        assert_eq!(USER_TRAPS.load(SeqCst), before + 1);
    }
}
