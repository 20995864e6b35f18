//! A Rust target that cannot unwind and is not inlined into its shim makes
//! the shim one `jmp target`: `init`, `update` and `batch` follow it, so that the
//! sites call the target itself (one jump fewer), and calls are unchanged.
use static_call::{static_call, Mode, SiteState};

#[inline(never)]
fn plain(x: u64) -> u64 {
    x.rotate_left(3) ^ 5
}

#[inline(never)]
fn other(x: u64) -> u64 {
    x.wrapping_mul(3)
}

#[static_call]
static PLAIN: fn(u64) -> u64 = plain;

/// Where each site's call goes, on x86-64 (`e8 rel32`) and aarch64 (`bl`).
fn destinations() -> Vec<usize> {
    PLAIN
        .sites()
        .iter()
        .map(|s| {
            let b = s.bytes();
            if cfg!(target_arch = "x86_64") {
                assert_eq!(b[0], 0xe8, "{s}");
                let d = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                s.address().wrapping_add(5).wrapping_add(d as isize as usize)
            } else {
                let w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                assert_eq!(w >> 26, 0b100101, "{s}");
                let imm = ((w & 0x03ff_ffff) << 6) as i32 >> 4;
                s.address().wrapping_add(imm as isize as usize)
            }
        })
        .collect()
}

#[test]
fn sites_call_a_tail_jumped_target_itself() {
    assert_eq!(PLAIN.call(1), plain(1));
    if static_call::init().is_err() || !matches!(static_call::mode(), Mode::Patching(_)) || cfg!(debug_assertions) {
        // Unoptimized shims are not a lone jump; on the slots nothing is
        // patched: calls are checked, addresses not.
        assert_eq!(PLAIN.call(2), plain(2));
        PLAIN.update(other);
        assert_eq!(PLAIN.call(2), other(2));
        return;
    }
    assert!(PLAIN.sites().iter().all(|s| s.state() == SiteState::Direct));
    assert!(destinations().iter().all(|&d| d == plain as fn(u64) -> u64 as usize), "init threads the shim");
    assert_eq!(PLAIN.call(2), plain(2));
    PLAIN.update(other);
    assert!(destinations().iter().all(|&d| d == other as fn(u64) -> u64 as usize), "update threads the shim");
    assert_eq!(PLAIN.call(2), other(2));
    // A batch threads too (found by review: it left the sites on the shim).
    static_call::batch(|b| {
        b.update(&PLAIN, plain);
    })
    .unwrap();
    assert!(destinations().iter().all(|&d| d == plain as fn(u64) -> u64 as usize), "batch threads the shim");
    assert_eq!(PLAIN.call(2), plain(2));
}
