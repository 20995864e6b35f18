//! Every accepted form of `#[static_branch]`: private and `pub` (with
//! `missing_docs` denied, documented), a const expression, `cfg`d away and
//! kept, declared in a fn body, and through `crate = path` (a facade), with
//! `unsafe_code` forbidden in the user's crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
use static_call::static_branch;

#[static_branch]
static TRACE: bool = false;

/// A documented public branch.
#[static_branch]
pub static FAST: bool = true;

const ON: bool = true;
#[static_branch(crate = ::static_call)]
static VIA_PATH: bool = ON && !false;

#[static_branch]
#[cfg(any())]
static GONE: bool = does_not_exist;

#[static_branch]
#[cfg(all())]
#[allow(dead_code)]
static HERE: bool = false;

fn main() {
    #[static_branch]
    static LOCAL: bool = true;
    assert!(!TRACE.unlikely());
    assert!(FAST.likely());
    assert!(VIA_PATH.get());
    assert!(LOCAL.likely() && LOCAL.unlikely());
    assert!(!TRACE.set(true));
    assert!(TRACE.unlikely() && TRACE.likely());
    assert_eq!(TRACE.try_set(false), Ok(true));
    let _ = HERE.sites();
}
