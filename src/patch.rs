//! The patch plan, the lock, and the entry points: what every architecture
//! shares.
//!
//! Under one process-wide lock, an update
//!
//! 1. computes the new bytes of every site and trampoline of the keys it
//!    changes, and the bytes each holds now by our own account (the forms
//!    are the architecture's: `arch::native`);
//! 2. verifies that each holds exactly those bytes, and refuses the whole
//!    update otherwise (nothing is written);
//! 3. drops the entries whose bytes do not change, sorts the rest by address,
//!    stores the new targets in the keys' slots;
//! 4. commits the plan to text with the architecture's protocol
//!    (`arch::native::protocol`: the `int3` steps on x86-64, stores, cache
//!    maintenance and one core sync on aarch64), through one
//!    `os::linux::text::Session`.
//!
//! # Safety
//!
//! The plan lives in the lock-protected state and is neither moved nor
//! reused while the protocol may still read it (x86-64's handler: see its
//! protocol). Text is written only through `os::linux::text::Session`, only
//! at addresses from the registry, and only after their bytes were
//! verified.
//!
//! Once this copy shuts down (its module is unloaded, or the process exits)
//! the lock is held for good and its owner word carries `SHUT`: a `fork()`
//! then never waits for it (`fork_prepare` returns without the lock), since
//! glibc unregisters this copy's atfork handlers only after the destructor
//! that shut it down.
#![allow(unsafe_code)]

use crate::arch::native::{self as arch, protocol, INSN_LEN, TRAMP_SIZE};
use crate::key::RawKey;
use crate::os::linux::text::{self, Session};
use crate::os::linux::{futex_wait, futex_wake, membarrier, thread_id};
use crate::owner::Change;
use crate::registry::{self, Registry, SiteEntry, TrampEntry};
use crate::site::{NotDirect, Site, SiteState};
use crate::{Error, Mode, Stats};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

// ---------------------------------------------------------------- counters

static UPDATES: AtomicU64 = AtomicU64::new(0);
static SITES_PATCHED: AtomicU64 = AtomicU64::new(0);
/// Counted by x86-64's protocol (zero elsewhere: no trap is ever emulated).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) static TRAPS_EMULATED: AtomicU64 = AtomicU64::new(0);
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) static TRAPS_REWOUND: AtomicU64 = AtomicU64::new(0);

pub fn stats() -> Stats {
    Stats {
        updates: UPDATES.load(Relaxed),
        sites_patched: SITES_PATCHED.load(Relaxed),
        traps_emulated: TRAPS_EMULATED.load(Relaxed),
        traps_rewound: TRAPS_REWOUND.load(Relaxed),
    }
}

// ---------------------------------------------------------------- the lock

/// A mutex that knows its owner, so that an update from a signal handler that
/// interrupted an update on the same thread is refused instead of
/// deadlocking, and that a `fork()` child can reset. Allocation-free.
struct PatchLock {
    owner: AtomicU32,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is only reached through a `Guard`, which exists only while
// `owner` holds the guard's thread id.
unsafe impl Sync for PatchLock {}

struct State {
    initialized: bool,
    poisoned: Option<Error>,
    /// The patch plan; also the descriptor the SIGTRAP handler reads.
    /// Capacity for every site and trampoline is reserved at init, so that
    /// updates allocate nothing.
    plan: Vec<Patch>,
}

static LOCK: PatchLock = PatchLock {
    owner: AtomicU32::new(0),
    state: UnsafeCell::new(State { initialized: false, poisoned: None, plan: Vec::new() }),
};
/// `init` has completed (a fast path that skips the lock).
static INITIALIZED: AtomicBool = AtomicBool::new(false);
/// Set once, by the `init` that found patching impossible: the reason. The
/// process then runs on the keys' slots for good (DESIGN 3.10).
static SLOTS: std::sync::OnceLock<Error> = std::sync::OnceLock::new();

struct Guard;

impl PatchLock {
    fn lock(&'static self) -> Result<Guard, Error> {
        let me = thread_id();
        loop {
            match self.owner.compare_exchange(0, me, Acquire, Relaxed) {
                Ok(_) => return Ok(Guard),
                Err(o) if o == me || o == me | SHUT => return Err(Error::Reentrant),
                Err(o) => futex_wait(&self.owner, o),
            }
        }
    }
}

impl Guard {
    fn state(&mut self) -> &mut State {
        // SAFETY: this guard holds the lock; the borrow is tied to `&mut self`.
        unsafe { &mut *LOCK.state.get() }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        LOCK.owner.store(0, Release);
        futex_wake(&LOCK.owner);
    }
}

// ---------------------------------------------------------------- fork

/// Whether the forking thread took the lock in `prepare` (it did not if it
/// already held it: a fork from a signal handler that interrupted an update;
/// nor if this copy is shut down).
static FORK_LOCKED: AtomicBool = AtomicBool::new(false);

/// Set in `LOCK.owner`, with the owner's thread id, once the copy is shut
/// down for good (thread ids are below 2^22).
const SHUT: u32 = 1 << 31;

extern "C" fn fork_prepare() {
    // Wait for any update to finish, so the child never inherits
    // half-patched text. A shut-down copy (its module being unloaded, its
    // atfork handlers about to be unregistered) never makes a fork wait:
    // `shut_down` marks the owner word and wakes us.
    let me = thread_id();
    let locked = loop {
        match LOCK.owner.compare_exchange(0, me, Acquire, Relaxed) {
            Ok(_) => break true,
            Err(o) if o == me || o & SHUT != 0 => break false,
            Err(o) => futex_wait(&LOCK.owner, o),
        }
    };
    FORK_LOCKED.store(locked, Relaxed);
}

extern "C" fn fork_parent() {
    if FORK_LOCKED.load(Relaxed) {
        drop(Guard);
    }
}

extern "C" fn fork_child() {
    // The child has one thread. If `prepare` took the lock, no update was in
    // progress: the lock is free. If it could not, the forking thread is
    // inside an update (a fork from a signal handler that interrupted it):
    // the child's only thread still is, so it keeps the lock (a further
    // update from it is `Reentrant`), and the interrupted update finishes in
    // the child's own text. The `/proc/self/mem` descriptor is made to
    // name the child's memory (the interrupted update may hold its number),
    // and the membarrier registration is redone by process id.
    // A shut-down copy stays shut down. The protocol's own bookkeeping
    // (x86-64: the SIGTRAP handler's) is reset the same way.
    let owner = LOCK.owner.load(Relaxed);
    let owner = if owner & SHUT != 0 {
        owner
    } else if FORK_LOCKED.load(Relaxed) {
        0
    } else {
        thread_id()
    };
    LOCK.owner.store(owner, Release);
    protocol::after_fork_child();
    text::after_fork_child();
}

fn register_atfork() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the three handlers are async-signal-safe functions with
        // the expected signature.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    });
}

// ---------------------------------------------------------------- the plan

/// One instruction to rewrite.
#[derive(Clone, Copy, Debug)]
pub struct Patch {
    pub at: usize,
    pub old: [u8; INSN_LEN],
    pub new: [u8; INSN_LEN],
    pub is_site: bool,
}

/// What `shut_down` found.
pub enum ShutDown {
    /// No update of this copy will run again.
    Done,
    /// As `Done`, but an update poisoned this copy: its `int3`s may still be
    /// in the text, so the SIGTRAP handler must stay.
    Poisoned,
    /// This thread is inside an update of this copy: nothing done.
    Busy,
}

/// This copy's module is being unloaded, or the process exits: waits for an
/// update in progress to finish, then keeps the lock for good (marked
/// `SHUT`), so that no update of this copy starts again (from another
/// thread it would block; from this one it returns `Reentrant`), and wakes
/// any `fork()` waiting in `fork_prepare`, which then returns without the
/// lock: a fork during the unload never waits for it.
pub fn shut_down() -> ShutDown {
    let me = thread_id();
    loop {
        match LOCK.owner.compare_exchange(0, me, Acquire, Relaxed) {
            Ok(_) => break,
            // Shut down already (the unload path runs again at exit, maybe
            // on another thread): the state is frozen.
            Err(o) if o & SHUT != 0 => {
                return if SHUT_POISONED.load(Acquire) { ShutDown::Poisoned } else { ShutDown::Done };
            }
            Err(o) if o == me => return ShutDown::Busy,
            Err(o) => futex_wait(&LOCK.owner, o),
        }
    }
    // We hold the lock now; it is never released (no guard is dropped).
    let mut g = Guard;
    let poisoned = g.state().poisoned.is_some();
    std::mem::forget(g);
    SHUT_POISONED.store(poisoned, Release);
    LOCK.owner.fetch_or(SHUT, Release);
    futex_wake(&LOCK.owner);
    if poisoned {
        ShutDown::Poisoned
    } else {
        ShutDown::Done
    }
}

/// Whether this copy was poisoned when it shut down.
static SHUT_POISONED: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------- forms

/// What a site holds when its key's target is `target` (null: none).
fn site_form(s: &SiteEntry, target: *mut ()) -> [u8; INSN_LEN] {
    arch::site_form(s.at, s.tramp, target as usize, s.key.none as usize, s.key.no_target)
}

/// What a trampoline head holds when its key's target is `target`.
fn tramp_form(t: &TrampEntry, target: *mut ()) -> [u8; INSN_LEN] {
    arch::tramp_form(t.at, target as usize, t.key.none as usize, t.key.no_target)
}

/// What a key's trampoline and sites hold now: the assembled forms (every
/// site calls the trampoline, whose head jumps through the slot), or the
/// forms of a target.
enum From {
    Assembled,
    Target(*mut ()),
}

fn plan_key(plan: &mut Vec<Patch>, reg: &Registry, key: &RawKey, from: From, to: *mut ()) {
    let Some(t) = reg.tramp_of(key) else { return };
    let old = match from {
        From::Assembled => arch::far_head(t.at),
        From::Target(p) => tramp_form(t, p),
    };
    push(plan, t.at, old, tramp_form(t, to), false);
    for s in reg.sites_of(key).iter().filter(|s| s.refused.is_none()) {
        let old = match from {
            From::Assembled => arch::assembled_site(s.at, s.tramp).expect("checked at load"),
            From::Target(p) => site_form(s, p),
        };
        push(plan, s.at, old, site_form(s, to), true);
    }
}

fn push(plan: &mut Vec<Patch>, at: usize, old: [u8; INSN_LEN], new: [u8; INSN_LEN], is_site: bool) {
    debug_assert!(arch::decode(at, &new).is_some(), "we decode what we encode");
    debug_assert!(plan.len() < plan.capacity(), "plan capacity reserved at init");
    plan.push(Patch { at, old, new, is_site });
}

// ---------------------------------------------------------------- applying

/// Verifies and writes `plan`. `commit` stores the new targets in the keys'
/// slots once nothing can fail any more but the writes themselves; `revert`
/// puts the old ones back if a write fails and the text could be restored.
fn apply(st: &mut State, reg: &Registry, commit: impl FnOnce(), revert: impl FnOnce()) -> Result<(), Error> {
    let plan = &mut st.plan;
    plan.retain(|p| p.old != p.new);
    for p in plan.iter() {
        let found = registry::current_bytes(p.at);
        if found != p.old {
            return Err(Error::UnexpectedBytes { address: p.at, found: pad(found), expected: pad(p.old) });
        }
    }
    for t in reg.tramps.iter().filter(|t| t.damaged && plan.iter().any(|p| p.at == t.at)) {
        if let Some((address, found, expected)) = registry::tramp_damage(t) {
            return Err(Error::UnexpectedBytes { address, found: pad(found), expected: pad(expected) });
        }
    }
    plan.sort_unstable_by_key(|p| p.at);
    if plan.is_empty() {
        commit();
        return Ok(());
    }
    protocol::may_write()?;
    let writer = text::for_update(plan[0].at)?;
    let session = Session::open(writer, plan.iter().map(|p| p.at), INSN_LEN).inspect_err(|e| {
        if let Error::ProtectionNotRestored { .. } = e {
            st.poisoned = Some(*e);
        }
    })?;
    commit();
    let written = protocol::write(&session, plan);
    // The mprotect writer's pages get their protection back on every path;
    // if one cannot, that outranks whatever else happened.
    let restored = session.close();
    let r = match written {
        Ok(()) => {
            protocol::retire();
            let sites = plan.iter().filter(|p| p.is_site).count() as u64;
            SITES_PATCHED.fetch_add(sites, Relaxed);
            Ok(())
        }
        Err((e, repair)) => fail(st, e, repair, revert),
    };
    if let Err(e) = restored {
        st.poisoned = Some(e);
        return Err(e);
    }
    r
}

/// An instruction's bytes as the public types hold them (five bytes; on
/// aarch64 the four of the instruction, then a zero).
pub fn pad(bytes: [u8; INSN_LEN]) -> [u8; 5] {
    let mut out = [0; 5];
    out[..INSN_LEN].copy_from_slice(&bytes);
    out
}

/// A write failed mid-protocol and `repair` tried to restore every
/// instruction. If it succeeded, the old instructions are back: retire the
/// plan, put the old targets back, and report `e`. Otherwise (x86-64) the
/// plan stays published forever, so the int3s left behind keep being
/// emulated (as the new instructions, whose targets are stored), and no
/// further update runs; on aarch64 each instruction holds its old or its
/// new form, both valid, and no further update runs either.
fn fail(st: &mut State, e: Error, repair: Result<(), Error>, revert: impl FnOnce()) -> Result<(), Error> {
    if repair.is_ok() {
        membarrier::sync_core();
        protocol::retire();
        revert();
        return Err(e);
    }
    let (address, errno) = match e {
        Error::TextNotWritable { address, proc_mem_errno, errno } => (address, proc_mem_errno.max(errno)),
        _ => (0, 0),
    };
    let poisoned = Error::Poisoned { address, errno };
    st.poisoned = Some(poisoned);
    Err(poisoned)
}

// ---------------------------------------------------------------- entry points

/// Everything patching needs from the process, in order; the first that is
/// missing is the reason the process runs on the slots.
fn prepare(st: &mut State, reg: &Registry) -> Result<(), Error> {
    protocol::requirements()?;
    membarrier::register()?;
    let probe_at = reg.tramps.first().map_or(probe_address(), |t| t.at + TRAMP_SIZE - 1);
    text::probe(probe_at)?;
    protocol::install()?;
    register_atfork();
    st.plan.reserve_exact(reg.sites.len() + reg.tramps.len());
    Ok(())
}

/// A byte of this copy's own text for the writer probe when the module has
/// no trampoline (it is rewritten with its own value).
fn probe_address() -> usize {
    probe_address as fn() -> usize as usize
}

fn init_locked(st: &mut State) -> Result<(), Error> {
    if st.initialized {
        return SLOTS.get().map_or(Ok(()), |&e| Err(e));
    }
    // An init whose failed write could not be undone left its plan
    // published for the handler: never plan over it.
    if let Some(e) = st.poisoned {
        return Err(e);
    }
    let reg = registry::get();
    if let Err(e) = prepare(st, reg) {
        // Patching is impossible in this process: nothing was written, every
        // site calls its trampoline, which jumps through the slot. Run on
        // the slots, for good.
        let _ = SLOTS.set(e);
        st.initialized = true;
        INITIALIZED.store(true, Release);
        return Err(e);
    }
    for t in reg.tramps.iter().filter(|t| !t.damaged) {
        plan_key(&mut st.plan, reg, t.key, From::Assembled, t.key.load());
    }
    // A write that fails here is undone (or poisons): init can be retried.
    let r = apply(st, reg, || (), || ());
    st.plan.clear();
    r?;
    st.initialized = true;
    INITIALIZED.store(true, Release);
    Ok(())
}

pub fn init() -> Result<(), Error> {
    if INITIALIZED.load(Acquire) {
        if let Some(&e) = SLOTS.get() {
            return Err(e);
        }
        // Once initialized, `init` only puts a displaced handler back on top.
        if !protocol::installed() || protocol::check_handler().is_ok() {
            return Ok(());
        }
    }
    let mut g = LOCK.lock()?;
    let st = g.state();
    if st.initialized && SLOTS.get().is_none() && protocol::installed() {
        return protocol::install();
    }
    init_locked(st)
}

/// Whether `init` has completed in this copy.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub fn initialized() -> bool {
    INITIALIZED.load(Acquire)
}

pub fn mode() -> Mode {
    if let Some(&e) = SLOTS.get() {
        return Mode::Slots(e);
    }
    match (INITIALIZED.load(Acquire), text::current()) {
        (true, Some(w)) => Mode::Patching(w),
        _ => Mode::NotInitialized,
    }
}

/// Applies `changes` (each key at most once, every key owned by this copy)
/// and returns, in `old`, each key's previous target (null: none).
fn update_locked(st: &mut State, changes: &[Change], old: &mut [*mut ()]) -> Result<(), Error> {
    if let Some(e) = st.poisoned {
        return Err(e);
    }
    let slots = match init_locked(st) {
        Ok(()) => false,
        Err(_) if SLOTS.get().is_some() => true,
        Err(e) => return Err(e),
    };
    for (o, c) in old.iter_mut().zip(changes) {
        *o = c.key().load();
    }
    if slots {
        // Nothing is patched: every call jumps through the slot, so one
        // store per key is the whole update, correct at once.
        changes.iter().for_each(|c| c.key().store(c.new));
        UPDATES.fetch_add(changes.len() as u64, Relaxed);
        return Ok(());
    }
    let reg = registry::get();
    if !reg.tramps.is_empty() {
        protocol::check_handler()?;
        membarrier::register()?;
    }
    st.plan.clear();
    for c in changes {
        plan_key(&mut st.plan, reg, c.key(), From::Target(c.key().load()), c.new);
    }
    let r = apply(
        st,
        reg,
        || changes.iter().for_each(|c| c.key().store(c.new)),
        || changes.iter().zip(old.iter()).for_each(|(c, &o)| c.key().store(o)),
    );
    st.plan.clear();
    r?;
    UPDATES.fetch_add(changes.len() as u64, Relaxed);
    Ok(())
}

/// Applies changes of keys this copy owns, deduplicated (see
/// `owner::update_many`). Allocates nothing.
pub fn update_many(changes: &[Change], old: &mut [*mut ()]) -> Result<(), Error> {
    let mut g = LOCK.lock()?;
    update_locked(g.state(), changes, old)
}

pub fn sites(key: &RawKey) -> Vec<Site> {
    // Hold the lock (when this thread can) so that no update is half-way.
    let _g = LOCK.lock().ok();
    let reg = registry::get();
    let initialized = INITIALIZED.load(Acquire);
    reg.sites_of(key)
        .iter()
        .map(|s| {
            let bytes = registry::current_bytes(s.at);
            let (state, reason) = match arch::site_state(s.at, &bytes, s.tramp, s.key.none as usize) {
                Some(SiteState::Direct) => (SiteState::Direct, None),
                Some(state) => (state, Some(NotDirect::NoTarget)),
                None => {
                    let reason = s.refused.unwrap_or(if SLOTS.get().is_some() {
                        NotDirect::Slots
                    } else if !initialized {
                        NotDirect::NotInitialized
                    } else if s.key.load().is_null() {
                        NotDirect::NoTarget
                    } else {
                        NotDirect::OutOfReach
                    });
                    (SiteState::Trampoline, Some(reason))
                }
            };
            Site { address: s.at, state, reason, bytes: pad(bytes) }
        })
        .collect()
}

pub fn sync_core_once() -> Result<(), Error> {
    membarrier::sync_core_once()
}

/// The address of `key`'s trampoline in this module.
pub fn trampoline(key: &RawKey) -> Option<usize> {
    registry::get().tramp_of(key).map(|t| t.at)
}

/// One instruction, as the architecture's disassembler prints it.
pub fn disassemble(at: usize, bytes: &[u8]) -> String {
    arch::disassemble(at, bytes)
}

// ---------------------------------------------------------------- unload

/// What [`unload`] did, for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unloaded {
    /// Never initialized (and no handler installed): nothing to do.
    Nothing,
    /// Shut down; the handler (x86-64) taken out of the chain, and every
    /// wait ended with its condition met.
    Clean,
    /// As `Clean`, but a wait for threads in the handler gave up after a
    /// second.
    GaveUp,
    /// An update poisoned this copy: the handler stays (its `int3`s may
    /// still be in the text).
    KeptPoisoned,
    /// The unloading thread is inside an update of this copy.
    Busy,
}

/// Runs when this copy's module is unloaded (`dlclose`) or the process
/// exits, once this copy initialized or installed its handler: stops its
/// updates for good (waiting for one in progress: [`shut_down`]), takes the
/// protocol's SIGTRAP handler out of the chain (x86-64), so that nothing
/// in the process still refers to this module's memory through SIGTRAP,
/// and closes the `/proc/self/mem` descriptor, which no update can use any
/// more (one per load of a plugin would leak). While this copy is
/// poisoned, its `int3`s may still be in the text: the handler stays.
pub fn unload() -> Unloaded {
    if !protocol::installed() && !initialized() {
        return Unloaded::Nothing;
    }
    match shut_down() {
        ShutDown::Done => {
            let clean = protocol::take_out();
            text::close();
            if clean {
                Unloaded::Clean
            } else {
                Unloaded::GaveUp
            }
        }
        ShutDown::Poisoned => Unloaded::KeptPoisoned,
        ShutDown::Busy => Unloaded::Busy,
    }
}

extern "C" fn unload_at_exit() {
    unload();
}

#[used]
#[unsafe(link_section = ".fini_array")]
static UNLOAD: extern "C" fn() = unload_at_exit;
