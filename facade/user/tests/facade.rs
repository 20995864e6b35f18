//! Keys declared through a facade crate work as any other.
use sc_facade_user::{retarget, run, Request, HANDLER};

#[test]
fn keys_declared_through_a_facade_call_and_update() {
    let r = Request { path: "/abc".into() };
    assert_eq!(run(&r), (4, 42));
    retarget();
    assert_eq!(run(&r), (40, 42));
    assert!(HANDLER.get().is_some());
    if sc_facade::engine::PATCHING {
        assert!(!HANDLER.sites().is_empty());
    }
}
