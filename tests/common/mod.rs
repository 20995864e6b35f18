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
    let mut cmd = self_command();
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
/// code returning its first argument plus 7 at offset 0 and plus 9 at 16,
/// and at 32 code storing 42 to the `u64` its first argument points to.
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
            // x86-64: `lea rax, [rdi + 7]; ret`, the same with 9, `mov qword
            // ptr [rdi], 42; ret`; aarch64: `add x0, x0, #7; ret`, with 9,
            // `mov x1, #42; str x1, [x0]; ret`.
            #[cfg(target_arch = "x86_64")]
            let code: [&[u8]; 3] = [
                &[0x48, 0x8d, 0x47, 0x07, 0xc3],
                &[0x48, 0x8d, 0x47, 0x09, 0xc3],
                &[0x48, 0xc7, 0x07, 0x2a, 0x00, 0x00, 0x00, 0xc3],
            ];
            #[cfg(target_arch = "aarch64")]
            let code: [&[u8]; 3] = [
                &[0x00, 0x1c, 0x00, 0x91, 0xc0, 0x03, 0x5f, 0xd6],
                &[0x00, 0x24, 0x00, 0x91, 0xc0, 0x03, 0x5f, 0xd6],
                &[0x41, 0x05, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xf9, 0xc0, 0x03, 0x5f, 0xd6],
            ];
            // SAFETY: our fresh RW page; then made RX (never W+X). On
            // aarch64 the instruction cache is made coherent with what was
            // written before the page is executed.
            unsafe {
                std::ptr::copy_nonoverlapping(code[0].as_ptr(), p as *mut u8, code[0].len());
                std::ptr::copy_nonoverlapping(code[1].as_ptr(), (p as *mut u8).add(16), code[1].len());
                std::ptr::copy_nonoverlapping(code[2].as_ptr(), (p as *mut u8).add(32), code[2].len());
                assert_eq!(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC), 0);
                #[cfg(target_arch = "aarch64")]
                for line in (p as usize..p as usize + 64).step_by(16) {
                    core::arch::asm!("dc cvau, {0}", "dsb ish", "ic ivau, {0}", "dsb ish", "isb", in(reg) line);
                }
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
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let prog = [
        ins(LD_W_ABS, 0, 0, 4),       // A = arch
        ins(JEQ_K, 1, 0, AUDIT_ARCH), // another architecture: allow
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

/// Whether a call at `site` can reach `target` directly: x86-64 `call
/// rel32` (±2 GiB from the next instruction), aarch64 `bl` (±128 MiB).
pub fn reaches(site: usize, target: usize) -> bool {
    if cfg!(target_arch = "aarch64") {
        (-(1i64 << 27)..(1i64 << 27)).contains(&(target as i64 - site as i64))
    } else {
        i32::try_from(target as i64 - (site as i64 + 5)).is_ok()
    }
}

/// Whether this architecture patches with `int3` and a SIGTRAP handler
/// (x86-64), so that a test can require `traps_emulated > 0`; on aarch64
/// instructions are replaced with single stores and no trap ever happens.
pub const TRAPS: bool = cfg!(target_arch = "x86_64");

/// The length of a patchable instruction.
pub const INSN_LEN: usize = if cfg!(target_arch = "aarch64") { 4 } else { 5 };

/// Length of what the protocol rewrites at one address (a patch): x86-64
/// six bytes (a site's last `cs` prefix and its five-byte form, or the
/// indirect call `ff 15 disp32`; a trampoline's head and its `ret`),
/// aarch64 one instruction.
pub const PATCH_LEN: usize = if cfg!(target_arch = "aarch64") { 4 } else { 6 };

/// Where the patch of the site at `site` starts, the byte the `int3` goes
/// on: x86-64 the site's last `cs` prefix, one byte before the site's
/// address; aarch64 the site itself.
pub fn patch_of(site: usize) -> usize {
    if cfg!(target_arch = "aarch64") {
        site
    } else {
        site - 1
    }
}

/// The target of the direct call a site's bytes hold (`Site::bytes`):
/// x86-64 `call rel32` (`e8`), aarch64 `bl`; `None` for anything else.
pub fn call_target(address: usize, bytes: [u8; 5]) -> Option<usize> {
    if cfg!(target_arch = "aarch64") {
        let word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        (word >> 26 == 0b100101).then(|| address.wrapping_add(((((word << 6) as i32) >> 6) as isize * 4) as usize))
    } else {
        (bytes[0] == 0xe8).then(|| {
            let rel = i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
            address.wrapping_add(5).wrapping_add(rel as isize as usize)
        })
    }
}

/// The bytes a site holds while its key has no target and returns `()`:
/// x86-64's five-byte `nop`, aarch64's `nop` (then the zero padding).
pub const NOP_BYTES: [u8; 5] =
    if cfg!(target_arch = "aarch64") { [0x1f, 0x20, 0x03, 0xd5, 0] } else { [0x0f, 0x1f, 0x44, 0x00, 0x00] };

/// Whether this process can install seccomp filters. QEMU user mode (the
/// aarch64 tests' runner) refuses them (`EINVAL`/`ENOSYS`): the tests that
/// need a filter then say so and skip. Tested in a child process, since a
/// filter, once installed, cannot be removed.
pub fn seccomp_works() -> bool {
    // SAFETY: the child only makes system calls and exits.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let allow = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0x7fff_0000 }];
            let fprog = libc::sock_fprog { len: 1, filter: allow.as_ptr().cast_mut() };
            let ok = libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                && libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const _) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}

/// A command that runs this test binary again. Where the kernel cannot
/// execute it (QEMU user mode, the aarch64 tests' runner, with no
/// `binfmt_misc` entry for aarch64: the exec fails and the spawned child
/// exits 127 without a word), the command runs it through the emulator that
/// `.cargo/config.toml` names, `STATIC_CALL_TEST_EMULATOR` overriding it.
/// Found out once, by running the binary with `--list`.
pub fn self_command() -> std::process::Command {
    use std::process::{Command, Stdio};
    static EMULATED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let exe = std::env::current_exe().expect("the test binary");
    let emulated = *EMULATED.get_or_init(|| {
        let out = Command::new(&exe).arg("--list").stdin(Stdio::null()).output().expect("spawn");
        out.status.code() == Some(127) && out.stdout.is_empty() && out.stderr.is_empty()
    });
    if !emulated {
        return Command::new(exe);
    }
    let emulator =
        std::env::var("STATIC_CALL_TEST_EMULATOR").unwrap_or_else(|_| "qemu-aarch64 -L /usr/aarch64-linux-gnu".into());
    let mut words = emulator.split_whitespace();
    let mut cmd = Command::new(words.next().expect("an emulator"));
    cmd.args(words).arg(exe);
    cmd
}

/// The errno with which the aarch64 probe refused the `/proc/self/mem`
/// writer, when `init` failed because of it (that writer forced with
/// `STATIC_CALL_WRITER=procmem`, or the other refused too, as under MDWE):
/// `EOPNOTSUPP` (the kernel's copy may tear an instruction: FEAT_MOPS) or
/// `ESTALE` (the instruction stream does not see its writes: QEMU user
/// mode). A child that needs that writer then says so and stops: what it
/// tests does not exist in this process.
pub fn proc_mem_refused(init: &Result<(), static_call::Error>) -> Option<i32> {
    match *init {
        Err(static_call::Error::TextNotWritable { proc_mem_errno, .. })
            if cfg!(target_arch = "aarch64") && [libc::ESTALE, libc::EOPNOTSUPP].contains(&proc_mem_errno) =>
        {
            Some(proc_mem_errno)
        }
        _ => None,
    }
}

/// As [`run_child`], with a bound: a child still running after `bound` is
/// killed (SIGKILL) and the call panics, naming where each of its threads
/// waited. Returns the child's stdout and stderr, and its exit status; the
/// caller judges them (a hang is a failure, not a test that never ends).
pub fn run_child_bounded(
    test: &str,
    env: &[(&str, &str)],
    bound: std::time::Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut cmd = self_command();
    cmd.args(["--ignored", "--exact", test, "--nocapture", "--test-threads=1"])
        .env("STATIC_CALL_TEST_CHILD", test)
        .env_remove("STATIC_CALL_WRITER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for &(k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("re-execute the test binary");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(bound) {
        Ok(out) => out.expect("wait for the child"),
        Err(_) => {
            let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.flatten()
                        .map(|t| {
                            let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
                            format!(
                                "thread {:?}: wchan {}, syscall {}",
                                t.file_name(),
                                read("wchan"),
                                read("syscall").trim()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            // SAFETY: our child, not yet reaped (its waiter has not returned).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // What it wrote, unless its own children hold the pipes open.
            let text = match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(Ok(out)) => {
                    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
                }
                _ => "(its output is still held open)".to_string(),
            };
            panic!("child `{test}` {env:?} still running after {bound:?}, killed; its threads: {threads:#?}\n{text}");
        }
    };
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs this test binary's test `child` under gdb, with `child_env` set (the
/// child's cue), as a user would (`handle SIGTRAP nostop noprint pass`,
/// `signal 0`), and asserts that it printed its `GDB_CHILD_DONE` summary and
/// exited normally. Skips (with a note) where gdb is missing or ptrace is
/// not permitted.
pub fn child_exits_normally_under_gdb(child: &str, child_env: &str) {
    let gdb = std::process::Command::new("gdb").arg("--version").output();
    if !gdb.is_ok_and(|o| o.status.success()) {
        eprintln!("NOTE: gdb is not installed: skipping the under-gdb test (apt-get install gdb)");
        return;
    }
    let me = std::env::current_exe().unwrap();
    let out = std::process::Command::new("gdb")
        // `handle SIGTRAP pass` from the start makes gdb pass its own
        // breakpoint traps (ld.so's event breakpoint) to the program, which
        // dies before main: stop at main first, drop that breakpoint, pass
        // SIGTRAP from then on, and resume without the pending stop signal.
        .args([
            "-batch",
            "-nx",
            "-ex",
            "set startup-with-shell off",
            "-ex",
            "break main",
            "-ex",
            "run",
            "-ex",
            "delete",
        ])
        .args(["-ex", "handle SIGTRAP nostop noprint pass", "-ex", "signal 0", "--args"])
        .arg(&me)
        .args(["--exact", child, "--nocapture", "--test-threads=1"])
        .env(child_env, "1")
        .output()
        .expect("run gdb");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = format!("gdb stdout:\n{stdout}\ngdb stderr:\n{stderr}");
    if stderr.contains("ptrace: Operation not permitted") || stderr.contains("Could not trace the inferior") {
        eprintln!("NOTE: ptrace is not permitted here: skipping the under-gdb test\n{log}");
        return;
    }
    // gdb prints thread events on the same stream: the summary may not start its line.
    let done = stdout.lines().find(|l| l.contains("GDB_CHILD_DONE"));
    eprintln!("{}", done.unwrap_or("(no summary)"));
    assert!(done.is_some(), "the program did not finish its updates under gdb\n{log}");
    assert!(stdout.contains("exited normally"), "the program did not exit normally under gdb\n{log}");
}

/// Runs this test binary's ignored test `child` under valgrind
/// (`--smc-check=all`, as the README says), and asserts that it succeeded
/// and printed `child {child}: done`. Skips where valgrind is missing.
pub fn child_runs_under_valgrind(child: &str) {
    use std::process::Command;
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("skipped: valgrind is not installed");
        return;
    }
    let out = Command::new("valgrind")
        .args(["--smc-check=all", "--error-exitcode=99", "--quiet"])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", child, "--nocapture", "--test-threads=1"])
        .env("STATIC_CALL_TEST_CHILD", child)
        .env_remove("STATIC_CALL_WRITER")
        .output()
        .expect("run valgrind");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "under valgrind ({}):\n{text}", out.status);
    assert!(text.contains(&format!("child {child}: done")), "child did not run:\n{text}");
}

/// A SIGTRAP-handler hook (`__private::set_trap_hook`) that parks the first
/// trap of one thread until the test releases it (tests/late_trap.rs and
/// tests/break_branch_late_trap.rs).
pub mod trap_hold {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

    /// Hook state: 0 idle (hold the next trap), 1 a thread is held, 2 released,
    /// 3 done (let every later trap through).
    pub static HOOK: AtomicU32 = AtomicU32::new(0);
    /// Set by the caller thread around its calls, read by the hook: only that
    /// thread's traps are held.
    pub static CALLER_TID: AtomicU64 = AtomicU64::new(0);

    pub fn gettid() -> u64 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::syscall(libc::SYS_gettid) as u64 }
    }

    pub fn futex(word: &AtomicU32, op: i32, val: u32) {
        // SAFETY: a valid, aligned u32; FUTEX_WAIT/WAKE without timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                op | libc::FUTEX_PRIVATE_FLAG,
                val,
                std::ptr::null::<libc::timespec>(),
            )
        };
    }

    /// Runs in the SIGTRAP handler, before it looks at the plan: the first trap of
    /// the caller thread is parked here until the test releases it.
    /// Async-signal-safe: atomics, gettid and futex only.
    pub extern "C" fn hold() {
        if gettid() != CALLER_TID.load(SeqCst) {
            return;
        }
        if HOOK.compare_exchange(0, 1, SeqCst, SeqCst).is_err() {
            return;
        }
        futex(&HOOK, libc::FUTEX_WAKE, i32::MAX as u32);
        while HOOK.load(SeqCst) == 1 {
            futex(&HOOK, libc::FUTEX_WAIT, 1);
        }
    }
}
