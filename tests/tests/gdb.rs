//! `cargo xtask run --gdb`: the printed gdb command attaches to the halted
//! kernel, a breakpoint on a kernel function is hit with symbols, and after
//! gdb detaches the boot runs to a pass.
//!
//! Needs Debian's `gdb-multiarch` (`.ci/run` installs it). Without it the
//! test is reported ignored, except under CI (`CI=true`), where a missing
//! debugger is a failure.

use quiesce_tests::{arches_left_out, kernel, Harness};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtask::gdb::{free_port, gdb_command, GDB};
use xtask::{Arch, Boot, BootConfig};

/// A non-generic kernel function every boot of both architectures calls.
const FUNCTION: &str = "quiesce_kernel::cmdline::Cmdline::parse";

fn have_gdb() -> bool {
    Command::new(GDB)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs gdb in batch mode with `extra` commands after the printed ones;
/// kills it after `limit`. Returns its stdout and stderr.
fn run_gdb(words: &[String], extra: &[&str], limit: Duration) -> String {
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..]).arg("-batch").arg("-nx");
    for e in extra {
        cmd.arg("-ex").arg(e);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting gdb");
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("waiting for gdb").is_some() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// Why the test cannot run: no debugger. Under CI (`CI=true`) that is no
/// reason: the test runs and fails.
fn gdb_missing() -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    (!ci && !have_gdb()).then(|| format!("{GDB} is not installed (apt-get install gdb-multiarch)"))
}

fn breakpoint_is_hit(arch: Arch) {
    assert!(
        have_gdb(),
        "{GDB} is missing under CI (.ci/run installs it)"
    );
    let elf = kernel(arch);
    let mut config = BootConfig::new(arch, elf.clone());
    config.smp = 1;
    config.cmdline = "test=boot.cpus_online".into();
    config.timeout = Duration::from_secs(120);
    config.gdb_port = Some(free_port().unwrap());
    let words = gdb_command(arch, &elf, config.gdb_port.unwrap());
    let qemu = {
        let config = config.clone();
        std::thread::spawn(move || Boot::run(&config, |_| {}).expect("booting"))
    };
    // QEMU opens the stub right after it starts; until then gdb's
    // connection is refused, so try again for a while.
    let t0 = Instant::now();
    let out = loop {
        let out = run_gdb(
            &words,
            &[&format!("break {FUNCTION}"), "continue", "bt 1", "detach"],
            Duration::from_secs(90),
        );
        if !out.contains("Connection refused") || t0.elapsed() > Duration::from_secs(30) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        out.contains("Breakpoint 1, quiesce_kernel::cmdline::Cmdline::parse"),
        "{arch}: the breakpoint was not hit:\n{out}"
    );
    assert!(
        out.contains("kernel/src/cmdline.rs"),
        "{arch}: no source line:\n{out}"
    );
    let boot = qemu.join().unwrap();
    assert!(boot.verdict().passed, "{}", boot.failure_report());
}

fn main() {
    let mut tests = Harness::new();
    for (name, arch) in [
        ("s390x_breakpoint_is_hit", Arch::S390x),
        ("x86_64_breakpoint_is_hit", Arch::X86_64),
    ] {
        let skip = arches_left_out(&[arch]).or_else(gdb_missing);
        tests = tests.test_unless(name, skip, move || breakpoint_is_hit(arch));
    }
    tests.run()
}
