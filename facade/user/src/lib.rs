//! Keys declared through a facade, with strict lints: the macro's expansion
//! must raise none of them (`cargo clippy --workspace -- -D warnings` runs
//! over this crate in CI).
#![deny(
    missing_docs,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::inline_asm_x86_intel_syntax,
    clippy::missing_docs_in_private_items
)]

use sc_facade::static_call;

/// A request.
pub struct Request {
    /// Its path.
    pub path: String,
}

/// The default handler.
fn by_len(r: &Request) -> usize {
    r.path.len()
}

/// The default doubler.
extern "C" fn double(x: u64) -> u64 {
    x * 2
}

/// Dispatches requests.
#[static_call(crate = sc_facade::engine)]
pub static HANDLER: fn(&Request) -> usize = by_len;

/// Doubles.
#[static_call(crate = sc_facade::engine)]
pub static DOUBLE: extern "C" fn(u64) -> u64 = double;

/// Calls both keys.
#[must_use]
pub fn run(r: &Request) -> (usize, u64) {
    (HANDLER.call(r), DOUBLE.call(21))
}

/// Retargets both keys.
///
/// # Panics
///
/// If an update fails.
pub fn retarget() {
    HANDLER.update(|r: &Request| r.path.len() * 10);
    DOUBLE.update(double);
}
