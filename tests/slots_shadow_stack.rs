//! A process that runs with CET user shadow stacks: an emulated `call` would
//! push a return address the shadow stack never saw, and the target's `ret`
//! would fault. `init` detects it (`arch_prctl(ARCH_SHSTK_STATUS)`) and runs
//! on the slots. This machine has no user shadow stacks, so the test uses the
//! hook that makes the detection answer yes; the detection itself is checked
//! to answer no here (the process would not be running otherwise).
#![cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "portable")))]

mod common;
mod plugin_support;
mod slots_support;

use common::{in_child, run_child};
use static_call::Error;

#[test]
fn shadow_stacks_run_on_the_slots() {
    run_child("shadow_stack_child", &[]);
}

#[test]
#[ignore = "child process of shadow_stacks_run_on_the_slots"]
fn shadow_stack_child() {
    if !in_child("shadow_stack_child") {
        return;
    }
    // The hook reaches the host's copy only: the plugin's copy patches.
    slots_support::run(
        "shadow_stack_child",
        static_call::__private::assume_shadow_stack,
        |e| *e == Error::ShadowStack,
        true,
    );
    println!("\nchild shadow_stack_child: done");
}
