//! What the macro's expansion uses. Not public API: no stability promise.
//!
//! # Safety
//!
//! `zeroed_return` produces an all-zero value of a return type; the macro
//! calls it only where the key's slot is null, which only a declaration
//! without target or `reset` can make so, and both require `R: Zeroable`
//! (the call site's return type up to lifetimes).
#![allow(unsafe_code)]

pub use crate::abi::{FloatRegister, IntegerRegister, Zeroable};
pub use crate::branch::BranchKey;
pub use crate::key::{Key, StaticCall};
pub use crate::raw::{NoTarget, RawKey, Target};
pub use crate::rust_fn::{catch, conjure, from_pair, to_pair, Frame, Pair, RustKey};
pub use crate::Retarget;
pub use crate::{Error, Site};
pub use core;
pub use std::vec::Vec;

/// Expands to its `inline` arm where sites are patched, else to its
/// `portable` arm: the backend is this crate's choice, made by its own
/// `cfg`, not the caller's.
#[cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    not(feature = "portable"),
    not(miri)
))]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_backend {
    (inline { $($i:tt)* } portable { $($p:tt)* }) => { $($i)* };
}

#[cfg(not(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    not(feature = "portable"),
    not(miri)
)))]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_backend {
    (inline { $($i:tt)* } portable { $($p:tt)* }) => { $($p)* };
}

pub use crate::__static_call_backend as backend;
#[cfg(target_arch = "aarch64")]
pub use crate::{
    __static_call_aarch64_branch as branch_site, __static_call_aarch64_site as site,
    __static_call_aarch64_trampoline as trampoline, __static_call_aarch64_trampoline_addr as trampoline_addr,
};
#[cfg(target_arch = "x86_64")]
pub use crate::{
    __static_call_x86_64_branch as branch_site, __static_call_x86_64_site as site,
    __static_call_x86_64_trampoline as trampoline, __static_call_x86_64_trampoline_addr as trampoline_addr,
};

#[cold]
#[inline(never)]
fn cold() {}

/// A portable `unlikely()` site: `b`, with the `true` path marked cold.
#[inline(always)]
pub fn branch_unlikely(b: bool) -> bool {
    if b {
        cold();
    }
    b
}

/// A portable `likely()` site: `b`, with the `false` path marked cold.
#[inline(always)]
pub fn branch_likely(b: bool) -> bool {
    if !b {
        cold();
    }
    b
}

/// The value a call returns while its key has no target.
///
/// # Safety
///
/// All-zero bits must be a valid `R`: the key's slot is null, which only a
/// declaration without target or `reset` can make so, both bounded by
/// `Zeroable` on `R` (up to lifetimes).
#[inline(always)]
pub unsafe fn zeroed_return<R>() -> R {
    // SAFETY: the caller's contract.
    unsafe { core::mem::zeroed() }
}

/// Compile-time checks, instantiated with spans on the user's types.
pub const fn assert_zeroable<R: Zeroable + ?Sized>() {}
/// As above.
pub const fn assert_integer<T: IntegerRegister>() {}
/// As above.
pub const fn assert_float<T: FloatRegister>() {}

/// Test hook: `hook` runs first in the SIGTRAP handler for every trap at one
/// of our addresses (so a test can hold a thread on the breakpoint). It must
/// be async-signal-safe.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"), not(miri)))]
pub fn set_trap_hook(hook: Option<extern "C" fn()>) {
    crate::arch::native::protocol::set_trap_hook(hook)
}

/// Test introspection: of the traps the SIGTRAP handler emulated, how many
/// it emulated as an indirect call through a key's slot (x86-64's
/// `SiteState::Indirect` form), and of those it rewound, how many onto
/// that form. `(0, 0)` where no `int3` is written.
pub fn indirect_traps() -> (u64, u64) {
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"), not(miri)))]
    return crate::arch::native::protocol::indirect_trap_stats();
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"), not(miri))))]
    (0, 0)
}

/// The address of a key's trampoline, for introspection and tests (`None`
/// on the portable backend).
pub fn trampoline_of<F: Copy, R>(key: &'static Key<F, R>) -> Option<usize> {
    crate::backend::trampoline(key.__raw())
}

/// Test hook: the address of the no-target stub a key's slot holds while
/// the key has no target (the key's raw `none` pointer). A target the
/// optimizer or the linker merged with that stub has this very address.
pub fn no_target_stub<F: Copy, R>(key: &'static Key<F, R>) -> usize {
    key.__raw().none as usize
}

/// Disassembles one instruction (introspection, the demo); empty on the
/// portable backend.
pub fn disassemble(at: usize, bytes: &[u8]) -> String {
    crate::backend::disassemble(at, bytes)
}

/// One `membarrier` SYNC_CORE call: the floor an update cannot go below,
/// for benchmarks (a no-op on the portable backend).
pub fn sync_core_once() -> Result<(), crate::Error> {
    crate::backend::sync_core_once()
}

patching! {
/// Test hook (failure injection): the next `after` writes of machine code
/// succeed, then `times` writes fail with `EIO` before writing anything
/// (`usize::MAX`: every later write; `0` disarms). An update whose write
/// fails rolls back (see `patch::apply`), so tests can prove that an update
/// is all or nothing.
pub fn fail_text_write_after(after: usize, times: usize) {
    crate::os::linux::text::fail_writes(after, times)
}

/// How many writes of machine code were attempted so far (a write is one
/// page-run of one protocol step: the `int3`s, the bodies or the first bytes
/// of the instructions that start on one page; see `Session::write_step`;
/// on aarch64 one write per instruction).
pub fn text_writes() -> usize {
    crate::os::linux::text::writes()
}

/// Test hook (failure injection) for the `mprotect` writer: the next `after`
/// protection changes of its sessions (adding write to each range, then
/// restoring each) succeed, then `times` fail with `ENOMEM` without changing
/// anything (`usize::MAX`: every later one; `0` disarms).
pub fn fail_text_protect_after(after: usize, times: usize) {
    crate::os::linux::text::fail_protects(after, times)
}

/// How many protection changes the `mprotect` writer's sessions attempted.
pub fn text_protects() -> usize {
    crate::os::linux::text::protects()
}

/// Test hook: the writer probe takes the page size (`getauxval(AT_PAGESZ)`)
/// to be `n`, so that a process whose kernel reports an unusable one (0, not
/// a power of two) can be tested. Call before `init`: it is read once.
pub fn inject_page_size(n: usize) {
    crate::os::linux::text::inject_page_size(n)
}
}

patching! {
/// Test hook: call before `init`. This copy registers no atfork handlers,
/// as a copy in a plugin, so that a `fork()` can land in the middle of its
/// updates and the child must finish them.
pub fn no_atfork() {
    crate::patch::NO_ATFORK.store(true, core::sync::atomic::Ordering::SeqCst)
}

/// How many updates this process (a `fork()` child) inherited half-done
/// from another thread of its parent and finished.
pub fn inherited_updates_finished() -> u64 {
    crate::patch::INHERITED.load(core::sync::atomic::Ordering::SeqCst)
}
}

/// Test hook: from now on this copy believes the process runs with CET
/// shadow stacks (as `arch_prctl(ARCH_SHSTK_STATUS)` would report), so that
/// `init` chooses the slots. Call before `init`.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"), not(miri)))]
pub fn assume_shadow_stack() {
    crate::os::linux::ASSUME_SHADOW_STACK.store(true, core::sync::atomic::Ordering::SeqCst)
}

/// Test hook: `hook` runs in the SIGTRAP handler while it is counted as a
/// reader of the published patch plan (an update's `retract` waits for it).
/// It must be async-signal-safe.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"), not(miri)))]
pub fn set_reader_hook(hook: Option<extern "C" fn()>) {
    crate::arch::native::protocol::set_reader_hook(hook)
}

/// How many times an update waited (asleep) for SIGTRAP handlers still
/// reading its plan.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"), not(miri)))]
pub fn retract_waits() -> u64 {
    crate::arch::native::protocol::retract_waits()
}

/// Test hook: `hook` runs while this copy's SIGTRAP bookkeeping is being
/// rewritten (its `WRITER` held: a relink or a re-install).
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"), not(miri)))]
pub fn set_writer_hook(hook: Option<extern "C" fn()>) {
    crate::os::linux::signal::set_writer_hook(hook)
}

/// This copy's SIGTRAP bookkeeping: threads inside its handler, readers of
/// each slot of its previous disposition (signed), whether its writer lock
/// is held.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"), not(miri)))]
pub fn signal_bookkeeping() -> (isize, [isize; 2], bool) {
    crate::os::linux::signal::bookkeeping()
}

/// Runs this copy's unload path now (what `dlclose` or process exit runs):
/// shuts the copy down for good and takes its handler out of the chain.
/// Returns what it did: `Nothing`, `Clean`, `GaveUp` (a wait for threads in
/// the handler gave up), `KeptPoisoned` or `Busy`.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"), not(miri)))]
pub fn unload_now() -> String {
    format!("{:?}", crate::patch::unload())
}
