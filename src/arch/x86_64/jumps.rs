//! Tail jumps: a function whose first instruction is an unconditional
//! direct `jmp` does exactly what its destination does, with the same
//! registers and stack, so a caller may call the destination instead. (A
//! Rust target's shim whose target cannot unwind compiles to `jmp target`:
//! its sites then call the target itself.)

/// `endbr64`, which may open a function built for CET indirect-branch
/// tracking, before its first real instruction.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Where the function whose first bytes (at `at`) are `bytes` jumps, if
/// its first instruction (after an `endbr64`) is `jmp rel32` or `jmp rel8`.
pub fn tail_jump(at: usize, bytes: &[u8; 12]) -> Option<usize> {
    let (at, b) = if bytes[..4] == ENDBR64 { (at + 4, &bytes[4..]) } else { (at, &bytes[..]) };
    match b[0] {
        0xe9 => {
            let d = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
            Some(at.wrapping_add(5).wrapping_add(d as isize as usize))
        }
        0xeb => Some(at.wrapping_add(2).wrapping_add(b[1] as i8 as isize as usize)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pad(b: &[u8]) -> [u8; 12] {
        let mut out = [0x90; 12];
        out[..b.len()].copy_from_slice(b);
        out
    }

    #[test]
    fn jumps_are_followed_and_nothing_else() {
        assert_eq!(tail_jump(0x1000, &pad(&[0xe9, 0x10, 0, 0, 0])), Some(0x1015));
        assert_eq!(tail_jump(0x1000, &pad(&[0xe9, 0xfb, 0xff, 0xff, 0xff])), Some(0x1000));
        assert_eq!(tail_jump(0x1000, &pad(&[0xeb, 0xfe])), Some(0x1000));
        assert_eq!(tail_jump(0x1000, &pad(&[0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 1, 0, 0, 0])), Some(0x100a));
        // mov rdi, rsi; jmp: a shim that moves an argument is kept.
        assert_eq!(tail_jump(0x1000, &pad(&[0x48, 0x89, 0xf7, 0xe9, 0, 0, 0, 0])), None);
        assert_eq!(tail_jump(0x1000, &pad(&[0xc3])), None);
        // jmp [rip+d] (ff 25): indirect, never followed.
        assert_eq!(tail_jump(0x1000, &pad(&[0xff, 0x25, 0, 0, 0, 0])), None);
    }
}
