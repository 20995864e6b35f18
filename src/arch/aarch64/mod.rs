//! aarch64: the forms, their encodings and assembly templates.
//!
//! Every instruction this crate writes on aarch64 is one of `B`, `BL` and
//! `NOP`: the instructions the Arm architecture allows to be replaced by
//! another of the set while another core executes them (Arm ARM B2.2.5,
//! "Concurrent modification and execution of instructions"), each written as
//! one aligned 32-bit store, then made visible with cache maintenance and a
//! context synchronization of every thread (see [`protocol`]). So no
//! breakpoint and no signal handler are needed here.
//!
//! - A site is `bl <trampoline>` as assembled, patched to `bl target` when
//!   the target is within ±128 MiB, else left on the trampoline. With no
//!   target: `nop` (unit return), or `bl` to the key's zeroing stub (which
//!   zeroes `x0` and returns; never `mov x0, #0`, which is outside the set).
//! - A trampoline head is `b target`, or a `nop` that falls through into the
//!   trampoline's own far form `adrp x16, key; ldr x16, [x16, :lo12:key];
//!   br x16`, which jumps through the key's slot (never null: a key without
//!   a target holds its stub). With no target the head branches to that
//!   stub directly when in reach.
//! - A site has no indirect form: an indirect call needs a load and a
//!   `blr`, two instructions where a thread may stop between (and `ldr`,
//!   `blr` are outside the set), so a far target is called through the
//!   trampoline: `bl`, `nop`, `adrp`, `ldr`, `br`.
//!
//! The encoders are pure and unit-tested against encodings from the Arm ARM;
//! under QEMU, `tests/encodings.rs` checks that what the assembler emitted
//! for the templates is what these functions say it is.

pub mod jumps;
#[cfg(all(target_os = "linux", not(feature = "portable"), not(miri)))]
pub mod protocol;

use crate::raw::NoTarget;
use crate::site::SiteState;

/// Length of every patchable instruction.
pub const INSN_LEN: usize = 4;
/// Length of a patch (what the protocol rewrites at one address): one
/// instruction.
pub const PATCH_LEN: usize = INSN_LEN;

/// `nop`.
pub const NOP: u32 = 0xd503_201f;
/// `b` with a zero offset; the offset (in words) fills bits 0..26.
pub const B: u32 = 0x1400_0000;
/// `bl` with a zero offset.
pub const BL: u32 = 0x9400_0000;
/// `brk #0x5343` ("SC"): never executed (it stops straight-line speculation
/// past the far jump's `br`).
pub const BRK_SC: u32 = 0xd420_0000 | (0x5343 << 5);
/// `br x16`.
pub const BR_X16: u32 = 0xd61f_0200;

/// Byte size of a trampoline (and its alignment).
pub const TRAMP_SIZE: usize = 32;
/// Offset of the far form (`adrp x16; ldr x16; br x16`) within a
/// trampoline: right after the head, which falls through into it as a
/// `nop`.
pub const TRAMP_FAR_OFFSET: usize = 4;

/// What a patchable instruction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Insn {
    /// `bl target`.
    Call(usize),
    /// `b target` (trampoline heads only).
    Jmp(usize),
    /// `nop`.
    Nop,
}

/// The offset in words from `at` to `target`, as the 26-bit field of `b`/`bl`,
/// or `None` when `target` is out of reach (±128 MiB) or not 4-aligned.
pub fn imm26(at: usize, target: usize) -> Option<u32> {
    let d = (target as i64).wrapping_sub(at as i64);
    if d % 4 != 0 || !(-(1i64 << 27)..(1i64 << 27)).contains(&d) {
        return None;
    }
    Some(((d >> 2) as u32) & 0x03ff_ffff)
}

/// Encodes `insn` as it would stand at address `at`; `None` when a branch
/// target is out of reach.
pub fn encode(at: usize, insn: Insn) -> Option<[u8; INSN_LEN]> {
    let word = match insn {
        Insn::Call(t) => BL | imm26(at, t)?,
        Insn::Jmp(t) => B | imm26(at, t)?,
        Insn::Nop => NOP,
    };
    Some(word.to_le_bytes())
}

/// Reads back what [`encode`] wrote at `at`; `None` for any other bytes.
pub fn decode(at: usize, bytes: &[u8; INSN_LEN]) -> Option<Insn> {
    let word = u32::from_le_bytes(*bytes);
    // Sign-extend the 26-bit word offset.
    let target = || at.wrapping_add(((((word << 6) as i32) >> 6) as isize * 4) as usize);
    match word & 0xfc00_0000 {
        _ if word == NOP => Some(Insn::Nop),
        BL => Some(Insn::Call(target())),
        B => Some(Insn::Jmp(target())),
        _ => None,
    }
}

/// Where the patch of the site at `site` starts: the site itself.
pub fn site_patch_at(site: usize) -> usize {
    site
}

/// Reads back a patch at `at`: the instruction and where it ends.
pub fn decode_patch(at: usize, bytes: &[u8; PATCH_LEN]) -> Option<(Insn, usize)> {
    decode(at, bytes).map(|i| (i, at.wrapping_add(INSN_LEN)))
}

/// What a site holds when its key's target is `target` (0: none). `none` is
/// the key's no-target stub. There is no indirect form (`_slot`): a far
/// target is called through the trampoline.
pub fn site_form(
    at: usize,
    tramp: usize,
    _slot: usize,
    target: usize,
    none: usize,
    no_target: NoTarget,
) -> [u8; INSN_LEN] {
    let to = match (target, no_target) {
        (0, NoTarget::Nop) => return NOP.to_le_bytes(),
        (0, NoTarget::Zero) => none,
        (t, _) => t,
    };
    encode(at, Insn::Call(to)).or_else(|| encode(at, Insn::Call(tramp))).expect("a site reaches its trampoline")
}

/// What a trampoline head holds when its key's target is `target` (0:
/// none, which branches to the stub `none`).
pub fn tramp_form(at: usize, target: usize, none: usize, _no_target: NoTarget) -> [u8; INSN_LEN] {
    let to = if target == 0 { none } else { target };
    encode(at, Insn::Jmp(to)).unwrap_or_else(|| far_head(at))
}

/// What the macro assembled at a site: `bl tramp`.
pub fn assembled_site(at: usize, tramp: usize) -> Option<[u8; INSN_LEN]> {
    encode(at, Insn::Call(tramp))
}

/// What the macro assembled at a trampoline's head: the far head.
pub fn assembled_tramp(tramp: usize) -> [u8; INSN_LEN] {
    far_head(tramp)
}

/// The head of a trampoline that reaches its target through the key's slot:
/// a `nop`, which falls through into the far form (what the macro
/// assembles).
pub fn far_head(_tramp: usize) -> [u8; INSN_LEN] {
    NOP.to_le_bytes()
}

/// The instruction's four bytes, then a zero: what a [`crate::Site`]
/// reports.
pub fn site_bytes(patch: &[u8; PATCH_LEN]) -> [u8; 5] {
    let mut b = [0; 5];
    b[..INSN_LEN].copy_from_slice(patch);
    b
}

/// The address and bytes (padded to five) that an error about the patch
/// at `at` names, found and expected.
pub fn window(
    at: usize,
    found: &[u8; PATCH_LEN],
    expected: &[u8; PATCH_LEN],
    _is_site: bool,
) -> (usize, [u8; 5], [u8; 5]) {
    (at, site_bytes(found), site_bytes(expected))
}

/// What a site's bytes say it does, if it does not call its trampoline. A
/// `bl` to the no-target stub is the zero form only while the key has no
/// target (a target may be the stub's very address: folded code).
pub fn site_state(at: usize, bytes: &[u8; INSN_LEN], tramp: usize, none: usize, has_target: bool) -> Option<SiteState> {
    match decode(at, bytes)? {
        Insn::Nop => Some(SiteState::Nop),
        Insn::Call(t) if t == none && !has_target => Some(SiteState::Zero),
        Insn::Call(t) if t != tramp => Some(SiteState::Direct),
        _ => None,
    }
}

/// `adrp x16, slot` as it stands at `at`.
fn adrp_x16(at: usize, slot: usize) -> Option<u32> {
    let pages = ((slot & !0xfff) as i64).wrapping_sub((at & !0xfff) as i64) >> 12;
    if !(-(1i64 << 20)..(1i64 << 20)).contains(&pages) {
        return None;
    }
    let imm = pages as u32 & 0x1f_ffff;
    Some(0x9000_0000 | ((imm & 3) << 29) | ((imm >> 2) << 5) | 16)
}

/// `ldr x16, [x16, #(slot & 0xfff)]`.
fn ldr_x16_lo12(slot: usize) -> Option<u32> {
    let lo = slot & 0xfff;
    lo.is_multiple_of(8).then_some(0xf940_0000 | (((lo / 8) as u32) << 10) | (16 << 5) | 16)
}

/// The whole expected image of the trampoline at `tramp` whose key slot is
/// at `slot`, with `head` as its first instruction: head, `adrp x16`, `ldr
/// x16`, `br x16` (the far form, which a `nop` head falls through into),
/// two `brk`, then the signature `"SCALL"`, version 2 (version 1 had a `brk`
/// after the head and the far form at +8, which its head branched to) and
/// two zero bytes. `None` if the slot is out of `adrp` reach or misaligned
/// (which the linker would have refused).
pub fn trampoline_image(tramp: usize, slot: usize, head: [u8; INSN_LEN]) -> Option<[u8; TRAMP_SIZE]> {
    let words = [
        u32::from_le_bytes(head),
        adrp_x16(tramp + TRAMP_FAR_OFFSET, slot)?,
        ldr_x16_lo12(slot)?,
        BR_X16,
        BRK_SC,
        BRK_SC,
    ];
    let mut image = [0u8; TRAMP_SIZE];
    for (i, w) in words.iter().enumerate() {
        image[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    image[24..32].copy_from_slice(b"SCALL\x02\x00\x00");
    Some(image)
}

// ---------------------------------------------------------------- branches

/// Length of a static-branch site's out-of-line test: eight instructions
/// (see [`branch_test_image`]).
pub const BRANCH_TEST_LEN: usize = 32;

/// `str x16, [sp, #-16]!`.
const PUSH_X16: u32 = 0xf81f_0ff0;
/// `ldr x16, [sp], #16`.
const POP_X16: u32 = 0xf841_07f0;
/// `cbnz x16, +12` and `cbz x16, +12`.
const CBNZ_X16_12: u32 = 0xb500_0000 | (3 << 5) | 16;
const CBZ_X16_12: u32 = 0xb400_0000 | (3 << 5) | 16;

/// What the macro assembled at a static-branch site: `b test`.
pub fn assembled_branch(site: usize, test: usize) -> Option<[u8; PATCH_LEN]> {
    encode(site, Insn::Jmp(test))
}

/// Where a static-branch site's assembled `b` goes (its test), if it holds
/// a `b` at all.
#[cfg(test)]
pub fn branch_jump_of(site: usize, bytes: &[u8; PATCH_LEN]) -> Option<usize> {
    match decode(site, bytes)? {
        Insn::Jmp(t) => Some(t),
        _ => None,
    }
}

/// The whole expected image of a static-branch site's test at `test`:
/// `str x16, [sp, #-16]!`; `adrp x16, slot`; `ldr x16, [x16, :lo12:slot]`;
/// `cbnz x16, 1f` (`when_true`, an `unlikely` site) or `cbz`; `ldr x16,
/// [sp], #16`; `b` back to the site's end; `1: ldr x16, [sp], #16`; `b
/// label`. (`asm goto` has no outputs on stable Rust: the scratch register
/// is saved on the stack, and the site's asm is not `nostack`.) `None` when
/// something is out of reach.
pub fn branch_test_image(
    test: usize,
    slot: usize,
    label: usize,
    when_true: bool,
    site: usize,
) -> Option<[u8; BRANCH_TEST_LEN]> {
    let words = [
        PUSH_X16,
        adrp_x16(test + 4, slot)?,
        ldr_x16_lo12(slot)?,
        if when_true { CBNZ_X16_12 } else { CBZ_X16_12 },
        POP_X16,
        B | imm26(test + 20, site + INSN_LEN)?,
        POP_X16,
        B | imm26(test + 28, label)?,
    ];
    let mut image = [0u8; BRANCH_TEST_LEN];
    for (i, w) in words.iter().enumerate() {
        image[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    Some(image)
}

/// What a static-branch site holds when it is patched: `b label` if
/// `taken`, else `nop` (both in the concurrent-modification set). `None`
/// when the label is out of reach.
pub fn branch_form(site: usize, label: usize, taken: bool) -> Option<[u8; PATCH_LEN]> {
    encode(site, if taken { Insn::Jmp(label) } else { Insn::Nop })
}

/// What a static-branch site says it does, if it is patched (not its
/// assembled `b test`).
pub fn branch_state(site: usize, bytes: &[u8; PATCH_LEN], test: usize) -> Option<SiteState> {
    match decode(site, bytes)? {
        Insn::Jmp(t) if t != test => Some(SiteState::Taken),
        Insn::Nop => Some(SiteState::NotTaken),
        _ => None,
    }
}

/// Every instruction is 4-byte aligned on aarch64: every site is well placed.
pub fn well_placed(site: usize) -> bool {
    site.is_multiple_of(4)
}

/// One instruction at `at`, as objdump prints it, if it is one of the forms
/// this crate writes; otherwise a note that it is not.
pub fn disassemble(at: usize, bytes: &[u8]) -> String {
    let Some(word) = bytes.first_chunk::<INSN_LEN>() else { return "(bad)".to_string() };
    match decode(at, word) {
        Some(Insn::Call(t)) => format!("bl {t:#x}"),
        Some(Insn::Jmp(t)) => format!("b {t:#x}"),
        Some(Insn::Nop) => "nop".to_string(),
        None => "(not a static_call form)".to_string(),
    }
}

/// Assembly templates (see the x86-64 ones). The record format and the
/// sections are the same on every architecture.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_aarch64_site {
    // A call site: `bl` to the key's trampoline (always 4 bytes, always
    // aligned), and a record `{site - ., key - .}` in the site section. The
    // operands are bound to AAPCS64 registers by the macro.
    ($key:path; x86_64 { $($_x86_64:tt)* } aarch64 { $($operands:tt)* }) => {
        ::core::arch::asm!(
            "2:",
            "bl {__static_call_key}_sc_tramp",
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
macro_rules! __static_call_aarch64_branch {
    // A static-branch site (an `asm goto`): `b` to an out-of-line test of
    // the key's slot in its own section (see `branch_test_image`), which
    // branches to the label when the branch is to be taken (`cbnz`: an
    // `unlikely` site; `cbz`: a `likely` one) and back to the site's end
    // otherwise. Patched forms: `b label` or `nop`. The record `{site - .,
    // key - ., label - ., test - ., flags}` (flags bit 0: the site jumps
    // when the value is true) goes to the branch section.
    (@emit $key:path, $label:block, $cb:literal, $flags:literal) => {
        ::core::arch::asm!(
            "2:",
            "b 4f",
            "3:",
            ".pushsection .text.static_branch_test, \"ax\", %progbits",
            ".balign 4",
            "4:",
            "str x16, [sp, #-16]!",
            // The slot, at `raw::SLOT_OFFSET` in the key.
            "adrp x16, {__static_call_key} + 24",
            "ldr x16, [x16, :lo12:{__static_call_key} + 24]",
            $cb,
            "ldr x16, [sp], #16",
            "b 3b",
            "5:",
            "ldr x16, [sp], #16",
            "b {__static_call_label}",
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
        )
    };
    ($key:path, unlikely, $label:block) => {
        $crate::__static_call_aarch64_branch!(@emit $key, $label, "cbnz x16, 5f", ".long 1")
    };
    ($key:path, likely, $label:block) => {
        $crate::__static_call_aarch64_branch!(@emit $key, $label, "cbz x16, 5f", ".long 0")
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_aarch64_trampoline {
    // The trampoline of a key: 32 bytes, 32-aligned, in its own section,
    // emitted from a naked function as on x86-64. The assembled head is a
    // `nop` that falls through into the far form through the key's slot
    // (no taken branch before the load), so that a process that cannot
    // patch runs correctly on the slots alone. Patching may make the head
    // `b target` (or `b` to the no-target stub), and back to the `nop`:
    // both in the concurrent-modification set (DESIGN §7).
    ($key:path, $holder:ident, target) => {
        #[doc(hidden)]
        #[allow(non_snake_case)]
        #[unsafe(naked)]
        extern "C" fn $holder() {
            ::core::arch::naked_asm!(
                ".pushsection .text.static_call_tramp, \"ax\", %progbits",
                ".balign 32",
                ".globl {k}_sc_tramp",
                ".hidden {k}_sc_tramp",
                ".type {k}_sc_tramp, %function",
                "{k}_sc_tramp:",
                ".inst 0xd503201f",
                // The slot, at `raw::SLOT_OFFSET` in the key.
                "adrp x16, {k} + 24",
                "ldr x16, [x16, :lo12:{k} + 24]",
                "br x16",
                ".inst 0xd42a6860",
                ".inst 0xd42a6860",
                ".ascii \"SCALL\"",
                ".byte 2, 0, 0",
                ".size {k}_sc_tramp, 32",
                ".popsection",
                ".pushsection static_call_tramps_v2, \"aR\", %progbits",
                ".balign 4",
                ".long {k}_sc_tramp - .",
                ".long {k} - .",
                ".popsection",
                "brk #1",
                k = sym $key,
            )
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_aarch64_trampoline_addr {
    // The address of a key's trampoline, for `out_of_line` calls.
    ($key:path) => {{
        let t: *const ();
        // SAFETY: `adrp`/`add` only compute an address.
        unsafe {
            ::core::arch::asm!(
                "adrp {t}, {k}_sc_tramp",
                "add {t}, {t}, :lo12:{k}_sc_tramp",
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
    use proptest::prelude::*;

    #[test]
    fn branch_forms_and_test() {
        let (site, test, label) = (0x40_1000usize, 0x40_8000usize, 0x40_1040usize);
        let slot = 0x60_2018usize;
        let b = assembled_branch(site, test).unwrap();
        assert_eq!(branch_jump_of(site, &b), Some(test));
        assert_eq!(branch_state(site, &b, test), None);
        assert_eq!(branch_state(site, &branch_form(site, label, true).unwrap(), test), Some(SiteState::Taken));
        assert_eq!(branch_state(site, &branch_form(site, label, false).unwrap(), test), Some(SiteState::NotTaken));
        assert_eq!(branch_form(site, label, false), Some(NOP.to_le_bytes()));
        let image = branch_test_image(test, slot, label, true, site).unwrap();
        let word = |i: usize| u32::from_le_bytes(image[i * 4..i * 4 + 4].try_into().unwrap());
        // From objdump: `str x16, [sp, #-16]!`, `cbnz x16, .+12`, `ldr x16, [sp], #16`.
        assert_eq!(word(0), 0xf81f_0ff0);
        assert_eq!(word(3), 0xb500_0070);
        assert_eq!(word(4), 0xf841_07f0);
        assert_eq!(decode(test + 20, &word(5).to_le_bytes()), Some(Insn::Jmp(site + 4)));
        assert_eq!(decode(test + 28, &word(7).to_le_bytes()), Some(Insn::Jmp(label)));
        let cbz = branch_test_image(test, slot, label, false, site).unwrap();
        assert_eq!(u32::from_le_bytes(cbz[12..16].try_into().unwrap()), 0xb400_0070);
    }

    #[test]
    fn known_encodings() {
        // From the Arm ARM and objdump: `bl .+8`, `b .-4`, `nop`, `brk`,
        // `br x16`.
        assert_eq!(encode(0x1000, Insn::Call(0x1008)), Some(0x9400_0002u32.to_le_bytes()));
        assert_eq!(encode(0x1000, Insn::Jmp(0x0ffc)), Some(0x17ff_ffffu32.to_le_bytes()));
        assert_eq!(encode(0x1000, Insn::Nop), Some(0xd503_201fu32.to_le_bytes()));
        assert_eq!(BRK_SC, 0xd42a_6860);
        assert_eq!(far_head(0x4000), NOP.to_le_bytes());
        // As aarch64-linux-gnu-as assembled them (objdump): `adrp x16,
        // 0x412000` at 0x400008, `ldr x16, [x16, #24]`, `adrp x16, 0x3ff000`
        // at 0x400010.
        assert_eq!(adrp_x16(0x40_0008, 0x41_2018), Some(0xd000_0090));
        assert_eq!(ldr_x16_lo12(0x41_2018), Some(0xf940_0e10));
        assert_eq!(adrp_x16(0x40_0010, 0x3f_f000), Some(0xf0ff_fff0));
    }

    proptest! {
        #[test]
        fn branches_round_trip(at in 0x1000usize..(1usize << 46), off in -(1i64 << 25)..(1i64 << 25), call in any::<bool>()) {
            let at = at & !3;
            let target = (at as i64 + off * 4) as usize;
            let insn = if call { Insn::Call(target) } else { Insn::Jmp(target) };
            let bytes = encode(at, insn).unwrap();
            prop_assert_eq!(decode(at, &bytes), Some(insn));
            let word = u32::from_le_bytes(bytes);
            prop_assert_eq!(word >> 26, if call { 0b100101 } else { 0b000101 });
        }

        #[test]
        fn out_of_reach_targets_are_refused(at in 0x1000usize..(1usize << 40), far in (1u64 << 27)..(1u64 << 44)) {
            let at = at & !3;
            prop_assert_eq!(encode(at, Insn::Call(at + far as usize)), None);
            prop_assert_eq!(encode(at, Insn::Call(at.wrapping_sub(far as usize + 4))), None);
        }

        #[test]
        fn far_form_addresses_the_slot(tramp in 0x10_0000usize..(1usize << 46), off in -(1i64 << 31)..(1i64 << 31)) {
            let tramp = tramp & !31;
            let slot = ((tramp as i64 + off) as usize) & !7;
            let image = trampoline_image(tramp, slot, far_head(tramp)).unwrap();
            let word = |i: usize| u32::from_le_bytes(image[i..i + 4].try_into().unwrap());
            // The head is a `nop` that falls through into `adrp x16` at +4.
            // Decode adrp and ldr by hand and recompute the slot address.
            prop_assert_eq!(decode(tramp, &image[..4].try_into().unwrap()), Some(Insn::Nop));
            let adrp = word(4);
            let immlo = ((adrp >> 29) & 3) as i64;
            let immhi = (((adrp >> 5) & 0x7_ffff) as i64) << 2;
            let pages = ((immhi | immlo) << 43) >> 43;
            let page = (((tramp + 4) & !0xfff) as i64 + (pages << 12)) as usize;
            let lo = (((word(8) >> 10) & 0xfff) * 8) as usize;
            prop_assert_eq!(page + lo, slot);
            prop_assert_eq!(word(12), BR_X16);
            prop_assert_eq!(word(16), BRK_SC);
        }
    }

    #[test]
    fn forms() {
        let (at, tramp, none) = (0x10_0000, 0x10_0400, 0x10_0800);
        let slot = 0x20_0018;
        assert_eq!(site_form(at, tramp, slot, 0, none, NoTarget::Nop), NOP.to_le_bytes());
        assert_eq!(decode(at, &site_form(at, tramp, slot, 0, none, NoTarget::Zero)), Some(Insn::Call(none)));
        assert_eq!(
            decode(at, &site_form(at, tramp, slot, 0x20_0000, none, NoTarget::Zero)),
            Some(Insn::Call(0x20_0000))
        );
        let far = 0x7f00_0000_0000;
        assert_eq!(decode(at, &site_form(at, tramp, slot, far, none, NoTarget::Zero)), Some(Insn::Call(tramp)));
        assert_eq!(tramp_form(tramp, far, none, NoTarget::Zero), far_head(tramp));
        assert_eq!(decode(tramp, &tramp_form(tramp, 0, none, NoTarget::Nop)), Some(Insn::Jmp(none)));
        let bytes = site_form(at, tramp, slot, 0, none, NoTarget::Zero);
        assert_eq!(site_state(at, &bytes, tramp, none, false), Some(SiteState::Zero));
        assert_eq!(site_state(at, &bytes, tramp, none, true), Some(SiteState::Direct), "a target folded onto the stub");
        assert_eq!(site_state(at, &assembled_site(at, tramp).unwrap(), tramp, none, false), None);
        assert_eq!(disassemble(at, &bytes), format!("bl {none:#x}"));
        assert_eq!(disassemble(at, &[0, 0, 0, 0]), "(not a static_call form)");
    }
}
