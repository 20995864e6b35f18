//! The main job: declare static calls, show their call sites before and after
//! patching, retarget them while threads call, flip a static branch while
//! threads run it, and print what a call costs.
//!
//! ```text
//! cargo run --release --example demo
//! ```
#[path = "common/costs.rs"]
mod costs;

use static_call::{static_branch, static_call, SiteState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

extern "C" fn fnv1a(x: u64) -> u64 {
    (x ^ 0xcbf2_9ce4_8422_2325).wrapping_mul(0x0100_0000_01b3)
}
extern "C" fn murmur(x: u64) -> u64 {
    let x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}
extern "C" fn identity(x: u64) -> u64 {
    x
}

static EVENTS: AtomicU64 = AtomicU64::new(0);
extern "C" fn count_event(n: u32) {
    EVENTS.fetch_add(n as u64, Ordering::Relaxed);
}

/// The hash every request goes through.
#[static_call]
pub static HASH: extern "C" fn(u64) -> u64 = fnv1a;

/// Called on every event; nothing listens yet.
#[static_call]
static ON_EVENT: extern "C" fn(u32);

/// A request and a response: Rust types a key of a Rust `fn` type passes as
/// they are (DESIGN §8).
pub struct Request {
    pub path: String,
}

#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

fn not_found(r: &Request) -> Response {
    Response { status: 404, body: format!("no route to {}", r.path) }
}

fn echo(r: &Request) -> Response {
    Response { status: 200, body: r.path.to_uppercase() }
}

#[static_call]
static ROUTE: fn(&Request) -> Response = not_found;

/// Off: each request's trace costs a `nop` (DESIGN §9).
#[static_branch]
static TRACE: bool = false;

/// Serves `x`; says whether it was traced (its `TRACE` site took the branch).
#[inline(never)]
fn serve(x: u64) -> (u64, bool) {
    let mut traced = false;
    if TRACE.unlikely() {
        traced = std::hint::black_box(true);
    }
    (x + 1, traced)
}

#[inline(never)]
fn hash(x: u64) -> u64 {
    HASH.call(x)
}

#[inline(never)]
fn hash_twice(x: u64) -> u64 {
    HASH.call(HASH.call(x))
}

#[inline(never)]
fn event(n: u32) {
    ON_EVENT.call(n)
}

fn name_of(addr: usize) -> &'static str {
    let names: [(usize, &str); 4] = [
        (fnv1a as *const () as usize, "fnv1a"),
        (murmur as *const () as usize, "murmur"),
        (identity as *const () as usize, "identity"),
        (count_event as *const () as usize, "count_event"),
    ];
    if static_call::__private::trampoline_of(&HASH) == Some(addr) {
        return "HASH's trampoline";
    }
    if static_call::__private::trampoline_of(&ON_EVENT) == Some(addr) {
        return "ON_EVENT's trampoline";
    }
    names.iter().find(|&&(a, _)| a == addr).map_or("?", |&(_, n)| n)
}

/// How this process makes calls, in words.
fn writer() -> String {
    match static_call::mode() {
        static_call::Mode::Patching(static_call::TextWriter::ProcMem) => "text written through /proc/self/mem".into(),
        static_call::Mode::Patching(static_call::TextWriter::Mprotect) => "text written through mprotect".into(),
        static_call::Mode::Slots(why) => format!("patching impossible here, calls go through the keys' slots: {why}"),
        static_call::Mode::Portable => "portable backend: nothing to patch".into(),
        _ => "not initialized".into(),
    }
}

fn patching() -> bool {
    matches!(static_call::mode(), static_call::Mode::Patching(_))
}

/// The target of the direct call a site holds: x86-64 `call rel32`,
/// aarch64 `bl`.
fn called(at: usize, b: [u8; 5]) -> Option<usize> {
    if cfg!(target_arch = "aarch64") {
        let word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        (word >> 26 == 0b100101).then(|| at.wrapping_add(((((word << 6) as i32) >> 6) as isize * 4) as usize))
    } else {
        (b[0] == 0xe8).then(|| at.wrapping_add(5).wrapping_add(i32::from_le_bytes([b[1], b[2], b[3], b[4]]) as usize))
    }
}

fn show_sites(title: &str) {
    println!("{title}");
    for (key, sites) in [("HASH", HASH.sites()), ("ON_EVENT", ON_EVENT.sites())] {
        for s in sites {
            let target = called(s.address(), s.bytes()).map_or(String::new(), |t| format!("  -> {}", name_of(t)));
            println!("  {key:<9} {s}{target}");
        }
    }
}

fn main() -> Result<(), static_call::Error> {
    println!("static_call demo: {} sites of HASH, {} of ON_EVENT", HASH.sites().len(), ON_EVENT.sites().len());
    println!("backend: {}", if static_call::PATCHING { "patched call sites" } else { "atomic function pointer" });
    println!();

    show_sites("Before init: every site calls its key's trampoline");
    assert_eq!(hash(3), fnv1a(3));

    let t = Instant::now();
    // Where patching is impossible (a sandbox, STATIC_CALL_WRITER=none),
    // init says why and everything below still works, on the slots.
    let _ = static_call::init();
    let init_time = t.elapsed();
    println!();
    let after = if patching() { "direct calls" } else { "sites unchanged" };
    show_sites(&format!("After init ({init_time:.1?}, {}): {after}", writer()));
    assert_eq!(hash(3), fnv1a(3));
    event(1);
    assert_eq!(EVENTS.load(Ordering::Relaxed), 0, "no target: the nop does nothing");

    // Retarget while threads call through both keys.
    println!();
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, wrong, calls) = (stop.clone(), wrong.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let x = n | 1;
                    let r = hash(x);
                    if ![fnv1a(x), murmur(x), identity(x)].contains(&r) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    event(1);
                    n += 1;
                }
                calls.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let targets: [extern "C" fn(u64) -> u64; 3] = [murmur, identity, fnv1a];
    let t = Instant::now();
    let mut updates = 0u64;
    // Until a call landed on an int3, where sites are patched on x86-64
    // (aarch64 replaces instructions with single stores, and the portable
    // backend has no int3: 3,000 updates).
    let trapped = || static_call::stats().traps_emulated + static_call::stats().traps_rewound > 0;
    let wait_for_trap = patching() && cfg!(target_arch = "x86_64");
    while updates < 3_000 || (wait_for_trap && !trapped() && updates < 10_000_000) {
        HASH.update(targets[updates as usize % 3]);
        if updates.is_multiple_of(2) {
            ON_EVENT.update(count_event);
        } else {
            ON_EVENT.reset();
        }
        updates += 1;
    }
    let elapsed = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.join().expect("caller thread");
    }
    let s = static_call::stats();
    print!(
        "{} updates of 2 keys in {elapsed:.1?} ({:.1} µs each) while 2 threads made {} calls: {} wrong results",
        updates,
        elapsed.as_secs_f64() * 1e6 / (2 * updates) as f64,
        calls.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    if cfg!(target_arch = "x86_64") {
        println!(", {} calls emulated on the int3, {} rewound", s.traps_emulated, s.traps_rewound);
    } else {
        println!(" (aarch64: each instruction replaced by one store, no int3)");
    }
    assert_eq!(wrong.load(Ordering::Relaxed), 0);

    HASH.update(murmur);
    ON_EVENT.update(count_event);
    println!();
    show_sites("After HASH.update(murmur), ON_EVENT.update(count_event)");
    assert_eq!(hash_twice(5), murmur(murmur(5)));
    assert!(!patching() || HASH.sites().iter().all(|s| s.state() == SiteState::Direct));

    // A key of a Rust fn type: fn items and non-capturing closures as
    // targets, any argument and result types, a panic reaches the caller.
    println!();
    let req = Request { path: "/demo".into() };
    let before = ROUTE.call(&req);
    ROUTE.update(echo);
    let after = ROUTE.call(&req);
    ROUTE.update(|r: &Request| -> Response { panic!("handler failed on {}", r.path) });
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    // (Built with panic = "abort", a panic cannot be caught: not called.)
    let message = if cfg!(panic = "abort") {
        None
    } else {
        let caught = std::panic::catch_unwind(|| ROUTE.call(&req));
        caught.err().and_then(|p| p.downcast_ref::<String>().cloned())
    };
    std::panic::set_hook(prev_hook);
    ROUTE.update(echo);
    println!("Rust key ROUTE: fn(&Request) -> Response");
    println!(
        "  before: {} {:?}; after ROUTE.update(echo): {} {:?}",
        before.status, before.body, after.status, after.body
    );
    match &message {
        Some(m) => println!("  a panicking target: caught at the caller, payload {m:?}"),
        None if cfg!(panic = "abort") => println!("  (panic = \"abort\": the panicking target is not called)"),
        None => println!("  a panicking target: not caught"),
    }
    for site in ROUTE.sites() {
        println!("  {site}");
    }
    assert_eq!(after, Response { status: 200, body: "/DEMO".into() });
    assert!(cfg!(panic = "abort") || message.as_deref() == Some("handler failed on /demo"));
    assert!(!patching() || ROUTE.sites().iter().all(|s| s.state() == SiteState::Direct));

    // A static branch, flipped while another thread runs its site (one: on
    // two cores, a second would mostly run while this one is descheduled,
    // on one value): each
    // execution takes the branch of the old value or of the new, and once
    // `set` returns every execution takes the new one.
    println!();
    println!("Static branch TRACE: `if TRACE.unlikely() {{ .. }}` in serve()");
    for site in TRACE.sites() {
        println!("  off:       {site}");
    }
    // The runner counts its executions of each branch as it goes; the sets
    // go on (2,000 at least) until it has run both, so that the flips
    // overlapped its calls even on a loaded machine.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let runner = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (r, was_traced) = serve(n);
                assert_eq!(r, n + 1);
                seen[was_traced as usize].fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        })
    };
    let emulated = static_call::stats().traps_emulated;
    let (mut wrong, mut flips) = (0u64, 0u64);
    let both_seen = || seen.iter().all(|c| c.load(Ordering::Relaxed) > 0);
    while flips < 2_000 || (!both_seen() && flips < 2_000_000) {
        let on = flips.is_multiple_of(2);
        TRACE.set(on);
        // This thread's executions, all started after `set` returned.
        for j in 0..256 {
            wrong += (serve(j).1 != on) as u64;
        }
        if flips == 0 {
            for site in TRACE.sites() {
                println!("  on:        {site}");
            }
        }
        flips += 1;
    }
    TRACE.set(false);
    stop.store(true, Ordering::Relaxed);
    runner.join().expect("runner thread");
    let [plain, traced] = [0, 1].map(|i| seen[i].load(Ordering::Relaxed));
    print!(
        "  {flips} sets while another thread ran serve() {} times ({traced} traced): {wrong} wrong branches after a set returned",
        plain + traced
    );
    if cfg!(target_arch = "x86_64") {
        println!(", {} executions emulated on the int3", static_call::stats().traps_emulated - emulated);
    } else {
        println!();
    }
    assert_eq!(wrong, 0);
    assert!(!TRACE.get());
    assert!(!patching() || TRACE.sites().iter().all(|s| s.state() == SiteState::NotTaken));

    // `--sites-only`: stop here (under an emulator such as QEMU, where
    // timings mean nothing).
    if std::env::args().any(|a| a == "--sites-only") {
        println!();
        println!("(--sites-only: the cost table is skipped)");
        return Ok(());
    }

    // Costs: the cases of examples/common/costs.rs, interleaved (as
    // `cargo bench -p static_call_benches --bench calls -- --table` and
    // `--bench regimes -- --table` measure them, with fewer rounds).
    println!();
    if !patching() {
        println!("(This process runs without patching: the static call column below is a call through the");
        println!("trampoline and the key's slot, not a patched site.)");
    }
    where_it_wins();
    println!("init of this binary: {init_time:.1?}");
    Ok(())
}

/// Measures a few regimes and prints where a static call wins and where it
/// does not.
fn where_it_wins() {
    let calls = costs::measure(&costs::Options { rounds: 15, calls: 200_000, updates: 101 });
    let switched = costs::measure_switched(&[100, 100_000], 9, 20_000);
    let call = |name: &str| calls.calls.iter().find(|r| r.name == name).map(|r| r.ns);
    let Some(patched) = call("patched") else { return };
    let mut rows: Vec<(&str, f64, &str, f64)> = Vec::new();
    for (regime, alt, name) in [
        ("one hot site, well predicted", "AtomicPtr fn pointer", "atomic_ptr"),
        ("one hot site, well predicted", "dyn Trait method", "dyn_trait"),
        ("build hardened against Spectre v2", "fn pointer via retpoline", "retpoline"),
    ] {
        if let Some(ns) = call(name) {
            rows.push((regime, patched, alt, ns));
        }
    }
    for (m, regime) in [(100, "target switched every 100 calls"), (100_000, "target switched every 100,000 calls")] {
        let (Some(s), Some(p)) =
            (switched.get(&m.to_string(), "static+update"), switched.get(&m.to_string(), "AtomicPtr"))
        else {
            continue;
        };
        rows.push((regime, s, "AtomicPtr stored as often", p));
    }
    println!("Where a static call wins (ns per call, measured now, interleaved; the update's cost is included)");
    println!("  {:<36} {:>11}   {:<26} {:>9}", "regime", "static call", "alternative", "");
    for (regime, ours, alt, theirs) in rows {
        let verdict = if theirs > ours * 1.15 {
            format!("wins, {:.1}x faster", theirs / ours)
        } else if ours > theirs * 1.15 {
            format!("loses, {:.1}x slower", ours / theirs)
        } else {
            "no measurable difference".to_string()
        };
        println!("  {regime:<36} {ours:>8.2} ns   {alt:<26} {theirs:>6.2} ns   {verdict}");
    }
    let update = |name: &str| calls.updates.iter().find(|r| r.name == name).map(|r| r.ns);
    if let (Some(mb), Some(up)) = (update("membarrier"), update("update_1")) {
        println!("  one update of a key with one site: {:.1} µs, {:.0}x one membarrier call", up / 1e3, up / mb);
    }
    println!();
    println!(
        "A patched site costs what a direct call costs. It wins clearly where indirect calls are dear: in builds \
         hardened\nagainst Spectre v2 (a retpoline per indirect call), and with thousands of distinct call sites \
         (BENCHMARKS.md: at\n16,384 sites function pointers cost 1.8x, dyn Trait 2.4x). One well-predicted function \
         pointer costs a cycle more\nat most, and a target that changes more often than every ~100,000 calls costs more \
         in updates than the calls save."
    );
}
