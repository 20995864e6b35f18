//! Tail jumps: a function whose first instruction is an unconditional
//! direct `b` does exactly what its destination does, with the same
//! registers and stack, so a caller may call the destination instead (see
//! the x86-64 module).

/// `bti c`, `bti j`, `bti jc`, landing pads that may open a
/// function built for branch target identification.
const BTI: [u32; 3] = [0xd503_245f, 0xd503_249f, 0xd503_24df];

/// Where the function at `at` branches, if its first instruction (after a
/// `bti`) is `b imm26`. `word(i)` reads the instruction at `at + 4 * i`;
/// the second is asked for only after a `bti` (which a function's code
/// always follows).
pub fn tail_jump(at: usize, word: &dyn Fn(usize) -> u32) -> Option<usize> {
    let (at, w) = if BTI.contains(&word(0)) { (at + 4, word(1)) } else { (at, word(0)) };
    if w >> 26 != 0b000101 {
        return None;
    }
    let imm = ((w & 0x03ff_ffff) << 6) as i32 >> 4; // imm26 * 4, sign-extended
    Some(at.wrapping_add(imm as isize as usize))
}

#[cfg(test)]
mod tests {

    fn at(words: &[u32]) -> Vec<u32> {
        words.to_vec()
    }

    /// Decodes `w` at `at`, failing if a word past `w` is asked for.
    fn tail_jump(at: usize, w: &[u32]) -> Option<usize> {
        super::tail_jump(at, &|i| w[i])
    }

    #[test]
    fn branches_are_followed_and_nothing_else() {
        assert_eq!(tail_jump(0x1000, &at(&[0x1400_0004])), Some(0x1010));
        assert_eq!(tail_jump(0x1000, &at(&[0x17ff_ffff])), Some(0x0ffc));
        assert_eq!(tail_jump(0x1000, &at(&[0xd503_245f, 0x1400_0001])), Some(0x1008));
        // bl (a call) and ret are not tail jumps.
        assert_eq!(tail_jump(0x1000, &at(&[0x9400_0001])), None);
        assert_eq!(tail_jump(0x1000, &at(&[0xd65f_03c0])), None);
    }
}
