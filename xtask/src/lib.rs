//! Host side of quiesce: building the kernels, launching them under QEMU, parsing
//! their KTAP and deciding each run.
//!
//! One library serves both `cargo xtask` and the boot-and-assert tests in `tests/`,
//! so the two can never disagree on how a kernel is started or judged.
//!
//! A run passes only if all of these hold: the console carried a well-formed KTAP
//! document whose every result is `ok`, the final status line said `pass`, QEMU
//! ended on its own before the timeout, and its exit code agrees with the status
//! line. Any other run fails, with the reasons and the last console lines.

pub mod arch;
pub mod backtrace;
pub mod bench;
pub mod catalogue;
pub mod exit;
pub mod expected;
pub mod gdb;
pub mod junit;
pub mod kbuild;
pub mod ktap;
pub mod platform;
pub mod progress;
pub mod qemu;
pub mod setup;
pub mod soak;
pub mod tour;

pub use arch::Arch;
pub use qemu::{Boot, BootConfig, Verdict};

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The git revision of the workspace (`git describe --always --dirty`), or
/// `unknown` without git.
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .current_dir(workspace_root())
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
