use static_call::static_call;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Point {
    x: u64,
    y: u64,
}

extern "C" fn origin() -> Point {
    Point { x: 0, y: 0 }
}

#[static_call]
static K: extern "C" fn() -> Point = origin;

fn main() {
    let _ = K.call();
}
