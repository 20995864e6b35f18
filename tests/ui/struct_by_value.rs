use static_call::static_call;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Point {
    x: u64,
    y: u64,
}

extern "C" fn norm1(p: Point) -> u64 {
    p.x + p.y
}

#[static_call]
static K: extern "C" fn(Point) -> u64 = norm1;

fn main() {
    K.call(Point { x: 1, y: 2 });
}
