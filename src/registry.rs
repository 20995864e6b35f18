//! The table of call sites, static-branch sites and trampolines of this module (the executable or
//! shared object that linked this copy of the crate), read from the linker
//! sections the macro's assembly fills.
//!
//! # Safety
//!
//! The records are written only by the assembly templates of this crate
//! (`arch::native`), in this version or another: each holds 32-bit offsets,
//! relative to the record field itself, to an instruction in this module's
//! text and to a key static, whose first bytes are a `KeyPrefix` in every
//! version. The linker defines `__start_`/`__stop_` around each section, and
//! every copy contributes one sentinel record (offset 0) so that the
//! sections always exist. Resolving a record is pointer arithmetic within
//! this module; the key pointers it yields are `'static`.
//!
//! # Two copies in one module
//!
//! The sections are named `_v2`: their records point to keys that start
//! with a `KeyPrefix` (a `_v1` record's key started with its slot), and
//! every version that keeps that will keep the name.
//!
//! Cargo links two semver-incompatible versions of this crate into one
//! executable when two dependencies want different majors. Both copies'
//! records land in the same sections (the section names and the record
//! layout are part of the crate's ABI across versions), so each copy keeps
//! only the records whose key it built: the key's prefix names its owner
//! table (`owner::owned_here`). A copy never reads past the prefix of a key
//! it did not build, and never patches another copy's instruction.
#![allow(unsafe_code)]

use crate::arch::native::{
    assembled_branch, assembled_site, branch_form, branch_test_image, site_bytes, site_patch_at,
    trampoline_image, well_placed, BRANCH_TEST_LEN, INSN_LEN, PATCH_LEN, TRAMP_SIZE,
};
use crate::owner::owned_here;
use crate::raw::{RawKey, SLOT_OFFSET};
use crate::site::NotDirect;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

#[repr(C)]
struct Record {
    at: i32,
    key: i32,
}

core::arch::global_asm!(
    ".pushsection static_call_sites_v2, \"aR\", %progbits",
    ".balign 4",
    ".long 0, 0",
    ".popsection",
    ".pushsection static_call_tramps_v2, \"aR\", %progbits",
    ".balign 4",
    ".long 0, 0",
    ".popsection",
    ".pushsection static_call_branches_v2, \"aR\", %progbits",
    ".balign 4",
    ".long 0, 0, 0, 0, 0",
    ".popsection",
);

/// A static-branch site's record: `{site - ., key - ., label - ., test -
/// ., flags}`, each offset relative to its own field; flags bit 0: the site
/// jumps to its label when the key's value is true (an `unlikely` site).
/// The test is recorded, not found by decoding the site: a site whose
/// bytes someone else changed before the registry is built could jump
/// anywhere, and the registry reads the test's bytes.
#[repr(C)]
struct BranchRecord {
    at: i32,
    key: i32,
    label: i32,
    test: i32,
    flags: u32,
}

extern "C" {
    static __start_static_call_sites_v2: Record;
    static __stop_static_call_sites_v2: Record;
    static __start_static_call_tramps_v2: Record;
    static __stop_static_call_tramps_v2: Record;
    static __start_static_call_branches_v2: BranchRecord;
    static __stop_static_call_branches_v2: BranchRecord;
}

/// One static-branch site.
pub struct BranchEntry {
    /// The site's address: of its five-byte instruction (the assembled
    /// `jmp test`), behind its `cs` prefixes; its patch starts at
    /// `arch::site_patch_at(at)`.
    pub at: usize,
    pub key: &'static RawKey,
    /// Where the site jumps to take the branch (the `asm goto` label).
    pub label: usize,
    /// The site's assembled test of the key's slot, as its record names it.
    pub test: usize,
    /// The site takes the branch (jumps to `label`) when the value is true.
    pub when_true: bool,
    /// Set when the site is never to be patched.
    pub refused: Option<NotDirect>,
}

impl BranchEntry {
    /// Whether the site jumps to its label when the key's value is `value`
    /// (null: false).
    pub fn taken(&self, value: *mut ()) -> bool {
        value.is_null() != self.when_true
    }
}

/// One call site.
pub struct SiteEntry {
    /// The site's address (x86-64: of its assembled `call rel32`; its
    /// patch starts at `arch::site_patch_at(at)`).
    pub at: usize,
    pub key: &'static RawKey,
    pub tramp: usize,
    /// Set when the site is never to be patched.
    pub refused: Option<NotDirect>,
}

/// One trampoline.
pub struct TrampEntry {
    pub at: usize,
    pub key: &'static RawKey,
    /// The image past the head did not match at load: every update of this
    /// key fails with the first difference.
    pub damaged: bool,
}

pub struct Registry {
    /// Sorted by (key, address).
    pub sites: Box<[SiteEntry]>,
    /// Sorted by key.
    pub tramps: Box<[TrampEntry]>,
    /// Static-branch sites, sorted by (key, address).
    pub branches: Box<[BranchEntry]>,
    /// Every address where a patch of this crate starts (trampolines, the
    /// patches of call and branch sites not refused), sorted: what the SIGTRAP handler
    /// searches.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub addrs: Box<[usize]>,
    /// Of those, the trampolines' heads, sorted.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub tramp_heads: Box<[usize]>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();
/// The same registry, for the signal handler, which must not touch `OnceLock`
/// (it may block).
static PUBLISHED: AtomicPtr<Registry> = AtomicPtr::new(std::ptr::null_mut());

fn key_addr(k: &RawKey) -> usize {
    k as *const RawKey as usize
}

/// Where a trampoline's far form (and an indirect site) reads the key's
/// slot.
pub fn slot_addr(k: &RawKey) -> usize {
    key_addr(k) + SLOT_OFFSET
}

/// Reads a section into (instruction address, key) pairs of this copy's
/// keys: sentinels and other copies' records dropped.
///
/// # Safety
///
/// `start..stop` is one of the record sections of this module.
unsafe fn records(start: *const Record, stop: *const Record) -> Vec<(usize, &'static RawKey)> {
    let n = (stop as usize - start as usize) / size_of::<Record>();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: `i < n` records lie in the section.
        let r = unsafe { start.add(i) };
        // SAFETY: as above; fields are plain integers.
        let (at, key) = unsafe { ((*r).at, (*r).key) };
        if at == 0 {
            continue;
        }
        let base_at = r as usize;
        let base_key = base_at + 4;
        let at = base_at.wrapping_add(at as isize as usize);
        let key = base_key.wrapping_add(key as isize as usize);
        // SAFETY: the templates of every version record only key statics,
        // which start with a `KeyPrefix` (`repr(C)`, the same layout in every
        // version): reading it is in bounds.
        let prefix = unsafe { &*(key as *const crate::raw::KeyPrefix) };
        if owned_here(prefix) {
            // SAFETY: the prefix says this copy built the key: it is a
            // `Key`, whose first field is the `RawKey` (both `repr(C)`).
            out.push((at, unsafe { &*(key as *const RawKey) }));
        }
    }
    out
}

/// One branch record, resolved: its site, key, label, test and flags.
type BranchRecordAt = (usize, &'static RawKey, usize, usize, u32);

/// Reads the branch section into (site, key, label, test, flags) of this
/// copy's keys: sentinels and other copies' records dropped.
///
/// # Safety
///
/// `start..stop` is the branch section of this module.
unsafe fn branch_records(start: *const BranchRecord, stop: *const BranchRecord) -> Vec<BranchRecordAt> {
    let n = (stop as usize - start as usize) / size_of::<BranchRecord>();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: `i < n` records lie in the section.
        let r = unsafe { start.add(i) };
        // SAFETY: as above; fields are plain integers.
        let (at, key, label, test, flags) = unsafe { ((*r).at, (*r).key, (*r).label, (*r).test, (*r).flags) };
        if at == 0 {
            continue;
        }
        let base = r as usize;
        let at = base.wrapping_add(at as isize as usize);
        let key = (base + 4).wrapping_add(key as isize as usize);
        let label = (base + 8).wrapping_add(label as isize as usize);
        let test = (base + 12).wrapping_add(test as isize as usize);
        // SAFETY: as in `records`: every version's templates record only key
        // statics, which start with a `KeyPrefix`.
        let prefix = unsafe { &*(key as *const crate::raw::KeyPrefix) };
        if owned_here(prefix) {
            // SAFETY: the prefix says this copy built the key: a
            // `BranchKey`, whose first field is the `RawKey` (both
            // `repr(C)`); checked to be a branch key before use.
            out.push((at, unsafe { &*(key as *const RawKey) }, label, test, flags));
        }
    }
    out
}

fn read_text<const N: usize>(at: usize) -> [u8; N] {
    let mut b = [0; N];
    for (i, x) in b.iter_mut().enumerate() {
        // SAFETY: `at..at + N` is a patch or an instruction of this module's
        // text (registry entries only: a site's patch starts on its own
        // last `cs` prefix; a branch site's test is the one its record
        // names, emitted by the same template), which is mapped readable.
        *x = unsafe { std::ptr::read_volatile((at + i) as *const u8) };
    }
    b
}

fn read_insn(at: usize) -> [u8; INSN_LEN] {
    read_text(at)
}

/// The current bytes of the patch at `at` (a trampoline, or
/// `site_patch_at` of a site).
pub fn current_bytes(at: usize) -> [u8; PATCH_LEN] {
    read_text(at)
}

fn build() -> Registry {
    // SAFETY: the linker-defined bounds of our own sections.
    let (mut sites, mut tramps) = unsafe {
        (
            records(&raw const __start_static_call_sites_v2, &raw const __stop_static_call_sites_v2),
            records(&raw const __start_static_call_tramps_v2, &raw const __stop_static_call_tramps_v2),
        )
    };
    tramps.sort_by_key(|&(at, k)| (key_addr(k), at));
    tramps.dedup_by_key(|&mut (_, k)| key_addr(k));
    let tramps: Box<[TrampEntry]> = tramps
        .into_iter()
        .map(|(at, key)| {
            let mut image = [0u8; TRAMP_SIZE];
            for (i, x) in image.iter_mut().enumerate() {
                // SAFETY: a trampoline is TRAMP_SIZE bytes of our text.
                *x = unsafe { std::ptr::read_volatile((at + i) as *const u8) };
            }
            let expected = trampoline_image(at, slot_addr(key), [0; INSN_LEN]);
            let tail_ok = expected.is_some_and(|e| e[INSN_LEN..] == image[INSN_LEN..]);
            TrampEntry { at, key, damaged: !tail_ok || at % TRAMP_SIZE != 0 }
        })
        .collect();

    sites.sort_by_key(|&(at, k)| (key_addr(k), at));
    sites.dedup_by_key(|&mut (at, _)| at);
    let sites: Box<[SiteEntry]> = sites
        .into_iter()
        .map(|(at, key)| {
            let tramp =
                tramps.binary_search_by_key(&key_addr(key), |t| key_addr(t.key)).map(|i| tramps[i].at).unwrap_or(0);
            // The whole patch: on x86-64 the byte before the call, the last
            // `cs` prefix, is the indirect form's opcode byte, so a site
            // whose byte there is not `cs` is never patched either (our
            // template always emits three `cs` there).
            let found = current_bytes(site_patch_at(at));
            let refused = if tramp == 0 || assembled_site(at, tramp) != Some(found) {
                Some(NotDirect::Refused(site_bytes(&found)))
            } else if !well_placed(at) {
                Some(NotDirect::Misplaced)
            } else {
                None
            };
            SiteEntry { at, key, tramp, refused }
        })
        .collect();

    // SAFETY: the linker-defined bounds of our own section.
    let mut branches =
        unsafe { branch_records(&raw const __start_static_call_branches_v2, &raw const __stop_static_call_branches_v2) };
    branches.sort_by_key(|&(at, k, _, _, _)| (key_addr(k), at));
    branches.dedup_by_key(|&mut (at, _, _, _, _)| at);
    let branches: Box<[BranchEntry]> = branches
        .into_iter()
        .map(|(at, key, label, test, flags)| {
            let when_true = flags & 1 != 0;
            let found = current_bytes(site_patch_at(at));
            // The site must hold the jump to its recorded test (checked
            // before the test is read), the test must be exactly what the
            // template assembles for this key, label and polarity, and
            // both patched forms must be encodable; else it is never
            // patched (its assembled test still runs, correctly or not).
            let ok = key.branch
                && assembled_branch(at, test) == Some(found)
                && branch_test_image(test, slot_addr(key), label, when_true, at)
                    .is_some_and(|want| read_text::<BRANCH_TEST_LEN>(test) == want)
                && branch_form(at, label, true).is_some();
            let refused = (!ok).then_some(NotDirect::Refused(site_bytes(&found)));
            BranchEntry { at, key, label, test, when_true, refused }
        })
        .collect();

    let mut tramp_heads: Vec<usize> = tramps.iter().filter(|t| !t.damaged).map(|t| t.at).collect();
    tramp_heads.sort_unstable();
    let mut addrs = tramp_heads.clone();
    addrs.extend(sites.iter().filter(|s| s.refused.is_none()).map(|s| site_patch_at(s.at)));
    addrs.extend(branches.iter().filter(|b| b.refused.is_none()).map(|b| site_patch_at(b.at)));
    addrs.sort_unstable();
    Registry { sites, tramps, branches, addrs: addrs.into_boxed_slice(), tramp_heads: tramp_heads.into_boxed_slice() }
}

/// The registry, built on first use.
pub fn get() -> &'static Registry {
    let r = REGISTRY.get_or_init(build);
    PUBLISHED.store(r as *const Registry as *mut Registry, Ordering::Release);
    r
}

/// The registry if it was built, for the signal handler. Async-signal-safe.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub fn published() -> Option<&'static Registry> {
    // SAFETY: either null or the `'static` registry, never freed.
    unsafe { PUBLISHED.load(Ordering::Acquire).as_ref() }
}

impl Registry {
    /// The sites of `key`, in address order.
    pub fn sites_of(&self, key: &RawKey) -> &[SiteEntry] {
        let k = key_addr(key);
        let lo = self.sites.partition_point(|s| key_addr(s.key) < k);
        let hi = self.sites.partition_point(|s| key_addr(s.key) <= k);
        &self.sites[lo..hi]
    }

    /// The static-branch sites of `key`, in address order.
    pub fn branches_of(&self, key: &RawKey) -> &[BranchEntry] {
        let k = key_addr(key);
        let lo = self.branches.partition_point(|s| key_addr(s.key) < k);
        let hi = self.branches.partition_point(|s| key_addr(s.key) <= k);
        &self.branches[lo..hi]
    }

    /// The trampoline of `key`, if this module has it.
    pub fn tramp_of(&self, key: &RawKey) -> Option<&TrampEntry> {
        let k = key_addr(key);
        self.tramps.binary_search_by_key(&k, |t| key_addr(t.key)).ok().map(|i| &self.tramps[i])
    }

    /// Whether the SIGTRAP handler should consider `at`. Async-signal-safe.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn is_ours(&self, at: usize) -> bool {
        self.addrs.binary_search(&at).is_ok()
    }

    /// Whether `at` is where the patch of a call or branch site of ours
    /// starts (one of [`Registry::is_ours`] that is no trampoline's head):
    /// the byte before it is then the site's own `cs` prefix, which this
    /// crate never writes. Async-signal-safe.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn is_site_patch(&self, at: usize) -> bool {
        self.is_ours(at) && self.tramp_heads.binary_search(&at).is_err()
    }
}

/// The first difference between a trampoline's bytes past its head and what
/// the macro assembled: (address, found, expected), an instruction's length
/// each.
pub fn tramp_damage(t: &TrampEntry) -> Option<(usize, [u8; INSN_LEN], [u8; INSN_LEN])> {
    if !t.damaged {
        return None;
    }
    let expected = trampoline_image(t.at, slot_addr(t.key), [0; INSN_LEN])?;
    let start = (INSN_LEN..TRAMP_SIZE - INSN_LEN)
        .find(|&i| {
            // SAFETY: within the trampoline.
            unsafe { std::ptr::read_volatile((t.at + i) as *const u8) != expected[i] }
        })
        .unwrap_or(TRAMP_SIZE - INSN_LEN);
    let mut want = [0; INSN_LEN];
    want.copy_from_slice(&expected[start..start + INSN_LEN]);
    Some((t.at + start, read_insn(t.at + start), want))
}
