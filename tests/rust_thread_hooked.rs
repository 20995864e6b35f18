//! A target whose entry is temporarily a `jmp` (a detour installed by a
//! hooking library, a live patch): threading follows only the shim's own
//! jump, to the target's entry, so after the hook is removed the key's
//! sites call the target again, as an `extern "C"` key with the same target
//! does. (Found by review: threading once followed the detour and kept it.)
#![cfg(target_arch = "x86_64")]
use static_call::{static_call, Mode};

#[inline(never)]
#[no_mangle]
pub extern "C" fn hooked_target(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(7).rotate_left(5) ^ 0x55
}

#[inline(never)]
fn hook(x: u64) -> u64 {
    std::hint::black_box(x) + 1_000_000
}

#[inline(never)]
fn plain(x: u64) -> u64 {
    std::hint::black_box(x) ^ 1
}

// A Rust wrapper that only tail-jumps to the C function.
#[inline(never)]
fn wrapper(x: u64) -> u64 {
    hooked_target(x)
}

#[static_call]
static K: fn(u64) -> u64 = plain;

/// Writes `bytes` at `at` in this test's own text, as a hooking library
/// would (W+X for the moment of the write).
///
/// # Safety
///
/// No thread executes those bytes while they are written.
unsafe fn write_text(at: usize, bytes: &[u8]) {
    let page = at & !4095;
    let len = (at + bytes.len() - page + 4095) & !4095;
    // SAFETY: the pages are this binary's text; the caller's contract.
    unsafe {
        assert_eq!(libc::mprotect(page as *mut _, len, libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC), 0);
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len());
        libc::mprotect(page as *mut _, len, libc::PROT_READ | libc::PROT_EXEC);
    }
}

#[test]
fn a_removed_detour_is_not_called() {
    if cfg!(debug_assertions) || static_call::init().is_err() || !matches!(static_call::mode(), Mode::Patching(_)) {
        return;
    }
    let at = hooked_target as extern "C" fn(u64) -> u64 as usize;
    let hook_at = hook as fn(u64) -> u64 as usize;
    // SAFETY: the target's first bytes, readable text.
    let saved: [u8; 5] = unsafe { *(at as *const [u8; 5]) };
    let rel = (hook_at as i64 - (at as i64 + 5)) as i32;
    let mut jmp = [0xe9u8, 0, 0, 0, 0];
    jmp[1..].copy_from_slice(&rel.to_le_bytes());
    // Install the detour, retarget, remove the detour.
    // SAFETY: this thread is the only one; it is not inside the target.
    unsafe { write_text(at, &jmp) };
    assert_eq!(hooked_target(1), hook(1));
    K.update(wrapper);
    // SAFETY: as above.
    unsafe { write_text(at, &saved) };
    assert_eq!(wrapper(3), hooked_target(3));
    assert_eq!(K.call(3), hooked_target(3), "the key still calls the removed detour");
}
