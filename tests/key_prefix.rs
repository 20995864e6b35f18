//! A key read by another copy of the crate (a host routing an update to a
//! plugin's key through an exported reference) is checked by its versioned
//! prefix before any pointer in it is followed: a key of another layout, an
//! owner table of another layout, or something that is not a key at all is
//! an error that names both versions, never a wild call.

use static_call::__private::Key;
use static_call::{static_call, CopyVersion, Error};

extern "C" fn ident(x: u64) -> u64 {
    x
}

#[static_call]
static REAL: extern "C" fn(u64) -> u64 = ident;

type K = Key<extern "C" fn(u64) -> u64, u64>;

/// Memory shaped like a key: the 24-byte prefix (magic, layout, crate
/// version, owner) and then words that must never be followed.
#[repr(C, align(64))]
struct Fake {
    magic: [u8; 8],
    abi: u32,
    version: u32,
    owner: usize,
    rest: [usize; 8],
}

/// This copy's key layout (`raw::KEY_ABI`: 3 since keys also record what
/// `get()` returns, 4 since they say whether they are a static branch's).
const OUR_LAYOUT: u32 = 4;

/// Poison: any of these followed as a pointer faults at once.
const WILD: usize = 0x10;

fn as_key(f: &'static Fake) -> &'static K {
    // SAFETY: only the prefix is ever read of a key whose prefix is not
    // ours; that is what this test checks.
    unsafe { &*(f as *const Fake as *const K) }
}

fn ours() -> CopyVersion {
    let v = |s: &str| s.parse::<u32>().unwrap();
    CopyVersion {
        abi: OUR_LAYOUT,
        version: v(env!("CARGO_PKG_VERSION_MAJOR")) << 16
            | v(env!("CARGO_PKG_VERSION_MINOR")) << 8
            | v(env!("CARGO_PKG_VERSION_PATCH")),
    }
}

#[test]
fn a_key_of_another_layout_is_refused_by_its_prefix() {
    static FAKE: Fake = Fake { magic: *b"SCALLKEY", abi: 99, version: 2 << 16, owner: WILD, rest: [WILD; 8] };
    let key = as_key(&FAKE);
    let e = key.try_update(ident).unwrap_err();
    let theirs = CopyVersion { abi: 99, version: 2 << 16 };
    assert_eq!(e, Error::IncompatibleCopy { ours: ours(), theirs: Some(theirs) });
    let text = e.to_string();
    assert!(text.contains("2.0.0 (key layout 99)") && text.contains(&ours().to_string()), "{text}");
    assert!(key.sites().is_empty());
    assert!(key.get().is_none(), "no target read out of a key this copy cannot read");
    assert_eq!(format!("{key:?}"), "Key { target: None }", "Debug reads nothing past the prefix either");
    assert_eq!(
        static_call::batch(|b| {
            b.update(&REAL, ident);
        }),
        Ok(())
    );
}

#[test]
fn something_that_is_not_a_key_is_refused() {
    static JUNK: Fake = Fake { magic: *b"NOTAKEY!", abi: 2, version: 0, owner: WILD, rest: [WILD; 8] };
    let key = as_key(&JUNK);
    let e = key.try_update(ident).unwrap_err();
    assert_eq!(e, Error::IncompatibleCopy { ours: ours(), theirs: None });
    assert!(e.to_string().contains("not a key"), "{e}");
    assert!(key.get().is_none() && key.sites().is_empty());
}

#[test]
fn an_owner_table_of_another_layout_is_not_called() {
    /// The owner table's own header: magic, layout, crate version; then
    /// entry points that must never be called.
    #[repr(C)]
    struct FakeOwner {
        magic: [u8; 8],
        abi: u32,
        version: u32,
        entries: [usize; 4],
    }
    static OWNER: FakeOwner = FakeOwner { magic: *b"SCALLOWN", abi: 7, version: 3 << 16 | 1, entries: [WILD; 4] };
    static FAKE: std::sync::OnceLock<&'static Fake> = std::sync::OnceLock::new();
    let fake = FAKE.get_or_init(|| {
        Box::leak(Box::new(Fake {
            magic: *b"SCALLKEY",
            abi: OUR_LAYOUT,
            version: 3 << 16 | 1,
            owner: &OWNER as *const FakeOwner as usize,
            rest: [WILD; 8],
        }))
    });
    let e = as_key(fake).try_update(ident).unwrap_err();
    assert_eq!(e, Error::IncompatibleCopy { ours: ours(), theirs: Some(CopyVersion { abi: 7, version: 3 << 16 | 1 }) });
    assert!(e.to_string().contains("3.0.1 (key layout 7)"), "{e}");
    assert!(as_key(fake).sites().is_empty());
}

#[test]
fn a_real_key_carries_the_prefix() {
    assert_eq!(REAL.call(5), 5);
    // Judged by what the old target computes: a release build may give a
    // function two addresses.
    assert_eq!(REAL.try_update(ident).map(|old| old.map(|f| f(3))), Ok(Some(3)));
}
