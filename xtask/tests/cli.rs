//! Bad input to `cargo xtask` gets a clear error and exit status 2, before
//! anything is built or booted.

use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask")
}

fn assert_error(args: &[&str], needle: &str) {
    let out = xtask(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in:\n{stderr}"
    );
}

#[test]
fn impossible_cpu_counts() {
    assert_error(
        &["run", "--smp", "0"],
        "--smp 0: the kernel supports 1 to 64 CPUs",
    );
    assert_error(&["run", "--smp", "65"], "--smp 65");
    assert_error(&["test-nonexistent"], "unrecognized subcommand");
}

#[test]
fn unknown_options_and_values() {
    assert_error(&["run", "--arch", "arm64"], "invalid value 'arm64'");
    assert_error(
        &["run", "--frobnicate"],
        "unexpected argument '--frobnicate'",
    );
    assert_error(&["run", "--mode", "fast"], "invalid value 'fast'");
    assert_error(&["list", "--arch", "arm64"], "invalid value 'arm64'");
    assert_error(&["run", "--accel", "hvf"], "unknown accelerator 'hvf'");
}

#[test]
fn too_little_memory() {
    assert_error(
        &["run", "--memory", "8"],
        "--memory 8 MiB: the kernel needs 64 to 16384 MiB",
    );
}

#[test]
fn kvm_for_a_foreign_architecture() {
    assert_error(
        &["run", "--arch", "s390x", "--accel", "kvm"],
        "cannot run under KVM",
    );
}

#[test]
fn zero_timeout() {
    assert_error(&["run", "--timeout", "0"], "--timeout must be more than 0");
}

#[test]
fn qemu_cmd_shows_the_launch() {
    let out = xtask(&["qemu-cmd", "--smp", "2", "--test", "ipi", "--", "seed=3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("qemu-system-s390x ") && lines[0].contains("loader,file="),
        "{text}"
    );
    assert!(lines[0].contains("-action panic=exit-failure"), "{text}");
    assert!(
        lines[1].starts_with("qemu-system-x86_64 ")
            && lines[1].contains("-append 'test=ipi seed=3'"),
        "{text}"
    );
    assert!(lines.iter().all(|l| l.contains("-smp 2")), "{text}");
}
