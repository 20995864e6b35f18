//! `static_call::batch` threads a lone `jmp target` shim as `init` and
//! `update` do: after a batch the sites call the target itself. (Found by
//! review: a batch left the sites on the shim, one jump more.)
// x86-64: the test decodes `call rel32` (rust_threaded covers aarch64's `bl`).
#![cfg(target_arch = "x86_64")]
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

fn destinations() -> Vec<usize> {
    PLAIN
        .sites()
        .iter()
        .map(|s| {
            let b = s.bytes();
            assert_eq!(b[0], 0xe8, "{s}");
            let d = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
            s.address().wrapping_add(5).wrapping_add(d as isize as usize)
        })
        .collect()
}

#[test]
fn a_batch_threads_the_shim_as_update_does() {
    assert_eq!(PLAIN.call(1), plain(1));
    if static_call::init().is_err() || !matches!(static_call::mode(), Mode::Patching(_)) || cfg!(debug_assertions) {
        return;
    }
    assert!(PLAIN.sites().iter().all(|s| s.state() == SiteState::Direct));
    PLAIN.update(other);
    assert!(destinations().iter().all(|&d| d == other as fn(u64) -> u64 as usize), "update threads");
    static_call::batch(|b| {
        b.update(&PLAIN, plain);
    })
    .unwrap();
    assert_eq!(PLAIN.call(2), plain(2));
    assert!(destinations().iter().all(|&d| d == plain as fn(u64) -> u64 as usize), "batch threads the shim");
}
