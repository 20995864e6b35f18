// A closure that captures a zero-sized `!Send` value (a "this thread"
// token) is not a target: every thread may call a key's target.
use static_call::static_call;
use std::marker::PhantomData;

#[derive(Clone, Copy)]
struct Token(PhantomData<*mut ()>);

fn yes(_: u64) -> bool {
    true
}

#[static_call]
static CHECK: fn(u64) -> bool = yes;

fn main() {
    let tok = Token(PhantomData);
    CHECK.update(move |_| {
        let _held = tok;
        true
    });
}
