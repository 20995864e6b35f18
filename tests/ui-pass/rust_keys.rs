//! The examples, compiled and run by trybuild as a user's crate.
use static_call::static_call;

pub struct Request {
    pub path: String,
}
#[derive(Debug, PartialEq)]
pub struct Response(usize);
impl Response {
    fn ok(n: usize) -> Response {
        Response(n)
    }
}
fn not_found(_: &Request) -> Response {
    Response(404)
}
fn upper(r: &Request) -> Response {
    Response(r.path.to_uppercase().len())
}

#[static_call]
static HANDLER: fn(&Request) -> Response = not_found;

fn main() -> Result<(), static_call::Error> {
    let req = Request { path: "/x".into() };
    let resp = HANDLER.call(&req);
    assert_eq!(resp, Response(404));
    let old = HANDLER.update(upper);
    assert!(old.is_some());
    HANDLER.update(|r: &Request| Response::ok(r.path.len()));
    HANDLER.try_update(upper)?;
    assert!(HANDLER.get().is_some());
    // The portable backend (`--features portable`) has no call sites to
    // list; every other mode lists this program's two (the two `call`s).
    let sites = HANDLER.sites().len();
    match static_call::mode() {
        static_call::Mode::Portable => assert_eq!(sites, 0),
        _ => assert_eq!(sites, 2),
    }
    static_call::batch(|b| {
        b.update(&HANDLER, upper);
    })?;
    assert_eq!(HANDLER.call(&req), Response(2));
    Ok(())
}
