//! Tail jumps: a function whose first instruction is an unconditional
//! direct `jmp` does exactly what its destination does, with the same
//! registers and stack, so a caller may call the destination instead. (A
//! Rust target's shim whose target cannot unwind compiles to `jmp target`:
//! its sites then call the target itself.)

/// Where the function at `at` jumps, if its first instruction (after an
/// `endbr64`) is `jmp rel32` or `jmp rel8`. `byte(i)` reads the byte at
/// `at + i`; only bytes of the instructions being decoded are asked for,
/// so that nothing past the end of the function's text is read.
pub fn tail_jump(at: usize, byte: &dyn Fn(usize) -> u8) -> Option<usize> {
    // `endbr64` is `f3 0f 1e fa`: each byte is asked for only once the ones
    // before it say the instruction is that long.
    let endbr = byte(0) == 0xf3 && byte(1) == 0x0f && byte(2) == 0x1e && byte(3) == 0xfa;
    let start = if endbr { 4 } else { 0 };
    let next = at.wrapping_add(start);
    match byte(start) {
        0xe9 => {
            let d = i32::from_le_bytes([byte(start + 1), byte(start + 2), byte(start + 3), byte(start + 4)]);
            Some(next.wrapping_add(5).wrapping_add(d as isize as usize))
        }
        0xeb => Some(next.wrapping_add(2).wrapping_add(byte(start + 1) as i8 as isize as usize)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    /// Decodes `b` at `at`, failing if a byte past `b` is asked for.
    fn tail_jump(at: usize, b: &[u8]) -> Option<usize> {
        super::tail_jump(at, &|i| b[i])
    }

    fn pad(b: &[u8]) -> Vec<u8> {
        b.to_vec()
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
        // Nothing past a one-byte function, or a two-byte `rep ret`, is read.
        assert_eq!(tail_jump(0x1000, &pad(&[0xf3, 0xc3])), None);
        // jmp [rip+d] (ff 25): indirect, never followed.
        assert_eq!(tail_jump(0x1000, &pad(&[0xff, 0x25, 0, 0, 0, 0])), None);
    }
}
