//! Counting threads inside a section of code without a cache line that
//! every thread writes (x86-64: the SIGTRAP handler and the readers of the
//! plan it looks up).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// One counter alone on its cache line.
#[repr(C, align(64))]
struct Line(AtomicUsize);

/// How many threads are inside a section of code (a signal handler, a
/// reader of a published plan), counted without a cache line that every
/// thread writes: [`STACK_SLOTS`] counters, each on a cache line of its
/// own, a thread counting itself in the one that bits 12..17 of its stack
/// pointer select (threads run on different stacks) and uncounting itself
/// in the same one (with the same stack pointer). The section is idle when
/// the signed sum of all counters is at most zero: a count is exact per
/// counter, and a `fork()` child, which [`reset`](Self::reset)s them, may see
/// the forking thread leave a section it entered in the parent, taking one
/// below zero. Async-signal-safe.
///
/// `#[repr(C)]`: the SIGTRAP handler's entry stub counts itself in
/// assembly, at byte offset `(rsp >> 6) & 0xfc0` ([`STACK_SLOT_MASK`]).
#[repr(C)]
pub struct StackCounters([Line; STACK_SLOTS]);

/// How many counters a [`StackCounters`] has.
pub const STACK_SLOTS: usize = 64;
/// The byte offset of a stack pointer's counter is `(sp >> 6) & STACK_SLOT_MASK`.
pub const STACK_SLOT_MASK: usize = (STACK_SLOTS - 1) << 6;

impl StackCounters {
    pub const fn new() -> Self {
        Self([const { Line(AtomicUsize::new(0)) }; STACK_SLOTS])
    }

    /// The counter of a stack address (any address in the caller's frame,
    /// the same for its `enter` and its `leave`).
    fn line(&self, sp: usize) -> Option<&AtomicUsize> {
        self.0.get((sp & (STACK_SLOT_MASK << 6)) >> 12).map(|l| &l.0)
    }

    /// Counts the calling thread in, by an address in its current frame.
    pub fn enter(&self, sp: usize) {
        if let Some(c) = self.line(sp) {
            c.fetch_add(1, SeqCst);
        }
    }

    /// Counts the calling thread out, by the address it entered with.
    pub fn leave(&self, sp: usize) {
        if let Some(c) = self.line(sp) {
            c.fetch_sub(1, SeqCst);
        }
    }

    /// The signed number of threads inside.
    pub fn sum(&self) -> isize {
        self.0.iter().fold(0isize, |s, l| s.wrapping_add(l.0.load(SeqCst) as isize))
    }

    /// No thread inside (see the type's docs).
    pub fn idle(&self) -> bool {
        self.sum() <= 0
    }

    /// In a `fork()` child: no thread of the parent but the forking one
    /// exists, and it is counted wherever it still is by leaving.
    pub fn reset(&self) {
        self.0.iter().for_each(|l| l.0.store(0, SeqCst));
    }
}
