//! `sites()`: one entry per `.call` expression, at distinct, well-placed
//! addresses, in address order, with the instruction each holds (decoded by
//! `Display`) and the reason it is not direct. Also a target more than 4 GiB
//! away, which the sites cannot reach (x86-64 `call rel32` reaches ±2 GiB,
//! aarch64 `bl` ±128 MiB): they stay on the trampoline.
use static_call::{static_call, NotDirect, Site, SiteState};

mod common;

/// How `Display` spells a direct call.
const CALL: &str = if cfg!(target_arch = "aarch64") { "bl 0x" } else { "call 0x" };

extern "C" fn inc(x: u32) -> u32 {
    x.wrapping_add(1)
}
extern "C" fn dec(x: u32) -> u32 {
    x.wrapping_sub(1)
}

#[static_call]
static K: extern "C" fn(u32) -> u32 = inc;

#[static_call]
static UNIT: extern "C" fn(u32);

extern "C" fn sink(_: u32) {}

// Five `.call` expressions of `K` in functions that are neither inlined nor
// merged (each differs), with straight-line bodies the optimizer has no
// reason to duplicate.
#[inline(never)]
fn one(x: u32) -> u32 {
    K.call(x)
}
#[inline(never)]
fn two(x: u32) -> u32 {
    K.call(x ^ 0x55)
}
#[inline(never)]
fn three(x: u32) -> u32 {
    let a = K.call(x.rotate_left(3));
    let b = K.call(a.wrapping_mul(7));
    a ^ b
}
#[inline(never)]
fn four(x: u32) -> u32 {
    K.call(x.wrapping_add(1000)).wrapping_mul(3)
}
const K_CALLS: usize = 5;

#[inline(never)]
fn unit_site(x: u32) {
    UNIT.call(x)
}

/// All the calls, with the results each target gives.
fn exercise(f: impl Fn(u32) -> u32) {
    for x in [0u32, 1, 77, u32::MAX] {
        assert_eq!(one(x), f(x));
        assert_eq!(two(x), f(x ^ 0x55));
        let a = f(x.rotate_left(3));
        assert_eq!(three(x), a ^ f(a.wrapping_mul(7)));
        assert_eq!(four(x), f(x.wrapping_add(1000)).wrapping_mul(3));
    }
    unit_site(1);
}

/// The `call 0x...` (`bl 0x...`) target that `Display` shows.
fn displayed_call_target(s: &Site) -> Option<usize> {
    let text = s.to_string();
    let hex = text.split(CALL).nth(1)?;
    let hex: String = hex.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    usize::from_str_radix(&hex, 16).ok()
}

/// Checks what holds for every site in every state, and returns the sites.
#[track_caller]
fn sites_of_k() -> Vec<Site> {
    let sites = K.sites();
    if !static_call::PATCHING {
        assert!(sites.is_empty(), "the portable backend has no sites");
        return sites;
    }
    assert_eq!(sites.len(), K_CALLS, "one site per `.call` expression: {sites:#?}");
    assert!(sites.windows(2).all(|w| w[0].address() < w[1].address()), "distinct, in address order");
    for s in &sites {
        if cfg!(target_arch = "aarch64") {
            assert!(s.address().is_multiple_of(4), "the instruction is 4-byte aligned: {s}");
            assert_eq!(s.bytes()[4], 0, "the fifth byte of a 4-byte instruction is zero: {s}");
        } else {
            assert!((s.address() + 1).is_multiple_of(4), "the rel32 is 4-byte aligned: {s}");
        }
        let live = common::read_bytes(s.address(), common::INSN_LEN);
        assert_eq!(live, s.bytes()[..common::INSN_LEN], "`bytes()` is what the site holds");
        // An indirect call's opcode stands on the byte before the address:
        // the line shows the whole instruction, from there.
        let start = if s.state() == SiteState::Indirect { s.address() - 1 } else { s.address() };
        assert!(s.to_string().starts_with(&format!("{start:#x}: ")), "{s}");
    }
    sites
}

#[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]
fn trampoline_of_k() -> usize {
    use static_call::StaticCall;
    static_call::__private::trampoline_of(K.key()).expect("K has a trampoline")
}

#[cfg(not(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable"))))]
fn trampoline_of_k() -> usize {
    unreachable!("no trampolines on the portable backend")
}

/// A copy of `dec`'s behaviour in a page mapped more than 4 GiB away from
/// this executable's text.
fn far_function() -> extern "C" fn(u32) -> u32 {
    // x86-64: `lea eax, [rdi - 1]; ret`; aarch64: `sub w0, w0, #1; ret`.
    #[cfg(not(target_arch = "aarch64"))]
    const CODE: &[u8] = &[0x8d, 0x47, 0xff, 0xc3];
    #[cfg(target_arch = "aarch64")]
    const CODE: &[u8] = &[0x00, 0x04, 0x00, 0x51, 0xc0, 0x03, 0x5f, 0xd6];
    let text = one as fn(u32) -> u32 as usize;
    for hint in [1usize << 40, 1 << 44, 1 << 36] {
        // SAFETY: a fresh anonymous private mapping; the hint is only a hint.
        let p = unsafe {
            libc::mmap(
                hint as *mut libc::c_void,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let far = (p as usize).abs_diff(text) > (4usize << 30);
        if !far {
            // SAFETY: the mapping made above, not used.
            unsafe { libc::munmap(p, 4096) };
            continue;
        }
        // SAFETY: the page is ours and writable; then made executable and
        // read-only, never writable again; the code is a complete function
        // of this type.
        unsafe {
            std::ptr::copy_nonoverlapping(CODE.as_ptr(), p as *mut u8, CODE.len());
            assert_eq!(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC), 0);
            // aarch64: the instruction cache is made coherent with what was
            // written before the page is executed.
            #[cfg(target_arch = "aarch64")]
            core::arch::asm!("dc cvau, {0}", "dsb ish", "ic ivau, {0}", "dsb ish", "isb", in(reg) p as usize);
            return std::mem::transmute::<*mut libc::c_void, extern "C" fn(u32) -> u32>(p);
        }
    }
    panic!("no address more than 4 GiB from the executable could be mapped");
}

#[test]
fn sites_states_reasons_and_disassembly() {
    // Before init: every site calls the trampoline.
    exercise(|x| inc(x));
    for s in sites_of_k() {
        assert_eq!(s.state(), SiteState::Trampoline, "{s}");
        assert_eq!(s.reason(), Some(NotDirect::NotInitialized), "{s}");
        assert_eq!(displayed_call_target(&s), Some(trampoline_of_k()), "{s}");
        assert!(s.to_string().contains("not initialized"), "the reason is shown: {s}");
    }

    // After init: direct calls to the current target.
    static_call::init().unwrap();
    exercise(|x| inc(x));
    let first = sites_of_k();
    for s in &first {
        assert_eq!(s.state(), SiteState::Direct, "{s}");
        assert_eq!(s.reason(), None, "{s}");
        assert_eq!(displayed_call_target(s), K.get().map(|f| f as usize), "{s}");
    }

    // After an update: the same sites, calling the new target.
    K.update(dec);
    exercise(|x| dec(x));
    let second = sites_of_k();
    assert_eq!(
        first.iter().map(Site::address).collect::<Vec<_>>(),
        second.iter().map(Site::address).collect::<Vec<_>>(),
        "sites do not move"
    );
    for s in &second {
        assert_eq!(s.state(), SiteState::Direct, "{s}");
        assert_eq!(displayed_call_target(s), K.get().map(|f| f as usize), "{s}");
    }

    // No target: `mov eax, 0` (aarch64: `bl` to the key's zeroing stub,
    // neither the trampoline nor a target), calls return zero.
    K.reset();
    exercise(|_| 0);
    for s in sites_of_k() {
        assert_eq!((s.state(), s.reason()), (SiteState::Zero, Some(NotDirect::NoTarget)), "{s}");
        if cfg!(target_arch = "aarch64") {
            let stub = common::call_target(s.address(), s.bytes()).expect("a bl");
            assert!(![trampoline_of_k(), inc as *const () as usize, dec as *const () as usize].contains(&stub), "{s}");
            assert_eq!(displayed_call_target(&s), Some(stub), "{s}");
        } else {
            assert_eq!(s.bytes(), [0xb8, 0, 0, 0, 0], "{s}");
            assert!(s.to_string().contains("mov eax, 0"), "{s}");
        }
    }
    // A key returning `()` with no target: a `nop` (five bytes on x86-64).
    let unit_sites = UNIT.sites();
    if static_call::PATCHING {
        assert_eq!(unit_sites.len(), 1);
        assert_eq!((unit_sites[0].state(), unit_sites[0].reason()), (SiteState::Nop, Some(NotDirect::NoTarget)));
        assert_eq!(unit_sites[0].bytes(), common::NOP_BYTES, "{}", unit_sites[0]);
        assert!(unit_sites[0].to_string().contains("nop"), "{}", unit_sites[0]);
    }
    UNIT.update(sink);
    unit_site(2);
    assert!(UNIT.sites().iter().all(|s| s.state() == SiteState::Direct));

    // A target out of rel32 reach: x86-64 sites call through the key's
    // slot, `call qword ptr [rip + slot]` (shown with the slot's address);
    // aarch64 sites call the trampoline, which jumps through the slot.
    let far = far_function();
    K.update(far);
    exercise(|x| dec(x));
    for s in sites_of_k() {
        if cfg!(target_arch = "x86_64") {
            use static_call::StaticCall;
            assert_eq!((s.state(), s.reason()), (SiteState::Indirect, Some(NotDirect::OutOfReach)), "{s}");
            let slot = K.key() as *const _ as usize + 24;
            let shown = s.to_string();
            assert!(shown.contains(&format!("ff 15 {:02x} ", s.bytes()[1])), "{shown}");
            assert!(shown.contains(&format!("call qword ptr [{slot:#x}]")), "{shown}");
            assert!(shown.contains("out of rel32 reach"), "{shown}");
        } else {
            assert_eq!((s.state(), s.reason()), (SiteState::Trampoline, Some(NotDirect::OutOfReach)), "{s}");
            assert_eq!(displayed_call_target(&s), Some(trampoline_of_k()), "{s}");
        }
    }
    // And back in reach.
    K.update(inc);
    exercise(|x| inc(x));
    for s in sites_of_k() {
        assert_eq!(s.state(), SiteState::Direct, "{s}");
        assert_eq!(displayed_call_target(&s), K.get().map(|f| f as usize), "{s}");
    }
}

#[test]
fn reasons_display_what_to_know() {
    for (r, text) in [
        (NotDirect::NotInitialized, "not initialized"),
        (NotDirect::NoTarget, "no target"),
        (NotDirect::OutOfReach, "out of rel32 reach"),
        (NotDirect::Misplaced, "not 4-byte aligned"),
        (NotDirect::Refused([0xcc, 1, 2, 3, 4]), "cc"),
    ] {
        assert!(r.to_string().contains(text), "{r}");
    }
}
