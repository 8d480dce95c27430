//! `cargo xtask run --gdb`: the printed gdb command attaches to the halted
//! kernel, a breakpoint on a kernel function is hit with symbols, and after
//! gdb detaches the boot runs to a pass.
//!
//! Needs Debian's `gdb-multiarch` (`.ci/run` installs it). Without it the
//! test says so and does nothing, except under CI (`CI=true`), where a
//! missing debugger is a failure.

use quiesce_tests::{enabled, kernel};
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

fn breakpoint_is_hit(arch: Arch) {
    if !enabled(arch) {
        println!("# SKIP {arch}: not in QUIESCE_TEST_ARCHES");
        return;
    }
    if !have_gdb() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{GDB} is missing under CI (.ci/run installs it)"
        );
        println!("# SKIP {arch}: {GDB} is not installed (apt-get install gdb-multiarch)");
        return;
    }
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

quiesce_tests::per_arch!(s390x_breakpoint_is_hit, x86_64_breakpoint_is_hit => breakpoint_is_hit);
