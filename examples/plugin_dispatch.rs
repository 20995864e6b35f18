//! A plugin host: a hot dispatch key whose target moves between the host and
//! two plugins (cdylibs that link their own copy of static_call, loaded with
//! `libloading`), with caller threads calling it all along; the per-call cost
//! in each state; and the shutdown sequence before each plugin is unloaded.
//!
//! ```text
//! cargo run --release --example plugin_dispatch
//! ```
//!
//! (It builds `plugins/alpha` and `plugins/beta` with the same profile if
//! they are not built yet.)

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
#[path = "../tests/plugin_support/mod.rs"]
mod plugin_support;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
fn main() {
    host::main()
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"))))]
fn main() {
    eprintln!("plugin_dispatch: this example needs the patching backend (Linux x86-64, no `portable` feature)");
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
mod host {
    use crate::plugin_support::Plugin;
    use static_call::{static_call, SiteState};
    use std::hint::black_box;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
    use std::sync::Arc;
    use std::time::Instant;

    type F = extern "C" fn(u64) -> u64;

    /// The host's own handler: near the call sites, so they call it directly.
    extern "C" fn host_dispatch(x: u64) -> u64 {
        x.wrapping_add(1)
    }

    /// Another host target.
    extern "C" fn host_alt(x: u64) -> u64 {
        x.wrapping_add(2)
    }

    #[static_call]
    static DISPATCH: extern "C" fn(u64) -> u64 = host_dispatch;

    #[inline(never)]
    fn dispatch(x: u64) -> u64 {
        DISPATCH.call(x)
    }

    /// What any of the targets returns for `x`: host `x+1` or `x+2`, alpha
    /// `3x+1`, beta `5x+2`.
    fn valid(x: u64, r: u64) -> bool {
        r == x + 1 || r == x + 2 || r == 3 * x + 1 || r == 5 * x + 2
    }

    const CALLS: u64 = 20_000_000;

    /// Nanoseconds per call of `f` in a dependent loop (`f` is inlined into
    /// the loop: a key's call site is then in the loop itself).
    fn per_call(mut f: impl FnMut(u64) -> u64) -> f64 {
        let mut acc = 0u64;
        for i in 0..CALLS / 10 {
            acc = f(acc & 0xff ^ i);
        }
        let start = Instant::now();
        for i in 0..CALLS {
            acc = f(acc & 0xff ^ i);
        }
        black_box(acc);
        start.elapsed().as_nanos() as f64 / CALLS as f64
    }

    fn state() -> String {
        let sites = DISPATCH.sites();
        let s = &sites[0];
        let target = DISPATCH.get().map_or(0, |f| f as usize);
        let dist = (target as i64 - (s.address() as i64 + 5)).unsigned_abs();
        let how = match (s.state(), s.reason()) {
            (SiteState::Direct, _) => "direct call".to_string(),
            (st, Some(r)) => format!("{st:?}: {r}"),
            (st, None) => format!("{st:?}"),
        };
        format!("{how} (target {:.1} GiB from the site)", dist as f64 / (1u64 << 30) as f64)
    }

    /// Caller threads, each with an epoch: the number of calls it completed.
    struct Callers {
        stop: Arc<AtomicBool>,
        wrong: Arc<AtomicU64>,
        epochs: Arc<Vec<AtomicU64>>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Callers {
        fn start(n: usize) -> Callers {
            let stop = Arc::new(AtomicBool::new(false));
            let wrong = Arc::new(AtomicU64::new(0));
            let epochs: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
            let threads = (0..n)
                .map(|i| {
                    let (stop, wrong, epochs) = (stop.clone(), wrong.clone(), epochs.clone());
                    std::thread::spawn(move || {
                        let mut x = i as u64;
                        while !stop.load(Relaxed) {
                            x = (x + 1) & 0xffff;
                            if !valid(x, dispatch(x)) {
                                wrong.fetch_add(1, Relaxed);
                            }
                            epochs[i].fetch_add(1, SeqCst);
                        }
                    })
                })
                .collect();
            Callers { stop, wrong, epochs, threads }
        }

        /// Waits until every caller has completed a call that started after
        /// this was called: then none is still inside a target it reached
        /// through an earlier state of the key.
        fn quiesce(&self) {
            let seen: Vec<u64> = self.epochs.iter().map(|e| e.load(SeqCst)).collect();
            for (e, s) in self.epochs.iter().zip(seen) {
                // A call in progress when we looked completes (+1); the next
                // one started after we looked (+2).
                while e.load(SeqCst) < s + 2 {
                    std::thread::yield_now();
                }
            }
        }

        fn calls(&self) -> u64 {
            self.epochs.iter().map(|e| e.load(Relaxed)).sum()
        }

        fn stop(self) -> u64 {
            self.stop.store(true, Relaxed);
            self.threads.into_iter().for_each(|t| t.join().unwrap());
            self.wrong.load(Relaxed)
        }
    }

    /// Retargets the key among `targets` `n` times while the callers run.
    fn churn(callers: &Callers, targets: &[F], n: usize) {
        let (c0, s0, t0) = (callers.calls(), static_call::stats(), Instant::now());
        for i in 0..n {
            DISPATCH.update(targets[i % targets.len()]);
        }
        let (c1, s1, dt) = (callers.calls(), static_call::stats(), t0.elapsed());
        println!(
            "  {n} updates in {:.1} ms ({:.1} us each) while callers made {} calls; traps emulated {}, rewound {}",
            dt.as_secs_f64() * 1e3,
            dt.as_secs_f64() * 1e6 / n as f64,
            c1 - c0,
            s1.traps_emulated - s0.traps_emulated,
            s1.traps_rewound - s0.traps_rewound,
        );
    }

    /// The shutdown sequence before unloading `plugin`: retarget every key
    /// away from its code, wait until no thread is inside it, make sure no
    /// update of any copy runs, then `dlclose`.
    fn unload(plugin: &mut Plugin, name: &str, callers: &Callers, away: F) {
        // 1. Retarget away: when `update` returns, no call starts in the plugin.
        DISPATCH.update(away);
        // 2. Quiescence: calls that started before step 1 have returned.
        callers.quiesce();
        // 3. No update runs now (this thread makes them all), so dlclose is
        //    free to take the plugin's SIGTRAP handler out of the chain.
        plugin.unload();
        println!("  {name} unloaded (still mapped: {})", plugin.mapped());
    }

    pub fn main() {
        static_call::init().expect("static_call::init");
        let mut alpha = Plugin::load("alpha");
        let mut beta = Plugin::load("beta");
        for (p, name) in [(&alpha, "alpha"), (&beta, "beta")] {
            let init: extern "C" fn() -> i32 = p.func(&format!("{name}_init"));
            assert_eq!(init(), 0, "{name}_init");
        }
        let alpha_dispatch: F = alpha.func("alpha_dispatch");
        let beta_dispatch: F = beta.func("beta_dispatch");
        let alpha_work: F = alpha.func("alpha_work");
        let alpha_set_mode: extern "C" fn(u32) -> i32 = alpha.func("alpha_set_mode");

        println!("per-call cost of the dispatch key, by state ({CALLS} dependent calls each):");
        let fp: F = black_box(host_dispatch);
        println!("  {:>6.2} ns  plain function pointer to the host's target (indirect call)", per_call(|x| fp(x)));
        for (f, name) in [(host_dispatch as F, "host"), (alpha_dispatch, "alpha"), (beta_dispatch, "beta")] {
            DISPATCH.update(f);
            println!("  {:>6.2} ns  {name:<5}: {}", per_call(|x| DISPATCH.call(x)), state());
        }
        let alpha_fp: F = black_box(alpha_dispatch);
        println!("  {:>6.2} ns  plain function pointer to alpha_dispatch (indirect call)", per_call(|x| alpha_fp(x)));
        assert_eq!(alpha_set_mode(0), 0);
        println!(
            "  {:>6.2} ns  alpha_work: a function pointer into alpha, then alpha's own site (patched by alpha's copy)",
            per_call(|x| alpha_work(x))
        );

        println!("under load (3 caller threads):");
        let callers = Callers::start(3);
        churn(&callers, &[alpha_dispatch, beta_dispatch, host_dispatch], 3000);
        unload(&mut alpha, "alpha", &callers, beta_dispatch);
        churn(&callers, &[host_dispatch, beta_dispatch], 2000);
        unload(&mut beta, "beta", &callers, host_dispatch);
        churn(&callers, &[host_alt, host_dispatch], 2000);
        let (calls, wrong) = (callers.calls(), callers.stop());
        println!("  {calls} calls, {wrong} wrong results; host copy: {:?}", static_call::stats());
        assert_eq!(wrong, 0);
        println!("after unload, {}: {:.2} ns per call", state(), per_call(|x| DISPATCH.call(x)));
    }
}
