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
//! Once this copy shuts down (a plugin's, when it is unloaded or the
//! process exits; see [`unloadable`]) the lock is held for good and its
//! owner word carries `SHUT`: every later update returns `ShutDown` at
//! once. `fork()` is handled without atfork handlers but in the main
//! program's copy (see "Fork" below).
#![allow(unsafe_code)]

use crate::arch::native::{self as arch, protocol, INSN_LEN, PATCH_LEN, TRAMP_SIZE};
use crate::raw::{RawKey, Target};
use crate::os::linux::text::{self, Session};
use crate::os::linux::text_lock::{self, TextLock};
use crate::os::linux::{fork, futex_wait, futex_wake, membarrier, thread_id};
use crate::owner::Change;
use crate::registry::{self, BranchEntry, Registry, SiteEntry, TrampEntry};
use crate::site::{NotDirect, Site, SiteState};
use crate::{Error, Mode, Stats};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

// ---------------------------------------------------------------- counters

static UPDATES: AtomicU64 = AtomicU64::new(0);
static SITES_PATCHED: AtomicU64 = AtomicU64::new(0);
static BRANCH_SITES_PATCHED: AtomicU64 = AtomicU64::new(0);
pub fn stats() -> Stats {
    // Counted by the protocol's trap path (x86-64; zero elsewhere).
    let (traps_emulated, traps_rewound) = protocol::trap_stats();
    Stats {
        updates: UPDATES.load(Relaxed),
        sites_patched: SITES_PATCHED.load(Relaxed),
        branch_sites_patched: BRANCH_SITES_PATCHED.load(Relaxed),
        traps_emulated,
        traps_rewound,
    }
}

// ---------------------------------------------------------------- the lock

/// A mutex that knows its owner, so that an update from a signal handler that
/// interrupted an update on the same thread is refused instead of
/// deadlocking, and that a `fork()` child can take over. Allocation-free.
struct PatchLock {
    /// 0 when free, else the holder's kernel thread id (with [`SHUT`] once
    /// this copy shut down for good): the futex word.
    owner: AtomicU32,
    /// The holder's `pthread_self()`: what survives a `fork()` of the
    /// forking thread (its kernel thread id does not).
    holder: AtomicUsize,
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
    /// Where the update in progress is, for a `fork()` child that inherits
    /// it half-done from another thread of its parent (see "Fork").
    phase: Phase,
    pending: Option<Pending>,
}

/// How far the update in progress got.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing to finish: no update, or one that has written nothing yet.
    Idle,
    /// The new targets are being (or were) stored and the plan is being
    /// written: a child finishes writing it.
    Forward,
    /// A write failed and the old instructions are back: the old targets
    /// are being stored back, which a child finishes.
    Backward,
}

/// The changes of the update in progress, in the updating thread's memory
/// (which a `fork()` child inherits, like all of it).
#[derive(Clone, Copy)]
struct Pending {
    changes: *const Change,
    old: *const Target,
    n: usize,
    /// The update is `init`'s (its plan leads from the assembled forms).
    init: bool,
}

impl Pending {
    fn none(init: bool) -> Pending {
        Pending { changes: std::ptr::null(), old: std::ptr::null(), n: 0, init }
    }

    fn of(changes: &[Change], old: &[Target]) -> Pending {
        Pending { changes: changes.as_ptr(), old: old.as_ptr(), n: changes.len().min(old.len()), init: false }
    }

    /// Stores each key's new target (`forward`) or its old one.
    fn store(&self, forward: bool) {
        for i in 0..self.n {
            // SAFETY: `n` changes and `n` old targets, alive while the
            // update that recorded them runs, or in a `fork()` child that
            // inherited that thread's memory; the keys are statics.
            let (c, old) = unsafe { (*self.changes.add(i), *self.old.add(i)) };
            c.key().store(if forward { c.new } else { old });
        }
    }
}

static LOCK: PatchLock = PatchLock {
    owner: AtomicU32::new(0),
    holder: AtomicUsize::new(0),
    state: UnsafeCell::new(State {
        initialized: false,
        poisoned: None,
        plan: Vec::new(),
        phase: Phase::Idle,
        pending: None,
    }),
};
/// `init` has completed (a fast path that skips the lock).
static INITIALIZED: AtomicBool = AtomicBool::new(false);
/// Set once, by the `init` that found patching impossible: the reason. The
/// process then runs on the keys' slots for good (DESIGN 3.10).
static SLOTS: std::sync::OnceLock<Error> = std::sync::OnceLock::new();

/// Set in `LOCK.owner`, with the owner's thread id, once the copy is shut
/// down for good (thread ids are below 2^22).
const SHUT: u32 = 1 << 31;
/// Set in `LOCK.owner`, with the owner's thread id, while a thread may be
/// asleep waiting for it: only then does a release wake (a system call).
const WAITERS: u32 = 1 << 30;

/// The holder's thread id in an owner word (0: free).
fn holder_of(o: u32) -> u32 {
    o & !(SHUT | WAITERS)
}

/// Sleeps until the owner word may have changed from `o`, having marked it
/// as waited for. A thread that slept takes the lock with [`WAITERS`] set,
/// since others may still sleep.
fn wait_for_owner(o: u32) {
    if o & WAITERS != 0 || LOCK.owner.compare_exchange(o, o | WAITERS, Relaxed, Relaxed).is_ok() {
        futex_wait(&LOCK.owner, o | WAITERS);
    }
}

struct Guard;

/// The calling thread's `pthread_self()`. Async-signal-safe (a read of the
/// thread pointer).
fn self_thread() -> usize {
    // SAFETY: no preconditions.
    unsafe { libc::pthread_self() as usize }
}

impl PatchLock {
    fn lock(&'static self) -> Result<Guard, Error> {
        self.catch_up();
        let me = thread_id();
        let mut take = me;
        loop {
            match self.owner.compare_exchange(0, take, Acquire, Relaxed) {
                Ok(_) => {
                    self.holder.store(self_thread(), Release);
                    return Ok(Guard);
                }
                Err(o) if o & SHUT != 0 => return Err(Error::ShutDown),
                Err(o) if holder_of(o) == me => return Err(Error::Reentrant),
                // This thread writes text of another copy of this module (a
                // signal handler interrupted it), whose holder may wait for
                // that: never wait (`text_lock`, "Lock order").
                Err(_) if text_lock::held_here() => return Err(Error::Reentrant),
                Err(o) => {
                    wait_for_owner(o);
                    take = me | WAITERS;
                }
            }
        }
    }

    /// In a `fork()` child, the first time this copy is entered: see "Fork".
    fn catch_up(&'static self) {
        let gen = fork::generation();
        if LOCK_GENERATION.load(Acquire) == gen || LOCK_GENERATION.swap(gen, AcqRel) == gen {
            return;
        }
        protocol::after_fork_child();
        text::after_fork_child();
        let o = self.owner.load(Acquire);
        if o == 0 || o & SHUT != 0 {
            return;
        }
        if self.holder.load(Acquire) == self_thread() {
            // This thread forked from a signal handler that interrupted its
            // own update: it still holds the lock, under its new thread id,
            // and the interrupted update finishes in this child's text.
            self.owner.store(thread_id() | (o & WAITERS), Release);
            return;
        }
        // The holder was another thread of the parent, which this child
        // does not have: take the lock over and finish what it was doing.
        if crate::os::linux::thread_alive(holder_of(o))
            || self.owner.compare_exchange(o, thread_id() | (o & WAITERS), AcqRel, Relaxed).is_err()
        {
            return;
        }
        self.holder.store(self_thread(), Release);
        let mut g = Guard;
        finish_inherited(g.state());
    }
}

/// The fork generation this copy's lock state belongs to.
static LOCK_GENERATION: AtomicU64 = AtomicU64::new(1);

impl Guard {
    fn state(&mut self) -> &mut State {
        // SAFETY: this guard holds the lock; the borrow is tied to `&mut self`.
        unsafe { &mut *LOCK.state.get() }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        LOCK.holder.store(0, Relaxed);
        if LOCK.owner.swap(0, Release) & WAITERS != 0 {
            futex_wake(&LOCK.owner);
        }
    }
}

// ---------------------------------------------------------------- fork

// Only the copy in the main program registers `pthread_atfork` handlers: it
// is never unloaded. Its `prepare` waits for an update in progress, so its
// children never inherit half-patched text of its keys. A copy in a plugin
// registers none: it can be unloaded, and glibc calls each handler with its
// lock dropped, so a fork racing the `dlclose` would call into unmapped
// text (`os::linux::fork`). A fork does not wait for such a copy's update
// in progress, then. The child inherits its
// parent's memory at one instant: the text half-patched, perhaps, and this
// copy's state as the updating thread had left it, the published plan
// included, so the SIGTRAP handler keeps emulating every `int3` of it and
// every call stays right. The first time the child enters this copy
// (`PatchLock::catch_up`: every update, `init`, `sites`, unload) it notices
// the new fork generation and resets what belongs to the parent's threads
// (the handler's counts, the `/proc/self/mem` descriptor, the membarrier
// registration), then finishes the update the lock's holder was making,
// from the phase it had reached (`finish_inherited`): forward (the plan
// written again from the start, which is valid from any mixture of old,
// guarded and new instructions, and the new targets stored), or backward
// (the old targets stored back). A fork from a signal handler that
// interrupted an update of the forking thread itself leaves the lock with
// that thread, which finishes its update in the child.

/// What `prepare` did: took the lock (`TOOK`), found it held by the
/// forking thread itself (`MINE`: a fork from a signal handler that
/// interrupted an update), or left it (`LEFT`: this copy is shut down, or
/// the forking thread holds the module's text lock for another copy, so it
/// must not wait: `text_lock`'s "Lock order").
static FORK_LOCK: AtomicU8 = AtomicU8::new(TOOK);
const TOOK: u8 = 0;
const MINE: u8 = 1;
const LEFT: u8 = 2;

extern "C" fn fork_prepare() {
    // Wait for any update to finish, so the child never inherits
    // half-patched text.
    let me = thread_id();
    let mut take = me;
    let state = loop {
        match LOCK.owner.compare_exchange(0, take, Acquire, Relaxed) {
            Ok(_) => break TOOK,
            Err(o) if holder_of(o) == me => break MINE,
            Err(o) if o & SHUT != 0 || text_lock::held_here() => break LEFT,
            Err(o) => {
                wait_for_owner(o);
                take = me | WAITERS;
            }
        }
    };
    if state == TOOK {
        LOCK.holder.store(self_thread(), Release);
    }
    FORK_LOCK.store(state, Relaxed);
}

extern "C" fn fork_parent() {
    if FORK_LOCK.load(Relaxed) == TOOK {
        drop(Guard);
    }
}

extern "C" fn fork_child() {
    // The child has one thread. If `prepare` took the lock, no update was in
    // progress: the lock is free. If the forking thread held it (a fork from
    // a signal handler that interrupted its update), the child's only thread
    // still does, under its new thread id (a further update from it is
    // `Reentrant`), and the interrupted update finishes in the child's own
    // text. What belongs to the parent's threads is reset now, rather than
    // on the first entry. If `prepare` left the lock to another thread of
    // the parent, the child's first entry takes it over (`catch_up`).
    match FORK_LOCK.load(Relaxed) {
        TOOK => {
            LOCK_GENERATION.store(fork::generation(), Release);
            protocol::after_fork_child();
            text::after_fork_child();
            LOCK.holder.store(0, Relaxed);
            LOCK.owner.store(0, Release);
        }
        MINE => {
            LOCK_GENERATION.store(fork::generation(), Release);
            protocol::after_fork_child();
            text::after_fork_child();
            LOCK.owner.store(thread_id(), Release);
        }
        _ => {}
    }
}

/// Registers the atfork handlers, once, if this copy is in the main
/// program (see "Fork").
fn register_atfork() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !NO_ATFORK.load(Relaxed) && crate::os::linux::in_main_program(register_atfork as fn() as usize) {
            // SAFETY: the three handlers are async-signal-safe functions of
            // a module that is never unloaded.
            unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
        }
    });
}

/// Whether this copy shuts down when its module's destructors run (its
/// `.fini_array` hook). A copy in a plugin does, when the plugin is
/// unloaded (`dlclose`) or the process exits: its text may be unmapped
/// next, so no update of it may start again (they return
/// [`Error::ShutDown`]) and its SIGTRAP handler leaves the chain. The copy
/// in the main program never does: its text is never unmapped, and the
/// process's last destructors, `atexit` handlers and threads still running
/// while `main` returns may update its keys until the end. Its hook also
/// runs after every other destructor of its module (priority 100: after
/// those with priority 101 and up, the lowest a program may use, and those
/// with none), so a plugin's own destructors may still update its keys.
/// Takes the loader's lock: not for signal handlers.
pub fn unloadable() -> bool {
    !crate::os::linux::in_main_program(unloadable as fn() -> bool as usize)
}

/// Updates a `fork()` child found half-done and finished (tests).
pub(crate) static INHERITED: AtomicU64 = AtomicU64::new(0);

/// Test hook: behave as a copy in a plugin (no atfork handlers), so that a
/// test can fork in the middle of this copy's updates.
pub(crate) static NO_ATFORK: AtomicBool = AtomicBool::new(false);

/// A `fork()` child took over the lock from a thread of its parent: finish
/// that thread's update (see "Fork").
fn finish_inherited(st: &mut State) {
    if st.phase != Phase::Idle {
        INHERITED.fetch_add(1, Relaxed);
    }
    let pending = st.pending.take();
    match st.phase {
        Phase::Idle => {}
        Phase::Backward => {
            if let Some(p) = pending {
                p.store(false);
            }
        }
        Phase::Forward => {
            if let Some(p) = pending {
                p.store(true);
            }
            if !st.plan.is_empty() {
                if let Err(e) = rewrite(&st.plan) {
                    st.poisoned = Some(e);
                }
            }
            if pending.is_some_and(|p| p.init) && st.poisoned.is_none() {
                st.initialized = true;
                INITIALIZED.store(true, Release);
            }
        }
    }
    st.phase = Phase::Idle;
    st.plan.clear();
}

/// Writes a verified plan again from the start (a `fork()` child finishing
/// an inherited update), then retires it. Any failure poisons.
fn rewrite(plan: &[Patch]) -> Result<(), Error> {
    let _text = TextLock::take_as(holder_of(LOCK.owner.load(Relaxed)))?;
    let writer = text::for_update(plan[0].at)?;
    let session = Session::open(writer, plan.iter().map(|p| p.at), PATCH_LEN)?;
    let written = protocol::resume(&session, plan);
    let restored = session.close();
    let poisoned = |e: Error| match e {
        Error::TextNotWritable { address, proc_mem_errno, errno } => {
            Error::Poisoned { address, errno: proc_mem_errno.max(errno) }
        }
        e => e,
    };
    written.map_err(|(e, _)| poisoned(e))?;
    protocol::retire();
    restored
}

// ---------------------------------------------------------------- the plan

/// One instruction to rewrite: a patch (`arch::PATCH_LEN` bytes at `at`,
/// a trampoline's or `arch::site_patch_at` of a site's), its bytes now and
/// its bytes to be.
#[derive(Clone, Copy, Debug)]
pub struct Patch {
    pub at: usize,
    pub old: [u8; PATCH_LEN],
    pub new: [u8; PATCH_LEN],
    pub is_site: bool,
    /// A static-branch site's patch (`is_site` too).
    pub is_branch: bool,
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

/// This copy's module is being unloaded: waits for an update in progress to
/// finish, then keeps the lock for good (marked `SHUT`), so that no update
/// of this copy starts again: every later one, from any thread, returns
/// [`Error::ShutDown`] at once, and wakes those that were waiting.
pub fn shut_down() -> ShutDown {
    LOCK.catch_up();
    let me = thread_id();
    let mut take = me;
    loop {
        match LOCK.owner.compare_exchange(0, take, Acquire, Relaxed) {
            Ok(_) => break,
            // Shut down already (the unload path runs again at exit, maybe
            // on another thread): the state is frozen.
            Err(o) if o & SHUT != 0 => {
                return if SHUT_POISONED.load(Acquire) { ShutDown::Poisoned } else { ShutDown::Done };
            }
            Err(o) if holder_of(o) == me || text_lock::held_here() => return ShutDown::Busy,
            Err(o) => {
                wait_for_owner(o);
                take = me | WAITERS;
            }
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

/// What a site's patch holds when its key's target is `target` (null:
/// none).
fn site_form(s: &SiteEntry, target: *mut ()) -> [u8; PATCH_LEN] {
    arch::site_form(s.at, s.tramp, registry::slot_addr(s.key), target as usize, s.key.none as usize, s.key.no_target)
}

/// What a trampoline's patch holds when its key's target is `target`.
fn tramp_form(t: &TrampEntry, target: *mut ()) -> [u8; PATCH_LEN] {
    arch::tramp_form(t.at, target as usize, t.key.none as usize, t.key.no_target)
}

/// What a key's trampoline and sites hold now: the assembled forms (every
/// site calls the trampoline, whose head jumps through the slot), or the
/// forms of a target.
enum From {
    Assembled,
    Target(*mut ()),
}

/// What a branch site's patch holds when its key's value is `value`.
fn branch_form(b: &BranchEntry, value: *mut ()) -> [u8; PATCH_LEN] {
    arch::branch_form(b.at, b.label, b.taken(value)).expect("checked at load")
}

fn plan_branches(plan: &mut Vec<Patch>, reg: &Registry, key: &RawKey, from: From, to: *mut ()) {
    for b in reg.branches_of(key).iter().filter(|b| b.refused.is_none()) {
        let old = match from {
            From::Assembled => arch::assembled_branch(b.at, b.test).expect("checked at load"),
            From::Target(p) => branch_form(b, p),
        };
        debug_assert!(plan.len() < plan.capacity(), "plan capacity reserved at init");
        plan.push(Patch { at: arch::site_patch_at(b.at), old, new: branch_form(b, to), is_site: true, is_branch: true });
    }
}

fn plan_key(plan: &mut Vec<Patch>, reg: &Registry, key: &RawKey, from: From, to: *mut ()) {
    if key.branch {
        return plan_branches(plan, reg, key, from, to);
    }
    let Some(t) = reg.tramp_of(key) else { return };
    let old = match from {
        From::Assembled => arch::assembled_tramp(t.at),
        From::Target(p) => tramp_form(t, p),
    };
    push(plan, t.at, old, tramp_form(t, to), false);
    for s in reg.sites_of(key).iter().filter(|s| s.refused.is_none()) {
        let old = match from {
            From::Assembled => arch::assembled_site(s.at, s.tramp).expect("checked at load"),
            From::Target(p) => site_form(s, p),
        };
        push(plan, arch::site_patch_at(s.at), old, site_form(s, to), true);
    }
}

fn push(plan: &mut Vec<Patch>, at: usize, old: [u8; PATCH_LEN], new: [u8; PATCH_LEN], is_site: bool) {
    debug_assert!(arch::decode_patch(at, &new).is_some(), "we decode what we encode");
    debug_assert!(plan.len() < plan.capacity(), "plan capacity reserved at init");
    plan.push(Patch { at, old, new, is_site, is_branch: false });
}

// ---------------------------------------------------------------- applying

/// Verifies and writes the plan. Once nothing can fail any more but the
/// writes themselves, stores the new targets of `pending`'s keys; puts the
/// old ones back if a write fails and the text could be restored.
fn apply(st: &mut State, reg: &Registry, pending: Pending) -> Result<(), Error> {
    st.plan.retain(|p| p.old != p.new);
    for p in st.plan.iter() {
        let found = registry::current_bytes(p.at);
        if found != p.old {
            let (address, found, expected) = arch::window(p.at, &found, &p.old, p.is_site);
            return Err(Error::UnexpectedBytes { address, found, expected });
        }
    }
    for t in reg.tramps.iter().filter(|t| t.damaged && st.plan.iter().any(|p| p.at == t.at)) {
        if let Some((address, found, expected)) = registry::tramp_damage(t) {
            return Err(Error::UnexpectedBytes { address, found: pad(found), expected: pad(expected) });
        }
    }
    st.plan.sort_unstable_by_key(|p| p.at);
    if st.plan.is_empty() {
        pending.store(true);
        return Ok(());
    }
    protocol::may_write()?;
    // Every copy of this crate in this module writes its text under the
    // module's text lock (see `text_lock`); held until the session closed.
    let _text = TextLock::take_as(holder_of(LOCK.owner.load(Relaxed)))?;
    let writer = text::for_update(st.plan[0].at)?;
    let session = Session::open(writer, st.plan.iter().map(|p| p.at), PATCH_LEN).inspect_err(|e| {
        if let Error::ProtectionNotRestored { .. } = e {
            st.poisoned = Some(*e);
        }
    })?;
    // From here on a `fork()` child that inherits this update finishes it
    // (see "Fork").
    st.pending = Some(pending);
    st.phase = Phase::Forward;
    std::sync::atomic::fence(SeqCst);
    pending.store(true);
    let written = protocol::write(&session, &st.plan);
    // The mprotect writer's pages get their protection back on every path;
    // if one cannot, that outranks whatever else happened.
    let restored = session.close();
    let r = match written {
        Ok(()) => {
            protocol::retire();
            let branches = st.plan.iter().filter(|p| p.is_branch).count() as u64;
            let sites = st.plan.iter().filter(|p| p.is_site).count() as u64 - branches;
            SITES_PATCHED.fetch_add(sites, Relaxed);
            BRANCH_SITES_PATCHED.fetch_add(branches, Relaxed);
            Ok(())
        }
        Err((e, repair)) => fail(st, e, repair, pending),
    };
    st.phase = Phase::Idle;
    st.pending = None;
    if let Err(e) = restored {
        st.poisoned = Some(e);
        return Err(e);
    }
    r
}

/// A five- (x86-64) or four-byte (aarch64) instruction's bytes as the
/// public types hold them (five bytes; on aarch64 the four, then a zero).
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
fn fail(st: &mut State, e: Error, repair: Result<(), Error>, pending: Pending) -> Result<(), Error> {
    if repair.is_ok() {
        membarrier::sync_core();
        protocol::retire();
        st.phase = Phase::Backward;
        std::sync::atomic::fence(SeqCst);
        pending.store(false);
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
    // First, so that a fork child is told without a system call on the
    // slots too.
    fork::arm();
    protocol::requirements()?;
    membarrier::register()?;
    let probe_at = reg.tramps.first().map_or(probe_address(), |t| t.at + TRAMP_SIZE - 1);
    // The probe writes (and the mprotect one changes a page's protection):
    // under the module's text lock, as every write.
    {
        let _text = TextLock::take_as(holder_of(LOCK.owner.load(Relaxed)))?;
        text::probe(probe_at)?;
    }
    protocol::install()?;
    register_atfork();
    st.plan.reserve_exact(reg.sites.len() + reg.tramps.len() + reg.branches.len());
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
        if t.key.rust {
            // A Rust target's shim that only tail-jumps: its sites call
            // where it jumps (the same code, one jump fewer). Nothing reads
            // the stored code yet but this plan: every site and trampoline
            // still holds its assembled form.
            let code = t.key.load();
            let to = crate::rust_fn::threaded(code);
            if to != code {
                t.key.store(Target::shim(to, t.key.load_shown()));
            }
        }
        plan_key(&mut st.plan, reg, t.key, From::Assembled, t.key.load());
    }
    // Branch keys have no trampoline: each distinct key of the branch
    // sites (sorted by key) from its assembled tests to its value.
    let mut last: *const RawKey = std::ptr::null();
    for b in reg.branches.iter() {
        if !std::ptr::eq(b.key, last) {
            last = b.key;
            plan_branches(&mut st.plan, reg, b.key, From::Assembled, b.key.load());
        }
    }
    // A write that fails here is undone (or poisons): init can be retried.
    let r = apply(st, reg, Pending::none(true));
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

/// The fork generation whose first update checked the handler chain.
static CHAIN_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Whether our SIGTRAP handler still gets the traps. In a `fork()` child, the
/// first update also repairs one thing the child may inherit broken: the
/// kernel copies a process's signal dispositions before its memory, so a
/// child forked while another thread took a plugin's copy out of the chain
/// (at `dlclose`) can find that copy's handler still installed while the
/// copy itself already counts as taken out (and its chain reaches no one).
/// Then ours is put back on top, as `init()` would; a foreign handler in
/// that place stays an error (`HandlerDisplaced`), as in the parent.
fn check_handler() -> Result<(), Error> {
    match protocol::check_handler() {
        Err(e @ Error::HandlerDisplaced { .. }) => {
            let gen = fork::generation();
            if gen != 1 && CHAIN_GENERATION.swap(gen, AcqRel) != gen {
                return protocol::reinstall_in_child();
            }
            Err(e)
        }
        r => r,
    }
}

/// Applies `changes` (each key at most once, every key owned by this copy)
/// and returns, in `old`, each key's previous target (null: none).
fn update_locked(st: &mut State, changes: &[Change], old: &mut [Target]) -> Result<(), Error> {
    if let Some(e) = st.poisoned {
        return Err(e);
    }
    let slots = match init_locked(st) {
        Ok(()) => false,
        Err(_) if SLOTS.get().is_some() => true,
        Err(e) => return Err(e),
    };
    for (o, c) in old.iter_mut().zip(changes) {
        *o = c.key().load_target();
    }
    if slots {
        // Nothing is patched: every call jumps through the slot, so one
        // store per key is the whole update, correct at once (and finished
        // by a `fork()` child that inherits it half-done).
        st.pending = Some(Pending::of(changes, old));
        st.phase = Phase::Forward;
        std::sync::atomic::fence(SeqCst);
        Pending::of(changes, old).store(true);
        st.phase = Phase::Idle;
        st.pending = None;
        UPDATES.fetch_add(changes.len() as u64, Relaxed);
        return Ok(());
    }
    let reg = registry::get();
    if !reg.tramps.is_empty() || !reg.branches.is_empty() {
        check_handler()?;
        membarrier::register()?;
    }
    st.plan.clear();
    for c in changes {
        plan_key(&mut st.plan, reg, c.key(), From::Target(c.key().load()), c.new.code);
    }
    let r = apply(st, reg, Pending::of(changes, old));
    st.plan.clear();
    r?;
    UPDATES.fetch_add(changes.len() as u64, Relaxed);
    Ok(())
}

/// Applies changes of keys this copy owns, deduplicated (see
/// `owner::update_many`). Allocates nothing.
pub fn update_many(changes: &[Change], old: &mut [Target]) -> Result<(), Error> {
    let mut g = LOCK.lock()?;
    update_locked(g.state(), changes, old)
}

/// The sites of a branch key (see [`sites`]).
fn branch_sites(reg: &Registry, key: &RawKey, initialized: bool) -> Vec<Site> {
    reg.branches_of(key)
        .iter()
        .map(|b| {
            let bytes = registry::current_bytes(arch::site_patch_at(b.at));
            let (state, reason) = match arch::branch_state(b.at, &bytes, b.test) {
                Some(state) if b.refused.is_none() => (state, None),
                _ => {
                    let reason = b.refused.unwrap_or(if SLOTS.get().is_some() {
                        NotDirect::Slots
                    } else if !initialized {
                        NotDirect::NotInitialized
                    } else {
                        // Patched by every `init`: an unpatched branch site
                        // after it was refused at load.
                        NotDirect::Refused(arch::site_bytes(&bytes))
                    });
                    (SiteState::Trampoline, Some(reason))
                }
            };
            Site { address: b.at, state, reason, bytes: arch::site_bytes(&bytes) }
        })
        .collect()
}

pub fn sites(key: &RawKey) -> Vec<Site> {
    // Hold the lock (when this thread can) so that no update is half-way.
    let _g = LOCK.lock().ok();
    let reg = registry::get();
    let initialized = INITIALIZED.load(Acquire);
    if key.branch {
        return branch_sites(reg, key, initialized);
    }
    reg.sites_of(key)
        .iter()
        .map(|s| {
            let bytes = registry::current_bytes(arch::site_patch_at(s.at));
            let (state, reason) = match arch::site_state(s.at, &bytes, s.tramp, s.key.none as usize, !s.key.load().is_null()) {
                Some(SiteState::Direct) => (SiteState::Direct, None),
                Some(SiteState::Indirect) => (SiteState::Indirect, Some(NotDirect::OutOfReach)),
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
            Site { address: s.at, state, reason, bytes: arch::site_bytes(&bytes) }
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
    if (protocol::installed() || initialized()) && unloadable() {
        unload();
    }
}

/// Priority 100: after every destructor of the module with a priority of
/// its own (101 and up, the lowest a program may use) or none (see
/// [`unloadable`]).
#[used]
#[unsafe(link_section = ".fini_array.00100")]
static UNLOAD: extern "C" fn() = unload_at_exit;
