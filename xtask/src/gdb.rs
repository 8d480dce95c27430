//! Debugging a kernel with gdb (`cargo xtask run --gdb`).
//!
//! QEMU starts halted (`-S`) with its gdb stub on a free local TCP port; the
//! kernel ELF (built with symbols, see the `kernel` profile) gives gdb the
//! symbols and the architecture. Debian's `gdb-multiarch` debugs both
//! architectures from any host.

use crate::Arch;
use anyhow::{Context, Result};
use std::path::Path;

/// The gdb that debugs every architecture.
pub const GDB: &str = "gdb-multiarch";

/// A free local TCP port for the gdb stub.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    Ok(l.local_addr()?.port())
}

/// The gdb command (program and arguments) that attaches to a kernel of
/// `arch` halted with its stub on `port`.
pub fn gdb_command(arch: Arch, kernel: &Path, port: u16) -> Vec<String> {
    let arch_name = match arch {
        Arch::S390x => "s390:64-bit",
        Arch::X86_64 => "i386:x86-64",
    };
    vec![
        GDB.to_string(),
        "-q".into(),
        kernel.display().to_string(),
        "-ex".into(),
        format!("set architecture {arch_name}"),
        "-ex".into(),
        format!("target remote 127.0.0.1:{port}"),
    ]
}

/// `words` as one shell line.
pub fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| crate::qemu::shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_names_the_elf_the_arch_and_the_port() {
        let c = gdb_command(Arch::S390x, Path::new("/k/quiesce s390x"), 4321);
        assert_eq!(c[0], GDB);
        assert!(c.contains(&"/k/quiesce s390x".to_string()));
        assert!(c.contains(&"set architecture s390:64-bit".to_string()));
        assert!(c.contains(&"target remote 127.0.0.1:4321".to_string()));
        let line = shell_line(&c);
        assert!(line.contains("'/k/quiesce s390x'"), "{line}");
        assert!(line.contains("'target remote 127.0.0.1:4321'"), "{line}");
        let x = gdb_command(Arch::X86_64, Path::new("/k/x"), 1);
        assert!(x.contains(&"set architecture i386:x86-64".to_string()));
    }

    #[test]
    fn free_ports_are_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
