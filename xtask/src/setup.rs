//! Set-up: everything a subcommand needs before it builds or boots.
//!
//! `run`, `test`, `bench`, `soak` and `setup` call [`ensure`] with what they
//! need ([`Needs`]). It first finds every missing piece, then either installs
//! them all or, where it may not (not root, no apt, no rustup), stops before
//! any work with the exact commands to run. What it installs:
//!
//! - the rustup components and targets that `rust-toolchain.toml` names, for
//!   that toolchain only: `rustup component add ... --toolchain <channel>`.
//!   Never `rustup update` or `rustup toolchain install`: with the channel
//!   `nightly` that would move the machine to another compiler.
//! - QEMU for each architecture. On Debian bookworm `qemu-system-s390x`
//!   lives only in bookworm-backports (see the project's platform notes): the
//!   suite is added on the same mirror the machine's Debian source already
//!   uses (read from apt's own configuration, never written into this
//!   repository). `QEMU_S390X` / `QEMU_X86_64` name a QEMU the user built
//!   instead; either way its version is checked ([`MIN_QEMU`]).
//! - `gdb-multiarch` for the `run --gdb` boot test.

use crate::{workspace_root, Arch};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The oldest QEMU the launcher accepts: the version the project's platform
/// facts (TLB and storage-key behaviour, boot protocols) were measured on.
pub const MIN_QEMU: (u32, u32) = (10, 0);

/// What a subcommand needs.
#[derive(Clone, Debug, Default)]
pub struct Needs {
    /// The toolchain pieces that build the kernels (`rust-src`, the
    /// x86-64 target).
    pub toolchain: bool,
    /// rustfmt and clippy (the lint step).
    pub lint: bool,
    /// QEMU for these architectures.
    pub qemu: Vec<Arch>,
    /// `gdb-multiarch`.
    pub gdb: bool,
}

impl Needs {
    /// Everything, for every architecture (`cargo xtask setup`).
    pub fn all() -> Needs {
        Needs {
            toolchain: true,
            lint: true,
            qemu: Arch::ALL.to_vec(),
            gdb: true,
        }
    }

    /// QEMU for `arches` and the toolchain that builds their kernels.
    pub fn boot(arches: &[Arch]) -> Needs {
        Needs {
            toolchain: true,
            qemu: arches.to_vec(),
            ..Needs::default()
        }
    }
}

/// Makes sure QEMU for `arch` is there and new enough, once per process
/// (the launcher calls it before every boot).
pub fn ensure_qemu(arch: Arch) -> Result<()> {
    static CHECKED: std::sync::Mutex<Vec<Arch>> = std::sync::Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !checked.contains(&arch) {
        ensure(&Needs {
            qemu: vec![arch],
            ..Needs::default()
        })?;
        checked.push(arch);
    }
    Ok(())
}

/// The environment variable that names a QEMU binary for `arch`.
pub fn qemu_env(arch: Arch) -> &'static str {
    match arch {
        Arch::S390x => "QEMU_S390X",
        Arch::X86_64 => "QEMU_X86_64",
    }
}

/// The QEMU binary the launcher starts for `arch`: `$QEMU_S390X` /
/// `$QEMU_X86_64` if set, else the emulator's name (looked up on `PATH`).
pub fn qemu_binary(arch: Arch) -> PathBuf {
    match std::env::var_os(qemu_env(arch)) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(arch.qemu_binary()),
    }
}

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

/// The toolchain that `rust-toolchain.toml` pins, with its components and
/// targets.
#[derive(Debug, PartialEq, Eq)]
pub struct Toolchain {
    /// The channel (`nightly`).
    pub channel: String,
    /// Components (`rust-src`, `rustfmt`, `clippy`).
    pub components: Vec<String>,
    /// Extra targets (`x86_64-unknown-none`).
    pub targets: Vec<String>,
}

impl Toolchain {
    /// Reads `rust-toolchain.toml` at the workspace root.
    pub fn read() -> Result<Self> {
        let path = workspace_root().join("rust-toolchain.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses the text of a `rust-toolchain.toml`.
    pub fn parse(text: &str) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct File {
            toolchain: Inner,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            channel: String,
            #[serde(default)]
            components: Vec<String>,
            #[serde(default)]
            targets: Vec<String>,
        }
        let f: File = toml::from_str(text)?;
        Ok(Toolchain {
            channel: f.toolchain.channel,
            components: f.toolchain.components,
            targets: f.toolchain.targets,
        })
    }
}

/// A missing piece and the commands that install it.
#[derive(Debug)]
struct Missing {
    /// What is missing, for the user.
    what: String,
    /// The shell commands that install it.
    commands: Vec<String>,
    /// Whether this process may run them (root for apt).
    can_install: bool,
    /// Installs it.
    install: Installer,
}

#[derive(Debug)]
enum Installer {
    Rustup(Vec<String>),
    Apt {
        packages: Vec<String>,
        backports: bool,
    },
}

/// Components of `channel` that rustup reports installed (`rust-src`,
/// `rustfmt-x86_64-unknown-linux-gnu`, ...).
fn installed_components(channel: &str) -> Result<Vec<String>> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", channel])
        .stderr(Stdio::piped())
        .output()
        .context("running rustup (quiesce builds with the toolchain that rust-toolchain.toml names, through rustup)")?;
    if !out.status.success() {
        bail!(
            "`rustup component list --toolchain {channel}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect())
}

/// Whether `component` is among `installed` (names carry the host triple,
/// except target-independent ones such as `rust-src`).
fn has_component(installed: &[String], component: &str) -> bool {
    installed.iter().any(|l| {
        l == component
            || l.strip_prefix(component)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|triple| {
                    // arch-vendor-os[-env]: x86_64-unknown-linux-gnu
                    matches!(triple.split('-').nth(1), Some("unknown" | "apple" | "pc"))
                })
    })
}

/// A missing rustup `kind` (`component` or `target`) `name` of the
/// `channel` toolchain, installed by `rustup <kind> add`.
fn rustup_add(kind: &str, name: &str, channel: &str) -> Missing {
    let args = vec![
        kind.to_string(),
        "add".into(),
        name.to_string(),
        "--toolchain".into(),
        channel.to_string(),
    ];
    Missing {
        what: format!("rustup {kind} {name} of the {channel} toolchain"),
        commands: vec![format!("rustup {}", args.join(" "))],
        can_install: true,
        install: Installer::Rustup(args),
    }
}

/// The rustup components and targets of `needs` that are missing.
fn missing_toolchain(needs: &Needs) -> Result<Vec<Missing>> {
    if !needs.toolchain && !needs.lint {
        return Ok(Vec::new());
    }
    let tc = Toolchain::read()?;
    if Command::new("rustup").arg("--version").output().is_err() {
        bail!(
            "rustup not found: quiesce builds with the `{}` toolchain that rust-toolchain.toml \
             names and its components ({}) and targets ({}), which rustup manages",
            tc.channel,
            tc.components.join(", "),
            tc.targets.join(", ")
        );
    }
    let installed = installed_components(&tc.channel)?;
    let mut out = Vec::new();
    for c in &tc.components {
        let wanted = match c.as_str() {
            "rustfmt" | "clippy" => needs.lint,
            _ => needs.toolchain,
        };
        if wanted && !has_component(&installed, c) {
            out.push(rustup_add("component", c, &tc.channel));
        }
    }
    if needs.toolchain {
        for t in &tc.targets {
            if !has_component(&installed, &format!("rust-std-{t}")) {
                out.push(rustup_add("target", t, &tc.channel));
            }
        }
    }
    Ok(out)
}

/// `VERSION_CODENAME` from `/etc/os-release`, if this is Debian.
fn debian_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_string())
    };
    (field("ID").as_deref() == Some("debian")).then(|| field("VERSION_CODENAME"))?
}

/// The apt source file that adds bookworm-backports.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/quiesce-backports.sources";

/// Reads the first Debian mirror URI from apt's configured sources.
fn debian_mirror() -> Result<String> {
    let mut files = vec![];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.flatten() {
            files.push(e.path());
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

/// The commands that install Debian `packages` (from bookworm-backports
/// when `backports`).
fn apt_commands(packages: &[String], backports: bool) -> Vec<String> {
    let mut cmds = Vec::new();
    if backports {
        cmds.push(
            "add the bookworm-backports suite to apt's sources (same mirror as the existing \
             Debian source), e.g. in /etc/apt/sources.list.d/backports.sources: \
             `Types: deb` / `URIs: <mirror>` / `Suites: bookworm-backports` / `Components: main`"
                .to_string(),
        );
    }
    cmds.push("apt-get update".into());
    cmds.push(format!(
        "apt-get install -y {}--no-install-recommends {}",
        if backports {
            "-t bookworm-backports "
        } else {
            ""
        },
        packages.join(" ")
    ));
    cmds
}

/// QEMU's version from its `--version` output (`QEMU emulator version 10.0.2 ...`).
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.split("version").nth(1)?;
    let v = rest.split_whitespace().next()?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_default();
    Some((major, minor))
}

/// Checks the version of the QEMU at `binary`.
fn check_qemu_version(arch: Arch, binary: &Path) -> Result<()> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(v) = parse_qemu_version(&text) else {
        bail!(
            "{} --version printed no QEMU version: {:?}",
            binary.display(),
            text.trim()
        );
    };
    if v < MIN_QEMU {
        bail!(
            "{} is QEMU {}.{}; quiesce needs QEMU {}.{} or newer for {arch} (the version its \
             TLB, storage-key and boot behaviour was measured on). Install a newer one, or \
             point {} at one you built",
            binary.display(),
            v.0,
            v.1,
            MIN_QEMU.0,
            MIN_QEMU.1,
            qemu_env(arch)
        );
    }
    Ok(())
}

/// The QEMU pieces of `needs` that are missing; errors at once for a
/// `QEMU_*` variable that names no executable.
fn missing_qemu(needs: &Needs, root: bool, codename: Option<&str>) -> Result<Vec<Missing>> {
    let mut packages = Vec::new();
    let mut names = Vec::new();
    for &arch in &needs.qemu {
        if let Some(p) = std::env::var_os(qemu_env(arch)).filter(|p| !p.is_empty()) {
            if !Path::new(&p).is_file() {
                bail!(
                    "{}={}: no such file (it names the QEMU binary for {arch})",
                    qemu_env(arch),
                    Path::new(&p).display()
                );
            }
            continue;
        }
        if !on_path(arch.qemu_binary()) {
            packages.push(arch.qemu_package().to_string());
            names.push(arch.qemu_binary());
        }
    }
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let backports = codename == Some("bookworm");
    Ok(vec![Missing {
        what: format!(
            "{} (or set {} to a QEMU you built)",
            names.join(" and "),
            needs
                .qemu
                .iter()
                .map(|a| qemu_env(*a))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        commands: apt_commands(&packages, backports),
        can_install: root && codename.is_some(),
        install: Installer::Apt {
            packages,
            backports,
        },
    }])
}

fn missing_gdb(needs: &Needs, root: bool, codename: Option<&str>) -> Vec<Missing> {
    if !needs.gdb || on_path(crate::gdb::GDB) {
        return Vec::new();
    }
    let packages = vec![crate::gdb::GDB.to_string()];
    vec![Missing {
        what: format!(
            "{} (the `run --gdb` boot test attaches with it)",
            crate::gdb::GDB
        ),
        commands: apt_commands(&packages, false),
        can_install: root && codename.is_some(),
        install: Installer::Apt {
            packages,
            backports: false,
        },
    }]
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn apt_install(packages: &[String], backports: bool, updated: &mut bool) -> Result<()> {
    if backports && !Path::new(BACKPORTS_SOURCE).exists() {
        let mirror = debian_mirror()?;
        let source = format!(
            "Types: deb\nURIs: {mirror}\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        std::fs::write(BACKPORTS_SOURCE, source)
            .with_context(|| format!("writing {BACKPORTS_SOURCE}"))?;
        *updated = false;
    }
    if !*updated {
        run(Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null()))?;
        *updated = true;
    }
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "-qq", "--no-install-recommends"]);
    if backports {
        cmd.args(["-t", "bookworm-backports"]);
    }
    run(cmd
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null()))
}

/// What [`ensure`] found or did, one line each, for `cargo xtask setup`.
pub type Report = Vec<String>;

/// Makes sure everything in `needs` is there: installs what is missing, or
/// stops before any work with the commands to run. Returns what it did.
pub fn ensure(needs: &Needs) -> Result<Report> {
    let root = is_root();
    let codename = debian_codename();
    let mut missing = missing_toolchain(needs)?;
    missing.extend(missing_qemu(needs, root, codename.as_deref())?);
    missing.extend(missing_gdb(needs, root, codename.as_deref()));
    let blocked: Vec<&Missing> = missing.iter().filter(|m| !m.can_install).collect();
    if !blocked.is_empty() {
        let why = if codename.is_none() {
            "this is not Debian, where quiesce knows how to install them"
        } else {
            "installing Debian packages needs root"
        };
        let mut msg = format!("missing, and not installed here ({why}):\n");
        for m in &blocked {
            msg.push_str(&format!("  - {}\n", m.what));
        }
        msg.push_str("Install them with:\n");
        let mut seen = Vec::new();
        for c in blocked.iter().flat_map(|m| &m.commands) {
            if !seen.contains(c) {
                msg.push_str(&format!("    {c}\n"));
                seen.push(c.clone());
            }
        }
        bail!("{}", msg.trim_end());
    }
    let mut report = Vec::new();
    let mut apt_updated = false;
    for m in &missing {
        eprintln!("setup: installing {}", m.what);
        match &m.install {
            Installer::Rustup(args) => run(Command::new("rustup").args(args))?,
            Installer::Apt {
                packages,
                backports,
            } => apt_install(packages, *backports, &mut apt_updated)?,
        }
        report.push(format!("installed {} ({})", m.what, m.commands.join("; ")));
    }
    for &arch in &needs.qemu {
        let bin = qemu_binary(arch);
        let shown = bin.display().to_string();
        if std::env::var_os(qemu_env(arch)).is_none_or(|p| p.is_empty()) && !on_path(&shown) {
            bail!("{shown} is still missing after installing it");
        }
        check_qemu_version(arch, &bin)?;
    }
    if needs.gdb && !on_path(crate::gdb::GDB) {
        bail!("{} is still missing after installing it", crate::gdb::GDB);
    }
    Ok(report)
}

/// One line per piece `needs` asks for, saying where it is (for `cargo
/// xtask setup`).
pub fn describe(needs: &Needs) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    if needs.toolchain || needs.lint {
        let tc = Toolchain::read()?;
        lines.push(format!(
            "toolchain {}: components {}; targets {}",
            tc.channel,
            tc.components.join(", "),
            tc.targets.join(", ")
        ));
    }
    for &arch in &needs.qemu {
        let bin = qemu_binary(arch);
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| parse_qemu_version(&String::from_utf8_lossy(&o.stdout)))
            .map_or("?".into(), |(a, b)| format!("{a}.{b}"));
        lines.push(format!("{arch}: {} (QEMU {version})", bin.display()));
    }
    if needs.gdb {
        lines.push(format!("gdb: {}", crate::gdb::GDB));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolchain_file_is_read() {
        let tc = Toolchain::parse(
            "[toolchain]\nchannel = \"nightly\"\ncomponents = [\"rust-src\", \"clippy\"]\ntargets = [\"x86_64-unknown-none\"]\n",
        )
        .unwrap();
        assert_eq!(tc.channel, "nightly");
        assert_eq!(tc.components, ["rust-src", "clippy"]);
        assert_eq!(tc.targets, ["x86_64-unknown-none"]);
        // The project's own file parses.
        let tc = Toolchain::read().unwrap();
        assert!(tc.components.iter().any(|c| c == "rust-src"), "{tc:?}");
    }

    #[test]
    fn components_match_with_or_without_the_host_triple() {
        let installed: Vec<String> = [
            "rust-src",
            "rustfmt-x86_64-unknown-linux-gnu",
            "rust-std-x86_64-unknown-none",
        ]
        .map(String::from)
        .to_vec();
        assert!(has_component(&installed, "rust-src"));
        assert!(has_component(&installed, "rustfmt"));
        assert!(has_component(&installed, "rust-std-x86_64-unknown-none"));
        assert!(!has_component(&installed, "clippy"));
        assert!(!has_component(&installed, "rust"));
    }

    #[test]
    fn qemu_versions_parse() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\nCopyright"
            ),
            Some((10, 0))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.15"),
            Some((7, 2))
        );
        assert_eq!(parse_qemu_version("something else"), None);
        assert!((7, 2) < MIN_QEMU && (10, 0) >= MIN_QEMU && (11, 0) > MIN_QEMU);
    }

    #[test]
    fn apt_commands_name_the_packages() {
        let c = apt_commands(
            &["qemu-system-s390x".into(), "qemu-system-x86".into()],
            true,
        );
        assert!(c[0].contains("bookworm-backports"), "{c:?}");
        assert_eq!(
            c.last().unwrap(),
            "apt-get install -y -t bookworm-backports --no-install-recommends qemu-system-s390x qemu-system-x86"
        );
    }

    #[test]
    fn path_lookup() {
        assert!(on_path("sh"));
        assert!(!on_path("quiesce-no-such-binary"));
    }
}
