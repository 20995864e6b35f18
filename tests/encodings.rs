//! What the assembler emitted for the macro's templates is what the crate's
//! encoders say (`src/arch/<arch>/mod.rs`): every site calls its key's
//! trampoline with the architecture's call instruction, and every trampoline
//! holds the assembled head (a jump to its own far form), the far form that
//! reads the key's slot, and the signature. Checked before `init`, so that
//! nothing has been patched: this process never initializes.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::{static_call, StaticCall};

extern "C" fn one(x: u64) -> u64 {
    x + 1
}

#[static_call]
static WITH_TARGET: extern "C" fn(u64) -> u64 = one;

#[static_call]
static NO_TARGET: extern "C" fn(u64);

#[static_call]
static ZERO: extern "C" fn() -> u32;

#[inline(never)]
fn sites() -> u64 {
    NO_TARGET.call(1);
    WITH_TARGET.call(1) + ZERO.call() as u64
}

/// The key's slot: the word after the key's 24-byte versioned prefix
/// (magic, layout, crate version, owner).
fn slot_of<K: StaticCall>(k: &K) -> usize {
    let key = k.key() as *const _ as usize;
    assert_eq!(common::read_bytes(key, 8), b"SCALLKEY", "the key starts with its prefix");
    key + 24
}

#[cfg(target_arch = "x86_64")]
fn check_trampoline(t: usize, slot: usize) {
    let b = common::read_bytes(t, 32);
    assert_eq!(t % 32, 0, "trampolines are 32-byte aligned");
    assert_eq!(b[..5], [0xe9, 3, 0, 0, 0], "head: jmp +3, to the far jump");
    assert_eq!(b[5..8], [0xc3, 0xcc, 0xcc], "ret, int3, int3");
    assert_eq!(b[8..10], [0xff, 0x25], "jmp qword ptr [rip + disp32]");
    let disp = i32::from_le_bytes(b[10..14].try_into().unwrap());
    assert_eq!((t + 14).wrapping_add(disp as isize as usize), slot, "the far jump reads the key's slot");
    assert_eq!(b[14..17], [0x0f, 0xb9, 0xcc], "ud1 ecx, esp (AT&T: ud1 %esp, %ecx)");
    assert_eq!(&b[17..23], b"SCALL\x01");
    assert!(b[23..].iter().all(|&x| x == 0xcc));
}

#[cfg(target_arch = "aarch64")]
fn check_trampoline(t: usize, slot: usize) {
    let b = common::read_bytes(t, 32);
    let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    assert_eq!(t % 32, 0, "trampolines are 32-byte aligned");
    assert_eq!(word(0), 0xd503_201f, "head: nop, falling through into the far form");
    // adrp x16, page; ldr x16, [x16, #lo12]: decoded by hand.
    let adrp = word(4);
    assert_eq!(adrp & 0x9f00_001f, 0x9000_0010, "adrp x16: {adrp:#010x}");
    let imm = ((((adrp >> 5) & 0x7_ffff) << 2) | ((adrp >> 29) & 3)) as i64;
    let page = (((t + 4) & !0xfff) as i64 + (((imm << 43) >> 43) << 12)) as usize;
    let ldr = word(8);
    assert_eq!(ldr & 0xffc0_03ff, 0xf940_0210, "ldr x16, [x16, #imm]: {ldr:#010x}");
    let lo = (((ldr >> 10) & 0xfff) * 8) as usize;
    assert_eq!(page + lo, slot, "the far form reads the key's slot");
    assert_eq!(word(12), 0xd61f_0200, "br x16");
    assert_eq!(word(16), 0xd42a_6860, "brk #0x5343");
    assert_eq!(word(20), 0xd42a_6860, "brk #0x5343");
    assert_eq!(&b[24..32], b"SCALL\x02\x00\x00", "signature, layout version 2");
}

#[test]
fn assembled_sites_and_trampolines() {
    assert_eq!(sites(), 2, "through the trampolines: 1 + 1, and zero with no target");
    assert_eq!(static_call::mode(), static_call::Mode::NotInitialized);
    let keys: [(&str, Vec<static_call::Site>, Option<usize>, usize); 3] = [
        (
            "WITH_TARGET",
            WITH_TARGET.sites(),
            static_call::__private::trampoline_of(WITH_TARGET.key()),
            slot_of(&WITH_TARGET),
        ),
        ("NO_TARGET", NO_TARGET.sites(), static_call::__private::trampoline_of(NO_TARGET.key()), slot_of(&NO_TARGET)),
        ("ZERO", ZERO.sites(), static_call::__private::trampoline_of(ZERO.key()), slot_of(&ZERO)),
    ];
    for (name, sites, tramp, slot) in keys {
        let tramp = tramp.unwrap_or_else(|| panic!("{name} has a trampoline"));
        check_trampoline(tramp, slot);
        assert_eq!(sites.len(), 1, "{name}");
        for s in sites {
            assert_eq!(common::call_target(s.address(), s.bytes()), Some(tramp), "{name}: {s}");
            let bytes = common::read_bytes(s.address(), common::INSN_LEN);
            assert_eq!(bytes[..], s.bytes()[..common::INSN_LEN], "{name}: Site::bytes is what the text holds");
            if cfg!(target_arch = "x86_64") {
                assert_eq!((s.address() + 1) % 4, 0, "{name}: the rel32 is 4-byte aligned: {s}");
                // At least three `cs` prefixes before the call (the last is
                // the byte the indirect form's opcode takes), and from the
                // first of them one instruction up to the site's end.
                assert_eq!(common::read_bytes(s.address() - 3, 3), [0x2e; 3], "{name}: {s}");
                #[cfg(target_arch = "x86_64")]
                {
                    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
                    let text = common::read_bytes(s.address() - 3, 8);
                    let i = Decoder::with_ip(64, &text, s.address() as u64 - 3, DecoderOptions::NONE).decode();
                    assert_eq!((i.mnemonic(), i.len()), (Mnemonic::Call, 8), "{name}: {s}");
                    assert_eq!(i.near_branch_target(), tramp as u64, "{name}: {s}");
                }
            } else {
                assert_eq!(s.address() % 4, 0, "{name}: {s}");
            }
        }
    }
}
