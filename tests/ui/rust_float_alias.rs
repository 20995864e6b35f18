// A type named `f64` that is not a float is refused, not sent in a float
// register (the spelling `f64` picks the register; the type must agree).
#![allow(non_camel_case_types)]
use static_call::static_call;

type f64 = u64;

fn id(x: f64) -> u64 {
    x
}

#[static_call]
static ID: fn(f64) -> u64 = id;

fn main() {
    ID.call(1);
}
