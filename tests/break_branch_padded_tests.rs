//! Every static-branch site is patched by `init`, whatever the assembler
//! does to the instructions around it. Run it also with the JCC erratum
//! mitigation that Intel recommends for Skylake-family CPUs (GCC's
//! `-Wa,-mbranches-within-32B-boundaries`):
//!
//! ```text
//! RUSTFLAGS="-C llvm-args=-x86-branches-within-32B-boundaries" cargo test --test break_branch_padded_tests
//! ```
//!
//! That assembler pads every branch that would cross or end on a 32-byte
//! boundary with `nop`s (or prefixes). The out-of-line tests of branch
//! sites are packed 19 bytes apart in `.text.static_branch_test`, so some
//! of their `jne`/`je`/`jmp` got padding, and the registry, which checks
//! each test byte for byte, refused their sites: they ran their
//! out-of-line test forever, never a `nop`. The template now forces the
//! test's bytes, as it forces the site's.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

use static_call::{static_branch, SiteState};

#[static_branch]
static A: bool = false;
#[static_branch]
static B: bool = true;

macro_rules! sites {
    ($($f:ident = $n:literal),*) => {
        $(
            // Distinct (the `black_box` of its number), so that no two are
            // merged.
            #[inline(never)]
            fn $f(x: u64) -> u64 {
                std::hint::black_box($n);
                let mut r = x;
                if A.unlikely() {
                    r += 1;
                }
                if B.likely() {
                    r += 2;
                }
                std::hint::black_box(r)
            }
        )*
        const FNS: &[fn(u64) -> u64] = &[$($f),*];
    };
}

sites!(
    f00 = 0,
    f01 = 1,
    f02 = 2,
    f03 = 3,
    f04 = 4,
    f05 = 5,
    f06 = 6,
    f07 = 7,
    f08 = 8,
    f09 = 9,
    f10 = 10,
    f11 = 11,
    f12 = 12,
    f13 = 13,
    f14 = 14,
    f15 = 15,
    f16 = 16,
    f17 = 17,
    f18 = 18,
    f19 = 19
);

#[test]
fn every_branch_site_is_patched() {
    for f in FNS {
        assert_eq!(f(std::hint::black_box(10)), 12);
    }
    if static_call::init().is_err() {
        eprintln!("patching impossible here: nothing to test");
        return;
    }
    let sites: Vec<_> = A.sites().into_iter().chain(B.sites()).collect();
    assert!(sites.len() >= 2 * FNS.len(), "{sites:?}");
    let refused: Vec<String> =
        sites.iter().filter(|s| s.state() == SiteState::Trampoline).map(|s| s.to_string()).collect();
    assert!(
        refused.is_empty(),
        "{} of {} sites left on their test:\n{}",
        refused.len(),
        sites.len(),
        refused.join("\n")
    );
    A.set(true);
    B.set(false);
    for f in FNS {
        assert_eq!(f(std::hint::black_box(10)), 11);
    }
}
