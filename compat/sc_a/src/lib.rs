//! Keys declared with one major version of `static_call`: `sc_a` links the
//! root package (0.1), `sc_b` (the same source, see its Cargo.toml) links
//! `compat/v2` (2.0.0), so that an executable depending on both holds two
//! copies of the crate, as cargo builds one whose dependencies want two
//! majors.
//!
//! The call wrappers are `#[inline(always)]`: each call site is emitted in
//! the function that calls the wrapper, so that a test can put sites of both
//! copies' keys side by side in one function (on one page of text).

/// The copy of `static_call` this crate links, for its types
/// (`SiteState`, `Error`, `Stats`).
pub use ::static_call as copy;

use ::static_call::{static_call, Error, Site, Stats};

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
