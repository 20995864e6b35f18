//! Hot function pointers that cost what a direct call costs.
//!
//! `#[static_call]` declares a key: a static holding a typed target, an
//! `extern "C"` function or, for a key of a Rust `fn` type, a Rust fn item
//! or non-capturing closure. Each `KEY.call(..)` expression is a call site, emitted as an aligned
//! `call rel32` to the key's out-of-line trampoline and recorded in a linker
//! section. On Linux x86-64, [`init`] and every update rewrite those calls in
//! place to call the target directly, while other threads keep calling: an
//! `int3` guards each instruction while it is rewritten, a SIGTRAP handler
//! emulates the call for any thread that lands on it, and
//! `membarrier(SYNC_CORE)` serializes all cores between the steps. On Linux
//! aarch64 a site is a `bl`, and every form a site or trampoline takes is a
//! `B`, `BL` or `NOP`, which the architecture allows to be replaced with one
//! aligned 32-bit store while other cores execute it: an update is the
//! stores, one cache-maintenance pass and one `membarrier(SYNC_CORE)`, with
//! no breakpoint and no signal handler. Everywhere else (or with the
//! `portable` feature) the same API runs on an atomic function pointer.
//!
//! ```
//! use static_call::static_call;
//!
//! extern "C" fn fnv1a(x: u64) -> u64 { (x ^ 0xcbf2_9ce4_8422_2325).wrapping_mul(0x100_0000_01b3) }
//! extern "C" fn ident(x: u64) -> u64 { x }
//!
//! #[static_call]
//! static HASH: extern "C" fn(u64) -> u64 = fnv1a;
//!
//! static_call::init().unwrap();
//! assert_eq!(HASH.call(7), fnv1a(7));
//! HASH.update(ident);
//! assert_eq!(HASH.call(7), 7);
//!
//! #[static_call]
//! static LEN: fn(&str) -> usize = str::len;
//! assert_eq!(LEN.call("abc"), 3);
//! LEN.update(|s: &str| s.chars().count() * 10);
//! assert_eq!(LEN.call("abc"), 30);
//! let caught = std::panic::catch_unwind(|| {
//!     LEN.update(|_: &str| -> usize { panic!("no") });
//!     LEN.call("x")
//! });
//! assert!(caught.is_err());
//! assert_eq!(LEN.update(str::len).is_some(), true);
//! assert_eq!(LEN.call("abcd"), 4);
//! ```
//!
//! # Static branches
//!
//! `#[static_branch]` declares a `bool` whose tests cost a `nop`: each
//! `KEY.likely()` / `KEY.unlikely()` is a site (an `asm goto`), patched to a
//! five-byte `nop` or a `jmp` to the branch's block (aarch64: `nop` or
//! `b`), switched by [`BranchKey::set`] with the same lock, protocol and
//! guarantees as an update. Before [`init`] and in [`Mode::Slots`] a site
//! jumps to an out-of-line test of the value, so it is always right; on
//! the portable backend it is a relaxed atomic load.
//!
//! ```
//! use static_call::static_branch;
//!
//! #[static_branch]
//! static TRACE: bool = false;
//!
//! fn work(x: u64) -> u64 {
//!     if TRACE.unlikely() {
//!         eprintln!("work({x})");
//!     }
//!     x + 1
//! }
//!
//! assert_eq!(work(1), 2);
//! assert!(!TRACE.set(true)); // the previous value
//! assert!(TRACE.get() && TRACE.unlikely() && TRACE.likely());
//! assert_eq!(TRACE.try_set(false), Ok(true));
//! ```
//!
//! # Rules
//!
//! - An `extern "C"` key's site passes arguments in registers by the System
//!   V rules (x86-64) or AAPCS64 (aarch64); a panic in its target aborts the
//!   process. A key of a Rust `fn` type calls a per-target `extern "C"` shim
//!   that the target inlines into (or tail-jumps to), passes any `Sized`
//!   types (in registers or through the caller's frame), and a panic in its
//!   target unwinds to the caller: see `docs/rust-targets.md`.
//! - Inline sites take up to 6 integer-class arguments ([`IntegerRegister`])
//!   and up to 8 `f32`/`f64`, and return `()`, an integer-class value or a
//!   float (the same limits on both architectures, although AAPCS64 would
//!   pass 8 integers, so that a key compiles everywhere). `#[static_call(out_of_line)]` allows any `extern "C"` signature;
//!   its calls go through the patched trampoline only.
//! - Where patching is impossible (seccomp denying `membarrier`, no way to
//!   write text, CET shadow stacks, SIGTRAP blocked in the thread that
//!   initializes, `STATIC_CALL_WRITER=none`), [`init`] returns the reason and
//!   the process runs on the keys' slots ([`Mode::Slots`]): every call goes
//!   through its trampoline's `jmp [slot]`, every update stores the slot and
//!   succeeds, results are the same.
//! - x86-64 only (aarch64 writes no breakpoint): SIGTRAP must not be
//!   blocked in a thread that calls a site while an update runs (the kernel kills the process when a thread traps with
//!   SIGTRAP blocked). A mask set in `main` is inherited by every thread, so
//!   no `int3` is written while the updating thread blocks SIGTRAP: such an
//!   update returns [`Error::SigtrapBlocked`]; call [`init`] before blocking
//!   signals, or leave SIGTRAP out of the set.
//!   Install your own SIGTRAP handler, if any, before [`init`]: ours passes the
//!   traps that are not ours on to it. Under gdb, once the program runs
//!   (gdb's startup breakpoints also raise SIGTRAP): `handle SIGTRAP nostop
//!   noprint pass`, then `signal 0`; under valgrind: `--smc-check=all`.
//! - Updates are serialized process-wide. An update may be made from inside a
//!   target, and from a signal handler once [`init`] has run: updates after
//!   [`init`] allocate nothing, with either text writer and of any size. An
//!   update from a signal handler that interrupted an update on the same
//!   thread returns [`Error::Reentrant`]. [`batch`] allocates. `fork()` waits
//!   for an update in progress.
//!
//! # Cargo features
//!
//! None is on by default: a build compiles this crate, `libc` and the macro
//! crate (with `syn` and `quote`), nothing more. Features are additive (the
//! API is the same with any of them).
//!
//! - `portable`: the atomic-function-pointer backend even where sites could
//!   be patched.
//! - `disasm`: [`Site`]'s `Display` decodes whatever instruction a site
//!   holds with iced-x86 (x86-64; nothing changes on aarch64). Without it the
//!   crate's own decoder prints every form this crate writes exactly as
//!   iced-x86 does (`call 0x...`, `nop [rax+rax]`, `mov eax, 0`), and any
//!   other bytes, after the bytes themselves, as `(not a static_call form)`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub use static_call_macros::{static_branch, static_call};

mod abi;
mod branch;
mod error;
mod key;
mod mode;
mod owner;
mod raw;
mod rust_fn;
mod site;

// Pure encodings: compiled on every x86-64 and aarch64 target so that their
// property tests run with the portable backend too.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[cfg_attr(not(all(target_os = "linux", not(feature = "portable"), not(miri))), allow(dead_code))]
mod arch;

/// Items of the patching backend (Linux x86-64 or aarch64, without the
/// `portable` feature, not under Miri), or, after `else`, of the portable
/// one: the one place that spells the condition for this crate's modules.
/// (The `backend!` macro and `PATCHING` spell it too: an exported macro and
/// a `cfg!` cannot come from here.)
macro_rules! patching {
    (else $($item:item)*) => {$(
        #[cfg(not(all(
            any(target_arch = "x86_64", target_arch = "aarch64"),
            target_os = "linux",
            not(feature = "portable"),
            not(miri)
        )))]
        $item
    )*};
    ($($item:item)*) => {$(
        #[cfg(all(
            any(target_arch = "x86_64", target_arch = "aarch64"),
            target_os = "linux",
            not(feature = "portable"),
            not(miri)
        ))]
        $item
    )*};
}

patching! {
    mod os;
    mod patch;
    mod registry;
    use patch as backend;
}

patching! {
    else
    mod portable;
    use portable as backend;
}

pub use abi::{FloatRegister, IntegerRegister, Zeroable};
pub use branch::BranchKey;
pub use error::{CopyVersion, Error};
pub use key::{Batch, Key, Retarget, StaticCall};
pub use mode::{Mode, TextWriter};
pub use rust_fn::RustKey;
pub use site::{NotDirect, Site, SiteState};

/// Whether this build patches call sites (Linux x86-64 or aarch64 without
/// the `portable` feature, and not under Miri) rather than calling through
/// an atomic pointer.
pub const PATCHING: bool = cfg!(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    not(feature = "portable"),
    not(miri)
));

/// Process-wide counters (per copy of this crate: each shared object that
/// links it has its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Keys retargeted by completed updates (a batch of `n` keys counts `n`).
    pub updates: u64,
    /// Call-site instructions rewritten by updates (and `init`): each time a
    /// site's bytes change, to a direct call, to the indirect call through
    /// the slot that a far target gets on x86-64 (`SiteState::Indirect`:
    /// patched too), to a no-target form, or back. Trampolines are not
    /// counted, nor sites whose bytes stay (an update from one far target to
    /// another only stores the slot), nor branch sites (see
    /// `branch_sites_patched`).
    pub sites_patched: u64,
    /// Static-branch sites rewritten by `set`s, batches and `init`: each time
    /// a branch site's bytes change (from its assembled test to the `nop` or
    /// the jump, or between those two).
    pub branch_sites_patched: u64,
    /// Calls that landed on the `int3` of an update in progress and were
    /// emulated by the SIGTRAP handler (x86-64; always 0 on aarch64, where
    /// no breakpoint is written).
    pub traps_emulated: u64,
    /// Calls that landed on the `int3` but reached the handler after the
    /// update had finished, and were run again.
    pub traps_rewound: u64,
}

/// The counters so far.
pub fn stats() -> Stats {
    backend::stats()
}

/// Prepares patching, early in `main` (optional: the first update does it
/// otherwise): registers for `membarrier` core serialization (slow once a
/// process has many threads), installs the SIGTRAP handler, chooses how to
/// write text, and patches every call site to its key's current target.
/// Idempotent, and cheap after the first success: it then only checks that
/// our SIGTRAP handler is still in place, and if another handler displaced
/// it (a crash reporter installed after `init`), puts ours back on top,
/// chaining to the newcomer (a newcomer that passes traps back to us is
/// recognized: no loop).
pub fn init() -> Result<(), Error> {
    backend::init()
}

/// Applies many updates with one set of core syncs: every site of every key
/// in the batch changes together.
///
/// ```
/// # use static_call::static_call;
/// # extern "C" fn one(x: u32) -> u32 { x } extern "C" fn two(x: u32) -> u32 { x + 1 }
/// # #[static_call] static K1: extern "C" fn(u32) -> u32 = one;
/// # #[static_call] static K2: extern "C" fn(u32) -> u32 = one;
/// static_call::batch(|b| {
///     b.update(&K1, two);
///     b.update(&K2, two);
/// })?;
/// assert_eq!(K1.call(1) + K2.call(1), 4);
/// # Ok::<(), static_call::Error>(())
/// ```
///
/// Allocates; not for signal handlers.
pub fn batch(f: impl FnOnce(&mut Batch)) -> Result<(), Error> {
    let mut b = Batch { changes: Vec::new() };
    f(&mut b);
    if b.changes.is_empty() {
        return Ok(());
    }
    owner::update_many(&mut b.changes)
}

/// How calls are made in this process: patched (and with which writer), on
/// the keys' slots (and why), not initialized yet, or portable. Log it once
/// at startup if you want to know.
///
/// ```
/// match static_call::mode() {
///     static_call::Mode::Slots(why) => eprintln!("static calls run unpatched: {why}"),
///     mode => eprintln!("static calls: {mode}"),
/// }
/// ```
pub fn mode() -> Mode {
    backend::mode()
}

/// How this process writes machine code: `Some` only in
/// [`Mode::Patching`], `None` where nothing is patched (before `init`, in
/// [`Mode::Slots`], on the portable backend).
pub fn text_writer() -> Option<TextWriter> {
    match mode() {
        Mode::Patching(w) => Some(w),
        _ => None,
    }
}

#[doc(hidden)]
pub mod __private;

/// The README's example, compiled and run as a doctest (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

/// The example of `docs/branches.md`, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../docs/branches.md")]
struct BranchesExample;

/// The example of `docs/rust-targets.md`, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../docs/rust-targets.md")]
struct RustTargetsExample;
