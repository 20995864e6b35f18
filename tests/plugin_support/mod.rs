//! Finding (and if need be building) the plugin cdylibs from a test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>` of the running binary: a test is
/// `target/<profile>/deps/<test>-<hash>`, an example
/// `target/<profile>/examples/<name>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let parent = exe.parent().expect("binary in a directory");
    let nested = parent.file_name().is_some_and(|n| n == "deps" || n == "examples");
    let dir = if nested { parent.parent().expect("profile dir") } else { parent };
    dir.to_path_buf()
}

/// The cargo profile that produced `dir` (`target/debug` is `dev`).
fn profile_of(dir: &Path) -> String {
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    }
}

/// The path of `lib<name>.so` beside the test binary, built with the same
/// profile and target directory as the test when it is missing or stale
/// (`cargo build -p <name>` is a no-op when it is fresh).
pub fn plugin(name: &str) -> PathBuf {
    let dir = profile_dir();
    let so = dir.join(format!("lib{name}.so"));
    // `target/<profile>`, or `target/<triple>/<profile>` when cross-built
    // (`--target aarch64-unknown-linux-gnu`, run under QEMU): build the
    // plugin for the same target.
    let parent = dir.parent().expect("target dir");
    let triple = parent.file_name().and_then(|n| n.to_str()).filter(|n| n.contains("-linux-"));
    let target_dir = if triple.is_some() { parent.parent().expect("target dir") } else { parent };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("-p")
        .arg(name)
        .arg("--profile")
        .arg(profile_of(&dir))
        .env("CARGO_TARGET_DIR", target_dir);
    if let Some(t) = triple {
        cmd.arg("--target").arg(t);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p {name} failed");
    assert!(so.exists(), "{} not built", so.display());
    so
}

/// A loaded plugin: the library and its path.
pub struct Plugin {
    pub lib: Option<libloading::Library>,
    pub path: PathBuf,
}

impl Plugin {
    /// Builds (if needed) and loads `lib<name>.so`.
    pub fn load(name: &str) -> Plugin {
        Plugin::open(plugin(name))
    }

    /// Loads the plugin at `path` (from [`plugin`]), without building it.
    pub fn open(path: PathBuf) -> Plugin {
        // SAFETY: our own plugin crates, whose initializers only set up Rust's
        // runtime.
        let lib = unsafe { libloading::Library::new(&path) }.expect("dlopen plugin");
        Plugin { lib: Some(lib), path }
    }

    /// The exported function `name`, as an `F`.
    pub fn func<F: Copy>(&self, name: &str) -> F {
        let lib = self.lib.as_ref().expect("loaded");
        // SAFETY: the caller names an export of the declared type.
        unsafe { *lib.get::<F>(name.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}")) }
    }

    /// Whether the library's file is still mapped in this process.
    pub fn mapped(&self) -> bool {
        let canon = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        maps.lines().any(|l| l.ends_with(canon.to_str().unwrap()))
    }

    /// The address range(s) the library is mapped at.
    pub fn contains(&self, addr: usize) -> bool {
        let canon = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        mapping_path(addr).is_some_and(|p| Path::new(&p) == canon)
    }

    /// `dlclose`.
    pub fn unload(&mut self) {
        self.lib.take().expect("loaded").close().expect("dlclose");
    }
}

/// The file mapped at `addr`, if any.
pub fn mapping_path(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    maps.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let (s, e) = it.next()?.split_once('-')?;
        let (s, e) = (usize::from_str_radix(s, 16).ok()?, usize::from_str_radix(e, 16).ok()?);
        (s <= addr && addr < e).then(|| it.nth(4).unwrap_or("").to_string())
    })
}

/// The address of the SIGTRAP handler the kernel runs now.
pub fn current_sigtrap_handler() -> usize {
    let mut cur = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: query only.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) }, 0);
    // SAFETY: filled in.
    unsafe { cur.assume_init() }.sa_sigaction
}

/// Genuine `int3`s the user handler saw.
pub static USER_TRAPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn user_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    USER_TRAPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Installs a user SIGTRAP handler that counts traps (and resumes after the
/// `int3`), before anything of static_call.
pub fn install_user_handler() {
    // SAFETY: a valid SA_SIGINFO handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = user_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
}

/// Executes a genuine `int3`.
#[cfg(target_arch = "x86_64")]
pub fn genuine_int3() {
    // SAFETY: traps to the SIGTRAP handler, which returns past the int3.
    unsafe { std::arch::asm!("int3") };
}

/// Forks a child that exits at once; true if it exited with status 0 (the
/// `pthread_atfork` handlers of every loaded copy ran fine).
pub fn fork_ok() -> bool {
    // SAFETY: the child only calls `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe exit in the child.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// The states of a static branch's `sites`, as (sites in `unlikely`, sites
/// in `likely`): a site belongs to whichever of the two functions (their
/// entry addresses) starts closest at or below it (a site may be a
/// function's first instruction: aarch64, release). Panics if one lies
/// below both.
pub fn branch_states_by_function(
    sites: &[static_call::Site],
    unlikely: usize,
    likely: usize,
) -> (Vec<static_call::SiteState>, Vec<static_call::SiteState>) {
    let (mut u, mut l) = (Vec::new(), Vec::new());
    for s in sites {
        let a = s.address();
        let in_u = a >= unlikely && (a < likely || likely < unlikely);
        let in_l = a >= likely && (a < unlikely || unlikely < likely);
        assert!(in_u != in_l, "site {a:#x} lies after one of {unlikely:#x}, {likely:#x}: {s}");
        if in_u {
            u.push(s.state());
        } else {
            l.push(s.state());
        }
    }
    (u, l)
}

/// Panics unless `sites` (of one branch) hold sites in both functions,
/// `unlikely` (whose sites are `unlikely()`) and `likely`, each patched for
/// `value`: `unlikely()` sites `Taken` while it is set, `likely()` sites
/// `NotTaken`, and the other way round.
#[track_caller]
pub fn assert_branch_patched(what: &str, sites: &[static_call::Site], unlikely: usize, likely: usize, value: bool) {
    use static_call::SiteState::{NotTaken, Taken};
    let (u, l) = branch_states_by_function(sites, unlikely, likely);
    let (want_u, want_l) = if value { (Taken, NotTaken) } else { (NotTaken, Taken) };
    assert!(!u.is_empty() && !l.is_empty(), "{what}: sites of both polarities: {sites:?}");
    assert!(u.iter().all(|&s| s == want_u), "{what} = {value}: unlikely sites {u:?}; {sites:?}");
    assert!(l.iter().all(|&s| s == want_l), "{what} = {value}: likely sites {l:?}; {sites:?}");
    assert!(sites.iter().all(|s| s.reason().is_none()), "{sites:?}");
}
