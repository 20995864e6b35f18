//! Our cached `/proc/self/mem` descriptor closed behind our back (a daemon
//! that closes every descriptor) and its number reused for a regular file:
//! the next update notices that the descriptor is no longer this process's
//! `/proc/self/mem`, opens a new one, takes effect, writes nothing into the
//! file, and never closes the descriptor that is no longer ours. Also when
//! the number is simply closed. Runs in a child process with the default
//! writer (`STATIC_CALL_WRITER` removed) on x86-64; on aarch64, where the
//! default is `/proc/self/mem` only where its probe accepts it, with that
//! writer forced, and the child says so and stops where it is refused
//! (`ESTALE` under QEMU user mode).
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod common;

use common::{in_child, run_child, t1, t2, t3};

use static_call::{static_call, TextWriter};
use std::os::fd::AsRawFd;

#[static_call]
static K: extern "C" fn(u64) -> u64 = t1;

#[inline(never)]
fn call_k(x: u64) -> u64 {
    K.call(x)
}

/// The descriptors of this process that name its `/proc/<pid>/mem`.
fn mem_fds() -> Vec<i32> {
    let me = format!("/proc/{}/mem", std::process::id());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (target.to_str() == Some(&me)).then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

fn link_of(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default()
}

#[test]
fn a_reused_descriptor_number_is_detected() {
    let env: &[(&str, &str)] = if cfg!(target_arch = "aarch64") { &[("STATIC_CALL_WRITER", "procmem")] } else { &[] };
    let out = run_child("mem_fd_reuse_child", env);
    eprintln!("{}", out.lines().filter(|l| l.starts_with("child ")).collect::<Vec<_>>().join("\n"));
}

#[test]
#[ignore = "child process of a_reused_descriptor_number_is_detected"]
fn mem_fd_reuse_child() {
    if !in_child("mem_fd_reuse_child") {
        return;
    }
    let init = static_call::init();
    if let Some(errno) = common::proc_mem_refused(&init) {
        println!("\nchild mem_fd_reuse_child: skipped: the /proc/self/mem writer is refused here (errno {errno})");
        println!("\nchild mem_fd_reuse_child: done");
        return;
    }
    init.unwrap();
    assert_eq!(static_call::text_writer(), Some(TextWriter::ProcMem));
    let fds = mem_fds();
    assert_eq!(fds.len(), 1, "one /proc/self/mem descriptor after init: {fds:?}");
    let ours = fds[0];

    // Our number now names a regular, empty file.
    let path = std::env::temp_dir().join(format!("static_call_fd_reuse_{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    // SAFETY: both descriptors are open; `ours` is closed and reused, as a
    // daemon closing every descriptor and opening a file would.
    assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), ours) }, ours);
    assert_eq!(mem_fds(), Vec::<i32>::new());

    K.update(t2);
    assert_eq!(call_k(5), (2 << 48) | 5, "the update took effect");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "machine code was written into the file");
    assert_eq!(link_of(ours), path.display().to_string(), "the file's descriptor was closed or replaced");
    let fds = mem_fds();
    assert_eq!(fds.len(), 1, "a new /proc/self/mem descriptor: {fds:?}");

    // The new one closed, its number left free.
    // SAFETY: closing the library's descriptor, as a daemon would.
    assert_eq!(unsafe { libc::close(fds[0]) }, 0);
    K.update(t3);
    assert_eq!(call_k(5), (3 << 48) | 5, "the update took effect");
    assert_eq!(mem_fds().len(), 1);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(link_of(ours), path.display().to_string());

    // And a descriptor left alone is reused, not reopened.
    let before = mem_fds();
    K.update(t1);
    assert_eq!(call_k(5), (1 << 48) | 5);
    assert_eq!(mem_fds(), before);
    drop(file);
    std::fs::remove_file(&path).unwrap();
    println!("\nchild mem_fd_reuse_child: done");
}
