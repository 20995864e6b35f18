//! `#[static_call(out_of_line)]`: any `extern "C"` or `"C-unwind"` signature,
//! called through the key's trampoline, which is patched (there are no inline
//! sites). Structs by value (returned through a hidden pointer), stack
//! arguments, `u128`, unwinding through the trampoline, update and reset.
use static_call::static_call;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

mod common;

#[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]
use static_call::StaticCall;

/// Larger than 16 bytes: passed on the stack, returned through `sret`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Big {
    a: u64,
    b: u32,
    c: f64,
    d: [u8; 12],
}

extern "C" fn big_a(x: Big, k: u32) -> Big {
    Big { a: x.a.wrapping_add(k as u64), b: x.b ^ k, c: x.c * 2.0, d: x.d.map(|v| v.wrapping_add(1)) }
}

extern "C" fn big_b(x: Big, k: u32) -> Big {
    Big { a: x.a.rotate_left(k % 64), b: x.b.wrapping_mul(k), c: -x.c, d: [k as u8; 12] }
}

#[static_call(out_of_line)]
static BIG: extern "C" fn(Big, u32) -> Big = big_a;

#[allow(clippy::too_many_arguments)]
extern "C" fn ten_a(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    // Weighted, so that swapping any two arguments changes the result.
    [a, b, c, d, e, f, g, h, i, j]
        .iter()
        .enumerate()
        .fold(0u64, |s, (n, v)| s.wrapping_add(v.wrapping_mul(n as u64 + 1)))
}

#[allow(clippy::too_many_arguments)]
extern "C" fn ten_b(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    [a, b, c, d, e, f, g, h, i, j].iter().fold(0u64, |s, v| s.rotate_left(7) ^ v)
}

/// Ten integer arguments: four of them on the stack.
#[static_call(out_of_line)]
static TEN: extern "C" fn(u64, u64, u64, u64, u64, u64, u64, u64, u64, u64) -> u64 = ten_a;

#[allow(clippy::too_many_arguments)]
extern "C" fn floats_a(a: f64, b: f64, c: f64, d: f64, e: f64, f: f64, g: f64, h: f64, i: f64, j: f64) -> f64 {
    [a, b, c, d, e, f, g, h, i, j].iter().enumerate().map(|(n, v)| v * (n + 1) as f64).sum()
}

/// Ten `f64`: two of them on the stack.
#[static_call(out_of_line)]
static FLOATS: extern "C" fn(f64, f64, f64, f64, f64, f64, f64, f64, f64, f64) -> f64 = floats_a;

extern "C" fn wide(x: u128, y: i128) -> u128 {
    x.wrapping_mul(3) ^ y as u128
}

#[static_call(out_of_line)]
static WIDE: extern "C" fn(u128, i128) -> u128 = wide;

extern "C-unwind" fn may_panic(x: u32) -> u32 {
    if x == 13 {
        panic!("unlucky {x}");
    }
    x + 1
}

extern "C-unwind" fn may_panic_too(x: u32) -> u32 {
    if x == 7 {
        panic!("also unlucky {x}");
    }
    x + 2
}

/// A panic in the target unwinds through the trampoline to the caller.
#[static_call(out_of_line)]
static UNWIND: extern "C-unwind" fn(u32) -> u32 = may_panic;

static LOG: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn log() -> Vec<u64> {
    LOG.lock().unwrap().clone()
}

/// No target at first: calls do nothing.
#[static_call(out_of_line)]
static EVENT: unsafe extern "C" fn(Big);

/// # Safety
///
/// None really: `unsafe` so that the key's `call` is.
unsafe extern "C" fn log_event(x: Big) {
    LOG.lock().unwrap().push(x.a);
}

fn sample(n: u64) -> Big {
    Big { a: n.wrapping_mul(0x9e37_79b9_7f4a_7c15), b: n as u32 ^ 0x5a5a, c: n as f64 / 3.0, d: [n as u8; 12] }
}

fn check_all(phase: &str) {
    let (big, ten) = (BIG.get().unwrap(), TEN.get().unwrap());
    for n in [0u64, 1, 7, 1 << 40, u64::MAX] {
        let x = sample(n);
        assert_eq!(BIG.call(x, n as u32), big(x, n as u32), "{phase}: {n}");
        let args = [n, n ^ 1, n.wrapping_add(2), 3, 4, 5, 6, n.rotate_left(8), 8, 9];
        let [a, b, c, d, e, f, g, h, i, j] = args;
        assert_eq!(TEN.call(a, b, c, d, e, f, g, h, i, j), ten(a, b, c, d, e, f, g, h, i, j), "{phase}: {n}");
        let fl = args.map(|v| v as f64 + 0.5);
        let [a, b, c, d, e, f, g, h, i, j] = fl;
        assert_eq!(FLOATS.call(a, b, c, d, e, f, g, h, i, j), floats_a(a, b, c, d, e, f, g, h, i, j), "{phase}");
        let w = (n as u128) << 64 | 0xabcd;
        assert_eq!(WIDE.call(w, -(n as i128)), wide(w, -(n as i128)), "{phase}: {n}");
    }
    // No key has inline sites.
    assert!(BIG.sites().is_empty() && TEN.sites().is_empty() && FLOATS.sites().is_empty());
    assert!(WIDE.sites().is_empty() && UNWIND.sites().is_empty() && EVENT.sites().is_empty());
}

fn check_unwind(phase: &str, target: extern "C-unwind" fn(u32) -> u32, unlucky: u32) {
    assert_eq!(UNWIND.call(1), target(1), "{phase}");
    let r = catch_unwind(AssertUnwindSafe(|| UNWIND.call(unlucky)));
    let msg = r.expect_err("the target panicked").downcast::<String>().unwrap();
    assert!(msg.contains("unlucky"), "{phase}: {msg}");
    // The caller survived and the key still works.
    assert_eq!(UNWIND.call(2), target(2), "{phase}");
}

/// The five bytes at the head of a key's trampoline (on aarch64 its first
/// instruction, then a zero), decoded as a jump target: `jmp rel32`, `b`
/// (`None` for anything else).
#[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]
fn trampoline_jump<F: Copy, R>(key: &'static static_call::Key<F, R>) -> (Option<usize>, [u8; 5]) {
    let at = static_call::__private::trampoline_of(key).expect("every key has a trampoline");
    let mut b = [0u8; 5];
    b[..common::INSN_LEN].copy_from_slice(&common::read_bytes(at, common::INSN_LEN));
    if cfg!(target_arch = "aarch64") {
        let word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let target = at.wrapping_add(((((word << 6) as i32) >> 6) as isize * 4) as usize);
        return ((word >> 26 == 0b000101).then_some(target), b);
    }
    let rel = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
    ((b[0] == 0xe9).then(|| at.wrapping_add(5).wrapping_add(rel as isize as usize)), b)
}

/// aarch64: a trampoline head of a key without a target branches to the
/// key's stub (`ret`, or zero `x0` and `ret`): not to its own far form
/// (8 bytes on), and to none of `targets`.
#[cfg(all(target_arch = "aarch64", target_os = "linux", not(feature = "portable")))]
#[track_caller]
fn assert_head_on_stub<F: Copy, R>(key: &'static static_call::Key<F, R>, targets: &[usize]) {
    let at = static_call::__private::trampoline_of(key).unwrap();
    let (to, b) = trampoline_jump(key);
    let to = to.unwrap_or_else(|| panic!("the head is a `b`: {b:02x?}"));
    assert!(to != at + 8 && !targets.contains(&to), "the head branches to the stub: {to:#x}");
}

#[test]
fn out_of_line_keys_through_every_trampoline_form() {
    check_all("before init");
    check_unwind("before init", may_panic, 13);
    // SAFETY: `log_event` has no preconditions.
    unsafe { EVENT.call(sample(1)) };
    assert!(log().is_empty(), "no target: nothing ran");

    static_call::init().unwrap();
    check_all("after init");
    check_unwind("after init", may_panic, 13);
    #[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]
    {
        // Patched: each trampoline jumps straight to its target.
        assert_eq!(trampoline_jump(BIG.key()).0, BIG.get().map(|f| f as usize));
        assert_eq!(trampoline_jump(TEN.key()).0, TEN.get().map(|f| f as usize));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(trampoline_jump(EVENT.key()).1[0], 0xc3, "no target, `()` return: `ret`");
        #[cfg(target_arch = "aarch64")]
        assert_head_on_stub(EVENT.key(), &[log_event as *const () as usize]);
    }

    // Compared by behaviour: a function may have a copy per codegen unit.
    let x = sample(3);
    assert_eq!(BIG.update(big_b).map(|f| f(x, 3)), Some(big_a(x, 3)));
    assert_eq!(TEN.update(ten_b).map(|f| f(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)), Some(ten_a(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)));
    UNWIND.update(may_panic_too);
    assert!(EVENT.update(log_event).is_none());
    check_all("after update");
    check_unwind("after update", may_panic_too, 7);
    assert_eq!(TEN.call(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), ten_b(1, 2, 3, 4, 5, 6, 7, 8, 9, 10));
    // SAFETY: as above.
    unsafe { EVENT.call(sample(5)) };
    assert_eq!(log(), vec![sample(5).a]);
    #[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]
    assert_eq!(trampoline_jump(BIG.key()).0, BIG.get().map(|f| f as usize));

    // Reset: zero from an integer return, nothing from a `()` return.
    assert!(TEN.reset().is_some());
    assert!(EVENT.reset().is_some());
    assert_eq!(TEN.call(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0);
    // SAFETY: as above.
    unsafe { EVENT.call(sample(6)) };
    assert_eq!(log().len(), 1, "no target: nothing ran");
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
    {
        assert_eq!(trampoline_jump(TEN.key()).1, [0xb8, 0, 0, 0, 0], "mov eax, 0");
        assert_eq!(trampoline_jump(EVENT.key()).1[0], 0xc3, "ret");
    }
    #[cfg(all(target_arch = "aarch64", target_os = "linux", not(feature = "portable")))]
    {
        assert_head_on_stub(TEN.key(), &[ten_a as *const () as usize, ten_b as *const () as usize]);
        assert_head_on_stub(EVENT.key(), &[log_event as *const () as usize]);
    }
    assert!(TEN.get().is_none() && EVENT.get().is_none());
    // And back.
    TEN.update(ten_a);
    assert_eq!(TEN.call(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), ten_a(1, 2, 3, 4, 5, 6, 7, 8, 9, 10));
    assert!(TEN.sites().is_empty());
}

// ---------------------------------------------------------------- a panic in an `extern "C"` target

extern "C" fn panics_on_13(x: u32) -> u32 {
    if x == 13 {
        panic!("thirteen");
    }
    x
}

#[static_call]
static INLINE_PANIC: extern "C" fn(u32) -> u32 = panics_on_13;

#[static_call(out_of_line)]
static OUT_OF_LINE_PANIC: extern "C" fn(u32) -> u32 = panics_on_13;

const CHILD: &str = "STATIC_CALL_TEST_PANIC_CHILD";

/// Runs in a child process only (see below): a panic in an `extern "C"`
/// target aborts, from an inline site as from the trampoline, before and
/// after `init`.
#[test]
fn panic_child() {
    let Ok(which) = std::env::var(CHILD) else { return };
    assert_eq!(INLINE_PANIC.call(1), 1);
    if which.ends_with("patched") {
        static_call::init().unwrap();
    }
    if which.starts_with("inline") {
        INLINE_PANIC.call(13);
    } else {
        OUT_OF_LINE_PANIC.call(13);
    }
    unreachable!("the call returned");
}

#[test]
fn a_panic_in_an_extern_c_target_aborts() {
    use std::os::unix::process::ExitStatusExt;
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    for which in ["inline", "inline patched", "out_of_line", "out_of_line patched"] {
        let out = common::self_command()
            .args(["--exact", "panic_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, which)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{which}: {:?}\n{stderr}", out.status);
        assert!(stderr.contains("thirteen"), "{which}: the panic message is shown:\n{stderr}");
        assert!(stderr.contains("cannot unwind"), "{which}: aborted at the extern \"C\" boundary:\n{stderr}");
    }
}
