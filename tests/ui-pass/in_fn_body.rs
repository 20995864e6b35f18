use static_call::static_call;
fn main() {
    fn f(x: u64) -> u64 { x + 1 }
    #[static_call]
    static K: fn(u64) -> u64 = f;
    assert_eq!(K.call(1), 2);
    K.update(|x| x * 10);
    assert_eq!(K.call(2), 20);
}
