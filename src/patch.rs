//! The patch protocol: rewriting call sites and trampolines while other
//! threads execute them.
//!
//! Under one process-wide lock, an update
//!
//! 1. computes the new bytes of every site and trampoline of the keys it
//!    changes, and the bytes each holds now by our own account;
//! 2. verifies that each holds exactly those bytes, and refuses the whole
//!    update otherwise (nothing is written);
//! 3. drops the entries whose bytes do not change, sorts the rest by address,
//!    stores the new targets in the keys' slots, and publishes the entries
//!    for the SIGTRAP handler;
//! 4. writes `int3` on each first byte, syncs all cores; writes bytes 1..5 of
//!    each (where they change), syncs; writes each first byte, syncs;
//! 5. retracts the entries and waits until no handler still reads them.
//!
//! "Sync" is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`. A thread
//! that executes an `int3` while it is in place traps; the handler emulates
//! the new instruction for it (or, if the update finished before the handler
//! looked, rewinds it to execute the instruction again). Every instruction
//! written is a single five-byte instruction, so a thread is never inside one.
//!
//! # Safety
//!
//! The descriptor the handler reads is the patch plan, which lives in the
//! lock-protected state and is neither moved nor reused until every handler
//! that might read it has finished (`READERS` drops to zero, or below in a
//! fork child, after `SEQ` turns even). `retract` sleeps on `READERS` as a
//! futex and the last reader to leave wakes it (`FUTEX_WAKE` is
//! async-signal-safe), so a real-time updater never spins against a reader
//! preempted on its CPU. Text is written only through
//! `os::linux::text::Session`, only at addresses from the registry, and only
//! after their bytes were verified.
//!
//! Once this copy shuts down (its module is unloaded, or the process exits)
//! the lock is held for good and its owner word carries `SHUT`: a `fork()`
//! then never waits for it (`fork_prepare` returns without the lock), since
//! glibc unregisters this copy's atfork handlers only after the destructor
//! that shut it down.
#![allow(unsafe_code)]

use crate::arch::x86_64::{decode, encode, far_head, Insn, INSN_LEN, INT3, NOP5, RET5, TRAMP_SIZE, ZERO5};
use crate::key::{NoTarget, RawKey};
use crate::os::linux::signal::{self, Trap};
use crate::os::linux::text::{self, Session, StepFailed};
use crate::os::linux::{membarrier, shadow_stack_enabled, sigtrap_blocked, thread_id};
use crate::owner::Change;
use crate::registry::{self, Registry, SiteEntry, TrampEntry};
use crate::site::{NotDirect, Site, SiteState};
use crate::{Error, Mode, Stats};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

// ---------------------------------------------------------------- counters

static UPDATES: AtomicU64 = AtomicU64::new(0);
static SITES_PATCHED: AtomicU64 = AtomicU64::new(0);
static TRAPS_EMULATED: AtomicU64 = AtomicU64::new(0);
static TRAPS_REWOUND: AtomicU64 = AtomicU64::new(0);

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

fn futex_wait(word: &AtomicU32, val: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 with no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            val,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX);
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
    // the child's own text. Handlers of other parent threads counted in
    // READERS do not exist here. The `/proc/self/mem` descriptor is made to
    // name the child's memory (the interrupted update may hold its number),
    // and the membarrier registration is redone by process id.
    // A shut-down copy stays shut down. The SIGTRAP handler's bookkeeping
    // is reset the same way (`signal::after_fork_child`).
    let owner = LOCK.owner.load(Relaxed);
    let owner = if owner & SHUT != 0 {
        owner
    } else if FORK_LOCKED.load(Relaxed) {
        0
    } else {
        thread_id()
    };
    LOCK.owner.store(owner, Release);
    READERS.store(0, SeqCst);
    signal::after_fork_child();
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

// ---------------------------------------------------------------- the descriptor

/// One instruction to rewrite.
#[derive(Clone, Copy, Debug)]
struct Patch {
    at: usize,
    old: [u8; INSN_LEN],
    new: [u8; INSN_LEN],
    /// `new`, decoded, for the handler to emulate.
    insn: Insn,
    is_site: bool,
}

/// Odd while a plan is published; bumped on publish and on retract.
static SEQ: AtomicUsize = AtomicUsize::new(0);
static PLAN_PTR: AtomicUsize = AtomicUsize::new(0);
static PLAN_LEN: AtomicUsize = AtomicUsize::new(0);
/// Handlers currently reading the published plan (a futex word: the last
/// reader to leave wakes a waiting `retract`). Read as signed: a fork child
/// resets it to zero, after which a reader the forking thread was takes it
/// below.
static READERS: AtomicU32 = AtomicU32::new(0);
/// `retract` is waiting (or about to wait) for READERS.
static RETRACTING: AtomicBool = AtomicBool::new(false);
/// How many times `retract` found readers and waited (for tests: it must
/// sleep until woken, never spin).
static RETRACT_WAITS: AtomicU64 = AtomicU64::new(0);
/// Test hook: called first thing by the SIGTRAP handler for our traps.
static TRAP_HOOK: AtomicUsize = AtomicUsize::new(0);
/// Test hook: called by the SIGTRAP handler while it is counted as a reader
/// of the published plan.
static READER_HOOK: AtomicUsize = AtomicUsize::new(0);

fn publish(plan: &[Patch]) {
    PLAN_PTR.store(plan.as_ptr() as usize, SeqCst);
    PLAN_LEN.store(plan.len(), SeqCst);
    SEQ.fetch_add(1, SeqCst);
}

/// Unpublishes the plan and waits until no handler still reads it. Sleeps
/// on the READERS futex (never spins: a real-time updater spinning would
/// starve a reader preempted on its CPU); the last reader to leave wakes it.
fn retract() {
    SEQ.fetch_add(1, SeqCst);
    RETRACTING.store(true, SeqCst);
    loop {
        let r = READERS.load(SeqCst);
        if r as i32 <= 0 {
            break;
        }
        RETRACT_WAITS.fetch_add(1, Relaxed);
        futex_wait(&READERS, r);
    }
    RETRACTING.store(false, SeqCst);
}

/// How many times `retract` waited for readers (tests).
pub fn retract_waits() -> u64 {
    RETRACT_WAITS.load(Relaxed)
}

fn run_hook(hook: &AtomicUsize) {
    let h = hook.load(SeqCst);
    if h != 0 {
        // SAFETY: only the `set_*_hook` functions store here, an `extern "C" fn()`.
        let f: extern "C" fn() = unsafe { std::mem::transmute(h) };
        f();
    }
}

/// The instruction the published plan writes at `at`, if a plan is published
/// (`seq` odd) and has it. Async-signal-safe.
fn published_insn(at: usize) -> (usize, Option<Insn>) {
    READERS.fetch_add(1, SeqCst);
    let seq = SEQ.load(SeqCst);
    let mut found = None;
    if seq % 2 == 1 {
        let (ptr, len) = (PLAN_PTR.load(SeqCst), PLAN_LEN.load(SeqCst));
        // SAFETY: while `seq` is odd and we are counted in READERS, the plan
        // is live and unchanged (`retract` waits for us).
        let plan = unsafe { std::slice::from_raw_parts(ptr as *const Patch, len) };
        if let Ok(i) = plan.binary_search_by_key(&at, |p| p.at) {
            found = plan.get(i).map(|p| p.insn);
        }
    }
    run_hook(&READER_HOOK);
    // The last reader out wakes a waiting `retract` (FUTEX_WAKE is
    // async-signal-safe). SeqCst on both sides: either `retract` sees our
    // decrement, or we see it waiting.
    if READERS.fetch_sub(1, SeqCst) == 1 && RETRACTING.load(SeqCst) {
        futex_wake(&READERS);
    }
    (seq, found)
}

/// What the SIGTRAP handler should do about a trap whose `int3` was at `at`.
/// Async-signal-safe.
pub fn on_trap(at: usize) -> Trap {
    let Some(reg) = registry::published() else { return Trap::NotOurs };
    if !reg.is_ours(at) {
        return Trap::NotOurs;
    }
    run_hook(&TRAP_HOOK);
    loop {
        let (seq, insn) = published_insn(at);
        if let Some(insn) = insn {
            TRAPS_EMULATED.fetch_add(1, Relaxed);
            return Trap::Emulate(insn);
        }
        // Not being patched now. If our int3 is gone, the update finished
        // between the trap and this handler: run the instruction again.
        // SAFETY: `at` is an instruction of ours (registry), mapped readable.
        let byte = unsafe { std::ptr::read_volatile(at as *const u8) };
        std::sync::atomic::fence(SeqCst);
        if byte != INT3 {
            TRAPS_REWOUND.fetch_add(1, Relaxed);
            return Trap::Rewind;
        }
        // Our int3 is still there. If no update started or ended since we
        // looked at the plan, this int3 is not ours (a debugger's
        // breakpoint on our address): pass it on. Otherwise look again.
        if SEQ.load(SeqCst) == seq {
            return Trap::NotOurs;
        }
    }
}

pub fn set_trap_hook(hook: Option<extern "C" fn()>) {
    TRAP_HOOK.store(hook.map_or(0, |f| f as usize), SeqCst);
}

pub fn set_reader_hook(hook: Option<extern "C" fn()>) {
    READER_HOOK.store(hook.map_or(0, |f| f as usize), SeqCst);
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

fn no_target_site(key: &RawKey) -> [u8; INSN_LEN] {
    match key.no_target {
        NoTarget::Nop => NOP5,
        NoTarget::Zero => ZERO5,
    }
}

/// What a site holds when its key's target is `target`.
fn site_form(s: &SiteEntry, target: *mut ()) -> [u8; INSN_LEN] {
    if target.is_null() {
        return no_target_site(s.key);
    }
    encode(s.at, Insn::Call(target as usize))
        .or_else(|| encode(s.at, Insn::Call(s.tramp)))
        .expect("a site reaches its trampoline")
}

/// What a trampoline head holds when its key's target is `target`.
fn tramp_form(t: &TrampEntry, target: *mut ()) -> [u8; INSN_LEN] {
    if target.is_null() {
        return match t.key.no_target {
            NoTarget::Nop => RET5,
            NoTarget::Zero => ZERO5,
        };
    }
    encode(t.at, Insn::Jmp(target as usize)).unwrap_or_else(|| far_head(t.at))
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
        From::Assembled => far_head(t.at),
        From::Target(p) => tramp_form(t, p),
    };
    push(plan, t.at, old, tramp_form(t, to), false);
    for s in reg.sites_of(key).iter().filter(|s| s.refused.is_none()) {
        let old = match from {
            From::Assembled => encode(s.at, Insn::Call(s.tramp)).expect("checked at load"),
            From::Target(p) => site_form(s, p),
        };
        push(plan, s.at, old, site_form(s, to), true);
    }
}

fn push(plan: &mut Vec<Patch>, at: usize, old: [u8; INSN_LEN], new: [u8; INSN_LEN], is_site: bool) {
    let insn = decode(at, &new).expect("we decode what we encode");
    debug_assert!(plan.len() < plan.capacity(), "plan capacity reserved at init");
    plan.push(Patch { at, old, new, insn, is_site });
}

// ---------------------------------------------------------------- applying

fn sync() {
    membarrier::sync_core();
}

/// Verifies and writes `plan`. `commit` stores the new targets in the keys'
/// slots once nothing can fail any more but the writes themselves; `revert`
/// puts the old ones back if a write fails and the text could be restored.
fn apply(st: &mut State, reg: &Registry, commit: impl FnOnce(), revert: impl FnOnce()) -> Result<(), Error> {
    let plan = &mut st.plan;
    plan.retain(|p| p.old != p.new);
    for p in plan.iter() {
        let found = registry::current_bytes(p.at);
        if found != p.old {
            return Err(Error::UnexpectedBytes { address: p.at, found, expected: p.old });
        }
    }
    for t in reg.tramps.iter().filter(|t| t.damaged && plan.iter().any(|p| p.at == t.at)) {
        if let Some((address, found, expected)) = registry::tramp_damage(t) {
            return Err(Error::UnexpectedBytes { address, found, expected });
        }
    }
    plan.sort_unstable_by_key(|p| p.at);
    if plan.is_empty() {
        commit();
        return Ok(());
    }
    // Never write an int3 while this thread blocks SIGTRAP: its mask is
    // usually every thread's, and a thread meeting the int3 with SIGTRAP
    // blocked kills the process.
    if sigtrap_blocked() {
        return Err(Error::SigtrapBlocked);
    }
    let writer = text::for_update(plan[0].at)?;
    let session = Session::open(writer, plan.iter().map(|p| p.at), INSN_LEN).inspect_err(|e| {
        if let Error::ProtectionNotRestored { .. } = e {
            st.poisoned = Some(*e);
        }
    })?;
    commit();
    publish(plan);
    let written = write_protocol(&session, plan);
    // The mprotect writer's pages get their protection back on every path;
    // if one cannot, that outranks whatever else happened.
    let restored = session.close();
    let r = match written {
        Ok(()) => {
            retract();
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

/// One step of the protocol: `writes` sorted by address.
fn step<'a>(session: &Session, writes: impl IntoIterator<Item = (usize, &'a [u8])>) -> Result<(), StepFailed> {
    // SAFETY: addresses from the registry, verified by `apply` and covered
    // by the session; a multi-byte write happens only while an int3 guards
    // its instruction and after all cores synced on that int3 (the callers
    // below); `apply`'s caller holds the patch lock.
    unsafe { session.write_step(writes) }
}

/// Steps 1 to 3 of the protocol, each one `step` (one write per page), and
/// the syncs. On failure: the error, and whether the repair (the rollback)
/// restored every instruction.
fn write_protocol(session: &Session, plan: &[Patch]) -> Result<(), (Error, Result<(), Error>)> {
    // Step 1: guard every instruction with int3.
    if let Err(f) = step(session, plan.iter().map(|p| (p.at, &[INT3][..]))) {
        // Bytes 1..5 are untouched: removing the int3s that may have been
        // written restores the old instructions.
        let undo = step(session, plan[..f.reached].iter().map(|p| (p.at, &p.old[..1])));
        return Err((f.error, undo.map_err(|u| u.error)));
    }
    sync();

    // Step 2: the bodies, where they change.
    let changed = |p: &&Patch| p.new[1..] != p.old[1..];
    let body_changed = plan.iter().any(|p| changed(&p));
    if let Err(f) = step(session, plan.iter().filter(changed).map(|p| (p.at + 1, &p.new[1..]))) {
        // Every instruction is still guarded: put the old bodies back,
        // then the old first bytes.
        let undo = step(session, plan.iter().filter(changed).map(|p| (p.at + 1, &p.old[1..]))).and_then(|()| {
            sync();
            step(session, plan.iter().map(|p| (p.at, &p.old[..1])))
        });
        return Err((f.error, undo.map_err(|u| u.error)));
    }
    if body_changed {
        sync();
    }

    // Step 3: the first bytes. A failure here leaves some instructions new
    // and the rest guarded with new bodies: finishing them is the way out.
    let first_bytes = || plan.iter().map(|p| (p.at, &p.new[..1]));
    if step(session, first_bytes()).is_err() {
        if let Err(f) = step(session, first_bytes()) {
            return Err((f.error, Err(f.error)));
        }
    }
    sync();
    Ok(())
}

/// A write failed mid-protocol and `repair` tried to restore every
/// instruction. If it succeeded, the breakpoints are gone: retract the plan,
/// put the old targets back, and report `e`. Otherwise the plan stays
/// published forever, so the int3s left behind keep being emulated (as the
/// new instructions, whose targets are stored), and no further update runs.
fn fail(st: &mut State, e: Error, repair: Result<(), Error>, revert: impl FnOnce()) -> Result<(), Error> {
    if repair.is_ok() {
        sync();
        retract();
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
    if shadow_stack_enabled() {
        return Err(Error::ShadowStack);
    }
    // A thread meeting an int3 with SIGTRAP blocked kills the process, and
    // the initializing thread's mask is usually everyone's.
    if sigtrap_blocked() {
        return Err(Error::SigtrapBlocked);
    }
    membarrier::register()?;
    let probe_at = reg.tramps.first().map_or(probe_address(), |t| t.at + TRAMP_SIZE - 1);
    text::probe(probe_at)?;
    signal::install()?;
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
        if !signal::installed() || signal::check().is_ok() {
            return Ok(());
        }
    }
    let mut g = LOCK.lock()?;
    let st = g.state();
    if st.initialized && SLOTS.get().is_none() && signal::installed() {
        return signal::install();
    }
    init_locked(st)
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
        signal::check()?;
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
            let (state, reason) = match decode(s.at, &bytes) {
                Some(Insn::Call(t)) if t != s.tramp => (SiteState::Direct, None),
                Some(Insn::Nop) => (SiteState::Nop, Some(NotDirect::NoTarget)),
                Some(Insn::Zero) => (SiteState::Zero, Some(NotDirect::NoTarget)),
                _ => {
                    let reason = s.refused.unwrap_or(if SLOTS.get().is_some() {
                        NotDirect::Slots
                    } else if initialized {
                        NotDirect::OutOfReach
                    } else {
                        NotDirect::NotInitialized
                    });
                    (SiteState::Trampoline, Some(reason))
                }
            };
            Site { address: s.at, state, reason, bytes }
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

/// One instruction, in Intel syntax (see `arch::x86_64::disassemble`).
pub fn disassemble(at: usize, bytes: &[u8]) -> String {
    crate::arch::x86_64::disassemble(at, bytes)
}
