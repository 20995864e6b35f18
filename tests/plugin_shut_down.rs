//! A plugin's copy of the crate, once shut down (what its `dlclose` or the
//! process's exit runs), refuses every later update of its keys at once,
//! with `Error::ShutDown`, from any thread and through any copy, and
//! changes nothing: its sites keep calling the target they had. (Before,
//! an update from another thread waited for ever on the lock the shut-down
//! copy keeps, and one from the same thread said `Reentrant`.)
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod plugin_support;

use plugin_support::Plugin;
use static_call::{Error, Key};

type F = extern "C" fn(u64) -> u64;
type StepKey = Key<F, u64>;

extern "C" fn host_plus5(x: u64) -> u64 {
    x + 5
}
extern "C" fn host_times7(x: u64) -> u64 {
    x * 7
}

#[test]
fn updates_of_a_shut_down_copy_are_refused_at_once() {
    static_call::init().unwrap();
    let alpha = Plugin::load("alpha");
    let key: &'static StepKey = alpha.func::<extern "C" fn() -> &'static StepKey>("alpha_step_key")();
    let work: F = alpha.func("alpha_work");
    let update_from_alpha: extern "C" fn(&'static StepKey, Option<F>) -> i32 = alpha.func("alpha_update");
    assert_eq!(alpha.func::<extern "C" fn() -> i32>("alpha_init")(), 0);
    assert!(key.try_update(host_plus5).is_ok());
    assert_eq!(work(1), 6);

    assert_eq!(alpha.func::<extern "C" fn() -> i32>("alpha_unload_now")(), 1, "alpha's copy shut down cleanly");
    assert_eq!(key.try_update(host_times7).map(|_| ()), Err(Error::ShutDown), "from the host, this thread");
    let other = std::thread::spawn(move || key.try_update(host_times7).map(|_| ()));
    assert_eq!(other.join().unwrap(), Err(Error::ShutDown), "from another thread, at once");
    assert_eq!(update_from_alpha(key, Some(host_times7)), -1, "through alpha's own copy");
    assert_eq!(work(1), 6, "nothing changed: the sites call the target they had");
    assert_eq!(key.get().map(|f| f(1)), Some(6));
    assert!(Error::ShutDown.to_string().contains("shut down"));
}
