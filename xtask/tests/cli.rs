//! Bad input to `cargo xtask` gets a clear error and exit status 2, before
//! anything is built or booted; a harness problem (a kernel file that is not
//! a kernel, a QEMU that is not there) exit status 3, at once.

use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask")
}

fn assert_error(args: &[&str], needle: &str) {
    assert_exit(xtask(args), args, 2, needle);
}

fn assert_exit(out: Output, args: &[&str], code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
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
    assert_error(&["run", "--accel", "hvf"], "invalid value 'hvf'");
    assert_error(
        &["run", "--scenario", "no-such-row"],
        "invalid value 'no-such-row'",
    );
    assert_error(
        &[
            "run",
            "--scenario",
            "ptfrag-refcount",
            "--variant",
            "immediate",
        ],
        "--variant immediate: not a variant of ptfrag-refcount (known: buggy, fixed-a, fixed-b)",
    );
    assert_error(
        &["run", "--full", "--scenario", "ptfrag-refcount"],
        "--full is the plain run",
    );
    assert_error(&["soak", "--jobs", "0"], "--jobs must be at least 1");
}

#[test]
fn explore_options_go_with_their_modes() {
    // A schedule replaces the forced schedule of one row: not natural, not
    // both modes.
    for mode in [&["--mode", "natural"][..], &[]] {
        let mut args = vec!["run", "--scenario", "ptfree-vs-gup-fast"];
        args.extend(mode);
        args.extend(["--schedule", "gup@role:start"]);
        assert_error(&args, "--schedule replaces one row's forced schedule");
    }
    assert_error(
        &[
            "run",
            "--scenario",
            "all",
            "--mode",
            "forced",
            "--schedule",
            "a@b",
        ],
        "give --scenario ROW (not all) and --mode forced",
    );
    assert_error(
        &["run", "--mode", "forced", "--schedule", "a@b"],
        "--schedule replaces one row's forced schedule",
    );
    assert_error(
        &["run", "--scenario", "ptfree-vs-gup-fast", "--bound", "2"],
        "--bound is explore mode's preemption bound",
    );
    assert_error(&["explore", "--bound", "17"], "invalid value '17'");
    assert_error(
        &[
            "explore",
            "--arch",
            "s390x",
            "--scenario",
            "ptfree-vs-gup-fast",
            "--flush",
            "nmi",
        ],
        "the expected table has no explore cell for ptfree-vs-gup-fast under flush nmi on s390x",
    );
    assert_error(
        &[
            "explore",
            "--scenario",
            "ptfrag-refcount",
            "--variant",
            "immediate",
        ],
        "--variant immediate: not a variant of ptfrag-refcount (known: buggy, fixed-a, fixed-b)",
    );
}

#[test]
fn help_lists_every_fixed_value() {
    let out = xtask(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for values in [
        "[possible values: s390x, x86_64, all]",
        "[possible values: tcg, kvm]",
        "[possible values: natural, forced, explore]",
        "[possible values: all, demo-lock-vs-put, wp-unlock-vs-zap",
    ] {
        assert!(help.contains(values), "{values} missing from:\n{help}");
    }
}

#[test]
fn version_names_the_git_revision() {
    let out = xtask(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let rev = xtask::git_revision();
    assert!(
        text.starts_with("cargo xtask ") && text.contains(&format!("({rev})")),
        "{text}"
    );
}

#[test]
fn a_kernel_file_that_is_not_a_kernel_is_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("quiesce-bad-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Random-looking bytes, the size of a small kernel.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for arch in xtask::Arch::ALL {
        std::fs::write(dir.join(arch.binary()), &bytes).unwrap();
    }
    for arch in ["s390x", "x86_64"] {
        let args = ["run", "--arch", arch];
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .env(xtask::kbuild::KERNELS_ENV, &dir)
            .output()
            .expect("run xtask");
        let file = dir.join(format!("quiesce-{arch}"));
        assert_exit(
            out,
            &args,
            3,
            &format!(
                "kernel file {} is not a {arch} kernel: not an ELF file",
                file.display()
            ),
        );
        assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_qemu_binary_is_a_harness_error() {
    let args = ["run", "--arch", "s390x"];
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("QEMU_S390X", "/nonexistent/qemu-system-s390x")
        .output()
        .expect("run xtask");
    assert_exit(
        out,
        &args,
        3,
        "QEMU_S390X=/nonexistent/qemu-system-s390x: no such file",
    );
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
