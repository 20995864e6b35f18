//! Helpers shared by the integration tests (each `tests/*.rs` is its own
//! process; include with `mod common;`).
#![allow(dead_code)]

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    /// `rwxp`-style permission string.
    pub perms: String,
    pub path: String,
}

/// The current mappings of this process.
pub fn mappings() -> Vec<Mapping> {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next().unwrap();
            let perms = it.next().unwrap().to_string();
            let path = it.nth(3).unwrap_or("").to_string();
            let (s, e) = range.split_once('-').unwrap();
            Mapping {
                start: usize::from_str_radix(s, 16).unwrap(),
                end: usize::from_str_radix(e, 16).unwrap(),
                perms,
                path,
            }
        })
        .collect()
}

/// Panics if any mapping of the process is writable and executable at once.
#[track_caller]
pub fn assert_no_wx() {
    let wx: Vec<_> = mappings().into_iter().filter(|m| m.perms.contains('w') && m.perms.contains('x')).collect();
    assert!(wx.is_empty(), "writable and executable mappings: {wx:#x?}");
}

/// The permission string of the mapping that holds `addr`.
pub fn protection_of(addr: usize) -> String {
    mappings()
        .into_iter()
        .find(|m| m.start <= addr && addr < m.end)
        .map(|m| m.perms)
        .unwrap_or_else(|| panic!("{addr:#x} is not mapped"))
}

/// Reads `len` bytes of this process's memory at `addr` (text included).
pub fn read_bytes(addr: usize, len: usize) -> Vec<u8> {
    // SAFETY: callers pass addresses of mapped, readable text (sites,
    // trampolines); volatile so that each read happens now.
    (0..len).map(|i| unsafe { std::ptr::read_volatile((addr + i) as *const u8) }).collect()
}

/// Writes `bytes` at `addr` through `/proc/self/mem`, as a debugger or another
/// patcher would: no protection change.
pub fn poke_text(addr: usize, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open("/proc/self/mem").expect("open /proc/self/mem");
    f.write_all_at(bytes, addr as u64).expect("write /proc/self/mem");
}

/// The protection of every page that holds one of `addrs` (each the start of
/// a `len`-byte instruction), by page address.
pub fn page_protections(
    addrs: impl IntoIterator<Item = usize>,
    len: usize,
) -> std::collections::BTreeMap<usize, String> {
    let page = 4096;
    let maps = mappings();
    let mut out = std::collections::BTreeMap::new();
    for a in addrs {
        for p in [a & !(page - 1), (a + len - 1) & !(page - 1)] {
            out.entry(p).or_insert_with(|| {
                let m =
                    maps.iter().find(|m| m.start <= p && p < m.end).unwrap_or_else(|| panic!("{p:#x} is not mapped"));
                m.perms.clone()
            });
        }
    }
    out
}

/// After an update: no W+X mapping anywhere, and every page in `before`
/// (from [`page_protections`]) has the protection it had.
#[track_caller]
pub fn assert_text_protected(before: &std::collections::BTreeMap<usize, String>) {
    assert_no_wx();
    let maps = mappings();
    for (&p, perms) in before {
        let now = &maps.iter().find(|m| m.start <= p && p < m.end).expect("page still mapped").perms;
        assert_eq!(now, perms, "protection of page {p:#x} changed");
    }
}

/// Aborts the process with `what` if `progress` stops advancing for
/// `patience`: turns a deadlock into a failure with a message instead of a
/// hung test. Not a timing assertion: the patience is minutes-scale slack
/// for a condition that must never happen at all.
pub fn watchdog(what: &'static str, progress: &'static std::sync::atomic::AtomicU64, patience: std::time::Duration) {
    std::thread::spawn(move || {
        let mut last = progress.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            std::thread::sleep(patience);
            let now = progress.load(std::sync::atomic::Ordering::SeqCst);
            if now == last {
                eprintln!("watchdog: no progress for {patience:?} in {what} (stuck at {now}): deadlock");
                std::process::abort();
            }
            last = now;
        }
    });
}

/// Runs `test` (an ignored test of this binary) in a child process with
/// `env` added, and returns its output; panics unless it passed.
pub fn run_child(test: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", test, "--nocapture", "--test-threads=1"])
        .env("STATIC_CALL_TEST_CHILD", test)
        .env_remove("STATIC_CALL_WRITER");
    for &(k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("re-execute the test binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child `{test}` failed ({}):\n{text}", out.status);
    assert!(text.contains(&format!("child {test}: done")), "child `{test}` did not run:\n{text}");
    text
}

/// Whether this process is the child that runs `test`.
pub fn in_child(test: &str) -> bool {
    let me = std::env::var("STATIC_CALL_TEST_CHILD").is_ok_and(|t| t == test);
    if !me {
        eprintln!("{test} runs only in a child process started by its parent test");
    }
    me
}

/// Targets that tag their result with their number (`n << 48 | x`), so a
/// caller can tell which one a call reached.
pub extern "C" fn t1(x: u64) -> u64 {
    (1 << 48) | x
}
/// See [`t1`].
pub extern "C" fn t2(x: u64) -> u64 {
    (2 << 48) | x
}
/// See [`t1`].
pub extern "C" fn t3(x: u64) -> u64 {
    (3 << 48) | x
}

/// How many writes one protocol step makes for instructions starting at
/// `addrs` (sorted): the text writer writes once per page-run, a new one
/// starting at each address whose page differs from the page where the
/// current run started.
pub fn page_runs(addrs: impl IntoIterator<Item = usize>) -> usize {
    let mut runs = 0;
    let mut page = usize::MAX;
    for a in addrs {
        if a / 4096 != page {
            runs += 1;
            page = a / 4096;
        }
    }
    runs
}

/// Maps one page of code at least 4 GiB away from `near`, holding
/// `lea rax, [rdi + 7]; ret` at offset 0 and `lea rax, [rdi + 9]; ret` at 16.
pub fn far_page(near: usize) -> usize {
    const GIB: usize = 1 << 30;
    for k in 4..64 {
        for hint in [near.wrapping_add(k * GIB) & !0xfff, near.wrapping_sub(k * GIB) & !0xfff] {
            if !(1 << 32..=(1 << 47) - (1 << 32)).contains(&hint) {
                continue;
            }
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
            let p = unsafe {
                libc::mmap(
                    hint as *mut libc::c_void,
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                continue;
            }
            if p as usize != hint {
                // SAFETY: the mapping we just made.
                unsafe { libc::munmap(p, 4096) };
                continue;
            }
            let code: [[u8; 5]; 2] = [[0x48, 0x8d, 0x47, 0x07, 0xc3], [0x48, 0x8d, 0x47, 0x09, 0xc3]];
            // SAFETY: our fresh RW page; then made RX (never W+X).
            unsafe {
                std::ptr::copy_nonoverlapping(code[0].as_ptr(), p as *mut u8, 5);
                std::ptr::copy_nonoverlapping(code[1].as_ptr(), (p as *mut u8).add(16), 5);
                assert_eq!(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC), 0);
            }
            return hint;
        }
    }
    panic!("no free page 4..64 GiB away from {near:#x}");
}

/// Installs a seccomp filter on every thread of the process that makes
/// system call `nr` fail with `errno` (and lets every other call through),
/// as a container runtime's profile would.
pub fn deny_syscall(nr: libc::c_long, errno: u32) {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let prog = [
        ins(LD_W_ABS, 0, 0, 4),              // A = arch
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64), // not x86-64: allow
        ins(RET_K, 0, 0, RET_ALLOW),
        ins(LD_W_ABS, 0, 0, 0), // A = nr
        ins(JEQ_K, 0, 1, nr as u32),
        ins(RET_K, 0, 0, RET_ERRNO | (errno & 0xffff)), // the denied call
        ins(RET_K, 0, 0, RET_ALLOW),
    ];
    install_seccomp(&prog);
}

/// Installs the seccomp filter `prog` on every thread of the process
/// (`PR_SET_NO_NEW_PRIVS` first, `SECCOMP_FILTER_FLAG_TSYNC`).
pub fn install_seccomp(prog: &[libc::sock_filter]) {
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
    // SAFETY: a valid filter program that outlives the calls.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let r = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        );
        assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}

/// Whether a five-byte branch at `site` reaches `target` (rel32).
pub fn reaches(site: usize, target: usize) -> bool {
    i32::try_from(target as i64 - (site as i64 + 5)).is_ok()
}
