//! Introspection: what each call site executes now, and why.

use core::fmt;

/// What a call site executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SiteState {
    /// `call target`: the goal state, as cheap as a direct call.
    Direct,
    /// `call trampoline`: see [`Site::reason`]. For a static-branch site:
    /// the jump to its assembled test of the key's value (see
    /// [`NotTaken`](Self::NotTaken)).
    Trampoline,
    /// A five-byte `nop`: the key has no target and returns `()`.
    Nop,
    /// `mov eax, 0` (aarch64: `bl` to a stub that zeroes `x0`): the key has
    /// no target and returns zero.
    Zero,
    /// `call qword ptr [rip + slot]` (x86-64): the target is out of rel32
    /// reach (typically in a `dlopen`ed library), so the site calls through
    /// the key's slot, one indirect call, what an `AtomicPtr` call costs.
    /// The instruction starts one byte before [`Site::address`] (on the
    /// site's last `cs` prefix) and ends where the `call rel32` ended. Never
    /// on aarch64, where such a site stays on the [`Trampoline`](Self::Trampoline).
    /// Its [`Site::reason`] is [`NotDirect::OutOfReach`]. A breakpoint on
    /// it goes at `address() - 1` (`tests/breakpoint_at_site.rs`).
    Indirect,
    /// A static-branch site that jumps to its branch's out-of-line block:
    /// `jmp label` (x86-64, five bytes behind the site's `cs` prefixes;
    /// aarch64: `b label`). An `unlikely()` site whose key is `true`, or a
    /// `likely()` site whose key is `false`. [`Site::reason`] is `None`.
    Taken,
    /// A static-branch site that falls through into its inline block: a
    /// five-byte `nop` (aarch64: `nop`). An `unlikely()` site whose key is
    /// `false`, or a `likely()` site whose key is `true`. [`Site::reason`]
    /// is `None`.
    ///
    /// A static-branch site that is neither (not patched: before
    /// [`init`](crate::init), in [`Mode::Slots`](crate::Mode), or refused)
    /// reports [`Trampoline`](Self::Trampoline): it jumps to its assembled
    /// out-of-line test of the key's value, which takes the right branch
    /// for the current value; the reason says why it is not patched.
    NotTaken,
}

/// Why a site is not [`SiteState::Direct`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotDirect {
    /// [`init`](crate::init) has not run (nor any update): every site calls
    /// its trampoline, which jumps to the target.
    NotInitialized,
    /// The key has no target.
    NoTarget,
    /// The target is more than 2 GiB away (typically in a `dlopen`ed
    /// library): the site calls through the key's slot, with one indirect
    /// call ([`SiteState::Indirect`], x86-64), or by calling the trampoline,
    /// which jumps through the slot (aarch64, or an x86-64 site that the
    /// slot itself is out of reach of).
    OutOfReach,
    /// The assembler did not place the call's rel32 on a 4-byte boundary: the
    /// site is never patched and keeps calling the trampoline.
    Misplaced,
    /// At `init` the site did not hold the call to its trampoline the macro
    /// emitted (these bytes instead): it is never patched.
    Refused([u8; 5]),
    /// Patching is impossible in this process ([`Mode::Slots`](crate::Mode),
    /// whose error says why): the site calls its trampoline, which jumps
    /// through the key's slot.
    Slots,
}

impl fmt::Display for NotDirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotDirect::NotInitialized => f.write_str("not initialized yet"),
            NotDirect::NoTarget => f.write_str("no target"),
            NotDirect::OutOfReach => f.write_str("target out of rel32 reach, called through the key's slot"),
            NotDirect::Misplaced => f.write_str("rel32 not 4-byte aligned, left on the trampoline"),
            NotDirect::Refused(b) => write!(f, "unexpected bytes {b:02x?} at init, left alone"),
            NotDirect::Slots => f.write_str("patching impossible in this process, the site goes through the key's slot (a branch site: its test of it)"),
        }
    }
}

/// How many of a site's five bytes are its instruction: four on aarch64
/// (the fifth is zero), five on x86-64.
const SHOWN: usize = if cfg!(target_arch = "aarch64") { 4 } else { 5 };

/// One call site of a key, as it was when [`Key::sites`](crate::Key::sites)
/// looked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub(crate) address: usize,
    pub(crate) state: SiteState,
    pub(crate) reason: Option<NotDirect>,
    pub(crate) bytes: [u8; 5],
}

impl Site {
    /// The site's address: where the macro assembled its call opcode
    /// (x86-64: the `e8` of `call rel32`, behind its `cs` prefixes). It
    /// never changes; an [`Indirect`](SiteState::Indirect) site's
    /// instruction starts one byte before it (its opcode `ff`; the address
    /// is then the ModRM byte, inside the instruction: a debugger's
    /// breakpoint goes one byte before it, where `Display` starts).
    pub fn address(&self) -> usize {
        self.address
    }

    /// What the site executes.
    pub fn state(&self) -> SiteState {
        self.state
    }

    /// Why the site is not [`SiteState::Direct`]; `None` when it is.
    pub fn reason(&self) -> Option<NotDirect> {
        self.reason
    }

    /// The five bytes at [`address`](Self::address) on x86-64 (the whole
    /// instruction but its prefixes, or for an
    /// [`Indirect`](SiteState::Indirect) site the five after its opcode
    /// `ff`: `15` and the displacement); on aarch64 the four of the
    /// instruction (little-endian), then a zero.
    pub fn bytes(&self) -> [u8; 5] {
        self.bytes
    }
}

impl fmt::Display for Site {
    /// `0x55d0c0a01b3f: e8 4c 0a 00 00  call 0x55d0c0a02590` followed by the
    /// reason when the site is not direct. An indirect site shows its whole
    /// instruction, from the byte before the address: `0x55d0c0a01b3e: ff
    /// 15 c4 3e 00 00  call qword ptr [0x55d0c0a05a08]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut insn = [0u8; 6];
        let (at, len) = if self.state == SiteState::Indirect {
            // The opcode `ff` stands on the byte before the address.
            insn[0] = 0xff;
            insn[1..].copy_from_slice(&self.bytes);
            (self.address.wrapping_sub(1), 6)
        } else {
            insn[..5].copy_from_slice(&self.bytes);
            (self.address, SHOWN)
        };
        write!(f, "{at:#x}: ")?;
        for b in &insn[..len] {
            write!(f, "{b:02x} ")?;
        }
        write!(f, " {}", crate::backend::disassemble(at, &insn[..len.max(5)]))?;
        if let Some(r) = self.reason {
            write!(f, "  ({r})")?;
        }
        Ok(())
    }
}

/// A [`Site`] as it crosses between copies of this crate (`owner`).
#[doc(hidden)]
#[derive(Clone, Copy)]
#[repr(C)]
pub struct RawSite {
    address: usize,
    state: u8,
    reason: u8,
    bytes: [u8; 5],
    refused: [u8; 5],
}

impl From<&Site> for RawSite {
    fn from(s: &Site) -> RawSite {
        let state = match s.state {
            SiteState::Direct => 0,
            SiteState::Trampoline => 1,
            SiteState::Nop => 2,
            SiteState::Zero => 3,
            SiteState::Indirect => 4,
            SiteState::Taken => 5,
            SiteState::NotTaken => 6,
        };
        let (reason, refused) = match s.reason {
            None => (0, [0; 5]),
            Some(NotDirect::NotInitialized) => (1, [0; 5]),
            Some(NotDirect::NoTarget) => (2, [0; 5]),
            Some(NotDirect::OutOfReach) => (3, [0; 5]),
            Some(NotDirect::Misplaced) => (4, [0; 5]),
            Some(NotDirect::Refused(b)) => (5, b),
            Some(NotDirect::Slots) => (6, [0; 5]),
        };
        RawSite { address: s.address, state, reason, bytes: s.bytes, refused }
    }
}

impl From<&RawSite> for Site {
    fn from(r: &RawSite) -> Site {
        let state = match r.state {
            0 => SiteState::Direct,
            2 => SiteState::Nop,
            3 => SiteState::Zero,
            4 => SiteState::Indirect,
            5 => SiteState::Taken,
            6 => SiteState::NotTaken,
            _ => SiteState::Trampoline,
        };
        let reason = match r.reason {
            0 => None,
            1 => Some(NotDirect::NotInitialized),
            2 => Some(NotDirect::NoTarget),
            3 => Some(NotDirect::OutOfReach),
            4 => Some(NotDirect::Misplaced),
            5 => Some(NotDirect::Refused(r.refused)),
            _ => Some(NotDirect::Slots),
        };
        Site { address: r.address, state, reason, bytes: r.bytes }
    }
}
