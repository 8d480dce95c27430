//! The two target architectures and what differs between them on the host side:
//! target triple, build flags, QEMU binary and machine, and how QEMU reports the
//! kernel's exit.

use std::fmt;
use std::str::FromStr;

/// A target architecture of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// IBM Z, `qemu-system-s390x -M s390-ccw-virtio`.
    S390x,
    /// x86-64, `qemu-system-x86_64 -M q35`, PVH boot.
    X86_64,
}

impl Arch {
    /// Every architecture, s390x first: it is the testbed's primary target.
    pub const ALL: [Arch; 2] = [Arch::S390x, Arch::X86_64];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Arch::S390x => "s390x",
            Arch::X86_64 => "x86_64",
        }
    }

    /// The Rust target triple of the kernel.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::S390x => "s390x-unknown-none-softfloat",
            Arch::X86_64 => "x86_64-unknown-none",
        }
    }

    /// The backend crate, which builds the kernel binary.
    pub fn package(self) -> &'static str {
        match self {
            Arch::S390x => "quiesce-arch-s390x",
            Arch::X86_64 => "quiesce-arch-x86_64",
        }
    }

    /// The kernel binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Arch::S390x => "quiesce-s390x",
            Arch::X86_64 => "quiesce-x86_64",
        }
    }

    /// The QEMU floor image's name (`boot/<arch>/floor.S`, built with the
    /// kernel).
    pub fn floor_binary(self) -> &'static str {
        match self {
            Arch::S390x => "quiesce-floor-s390x",
            Arch::X86_64 => "quiesce-floor-x86_64",
        }
    }

    /// Extra cargo arguments: s390x has no prebuilt `core`.
    pub fn build_std_args(self) -> &'static [&'static str] {
        match self {
            Arch::S390x => &[
                "-Zbuild-std=core,alloc",
                "-Zbuild-std-features=compiler-builtins-mem",
            ],
            Arch::X86_64 => &[],
        }
    }

    /// The QEMU system emulator.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::S390x => "qemu-system-s390x",
            Arch::X86_64 => "qemu-system-x86_64",
        }
    }

    /// The Debian package that carries [`Arch::qemu_binary`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::S390x => "qemu-system-s390x",
            Arch::X86_64 => "qemu-system-x86",
        }
    }

    /// The QEMU exit code that means "the kernel asked for a clean exit".
    /// x86-64 exits through isa-debug-exit, which turns the value v written by the
    /// kernel into `(v << 1) | 1`; the kernel writes 0x10 on success. s390x ends
    /// in a disabled wait at 0xfff (exit 0); any other wait address is a guest
    /// panic, which `-action panic=exit-failure` turns into exit 1.
    pub fn success_exit_code(self) -> i32 {
        match self {
            Arch::S390x => 0,
            Arch::X86_64 => 0x21,
        }
    }

    /// Whether this architecture is the host's own (for `--accel kvm`).
    pub fn is_host(self) -> bool {
        std::env::consts::ARCH == self.name()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "s390x" => Ok(Arch::S390x),
            "x86_64" | "x86-64" => Ok(Arch::X86_64),
            _ => Err(format!("unknown architecture '{s}' (known: s390x, x86_64)")),
        }
    }
}
