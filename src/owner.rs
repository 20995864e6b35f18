//! Keys across copies of this crate (DESIGN 3.11).
//!
//! A key's static, trampoline and call sites live in one module (the
//! executable or one cdylib), and that module's copy of this crate is the
//! only one whose registry knows them. Any copy may hold a reference to the
//! key, though: a host that got a plugin's key through an exported
//! `&'static`, or a plugin given a host's key. So every key carries a
//! pointer to its owner's [`Owner`] table, and every update and `sites()`
//! query is made by the owner: locally when this copy owns the key, else
//! through the owner's `extern "C"` entry points, with `repr(C)` arguments
//! (two copies may be different builds, so no Rust layout crosses over).
//! No update returns `Ok` without the owner having changed every site.
//!
//! A [`batch`](crate::batch) whose keys belong to several copies is applied
//! copy by copy, each part with its own core syncs; if a part fails, the
//! parts already applied are put back (best effort: a put-back that fails
//! too is reported instead of the first error only when it poisons) and the
//! error is returned.
//!
//! # Safety
//!
//! The owner table of a key is the `OWNER` static of the copy that built the
//! key (`Key::__new` is `const` and evaluated where the key is declared), so
//! it stays mapped as long as the key does. Before following any pointer in
//! a key, a copy checks the key's prefix (`KeyPrefix`: magic and layout
//! version, the same in every version of this crate), and before calling an
//! owner table it checks the table's own magic and version: the entry
//! points then have exactly the signatures below. A mismatch is
//! [`Error::IncompatibleCopy`], naming both versions, never a call. The
//! pointers passed across are to live `repr(C)` values of the caller, valid
//! for the call.
#![allow(unsafe_code)]

use crate::raw::{KeyPrefix, RawKey, Target, CRATE_VERSION, KEY_ABI, KEY_MAGIC};
use crate::site::RawSite;
use crate::{backend, CopyVersion, Error, Site};

/// "SCALLOWN": the magic of every owner table.
const OWNER_MAGIC: [u8; 8] = *b"SCALLOWN";
/// The version of [`Owner`] and of everything its entry points exchange
/// (`Change`, `RawSite`, `RawError`, the key layout after its prefix).
/// Version 4: keys gained `branch`, `RawSite` the branch states.
const OWNER_ABI: u32 = 4;

/// One change of a batch: make `new` (null: none) the target of `key`.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Change {
    pub(crate) key: *const RawKey,
    pub(crate) new: Target,
}

impl Change {
    /// The key.
    pub(crate) fn key(&self) -> &'static RawKey {
        // SAFETY: changes are built only from keys, which are statics.
        unsafe { &*self.key }
    }
}

type UpdateFn = unsafe extern "C" fn(*const Change, usize, *mut Target, *mut RawError) -> bool;
type SitesFn = unsafe extern "C" fn(*const RawKey, *mut RawSite, usize) -> usize;

/// A copy's entry points for the keys it owns.
#[doc(hidden)]
#[repr(C)]
pub struct Owner {
    /// [`OWNER_MAGIC`]; these three fields keep their place in every version.
    magic: [u8; 8],
    abi: u32,
    /// The crate version, packed as in `KeyPrefix::version`.
    version: u32,
    /// Applies `n` changes of keys this copy owns, writing each key's
    /// previous target to `old[i]`; false with `*err` filled on failure.
    update: UpdateFn,
    /// Writes up to `cap` sites of `key` to `out` and returns how many the
    /// key has.
    sites: SitesFn,
}

/// This copy's table. Every key built by this copy points here.
#[doc(hidden)]
pub static OWNER: Owner =
    Owner { magic: OWNER_MAGIC, abi: OWNER_ABI, version: CRATE_VERSION, update: serve_update, sites: serve_sites };

fn is_ours(owner: &'static Owner) -> bool {
    core::ptr::eq(owner, &OWNER)
}

/// The owner table a key names. Only for a key whose prefix was checked
/// ([`owner_of`]), or one of this copy's.
fn owner_table(key: &RawKey) -> &'static Owner {
    // SAFETY: the prefix's owner is set at construction to the static owner
    // table of the copy that built the key; its magic and layout are
    // checked before anything past them is read.
    unsafe { &*(key.prefix.owner as *const Owner) }
}

/// This copy's versions, as an error names them.
fn ours() -> CopyVersion {
    CopyVersion { abi: KEY_ABI, version: CRATE_VERSION }
}

/// The owner of `key`, once the key's prefix and the owner table's header
/// say both were built by a copy whose layout is ours. Reads only the
/// prefix (the same in every version) before it knows that.
pub(crate) fn owner_of(key: &RawKey) -> Result<&'static Owner, Error> {
    let p = key.prefix;
    if p.magic != KEY_MAGIC {
        return Err(Error::IncompatibleCopy { ours: ours(), theirs: None });
    }
    if p.abi != KEY_ABI {
        return Err(Error::IncompatibleCopy {
            ours: ours(),
            theirs: Some(CopyVersion { abi: p.abi, version: p.version }),
        });
    }
    let owner = owner_table(key);
    if is_ours(owner) {
        return Ok(owner);
    }
    if owner.magic != OWNER_MAGIC || owner.abi != OWNER_ABI {
        let theirs = (owner.magic == OWNER_MAGIC).then_some(CopyVersion { abi: owner.abi, version: owner.version });
        return Err(Error::IncompatibleCopy { ours: ours(), theirs });
    }
    Ok(owner)
}

/// Whether `key` is one of this copy's (its prefix ours, its owner this
/// copy's table): what the registry keeps of the records in the sections,
/// which every copy of this crate linked into the module fills.
pub(crate) fn owned_here(prefix: &KeyPrefix) -> bool {
    prefix.magic == KEY_MAGIC
        && prefix.abi == KEY_ABI
        && core::ptr::eq(prefix.owner, &OWNER as *const Owner as *const ())
}

/// An [`Error`] as it crosses between copies.
#[doc(hidden)]
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct RawError {
    pub(crate) tag: u32,
    pub(crate) errno: i32,
    pub(crate) errno2: i32,
    pub(crate) address: usize,
    pub(crate) found: [u8; 5],
    pub(crate) expected: [u8; 5],
}

// ---------------------------------------------------------------- the entry points

/// `Owner::update` of this copy.
///
/// # Safety
///
/// `changes` points to `n` changes of keys, `old` to `n` writable pointers,
/// `err` to a writable `RawError`.
unsafe extern "C" fn serve_update(changes: *const Change, n: usize, old: *mut Target, err: *mut RawError) -> bool {
    // SAFETY: the caller's contract.
    let (changes, old) = unsafe { (core::slice::from_raw_parts(changes, n), core::slice::from_raw_parts_mut(old, n)) };
    let r = if changes.iter().all(|c| owned_here(&c.key().prefix)) {
        backend::update_many(changes, old)
    } else {
        Err(Error::ForeignKey)
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            // SAFETY: the caller's contract.
            unsafe { err.write(RawError::from(e)) };
            false
        }
    }
}

/// `Owner::sites` of this copy.
///
/// # Safety
///
/// `key` is a key; `out` points to `cap` writable `RawSite`s (or `cap` is 0).
unsafe extern "C" fn serve_sites(key: *const RawKey, out: *mut RawSite, cap: usize) -> usize {
    // SAFETY: the caller's contract.
    let key = unsafe { &*key };
    if !owned_here(&key.prefix) {
        return 0;
    }
    let sites = backend::sites(key);
    for (i, s) in sites.iter().take(cap).enumerate() {
        // SAFETY: `i < cap`.
        unsafe { out.add(i).write(RawSite::from(s)) };
    }
    sites.len()
}

// ---------------------------------------------------------------- routing

fn remote_update(owner: &'static Owner, changes: &[Change], old: &mut [Target]) -> Result<(), Error> {
    let mut err = RawError::default();
    // SAFETY: a table of our version; the slices are valid for the call.
    let ok = unsafe { (owner.update)(changes.as_ptr(), changes.len(), old.as_mut_ptr(), &mut err) };
    if ok {
        Ok(())
    } else {
        Err(Error::from(err))
    }
}

/// Applies changes of keys of one owner.
fn apply(owner: &'static Owner, changes: &[Change], old: &mut [Target]) -> Result<(), Error> {
    if is_ours(owner) {
        backend::update_many(changes, old)
    } else {
        remote_update(owner, changes, old)
    }
}

/// Makes `new` (null: none) the target of `key`, by its owner; returns the
/// previous target. Allocates nothing.
pub fn update_one(key: &RawKey, new: Target) -> Result<Target, Error> {
    let mut old = [Target::NONE];
    apply(owner_of(key)?, &[Change { key, new }], &mut old)?;
    Ok(old[0])
}

/// Applies a batch: the last change of each key wins; keys of each owner
/// together.
pub fn update_many(changes: &mut Vec<Change>) -> Result<(), Error> {
    for c in changes.iter() {
        owner_of(c.key())?;
    }
    changes.reverse();
    changes.sort_by_key(|c| (owner_table(c.key()) as *const Owner as usize, c.key as usize));
    changes.dedup_by_key(|c| c.key as usize);
    let mut old = vec![Target::NONE; changes.len()];
    let mut done = 0;
    while done < changes.len() {
        let owner = owner_table(changes[done].key());
        let end = done + changes[done..].iter().take_while(|c| core::ptr::eq(owner_table(c.key()), owner)).count();
        if let Err(e) = apply(owner, &changes[done..end], &mut old[done..end]) {
            // Put back the parts already applied, owner by owner.
            let mut start = 0;
            while start < done {
                let o = owner_table(changes[start].key());
                let stop =
                    start + changes[start..done].iter().take_while(|c| core::ptr::eq(owner_table(c.key()), o)).count();
                let back: Vec<Change> = changes[start..stop]
                    .iter()
                    .zip(&old[start..stop])
                    .map(|(c, &p)| Change { key: c.key, new: p })
                    .collect();
                let mut ignored = vec![Target::NONE; back.len()];
                if let Err(e2 @ Error::Poisoned { .. }) = apply(o, &back, &mut ignored) {
                    return Err(e2);
                }
                start = stop;
            }
            return Err(e);
        }
        done = end;
    }
    Ok(())
}

/// The sites of `key`, from its owner.
pub fn sites(key: &RawKey) -> Vec<Site> {
    let Ok(owner) = owner_of(key) else { return Vec::new() };
    if is_ours(owner) {
        return backend::sites(key);
    }
    let mut buf: Vec<RawSite> = Vec::new();
    loop {
        // SAFETY: a table of our version; `buf` has room for `capacity` sites.
        let n = unsafe { (owner.sites)(key, buf.as_mut_ptr(), buf.capacity()) };
        if n <= buf.capacity() {
            // SAFETY: the owner wrote `n` sites.
            unsafe { buf.set_len(n) };
            return buf.iter().map(Site::from).collect();
        }
        buf.reserve_exact(n);
    }
}
