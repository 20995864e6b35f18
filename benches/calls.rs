//! Cost of one call, in a dependent loop (each call takes the previous
//! result): a plain call (the floor), a patched site, a far site (`call
//! [rip + slot]`) against an `AtomicPtr` call of the same far function (a
//! copy mapped more than 2 GiB away, and `alpha_dispatch` in the `dlopen`ed
//! plugin `libalpha.so`, built if missing), a call to the trampoline, an
//! `out_of_line` key, an `AtomicPtr`, `dyn Trait`, an enum `match`, a
//! retpoline; the padding a site could use; and 64 keys with 64 targets
//! for indirect-branch-predictor pressure.
//!
//! ```text
//! cargo bench -p static_call_benches --bench calls
//! cargo bench -p static_call_benches --bench calls -- --table   # the interleaved table only
//! ```
//!
//! Every figure is nanoseconds per call (criterion's "time" is divided by the
//! calls per iteration).

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[path = "../examples/common/costs.rs"]
mod costs;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[path = "common/many.rs"]
mod many;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod bench {
    use crate::{costs, many};
    use criterion::Criterion;
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    /// Calls per timed loop.
    const N: u64 = 4096;

    /// Times `iters` loops of `n` calls and reports the time per call.
    fn per_call(
        c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        n: u64,
        run: impl Fn(u64) -> u64,
    ) {
        c.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut x = black_box(1);
                let t = Instant::now();
                for _ in 0..iters {
                    x = run(x);
                }
                black_box(x);
                t.elapsed() / n as u32
            })
        });
    }

    // Padding alternatives for a call site, each a `call add1` (not a
    // registered site: only what the instruction stream costs).
    macro_rules! padded_loop {
        ($name:ident, $($pad:literal),*) => {
            #[inline(never)]
            fn $name(mut x: u64, n: u64) -> u64 {
                for _ in 0..n {
                    // SAFETY: a plain C call of `add1(x)`.
                    unsafe {
                        std::arch::asm!(
                            $($pad,)*
                            "call {f}",
                            f = sym costs::add1,
                            inout("rdi") x,
                            lateout("rax") x,
                            clobber_abi("C"),
                        )
                    };
                }
                x
            }
        };
    }
    padded_loop!(pad_none, "");
    padded_loop!(pad_cs, ".balign 4, 0x2e", ".byte 0x2e, 0x2e, 0x2e");
    padded_loop!(pad_nop, ".balign 4", ".byte 0x0f, 0x1f, 0x00");
    padded_loop!(pad_cs_unaligned, ".byte 0x2e, 0x2e, 0x2e");

    pub fn calls(c: &mut Criterion) {
        let cases = costs::cases();
        let mut g = c.benchmark_group("call");
        g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
        for case in &cases {
            let run = case.run;
            per_call(&mut g, case.name, N, move |x| run(x, N));
        }
        per_call(&mut g, "pad_none", N, |x| pad_none(x, N));
        per_call(&mut g, "pad_cs", N, |x| pad_cs(x, N));
        per_call(&mut g, "pad_nop", N, |x| pad_nop(x, N));
        per_call(&mut g, "pad_cs_unaligned", N, |x| pad_cs_unaligned(x, N));
        g.finish();

        // 64 keys with 64 targets.
        static_call::init().expect("init");
        many::make_pointers_opaque();
        assert!(many::site_counts().iter().all(|&n| n == 1), "each key has one site: {:?}", many::site_counts());
        assert_eq!(many::call_each_key(1), many::call_each_direct(1));
        assert_eq!(many::call_each_pointer(1), many::call_each_direct(1));
        let mut g = c.benchmark_group("call64");
        g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
        per_call(&mut g, "direct", 64, many::call_each_direct);
        per_call(&mut g, "patched", 64, many::call_each_key);
        per_call(&mut g, "atomic_ptr", 64, many::call_each_pointer);
        per_call(&mut g, "retpoline", 64, many::call_each_retpoline);
        per_call(&mut g, "atomic_ptr_one_site_random", N, |x| many::call_random_pointer(x, N));
        g.finish();
    }
}

/// `alpha_dispatch` of the plugin `libalpha.so` (`plugins/alpha`), built
/// beside this benchmark (same profile directory, same target directory)
/// if it is not there yet, and `dlopen`ed (never closed). `None`, with a
/// note, if it cannot be had.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn alpha_dispatch() -> Option<extern "C" fn(u64) -> u64> {
    use std::os::unix::ffi::OsStrExt;
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/calls-<hash>
    let profile = exe.parent()?.parent()?;
    let so = profile.join("libalpha.so");
    if !so.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--release", "-p", "alpha", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
            .env("CARGO_TARGET_DIR", profile.parent()?)
            .status()
            .ok()?;
        if !status.success() || !so.exists() {
            eprintln!("calls: {} not built: no plugin rows", so.display());
            return None;
        }
    }
    let path = std::ffi::CString::new(so.as_os_str().as_bytes()).ok()?;
    // SAFETY: our own plugin (its initializers set up Rust's runtime only);
    // never closed, so the function stays mapped.
    let f = unsafe {
        let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
        if lib.is_null() {
            return None;
        }
        libc::dlsym(lib, c"alpha_dispatch".as_ptr())
    };
    // SAFETY: `alpha_dispatch` is an `extern "C" fn(u64) -> u64`.
    (!f.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn(u64) -> u64>(f) })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
criterion::criterion_group!(benches, bench::calls);
/// `cargo bench -p static_call_benches --bench calls -- --table` prints the interleaved table
/// (what the demo prints) instead of running criterion.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn main() {
    if let Some(f) = alpha_dispatch() {
        costs::use_plugin_target("alpha_dispatch", f);
    }
    if std::env::args().any(|a| a == "--table") {
        print!("{}", costs::measure(&costs::Options { rounds: 201, calls: 100_000, updates: 501 }));
        return;
    }
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn main() {}
