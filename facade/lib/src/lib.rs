//! A facade that re-exports `static_call` under its own name, as a
//! framework crate would: its users depend on this crate only and write
//! `#[sc_facade::static_call(crate = sc_facade::engine)]`.
pub use static_call as engine;
pub use static_call::static_call;
