//! The forms a key can be declared in, and how each is used: doc comments
//! and visibilities, keys in modules and in function bodies, `unsafe` keys,
//! lifetimes, keys without a target, `#[cfg]`, batches, and the
//! `StaticCall` trait.
#![deny(missing_docs)]

use static_call::{static_call, SiteState, StaticCall};

extern "C" fn add1(x: u64) -> u64 {
    x + 1
}
extern "C" fn add2(x: u64) -> u64 {
    x + 2
}
extern "C" fn add3(x: u64) -> u64 {
    x + 3
}

/// Asserts the state of every site of `key` (none on the portable backend).
#[track_caller]
fn assert_state<K: StaticCall>(key: &K, state: SiteState) {
    let sites = key.key().sites();
    if static_call::PATCHING {
        assert!(!sites.is_empty(), "no sites");
        assert!(sites.iter().all(|s| s.state() == state), "want {state:?}: {sites:?}");
    } else {
        assert!(sites.is_empty());
    }
}

/// Keys declared in a module, used from outside it.
pub mod hooks {
    /// A public key, with a doc comment.
    #[static_call::static_call]
    pub static PUBLIC: extern "C" fn(u64) -> u64 = super::add1;

    /// Visible in this crate only.
    #[static_call::static_call]
    pub(crate) static CRATE: extern "C" fn(u64) -> u64 = super::add2;

    /// Visible to the parent module only.
    #[static_call::static_call]
    pub(super) static PARENT: extern "C" fn(u64) -> u64 = super::add3;

    /// Visible in `hooks` only: called through `call_private`.
    #[static_call::static_call]
    static PRIVATE: extern "C" fn(u64) -> u64 = super::add1;

    /// Calls the private key.
    #[inline(never)]
    pub fn call_private(x: u64) -> u64 {
        PRIVATE.call(x)
    }

    /// Retargets the private key.
    pub fn retarget_private(f: extern "C" fn(u64) -> u64) {
        PRIVATE.update(f);
    }

    pub mod inner {
        //! A key visible up to `hooks`.

        /// `pub(in crate::hooks)`.
        #[static_call::static_call]
        pub(in crate::hooks) static SCOPED: extern "C" fn(u64) -> u64 = crate::add2;

        /// Calls `SCOPED` from inside.
        #[inline(never)]
        pub fn call_scoped(x: u64) -> u64 {
            SCOPED.call(x)
        }
    }

    /// Calls `inner::SCOPED` from the module it is visible in.
    #[inline(never)]
    pub fn call_scoped_from_hooks(x: u64) -> u64 {
        inner::SCOPED.call(x) + inner::call_scoped(x)
    }
}

#[inline(never)]
fn call_module_keys(x: u64) -> (u64, u64, u64, u64, u64) {
    (
        hooks::PUBLIC.call(x),
        hooks::CRATE.call(x),
        hooks::PARENT.call(x),
        hooks::call_private(x),
        hooks::call_scoped_from_hooks(x),
    )
}

/// A key in a function body; another function declares a key of the same
/// name: neither the statics nor the trampolines' symbols may clash.
#[inline(never)]
fn local_key_a(x: u64, retarget: Option<extern "C" fn(u64) -> u64>) -> u64 {
    #[static_call]
    static LOCAL: extern "C" fn(u64) -> u64 = add1;
    if let Some(f) = retarget {
        LOCAL.update(f);
        assert_state(&LOCAL, SiteState::Direct);
    }
    LOCAL.call(x)
}

#[inline(never)]
fn local_key_b(x: u64, retarget: Option<extern "C" fn(u64) -> u64>) -> u64 {
    #[static_call]
    static LOCAL: extern "C" fn(u64) -> u64 = add3;
    if let Some(f) = retarget {
        LOCAL.update(f);
        assert_state(&LOCAL, SiteState::Direct);
    }
    LOCAL.call(x)
}

/// A key in a generic function: one static, whatever `T` is; its call is
/// emitted once per instantiation.
#[inline(never)]
fn generic_key<T: Into<u64>>(x: T, retarget: Option<extern "C" fn(u64) -> u64>) -> u64 {
    #[static_call]
    static SHARED: extern "C" fn(u64) -> u64 = add1;
    if let Some(f) = retarget {
        SHARED.update(f);
    }
    SHARED.call(x.into())
}

#[test]
fn keys_in_modules_and_function_bodies() {
    assert_eq!(call_module_keys(10), (11, 12, 13, 11, 24));
    assert_eq!((local_key_a(10, None), local_key_b(10, None)), (11, 13));
    assert_eq!((generic_key(10u8, None), generic_key(10u32, None)), (11, 11));

    hooks::PUBLIC.update(add3);
    hooks::CRATE.update(add1);
    hooks::PARENT.update(add2);
    hooks::retarget_private(add2);
    assert_eq!(call_module_keys(10), (13, 11, 12, 12, 24));
    assert_state(&hooks::PUBLIC, SiteState::Direct);

    // Retargeting one `LOCAL` leaves the other alone.
    assert_eq!(local_key_a(10, Some(add2)), 12);
    assert_eq!(local_key_b(10, None), 13);
    assert_eq!(local_key_b(10, Some(add1)), 11);
    assert_eq!(local_key_a(10, None), 12);

    assert_eq!(generic_key(10u16, Some(add3)), 13);
    assert_eq!((generic_key(10u8, None), generic_key(10u32, None), generic_key(10u64, None)), (13, 13, 13));
}

// ---------------------------------------------------------------- unsafe keys

/// Reads through a raw pointer.
///
/// # Safety
///
/// `p` is valid for reads.
unsafe extern "C" fn read(p: *const u64) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { *p }
}

/// # Safety
///
/// `p` is valid for reads.
unsafe extern "C" fn read_twice(p: *const u64) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { *p * 2 }
}

extern "C" fn ignore(_: *const u64) -> u64 {
    7
}

/// An `unsafe` key: its `call` is `unsafe`, and a safe function is a valid
/// target too.
#[static_call]
static READ: unsafe extern "C" fn(*const u64) -> u64 = read;

#[test]
fn unsafe_keys() {
    let x = 21u64;
    // SAFETY: `&x` is valid for reads.
    assert_eq!(unsafe { READ.call(&x) }, 21);
    READ.update(read_twice);
    // SAFETY: as above.
    assert_eq!(unsafe { READ.call(&x) }, 42);
    READ.update(ignore);
    // SAFETY: as above.
    assert_eq!(unsafe { READ.call(&x) }, 7);
    READ.reset();
    // SAFETY: as above.
    assert_eq!(unsafe { READ.call(&x) }, 0);
    assert_state(&READ, SiteState::Zero);
}

// ---------------------------------------------------------------- lifetimes

extern "C" fn first(x: &u8) -> &u8 {
    x
}

extern "C" fn next(x: &u8) -> &u8 {
    // Only ever given an element of `BYTES` but the last.
    &BYTES[1 + (x as *const u8 as usize - BYTES.as_ptr() as usize)]
}

static BYTES: [u8; 4] = [10, 20, 30, 40];

/// Elided lifetimes: the result borrows from the argument.
#[static_call]
static ELIDED: extern "C" fn(&u8) -> &u8 = first;

#[derive(Debug, PartialEq)]
struct Node {
    value: u32,
}

extern "C" fn keep(n: &Node) -> Option<&Node> {
    Some(n)
}

extern "C" fn only_even(n: &Node) -> Option<&Node> {
    n.value.is_multiple_of(2).then_some(n)
}

/// A higher-ranked signature; its return type is zeroable (`None`).
#[static_call]
static FILTER: for<'a> extern "C" fn(&'a Node) -> Option<&'a Node> = keep;

/// The same through the trampoline.
#[static_call(out_of_line)]
static FILTER_OUT_OF_LINE: for<'a> extern "C" fn(&'a Node) -> Option<&'a Node> = only_even;

#[test]
fn lifetimes() {
    // A borrow that does not outlive this function.
    let local = 5u8;
    assert!(std::ptr::eq(ELIDED.call(&local), &local));
    assert_eq!(*ELIDED.call(&BYTES[0]), 10);
    ELIDED.update(next);
    assert_eq!(*ELIDED.call(&BYTES[0]), 20);

    let nodes: Vec<Node> = (0..4).map(|value| Node { value }).collect();
    let kept: Vec<u32> = nodes.iter().filter_map(|n| FILTER.call(n)).map(|n| n.value).collect();
    assert_eq!(kept, [0, 1, 2, 3]);
    FILTER.update(only_even);
    let kept: Vec<&Node> = nodes.iter().filter_map(|n| FILTER.call(n)).collect();
    assert!(kept.iter().all(|k| nodes.iter().any(|n| std::ptr::eq(*k, n))), "the references come back");
    assert_eq!(kept.iter().map(|n| n.value).collect::<Vec<_>>(), [0, 2]);
    FILTER.reset();
    assert_eq!(nodes.iter().filter_map(|n| FILTER.call(n)).count(), 0, "no target: `None`");

    let kept: Vec<u32> = nodes.iter().filter_map(|n| FILTER_OUT_OF_LINE.call(n)).map(|n| n.value).collect();
    assert_eq!(kept, [0, 2]);
    FILTER_OUT_OF_LINE.update(keep);
    assert_eq!(nodes.iter().filter_map(|n| FILTER_OUT_OF_LINE.call(n)).count(), 4);
}

// ---------------------------------------------------------------- no target

static EVENTS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

extern "C" fn log_event(e: u32) {
    EVENTS.lock().unwrap().push(e);
}

/// No target yet, `()` return: calls do nothing.
#[static_call]
static ON_EVENT: extern "C" fn(u32);

extern "C" fn answer(_: u32, _: bool) -> i64 {
    42
}

/// No target yet, zeroable return: calls return 0.
#[static_call]
static COUNT: extern "C" fn(u32, bool) -> i64;

/// No target, pointer return: null.
#[static_call]
static LOOKUP: extern "C" fn(u64) -> *const u8;

#[inline(never)]
fn emit(e: u32) {
    ON_EVENT.call(e)
}

#[inline(never)]
fn count(x: u32) -> i64 {
    COUNT.call(x, true)
}

#[test]
fn keys_without_a_target() {
    assert!(ON_EVENT.get().is_none() && COUNT.get().is_none() && LOOKUP.get().is_none());
    emit(1);
    assert_eq!(count(1), 0);
    assert!(LOOKUP.call(1).is_null());
    // Nothing before `init` either: the trampolines jump through the slots,
    // which hold the no-target stubs.
    static_call::init().unwrap();
    assert_state(&ON_EVENT, SiteState::Nop);
    assert_state(&COUNT, SiteState::Zero);
    emit(2);
    assert_eq!(count(2), 0);
    assert!(EVENTS.lock().unwrap().is_empty(), "no target: nothing ran");

    assert!(ON_EVENT.update(log_event).is_none());
    assert!(COUNT.update(answer).is_none());
    assert_state(&ON_EVENT, SiteState::Direct);
    assert_state(&COUNT, SiteState::Direct);
    emit(3);
    assert_eq!(count(3), 42);
    assert_eq!(*EVENTS.lock().unwrap(), [3]);

    assert!(ON_EVENT.reset().is_some());
    assert!(COUNT.reset().is_some());
    assert_state(&ON_EVENT, SiteState::Nop);
    assert_state(&COUNT, SiteState::Zero);
    emit(4);
    assert_eq!(count(4), 0);
    assert_eq!(*EVENTS.lock().unwrap(), [3]);
}

// ---------------------------------------------------------------- cfg

/// Removed by `#[cfg]` below the attribute (rustc evaluates it before the
/// macro runs): the whole key goes, or its target, which does not exist,
/// would fail to compile.
#[static_call]
#[cfg(any())]
static GONE: extern "C" fn(u64) -> u64 = does_not_exist;

/// Kept by `#[cfg]`.
#[static_call]
#[cfg(test)]
static KEPT: extern "C" fn(u64) -> u64 = add2;

#[test]
fn cfg_applies_to_the_whole_key() {
    assert_eq!(KEPT.call(1), 3);
}

// ---------------------------------------------------------------- batches and the trait

static BATCH_EVENTS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

extern "C" fn log_batch_event(e: u32) {
    BATCH_EVENTS.lock().unwrap().push(e);
}

#[static_call]
static B1: extern "C" fn(u64) -> u64 = add1;
#[static_call]
static B2: extern "C" fn(u64) -> u64 = add1;
#[static_call]
static B3: extern "C" fn(u32, bool) -> i64 = answer;
#[static_call]
static B4: extern "C" fn(u32);

#[inline(never)]
fn call_batch_keys(x: u64) -> (u64, u64, i64) {
    B4.call(x as u32);
    (B1.call(x), B2.call(x), B3.call(x as u32, false))
}

/// Generic over any key: what `StaticCall` is for.
fn retarget<K: StaticCall>(key: &K, f: K::Fn) -> Option<K::Fn> {
    key.key().update(f)
}

/// The current target's result for `x`, through the trait.
fn current_target_of<K: StaticCall<Fn = extern "C" fn(u64) -> u64>>(key: &K, x: u64) -> Option<u64> {
    key.key().get().map(|f| f(x))
}

#[test]
fn batches() {
    assert_eq!(call_batch_keys(10), (11, 11, 42));
    let before = static_call::stats().updates;
    static_call::batch(|b| {
        b.update(&B1, add2);
        b.update(&B2, add3);
        b.reset(&B3);
        b.update(&B4, log_batch_event);
    })
    .unwrap();
    assert_eq!(call_batch_keys(10), (12, 13, 0));
    // (Other tests update keys concurrently: at least these four.)
    assert!(static_call::stats().updates - before >= 4, "four keys retargeted");
    assert_eq!(*BATCH_EVENTS.lock().unwrap(), [10]);

    // The same key twice: the last change wins.
    static_call::batch(|b| {
        b.update(&B1, add3).update(&B1, add1);
        b.update(&B2, add1);
        b.update(&B2, add2);
        b.update(&B3, answer);
        b.reset(&B3);
    })
    .unwrap();
    assert_eq!(call_batch_keys(10), (11, 12, 0));
    assert_eq!(current_target_of(&B1, 10), Some(11));
    assert!(B3.get().is_none());
    static_call::batch(|b| {
        b.reset(&B4);
        b.update(&B4, log_batch_event);
    })
    .unwrap();
    assert!(B4.get().is_some());
    assert_state(&B1, SiteState::Direct);
    assert_state(&B2, SiteState::Direct);
    assert_state(&B3, SiteState::Zero);

    // An empty batch is fine.
    static_call::batch(|_| {}).unwrap();

    // Through the trait.
    let old = retarget(&B1, add3).expect("had a target");
    assert_eq!(old(1), add1(1));
    assert_eq!(B1.call(1), 4);
    assert!(retarget(&B4, log_batch_event).is_some());
}

// ---------------------------------------------------------------- spellings and macros

/// Named parameters, `extern` without an ABI string (which is "C"), a
/// trailing comma, and an explicit `-> ()`.
#[static_call]
static SPELLED: extern "C" fn(value: u64, scale: u32) -> u64 = scaled;
#[static_call]
static PLAIN_EXTERN: extern "C" fn(u64) -> u64 = add1;
#[static_call]
static EXPLICIT_UNIT: extern "C" fn(u32) -> ();

extern "C" fn scaled(value: u64, scale: u32) -> u64 {
    value * scale as u64
}

/// A key declared by a `macro_rules!` macro, with types and target from its
/// caller.
macro_rules! declare_key {
    ($(#[$m:meta])* $vis:vis $name:ident: fn($arg:ty) -> $ret:ty = $target:expr) => {
        $(#[$m])*
        #[static_call]
        $vis static $name: extern "C" fn($arg) -> $ret = $target;
    };
}

declare_key!(
    /// From a macro.
    pub MACRO_KEY: fn(u64) -> u64 = add3
);

/// A type from a type macro.
macro_rules! int {
    () => {
        u64
    };
}

#[static_call]
static TYPE_MACRO: extern "C" fn(int!()) -> int!() = add2;

extern "C" fn mix(a: f64, b: core::primitive::f32, n: u64) -> std::primitive::f64 {
    a * b as f64 + n as f64
}

/// Floats spelled by their full paths still travel in SSE registers.
#[static_call]
static FULL_PATHS: extern "C" fn(f64, core::primitive::f32, u64) -> std::primitive::f64 = mix;

#[test]
fn spellings_and_macros() {
    assert_eq!(SPELLED.call(7, 3), 21);
    assert_eq!(PLAIN_EXTERN.call(1), 2);
    EXPLICIT_UNIT.call(1);
    EXPLICIT_UNIT.reset();
    assert_eq!(MACRO_KEY.call(1), 4);
    MACRO_KEY.update(add1);
    assert_eq!(MACRO_KEY.call(1), 2);
    assert_eq!(TYPE_MACRO.call(1), 3);
    TYPE_MACRO.update(add3);
    assert_eq!(TYPE_MACRO.call(1), 4);
    assert_state(&TYPE_MACRO, SiteState::Direct);
    assert_eq!(FULL_PATHS.call(1.5, 2.0, 4), 7.0);
}

// ---------------------------------------------------------------- batches, property-tested

#[static_call]
static P0: extern "C" fn(u64) -> u64 = add1;
#[static_call]
static P1: extern "C" fn(u64) -> u64 = add1;
#[static_call]
static P2: extern "C" fn(u64) -> u64 = add1;

#[inline(never)]
fn call_p(x: u64) -> [u64; 3] {
    [P0.call(x), P1.call(x), P2.call(x)]
}

/// Any sequence of changes in one batch: each key ends with the last change
/// made to it (or keeps its target if none), and all its sites agree.
#[test]
fn batch_last_change_wins() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    // An empty batch changes nothing and does not `init`: do it here, so
    // that the sites' states do not depend on which test ran first.
    static_call::init().unwrap();
    let targets: [Option<extern "C" fn(u64) -> u64>; 4] = [Some(add1), Some(add2), Some(add3), None];
    let result = |t: Option<extern "C" fn(u64) -> u64>, x: u64| t.map_or(0, |f| f(x));
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    runner
        .run(&proptest::collection::vec((0..3usize, 0..4usize), 0..8), |changes| {
            let before = call_p(10);
            static_call::batch(|b| {
                for &(k, t) in &changes {
                    match (k, targets[t]) {
                        (0, Some(f)) => b.update(&P0, f),
                        (1, Some(f)) => b.update(&P1, f),
                        (2, Some(f)) => b.update(&P2, f),
                        (0, None) => b.reset(&P0),
                        (1, None) => b.reset(&P1),
                        _ => b.reset(&P2),
                    };
                }
            })
            .unwrap();
            let mut want = before;
            for &(k, t) in &changes {
                want[k] = result(targets[t], 10);
            }
            prop_assert_eq!(call_p(10), want, "changes {:?}", changes);
            for (k, key) in [P0.key(), P1.key(), P2.key()].into_iter().enumerate() {
                let state = if want[k] == 0 { SiteState::Zero } else { SiteState::Direct };
                let sites = key.sites();
                prop_assert!(sites.iter().all(|s| s.state() == state), "key {}: {:?}", k, sites);
                prop_assert_eq!(key.get().map_or(0, |f| f(10)), want[k]);
            }
            Ok(())
        })
        .unwrap();
}
