//! Every way a run can go wrong is reported as a failure with the last console
//! lines: a failing test, a panic on a secondary CPU, a hang, a crash without the
//! final status line (even with QEMU's success exit code), a bad command line,
//! and too little memory. A panic and an unhandled exception show their
//! backtrace, symbolised from the kernel ELF.

use quiesce_tests::{assert_failed_with, boot, boot_to_fail, TIMEOUT};
use std::time::Duration;
use xtask::{Arch, Boot};

/// Asserts that the kernel's status line says `fail` and that QEMU exits
/// with failure.
fn assert_status_fail(arch: Arch, b: &Boot) {
    assert!(
        b.status.as_ref().is_some_and(|s| !s.pass),
        "status line must say fail"
    );
    assert_ne!(
        b.exit_code,
        Some(arch.success_exit_code()),
        "QEMU must exit with failure"
    );
}

fn requested_failure(arch: Arch) {
    let Some(b) = boot_to_fail(arch, 2, "selftest.fail", TIMEOUT) else {
        return;
    };
    assert_failed_with(&b, "test failed: boot.requested_failure");
    assert_status_fail(arch, &b);
}

fn panic_on_secondary(arch: Arch) {
    let Some(b) = boot_to_fail(arch, 4, "selftest.panic=2", TIMEOUT) else {
        return;
    };
    assert_failed_with(&b, "panic on CPU 2");
    assert!(!b.timed_out, "a panic must stop the machine, not hang it");
    quiesce_tests::assert_console(&b, |l| l.contains("PANIC on CPU 2: panicking as asked"));
    assert_ne!(b.exit_code, Some(arch.success_exit_code()));
}

fn hang(arch: Arch) {
    let Some(b) = boot_to_fail(arch, 2, "selftest.hang", Duration::from_secs(8)) else {
        return;
    };
    assert!(b.timed_out);
    assert_failed_with(&b, "timed out");
    assert!(
        b.failure_report().contains("hanging on purpose"),
        "{}",
        b.failure_report()
    );
}

fn crash_without_status(arch: Arch) {
    let Some(b) = boot_to_fail(arch, 2, "selftest.crash", TIMEOUT) else {
        return;
    };
    // QEMU reports success: only the missing status line shows the crash.
    assert_eq!(
        b.exit_code,
        Some(arch.success_exit_code()),
        "{}",
        b.failure_report()
    );
    assert!(b.status.is_none());
    assert_failed_with(&b, "no final status line");
}

fn unknown_key(arch: Arch) {
    let Some(b) = boot_to_fail(arch, 1, "seed=7 bogus=1", TIMEOUT) else {
        return;
    };
    assert_failed_with(&b, "unknown key 'bogus'");
    assert!(
        b.ktap.case("cmdline").is_some_and(|r| !r.ok),
        "{}",
        b.failure_report()
    );
}

fn test_filter(arch: Arch) {
    let Some(b) = boot(arch, 2, "test=timer_ticks", TIMEOUT) else {
        return;
    };
    quiesce_tests::assert_passed(&b);
    let names: Vec<String> = b.ktap.cases().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["boot.timer_ticks"]);
    let Some(b) = boot_to_fail(arch, 1, "test=no_such_test", TIMEOUT) else {
        return;
    };
    assert_failed_with(&b, "no test matches");
}

fn too_little_memory(arch: Arch) {
    // `mem=12M` leaves a few MiB beside the image: below the 16 MiB minimum.
    let Some(b) = boot_to_fail(arch, 1, "mem=12M", TIMEOUT) else {
        return;
    };
    assert_failed_with(&b, "too little memory");
    quiesce_tests::assert_console(&b, |l| l.starts_with("# error: too little memory"));
    assert_ne!(b.exit_code, Some(arch.success_exit_code()));
}

/// The report's backtrace section of `cpu`.
fn backtrace_section(report: &str, cpu: usize) -> &str {
    let head = format!("  backtrace (CPU {cpu}):\n");
    let start = report
        .find(&head)
        .unwrap_or_else(|| panic!("no backtrace of CPU {cpu} in the report:\n{report}"));
    let section = &report[start + head.len()..];
    let end = section
        .find("\n  last console lines:")
        .unwrap_or(section.len());
    &section[..end]
}

/// Asserts that the backtrace names `function` at a `kernel/src/...rs:LINE`
/// location (as a frame or in a frame's inline chain).
fn assert_frame(section: &str, function: &str, report: &str) {
    let at = format!(" {function} at kernel/src/");
    let found = section.lines().any(|l| {
        l.find(&at).is_some_and(|i| {
            let loc = &l[i + at.len() - "kernel/src/".len()..];
            let loc = loc.split(' ').next().unwrap_or("");
            loc.split_once(".rs:").is_some_and(|(_, line)| {
                !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
            })
        })
    });
    assert!(
        found,
        "no frame {function} at kernel/src/...rs:LINE:\n{report}"
    );
}

fn panic_backtrace(arch: Arch) {
    let Some(b) = boot_to_fail(arch, 4, "selftest.panic=2 test=boot.requested", TIMEOUT) else {
        return;
    };
    assert_failed_with(&b, "panic on CPU 2");
    let report = b.failure_report();
    let section = backtrace_section(&report, 2);
    assert!(section.contains("    #0 0x"), "{report}");
    assert_frame(section, "quiesce_kernel::selftest::panic_here", &report);
    assert!(
        section.contains("(walk ended: null frame pointer)"),
        "{report}"
    );
}

fn fault_backtrace(arch: Arch) {
    let Some(b) = boot_to_fail(arch, 4, "selftest.fault=2 test=boot.requested", TIMEOUT) else {
        return;
    };
    assert_failed_with(&b, "panic on CPU 2");
    assert_status_fail(arch, &b);
    let report = b.failure_report();
    let section = backtrace_section(&report, 2);
    // Frame 0 is the faulting load itself, its caller comes next (on s390x
    // from the link register: the load is a leaf without a frame).
    assert!(section.contains("    #0 0x"), "{report}");
    assert_frame(section, "quiesce_kernel::selftest::load_unmapped", &report);
    assert_frame(section, "quiesce_kernel::selftest::fault_here", &report);
    let frame = |n: usize| {
        let head = format!("    #{n} ");
        let mut lines = section.lines().skip_while(|l| !l.starts_with(&head));
        let first = lines.next().unwrap_or("");
        let inlined = lines.take_while(|l| l.contains(" inlined into "));
        std::iter::once(first)
            .chain(inlined)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        frame(0).contains("quiesce_kernel::selftest::load_unmapped at kernel/src/"),
        "frame 0 must be the faulting function:\n{report}"
    );
    assert!(
        frame(1).contains("quiesce_kernel::selftest::fault_here at kernel/src/"),
        "frame 1 must be the faulting function's caller:\n{report}"
    );
    assert!(
        section.contains("(walk ended: null frame pointer)"),
        "{report}"
    );
}

/// One test per way to fail and architecture, `s390x::NAME` and
/// `x86_64::NAME`.
fn main() {
    type Case = (&'static str, fn(Arch));
    let cases: [Case; 9] = [
        ("requested_failure", requested_failure),
        ("panic_on_secondary", panic_on_secondary),
        ("hang", hang),
        ("crash_without_status", crash_without_status),
        ("unknown_key", unknown_key),
        ("test_filter", test_filter),
        ("too_little_memory", too_little_memory),
        ("panic_backtrace", panic_backtrace),
        ("fault_backtrace", fault_backtrace),
    ];
    let mut tests = quiesce_tests::Harness::new();
    for arch in Arch::ALL {
        for (name, body) in cases {
            tests = tests.test(format!("{arch}::{name}"), &[arch], move || body(arch));
        }
    }
    tests.run()
}
