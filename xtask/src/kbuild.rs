//! Building the kernels.
//!
//! Kernels go to their own target directory (`target/kernel`), so a kernel build
//! never waits on, or invalidates, the host build of the xtask and tests that
//! started it. Flags that a kernel needs live in `.cargo/config.toml` and in the
//! backend's build script, so a plain `cargo build --target ...` builds the same.

use crate::{workspace_root, Arch};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The cargo profile of kernel builds (see the workspace `Cargo.toml`).
pub const PROFILE: &str = "kernel";

/// Where kernel builds go.
pub fn target_dir() -> PathBuf {
    workspace_root().join("target").join("kernel")
}

/// Path of the built kernel ELF for `arch`.
pub fn kernel_path(arch: Arch) -> PathBuf {
    target_dir()
        .join(arch.triple())
        .join(PROFILE)
        .join(arch.binary())
}

/// The cargo command that builds the kernel for `arch`.
pub fn build_command(arch: Arch) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--package",
            arch.package(),
            "--target",
            arch.triple(),
        ])
        .args(["--profile", PROFILE])
        .args(arch.build_std_args())
        .arg("--target-dir")
        .arg(target_dir());
    // A cargo that runs us (cargo run / cargo test) exports variables describing
    // its own build; they must not leak into the kernel build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Builds the kernel for `arch` and returns the ELF's path.
pub fn build(arch: Arch, quiet: bool) -> Result<PathBuf> {
    let mut cmd = build_command(arch);
    if quiet {
        cmd.arg("--quiet");
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo to build the {arch} kernel"))?;
    if !status.success() {
        bail!("building the {arch} kernel failed ({status})");
    }
    let path = kernel_path(arch);
    if !path.is_file() {
        bail!(
            "the {arch} kernel build succeeded but {} is missing",
            path.display()
        );
    }
    Ok(path)
}
