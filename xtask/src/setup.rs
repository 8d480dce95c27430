//! Making sure QEMU is there.
//!
//! On Debian bookworm `qemu-system-s390x` lives only in bookworm-backports (see
//! the project's platform notes). As root, the missing emulators are installed
//! from that suite, on the same mirror the machine's Debian source already uses
//! (read from apt's own configuration, never written into this repository).
//! Without root, the error names the command to run.

use crate::Arch;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether `binary` is on the PATH.
pub fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// The apt source file that adds bookworm-backports.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/quiesce-backports.sources";

/// Reads the first Debian mirror URI from apt's configured sources.
fn debian_mirror() -> Result<String> {
    let mut files = vec![];
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files.push("/etc/apt/sources.list".into());
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            // deb822: "URIs: <uri>"; one-line: "deb <uri> <suite> ..."
            let uri = if let Some(u) = line.strip_prefix("URIs:") {
                u.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(uri) = uri {
                if uri.trim_end_matches('/').ends_with("/debian") {
                    return Ok(uri.to_string());
                }
            }
        }
    }
    bail!("no Debian mirror found in apt's sources")
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The error for emulators that are missing when we may not install them.
fn missing_without_root(missing: &[Arch]) -> String {
    let packages: Vec<&str> = missing.iter().map(|a| a.qemu_package()).collect();
    let names: Vec<&str> = missing.iter().map(|a| a.qemu_binary()).collect();
    format!(
        "{} not found. Install it as root: add the bookworm-backports suite to apt's sources \
         (same mirror as the existing Debian source), run `apt-get update`, then \
         `apt-get install -y -t bookworm-backports --no-install-recommends {}`",
        names.join(" and "),
        packages.join(" ")
    )
}

/// Makes sure the emulators for `arches` are installed, installing them as root.
pub fn ensure_qemu(arches: &[Arch]) -> Result<()> {
    let missing: Vec<Arch> = arches
        .iter()
        .copied()
        .filter(|a| !on_path(a.qemu_binary()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("{}", missing_without_root(&missing));
    }
    let packages: Vec<&str> = missing.iter().map(|a| a.qemu_package()).collect();
    let names: Vec<&str> = missing.iter().map(|a| a.qemu_binary()).collect();
    eprintln!(
        "quiesce: {} not found; installing from bookworm-backports",
        names.join(" and ")
    );
    if !Path::new(BACKPORTS_SOURCE).exists() {
        let mirror = debian_mirror()?;
        let source = format!(
            "Types: deb\nURIs: {mirror}\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        std::fs::write(BACKPORTS_SOURCE, source)
            .with_context(|| format!("writing {BACKPORTS_SOURCE}"))?;
    }
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .stdout(Stdio::null()))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "-t",
            "bookworm-backports",
            "--no-install-recommends",
        ])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null()))?;
    for a in &missing {
        if !on_path(a.qemu_binary()) {
            bail!(
                "{} is still missing after installing {}",
                a.qemu_binary(),
                a.qemu_package()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_qemu_names_the_command() {
        let msg = missing_without_root(&[Arch::S390x]);
        assert!(msg.starts_with("qemu-system-s390x not found"), "{msg}");
        assert!(
            msg.contains("--no-install-recommends qemu-system-s390x`"),
            "{msg}"
        );
        let msg = missing_without_root(&Arch::ALL);
        assert!(msg.contains("qemu-system-s390x qemu-system-x86`"), "{msg}");
    }

    #[test]
    fn path_lookup() {
        assert!(on_path("sh"));
        assert!(!on_path("quiesce-no-such-binary"));
    }
}
