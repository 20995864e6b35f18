//! With default settings no page of text is ever made writable and
//! executable, even for updates of thousands of instructions: a child
//! process installs a seccomp filter that traps every `mprotect` and
//! `pkey_mprotect` asking for both `PROT_WRITE` and `PROT_EXEC` (a SIGSYS
//! handler counts the attempt and makes it fail with `EPERM`), then
//! initializes a binary with 4,225 call sites (the benchmarks' keys) and
//! updates them all: every update succeeds through `/proc/self/mem`, and the
//! count of W+X attempts stays zero.
//!
//! Needs seccomp (skipped where filters cannot be installed: QEMU user mode,
//! the aarch64 tests' runner). On aarch64 the default writer is
//! `/proc/self/mem` only where its probe accepts it; where it refuses it
//! (`EOPNOTSUPP`, `ESTALE`) the default is the mprotect writer, which makes
//! text W+X during an update, and the child says so and stops.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;
#[path = "../benches/common/sites.rs"]
mod sites;

use common::{in_child, run_child};

use static_call::TextWriter;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// `mprotect`/`pkey_mprotect` calls with W+X seen by the filter.
static WX_ATTEMPTS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigsys(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    WX_ATTEMPTS.fetch_add(1, SeqCst);
    // SAFETY: the kernel passes the interrupted context; the trapped
    // syscall's return value is rax (x0 on aarch64).
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        #[cfg(target_arch = "x86_64")]
        {
            (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -(libc::EPERM as i64);
        }
        #[cfg(target_arch = "aarch64")]
        {
            (*uc).uc_mcontext.regs[0] = -(libc::EPERM as i64) as u64;
        }
    }
}

/// Installs the filter on every thread of the process.
fn trap_wx_mprotect() {
    const LD_ABS_W: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const AND_K: u16 = 0x54;
    const RET_K: u16 = 0x06;
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u32;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let prog = [
        f(LD_ABS_W, 0, 0, 4),                           // 0: arch
        f(JEQ_K, 0, 6, AUDIT_ARCH),                     // 1: else allow
        f(LD_ABS_W, 0, 0, 0),                           // 2: nr
        f(JEQ_K, 1, 0, libc::SYS_mprotect as u32),      // 3: -> 5
        f(JEQ_K, 0, 3, libc::SYS_pkey_mprotect as u32), // 4: -> 5, else allow
        f(LD_ABS_W, 0, 0, 16 + 2 * 8),                  // 5: args[2] (prot), low half
        f(AND_K, 0, 0, wx),                             // 6
        f(JEQ_K, 1, 0, wx),                             // 7: W+X -> trap
        f(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),        // 8
        f(RET_K, 0, 0, libc::SECCOMP_RET_TRAP),         // 9
    ];
    // SAFETY: a SIGSYS handler that only stores an atomic and the context's
    // rax.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()), 0);
    }
    common::install_seccomp(&prog);
    // The filter is in effect: an anonymous page cannot become W+X, and the
    // attempt is counted.
    // SAFETY: a fresh private anonymous page, ours alone, unmapped after.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let r = libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC);
        assert_eq!((r, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EPERM)));
        assert_eq!(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC), 0, "R+X alone is allowed");
        libc::munmap(p, 4096);
    }
    assert_eq!(WX_ATTEMPTS.swap(0, SeqCst), 1);
}

/// Every site of the three keys reaches `inc` (or `dec`).
fn check_all(inc: bool) {
    let x = 100_000u64;
    let want = |n: u64| if inc { x + n } else { x - n };
    assert_eq!((sites::one(x), sites::k128(x), sites::k4096(x)), (want(1), want(128), want(4096)));
}

#[test]
fn no_wx_with_default_settings() {
    if !common::seccomp_works() {
        eprintln!("skipped: this process cannot install seccomp filters (QEMU user mode refuses them)");
        return;
    }
    let out = run_child("no_wx_default_child", &[]);
    eprintln!("{}", out.lines().filter(|l| l.starts_with("child ")).collect::<Vec<_>>().join("\n"));
}

#[test]
#[ignore = "child process of no_wx_with_default_settings"]
fn no_wx_default_child() {
    if !in_child("no_wx_default_child") {
        return;
    }
    trap_wx_mprotect();
    let total = sites::ONE.sites().len() + sites::K128.sites().len() + sites::K4096.sites().len();
    assert_eq!(total, 4225);
    check_all(true);
    match static_call::init() {
        Err(static_call::Error::TextNotWritable { proc_mem_errno, .. })
            if cfg!(target_arch = "aarch64") && [libc::ESTALE, libc::EOPNOTSUPP].contains(&proc_mem_errno) =>
        {
            println!(
                "\nchild no_wx_default_child: skipped: the /proc/self/mem writer is refused here (errno \
                 {proc_mem_errno}), so the default writer is mprotect, which the filter denies"
            );
            println!("\nchild no_wx_default_child: done");
            return;
        }
        r => r.expect("init"),
    }
    assert_eq!(static_call::text_writer(), Some(TextWriter::ProcMem));
    assert_eq!(WX_ATTEMPTS.load(SeqCst), 0, "init asked for W+X");
    check_all(true);
    for round in 0..4 {
        let to = if round % 2 == 0 { sites::dec } else { sites::inc };
        for key in [&*sites::K4096, &*sites::K128, &*sites::ONE] {
            key.try_update(to).expect("update");
        }
        check_all(round % 2 == 1);
        assert_eq!(WX_ATTEMPTS.load(SeqCst), 0, "an update asked for W+X");
    }
    static_call::batch(|b| {
        b.update(&sites::K4096, sites::dec);
        b.update(&sites::K128, sites::dec);
        b.update(&sites::ONE, sites::dec);
    })
    .expect("batch");
    check_all(false);
    assert_eq!(WX_ATTEMPTS.load(SeqCst), 0, "a batch asked for W+X");
    assert_eq!(static_call::text_writer(), Some(TextWriter::ProcMem));
    common::assert_no_wx();
    println!("\nchild no_wx_default_child: {total} sites, 0 W+X mprotect calls; {:?}", static_call::stats());
    println!("\nchild no_wx_default_child: done");
}
