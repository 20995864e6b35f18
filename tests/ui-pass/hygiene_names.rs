// Argument names a user may write (leading underscores mark "unused" in
// many codebases); each must compile and arrive unchanged.
use static_call::static_call;
#[static_call]
static B: fn(__fp: u64, s: String) -> u64 = |x, s| x + s.len() as u64;
#[static_call]
static D: fn(__r0: u64, __r: String) -> u64 = |x, s| x + s.len() as u64;
#[static_call]
static E: fn(__p: String, __s: u64) -> u64 = |p, s| p.len() as u64 + s;
#[static_call]
static F: fn(f: u64, __shown: u64) -> u64 = |a, b| a * 10 + b;
fn main() {
    assert_eq!(B.call(1, "ab".into()), 3);
    assert_eq!(D.call(1, "ab".into()), 3);
    assert_eq!(E.call("ab".into(), 1), 3);
    assert_eq!(F.call(1, 2), 12);
}
