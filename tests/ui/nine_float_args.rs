use static_call::static_call;

extern "C" fn sum(a: f64, b: f64, c: f64, d: f64, e: f64, f: f64, g: f64, h: f64, i: f64) -> f64 {
    a + b + c + d + e + f + g + h + i
}

#[static_call]
static K: extern "C" fn(f64, f64, f64, f64, f64, f64, f64, f64, f64) -> f64 = sum;

fn main() {
    K.call(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0);
}
