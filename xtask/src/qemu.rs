//! The QEMU launcher: starts a kernel, collects its console with a deadline and
//! judges the run.
//!
//! The console is read line by line on a thread; the launcher stops waiting at the
//! deadline, kills QEMU and reports a hang with the last console lines. The
//! verdict ([`Boot::verdict`]) comes from the parsed KTAP and the final status line;
//! QEMU's exit code must agree with them but never decides alone.

use crate::ktap::{self, Document};
use crate::Arch;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The prefix of the kernel's final status line.
pub const STATUS_PREFIX: &str = "quiesce: status=";

/// Physical address where the s390x kernel finds its command line (at most
/// [`S390X_CMDLINE_MAX`] bytes, NUL-terminated), placed by QEMU's generic loader.
pub const S390X_CMDLINE_ADDR: u64 = 0x8000;
/// Size of the s390x command-line area, the terminating NUL included.
pub const S390X_CMDLINE_MAX: usize = 4096;

/// The CPU counts a kernel supports (the kernel's `NR_CPUS`).
pub const SMP_RANGE: std::ops::RangeInclusive<usize> = 1..=64;
/// Guest memory sizes accepted, in MiB. The kernel image with its heap needs 32 MiB.
pub const MEMORY_RANGE_MIB: std::ops::RangeInclusive<u64> = 64..=16384;

/// QEMU accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation (multi-threaded TCG): the default.
    Tcg,
    /// Hardware virtualisation, for the host's own architecture only.
    Kvm,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            _ => Err(format!("unknown accelerator '{s}' (known: tcg, kvm)")),
        }
    }
}

/// How to boot one kernel.
#[derive(Clone, Debug)]
pub struct BootConfig {
    /// Architecture.
    pub arch: Arch,
    /// The kernel ELF.
    pub kernel: PathBuf,
    /// Number of CPUs.
    pub smp: usize,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Accelerator.
    pub accel: Accel,
    /// How long the run may take before it counts as a hang.
    pub timeout: Duration,
    /// The kernel command line.
    pub cmdline: String,
    /// Start halted with QEMU's gdb stub on this local TCP port.
    pub gdb_port: Option<u16>,
}

impl BootConfig {
    /// A configuration with the defaults: 4 CPUs, 256 MiB, TCG, 60 s.
    pub fn new(arch: Arch, kernel: PathBuf) -> Self {
        Self {
            arch,
            kernel,
            smp: 4,
            memory_mib: 256,
            accel: Accel::Tcg,
            timeout: Duration::from_secs(60),
            cmdline: String::new(),
            gdb_port: None,
        }
    }

    /// Checks the configuration, with an error that says what is wrong.
    pub fn validate(&self) -> Result<()> {
        self.validate_options()?;
        if !self.kernel.is_file() {
            bail!(
                "kernel {} does not exist (build it with `cargo xtask build`)",
                self.kernel.display()
            );
        }
        crate::kbuild::check_elf(self.arch, &self.kernel)
    }

    /// Checks everything but the kernel file (before it is built).
    pub fn validate_options(&self) -> Result<()> {
        if !SMP_RANGE.contains(&self.smp) {
            bail!(
                "--smp {}: the kernel supports {} to {} CPUs",
                self.smp,
                SMP_RANGE.start(),
                SMP_RANGE.end()
            );
        }
        if !MEMORY_RANGE_MIB.contains(&self.memory_mib) {
            bail!(
                "--memory {} MiB: the kernel needs {} to {} MiB",
                self.memory_mib,
                MEMORY_RANGE_MIB.start(),
                MEMORY_RANGE_MIB.end()
            );
        }
        if self.accel == Accel::Kvm {
            if !self.arch.is_host() {
                bail!(
                    "--accel kvm: {} cannot run under KVM on this {} host",
                    self.arch,
                    std::env::consts::ARCH
                );
            }
            if !Path::new("/dev/kvm").exists() {
                bail!("--accel kvm: /dev/kvm does not exist on this host");
            }
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be more than 0 seconds");
        }
        if self.cmdline.len() + 1 > S390X_CMDLINE_MAX {
            bail!(
                "the kernel command line is {} bytes; at most {} fit",
                self.cmdline.len(),
                S390X_CMDLINE_MAX - 1
            );
        }
        if self.cmdline.contains('\0') {
            bail!("the kernel command line contains a NUL byte");
        }
        Ok(())
    }

    /// The QEMU command line, with `cmdline_file` holding the kernel command line
    /// on s390x.
    pub fn qemu_command(&self, cmdline_file: &Path) -> Command {
        let mut cmd = Command::new(crate::setup::qemu_binary(self.arch));
        let accel = match self.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        };
        cmd.args([
            "-accel",
            accel,
            "-smp",
            &self.smp.to_string(),
            "-m",
            &format!("{}M", self.memory_mib),
        ]);
        cmd.args(["-nodefaults", "-display", "none", "-no-reboot"]);
        if let Some(port) = self.gdb_port {
            cmd.arg("-S")
                .arg("-gdb")
                .arg(format!("tcp:127.0.0.1:{port}"));
        }
        match self.arch {
            Arch::S390x => {
                cmd.args(["-M", "s390-ccw-virtio"]);
                cmd.args([
                    "-chardev",
                    "stdio,id=con0",
                    "-device",
                    "sclpconsole,chardev=con0",
                ]);
                // A disabled wait at any address but 0xfff is a guest panic; by
                // default QEMU would exit 0 for it.
                cmd.args(["-action", "panic=exit-failure"]);
                cmd.arg("-kernel").arg(&self.kernel);
                cmd.arg("-device").arg(format!(
                    "loader,file={},addr={S390X_CMDLINE_ADDR:#x},force-raw=on",
                    cmdline_file.display()
                ));
            }
            Arch::X86_64 => {
                cmd.args(["-M", "q35", "-cpu", "max"]);
                if let Some(bios) = qboot() {
                    cmd.arg("-bios").arg(bios);
                }
                cmd.args([
                    "-serial",
                    "stdio",
                    "-device",
                    "isa-debug-exit,iobase=0xf4,iosize=0x04",
                ]);
                cmd.arg("-kernel").arg(&self.kernel);
                cmd.arg("-append").arg(&self.cmdline);
            }
        }
        cmd
    }

    /// The QEMU command as a shell line, for users who want to run it by hand.
    pub fn qemu_command_line(&self, cmdline_file: &Path) -> String {
        let cmd = self.qemu_command(cmdline_file);
        let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
        words.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
        words.join(" ")
    }
}

/// Quotes `word` for a POSIX shell when it needs quoting.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// QEMU's minimal x86 firmware, which boots a PVH kernel fastest.
fn qboot() -> Option<PathBuf> {
    [
        "/usr/share/qemu/qboot.rom",
        "/usr/share/qemu-firmware/qboot.rom",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Writes the s390x command-line blob: the bytes and a NUL.
pub fn write_cmdline_file(cmdline: &str) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    // One directory per user: another user's would not be writable.
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    let dir = std::env::temp_dir().join(format!("quiesce-cmdline-{uid}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(
        "{}-{}.bin",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The kernel's final status line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// `pass` (true) or `fail`.
    pub pass: bool,
    /// The rest of the line.
    pub detail: String,
}

/// A finished boot: the console, how QEMU ended, and the parsed results.
#[derive(Clone, Debug)]
pub struct Boot {
    /// The configuration it ran with.
    pub config: BootConfig,
    /// Console lines, in order.
    pub console: Vec<String>,
    /// What QEMU wrote to stderr.
    pub stderr: String,
    /// QEMU's exit code (None if it was killed).
    pub exit_code: Option<i32>,
    /// Whether the launcher killed QEMU at the deadline.
    pub timed_out: bool,
    /// Time from spawning QEMU to its end.
    pub elapsed: Duration,
    /// Time from spawning QEMU to the first `KTAP version 1` line.
    pub first_ktap_line: Option<Duration>,
    /// Time from spawning QEMU to the first console output (any byte).
    pub first_output: Option<Duration>,
    /// Time from spawning QEMU to the `# quiesce arch=` line, which the
    /// kernel prints once the machine is set up (after the backend's
    /// `setup_arch`, which follows the KTAP header).
    pub machine_set_up: Option<Duration>,
    /// The parsed KTAP.
    pub ktap: Document,
    /// The final status line, if one was printed.
    pub status: Option<Status>,
    /// Problems with the status line (more than one, malformed).
    pub status_errors: Vec<String>,
}

/// The judgement of one boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the run passed.
    pub passed: bool,
    /// Why it failed (empty if it passed).
    pub reasons: Vec<String>,
}

impl Boot {
    /// Boots the kernel, waiting at most `config.timeout`. `on_line` sees each
    /// console line as it arrives.
    pub fn run(config: &BootConfig, mut on_line: impl FnMut(&str)) -> Result<Boot> {
        config.validate()?;
        crate::setup::ensure_qemu(config.arch)?;
        let cmdline_file = write_cmdline_file(&config.cmdline)?;
        let mut cmd = config.qemu_command(&cmdline_file);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting {}",
                crate::setup::qemu_binary(config.arch).display()
            )
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel::<(Instant, String)>();
        // The reader returns when the first bytes arrived.
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let first_output = match r.fill_buf() {
                Ok(b) if !b.is_empty() => Some(Instant::now()),
                _ => None,
            };
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_string();
                        if tx.send((Instant::now(), line)).is_err() {
                            break;
                        }
                    }
                }
            }
            first_output
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_pipe.read_to_string(&mut s);
            s
        });

        let deadline = start + config.timeout;
        let mut console = Vec::new();
        let mut first_ktap_line = None;
        let mut machine_set_up = None;
        let mut timed_out = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                timed_out = true;
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok((at, line)) => {
                    if first_ktap_line.is_none() && line.trim() == "KTAP version 1" {
                        first_ktap_line = Some(at - start);
                    }
                    if machine_set_up.is_none() && line.starts_with("# quiesce arch=") {
                        machine_set_up = Some(at - start);
                    }
                    on_line(&line);
                    console.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if timed_out {
            let _ = child.kill();
        }
        let status = child.wait().context("waiting for QEMU")?;
        let elapsed = start.elapsed();
        // Lines that arrived between the deadline and the kill still count.
        let first_output = reader.join().ok().flatten().map(|at| at - start);
        for (_, line) in rx.try_iter() {
            on_line(&line);
            console.push(line);
        }
        let stderr = err_reader.join().unwrap_or_default();
        let _ = std::fs::remove_file(&cmdline_file);

        let text = console.join("\n");
        let ktap = ktap::parse(&text);
        let (status_line, status_errors) = find_status(&console);
        Ok(Boot {
            config: config.clone(),
            console,
            stderr,
            exit_code: if timed_out { None } else { status.code() },
            timed_out,
            elapsed,
            first_ktap_line,
            first_output,
            machine_set_up,
            ktap,
            status: status_line,
            status_errors,
        })
    }

    /// Judges the run.
    pub fn verdict(&self) -> Verdict {
        let mut reasons = Vec::new();
        if self.timed_out {
            reasons.push(format!(
                "timed out after {} s: the kernel hung",
                self.config.timeout.as_secs_f64()
            ));
        }
        match &self.status {
            None if !self.timed_out => {
                reasons.push("no final status line: the kernel crashed or QEMU died".into())
            }
            None => {}
            Some(s) if !s.pass => {
                reasons.push(format!("the kernel reported failure: {}", s.detail))
            }
            Some(_) => {}
        }
        reasons.extend(self.status_errors.iter().cloned());
        for e in &self.ktap.errors {
            reasons.push(format!("malformed KTAP: {e}"));
        }
        if !self.ktap.started && !self.timed_out {
            reasons.push("no KTAP output".into());
        }
        for (name, r) in self.ktap.cases() {
            if !r.ok {
                let why = self
                    .ktap
                    .failure_reason(&name, &r)
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                reasons.push(format!("test failed: {name}{why}"));
            }
        }
        for r in &self.ktap.results {
            if !r.ok && r.subtests.is_empty() {
                continue; // already listed as a case
            }
            if !r.ok && r.subtests.iter().all(|s| s.ok) {
                reasons.push(format!("suite failed: {}", r.name));
            }
        }
        if let (Some(code), Some(s)) = (self.exit_code, &self.status) {
            let clean = code == self.config.arch.success_exit_code();
            if s.pass != clean {
                reasons.push(format!(
                    "QEMU exit code {code} disagrees with the status line ({})",
                    if s.pass { "pass" } else { "fail" }
                ));
            }
        }
        if self.status.as_ref().is_some_and(|s| s.pass) && !self.ktap.passed() && reasons.is_empty()
        {
            reasons.push("status line says pass but the KTAP did not pass".into());
        }
        Verdict {
            passed: reasons.is_empty(),
            reasons,
        }
    }

    /// The last `n` console lines.
    pub fn last_lines(&self, n: usize) -> &[String] {
        &self.console[self.console.len().saturating_sub(n)..]
    }

    /// A failure report: reasons, the kernel's backtraces symbolised from its
    /// ELF ([`crate::backtrace`]), the last console lines and QEMU's stderr.
    pub fn failure_report(&self) -> String {
        let v = self.verdict();
        let mut out = format!(
            "{} (smp={}, cmdline={:?}) FAILED\n",
            self.config.arch, self.config.smp, self.config.cmdline
        );
        for r in &v.reasons {
            out.push_str(&format!("  - {r}\n"));
        }
        out.push_str(&format!(
            "  QEMU exit code: {}\n",
            self.exit_code
                .map_or("none (killed)".to_string(), |c| c.to_string())
        ));
        out.push_str(&crate::backtrace::report(
            &self.console,
            &self.config.kernel,
            &crate::workspace_root(),
        ));
        out.push_str("  last console lines:\n");
        for l in self.last_lines(25) {
            out.push_str(&format!("    | {l}\n"));
        }
        if !self.stderr.trim().is_empty() {
            out.push_str("  QEMU stderr:\n");
            for l in self.stderr.lines().take(20) {
                out.push_str(&format!("    ! {l}\n"));
            }
        }
        out
    }
}

/// Finds the final status line; more than one, or a malformed one, is an error.
pub fn find_status(console: &[String]) -> (Option<Status>, Vec<String>) {
    let mut found = None;
    let mut errors = Vec::new();
    for line in console {
        let Some(rest) = line.trim().strip_prefix(STATUS_PREFIX) else {
            continue;
        };
        let (word, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        let pass = match word {
            "pass" => true,
            "fail" => false,
            _ => {
                errors.push(format!("malformed status line '{line}'"));
                continue;
            }
        };
        if found.is_some() {
            errors.push(format!("more than one status line: '{line}'"));
        }
        found = Some(Status {
            pass,
            detail: detail.trim().trim_matches(['(', ')']).to_string(),
        });
    }
    (found, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(console: &str, exit_code: Option<i32>, timed_out: bool) -> Boot {
        let console: Vec<String> = console.lines().map(str::to_string).collect();
        let (status, status_errors) = find_status(&console);
        Boot {
            config: BootConfig::new(Arch::S390x, PathBuf::from("/nonexistent")),
            ktap: ktap::parse(&console.join("\n")),
            console,
            stderr: String::new(),
            exit_code,
            timed_out,
            elapsed: Duration::ZERO,
            first_ktap_line: None,
            first_output: None,
            machine_set_up: None,
            status,
            status_errors,
        }
    }

    #[test]
    fn a_floor_boot_is_one_byte_then_the_clean_exit() {
        use crate::bench::floor_problem;
        assert_eq!(floor_problem(Arch::S390x, &boot("Q", Some(0), false)), None);
        assert_eq!(
            floor_problem(Arch::X86_64, &boot("Q", Some(1), false)),
            None
        );
        let exited = floor_problem(Arch::S390x, &boot("Q", Some(1), false));
        assert!(exited.unwrap().contains("exited Some(1), not 0"));
        let silent = floor_problem(Arch::X86_64, &boot("", Some(1), false));
        assert!(silent.unwrap().contains("console"));
        let hung = floor_problem(Arch::S390x, &boot("Q", None, true));
        assert!(hung.unwrap().contains("timed out"));
    }

    /// Asserts that one of the reasons of `v` says `part`.
    fn assert_reason(v: &Verdict, part: &str) {
        assert!(
            v.reasons.iter().any(|r| r.contains(part)),
            "no reason saying {part:?} in {:?}",
            v.reasons
        );
    }

    const PASS: &str = "KTAP version 1\n1..1\nok 1 a\nquiesce: status=pass (all tests passed)\n";

    #[test]
    fn a_clean_run_passes() {
        let v = boot(PASS, Some(0), false).verdict();
        assert!(v.passed, "{:?}", v.reasons);
    }

    #[test]
    fn exit_code_alone_never_passes() {
        let v = boot("KTAP version 1\n1..1\nok 1 a\n", Some(0), false).verdict();
        assert!(!v.passed);
        assert_reason(&v, "no final status line");
    }

    #[test]
    fn disagreeing_exit_code_fails() {
        let v = boot(PASS, Some(1), false).verdict();
        assert_reason(&v, "disagrees");
    }

    #[test]
    fn timeout_fails_and_keeps_last_lines() {
        let b = boot("KTAP version 1\n# hanging\n", None, true);
        let v = b.verdict();
        assert_reason(&v, "timed out");
        assert!(b.failure_report().contains("| # hanging"));
    }

    #[test]
    fn status_pass_with_failed_test_fails() {
        let v = boot(&PASS.replace("ok 1 a", "not ok 1 a"), Some(0), false).verdict();
        assert_reason(&v, "test failed: a");
    }

    #[test]
    fn status_lines_are_checked() {
        let (_, errs) = find_status(&["quiesce: status=maybe".into()]);
        assert_eq!(errs.len(), 1);
        let (s, errs) = find_status(&[
            "quiesce: status=pass (x)".into(),
            "quiesce: status=fail (y)".into(),
        ]);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            s,
            Some(Status {
                pass: false,
                detail: "y".into()
            })
        );
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut c = BootConfig::new(Arch::X86_64, std::env::current_exe().unwrap());
        assert!(c.validate_options().is_ok());
        c.smp = 0;
        assert_refused(c.validate_options(), "--smp 0");
        c.smp = 65;
        assert!(c.validate_options().is_err());
        c.smp = 2;
        c.memory_mib = 16;
        assert_refused(c.validate_options(), "--memory");
        c.memory_mib = 256;
        c.cmdline = "x".repeat(5000);
        assert!(c.validate_options().is_err());
        c.cmdline.clear();
        c.kernel = PathBuf::from("/nonexistent/kernel");
        assert_refused(c.validate(), "does not exist");
        // A file that is not a kernel for the architecture is refused at once.
        c.kernel = std::env::current_exe().unwrap();
        assert_refused(c.validate(), "is not a x86_64 kernel");
        let mut s = BootConfig::new(Arch::S390x, std::env::current_exe().unwrap());
        s.accel = Accel::Kvm;
        assert_refused(s.validate_options(), "cannot run under KVM");
    }

    /// Asserts that a check refused the configuration with an error
    /// (with its context) saying `part`.
    fn assert_refused(checked: Result<()>, part: &str) {
        let err = format!("{:#}", checked.expect_err("the configuration was accepted"));
        assert!(err.contains(part), "{err}");
    }
}
