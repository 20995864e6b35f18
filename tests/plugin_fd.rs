//! Loading, using and unloading a plugin leaves no descriptor behind: its copy
//! of the crate opens `/proc/self/mem` to patch its own text, and closes it
//! in its unload destructor.
#![cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_os = "linux", not(feature = "portable")))]

mod plugin_support;

use plugin_support::Plugin;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd").count()
}

/// Loads alpha, lets its copy initialize and patch (which opens its
/// `/proc/self/mem`), and unloads it.
fn cycle() {
    let mut alpha = Plugin::load("alpha");
    let init: extern "C" fn() -> i32 = alpha.func("alpha_init");
    let set_mode: extern "C" fn(u32) -> i32 = alpha.func("alpha_set_mode");
    let updates: extern "C" fn() -> u64 = alpha.func("alpha_updates");
    assert_eq!(init(), 0);
    assert_eq!(set_mode(1), 0);
    assert_eq!(set_mode(0), 0);
    assert_eq!(updates(), 2, "alpha's copy patched its own text");
    alpha.unload();
    assert!(!alpha.mapped());
}

#[test]
fn unloading_a_plugin_closes_its_descriptors() {
    static_call::init().unwrap();
    // The first cycle may open what stays open (the loader's own files).
    cycle();
    let before = open_descriptors();
    for _ in 0..5 {
        cycle();
    }
    assert_eq!(open_descriptors(), before, "five load/patch/unload cycles leaked descriptors");
}
