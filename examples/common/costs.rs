//! What a call costs, measured in one interleaved run: the short table the
//! demo prints, and the cases the criterion benchmarks measure.
//!
//! Include it with `#[path = "common/costs.rs"] mod costs;` (from
//! `examples/`) or `#[path = "../examples/common/costs.rs"] mod costs;` (from
//! `benches/`), then:
//!
//! ```text
//! let table = costs::measure(&costs::Options::default());
//! print!("{table}");
//! ```
//!
//! Every call case runs the same target (`add1`) in a dependent loop (each
//! call takes the previous result), so what differs is only how the call gets
//! there. Each round times every case once, in turn; the figure is the median
//! over rounds, and the ratio is to the plain call of the same round set.
#![allow(dead_code)]

use static_call::static_call;
use std::fmt;
use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use std::time::Instant;

/// The target of every call case.
#[inline(never)]
pub extern "C" fn add1(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// The other target, for updates.
#[inline(never)]
pub extern "C" fn add2(x: u64) -> u64 {
    x.wrapping_add(2)
}

/// A key whose sites are patched to `add1` (after `init`).
#[static_call]
pub static PATCHED: extern "C" fn(u64) -> u64 = add1;

/// A key retargeted to a copy of `add1` mapped more than 2 GiB away: on
/// x86-64 its site calls through the key's slot, `call qword ptr [rip +
/// slot]` (`SiteState::Indirect`).
#[static_call]
pub static FAR: extern "C" fn(u64) -> u64 = add1;

/// That same far copy of `add1`, as an atomic function pointer.
pub static FAR_POINTER: AtomicPtr<()> = AtomicPtr::new(add1 as *mut ());

/// A key retargeted to a function of a `dlopen`ed library
/// ([`use_plugin_target`]), and that function as an atomic function pointer.
#[static_call]
pub static PLUGIN: extern "C" fn(u64) -> u64 = add1;
/// See [`PLUGIN`].
pub static PLUGIN_POINTER: AtomicPtr<()> = AtomicPtr::new(add1 as *mut ());
/// What the plugin's function is called (set by [`use_plugin_target`]).
static PLUGIN_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Calls go through the trampoline only.
#[static_call(out_of_line)]
pub static OUT_OF_LINE: extern "C" fn(u64) -> u64 = add1;

/// The key whose single site the update figure retargets.
#[static_call]
pub static UPDATED: extern "C" fn(u64) -> u64 = add1;

/// What a user would write instead: an atomic function pointer.
pub static POINTER: AtomicPtr<()> = AtomicPtr::new(add1 as *mut ());

/// Dynamic dispatch through a trait object.
pub trait Op {
    /// Applies the operation.
    fn apply(&self, x: u64) -> u64;
}

/// `add1` as an `Op`.
pub struct Add1;
impl Op for Add1 {
    #[inline(never)]
    fn apply(&self, x: u64) -> u64 {
        x.wrapping_add(1)
    }
}

/// `add2` as an `Op` (so the call is not devirtualized to one type).
pub struct Add2;
impl Op for Add2 {
    #[inline(never)]
    fn apply(&self, x: u64) -> u64 {
        x.wrapping_add(2)
    }
}

/// Dispatch by an enum `match`, each arm a direct call.
#[derive(Clone, Copy)]
pub enum Choice {
    /// Calls `add1`.
    Add1,
    /// Calls `add2`.
    Add2,
    /// Calls `add1` twice.
    Twice,
    /// Returns `x`.
    Same,
}

// A retpoline thunk, as `-Zretpoline`/`-mindirect-branch=thunk` emit it: the
// `ret` is always mispredicted onto the `pause; lfence` loop, so the target
// is never reached speculatively. Target in r11.
#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.static_call_costs_retpoline, \"ax\", @progbits",
    ".globl static_call_costs_retpoline_r11",
    ".hidden static_call_costs_retpoline_r11",
    ".type static_call_costs_retpoline_r11, @function",
    ".balign 32",
    "static_call_costs_retpoline_r11:",
    "call 2f",
    "1: pause",
    "lfence",
    "jmp 1b",
    ".balign 16",
    "2: mov [rsp], r11",
    "ret",
    ".size static_call_costs_retpoline_r11, . - static_call_costs_retpoline_r11",
    ".popsection",
);

/// Calls `f(x)` through the retpoline thunk.
///
/// # Safety
///
/// `f` is an `extern "C" fn(u64) -> u64`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn retpoline_call(f: *mut (), x: u64) -> u64 {
    let r: u64;
    // SAFETY: the thunk jumps to `f` (the caller's contract) with the return
    // address of this call on the stack: a plain C call of `f(x)`.
    unsafe {
        std::arch::asm!(
            "call static_call_costs_retpoline_r11",
            inout("r11") f => _,
            inout("rdi") x => _,
            lateout("rax") r,
            clobber_abi("C"),
        )
    };
    r
}

/// The floor: a plain call of an `#[inline(never)]` function.
#[inline(never)]
pub fn loop_direct(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x = add1(x);
    }
    x
}

/// A patched site.
#[inline(never)]
pub fn loop_patched(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x = PATCHED.call(x);
    }
    x
}

/// A site whose target is out of rel32 reach (x86-64: `call [rip + slot]`).
#[inline(never)]
pub fn loop_far(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x = FAR.call(x);
    }
    x
}

/// The same far function through an `AtomicPtr`, loaded for each call.
#[inline(never)]
pub fn loop_far_pointer(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x = pointer_call(&FAR_POINTER, x);
    }
    x
}

/// A site whose target is a function of a `dlopen`ed library.
#[inline(never)]
pub fn loop_plugin(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x = PLUGIN.call(x);
    }
    x
}

/// The same function of the library through an `AtomicPtr`.
#[inline(never)]
pub fn loop_plugin_pointer(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x = pointer_call(&PLUGIN_POINTER, x);
    }
    x
}

/// Makes `f`, a function of a `dlopen`ed library named `name`, the target
/// of `PLUGIN` and `PLUGIN_POINTER`: [`cases`] then measures both (the
/// far-site goal: at most 1.05 times the pointer).
pub fn use_plugin_target(name: &'static str, f: extern "C" fn(u64) -> u64) {
    PLUGIN.update(f);
    PLUGIN_POINTER.store(f as *mut (), Ordering::Release);
    let _ = PLUGIN_NAME.set(name);
}

/// A call to the trampoline of `FAR` while its target is far: `call
/// trampoline; jmp +3; jmp [rip + slot]` (what a far site cost before it
/// became one indirect call, and what a refused or `out_of_line` site
/// costs with a far target).
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
#[inline(never)]
pub fn loop_trampoline_far(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        // SAFETY: the trampoline of FAR jumps through the key's slot to its
        // target, an `extern "C" fn(u64) -> u64`; the operands are those of
        // a C call.
        unsafe {
            std::arch::asm!(
                "call {k}_sc_tramp",
                k = sym __STATIC_CALL_KEY_FAR,
                inout("rdi") x,
                lateout("rax") x,
                clobber_abi("C"),
            )
        };
    }
    x
}

/// A call to a trampoline that holds `jmp add1` (what a site that is not
/// patched, e.g. refused, executes): `call trampoline; jmp target`.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
#[inline(never)]
pub fn loop_trampoline(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        // SAFETY: the trampoline of PATCHED jumps to its target, `add1`, an
        // `extern "C" fn(u64) -> u64`; the operands are those of a C call.
        unsafe {
            std::arch::asm!(
                "call {k}_sc_tramp",
                k = sym __STATIC_CALL_KEY_PATCHED,
                inout("rdi") x,
                lateout("rax") x,
                clobber_abi("C"),
            )
        };
    }
    x
}

/// An `out_of_line` key (an indirect call to the trampoline).
#[inline(never)]
pub fn loop_out_of_line(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x = OUT_OF_LINE.call(x);
    }
    x
}

/// An `AtomicPtr` function pointer, loaded for each call.
#[inline(never)]
pub fn loop_pointer(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        let p = POINTER.load(Ordering::Acquire);
        // SAFETY: POINTER holds only `extern "C" fn(u64) -> u64`s.
        let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(p) };
        x = f(x);
    }
    x
}

/// A `dyn Trait` call.
#[inline(never)]
pub fn loop_dyn(mut x: u64, n: u64) -> u64 {
    let ops: [&dyn Op; 2] = [&Add1, &Add2];
    let op = black_box(ops[0]);
    for _ in 0..n {
        x = op.apply(x);
    }
    x
}

/// The variant `loop_match` dispatches on, loaded for each call (as the
/// pointer is): 0 is `Choice::Add1`.
pub static CHOICE: AtomicU8 = AtomicU8::new(0);

/// An enum `match`, each arm a direct call.
#[inline(never)]
pub fn loop_match(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        let choice = match CHOICE.load(Ordering::Relaxed) {
            0 => Choice::Add1,
            1 => Choice::Add2,
            2 => Choice::Twice,
            _ => Choice::Same,
        };
        x = match choice {
            Choice::Add1 => add1(x),
            Choice::Add2 => add2(x),
            Choice::Twice => add1(add1(x)),
            Choice::Same => x,
        };
    }
    x
}

/// A function pointer called through a retpoline thunk.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
pub fn loop_retpoline(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        let p = POINTER.load(Ordering::Acquire);
        // SAFETY: POINTER holds only `extern "C" fn(u64) -> u64`s.
        x = unsafe { retpoline_call(p, x) };
    }
    x
}

/// The key of the switching regime: retargeted between `add1` and `add2`
/// every M calls (`run_switched`).
#[static_call]
pub static SWITCHED: extern "C" fn(u64) -> u64 = add1;

/// The same, as a user would write it with an atomic function pointer.
pub static SWITCHED_POINTER: AtomicPtr<()> = AtomicPtr::new(add1 as *mut ());

/// The two targets of the polymorphic site.
pub static TWO: [AtomicPtr<()>; 2] = [AtomicPtr::new(add1 as *mut ()), AtomicPtr::new(add2 as *mut ())];

/// Calls the `extern "C" fn(u64) -> u64` held in `p`.
#[inline(always)]
fn pointer_call(p: &AtomicPtr<()>, x: u64) -> u64 {
    // SAFETY: every pointer this module calls holds an `extern "C" fn(u64) -> u64`.
    let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(p.load(Ordering::Acquire)) };
    f(x)
}

/// The site of `SWITCHED`.
#[inline(never)]
pub fn loop_switched(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x = SWITCHED.call(x);
    }
    x
}

/// One indirect site through `SWITCHED_POINTER`.
#[inline(never)]
pub fn loop_switched_pointer(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x = pointer_call(&SWITCHED_POINTER, x);
    }
    x
}

/// One indirect site whose target is `add1` or `add2` at random on every
/// call: a polymorphic site the predictor cannot follow.
#[inline(never)]
pub fn loop_polymorphic(mut x: u64, n: u64) -> u64 {
    let mut s = x | 1;
    for _ in 0..n {
        s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        x = pointer_call(&TWO[(s >> 63) as usize], x);
    }
    x
}

/// How the target of one hot site changes, for the switching regime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// A plain call of one target (the floor; nothing switches).
    Direct,
    /// A static call site, its key updated every M calls (the update's cost
    /// is in the figure).
    Static,
    /// An `AtomicPtr` stored every M calls, called at one indirect site.
    Pointer,
    /// One indirect site with two targets taken at random (M is moot).
    Polymorphic,
}

/// The switching variants, the floor first, with their table headings.
pub const SWITCHES: [(Switch, &str); 4] = [
    (Switch::Direct, "direct"),
    (Switch::Static, "static+update"),
    (Switch::Pointer, "AtomicPtr"),
    (Switch::Polymorphic, "polymorphic"),
];

/// Runs `blocks` blocks of `m` dependent calls starting from `x`; before each
/// block the key (`Static`) or the pointer (`Pointer`) switches to the other
/// target. Returns the last result.
pub fn run_switched(kind: Switch, m: u64, blocks: u64, mut x: u64) -> u64 {
    for b in 0..blocks {
        let other = b % 2 == 1;
        x = match kind {
            Switch::Direct => loop_direct(x, m),
            Switch::Static => {
                SWITCHED.update(if other { add2 } else { add1 });
                loop_switched(x, m)
            }
            Switch::Pointer => {
                let f: extern "C" fn(u64) -> u64 = if other { add2 } else { add1 };
                SWITCHED_POINTER.store(f as *mut (), Ordering::Release);
                loop_switched_pointer(x, m)
            }
            Switch::Polymorphic => loop_polymorphic(x, m),
        };
    }
    x
}

/// Nanoseconds per call of `run_switched(kind, m, ..)` over at least
/// `calls` calls (and at least two blocks).
pub fn time_switched(kind: Switch, m: u64, calls: u64) -> f64 {
    let blocks = calls.div_ceil(m).max(2);
    let t = Instant::now();
    black_box(run_switched(kind, m, blocks, black_box(1)));
    t.elapsed().as_nanos() as f64 / (blocks * m) as f64
}

/// A table of interleaved measurements: rows (e.g. a number of sites) by
/// columns (the variants, the floor first); each cell the median over rounds
/// and the fastest round, nanoseconds per call. `{}` prints the medians,
/// `{:#}` the fastest rounds too.
#[derive(Clone, Debug)]
pub struct Grid {
    /// The table's first line.
    pub title: String,
    /// Heading of the row labels.
    pub row_head: &'static str,
    /// Column headings.
    pub columns: Vec<&'static str>,
    /// Row label and (median, fastest) per column.
    pub rows: Vec<(String, Vec<(f64, f64)>)>,
}

/// One sample: runs a case once and returns nanoseconds per call.
pub type Sample<'a> = Box<dyn FnMut() -> f64 + 'a>;

impl Grid {
    /// Measures `rows` (label, one sampler per column), interleaved: each
    /// round runs every cell once, in turn; every cell is run once first to
    /// warm it up.
    pub fn measure(
        title: String,
        row_head: &'static str,
        columns: Vec<&'static str>,
        mut rows: Vec<(String, Vec<Sample<'_>>)>,
        rounds: usize,
    ) -> Grid {
        let mut samples: Vec<Vec<Vec<f64>>> =
            rows.iter().map(|(_, cells)| vec![Vec::with_capacity(rounds); cells.len()]).collect();
        for (_, cells) in &mut rows {
            for c in cells.iter_mut() {
                black_box(c());
            }
        }
        for _ in 0..rounds {
            for ((_, cells), s) in rows.iter_mut().zip(samples.iter_mut()) {
                for (c, v) in cells.iter_mut().zip(s.iter_mut()) {
                    v.push(c());
                }
            }
        }
        let rows = rows
            .into_iter()
            .zip(samples)
            .map(|((label, _), mut s)| (label, s.iter_mut().map(|v| median(v)).collect()))
            .collect();
        Grid { title, row_head, columns, rows }
    }

    /// The median of `column` in the row labelled `row`.
    pub fn get(&self, row: &str, column: &str) -> Option<f64> {
        let c = self.columns.iter().position(|&h| h == column)?;
        self.rows.iter().find(|(l, _)| l == row).map(|(_, v)| v[c].0)
    }
}

impl fmt::Display for Grid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.title)?;
        write!(f, "  {:>8}", self.row_head)?;
        for c in &self.columns {
            write!(f, " {c:>18}")?;
        }
        writeln!(f)?;
        for (label, cells) in &self.rows {
            write!(f, "  {label:>8}")?;
            let base = cells[0].0;
            for &(ns, _) in cells {
                write!(f, " {:>8.2} ns {:>5.2}x", ns, ns / base)?;
            }
            writeln!(f)?;
        }
        if f.alternate() {
            writeln!(f, "  the fastest round of each (the least disturbed by other processes):")?;
            for (label, cells) in &self.rows {
                write!(f, "  {label:>8}")?;
                let base = cells[0].1;
                for &(_, ns) in cells {
                    write!(f, " {:>8.2} ns {:>5.2}x", ns, ns / base)?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// The switching regime: for each M, ns per call of every `SWITCHES`
/// variant (ratio to the direct call), `rounds` interleaved rounds of at
/// least `calls` calls each.
pub fn measure_switched(ms: &[u64], rounds: usize, calls: u64) -> Grid {
    make_opaque();
    let rows = ms
        .iter()
        .map(|&m| {
            let cells: Vec<Sample<'_>> =
                SWITCHES.iter().map(|&(k, _)| Box::new(move || time_switched(k, m, calls)) as Sample<'_>).collect();
            (format!("{m}"), cells)
        })
        .collect();
    let g = Grid::measure(
        format!(
            "One hot site whose target switches every M calls: ns per call, the update included \
             ({rounds} interleaved rounds of >= {calls} calls)"
        ),
        "M",
        SWITCHES.iter().map(|&(_, h)| h).collect(),
        rows,
        rounds,
    );
    SWITCHED.update(add1);
    g
}

/// One call case: a name and a loop of `n` dependent calls.
#[derive(Clone, Copy)]
pub struct Case {
    /// Short name (also the benchmark id).
    pub name: &'static str,
    /// What it measures.
    pub what: &'static str,
    /// Runs `n` calls starting from `x`.
    pub run: fn(u64, u64) -> u64,
}

/// Stores into every pointer and variant the cases load, their own values
/// through `black_box`: a static that is never stored to is a constant to
/// LLVM, which then turns `POINTER`'s indirect call, and `CHOICE`'s `match`,
/// into a direct call of `add1` (it did, before this was called).
pub fn make_opaque() {
    for p in [&POINTER, &SWITCHED_POINTER, &TWO[0], &TWO[1], &FAR_POINTER, &PLUGIN_POINTER] {
        p.store(black_box(p.load(Ordering::Relaxed)), Ordering::Release);
    }
    CHOICE.store(black_box(CHOICE.load(Ordering::Relaxed)), Ordering::Relaxed);
}

/// Prepares the cases: `make_opaque`, `init`, and the out-of-reach target
/// of `FAR`. Returns the cases this build can measure, the floor first.
pub fn cases() -> Vec<Case> {
    make_opaque();
    let mut v = vec![
        Case { name: "direct", what: "plain #[inline(never)] extern \"C\" call", run: loop_direct },
        Case { name: "patched", what: "patched static call site", run: loop_patched },
    ];
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
    {
        if static_call::init().is_err() {
            // Patching is impossible in this process: the site calls its
            // trampoline, which jumps through the key's slot.
            v[1].what = "static call site in slots mode (patching impossible)";
        }
        let far = far_copy_of_add1();
        if far.is_some() {
            make_opaque();
            v.push(Case { name: "far", what: "far site, call [rip+slot] (target > 2 GiB)", run: loop_far });
            v.push(Case { name: "atomic_ptr_far", what: "AtomicPtr, the same far function", run: loop_far_pointer });
            v.push(Case {
                name: "trampoline_far",
                what: "call to the trampoline, target > 2 GiB away",
                run: loop_trampoline_far,
            });
        }
        if let Some(&name) = PLUGIN_NAME.get() {
            v.push(Case { name: "plugin", what: name_of(name, "site"), run: loop_plugin });
            v.push(Case { name: "atomic_ptr_plugin", what: name_of(name, "AtomicPtr"), run: loop_plugin_pointer });
        }
        v.push(Case { name: "trampoline", what: "call to the trampoline (jmp target)", run: loop_trampoline });
    }
    v.push(Case { name: "out_of_line", what: "out_of_line key (indirect call, trampoline)", run: loop_out_of_line });
    v.push(Case { name: "atomic_ptr", what: "AtomicPtr function pointer", run: loop_pointer });
    v.push(Case { name: "dyn_trait", what: "dyn Trait method", run: loop_dyn });
    v.push(Case { name: "enum_match", what: "enum match, direct call per arm", run: loop_match });
    #[cfg(target_arch = "x86_64")]
    v.push(Case { name: "retpoline", what: "function pointer through a retpoline thunk", run: loop_retpoline });
    v
}

/// A row's description for the plugin cases: "site -> alpha_dispatch (.so)".
fn name_of(name: &'static str, how: &str) -> &'static str {
    Box::leak(format!("{how} -> {name} (dlopen'd .so)").into_boxed_str())
}

/// Maps a copy of `add1` more than 2 GiB away from this binary's text (never
/// writable and executable at once) and retargets `FAR` to it, once. `None`
/// if no such address could be mapped.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
pub fn far_copy_of_add1() -> Option<usize> {
    use std::sync::OnceLock;
    static FAR_FN: OnceLock<Option<usize>> = OnceLock::new();
    *FAR_FN.get_or_init(|| {
        // lea rax, [rdi + 1]; ret
        const CODE: [u8; 5] = [0x48, 0x8d, 0x47, 0x01, 0xc3];
        let text = add1 as *const () as usize;
        let far_enough = |p: usize| p.abs_diff(text) > (4 << 30);
        // SAFETY: a fresh anonymous mapping, written while read-write, then
        // made read-execute; never unmapped (FAR may call it forever).
        let page = unsafe {
            let len = 4096;
            let mut p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p != libc::MAP_FAILED && !far_enough(p as usize) {
                libc::munmap(p, len);
                let hint = (text & !0xfff).wrapping_add(64 << 30);
                p = libc::mmap(
                    hint as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                );
            }
            if p == libc::MAP_FAILED || !far_enough(p as usize) {
                return None;
            }
            std::ptr::copy_nonoverlapping(CODE.as_ptr(), p.cast::<u8>(), CODE.len());
            if libc::mprotect(p, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
                return None;
            }
            p as usize
        };
        // SAFETY: the page holds a complete `extern "C" fn(u64) -> u64`.
        let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(page) };
        assert_eq!(f(41), 42);
        FAR.update(f);
        FAR_POINTER.store(f as *mut (), Ordering::Release);
        // Patched: one indirect call through the slot; on the slots (patching
        // impossible): the trampoline.
        let want = match static_call::mode() {
            static_call::Mode::Patching(_) => static_call::SiteState::Indirect,
            _ => static_call::SiteState::Trampoline,
        };
        assert!(FAR.sites().iter().all(|s| s.state() == want), "{:?}", FAR.sites());
        Some(page)
    })
}

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Rounds (each times every case once); the figure is the median.
    pub rounds: usize,
    /// Calls per case per round.
    pub calls: u64,
    /// Updates and membarrier calls timed, one by one (median).
    pub updates: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { rounds: 21, calls: 200_000, updates: 101 }
    }
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Case name.
    pub name: &'static str,
    /// What it measures.
    pub what: &'static str,
    /// Median nanoseconds per call (per operation for the update rows).
    pub ns: f64,
    /// `ns` over the plain call's (calls) or over one membarrier (updates).
    pub ratio: f64,
    /// The fastest round (calls) or operation (updates), nanoseconds: the
    /// least disturbed by other processes.
    pub min_ns: f64,
    /// `min_ns` over the plain call's (or the membarrier's) `min_ns`.
    pub min_ratio: f64,
}

/// The measured table: call rows, then update rows.
#[derive(Clone, Debug)]
pub struct Table {
    /// Cost of one call, ratio to the plain call.
    pub calls: Vec<Row>,
    /// Cost of one update and of one membarrier, ratio to the membarrier.
    pub updates: Vec<Row>,
    /// The options used.
    pub options: Options,
}

/// (median, minimum).
fn median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0])
}

/// One row per name, ratios to the first.
fn rows(names: &[(&'static str, &'static str)], samples: &mut [Vec<f64>]) -> Vec<Row> {
    let m: Vec<(f64, f64)> = samples.iter_mut().map(|s| median(s)).collect();
    names
        .iter()
        .zip(&m)
        .map(|(&(name, what), &(ns, min_ns))| Row {
            name,
            what,
            ns,
            ratio: ns / m[0].0,
            min_ns,
            min_ratio: min_ns / m[0].1,
        })
        .collect()
}

/// Measures every case, interleaved: round after round, each case once.
pub fn measure(o: &Options) -> Table {
    let cases = cases();
    let mut samples = vec![Vec::with_capacity(o.rounds); cases.len()];
    // Warm up every case (page faults, predictors).
    for c in &cases {
        black_box((c.run)(black_box(1), o.calls / 10 + 1));
    }
    for _ in 0..o.rounds {
        for (c, s) in cases.iter().zip(samples.iter_mut()) {
            let t = Instant::now();
            black_box((c.run)(black_box(1), black_box(o.calls)));
            s.push(t.elapsed().as_nanos() as f64 / o.calls as f64);
        }
    }
    let names: Vec<_> = cases.iter().map(|c| (c.name, c.what)).collect();
    Table { calls: rows(&names, &mut samples), updates: measure_updates(o), options: *o }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]
fn measure_updates(o: &Options) -> Vec<Row> {
    let (mut upd, mut mb) = (Vec::with_capacity(o.updates), Vec::with_capacity(o.updates));
    for i in 0..o.updates {
        let t = Instant::now();
        static_call::__private::sync_core_once().expect("membarrier");
        mb.push(t.elapsed().as_nanos() as f64);
        let t = Instant::now();
        UPDATED.update(if i % 2 == 0 { add2 } else { add1 });
        upd.push(t.elapsed().as_nanos() as f64);
    }
    black_box(UPDATED.call(1));
    let names = [("membarrier", "one membarrier(SYNC_CORE) call"), ("update_1", "update of a key with one site")];
    rows(&names, &mut [mb, upd])
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable"))))]
fn measure_updates(o: &Options) -> Vec<Row> {
    let mut upd = Vec::with_capacity(o.updates);
    for i in 0..o.updates {
        let t = Instant::now();
        UPDATED.update(if i % 2 == 0 { add2 } else { add1 });
        upd.push(t.elapsed().as_nanos() as f64);
    }
    black_box(UPDATED.call(1));
    rows(&[("update_1", "update (atomic store)")], &mut [upd])
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Cost of one call (dependent loop, {} interleaved rounds of {} calls)   median  ratio | fastest  ratio",
            self.options.rounds, self.options.calls
        )?;
        for r in &self.calls {
            writeln!(
                f,
                "  {:<46} {:>7.2} ns {:>5.2}x | {:>5.2} ns {:>5.2}x",
                r.what, r.ns, r.ratio, r.min_ns, r.min_ratio
            )?;
        }
        writeln!(f, "Cost of one update ({} of each, interleaved)", self.options.updates)?;
        for r in &self.updates {
            let (us, min_us) = (r.ns / 1000.0, r.min_ns / 1000.0);
            writeln!(
                f,
                "  {:<46} {:>7.2} µs {:>5.2}x | {:>5.2} µs {:>5.2}x",
                r.what, us, r.ratio, min_us, r.min_ratio
            )?;
        }
        Ok(())
    }
}
