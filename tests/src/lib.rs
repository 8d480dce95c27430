//! Shared helpers of the boot-and-assert tests.
//!
//! Every boot test builds the kernel it needs (once per test process; a no-op when
//! `cargo xtask test` built it already), boots it through the same launcher as
//! `cargo xtask run`, and asserts on the parsed KTAP. Each boot is its own test
//! case, so `cargo nextest run --partition` can spread them over machines.
//! `QUIESCE_TEST_ARCHES=s390x` (or `x86_64`) limits the boots to one architecture.
//!
//! A test that cannot run here is a skip, never a pass: every boot test
//! binary runs its tests through [`Harness`] (libtest-mimic), which reports
//! a test whose architecture is left out, or that lacks a tool, as
//! `ignored` in the harness's own counts, listed as such for cargo-nextest.
//! Invariant: a test reported `ok` ran its body to the end and booted every
//! kernel it asked for; a boot refused by [`boot`] (its architecture left
//! out) makes its test `ignored`, never `ok`.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use xtask::expected::Observed;
use xtask::platform::{Platform, Property};
use xtask::qemu::Accel;
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

/// Why a test that boots every architecture of `arches` cannot run in this
/// test run (`None`: it can).
pub fn arches_left_out(arches: &[Arch]) -> Option<String> {
    let out: Vec<&str> = arches
        .iter()
        .filter(|&&a| !enabled(a))
        .map(|a| a.name())
        .collect();
    (!out.is_empty()).then(|| format!("{} not in QUIESCE_TEST_ARCHES", out.join(", ")))
}

/// The tests of one boot test binary (`harness = false`), run by
/// libtest-mimic with libtest's command line, so `cargo test` filters and
/// cargo-nextest list and run them as usual. A test that cannot run here
/// (its skip reason is `Some`) is listed and reported `ignored`, with its
/// reason when it runs anyway (`--include-ignored`); one whose body meets a
/// boot [`boot`] refuses is reported `ignored` too.
#[derive(Default)]
#[must_use = "a harness runs nothing until `run`"]
pub struct Harness {
    trials: Vec<(Trial, Option<String>)>,
}

/// The test running on this thread: its name (for [`keep_console`]) and
/// why it was skipped, if it was.
struct Current {
    name: String,
    skipped: Option<String>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Marks the running test as skipped for `reason`: the harness reports it
/// `ignored`, whatever its body does after.
pub fn skip(reason: String) {
    CURRENT.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            c.skipped.get_or_insert(reason);
        }
    });
}

impl Harness {
    pub fn new() -> Self {
        Self::default()
    }

    /// A test named `name` running `body`, skipped for `skip` if that is
    /// `Some`. A panic in `body` is its failure.
    pub fn test_unless(
        mut self,
        name: impl Into<String>,
        skip: Option<String>,
        body: impl FnOnce() + Send + 'static,
    ) -> Self {
        let trial = Self::trial(name.into(), skip.clone(), body).with_ignored_flag(skip.is_some());
        self.trials.push((trial, skip));
        self
    }

    /// A test that boots every architecture of `arches` and runs only when
    /// asked for (`-- --include-ignored` or `-- --ignored`), as libtest's
    /// `#[ignore]`: listed ignored for `reason` (it takes long), and when
    /// asked for, run like [`Harness::test`] (skipped when an architecture
    /// is not in `QUIESCE_TEST_ARCHES`).
    pub fn test_on_request(
        mut self,
        name: impl Into<String>,
        arches: &[Arch],
        reason: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> Self {
        let skip = arches_left_out(arches);
        let trial = Self::trial(name.into(), skip.clone(), body).with_ignored_flag(true);
        self.trials
            .push((trial, Some(skip.unwrap_or_else(|| reason.to_string()))));
        self
    }

    /// The trial of `body`, ignored for `skip` without running if that is
    /// `Some`.
    fn trial(name: String, skip: Option<String>, body: impl FnOnce() + Send + 'static) -> Trial {
        let reason = skip;
        let test = name.clone();
        Trial::ignorable_test(name, move || {
            if let Some(reason) = reason {
                return Ok(Completion::ignored_with(reason));
            }
            CURRENT.with(|c| {
                *c.borrow_mut() = Some(Current {
                    name: test,
                    skipped: None,
                })
            });
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let current = CURRENT.with(|c| c.borrow_mut().take());
            match ran {
                Ok(()) => Ok(current
                    .and_then(|c| c.skipped)
                    .map_or(Completion::Completed, Completion::ignored_with)),
                Err(e) => Err(Failed::from(panic_message(&*e))),
            }
        })
    }

    /// A test that boots every architecture of `arches`: skipped when one
    /// is not in `QUIESCE_TEST_ARCHES`.
    pub fn test(
        self,
        name: impl Into<String>,
        arches: &[Arch],
        body: impl FnOnce() + Send + 'static,
    ) -> Self {
        self.test_unless(name, arches_left_out(arches), body)
    }

    /// One test per architecture, named `names[0]` (s390x) and `names[1]`
    /// (x86-64), each calling `body` with its architecture.
    pub fn per_arch(self, names: [&str; 2], body: fn(Arch)) -> Self {
        let [s390x, x86_64] = names;
        self.test(s390x, &[Arch::S390x], move || body(Arch::S390x))
            .test(x86_64, &[Arch::X86_64], move || body(Arch::X86_64))
    }

    /// Runs the tests the command line selects and exits with libtest's
    /// status. Before the run, each test skipped up front that would have
    /// run is named with its reason (`# SKIP name: reason`), since
    /// libtest's `ignored` carries none.
    pub fn run(self) -> ! {
        let (args, filters) = arguments();
        let pretty = !args.list && !matches!(args.format, Some(libtest_mimic::FormatSetting::Json));
        let runs_ignored = args.ignored || args.include_ignored;
        let mut trials = Vec::with_capacity(self.trials.len());
        for (trial, skip) in self.trials {
            let name = trial.name();
            let selected = filters.is_empty()
                || filters.iter().any(|f| match args.exact {
                    true => name == f,
                    false => name.contains(f.as_str()),
                });
            if !selected {
                continue;
            }
            if let Some(reason) = skip.filter(|_| pretty && !runs_ignored) {
                if !args.is_filtered_out(&trial) {
                    println!("# SKIP {name}: {reason}");
                }
            }
            trials.push(trial);
        }
        libtest_mimic::run(&args, trials).exit()
    }
}

/// libtest's command line less its test-name filters if there are several,
/// and those filters: libtest takes any number (a test runs if it matches
/// one), libtest-mimic one, and `cargo xtask test -- A B` passes the same words to every test
/// binary.
fn arguments() -> (Arguments, Vec<String>) {
    /// The options that take the next word as their value.
    const VALUED: [&str; 6] = [
        "--test-threads",
        "--logfile",
        "--skip",
        "--color",
        "--format",
        "-Z",
    ];
    let mut words = std::env::args();
    let mut options: Vec<String> = words.next().into_iter().collect();
    let mut filters = Vec::new();
    while let Some(w) = words.next() {
        if VALUED.contains(&w.as_str()) {
            options.push(w);
            options.extend(words.next());
        } else if w.starts_with('-') {
            options.push(w);
        } else {
            filters.push(w);
        }
    }
    if filters.len() == 1 {
        // libtest-mimic's own filter: its summary counts what it left out.
        options.append(&mut filters);
    }
    (Arguments::from_iter(options), filters)
}

/// The message of a test's panic payload.
fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
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
/// to pass; `None` if the architecture is not enabled for this test run,
/// which makes the running test a skip ([`skip`]).
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

/// Like [`boot`], under the accelerator `accel` (the boot tests' own
/// boots are TCG's).
pub fn boot_under(
    accel: Accel,
    arch: Arch,
    smp: usize,
    cmdline: &str,
    timeout: Duration,
) -> Option<Boot> {
    boot_config(arch, smp, cmdline, timeout, false, accel)
}

fn boot_as(
    arch: Arch,
    smp: usize,
    cmdline: &str,
    timeout: Duration,
    must_fail: bool,
) -> Option<Boot> {
    boot_config(arch, smp, cmdline, timeout, must_fail, Accel::Tcg)
}

fn boot_config(
    arch: Arch,
    smp: usize,
    cmdline: &str,
    timeout: Duration,
    must_fail: bool,
    accel: Accel,
) -> Option<Boot> {
    if !enabled(arch) {
        skip(format!("{arch} not in QUIESCE_TEST_ARCHES"));
        return None;
    }
    let mut config = BootConfig::new(arch, kernel(arch));
    config.smp = smp;
    config.cmdline = cmdline.to_string();
    config.timeout = timeout;
    config.accel = accel;
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
    let test = CURRENT
        .with(|c| c.borrow().as_ref().map(|c| c.name.clone()))
        .or_else(|| std::thread::current().name().map(str::to_string))
        .unwrap_or_else(|| "unnamed".into())
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

/// Boots `arch` (4 CPUs) with `cmdline`, asserts that the boot passed
/// and returns the cells it printed; `None` when `arch` is not tested.
pub fn boot_cells(arch: Arch, cmdline: &str, timeout: Duration) -> Option<Vec<Observed>> {
    let b = boot(arch, 4, cmdline, timeout)?;
    assert_passed(&b);
    Some(xtask::expected::observed(&b.ktap))
}

/// Replays `schedule` (one explore printed) in forced mode on the one
/// cell `base` (`scenario= variant= [flush=]`) selects, and asserts a bug
/// in every iteration; the replayed cell.
pub fn assert_replay_is_bug(
    arch: Arch,
    base: &str,
    schedule: &str,
    timeout: Duration,
) -> Option<Observed> {
    let observed = boot_cells(
        arch,
        &format!("{base} mode=forced schedule={schedule}"),
        timeout,
    )?;
    assert_eq!(observed.len(), 1, "{arch} {base}: {observed:#?}");
    let r = observed.into_iter().next().unwrap();
    assert!(
        r.mode == xtask::expected::Mode::Forced
            && r.outcome == "bug"
            && r.iterations > 0
            && r.hits == r.iterations,
        "{arch} {base}: the replay of {schedule} hit in {} of {} iterations: {r:?}",
        r.hits,
        r.iterations
    );
    Some(r)
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

/// Asserts that a boot under the default accelerator (TCG) with `smp` CPUs
/// printed the platform line with what `PLATFORM.md` documents for QEMU's
/// TCG ([`Property::tcg_fact`]), `unmeasured` for the two-CPU probes of a
/// one-CPU boot. A probe that answered `no` here would judge cells by the
/// expected table's alternatives; this fails the test instead.
pub fn assert_tcg_platform(boot: &Boot, arch: Arch, smp: usize) {
    let platform = Platform::of(&boot.ktap);
    assert!(
        platform.printed(),
        "{arch}: no platform line
{}",
        boot.failure_report()
    );
    for p in Property::ALL {
        let want = match p {
            Property::StaleTlb | Property::IpiHeldByIrqsOff if smp < 2 => "unmeasured",
            _ => p.tcg_fact(arch),
        };
        assert_eq!(
            platform.value(p),
            Some(want),
            "{arch} smp={smp}: {p} under TCG ({})",
            platform.describe()
        );
    }
}

/// The cells `sel` selects of the boot `b` of `arch`, compared with the
/// expected table: asserts that there are some and that every one agrees
/// (`what` names the boot in a failure). The comparison's lines and the
/// table as printed (with the header of its mode).
pub fn assert_cells_agree(
    arch: Arch,
    what: &str,
    b: &Boot,
    sel: &xtask::expected::Selection,
) -> (Vec<xtask::expected::Line>, String) {
    let platform = xtask::platform::Platform::of(&b.ktap);
    let lines = xtask::expected::compare(arch, &platform, sel, &xtask::expected::observed(&b.ktap));
    assert!(!lines.is_empty(), "{arch} {what}: no cells");
    let mut table = format!("{}\n", lines[0].header());
    for l in &lines {
        table.push_str(&format!("{l}\n"));
    }
    assert!(
        lines.iter().all(|l| l.ok),
        "{arch} {what}: cells differ from the table\n{table}"
    );
    (lines, table)
}

/// Index of the first diagnostic line containing every one of `parts`.
pub fn position(diags: &[String], parts: &[&str]) -> Option<usize> {
    diags
        .iter()
        .position(|d| parts.iter().all(|p| d.contains(p)))
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
