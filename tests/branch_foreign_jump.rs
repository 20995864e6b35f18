//! A static-branch site whose jump someone else redirected before the
//! registry was built (another patcher, a debugger, a hot-patch tool) to an
//! address that is not mapped readable: building the registry must not read
//! there (the site's test is the one its record names, not wherever the
//! site jumps now), the site is refused and reported, `set` still patches
//! the branch's other sites, and once the bytes are back the refused site
//! runs its own test of the value. x86-64 only: the scan below finds the
//! site by its assembled bytes.
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;

use static_call::{static_branch, SiteState};

#[static_branch]
static B: bool = false;

#[inline(never)]
fn redirected() -> bool {
    B.unlikely()
}
#[inline(never)]
fn other() -> bool {
    std::hint::black_box(1);
    B.unlikely()
}

/// The address of the `jmp rel32` of the one branch site in `f`'s code,
/// found by its assembled form: `2e 2e e9 rel32` whose target starts with
/// the test's `cmp qword ptr [rip + disp32], 0` (`48 83 3d`).
fn site_in(f: fn() -> bool) -> usize {
    let start = f as usize;
    let code = common::read_bytes(start, 256);
    (0..code.len() - 7)
        .find(|&i| {
            code[i..i + 3] == [0x2e, 0x2e, 0xe9] && {
                let rel = i32::from_le_bytes(code[i + 3..i + 7].try_into().unwrap());
                let test = (start + i + 7).wrapping_add_signed(rel as isize);
                common::read_bytes(test, 3) == [0x48, 0x83, 0x3d]
            }
        })
        .map(|i| start + i + 2)
        .expect("the branch site in the function's first 256 bytes")
}

/// A page within rel32 reach of `near` that is mapped but cannot be read.
fn unreadable_page_near(near: usize) -> usize {
    for mib in (64..1536).step_by(64) {
        for hint in [near.wrapping_add(mib << 20) & !0xfff, near.wrapping_sub(mib << 20) & !0xfff] {
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
            let p = unsafe {
                libc::mmap(
                    hint as *mut libc::c_void,
                    4096,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p as usize == hint {
                return hint;
            }
            if p != libc::MAP_FAILED {
                // SAFETY: the mapping we just made.
                unsafe { libc::munmap(p, 4096) };
            }
        }
    }
    panic!("no free page within 1.5 GiB of {near:#x}");
}

#[test]
fn a_redirected_branch_site_is_refused_without_reading_where_it_jumps() {
    let site = site_in(redirected);
    let original = common::read_bytes(site, 5);
    let away = unreadable_page_near(site);
    let rel = i32::try_from(away as i64 - (site as i64 + 5)).unwrap();
    let mut jmp = vec![0xe9];
    jmp.extend_from_slice(&rel.to_le_bytes());
    // Before anything of ours looked at the text: the registry is built
    // with the site jumping to the unreadable page.
    common::poke_text(site, &jmp);

    if static_call::init().is_err() {
        eprintln!("patching impossible here: nothing more to test");
        common::poke_text(site, &original);
        return;
    }
    let sites = B.sites();
    assert_eq!(sites.len(), 2, "{sites:?}");
    let refused = sites.iter().find(|s| s.address() == site).expect("the redirected site is listed");
    assert_eq!(refused.state(), SiteState::Trampoline, "{refused}");
    let kept = sites.iter().find(|s| s.address() != site).unwrap();
    assert_eq!(kept.state(), SiteState::NotTaken, "{kept}");

    assert!(!B.set(true));
    assert!(other(), "the branch's other site follows the value");
    let sites = B.sites();
    let refused = sites.iter().find(|s| s.address() == site).unwrap();
    assert_eq!(refused.state(), SiteState::Trampoline, "{refused}");
    assert_eq!(common::read_bytes(site, 5), jmp, "the refused site is never written");

    // The bytes back: the site runs its own assembled test of the value.
    common::poke_text(site, &original);
    assert!(redirected());
    assert!(B.set(false));
    assert!(!redirected() && !other());
}
