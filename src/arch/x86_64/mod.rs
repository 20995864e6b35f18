//! x86-64 encodings of every instruction this crate writes, and the assembly
//! templates the macro expands to.
//!
//! Everything here is pure: functions from addresses to bytes and back. The
//! property tests at the bottom check each encoder against the iced-x86 decoder,
//! and `tests/encodings.rs` checks that what the assembler emitted for the
//! templates is what these functions say it is.
//!
//! # Patches
//!
//! What the protocol rewrites is a *patch* of [`PATCH_LEN`] bytes, and each
//! holds exactly one instruction, so that a thread preempted anywhere is
//! before it or past it, never inside it:
//!
//! - a trampoline's patch is its five-byte head (`jmp target`, the far head,
//!   `ret`, the zero form) and the `ret` after it, which never changes;
//! - a site's patch starts one byte before the site's address, on the last
//!   of the `cs` prefixes the macro emits (at least three: `.balign 4, 0x2e`
//!   then three more, unconditionally), and ends where the assembled `call
//!   rel32` ends. It holds that prefix and a five-byte form (`call target`,
//!   `call trampoline`, `nop`, `mov eax, 0`), or the six-byte indirect call
//!   `call qword ptr [rip + slot]` (`ff 15 disp32`), which takes the
//!   prefix's byte for its opcode ([`SiteState::Indirect`]: a far target at
//!   the cost of a function pointer, not of two more jumps). The prefixes
//!   before the patch never change, so the instruction a thread executes
//!   from the site's first prefix is the patch's, behind unchanged
//!   prefixes, and it ends, in every form, where the site ends: a thread
//!   inside the target returns to the same address whichever form called
//!   it. GCC's `-mindirect-branch-cs-prefix` makes the same room for the
//!   kernel's retpoline rewriting (`arch/x86/kernel/alternative.c`).
//!
//! The protocol's `int3` goes on a patch's first byte: for a site, the byte
//! before its address, behind the unchanged prefixes (`cs cs int3`: an
//! `int3` whose trap reports the address just past it). A thread rewound by
//! the handler resumes on that byte too, which decodes, in every form, as
//! the whole instruction up to the site's end. No thread ever resumes on a
//! site's address itself (which, in the indirect form, is the `ff 15`'s
//! ModRM byte).

pub mod jumps;
#[cfg(all(target_os = "linux", not(feature = "portable"), not(miri)))]
pub mod protocol;
#[cfg(all(target_os = "linux", not(feature = "portable"), not(miri)))]
pub mod trap;

use crate::raw::NoTarget;
use crate::site::SiteState;

/// Length of every five-byte instruction this crate writes (a site's form
/// other than the indirect call, or the head of a trampoline).
pub const INSN_LEN: usize = 5;
/// Length of a patch: what the protocol rewrites at a site (its last `cs`
/// prefix and the five bytes after it) or a trampoline (its head and the
/// `ret` after it). See the module's "Patches".
pub const PATCH_LEN: usize = 6;

/// `int3`, the breakpoint that guards an instruction while it is rewritten.
pub const INT3: u8 = 0xcc;
/// The `cs` segment-override prefix, which pads sites (ignored in 64-bit
/// mode).
pub const CS: u8 = 0x2e;
/// `call rel32`.
pub const CALL_REL32: u8 = 0xe8;
/// `jmp rel32`.
pub const JMP_REL32: u8 = 0xe9;
/// `call qword ptr [rip + disp32]`: opcode `ff`, ModRM `15` (/2, RIP-relative).
pub const CALL_RIP: [u8; 2] = [0xff, 0x15];
/// The five-byte `nop dword ptr [rax+rax*1+0x0]`.
pub const NOP5: [u8; INSN_LEN] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
/// `mov eax, 0`: zeroes `rax` in one five-byte instruction with no prefix.
/// (The kernel's `xor5rax`, `cs cs cs xor eax, eax`, would stand behind a
/// site's own `cs` padding: up to nine prefixes, which valgrind refuses as an
/// illegal instruction.) Flags are left alone, which no caller relies on
/// either way: a call clobbers them.
pub const ZERO5: [u8; INSN_LEN] = [0xb8, 0x00, 0x00, 0x00, 0x00];
/// `ret` padded with `int3` to five bytes.
pub const RET5: [u8; INSN_LEN] = [0xc3, INT3, INT3, INT3, INT3];
/// `ret`: the byte after a trampoline's head (the last of its patch).
pub const RET: u8 = 0xc3;

/// Byte size of a trampoline (and its alignment).
pub const TRAMP_SIZE: usize = 32;
/// Offset of `jmp qword ptr [rip + slot]` within a trampoline.
pub const TRAMP_FAR_OFFSET: usize = 8;
/// Offset of the 32-bit displacement of that jump.
pub const TRAMP_FAR_DISP_OFFSET: usize = TRAMP_FAR_OFFSET + 2;
/// Offset of the first byte after that jump (the base of its displacement).
pub const TRAMP_FAR_END: usize = TRAMP_FAR_OFFSET + 6;
/// The bytes of a trampoline from [`INSN_LEN`] on, with the displacement of the
/// far jump left zero: `ret` (reached after the zero form), two `int3`, `jmp [rip +
/// slot]`, `ud1 esp, ecx` (stops straight-line speculation, and is the kernel's
/// trampoline signature), then our own signature `"SCALL"` and version 1.
pub const TRAMP_TAIL: [u8; TRAMP_SIZE - INSN_LEN] = [
    RET, INT3, INT3, // +5: ret; int3; int3
    0xff, 0x25, 0, 0, 0, 0, // +8: jmp qword ptr [rip + disp32]
    0x0f, 0xb9, 0xcc, // +14: ud1 esp, ecx
    b'S', b'C', b'A', b'L', b'L', 1, // +17: signature, version
    INT3, INT3, INT3, INT3, INT3, INT3, INT3, INT3, INT3, // +23 .. +32
];

/// What a patchable instruction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Insn {
    /// `call target`.
    Call(usize),
    /// `call qword ptr [rip + slot]`: a call of the function whose address
    /// the word at `slot` holds when the call executes (sites only; six
    /// bytes).
    CallIndirect(usize),
    /// `jmp target` (trampolines only).
    Jmp(usize),
    /// Five-byte `nop`.
    Nop,
    /// `mov eax, 0` (five bytes).
    Zero,
    /// `ret` padded with `int3` (trampolines only).
    Ret,
}

/// The displacement from the end of a five-byte branch at `at` to `target`, or
/// `None` when `target` is out of reach (more than ±2 GiB away).
pub fn rel32(at: usize, target: usize) -> Option<i32> {
    let next = at.wrapping_add(INSN_LEN) as i64;
    i32::try_from((target as i64).wrapping_sub(next)).ok()
}

/// Encodes the five-byte `insn` as it would stand at address `at`; `None`
/// when a branch target is out of rel32 reach, and for the six-byte
/// [`Insn::CallIndirect`] (see [`site_patch`]).
pub fn encode(at: usize, insn: Insn) -> Option<[u8; INSN_LEN]> {
    let branch = |op: u8, target: usize| {
        let d = rel32(at, target)?.to_le_bytes();
        Some([op, d[0], d[1], d[2], d[3]])
    };
    match insn {
        Insn::Call(t) => branch(CALL_REL32, t),
        Insn::CallIndirect(_) => None,
        Insn::Jmp(t) => branch(JMP_REL32, t),
        Insn::Nop => Some(NOP5),
        Insn::Zero => Some(ZERO5),
        Insn::Ret => Some(RET5),
    }
}

/// Reads back what [`encode`] wrote at `at` (five bytes); `None` for any
/// other bytes.
pub fn decode(at: usize, bytes: &[u8; INSN_LEN]) -> Option<Insn> {
    let target = || {
        let d = i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        at.wrapping_add(INSN_LEN).wrapping_add(d as isize as usize)
    };
    match *bytes {
        NOP5 => Some(Insn::Nop),
        ZERO5 => Some(Insn::Zero),
        RET5 => Some(Insn::Ret),
        [CALL_REL32, ..] => Some(Insn::Call(target())),
        [JMP_REL32, ..] => Some(Insn::Jmp(target())),
        _ => None,
    }
}

/// Where the patch of the site at `site` starts: on its last `cs` prefix.
pub fn site_patch_at(site: usize) -> usize {
    site.wrapping_sub(1)
}

/// The patch of the site at `site` holding `insn`: the site's last `cs`
/// prefix and a five-byte form, or the indirect call on that prefix's byte.
/// `None` when a target (or the slot) is out of rel32 reach of the site's
/// end.
pub fn site_patch(site: usize, insn: Insn) -> Option<[u8; PATCH_LEN]> {
    let mut p = [0; PATCH_LEN];
    match insn {
        Insn::CallIndirect(slot) => {
            p[..2].copy_from_slice(&CALL_RIP);
            p[2..].copy_from_slice(&rel32(site, slot)?.to_le_bytes());
        }
        insn => {
            p[0] = CS;
            p[1..].copy_from_slice(&encode(site, insn)?);
        }
    }
    Some(p)
}

/// A trampoline's patch with `head` as its head (the `ret` after it never
/// changes).
pub fn tramp_patch(head: [u8; INSN_LEN]) -> [u8; PATCH_LEN] {
    let mut p = [RET; PATCH_LEN];
    p[..INSN_LEN].copy_from_slice(&head);
    p
}

/// Reads back a patch at `at` (what [`site_patch`] wrote at
/// [`site_patch_at`], or [`tramp_patch`] at a trampoline): the instruction,
/// and the address where it ends (a site's end, or the byte after a
/// trampoline's head). `None` for any other bytes. Async-signal-safe.
pub fn decode_patch(at: usize, bytes: &[u8; PATCH_LEN]) -> Option<(Insn, usize)> {
    let site = at.wrapping_add(1);
    let end = site.wrapping_add(INSN_LEN);
    match *bytes {
        [0xff, 0x15, a, b, c, d] => {
            let slot = end.wrapping_add(i32::from_le_bytes([a, b, c, d]) as isize as usize);
            Some((Insn::CallIndirect(slot), end))
        }
        [CS, a, b, c, d, e] => Some((decode(site, &[a, b, c, d, e])?, end)),
        [a, b, c, d, e, RET] => Some((decode(at, &[a, b, c, d, e])?, at.wrapping_add(INSN_LEN))),
        _ => None,
    }
}

/// What a site's patch holds when its key's target is `target` (0: none),
/// its key's slot being at `slot`: `call target`; `call qword ptr [rip +
/// slot]` when the target is out of reach (and the slot is not); `call
/// tramp` when both are; or the no-target form (`none`, the key's stub, is
/// reached through the slot only).
#[inline]
pub fn site_form(
    site: usize,
    tramp: usize,
    slot: usize,
    target: usize,
    _none: usize,
    no_target: NoTarget,
) -> [u8; PATCH_LEN] {
    let insn = match (target, no_target) {
        (0, NoTarget::Nop) => Insn::Nop,
        (0, NoTarget::Zero) => Insn::Zero,
        (t, _) => {
            return site_patch(site, Insn::Call(t))
                .or_else(|| site_patch(site, Insn::CallIndirect(slot)))
                .or_else(|| site_patch(site, Insn::Call(tramp)))
                .expect("a site reaches its trampoline")
        }
    };
    site_patch(site, insn).expect("a fixed form")
}

/// What a trampoline's patch holds when its key's target is `target` (0:
/// none): `jmp target`, the far head, `ret` or the zero form.
pub fn tramp_form(at: usize, target: usize, _none: usize, no_target: NoTarget) -> [u8; PATCH_LEN] {
    tramp_patch(match (target, no_target) {
        (0, NoTarget::Nop) => RET5,
        (0, NoTarget::Zero) => ZERO5,
        (t, _) => encode(at, Insn::Jmp(t)).unwrap_or_else(|| far_head(at)),
    })
}

/// What the macro assembled at a site, as its patch: the last `cs` prefix
/// and `call tramp`.
pub fn assembled_site(site: usize, tramp: usize) -> Option<[u8; PATCH_LEN]> {
    site_patch(site, Insn::Call(tramp))
}

/// What the macro assembled at a trampoline, as its patch: the far head.
pub fn assembled_tramp(tramp: usize) -> [u8; PATCH_LEN] {
    tramp_patch(far_head(tramp))
}

/// What a site's patch says it does, if it does not call its trampoline.
pub fn site_state(
    site: usize,
    bytes: &[u8; PATCH_LEN],
    tramp: usize,
    _none: usize,
    _has_target: bool,
) -> Option<SiteState> {
    match decode_patch(site_patch_at(site), bytes)?.0 {
        Insn::Call(t) if t != tramp => Some(SiteState::Direct),
        Insn::CallIndirect(_) => Some(SiteState::Indirect),
        Insn::Nop => Some(SiteState::Nop),
        Insn::Zero => Some(SiteState::Zero),
        _ => None,
    }
}

/// The five bytes at the site's address that a [`crate::Site`] reports:
/// the patch but its first byte (the `cs` prefix, or an indirect call's
/// opcode `ff`).
pub fn site_bytes(patch: &[u8; PATCH_LEN]) -> [u8; 5] {
    let mut b = [0; 5];
    b.copy_from_slice(&patch[1..]);
    b
}

/// The instruction and the five of its bytes that an error about a patch
/// at `at` names, found and expected: for a site the five at its address
/// (the byte after the patch's first), unless only that first byte
/// differs; for a trampoline its head, unless only the `ret` after it
/// differs.
pub fn window(
    at: usize,
    found: &[u8; PATCH_LEN],
    expected: &[u8; PATCH_LEN],
    is_site: bool,
) -> (usize, [u8; 5], [u8; 5]) {
    let five = |b: &[u8; PATCH_LEN], from: usize| -> [u8; 5] { b[from..from + 5].try_into().expect("five bytes") };
    let from =
        if is_site { usize::from(found[1..] != expected[1..]) } else { usize::from(found[..5] == expected[..5]) };
    (at + from, five(found, from), five(expected, from))
}

/// One instruction at `at`, in Intel syntax: with the `disasm` feature,
/// decoded by iced-x86 (anything); without it, [`describe`] (our forms).
pub fn disassemble(at: usize, bytes: &[u8]) -> String {
    #[cfg(feature = "disasm")]
    {
        use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
        let insn = Decoder::with_ip(64, bytes, at as u64, DecoderOptions::NONE).decode();
        if insn.is_invalid() {
            return "(bad)".to_string();
        }
        let mut f = IntelFormatter::new();
        let o = f.options_mut();
        o.set_space_after_operand_separator(true);
        o.set_hex_prefix("0x");
        o.set_hex_suffix("");
        o.set_uppercase_hex(false);
        o.set_branch_leading_zeros(false);
        let mut out = String::new();
        f.format(&insn, &mut out);
        out
    }
    #[cfg(not(feature = "disasm"))]
    describe(at, bytes)
}

/// The instruction at `at` in Intel syntax, if it is one of the forms this
/// crate writes (as iced-x86 prints them); otherwise a note that it is not.
#[cfg_attr(all(feature = "disasm", not(test)), allow(dead_code))]
pub fn describe(at: usize, bytes: &[u8]) -> String {
    if let [0xff, 0x15, a, b, c, d, ..] = *bytes {
        let slot = at.wrapping_add(6).wrapping_add(i32::from_le_bytes([a, b, c, d]) as isize as usize);
        return format!("call qword ptr [{slot:#x}]");
    }
    let Some(five) = bytes.first_chunk::<INSN_LEN>() else { return "(bad)".to_string() };
    match decode(at, five) {
        Some(Insn::Call(t)) => format!("call {t:#x}"),
        Some(Insn::CallIndirect(_)) => "(bad)".to_string(),
        Some(Insn::Jmp(t)) => format!("jmp {t:#x}"),
        Some(Insn::Nop) => "nop [rax+rax]".to_string(),
        Some(Insn::Zero) => "mov eax, 0".to_string(),
        Some(Insn::Ret) => "ret".to_string(),
        None => "(not a static_call form)".to_string(),
    }
}

/// The whole expected image of the trampoline at `tramp` whose key slot is at
/// `slot`, with `head` as its first five bytes. `None` if the slot is out of
/// rel32 reach (which the linker would have refused).
pub fn trampoline_image(tramp: usize, slot: usize, head: [u8; INSN_LEN]) -> Option<[u8; TRAMP_SIZE]> {
    let mut image = [0u8; TRAMP_SIZE];
    image[..INSN_LEN].copy_from_slice(&head);
    image[INSN_LEN..].copy_from_slice(&TRAMP_TAIL);
    let next = (tramp + TRAMP_FAR_END) as i64;
    let disp = i32::try_from(slot as i64 - next).ok()?;
    image[TRAMP_FAR_DISP_OFFSET..TRAMP_FAR_END].copy_from_slice(&disp.to_le_bytes());
    Some(image)
}

/// The head of a trampoline that reaches `target` through its key's slot: a
/// `jmp` to the far jump that follows.
pub fn far_head(tramp: usize) -> [u8; INSN_LEN] {
    encode(tramp, Insn::Jmp(tramp + TRAMP_FAR_OFFSET)).expect("a trampoline reaches itself")
}

/// Where a site's call instruction must start so that its rel32 is 4-byte
/// aligned.
pub fn well_placed(site: usize) -> bool {
    (site + 1).is_multiple_of(4)
}

// ---------------------------------------------------------------- branches

/// Length of a static-branch site's out-of-line test: `cmp qword ptr [rip +
/// slot], 0` (8 bytes), `jne`/`je label` (6), `jmp back` (5), each
/// emitted as forced bytes (see the template).
pub const BRANCH_TEST_LEN: usize = 19;

/// What the macro assembled at a static-branch site, as its patch: the
/// last `cs` prefix and `jmp test`.
pub fn assembled_branch(site: usize, test: usize) -> Option<[u8; PATCH_LEN]> {
    site_patch(site, Insn::Jmp(test))
}

/// Where a static-branch site's assembled jump goes (its test), if its
/// patch holds a jump at all.
#[cfg(test)]
pub fn branch_jump_of(site: usize, bytes: &[u8; PATCH_LEN]) -> Option<usize> {
    match decode_patch(site_patch_at(site), bytes)? {
        (Insn::Jmp(t), _) => Some(t),
        _ => None,
    }
}

/// The whole expected image of a static-branch site's test at `test`: it
/// reads the key's slot at `slot`, jumps to `label` when the slot is
/// non-null (`when_true`, an `unlikely` site) or null (a `likely` site),
/// else jumps back to the end of the site at `site`. `None` when a
/// displacement is out of reach (which the linker would have refused).
pub fn branch_test_image(
    test: usize,
    slot: usize,
    label: usize,
    when_true: bool,
    site: usize,
) -> Option<[u8; BRANCH_TEST_LEN]> {
    let rel = |end: usize, to: usize| i32::try_from((to as i64).wrapping_sub(end as i64)).ok().map(i32::to_le_bytes);
    let mut b = [0u8; BRANCH_TEST_LEN];
    b[..3].copy_from_slice(&[0x48, 0x83, 0x3d]);
    b[3..7].copy_from_slice(&rel(test + 8, slot)?);
    b[7] = 0;
    b[8..10].copy_from_slice(&[0x0f, if when_true { 0x85 } else { 0x84 }]);
    b[10..14].copy_from_slice(&rel(test + 14, label)?);
    b[14] = JMP_REL32;
    b[15..19].copy_from_slice(&rel(test + 19, site + INSN_LEN)?);
    Some(b)
}

/// What a static-branch site's patch holds when it is patched: `jmp label`
/// if `taken`, else the five-byte `nop`. `None` when the label is out of
/// rel32 reach.
pub fn branch_form(site: usize, label: usize, taken: bool) -> Option<[u8; PATCH_LEN]> {
    site_patch(site, if taken { Insn::Jmp(label) } else { Insn::Nop })
}

/// What a static-branch site's patch says it does, if it is patched (not
/// its assembled jump to `test`).
pub fn branch_state(site: usize, bytes: &[u8; PATCH_LEN], test: usize) -> Option<SiteState> {
    match decode_patch(site_patch_at(site), bytes)?.0 {
        Insn::Jmp(t) if t != test => Some(SiteState::Taken),
        Insn::Nop => Some(SiteState::NotTaken),
        _ => None,
    }
}

/// Assembly templates. They are `macro_rules!` so that `asm!`/`global_asm!` see
/// string literals; the byte values are those of the constants above, which
/// `tests/encodings.rs` checks against the assembled text.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_x86_64_site {
    // A call site: `cs` prefixes pad the call so that its rel32 is 4-byte
    // aligned while it stays a single instruction, then `call rel32` to the
    // key's trampoline (the byte forced, so the assembler cannot pick another
    // form), and a record `{site - ., key - .}` in the site section. The
    // three unconditional `cs` make sure the last byte before the call is a
    // prefix of ours: the indirect form (`ff 15 disp32`) takes it.
    ($key:path; x86_64 { $($operands:tt)* } aarch64 { $($_aarch64:tt)* }) => {
        ::core::arch::asm!(
            ".balign 4, 0x2e",
            ".byte 0x2e, 0x2e, 0x2e",
            "2:",
            ".byte 0xe8",
            ".long {__static_call_key}_sc_tramp - . - 4",
            ".pushsection static_call_sites_v2, \"aR\", %progbits",
            ".balign 4",
            ".long 2b - .",
            ".long {__static_call_key} - .",
            ".popsection",
            __static_call_key = sym $key,
            $($operands)*
            clobber_abi("C"),
        )
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_x86_64_branch {
    // A static-branch site (an `asm goto`): two `cs` prefixes, then `jmp
    // rel32` (the byte forced) to an out-of-line test of the key's slot in
    // its own section, which jumps to the label when the branch is to be
    // taken (`jne`: an `unlikely` site; `je`: a `likely` one) and back to
    // the site's end otherwise. The patch is the last prefix and the jump
    // (`site_patch_at(site) = site - 1`, as for calls); the first prefix
    // never changes, so no instruction ends just before a patch (see
    // `trap::handle`). Patched forms: `jmp label` or the five-byte `nop`.
    // The record `{site - ., key - ., label - ., test - ., flags}` (flags
    // bit 0: the site jumps when the value is true) goes to the branch
    // section.
    (@emit $key:path, $label:block, $jcc:literal, $flags:literal) => {
        ::core::arch::asm!(
            ".byte 0x2e, 0x2e",
            "2:",
            ".byte 0xe9",
            ".long 4f - . - 4",
            "3:",
            ".pushsection .text.static_branch_test, \"ax\", @progbits",
            // The test's bytes are forced too: an assembler that pads
            // branches (`-x86-branches-within-32B-boundaries`, the JCC
            // erratum mitigation) would otherwise put `nop`s into some
            // tests, which the registry then refuses as not ours.
            "4:",
            // `cmp qword ptr [rip + slot], 0`; the slot at
            // `raw::SLOT_OFFSET` in the key, the displacement from the end
            // of the instruction (past the `imm8`).
            ".byte 0x48, 0x83, 0x3d",
            ".long {__static_call_key} + 24 - . - 5",
            ".byte 0x00",
            $jcc,
            ".long {__static_call_label} - . - 4",
            // `jmp 3b`, back to the site's end.
            ".byte 0xe9",
            ".long 3b - . - 4",
            ".popsection",
            ".pushsection static_call_branches_v2, \"aR\", %progbits",
            ".balign 4",
            ".long 2b - .",
            ".long {__static_call_key} - .",
            ".long {__static_call_label} - .",
            ".long 4b - .",
            $flags,
            ".popsection",
            __static_call_key = sym $key,
            __static_call_label = label $label,
            options(nostack, readonly),
        )
    };
    ($key:path, unlikely, $label:block) => {
        $crate::__static_call_x86_64_branch!(@emit $key, $label, ".byte 0x0f, 0x85", ".long 1")
    };
    ($key:path, likely, $label:block) => {
        $crate::__static_call_x86_64_branch!(@emit $key, $label, ".byte 0x0f, 0x84", ".long 0")
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_x86_64_trampoline {
    // The trampoline of a key: 32 bytes, 32-aligned, in its own section. The
    // assembled head is always `jmp +3`, to the far jump through the key's
    // slot (which is never null: a key without a target holds a stub), so
    // that a process that cannot patch runs correctly on the slots alone.
    // Patching may later make the head `jmp target`, `ret` padded with int3,
    // or the zero form (falling into the `ret` at +5).
    //
    // It is emitted from a naked function (an item, allowed where the key is
    // declared inside a function body, which `global_asm!` is not) that
    // switches sections; the key holds a pointer to that function, so the
    // trampoline is emitted exactly when the key is.
    ($key:path, $holder:ident, target) => {
        $crate::__static_call_x86_64_trampoline!(@emit $key, $holder, ".byte 0xe9, 0x03, 0x00, 0x00, 0x00");
    };

    (@emit $key:path, $holder:ident, $head:literal) => {
        #[doc(hidden)]
        #[allow(non_snake_case, clippy::inline_asm_x86_intel_syntax, clippy::inline_asm_x86_att_syntax)]
        #[unsafe(naked)]
        extern "C" fn $holder() {
            ::core::arch::naked_asm!(
                ".pushsection .text.static_call_tramp, \"ax\", @progbits",
                ".balign 32, 0xcc",
                ".globl {k}_sc_tramp",
                ".hidden {k}_sc_tramp",
                ".type {k}_sc_tramp, @function",
                "{k}_sc_tramp:",
                $head,
                ".byte 0xc3, 0xcc, 0xcc",
                // The slot, at `raw::SLOT_OFFSET` in the key.
                "jmp qword ptr [rip + {k} + 24]",
                ".byte 0x0f, 0xb9, 0xcc",
                ".ascii \"SCALL\"",
                ".byte 1",
                ".byte 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc",
                ".size {k}_sc_tramp, 32",
                ".popsection",
                ".pushsection static_call_tramps_v2, \"aR\", @progbits",
                ".balign 4",
                ".long {k}_sc_tramp - .",
                ".long {k} - .",
                ".popsection",
                "ud2",
                k = sym $key,
            )
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_x86_64_trampoline_addr {
    // The address of a key's trampoline, for `out_of_line` calls.
    ($key:path) => {{
        let t: *const ();
        // SAFETY: `lea` only computes an address.
        unsafe {
            ::core::arch::asm!(
                "lea {t}, [rip + {k}_sc_tramp]",
                t = out(reg) t,
                k = sym $key,
                options(pure, nomem, nostack, preserves_flags),
            )
        };
        t
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    use proptest::prelude::*;

    fn decode_iced(at: usize, bytes: &[u8]) -> iced_x86::Instruction {
        let mut d = Decoder::with_ip(64, bytes, at as u64, DecoderOptions::NONE);
        d.decode()
    }

    proptest! {
        #[test]
        fn branches_decode_to_their_target(at in 0x1000usize..(1usize << 46), off in any::<i32>(), call in any::<bool>()) {
            let target = (at as i64 + 5 + off as i64) as usize;
            let insn = if call { Insn::Call(target) } else { Insn::Jmp(target) };
            let bytes = encode(at, insn).unwrap();
            let i = decode_iced(at, &bytes);
            prop_assert_eq!(i.len(), INSN_LEN);
            prop_assert_eq!(i.mnemonic(), if call { Mnemonic::Call } else { Mnemonic::Jmp });
            prop_assert_eq!(i.near_branch_target(), target as u64);
            prop_assert_eq!(decode(at, &bytes), Some(insn));
        }

        #[test]
        fn out_of_reach_targets_are_refused(at in 0x1000usize..(1usize << 40), far in (1u64 << 31)..(1u64 << 44)) {
            let target = at + 5 + far as usize;
            prop_assert_eq!(encode(at, Insn::Call(target)), None);
            prop_assert_eq!(rel32(at, target), None);
        }

        #[test]
        fn trampoline_far_jump_reads_the_slot(tramp in 0x1000usize..(1usize << 46), off in -(1i64 << 30)..(1i64 << 30)) {
            let tramp = tramp & !31;
            let slot = (tramp as i64 + off) as usize;
            let image = trampoline_image(tramp, slot, far_head(tramp)).unwrap();
            let head = decode_iced(tramp, &image);
            prop_assert_eq!(head.near_branch_target(), (tramp + TRAMP_FAR_OFFSET) as u64);
            let far = decode_iced(tramp + TRAMP_FAR_OFFSET, &image[TRAMP_FAR_OFFSET..]);
            prop_assert_eq!(far.mnemonic(), Mnemonic::Jmp);
            prop_assert_eq!(far.op0_kind(), iced_x86::OpKind::Memory);
            prop_assert!(far.is_ip_rel_memory_operand());
            prop_assert_eq!(far.ip_rel_memory_address(), slot as u64);
        }
    }

    proptest! {
        #[test]
        fn indirect_call_reads_the_slot_and_ends_with_the_site(site in 0x1000usize..(1usize << 46), off in any::<i32>()) {
            let site = site | 3; // well placed: the rel32 4-byte aligned
            let slot = (site as i64 + 5 + off as i64) as usize;
            let patch = site_patch(site, Insn::CallIndirect(slot)).unwrap();
            prop_assert_eq!(&patch[..2], &CALL_RIP[..]);
            // From the patch's first byte (where a rewound thread resumes),
            // and behind the two `cs` prefixes that stay.
            for (start, bytes) in [(site - 1, patch.to_vec()), (site - 3, [[CS, CS].as_slice(), &patch].concat())] {
                let i = decode_iced(start, &bytes);
                prop_assert_eq!(i.mnemonic(), Mnemonic::Call);
                prop_assert_eq!(i.len(), bytes.len());
                prop_assert_eq!(i.op0_kind(), iced_x86::OpKind::Memory);
                prop_assert!(i.is_ip_rel_memory_operand());
                prop_assert_eq!(i.ip_rel_memory_address(), slot as u64);
                prop_assert_eq!(i.next_ip(), site as u64 + 5);
            }
            prop_assert_eq!(decode_patch(site - 1, &patch), Some((Insn::CallIndirect(slot), site + 5)));
        }

        #[test]
        fn slot_out_of_reach_is_refused(site in 0x1000usize..(1usize << 40), far in (1u64 << 31)..(1u64 << 44)) {
            let site = site | 3;
            prop_assert_eq!(site_patch(site, Insn::CallIndirect(site + 5 + far as usize)), None);
        }

        /// Every transition between two site forms, at every step of the
        /// protocol (before, `int3` on the patch's first byte, the body
        /// written, the first byte written), decoded from the instruction's
        /// start (its first prefix: 3 to 6 of them) and from the patch's
        /// first byte (where a rewound thread resumes): always one
        /// instruction, which is the old one, the `int3` (ending at the
        /// site's address, so that the handler finds the patch at `rip -
        /// 1`), or the new one, each ending at the site's end, as
        /// `decode_patch` (what the handler emulates) says.
        #[test]
        fn every_transition_is_one_instruction_at_every_step(
            site in 0x1000_0000usize..(1usize << 46),
            prefixes in 3usize..=6,
            from in 0usize..5,
            to in 0usize..5,
            t in -(1i64 << 30)..(1i64 << 30),
            slot in -(1i64 << 30)..(1i64 << 30),
        ) {
            let site = site | 3;
            let form = |i: usize| match i {
                0 => Insn::Call(site - 0x1234), // the trampoline
                1 => Insn::Call((site as i64 + t) as usize),
                2 => Insn::CallIndirect((site as i64 + slot) as usize),
                3 => Insn::Nop,
                _ => Insn::Zero,
            };
            let (old, new) = (site_patch(site, form(from)).unwrap(), site_patch(site, form(to)).unwrap());
            let start = site - prefixes;
            let mut text = vec![CS; prefixes - 1];
            text.extend_from_slice(&old);
            let patch = prefixes - 1;
            let mut states = vec![text.clone()];
            text[patch] = INT3;
            states.push(text.clone());
            text[patch + 1..].copy_from_slice(&new[1..]);
            states.push(text.clone());
            text[patch] = new[0];
            states.push(text.clone());
            let want = |p: &[u8; PATCH_LEN]| decode_patch(site - 1, p).unwrap();
            prop_assert_eq!(want(&old).1, site + 5);
            prop_assert_eq!(want(&new).1, site + 5);
            for (step, bytes) in states.iter().enumerate() {
                for from_byte in [0, patch] {
                    let at = start + from_byte;
                    let i = decode_iced(at, &bytes[from_byte..]);
                    prop_assert!(!i.is_invalid(), "step {}: {:02x?}", step, bytes);
                    let seen: [u8; PATCH_LEN] = bytes[patch..].try_into().unwrap();
                    if i.mnemonic() == Mnemonic::Int3 {
                        prop_assert!(step == 1 || step == 2);
                        prop_assert_eq!(i.next_ip(), site as u64, "the trap reports the site: the patch at rip - 1");
                        continue;
                    }
                    prop_assert_eq!(i.next_ip(), site as u64 + 5, "step {}: ends with the site", step);
                    prop_assert_eq!(i.len(), site + 5 - at, "step {}: one instruction", step);
                    let is = if step == 0 { want(&old) } else { want(&new) };
                    prop_assert_eq!(want(&seen), is, "step {}", step);
                    match is.0 {
                        Insn::Call(target) => prop_assert_eq!(i.near_branch_target(), target as u64),
                        Insn::CallIndirect(slot) => prop_assert_eq!(i.ip_rel_memory_address(), slot as u64),
                        Insn::Nop => prop_assert_eq!(i.mnemonic(), Mnemonic::Nop),
                        _ => prop_assert_eq!(i.mnemonic(), Mnemonic::Mov),
                    }
                }
            }
        }
    }

    #[test]
    fn site_forms_prefer_direct_then_indirect_then_the_trampoline() {
        let (site, tramp) = (0x5555_0000_1003usize, 0x5555_0000_2000usize);
        let (near, far) = (0x5555_0010_0000usize, 0x7f00_0000_0000usize);
        let near_slot = 0x5555_0020_0018usize;
        let form = |target, slot| decode_patch(site - 1, &site_form(site, tramp, slot, target, 0, NoTarget::Zero));
        assert_eq!(form(near, near_slot), Some((Insn::Call(near), site + 5)));
        assert_eq!(form(far, near_slot), Some((Insn::CallIndirect(near_slot), site + 5)));
        assert_eq!(form(far, far + 8), Some((Insn::Call(tramp), site + 5)), "slot out of reach: the trampoline");
        assert_eq!(form(0, near_slot), Some((Insn::Zero, site + 5)));
        let nop = site_form(site, tramp, near_slot, 0, 0, NoTarget::Nop);
        assert_eq!(nop, [CS, 0x0f, 0x1f, 0x44, 0, 0]);
        assert_eq!(
            site_state(site, &site_form(site, tramp, near_slot, far, 0, NoTarget::Zero), tramp, 0, true),
            Some(SiteState::Indirect)
        );
        assert_eq!(site_state(site, &assembled_site(site, tramp).unwrap(), tramp, 0, true), None);
        // A trampoline's patch: the head and the `ret` after it.
        let head = tramp_form(tramp, far, 0, NoTarget::Zero);
        assert_eq!(head, assembled_tramp(tramp));
        assert_eq!(decode_patch(tramp, &head), Some((Insn::Jmp(tramp + TRAMP_FAR_OFFSET), tramp + 5)));
        assert_eq!(decode_patch(tramp, &tramp_form(tramp, 0, 0, NoTarget::Zero)), Some((Insn::Zero, tramp + 5)));
        assert_eq!(decode_patch(tramp, &[0xe9, 3, 0, 0, 0, INT3]), None, "a head without its ret");
        // What errors name: the five bytes at the site, or the prefix's
        // byte when only it differs; a trampoline's head, or the byte
        // after when only the `ret` differs.
        let (a, b) = (assembled_site(site, tramp).unwrap(), site_form(site, tramp, near_slot, far, 0, NoTarget::Zero));
        assert_eq!(window(site - 1, &b, &a, true), (site, site_bytes(&b), site_bytes(&a)));
        let mut c = a;
        c[0] = INT3;
        assert_eq!(window(site - 1, &c, &a, true).0, site - 1);
        assert_eq!(window(tramp, &head, &tramp_form(tramp, near, 0, NoTarget::Zero), false).0, tramp);
        let mut d = head;
        d[5] = INT3;
        assert_eq!(window(tramp, &d, &head, false).0, tramp + 1);
    }

    #[test]
    fn fixed_forms_are_single_five_byte_instructions() {
        let nop = decode_iced(0, &NOP5);
        assert_eq!((nop.len(), nop.mnemonic()), (5, Mnemonic::Nop));
        let zero = decode_iced(0, &ZERO5);
        assert_eq!((zero.len(), zero.mnemonic()), (5, Mnemonic::Mov));
        assert_eq!(zero.op0_register(), iced_x86::Register::EAX);
        assert_eq!(zero.immediate32(), 0);
        // Behind a site's padding (at most six `cs` prefixes, as the site
        // template can emit) it is still one instruction of at most 11 bytes.
        let padded = [[0x2e; 6].as_slice(), &ZERO5].concat();
        let z = decode_iced(0, &padded);
        assert_eq!((z.len(), z.mnemonic()), (11, Mnemonic::Mov));
        let ret = decode_iced(0, &RET5);
        assert_eq!(ret.mnemonic(), Mnemonic::Ret);
        // The byte after xor5rax in a trampoline is the `ret` it falls into.
        assert_eq!(TRAMP_TAIL[0], 0xc3);
        let ud1 = decode_iced(0, &TRAMP_TAIL[TRAMP_FAR_END - INSN_LEN..]);
        assert_eq!(ud1.mnemonic(), Mnemonic::Ud1);
        for form in [NOP5, ZERO5, RET5] {
            assert_eq!(decode(0x1000, &form).map(|i| encode(0x1000, i).unwrap()), Some(form));
        }
        assert_eq!(decode(0x1000, &[INT3, 0, 0, 0, 0]), None);
    }

    #[test]
    #[cfg(feature = "disasm")]
    fn own_decoder_prints_what_iced_prints() {
        let at = 0x5555_0000_1003usize;
        let forms = [
            encode(at, Insn::Call(at + 0x1234)).unwrap(),
            encode(at, Insn::Call(at - 0x99)).unwrap(),
            encode(at, Insn::Jmp(at + 8)).unwrap(),
            NOP5,
            ZERO5,
            RET5,
        ];
        for form in forms {
            assert_eq!(describe(at, &form), disassemble(at, &form), "{form:02x?}");
        }
        for slot in [at + 0x3e08, at - 0x1_0000] {
            let p = site_patch(at + 1, Insn::CallIndirect(slot)).unwrap();
            assert_eq!(describe(at, &p), disassemble(at, &p), "{p:02x?}");
            assert_eq!(describe(at, &p), format!("call qword ptr [{slot:#x}]"));
        }
        assert_eq!(describe(at, &[INT3, 0, 0, 0, 0]), "(not a static_call form)");
    }

    proptest! {
        /// A static-branch site (two `cs` prefixes, the patch on the
        /// second): every transition between its forms (the assembled jump
        /// to its test, `jmp label`, the `nop`), at every protocol step,
        /// decoded from the first prefix and from the patch's first byte,
        /// is one instruction ending at the site's end (or the `int3`,
        /// reporting the site), and is what `decode_patch` says; the test
        /// decodes as `cmp qword ptr [rip + slot], 0`, `jne`/`je label`,
        /// `jmp` back to the site's end.
        #[test]
        fn branch_transitions_are_one_instruction_at_every_step(
            site in 0x1000_0000usize..(1usize << 46),
            from in 0usize..3,
            to in 0usize..3,
            test in 1i64..(1i64 << 30),
            label in -(1i64 << 20)..(1i64 << 20),
            slot in -(1i64 << 30)..(1i64 << 30),
            when_true in any::<bool>(),
        ) {
            let (test, label, slot) = ((site as i64 + test) as usize, (site as i64 + 5 + label) as usize, ((site as i64 + slot) as usize) & !7);
            let form = |i: usize| match i {
                0 => assembled_branch(site, test).unwrap(),
                1 => branch_form(site, label, true).unwrap(),
                _ => branch_form(site, label, false).unwrap(),
            };
            prop_assert_eq!(branch_jump_of(site, &form(0)), Some(test));
            prop_assert_eq!(branch_state(site, &form(0), test), None);
            prop_assert_eq!(branch_state(site, &form(1), test), Some(SiteState::Taken));
            prop_assert_eq!(branch_state(site, &form(2), test), Some(SiteState::NotTaken));
            let (old, new) = (form(from), form(to));
            let mut text = vec![CS];
            text.extend_from_slice(&old);
            let mut states = vec![text.clone()];
            text[1] = INT3;
            states.push(text.clone());
            text[2..].copy_from_slice(&new[1..]);
            states.push(text.clone());
            text[1] = new[0];
            states.push(text.clone());
            for (step, bytes) in states.iter().enumerate() {
                for from_byte in [0, 1] {
                    let at = site - 2 + from_byte;
                    let i = decode_iced(at, &bytes[from_byte..]);
                    prop_assert!(!i.is_invalid());
                    if i.mnemonic() == Mnemonic::Int3 {
                        prop_assert!(step == 1 || step == 2);
                        prop_assert_eq!(i.next_ip(), site as u64);
                        continue;
                    }
                    prop_assert_eq!(i.next_ip(), site as u64 + 5, "step {}", step);
                    let seen: [u8; PATCH_LEN] = bytes[1..].try_into().unwrap();
                    let (insn, end) = decode_patch(site - 1, &seen).unwrap();
                    prop_assert_eq!(end, site + 5);
                    prop_assert_eq!(seen, if step == 0 { old } else { new });
                    match insn {
                        Insn::Jmp(t) => {
                            prop_assert_eq!(i.mnemonic(), Mnemonic::Jmp);
                            prop_assert_eq!(i.near_branch_target(), t as u64);
                        }
                        Insn::Nop => prop_assert_eq!(i.mnemonic(), Mnemonic::Nop),
                        other => prop_assert!(false, "{:?}", other),
                    }
                }
            }
            let image = branch_test_image(test, slot, label, when_true, site).unwrap();
            let cmp = decode_iced(test, &image);
            prop_assert_eq!((cmp.mnemonic(), cmp.len()), (Mnemonic::Cmp, 8));
            prop_assert!(cmp.is_ip_rel_memory_operand());
            prop_assert_eq!(cmp.ip_rel_memory_address(), slot as u64);
            prop_assert_eq!(cmp.memory_size(), iced_x86::MemorySize::UInt64);
            prop_assert_eq!(cmp.immediate(1), 0);
            let jcc = decode_iced(test + 8, &image[8..]);
            prop_assert_eq!(jcc.mnemonic(), if when_true { Mnemonic::Jne } else { Mnemonic::Je });
            prop_assert_eq!(jcc.near_branch_target(), label as u64);
            let back = decode_iced(test + 14, &image[14..]);
            prop_assert_eq!(back.mnemonic(), Mnemonic::Jmp);
            prop_assert_eq!(back.near_branch_target(), site as u64 + 5);
        }
    }

    #[test]
    fn placement() {
        assert!(well_placed(3) && well_placed(0x1007));
        assert!(!well_placed(4) && !well_placed(5) && !well_placed(6));
    }
}
