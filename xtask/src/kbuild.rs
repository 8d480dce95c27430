//! Building the kernels.
//!
//! Kernels go to their own target directory (`target/kernel`), so a kernel build
//! never waits on, or invalidates, the host build of the xtask and tests that
//! started it. Flags that a kernel needs live in `.cargo/config.toml` and in the
//! backend's build script, so a plain `cargo build --target ...` builds the same.

use crate::{workspace_root, Arch};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo profile of kernel builds (see the workspace `Cargo.toml`).
pub const PROFILE: &str = "kernel";

/// Where kernel builds go.
pub fn target_dir() -> PathBuf {
    workspace_root().join("target").join("kernel")
}

/// The environment variable naming a directory of prebuilt kernel ELFs
/// (`quiesce-s390x`, `quiesce-x86_64`): `run` and the boot tests boot those
/// instead of building (a test machine then needs no kernel build).
pub const KERNELS_ENV: &str = "QUIESCE_KERNELS";

/// The prebuilt kernel for `arch` that `QUIESCE_KERNELS` names, if set.
pub fn prebuilt(arch: Arch) -> Option<PathBuf> {
    let dir = std::env::var_os(KERNELS_ENV).filter(|d| !d.is_empty())?;
    Some(PathBuf::from(dir).join(arch.binary()))
}

/// The kernel ELF for `arch`, checked: the prebuilt one if
/// `QUIESCE_KERNELS` is set, else built now.
pub fn kernel(arch: Arch, quiet: bool) -> Result<PathBuf> {
    match prebuilt(arch) {
        Some(path) => {
            check_elf(arch, &path).with_context(|| format!("{KERNELS_ENV} names a bad kernel"))?;
            Ok(path)
        }
        None => build(arch, quiet),
    }
}

/// Checks that `path` is an ELF executable for `arch` (64-bit, the
/// architecture's byte order and machine), so a wrong file is refused at
/// once instead of hanging QEMU until the boot times out.
pub fn check_elf(arch: Arch, path: &Path) -> Result<()> {
    use std::io::Read;
    let mut header = [0u8; 20];
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("kernel file {}: cannot open it", path.display()))?;
    let n = f
        .read(&mut header)
        .with_context(|| format!("kernel file {}: cannot read it", path.display()))?;
    let problem = elf_problem(arch, &header[..n]);
    if let Some(p) = problem {
        bail!("kernel file {} is not a {arch} kernel: {p}", path.display());
    }
    Ok(())
}

/// What is wrong with an ELF header for `arch`, if anything.
pub fn elf_problem(arch: Arch, header: &[u8]) -> Option<String> {
    /// `e_machine` values (ELF gABI).
    const EM_S390: u16 = 22;
    const EM_X86_64: u16 = 62;
    const ET_EXEC: u16 = 2;
    if header.len() < 20 || header[..4] != *b"\x7fELF" {
        return Some("not an ELF file (no ELF magic)".into());
    }
    if header[4] != 2 {
        return Some(format!("not a 64-bit ELF (class {})", header[4]));
    }
    let (want_data, want_machine) = match arch {
        Arch::S390x => (2, EM_S390),
        Arch::X86_64 => (1, EM_X86_64),
    };
    let half = |at: usize| {
        let b = [header[at], header[at + 1]];
        if header[5] == 2 {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    if header[5] != want_data {
        return Some(format!(
            "byte order {} (want {})",
            if header[5] == 2 {
                "big-endian"
            } else {
                "little-endian"
            },
            if want_data == 2 {
                "big-endian"
            } else {
                "little-endian"
            }
        ));
    }
    if half(18) != want_machine {
        return Some(format!("machine {} (want {want_machine})", half(18)));
    }
    if half(16) != ET_EXEC {
        return Some(format!("ELF type {} is not an executable", half(16)));
    }
    None
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
    let status = if quiet {
        // rustc warns on every s390x build that the `backchain` target
        // feature (the frame chain backtraces walk) is unstable: a quiet
        // build leaves that one notice out and shows everything else.
        let out = cmd
            .stderr(std::process::Stdio::piped())
            .output()
            .with_context(|| format!("running cargo to build the {arch} kernel"))?;
        eprint!(
            "{}",
            without_backchain_notice(&String::from_utf8_lossy(&out.stderr))
        );
        out.status
    } else {
        cmd.status()
            .with_context(|| format!("running cargo to build the {arch} kernel"))?
    };
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

/// The QEMU floor image of `arch` (one console byte, then exit), which the
/// kernel's build builds too: next to the kernel in [`KERNELS_ENV`]'s
/// directory when that is set, else built here.
pub fn floor(arch: Arch) -> Result<PathBuf> {
    let path = match std::env::var_os(KERNELS_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join(arch.floor_binary()),
        None => {
            build(arch, true)?;
            kernel_path(arch).with_file_name(arch.floor_binary())
        }
    };
    check_elf(arch, &path).context("the QEMU floor image")?;
    Ok(path)
}

/// `stderr` of a kernel build without rustc's notice that the `backchain`
/// target feature is unstable (the warning line, its ` |` and `= note`
/// lines and the blank line after them).
pub fn without_backchain_notice(stderr: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in stderr.lines() {
        if line
            .starts_with("warning: unstable feature specified for `-Ctarget-feature`: `backchain`")
        {
            skipping = true;
            continue;
        }
        if skipping {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('|') || t.starts_with("= note") {
                continue;
            }
            skipping = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backchain_notice_alone_is_left_out() {
        let stderr = "warning: unstable feature specified for `-Ctarget-feature`: `backchain`\n  |\n  = note: this feature is not stably supported; its behavior can change in the future\n\nerror[E0308]: mismatched types\n  |\n";
        assert_eq!(
            without_backchain_notice(stderr),
            "error[E0308]: mismatched types\n  |\n"
        );
        assert_eq!(
            without_backchain_notice("warning: unused\n"),
            "warning: unused\n"
        );
    }

    #[test]
    fn elf_headers_are_checked() {
        let mut h = [0u8; 20];
        assert!(elf_problem(Arch::S390x, &h)
            .unwrap()
            .contains("no ELF magic"));
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        // s390x: big-endian, EM_S390 (22), ET_EXEC.
        h[5] = 2;
        h[16..18].copy_from_slice(&2u16.to_be_bytes());
        h[18..20].copy_from_slice(&22u16.to_be_bytes());
        assert_eq!(elf_problem(Arch::S390x, &h), None);
        assert!(elf_problem(Arch::X86_64, &h)
            .unwrap()
            .contains("byte order"));
        // x86-64: little-endian, EM_X86_64 (62).
        h[5] = 1;
        h[16..18].copy_from_slice(&2u16.to_le_bytes());
        h[18..20].copy_from_slice(&62u16.to_le_bytes());
        assert_eq!(elf_problem(Arch::X86_64, &h), None);
        h[4] = 1;
        assert!(elf_problem(Arch::X86_64, &h).unwrap().contains("64-bit"));
        assert!(elf_problem(Arch::X86_64, &h[..10]).is_some());
    }

    #[test]
    fn random_bytes_are_refused_naming_the_file() {
        let f = std::env::temp_dir().join(format!("quiesce-not-a-kernel-{}", std::process::id()));
        std::fs::write(&f, [0x5au8; 4096]).unwrap();
        let err = format!("{:#}", check_elf(Arch::S390x, &f).unwrap_err());
        std::fs::remove_file(&f).unwrap();
        assert!(err.contains(&f.display().to_string()), "{err}");
        assert!(err.contains("not an ELF"), "{err}");
    }
}
