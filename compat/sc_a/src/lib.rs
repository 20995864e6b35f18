//! Keys declared with one major version of `static_call`: `sc_a` links the
//! root package (0.1), `sc_b` (the same source, see its Cargo.toml) links
//! `compat/v2` (2.0.0), so that an executable depending on both holds two
//! copies of the crate, as cargo builds one whose dependencies want two
//! majors.
//!
//! The call wrappers are `#[inline(always)]`: each call site is emitted in
//! the function that calls the wrapper, so that a test can put sites of both
//! copies' keys side by side in one function (on one page of text). The
//! static branches (`B0`, `B1`) are too: each `unlikely*` / `likely*`
//! wrapper is a branch site emitted in its caller.

/// The copy of `static_call` this crate links, for its types
/// (`SiteState`, `Error`, `Stats`).
pub use ::static_call as copy;

use ::static_call::{static_branch, static_call, BranchKey, Error, Site, Stats};

/// The type of every key here.
pub type F = extern "C" fn(u64) -> u64;

/// The number of keys.
pub const KEYS: usize = 3;

/// This crate's name (`sc_a`: static_call 0.1; `sc_b`: static_call 2), for
/// messages.
pub const NAME: &str = env!("CARGO_PKG_NAME");

extern "C" fn initial0(x: u64) -> u64 {
    x ^ 0x1000
}
extern "C" fn initial1(x: u64) -> u64 {
    x ^ 0x1001
}
extern "C" fn initial2(x: u64) -> u64 {
    x ^ 0x1002
}

/// The target each key is declared with.
pub fn initial(key: usize) -> F {
    [initial0 as F, initial1, initial2][key]
}

#[static_call]
static K0: extern "C" fn(u64) -> u64 = initial0;
#[static_call]
static K1: extern "C" fn(u64) -> u64 = initial1;
#[static_call]
static K2: extern "C" fn(u64) -> u64 = initial2;

/// A call site of `K0`, emitted in the caller.
#[inline(always)]
pub fn call0(x: u64) -> u64 {
    K0.call(x)
}
/// A call site of `K1`, emitted in the caller.
#[inline(always)]
pub fn call1(x: u64) -> u64 {
    K1.call(x)
}
/// A call site of `K2`, emitted in the caller.
#[inline(always)]
pub fn call2(x: u64) -> u64 {
    K2.call(x)
}

/// `init()` of this crate's copy of `static_call`.
pub fn init() -> Result<(), Error> {
    static_call::init()
}

/// `stats()` of this crate's copy.
pub fn stats() -> Stats {
    static_call::stats()
}

/// `try_update` of key `key`.
pub fn update(key: usize, f: F) -> Result<Option<F>, Error> {
    match key {
        0 => K0.try_update(f),
        1 => K1.try_update(f),
        _ => K2.try_update(f),
    }
}

/// `get` of key `key`.
pub fn get(key: usize) -> Option<F> {
    match key {
        0 => K0.get(),
        1 => K1.get(),
        _ => K2.get(),
    }
}

/// `sites` of key `key`.
pub fn sites(key: usize) -> Vec<Site> {
    match key {
        0 => K0.sites(),
        1 => K1.sites(),
        _ => K2.sites(),
    }
}

/// The number of static branches.
pub const BRANCHES: usize = 2;

/// The value each branch is declared with.
pub const BRANCH_INITIAL: [bool; BRANCHES] = [false, true];

#[static_branch]
static B0: bool = false;
#[static_branch]
static B1: bool = true;

const _: () = assert!(!BRANCH_INITIAL[0] && BRANCH_INITIAL[1]);

/// An `unlikely` site of `B0`, emitted in the caller: its value.
#[inline(always)]
pub fn unlikely0() -> bool {
    B0.unlikely()
}
/// A `likely` site of `B0`, emitted in the caller: its value.
#[inline(always)]
pub fn likely0() -> bool {
    B0.likely()
}
/// An `unlikely` site of `B1`, emitted in the caller: its value.
#[inline(always)]
pub fn unlikely1() -> bool {
    B1.unlikely()
}
/// A `likely` site of `B1`, emitted in the caller: its value.
#[inline(always)]
pub fn likely1() -> bool {
    B1.likely()
}

/// Branch `b`'s key.
pub fn branch(b: usize) -> &'static BranchKey {
    match b {
        0 => &B0,
        _ => &B1,
    }
}

/// `try_set` of branch `b`.
pub fn set(b: usize, value: bool) -> Result<bool, Error> {
    branch(b).try_set(value)
}

/// `get` of branch `b`.
pub fn value(b: usize) -> bool {
    branch(b).get()
}

/// `sites` of branch `b`.
pub fn branch_sites(b: usize) -> Vec<Site> {
    branch(b).sites()
}

/// Sets the branch at `key` (a key of this copy or of any other copy or
/// version of `static_call`, as a pointer) through this crate's copy, which
/// routes the set to the key's owner.
///
/// # Safety
///
/// `key` points to a static-branch key of some copy of `static_call`, that
/// stays mapped during the call.
pub unsafe fn set_any(key: *const (), value: bool) -> Result<bool, Error> {
    // SAFETY: the caller's contract; every version's key starts with the
    // versioned prefix that `try_set` checks before it reads anything past
    // it (a key of another layout is `IncompatibleCopy`).
    let key = unsafe { &*(key as *const BranchKey) };
    key.try_set(value)
}
