use static_call::static_call;

extern "C" fn half(x: f64) -> f64 {
    x / 2.0
}

#[static_call]
static K: extern "C" fn(f64) -> f64 = half;

fn main() {
    K.reset();
}
