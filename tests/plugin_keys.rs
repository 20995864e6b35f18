//! Keys updated from another copy of the crate (DESIGN 3.11): the host
//! retargets a plugin's key, a plugin the host's, a plugin another plugin's,
//! and a batch mixes keys of several copies. Each update is made by the
//! key's owner, which alone knows its sites: the results of calls made at
//! those sites are judged after every update. (Before routing, the host's
//! update of a plugin's key returned `Ok`, `get()` said the new target, and
//! the plugin's sites kept calling the old one.)
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod plugin_support;

use plugin_support::Plugin;
use static_call::{static_call, Key, SiteState, StaticCall};

type F = extern "C" fn(u64) -> u64;
type StepKey = Key<F, u64>;

extern "C" fn host_plus5(x: u64) -> u64 {
    x + 5
}

extern "C" fn host_times7(x: u64) -> u64 {
    x * 7
}

#[static_call]
static HOST: extern "C" fn(u64) -> u64 = host_plus5;

#[inline(never)]
fn host(x: u64) -> u64 {
    HOST.call(x)
}

#[test]
fn updates_reach_the_owner_of_the_key() {
    static_call::init().unwrap();
    let alpha = Plugin::load("alpha");
    let beta = Plugin::load("beta");
    let alpha_key: &'static StepKey = alpha.func::<extern "C" fn() -> &'static StepKey>("alpha_step_key")();
    let alpha_work: F = alpha.func("alpha_work");
    let alpha_updates: extern "C" fn() -> u64 = alpha.func("alpha_updates");
    let alpha_update: extern "C" fn(&'static StepKey, Option<F>) -> i32 = alpha.func("alpha_update");
    let beta_update: extern "C" fn(&'static StepKey, Option<F>) -> i32 = beta.func("beta_update");
    let alpha_dispatch: F = alpha.func("alpha_dispatch");
    let beta_dispatch: F = beta.func("beta_dispatch");
    assert_eq!(alpha.func::<extern "C" fn() -> i32>("alpha_init")(), 0);
    assert_eq!(beta.func::<extern "C" fn() -> i32>("beta_init")(), 0);
    assert_eq!(alpha_work(1), 101, "alpha's STEP starts at x + 100");

    // The host sees the plugin's sites, through the plugin's copy.
    let sites = alpha_key.sites();
    assert!(!sites.is_empty(), "alpha's STEP has sites, reported by alpha's copy");
    assert!(sites.iter().all(|s| alpha.contains(s.address())), "{sites:?}");
    assert!(sites.iter().all(|s| s.state() == SiteState::Direct), "{sites:?}");

    // Host -> plugin.
    let (host_before, alpha_before) = (static_call::stats().updates, alpha_updates());
    let old = alpha_key.try_update(host_plus5).expect("the host updates alpha's key");
    assert!(old.is_some());
    assert_eq!(alpha_work(1), 6, "alpha's sites call the host's function");
    assert_eq!(alpha_key.get().map(|f| f(1)), Some(6));
    assert_eq!(alpha_updates(), alpha_before + 1, "alpha's copy made the update");
    assert_eq!(static_call::stats().updates, host_before, "the host's copy did not");
    assert!(alpha_key.sites().iter().all(|s| s.state() != SiteState::Direct || alpha.contains(s.address())));
    alpha_key.reset();
    assert_eq!(alpha_work(1), 0, "no target: zero");
    assert!(alpha_key.get().is_none());
    assert!(alpha_key.sites().iter().all(|s| s.state() == SiteState::Zero));
    alpha_key.update(host_times7);
    assert_eq!(alpha_work(3), 21);

    // Plugin -> host.
    assert_eq!(alpha_update(HOST.key(), Some(alpha_dispatch)), 0);
    assert_eq!(host(10), 31, "the host's sites call alpha's function");
    assert_eq!(HOST.get().map(|f| f(10)), Some(31));
    assert_eq!(alpha_update(HOST.key(), None), 0);
    assert_eq!(host(10), 0);
    assert_eq!(alpha_update(HOST.key(), Some(host_plus5)), 0);
    assert_eq!(host(10), 15);
    assert!(HOST.sites().iter().all(|s| s.state() == SiteState::Direct));

    // Plugin -> plugin.
    assert_eq!(beta_update(alpha_key, Some(beta_dispatch)), 0);
    assert_eq!(alpha_work(10), 52, "alpha's sites call beta's function");

    // A batch of keys of two copies: both change.
    static_call::batch(|b| {
        b.update(&HOST, host_times7);
        b.update(alpha_key_marker(alpha_key), host_plus5);
    })
    .unwrap();
    assert_eq!((host(2), alpha_work(2)), (14, 7));

    // Leave nothing pointing into the plugins before they unload.
    HOST.update(host_plus5);
    alpha_key.update(host_plus5);
    drop(beta);
    drop(alpha);
    assert_eq!(host(1), 6);
}

/// A `StaticCall` view of a bare key, for `Batch::update`.
fn alpha_key_marker(key: &'static StepKey) -> &'static impl StaticCall<Fn = F, Ret = u64> {
    struct ByRef(&'static StepKey);
    impl core::ops::Deref for ByRef {
        type Target = StepKey;
        fn deref(&self) -> &StepKey {
            self.0
        }
    }
    impl StaticCall for ByRef {
        type Fn = F;
        type Ret = u64;
        fn key(&self) -> &'static StepKey {
            self.0
        }
    }
    Box::leak(Box::new(ByRef(key)))
}
