//! What changes per architecture: the forms a site and a trampoline take,
//! their encodings, the assembly templates the macro expands to, and the
//! protocol that commits a plan of old and new instructions to text
//! (`protocol`: x86-64's `int3` steps with the SIGTRAP handler's emulation,
//! aarch64's stores, cache maintenance and one core sync). Everything else
//! (the registry, keys, the plan, the lock, the modes, the writers' door) is
//! written once, in `crate::patch`, `crate::registry` and `crate::os`.
//!
//! `native` is the architecture being compiled for. Both modules have the
//! same shape: `INSN_LEN`, `TRAMP_SIZE`, `Insn`, `encode`/`decode`,
//! `site_form`, `tramp_form`, `assembled_site`, `far_head`, `site_state`,
//! `trampoline_image`, `well_placed`, `disassemble`, the static-branch
//! forms (`BRANCH_TEST_LEN`, `assembled_branch`, `branch_jump_of`,
//! `branch_test_image`, `branch_form`, `branch_state`), and `protocol` with
//! `requirements`, `install`, `check_handler`, `installed`, `may_write`,
//! `write`, `retire`, `take_out`, `after_fork_child`. x86-64 also has
//! `trap`: what its SIGTRAP handler does about an `int3` (the plan's lookup
//! and the emulation), handed to `os::linux::signal` when it is installed.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
#[cfg_attr(not(all(target_os = "linux", not(feature = "portable"), not(miri))), allow(unused_imports))]
pub use x86_64 as native;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
#[cfg_attr(not(all(target_os = "linux", not(feature = "portable"), not(miri))), allow(unused_imports))]
pub use aarch64 as native;
