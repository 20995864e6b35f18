//! Two major versions of `static_call` in one executable: `sc_a` declares
//! keys with the root package (0.1), `sc_b` with `compat/v2` (2.0.0, the same
//! sources), as cargo builds a program whose dependencies want two majors.
//! Each copy must find only its own sites and trampolines, initialize, and
//! patch its own keys while the other copy patches its keys on the same page
//! (DESIGN.md 3.8). The scenarios are in `tests/`, one process each; this
//! library holds what they share: the targets, the two functions that hold
//! the sites, and the checks.

/// The root package's test helpers (`self_command`, `watchdog`, ...).
#[path = "../../../tests/common/mod.rs"]
pub mod common;

/// The function-pointer type of every key.
pub type F = extern "C" fn(u64) -> u64;

/// The two copies: index 0 is `sc_a` (static_call 0.1), 1 is `sc_b` (2).
pub const COPIES: usize = 2;
/// Keys per copy.
pub const KEYS: usize = sc_a::KEYS;
/// Targets per key that updates cycle through.
pub const TARGETS: usize = 4;

const _: () = assert!(sc_a::KEYS == sc_b::KEYS);

/// The crate name of copy `c`.
pub fn name(c: usize) -> &'static str {
    [sc_a::NAME, sc_b::NAME][c]
}

macro_rules! targets {
    ($($name:ident = $id:expr;)*) => {
        $(
            extern "C" fn $name(x: u64) -> u64 {
                x.wrapping_mul(256).wrapping_add($id)
            }
        )*
        /// Every target, by copy, key and index.
        static TARGET_TABLE: [[[F; TARGETS]; KEYS]; COPIES] = {
            let all: [F; COPIES * KEYS * TARGETS] = [$($name),*];
            let mut t = [[[all[0]; TARGETS]; KEYS]; COPIES];
            let mut i = 0;
            while i < all.len() {
                t[i / (KEYS * TARGETS)][(i / TARGETS) % KEYS][i % TARGETS] = all[i];
                i += 1;
            }
            t
        };
    };
}

// Each target computes `x * 256 + id` with an id of its own (copy * 16 +
// key * 4 + index + 1): a result says which target ran.
targets! {
    a0t0 = 1; a0t1 = 2; a0t2 = 3; a0t3 = 4;
    a1t0 = 5; a1t1 = 6; a1t2 = 7; a1t3 = 8;
    a2t0 = 9; a2t1 = 10; a2t2 = 11; a2t3 = 12;
    b0t0 = 17; b0t1 = 18; b0t2 = 19; b0t3 = 20;
    b1t0 = 21; b1t1 = 22; b1t2 = 23; b1t3 = 24;
    b2t0 = 25; b2t1 = 26; b2t2 = 27; b2t3 = 28;
}

/// Target `t` of key `k` of copy `c`.
pub fn target(c: usize, k: usize, t: usize) -> F {
    // Reviewer probe (issue 19): with a far page mapped, state 3 of every
    // key is a far target (x + 7 for copy 0, x + 9 for copy 1).
    let far = FAR_PAGE.load(std::sync::atomic::Ordering::SeqCst);
    if far != 0 && t % TARGETS == 3 {
        // SAFETY: the far page holds `x + 7` at 0 and `x + 9` at 16.
        return unsafe { std::mem::transmute::<usize, F>(far + 16 * c) };
    }
    TARGET_TABLE[c][k][t % TARGETS]
}

/// Reviewer probe (issue 19): the far page `target` uses, 0 for none.
pub static FAR_PAGE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn is_far(f: F) -> bool {
    let far = FAR_PAGE.load(std::sync::atomic::Ordering::SeqCst);
    far != 0 && (far..far + 4096).contains(&(f as usize))
}

/// Key `k` of copy `c`: `try_update`.
pub fn update(c: usize, k: usize, f: F) -> Result<Option<F>, String> {
    let r = if c == 0 {
        sc_a::update(k, f).map_err(|e| e.to_string())
    } else {
        sc_b::update(k, f).map_err(|e| e.to_string())
    };
    r.map_err(|e| format!("{}: update of key {k}: {e}", name(c)))
}

/// Key `k` of copy `c`: `get()`.
pub fn get(c: usize, k: usize) -> Option<F> {
    if c == 0 {
        sc_a::get(k)
    } else {
        sc_b::get(k)
    }
}

/// Copy `c`: `init()`.
pub fn init(c: usize) -> Result<(), String> {
    let r = if c == 0 { sc_a::init().map_err(|e| e.to_string()) } else { sc_b::init().map_err(|e| e.to_string()) };
    r.map_err(|e| format!("{}: init: {e}", name(c)))
}

/// Copy `c`: `stats().traps_emulated`.
pub fn traps_emulated(c: usize) -> u64 {
    if c == 0 {
        sc_a::stats().traps_emulated
    } else {
        sc_b::stats().traps_emulated
    }
}

/// Copy `c`: `stats()`, printed.
pub fn stats_text(c: usize) -> String {
    if c == 0 {
        format!("{:?}", sc_a::stats())
    } else {
        format!("{:?}", sc_b::stats())
    }
}

/// One call site, as `sites()` of its copy reported it.
#[derive(Clone, Debug)]
pub struct SiteInfo {
    pub address: usize,
    /// `SiteState::Direct` in the site's own copy.
    pub direct: bool,
    /// The state and reason, for messages.
    pub state: String,
    pub bytes: [u8; 5],
}

impl SiteInfo {
    /// The target of the direct call the site holds, if it holds one.
    pub fn call_target(&self) -> Option<usize> {
        common::call_target(self.address, self.bytes)
    }
}

/// The sites of key `k` of copy `c`, sorted by address.
pub fn sites(c: usize, k: usize) -> Vec<SiteInfo> {
    let mut v: Vec<SiteInfo> = if c == 0 {
        sc_a::sites(k)
            .iter()
            .map(|s| SiteInfo {
                address: s.address(),
                direct: s.state() == sc_a::copy::SiteState::Direct,
                state: format!("{:?} {:?}", s.state(), s.reason()),
                bytes: s.bytes(),
            })
            .collect()
    } else {
        sc_b::sites(k)
            .iter()
            .map(|s| SiteInfo {
                address: s.address(),
                direct: s.state() == sc_b::copy::SiteState::Direct,
                state: format!("{:?} {:?}", s.state(), s.reason()),
                bytes: s.bytes(),
            })
            .collect()
    };
    v.sort_by_key(|s| s.address);
    v
}

/// Results of one site function: twelve calls, two of each key, in the
/// order `a0 b0 a1 b1 a2 b2 a0 b0 a1 b1 a2 b2` (see [`key_of`]).
pub type Results = [u64; 2 * COPIES * KEYS];

/// The copy and key of result `i` of a site function.
pub fn key_of(i: usize) -> (usize, usize) {
    (i % COPIES, (i / COPIES) % KEYS)
}

/// Sites of every key of both copies, in one function: two sites of each
/// key, the two copies' sites interleaved, so that the span from a key's
/// first site to its last covers sites of the other copy (a writer that
/// writes such a span back must not undo the other copy's writes there).
#[inline(never)]
pub fn sites_lo(x: u64) -> Results {
    [
        sc_a::call0(x),
        sc_b::call0(x),
        sc_a::call1(x),
        sc_b::call1(x),
        sc_a::call2(x),
        sc_b::call2(x),
        sc_a::call0(x),
        sc_b::call0(x),
        sc_a::call1(x),
        sc_b::call1(x),
        sc_a::call2(x),
        sc_b::call2(x),
    ]
}

/// The same sites again in the opposite order (another function, which
/// LLVM cannot merge with the first): if one of the two functions straddles
/// a page boundary, the other is on one page.
#[inline(never)]
pub fn sites_hi(x: u64) -> Results {
    let mut r = [
        sc_b::call2(x),
        sc_a::call2(x),
        sc_b::call1(x),
        sc_a::call1(x),
        sc_b::call0(x),
        sc_a::call0(x),
        sc_b::call2(x),
        sc_a::call2(x),
        sc_b::call1(x),
        sc_a::call1(x),
        sc_b::call0(x),
        sc_a::call0(x),
    ];
    // Back to `sites_lo`'s order.
    r.reverse();
    r
}

/// Both site functions' results.
pub fn call_all(x: u64) -> [Results; 2] {
    [sites_lo(x), sites_hi(x)]
}

/// How many sites each key has: two in each site function.
pub const SITES_PER_KEY: usize = 4;

/// Panics unless every key of both copies has its four sites, and one page
/// holds sites of every key of both copies (the sites of one site function,
/// where one lies on one page); returns that page.
pub fn assert_one_page() -> usize {
    let all: Vec<Vec<SiteInfo>> = (0..COPIES).flat_map(|c| (0..KEYS).map(move |k| sites(c, k))).collect();
    for (i, s) in all.iter().enumerate() {
        assert_eq!(s.len(), SITES_PER_KEY, "{} key {} has 4 sites: {s:#x?}", name(i / KEYS), i % KEYS);
    }
    // Functions do not interleave: the two lowest sites of each key are in
    // the function placed first, the two highest in the other.
    let mut pages = Vec::new();
    for half in [0..2, 2..4] {
        let addrs: Vec<usize> = all.iter().flat_map(|s| s[half.clone()].iter().map(|s| s.address)).collect();
        let page = |a: usize| a & !4095;
        let (lo, hi) = (addrs.iter().min().unwrap(), addrs.iter().max().unwrap() + common::INSN_LEN - 1);
        assert!(hi - lo < 4096, "one function's sites span {lo:#x}..{hi:#x}");
        if page(*lo) == page(hi) {
            pages.push(page(*lo));
        }
    }
    if let Some(&p) = pages.first() {
        return p;
    }
    // Both site functions straddle a page boundary (where the linker put
    // them depends on the build): still, a page that holds sites of every
    // key of both copies is what the tests need (one copy's write session
    // spans the other copy's sites).
    let page = |a: usize| a & !4095;
    let mut candidates: Vec<usize> = all.iter().flatten().map(|s| page(s.address)).collect();
    candidates.sort_unstable();
    candidates.dedup();
    candidates
        .into_iter()
        .find(|&p| all.iter().all(|key| key.iter().any(|s| page(s.address) == p)))
        .unwrap_or_else(|| panic!("a page holds sites of every key of both copies: {all:#x?}"))
}

/// Whether every site of key `k` of copy `c` is `Direct` to `f` and both
/// site functions return `f`'s result for that key; else what is wrong.
pub fn check_key_reaches(c: usize, k: usize, f: F) -> Result<(), String> {
    for s in sites(c, k) {
        if is_far(f) {
            if !s.state.contains("Indirect") {
                return Err(format!("{} key {k}: site {:#x} is {}, not Indirect", name(c), s.address, s.state));
            }
            continue;
        }
        if !s.direct {
            return Err(format!("{} key {k}: site {:#x} is {}, not Direct", name(c), s.address, s.state));
        }
        if s.call_target() != Some(f as usize) {
            return Err(format!(
                "{} key {k}: site {:#x} holds {:02x?}, not a call of the new target {:#x}",
                name(c),
                s.address,
                s.bytes,
                f as usize
            ));
        }
    }
    for (j, r) in call_all(7).iter().enumerate() {
        for (i, &v) in r.iter().enumerate() {
            if key_of(i) == (c, k) && v != f(7) {
                return Err(format!(
                    "{} key {k}: call {i} of site function {j} returned {v:#x}, not the new target's {:#x}",
                    name(c),
                    f(7)
                ));
            }
        }
    }
    Ok(())
}

/// Panics unless every site of key `k` of copy `c` is `Direct` to `f` and
/// both site functions return `f`'s result for that key.
#[track_caller]
pub fn assert_key_reaches(c: usize, k: usize, f: F) {
    if let Err(e) = check_key_reaches(c, k, f) {
        panic!("{e}");
    }
}

/// Panics unless both copies initialized every site of every key to its
/// declared target, with the sites of both copies on one page, and one
/// update of each key of each copy retargets it.
pub fn assert_both_initialized() {
    let page = assert_one_page();
    for c in 0..COPIES {
        for k in 0..KEYS {
            // Judged by what it computes: in a release build the declared
            // target may have two copies (two addresses), the key's and the
            // one `initial` returns.
            let initial = if c == 0 { sc_a::initial(k) } else { sc_b::initial(k) };
            let current = get(c, k).unwrap_or_else(|| panic!("{} key {k} has its declared target", name(c)));
            assert_eq!(current(7), initial(7), "{} key {k} is on its declared target", name(c));
            assert_key_reaches(c, k, current);
        }
    }
    for c in 0..COPIES {
        for k in 0..KEYS {
            let old = update(c, k, target(c, k, 1)).unwrap_or_else(|e| panic!("{e}"));
            assert!(old.is_some(), "{} key {k} had a target", name(c));
            assert_key_reaches(c, k, target(c, k, 1));
        }
    }
    eprintln!("both copies' sites on page {page:#x}; {}; {}", stats_text(0), stats_text(1));
}

/// Both copies update their own keys, from one thread each, at once, while
/// two threads call every site of every key (sites of both copies on one
/// page) in a tight loop: `updates` updates per copy. Every result is
/// judged: a key's result must be that of a target the key had at some
/// instant of the call. After each update every site of that key is
/// `Direct` to the new target and reaches it. On x86-64 each copy's SIGTRAP
/// handler must have emulated calls (the int3 path ran); on aarch64 calls
/// must have started during updates of each copy. Panics on any failure;
/// a SIGTRAP or SIGSEGV kills the process (run it as a child).
pub fn concurrent_updates(updates: u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::{Barrier, Mutex};

    static PROGRESS: AtomicU64 = AtomicU64::new(0);
    /// Per key: 2s when the key is stable in state s (target `s % TARGETS`),
    /// 2s - 1 while the update to state s runs.
    static GEN: [[AtomicU64; KEYS]; COPIES] = [const { [const { AtomicU64::new(0) }; KEYS] }; COPIES];
    static STOP: AtomicBool = AtomicBool::new(false);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    /// Calls that started while an update of the copy ran.
    static OVERLAPPED: [AtomicU64; COPIES] = [const { AtomicU64::new(0) }; COPIES];
    static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let fail = |m: String| {
        let mut f = FAILURES.lock().unwrap();
        if f.len() < 20 {
            f.push(m);
        }
    };

    common::watchdog("two copies updating at once", &PROGRESS, std::time::Duration::from_secs(120));
    for c in 0..COPIES {
        init(c).unwrap_or_else(|e| panic!("{e}"));
    }
    let page = assert_one_page();
    for c in 0..COPIES {
        for k in 0..KEYS {
            update(c, k, target(c, k, 0)).unwrap_or_else(|e| panic!("{e}"));
            assert_key_reaches(c, k, target(c, k, 0));
        }
    }
    let base: Vec<u64> = (0..COPIES).map(traps_emulated).collect();
    let snapshot =
        || -> [[u64; KEYS]; COPIES] { core::array::from_fn(|c| core::array::from_fn(|k| GEN[c][k].load(SeqCst))) };

    let callers = 2;
    let start = std::sync::Arc::new(Barrier::new(callers + COPIES));
    let caller_threads: Vec<_> = (0..callers)
        .map(|t| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut n = t as u64 * 1_000_003;
                while !STOP.load(SeqCst) {
                    n += 1;
                    let x = n % 1_000_000;
                    let before = snapshot();
                    let r = call_all(x);
                    let after = snapshot();
                    for c in 0..COPIES {
                        if before[c].iter().any(|g| g % 2 == 1) {
                            OVERLAPPED[c].fetch_add(1, SeqCst);
                        }
                    }
                    for (j, results) in r.iter().enumerate() {
                        for (i, &v) in results.iter().enumerate() {
                            let (c, k) = key_of(i);
                            let (min, max) = (before[c][k] / 2, after[c][k].div_ceil(2));
                            let max = max.min(min + TARGETS as u64 - 1);
                            if !(min..=max).any(|s| v == target(c, k, s as usize)(x)) {
                                WRONG.fetch_add(1, SeqCst);
                                fail(format!(
                                    "call {i} of site function {j} ({} key {k}) returned {v:#x} for x = {x:#x}, \
                                     the key in states {min}..={max}",
                                    name(c)
                                ));
                            }
                        }
                    }
                    CALLS.fetch_add(1, SeqCst);
                    PROGRESS.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    let updaters: Vec<_> = (0..COPIES)
        .map(|c| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for n in 0..updates {
                    let k = (n % KEYS as u64) as usize;
                    let s = GEN[c][k].load(SeqCst) / 2 + 1;
                    let f = target(c, k, s as usize);
                    GEN[c][k].store(2 * s - 1, SeqCst);
                    let r = update(c, k, f);
                    GEN[c][k].store(2 * s, SeqCst);
                    if let Err(e) = r.and_then(|_| check_key_reaches(c, k, f)) {
                        fail(format!("update {n} of {}: {e}", name(c)));
                        return;
                    }
                    PROGRESS.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for u in updaters {
        u.join().unwrap();
    }
    STOP.store(true, SeqCst);
    for c in caller_threads {
        c.join().unwrap();
    }
    let failures = FAILURES.lock().unwrap().clone();
    let traps: Vec<u64> = (0..COPIES).map(|c| traps_emulated(c) - base[c]).collect();
    let overlapped: Vec<u64> = OVERLAPPED.iter().map(|o| o.load(SeqCst)).collect();
    eprintln!(
        "{updates} updates per copy on page {page:#x}, {} calls of both site functions, traps emulated {traps:?}, \
         calls during an update {overlapped:?}; {}; {}",
        CALLS.load(SeqCst),
        stats_text(0),
        stats_text(1)
    );
    assert!(failures.is_empty(), "{} wrong results; failures:\n{}", WRONG.load(SeqCst), failures.join("\n"));
    assert!(CALLS.load(SeqCst) > 0);
    for c in 0..COPIES {
        if common::TRAPS {
            assert!(traps[c] > 0, "{}: no call landed on an int3 of an update", name(c));
        } else {
            assert!(overlapped[c] > 0, "{}: no call started during an update", name(c));
        }
        for (k, generation) in GEN[c].iter().enumerate() {
            let s = generation.load(SeqCst) / 2;
            assert_key_reaches(c, k, target(c, k, s as usize));
        }
    }
}

// ---------------------------------------------------------------- static branches

/// Static branches per copy.
pub const BRANCHES: usize = sc_a::BRANCHES;
const _: () = assert!(sc_a::BRANCHES == sc_b::BRANCHES);

/// Results of one branch-site function: eight sites, one of each polarity
/// of each branch of each copy, in the order `a.u0 b.u0 a.l0 b.l0 a.u1 b.u1
/// a.l1 b.l1` (see [`branch_of`]); each site returns its key's value.
pub type BranchResults = [bool; 2 * COPIES * BRANCHES];

/// The copy, branch and polarity (true: `likely`) of result `i` of a
/// branch-site function.
pub fn branch_of(i: usize) -> (usize, usize, bool) {
    (i % COPIES, i / (2 * COPIES), (i / COPIES) % 2 == 1)
}

/// Sites of both polarities of every branch of both copies in one function,
/// the two copies' sites interleaved (as [`sites_lo`]).
#[inline(never)]
pub fn branch_sites_lo() -> BranchResults {
    [
        sc_a::unlikely0(),
        sc_b::unlikely0(),
        sc_a::likely0(),
        sc_b::likely0(),
        sc_a::unlikely1(),
        sc_b::unlikely1(),
        sc_a::likely1(),
        sc_b::likely1(),
    ]
}

/// The same sites in the opposite order, in another function.
#[inline(never)]
pub fn branch_sites_hi() -> BranchResults {
    let mut r = [
        sc_b::likely1(),
        sc_a::likely1(),
        sc_b::unlikely1(),
        sc_a::unlikely1(),
        sc_b::likely0(),
        sc_a::likely0(),
        sc_b::unlikely0(),
        sc_a::unlikely0(),
    ];
    r.reverse();
    r
}

/// Both branch-site functions' results.
pub fn call_branches() -> [BranchResults; 2] {
    [branch_sites_lo(), branch_sites_hi()]
}

/// How many sites each branch has: two (one of each polarity) in each
/// branch-site function.
pub const BRANCH_SITES_PER_KEY: usize = 4;

/// Branch `b` of copy `c`: `try_set`.
pub fn set_branch(c: usize, b: usize, v: bool) -> Result<bool, String> {
    let r =
        if c == 0 { sc_a::set(b, v).map_err(|e| e.to_string()) } else { sc_b::set(b, v).map_err(|e| e.to_string()) };
    r.map_err(|e| format!("{}: set of branch {b}: {e}", name(c)))
}

/// Branch `b` of copy `owner`, set through copy `by`'s `static_call`
/// (the other copy's: a key across copies, routed to its owner).
pub fn set_branch_by(by: usize, owner: usize, b: usize, v: bool) -> Result<bool, String> {
    let key = if owner == 0 {
        sc_a::branch(b) as *const sc_a::copy::BranchKey as *const ()
    } else {
        sc_b::branch(b) as *const sc_b::copy::BranchKey as *const ()
    };
    // SAFETY: a static branch key of one of the two copies, a static.
    let r = unsafe {
        if by == 0 {
            sc_a::set_any(key, v).map_err(|e| e.to_string())
        } else {
            sc_b::set_any(key, v).map_err(|e| e.to_string())
        }
    };
    r.map_err(|e| format!("{} setting {}'s branch {b}: {e}", name(by), name(owner)))
}

/// Branch `b` of copy `c`: `get()`.
pub fn branch_value(c: usize, b: usize) -> bool {
    if c == 0 {
        sc_a::value(b)
    } else {
        sc_b::value(b)
    }
}

/// Copy `c`: `stats()` as (updates, branch sites patched, traps emulated
/// and rewound).
pub fn branch_stats(c: usize) -> (u64, u64, u64) {
    let f = |updates, patched, emulated: u64, rewound| (updates, patched, emulated + rewound);
    if c == 0 {
        let s = sc_a::stats();
        f(s.updates, s.branch_sites_patched, s.traps_emulated, s.traps_rewound)
    } else {
        let s = sc_b::stats();
        f(s.updates, s.branch_sites_patched, s.traps_emulated, s.traps_rewound)
    }
}

/// One static-branch site as its copy reports it: address, whether it
/// jumps (`Taken`), whether it is patched at all (`Taken` or `NotTaken`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchSite {
    pub address: usize,
    pub taken: bool,
    pub patched: bool,
}

/// The sites of branch `b` of copy `c`, sorted by address.
pub fn branch_sites(c: usize, b: usize) -> Vec<BranchSite> {
    let mut v: Vec<BranchSite> = if c == 0 {
        use sc_a::copy::SiteState::{NotTaken, Taken};
        sc_a::branch_sites(b)
            .iter()
            .map(|s| BranchSite {
                address: s.address(),
                taken: s.state() == Taken,
                patched: matches!(s.state(), Taken | NotTaken),
            })
            .collect()
    } else {
        use sc_b::copy::SiteState::{NotTaken, Taken};
        sc_b::branch_sites(b)
            .iter()
            .map(|s| BranchSite {
                address: s.address(),
                taken: s.state() == Taken,
                patched: matches!(s.state(), Taken | NotTaken),
            })
            .collect()
    };
    v.sort_by_key(|s| s.address);
    v
}
