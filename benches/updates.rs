//! Cost of patching: `init` with thousands of sites (each in a fresh
//! `fork()` child), one `membarrier` SYNC_CORE call (the floor), an update of
//! a key with 1, 128 and 4,096 sites, a batch of 64 keys, the floor and the
//! 1- and 4,096-site updates again with another thread running (`update_busy`),
//! and the slow path: a call that lands on the `int3` while an update runs.
//!
//! ```text
//! cargo bench -p static_call_benches --bench updates -- --warm-up-time 1 --measurement-time 3
//! STATIC_CALL_WRITER=mprotect cargo bench -p static_call_benches --bench updates -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! The group names carry the text writer in use (`procmem` or `mprotect`).

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
#[path = "../examples/common/costs.rs"]
mod costs;
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
#[path = "common/many.rs"]
mod many;
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
#[path = "common/sites.rs"]
mod sites;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
mod bench {
    use crate::{many, sites};
    use criterion::Criterion;
    use static_call::static_call;
    use std::hint::black_box;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// `init` in a fresh child process (the parent never initializes before
    /// this group runs): the time the child measured.
    fn init_in_child() -> Duration {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the benchmark is single-threaded here; the child only
        // initializes, writes to the pipe and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let t = Instant::now();
            let ok = static_call::init().is_ok();
            let ns: u64 = if ok { t.elapsed().as_nanos() as u64 } else { u64::MAX };
            // SAFETY: writing 8 bytes from a local; `_exit` skips the
            // parent's atexit handlers and destructors.
            unsafe {
                libc::write(fds[1], (&raw const ns).cast(), 8);
                libc::_exit(0);
            }
        }
        let mut ns = 0u64;
        // SAFETY: reading 8 bytes into a local; reaping our own child;
        // closing our descriptors.
        unsafe {
            libc::close(fds[1]);
            let n = libc::read(fds[0], (&raw mut ns).cast(), 8);
            libc::close(fds[0]);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            assert_eq!(n, 8, "the child reported nothing");
        }
        assert_ne!(ns, u64::MAX, "init failed in the child");
        Duration::from_nanos(ns)
    }

    pub fn init(c: &mut Criterion) {
        // Run every site once (through the trampolines: nothing patched).
        sites::run_all(true);
        let forced = std::env::var("STATIC_CALL_WRITER").unwrap_or_else(|_| "default".into());
        let mut g = c.benchmark_group(format!("init_{forced}"));
        g.sample_size(10);
        g.bench_function("all_sites", |b| b.iter_custom(|iters| (0..iters).map(|_| init_in_child()).sum()));
        g.finish();
    }

    type Key = static_call::Key<extern "C" fn(u64) -> u64, u64>;

    /// One benchmark per key: an update that flips the key between `dec`
    /// and `inc`; the key is left on `inc`.
    fn bench_updates(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, keys: &[(&str, &Key)]) {
        for &(name, key) in keys {
            let mut flip = false;
            g.bench_function(name, |b| {
                b.iter(|| {
                    flip = !flip;
                    key.update(if flip { sites::dec } else { sites::inc })
                })
            });
            key.update(sites::inc);
        }
    }

    fn writer() -> &'static str {
        match static_call::text_writer() {
            Some(static_call::TextWriter::ProcMem) => "procmem",
            Some(static_call::TextWriter::Mprotect) => "mprotect",
            _ => "unknown",
        }
    }

    pub fn updates(c: &mut Criterion) {
        static_call::init().expect("init");
        let total: usize =
            [sites::ONE.sites().len(), sites::K128.sites().len(), sites::K4096.sites().len()].iter().sum::<usize>()
                + many::site_counts().iter().sum::<usize>();
        eprintln!("writer: {}; sites in the benchmark keys: {total}", writer());
        assert_eq!(sites::ONE.sites().len(), 1);
        assert_eq!(sites::K128.sites().len(), 128);
        assert_eq!(sites::K4096.sites().len(), 4096);
        sites::run_all(true);

        let mut g = c.benchmark_group(format!("update_{}", writer()));
        g.sample_size(30);
        g.bench_function("membarrier", |b| b.iter(|| static_call::__private::sync_core_once().unwrap()));
        bench_updates(&mut g, &[("sites_1", &sites::ONE), ("sites_128", &sites::K128), ("sites_4096", &sites::K4096)]);
        let mut flip = false;
        g.bench_function("batch_64_keys", |b| {
            b.iter(|| {
                flip = !flip;
                many::retarget_all(flip).unwrap()
            })
        });
        many::retarget_all(false).unwrap();
        g.finish();
        sites::run_all(true);
        assert_eq!(many::call_each_key(1), many::call_each_direct(1));

        // The same with another thread running (spinning on a core), as in
        // a real program: each SYNC_CORE membarrier then interrupts it.
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
            let mut g = c.benchmark_group(format!("update_busy_{}", writer()));
            g.sample_size(30);
            g.bench_function("membarrier", |b| b.iter(|| static_call::__private::sync_core_once().unwrap()));
            bench_updates(&mut g, &[("sites_1", &sites::ONE), ("sites_4096", &sites::K4096)]);
            g.finish();
            stop.store(true, Ordering::Relaxed);
        });
        sites::run_all(true);
    }

    #[static_call]
    static SLOW: extern "C" fn(u64) -> u64 = sites::inc;

    #[inline(never)]
    fn slow_site(x: u64) -> u64 {
        SLOW.call(x)
    }

    static TRAPS: AtomicU64 = AtomicU64::new(0);
    extern "C" fn on_trap() {
        TRAPS.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls `slow_site` while another thread retargets `SLOW` in a loop,
    /// until `want` calls trapped (or a time limit): the summed duration of
    /// the trapped calls, scaled to `want`.
    fn trapped_calls(want: u64) -> Duration {
        let stop = AtomicBool::new(false);
        let (mut total, mut got) = (Duration::ZERO, 0u64);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut flip = false;
                while !stop.load(Ordering::Relaxed) {
                    flip = !flip;
                    SLOW.update(if flip { sites::dec } else { sites::inc });
                }
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            while got < want && Instant::now() < deadline {
                let before = TRAPS.load(Ordering::Relaxed);
                let t = Instant::now();
                black_box(slow_site(black_box(7)));
                let dt = t.elapsed();
                if TRAPS.load(Ordering::Relaxed) != before {
                    total += dt;
                    got += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(got > 0, "no call landed on the int3 in 20 s");
        total * (want as u32) / (got as u32)
    }

    pub fn slow_path(c: &mut Criterion) {
        static_call::init().expect("init");
        static_call::__private::set_trap_hook(Some(on_trap));
        let before = static_call::stats();
        let mut g = c.benchmark_group(format!("slow_path_{}", writer()));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
        g.bench_function("trapped_call", |b| b.iter_custom(trapped_calls));
        g.finish();
        static_call::__private::set_trap_hook(None);
        let after = static_call::stats();
        eprintln!(
            "traps emulated: {}, rewound: {}",
            after.traps_emulated - before.traps_emulated,
            after.traps_rewound - before.traps_rewound
        );
    }
}

// `init` first: it forks children from a process that never initialized.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
criterion::criterion_group!(benches, bench::init, bench::updates, bench::slow_path);
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
criterion::criterion_main!(benches);

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"))))]
fn main() {}
