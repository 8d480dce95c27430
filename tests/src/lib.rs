//! Shared helpers of the boot-and-assert tests.
//!
//! Every boot test builds the kernel it needs (once per test process; a no-op when
//! `cargo xtask test` built it already), boots it through the same launcher as
//! `cargo xtask run`, and asserts on the parsed KTAP. Each boot is its own test
//! case, so `cargo nextest run --partition` can spread them over machines.
//! `QUIESCE_TEST_ARCHES=s390x` (or `x86_64`) limits the boots to one architecture;
//! the others then report why they did nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use xtask::{kbuild, Arch, Boot, BootConfig};

/// Default time a boot in a test may take (generous: the suite runs boots in
/// parallel on two host cores).
pub const TIMEOUT: Duration = Duration::from_secs(150);

/// Whether boot tests of `arch` are enabled.
pub fn enabled(arch: Arch) -> bool {
    match std::env::var("QUIESCE_TEST_ARCHES") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|a| a.trim() == arch.name()),
        _ => true,
    }
}

/// The environment variable naming a directory of prebuilt kernel ELFs
/// (`quiesce-s390x`, `quiesce-x86_64`): a test machine that only runs the
/// boot tests (docs/testing.md, "Scaling out") needs no kernel build.
pub const KERNELS_ENV: &str = kbuild::KERNELS_ENV;

/// The kernel ELF for `arch`: from `QUIESCE_KERNELS` if set (refused at
/// once if it is not a kernel ELF for `arch`), else built on first use.
pub fn kernel(arch: Arch) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<Arch, PathBuf>>> = OnceLock::new();
    let map = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(arch)
        .or_insert_with(|| kbuild::kernel(arch, true).unwrap_or_else(|e| panic!("{e:#}")))
        .clone()
}

/// Boots `arch` with `smp` CPUs and `cmdline`, a boot the test requires
/// to pass; `None` (with a printed reason) if the architecture is not
/// enabled for this test run.
pub fn boot(arch: Arch, smp: usize, cmdline: &str, timeout: Duration) -> Option<Boot> {
    boot_as(arch, smp, cmdline, timeout, false)
}

/// Like [`boot`], for a boot the test requires to fail (a failure path, a
/// self-check that breaks a cell on purpose): its JUnit case passes when the
/// boot failed (`cargo xtask test --junit`, `xtask/src/junit.rs`). The test
/// asserts how it failed.
pub fn boot_to_fail(arch: Arch, smp: usize, cmdline: &str, timeout: Duration) -> Option<Boot> {
    boot_as(arch, smp, cmdline, timeout, true)
}

fn boot_as(
    arch: Arch,
    smp: usize,
    cmdline: &str,
    timeout: Duration,
    must_fail: bool,
) -> Option<Boot> {
    if !enabled(arch) {
        println!("# SKIP {arch}: not in QUIESCE_TEST_ARCHES");
        return None;
    }
    let mut config = BootConfig::new(arch, kernel(arch));
    config.smp = smp;
    config.cmdline = cmdline.to_string();
    config.timeout = timeout;
    let boot = {
        let _cpus = HostCpus::take(smp);
        Boot::run(&config, |_| {}).unwrap_or_else(|e| panic!("could not boot {arch}: {e:#}"))
    };
    keep_console(&boot, must_fail);
    Some(boot)
}

/// The host CPUs of this test process that boots have taken: a boot with
/// `smp` CPUs runs `smp` TCG vCPU threads, and a race's handshakes spin on
/// them. With more vCPU threads than host CPUs a spinning vCPU holds the
/// host CPU that the vCPU it waits for needs, and every boot runs slower:
/// two 4-CPU scenario boots side by side on 2 host CPUs took twice as long
/// as the same boots one after the other. So boots start while their vCPUs
/// fit in the host's CPUs, or when nothing else runs (a boot with more CPUs
/// than the host has runs alone). The wait comes before the boot's timeout
/// starts.
pub struct HostCpus {
    smp: usize,
}

static HOST_CPUS_TAKEN: Mutex<usize> = Mutex::new(0);
static HOST_CPUS_FREED: std::sync::Condvar = std::sync::Condvar::new();

impl HostCpus {
    /// Waits until a boot with `smp` CPUs may start; the CPUs are taken
    /// until the value is dropped.
    pub fn take(smp: usize) -> Self {
        let host = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut taken = HOST_CPUS_TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        while *taken > 0 && *taken + smp > host {
            taken = HOST_CPUS_FREED
                .wait(taken)
                .unwrap_or_else(|e| e.into_inner());
        }
        *taken += smp;
        HostCpus { smp }
    }
}

impl Drop for HostCpus {
    fn drop(&mut self) {
        let mut taken = HOST_CPUS_TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        *taken -= self.smp;
        HOST_CPUS_FREED.notify_all();
    }
}

/// With `QUIESCE_KTAP_DIR` set (`cargo xtask test --junit`), writes the
/// boot's raw console to `<dir>/<binary>.<test name>.<n>.ktap` (`n`
/// counting the boots of one test; [`xtask::junit::ktap_file_name`], which
/// marks a boot that `must_fail`).
fn keep_console(boot: &Boot, must_fail: bool) {
    let Some(dir) = std::env::var_os(xtask::junit::KTAP_DIR_ENV) else {
        return;
    };
    static SEQ: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace(['/', ':'], "_");
    let n = {
        let mut seq = SEQ
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = seq.entry(test.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    let crate_name = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| s.rsplit_once('-').map_or(s.clone(), |(n, _)| n.to_string()))
        .unwrap_or_default();
    let name = xtask::junit::ktap_file_name(&crate_name, &test, n, must_fail);
    let path = PathBuf::from(dir).join(name);
    let mut text = boot.console.join("\n");
    text.push('\n');
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Asserts that a console line of the boot matches `line`, showing the
/// failure report if none does.
pub fn assert_console(boot: &Boot, line: impl Fn(&str) -> bool) {
    assert!(
        boot.console.iter().any(|l| line(l)),
        "{}",
        boot.failure_report()
    );
}

/// Asserts that a boot passed, showing the failure report if not.
pub fn assert_passed(boot: &Boot) {
    let v = boot.verdict();
    assert!(v.passed, "{}", boot.failure_report());
}

/// Asserts that a boot failed and that the report gives a reason containing
/// `reason` and shows the last console lines.
pub fn assert_failed_with(boot: &Boot, reason: &str) {
    let v = boot.verdict();
    assert!(
        !v.passed,
        "expected a failure, but the run passed:\n{}",
        boot.console.join("\n")
    );
    assert!(
        v.reasons.iter().any(|r| r.contains(reason)),
        "expected a reason containing {reason:?}, got {:?}\n{}",
        v.reasons,
        boot.failure_report()
    );
    let report = boot.failure_report();
    assert!(report.contains("last console lines:"), "{report}");
    if let Some(last) = boot.console.last() {
        assert!(
            report.contains(last.as_str()),
            "the report lacks the last console line:\n{report}"
        );
    }
}

/// Index of the first diagnostic line containing every one of `parts`.
pub fn position(diags: &[String], parts: &[&str]) -> Option<usize> {
    diags
        .iter()
        .position(|d| parts.iter().all(|p| d.contains(p)))
}

/// One `#[test]` per architecture, each calling `$body` with its [`Arch`]
/// (`xtask::Arch`): `per_arch!(s390x_name, x86_64_name => body);`.
#[macro_export]
macro_rules! per_arch {
    ($s390x:ident, $x86_64:ident => $body:path) => {
        #[test]
        fn $s390x() {
            $body(xtask::Arch::S390x);
        }

        #[test]
        fn $x86_64() {
            $body(xtask::Arch::X86_64);
        }
    };
}

/// Asserts the race report of a forced buggy cell in its diagnostics `d`:
/// the report's head (the line with every one of `head`) is iteration 0, a
/// line has every one of `bug`, and the lines with each of `steps` come in
/// that order. `what` names the cell in a failure.
pub fn assert_forced_report(what: &str, d: &[String], head: &[&str], bug: &[&str], steps: &[&str]) {
    let h = position(d, head).unwrap_or_else(|| panic!("{what}: no race report: {d:#?}"));
    assert_eq!(
        xtask::ktap::diag_value(&d[h], "iteration"),
        Some("0"),
        "{what}: {}",
        d[h]
    );
    assert!(position(d, bug).is_some(), "{what}: {d:#?}");
    let at: Vec<Option<usize>> = steps.iter().map(|s| position(d, &[s])).collect();
    assert!(
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
        "{what}: steps at {at:?}: {d:#?}"
    );
}
