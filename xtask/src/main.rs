//! `cargo xtask`: build, run and test quiesce.
//!
//! - `cargo xtask build` builds the kernels.
//! - `cargo xtask run` boots them under QEMU and prints a readable summary:
//!   plain, the quick tour ([`xtask::tour`]); `--full`, the CI-size runs.
//! - `cargo xtask test` runs every host unit test and the boot-and-assert tests.
//! - `cargo xtask list` lists every race row, variant and self-test, read
//!   from the kernels (`--json` for tools).
//! - `cargo xtask qemu-cmd` prints the QEMU command a run would use.
//! - `cargo xtask setup` installs what the others need ([`xtask::setup`]).
//!
//! Exit status ([`xtask::exit`]): 0 pass, 1 a test or cell failed, 2 a usage
//! error, 3 a set-up or harness error.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;
use xtask::exit::{usage, UsageError};
use xtask::platform::Platform;
use xtask::qemu::{Accel, BootConfig};
use xtask::setup::Needs;
use xtask::{expected, kbuild, setup, Arch, Boot};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run and test the quiesce testbed kernels"
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Build the kernels.
    Build {
        #[arg(long, value_enum, default_value_t = ArchSel::All)]
        arch: ArchSel,
    },
    /// Boot the kernels under QEMU and print what happened.
    Run(RunArgs),
    /// Run the host unit tests and the boot-and-assert tests.
    Test {
        /// Boot tests of these architectures only.
        #[arg(long, value_enum, default_value_t = ArchSel::All)]
        arch: ArchSel,
        /// Skip the lint step (rustfmt and clippy) that runs first.
        #[arg(long)]
        no_lint: bool,
        /// Also write JUnit XML here, with the run's verdicts: one case per
        /// test, per KTAP result and scenario cell of every boot that must
        /// pass, per boot that must fail; each boot's raw KTAP is kept in
        /// `<FILE>.ktap/`. Under CI (`CI` set and not `false`), the default
        /// is `target/ci/junit.xml`.
        #[arg(long, value_name = "FILE")]
        junit: Option<std::path::PathBuf>,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Explore mode: every ordering of each row's race points and
    /// synchronisation events, one schedule per iteration, per cell the
    /// schedules run, pruned and buggy, judged by the expected table; the
    /// first buggy schedule as a `run --schedule` line that replays it.
    Explore(ExploreArgs),
    /// Print the QEMU command `run` would use.
    QemuCmd(RunArgs),
    /// rustfmt check and clippy (warnings denied) over the host crates and both kernels.
    Lint,
    /// Install what the other subcommands need, if missing: the rustup
    /// components and target of rust-toolchain.toml, QEMU for both
    /// architectures, gdb-multiarch (apt needs root).
    Setup,
    /// Long natural-mode runs outside CI: every fixed cell for 10^6
    /// iterations, every buggy cell with and without delays.
    Soak(SoakArgs),
    /// Benchmarks of both architectures: a JSON file, an HTML report with
    /// plots and a table on the terminal.
    Bench(BenchArgs),
    /// List every race row (seed thread, Linux commits), variant (the kernel
    /// it models, expected outcomes) and self-test, as the kernels report
    /// them (one `list` boot per architecture).
    List {
        #[arg(long, value_enum, default_value_t = ArchSel::All)]
        arch: ArchSel,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value_t = ArchSel::All)]
    arch: ArchSel,
    /// Self-test boots per architecture, and as many natural runs with a
    /// time budget (how far past it they go).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// CPUs per boot.
    #[arg(long, default_value_t = 4)]
    smp: usize,
    /// Natural-mode runs (one boot each, seeds 1, 2, ..., each to its first
    /// hit) per buggy scenario cell; 0 skips the race figures (and the
    /// explore ones: one boot per row, its first clean cell within bound 2).
    #[arg(long, default_value_t = 10)]
    race_runs: usize,
    /// Boots per point of the cost curves (shootdown latency against 1 to
    /// 16 CPUs, zap and GUP throughput against 1 to 2048 pages); 0 skips
    /// them.
    #[arg(long, default_value_t = 3)]
    curve_runs: usize,
    /// Directory for bench.json and bench.html (default target/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// An earlier bench.json: print and plot new / old ratios, marking a
    /// figure better or worse only when the two runs' min..max ranges are
    /// apart (3 or more runs each) and the medians differ by more than 5 %.
    #[arg(long, value_name = "OLD.json")]
    compare: Option<PathBuf>,
    /// With --compare: exit non-zero if a figure is marked worse.
    #[arg(long, requires = "compare")]
    fail_on_regression: bool,
    /// Exit non-zero if a figure misses its target (first KTAP line, race
    /// point cost, time past a natural run's budget); without it a missed
    /// target is reported only.
    #[arg(long)]
    fail_on_target: bool,
    /// Boot nothing: report this saved bench.json (with --compare, two
    /// saved runs against each other).
    #[arg(long, value_name = "FILE.json")]
    from: Option<PathBuf>,
}

#[derive(Args)]
struct SoakArgs {
    #[arg(long, value_enum, default_value_t = ArchSel::All)]
    arch: ArchSel,
    /// Only this row.
    #[arg(long)]
    scenario: Option<String>,
    /// Only this variant.
    #[arg(long)]
    variant: Option<String>,
    /// Iterations per fixed cell.
    #[arg(long, default_value_t = xtask::soak::FIXED_ITERATIONS)]
    fixed_iterations: u64,
    /// Iterations per buggy cell and delay setting.
    #[arg(long, default_value_t = xtask::soak::BUGGY_ITERATIONS)]
    buggy_iterations: u64,
    /// Time budget of one run in seconds (it stops at whichever budget
    /// comes first; a fixed cell that runs out of time fails).
    #[arg(long, default_value_t = 3 * 3600)]
    budget: u64,
    /// Seed of every run (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// CPUs per boot.
    #[arg(long, default_value_t = 4)]
    smp: usize,
    /// Boots run at the same time.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Print the plan and exit.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct ExploreArgs {
    #[arg(long, value_enum, default_value_t = ArchSel::All)]
    arch: ArchSel,
    /// The row (default: every row, one boot each), variant and flush
    /// strategy.
    #[command(flatten)]
    cells: CellArgs,
    /// At most K preemptions per schedule, bounds 0 to K each run to
    /// its end in turn (default: 2, then higher while the space is small
    /// enough to run every ordering).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(0..=16))]
    bound: Option<u32>,
    /// CPUs per boot.
    #[arg(long, default_value_t = 4)]
    smp: usize,
    /// Seconds one row's boot may take (each cell stops exploring at its
    /// row's natural time budget, minutes; the kernel catches a hung
    /// schedule itself).
    #[arg(long, default_value_t = EXPLORE_TIMEOUT_S)]
    timeout: u64,
    /// Echo the raw console while it runs.
    #[arg(long, short)]
    verbose: bool,
    /// Extra kernel command-line words.
    #[arg(last = true)]
    kernel_args: Vec<String>,
}

/// The default time an explore boot may take: a cell explores until it
/// has run every schedule within the bound or spent its row's natural time
/// budget (4 minutes), and a row has up to a dozen cells.
const EXPLORE_TIMEOUT_S: u64 = 3600;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ArchSel {
    S390x,
    #[value(name = "x86_64", alias = "x86-64")]
    X86_64,
    All,
}

impl ArchSel {
    fn arches(self) -> Vec<Arch> {
        match self {
            ArchSel::S390x => vec![Arch::S390x],
            ArchSel::X86_64 => vec![Arch::X86_64],
            ArchSel::All => Arch::ALL.to_vec(),
        }
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Architecture to boot.
    #[arg(long, value_enum, default_value_t = ArchSel::All)]
    arch: ArchSel,
    /// Number of CPUs (1 to 64).
    #[arg(long, default_value_t = 4)]
    smp: usize,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// QEMU accelerator: kvm only for the host's own architecture.
    #[arg(long, default_value = "tcg", value_parser = accel_parser())]
    accel: Accel,
    /// Seconds a boot may take before it counts as a hang (default 400: a
    /// `--full` scenario boot runs 10 000 natural iterations per cell,
    /// minutes under TCG; with --mode explore, an hour: each cell explores
    /// up to its row's natural time budget; with --gdb, a day).
    #[arg(long)]
    timeout: Option<u64>,
    /// Also write each race report to a file in this directory
    /// (`<arch>.<row>.<variant>.<mode>.txt`).
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
    /// Start QEMU halted with its gdb stub and print the gdb command that
    /// attaches (one architecture at a time).
    #[arg(long)]
    gdb: bool,
    /// Run only tests whose `suite.case` name matches (comma-separated, `*` wildcards).
    #[arg(long)]
    test: Option<String>,
    /// Race scenarios to run (at the size CI runs them): the row,
    /// variant and flush strategy.
    #[command(flatten)]
    cells: CellArgs,
    /// The plain run: every natural cell at the size CI runs it (10 000
    /// iterations, buggy cells to their first hit) instead of the quick tour.
    #[arg(long)]
    full: bool,
    /// Scenario mode (default: forced and natural; explore only when
    /// asked for).
    #[arg(long, value_parser = ["natural", "forced", "explore"])]
    mode: Option<String>,
    /// Explore mode: at most K preemptions per schedule, bounds 0 to K each run to
    /// its end in turn (default: 2, then higher while the space is small
    /// enough to run every ordering).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(0..=16))]
    bound: Option<u32>,
    /// Forced mode of one row: run this schedule (`role@point,role~point,...`,
    /// as `explore` prints it) instead of the row's own.
    #[arg(long, value_name = "TEXT")]
    schedule: Option<String>,
    /// Seed for randomised runs.
    #[arg(long)]
    seed: Option<u64>,
    /// Echo the raw console while it runs.
    #[arg(long, short)]
    verbose: bool,
    /// Extra kernel command-line words.
    #[arg(last = true)]
    kernel_args: Vec<String>,
}

/// Which race-scenario cells a command runs: `run`'s and `explore`'s
/// `--scenario`, `--variant` and `--flush`.
#[derive(Args, Clone, Default)]
struct CellArgs {
    /// Race scenario (row), or `all`.
    #[arg(long, value_parser = scenario_parser())]
    scenario: Option<String>,
    /// Scenario variant (one of the row's: `cargo xtask list` shows them).
    #[arg(long, value_parser = variant_parser())]
    variant: Option<String>,
    /// Only the cells under this TLB flush strategy (rows with a flush
    /// axis run each variant under every strategy of the architecture).
    #[arg(long, value_parser = ["ipi", "nmi", "ipte", "csp"])]
    flush: Option<String>,
}

impl CellArgs {
    /// The kernel command-line words: `scenario=` (`row` if given, else
    /// `--scenario`'s), `variant=`, `flush=`, each if set.
    fn words(&self, row: Option<&str>) -> Vec<String> {
        let row = row.or(self.scenario.as_deref());
        let mut words = Vec::new();
        words.extend(row.map(|s| format!("scenario={s}")));
        words.extend(self.variant.as_ref().map(|v| format!("variant={v}")));
        words.extend(self.flush.as_ref().map(|f| format!("flush={f}")));
        words
    }

    /// The cells of `row` (`--scenario`'s if `None`) these options select,
    /// in `mode` (or forced and natural).
    fn selection(&self, row: Option<&str>, mode: Option<expected::Mode>) -> expected::Selection {
        expected::Selection {
            row: row.or(self.scenario.as_deref()).map(str::to_string),
            variant: self.variant.clone(),
            flush: self.flush.clone(),
            mode,
        }
    }

    /// A usage error if `--variant` is not a variant of `--scenario`.
    fn validate(&self) -> Result<()> {
        let Some(v) = &self.variant else {
            return Ok(());
        };
        let row = self.scenario.as_deref().unwrap_or("all");
        let mut known: Vec<&str> = expected::CELLS
            .iter()
            .filter(|c| row == "all" || c.row == row)
            .map(|c| c.variant)
            .collect();
        known.sort();
        known.dedup();
        if known.contains(&v.as_str()) {
            return Ok(());
        }
        Err(usage(format!(
            "--variant {v}: not a variant of {row} (known: {})",
            known.join(", ")
        )))
    }
}

impl RunArgs {
    fn cmdline(&self) -> String {
        let mut words = Vec::new();
        if let Some(t) = &self.test {
            words.push(format!("test={t}"));
        }
        words.extend(self.cells.words(None));
        if let Some(m) = &self.mode {
            words.push(format!("mode={m}"));
        }
        if let Some(k) = self.bound {
            words.push(format!("bound={k}"));
        }
        if let Some(t) = &self.schedule {
            words.push(format!("schedule={t}"));
        }
        if let Some(s) = self.seed {
            words.push(format!("seed={s}"));
        }
        words.extend(self.kernel_args.iter().cloned());
        words.join(" ")
    }

    fn config(&self, arch: Arch, kernel: &Path) -> BootConfig {
        let mut c = BootConfig::new(arch, kernel.to_path_buf());
        c.smp = self.smp;
        c.memory_mib = self.memory;
        c.accel = self.accel;
        let default = match (self.gdb, self.mode.as_deref()) {
            (true, _) => 86_400,
            (false, Some("explore")) => EXPLORE_TIMEOUT_S,
            (false, _) => 400,
        };
        c.timeout = Duration::from_secs(self.timeout.unwrap_or(default));
        c.cmdline = self.cmdline();
        c
    }

    /// Checks everything that can be checked before building; every
    /// error is a usage error.
    fn validate(&self) -> Result<()> {
        if self.gdb && self.arch == ArchSel::All {
            return Err(usage(
                "--gdb debugs one kernel: give --arch s390x or --arch x86_64",
            ));
        }
        if self.full && !self.is_plain() {
            return Err(usage(
                "--full is the plain run at CI size; --scenario, --test, --variant, --mode, \
                 --seed and kernel arguments already run what they name at that size",
            ));
        }
        if self.schedule.is_some()
            && (self.cells.scenario.as_deref().is_none_or(|r| r == "all")
                || self.mode.as_deref() != Some("forced"))
        {
            return Err(usage(
                "--schedule replaces one row's forced schedule: give --scenario ROW (not all) \
                 and --mode forced",
            ));
        }
        if self.bound.is_some() && self.mode.as_deref() != Some("explore") {
            return Err(usage(
                "--bound is explore mode's preemption bound: give --mode explore \
                 (or use `cargo xtask explore`)",
            ));
        }
        self.cells.validate()?;
        for arch in self.arch.arches() {
            self.config(arch, Path::new(""))
                .validate_options()
                .map_err(|e| usage(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// Whether this is the plain `cargo xtask run` (with `--full` or not).
    fn is_plain(&self) -> bool {
        self.cells.scenario.is_none()
            && self.test.is_none()
            && self.cells.variant.is_none()
            && self.cells.flush.is_none()
            && self.mode.is_none()
            && self.bound.is_none()
            && self.schedule.is_none()
            && self.seed.is_none()
            && self.kernel_args.is_empty()
    }
}

/// The rows of the expected table and `all`, for `--scenario`.
fn scenario_parser() -> clap::builder::PossibleValuesParser {
    let mut values = vec!["all"];
    values.extend(xtask::expected::rows());
    clap::builder::PossibleValuesParser::new(values)
}

/// Every variant name of the expected table, for `--variant`.
fn variant_parser() -> clap::builder::PossibleValuesParser {
    let mut values: Vec<&'static str> = Vec::new();
    for c in expected::CELLS.iter() {
        if !values.contains(&c.variant) {
            values.push(c.variant);
        }
    }
    clap::builder::PossibleValuesParser::new(values)
}

/// `tcg` or `kvm`, for `--accel`.
fn accel_parser() -> impl clap::builder::TypedValueParser<Value = Accel> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["tcg", "kvm"])
        .map(|s| s.parse::<Accel>().expect("one of the possible values"))
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // `--version` carries the git revision, read when the driver runs.
    let version: &'static str = Box::leak(
        format!("{} ({})", env!("CARGO_PKG_VERSION"), xtask::git_revision()).into_boxed_str(),
    );
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match real_main(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(xtask::exit::USAGE)
            } else {
                ExitCode::from(xtask::exit::HARNESS)
            }
        }
    }
}

/// The exit code of a finished run: pass, or a test or cell failed.
fn verdict(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(xtask::exit::FAILED)
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Action::Build { arch } => {
            setup::ensure(&Needs {
                toolchain: true,
                ..Needs::default()
            })?;
            for a in arch.arches() {
                let path = kbuild::build(a, false)?;
                println!("{a}: {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Run(args) => run(&args),
        Action::Explore(args) => explore(&args),
        Action::Soak(args) => soak(&args),
        Action::QemuCmd(args) => {
            args.validate()?;
            for a in args.arch.arches() {
                let c = args.config(a, &kbuild::kernel_path(a));
                let file = xtask::qemu::write_cmdline_file(&c.cmdline)?;
                println!("{}", c.qemu_command_line(&file));
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Test {
            arch,
            no_lint,
            junit,
            test_args,
        } => {
            let arches = arch.arches();
            setup::ensure(&Needs {
                toolchain: true,
                lint: !no_lint,
                qemu: arches.clone(),
                gdb: true,
            })?;
            if !no_lint {
                if let Err(e) = lint() {
                    eprintln!("error: {e:#}");
                    return Ok(verdict(false));
                }
            }
            let junit = junit.or_else(|| {
                std::env::var("CI")
                    .is_ok_and(|v| !v.is_empty() && v != "false")
                    .then(|| std::path::PathBuf::from("target/ci/junit.xml"))
            });
            if let Some(dir) = junit.as_deref().and_then(Path::parent) {
                std::fs::create_dir_all(dir)?;
            }
            test(&arches, &test_args, junit.as_deref())
        }
        Action::Bench(args) => bench(&args),
        Action::List { arch, json } => list(arch, json),
        Action::Lint => {
            setup::ensure(&Needs {
                toolchain: true,
                lint: true,
                ..Needs::default()
            })?;
            Ok(match lint() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    verdict(false)
                }
            })
        }
        Action::Setup => {
            let needs = Needs::all();
            let did = setup::ensure(&needs)?;
            for line in &did {
                println!("setup: {line}");
            }
            if did.is_empty() {
                println!("setup: nothing to install");
            }
            for line in setup::describe(&needs)? {
                println!("  {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(args: &RunArgs) -> Result<ExitCode> {
    args.validate()?;
    let arches = args.arch.arches();
    setup::ensure(&needs_for_boots(&arches))?;
    if args.gdb {
        return run_gdb(args, arches[0]);
    }
    let mut kernels = Vec::new();
    for &arch in &arches {
        kernels.push((arch, kbuild::kernel(arch, true)?));
    }
    if args.is_plain() && !args.full {
        return tour(args, &kernels);
    }
    // `--full` boots the self-tests and then every scenario cell at CI
    // size; `--scenario` boots only the scenarios asked for.
    let plain = args.is_plain();
    let mut summary = Vec::new();
    for (arch, kernel) in kernels {
        if args.cells.scenario.is_none() {
            let config = args.config(arch, &kernel);
            let boot = boot_and_print(args, &config)?;
            print_boot(&boot);
            summary.push((arch, "self-tests", boot.verdict().passed));
        }
        if args.cells.scenario.is_some() || plain {
            let row = args.cells.scenario.as_deref().unwrap_or("all");
            let mode = args.mode.as_deref().and_then(expected::Mode::from_name);
            let sel = args.cells.selection(Some(row), mode);
            let mut config = args.config(arch, &kernel);
            if plain {
                config.cmdline = "scenario=all".into();
            }
            let boot = boot_and_print(args, &config)?;
            let ok = print_scenarios(&boot, &sel, args);
            summary.push((arch, "scenarios", ok));
        }
    }
    println!();
    let line: Vec<String> = summary
        .iter()
        .map(|(a, what, ok)| format!("{a} {what} {}", if *ok { "PASS" } else { "FAIL" }))
        .collect();
    println!("summary: {}", line.join(", "));
    Ok(verdict(summary.iter().all(|(_, _, ok)| *ok)))
}

/// `cargo xtask explore`: one `mode=explore` boot per row and
/// architecture; each cell's line (schedules, pruned, buggy, time, how far
/// the exploration went) as its boot ends, judged by the expected table,
/// with the proofs schedules were pruned by and the replay line of the
/// first buggy schedule.
fn explore(args: &ExploreArgs) -> Result<ExitCode> {
    args.cells.validate()?;
    let rows: Vec<&str> = match args.cells.scenario.as_deref() {
        Some(r) if r != "all" => vec![r],
        _ => expected::rows(),
    };
    let sel_for = |row: &str| {
        args.cells
            .selection(Some(row), Some(expected::Mode::Explore))
    };
    let arches = args.arch.arches();
    if !rows
        .iter()
        .any(|r| arches.iter().any(|&a| expected::has_cells(a, &sel_for(r))))
    {
        return Err(usage(format!(
            "the expected table has no explore cell for {}{}{} on {}",
            rows.join(", "),
            args.cells
                .variant
                .as_deref()
                .map_or(String::new(), |v| format!(" variant {v}")),
            args.cells
                .flush
                .as_deref()
                .map_or(String::new(), |f| format!(" under flush {f}")),
            arches
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let timeout = Duration::from_secs(args.timeout);
    for &arch in &arches {
        let mut c = BootConfig::new(arch, PathBuf::new());
        c.smp = args.smp;
        c.timeout = timeout;
        c.validate_options().map_err(|e| usage(format!("{e:#}")))?;
    }
    setup::ensure(&needs_for_boots(&arches))?;
    let mut kernels = Vec::new();
    for &arch in &arches {
        kernels.push((arch, kbuild::kernel(arch, true)?));
    }
    println!(
        "explore: every ordering of each row's race points and synchronisation events, one schedule per iteration ({})",
        args.bound.map_or(
            "bounds 0, 1, 2, then higher while the space is small enough to run every ordering".into(),
            |k| format!("at most {k} preemptions per schedule")
        )
    );
    let mut progress = xtask::progress::Progress::new();
    let (mut cells, mut agree, mut boots, mut failed_boots) = (0usize, 0usize, 0usize, 0usize);
    let mut mismatches = Vec::new();
    for (arch, kernel) in &kernels {
        progress.println(&format!("== {arch}: {} CPUs", args.smp));
        let mut header = false;
        for row in &rows {
            let sel = sel_for(row);
            if !expected::has_cells(*arch, &sel) {
                continue;
            }
            let mut words = args.cells.words(Some(row));
            words.push("mode=explore".into());
            words.extend(args.bound.map(|k| format!("bound={k}")));
            words.extend(args.kernel_args.iter().cloned());
            let mut config = BootConfig::new(*arch, kernel.clone());
            config.smp = args.smp;
            config.timeout = timeout;
            config.cmdline = words.join(" ");
            progress.update(&format!(
                "[{}] {arch} {row}: exploring",
                xtask::soak::human_secs(progress.elapsed().as_secs_f64())
            ));
            let boot = boot_echoing(&config, args.verbose, &mut progress)?;
            boots += 1;
            if !header {
                header = true;
                progress.println(&format!("   {}", expected::EXPLORE_HEADER));
            }
            let lines = expected::compare(
                *arch,
                &Platform::of(&boot.ktap),
                &sel,
                &expected::observed(&boot.ktap),
            );
            for l in &lines {
                cells += 1;
                agree += usize::from(l.ok);
                progress.println(&format!("   {l}"));
                if let Some(x) = l.observed.as_ref().and_then(|o| o.explore.as_ref()) {
                    for text in explored_lines(*arch, l, x) {
                        progress.println(&text);
                    }
                }
                if !l.ok {
                    mismatches.push(format!("{arch} {} {}", l.row, l.label()));
                }
            }
            progress.println(&format!(
                "   {row}: {} cells, boot {:.1} s",
                lines.len(),
                boot.elapsed.as_secs_f64()
            ));
            if !boot.verdict().passed {
                failed_boots += 1;
                progress.println(&boot.failure_report());
            }
        }
    }
    progress.finish();
    println!();
    println!(
        "summary: {agree} of {cells} explore cells as expected, {failed_boots} boots failed, {boots} boots in {:.0} s",
        progress.elapsed().as_secs_f64()
    );
    for m in &mismatches {
        println!("  MISMATCH: {m}");
    }
    Ok(verdict(mismatches.is_empty() && failed_boots == 0))
}

/// What an explore cell's line leaves out, indented below it: the
/// schedules that ran to their end, the pruned ones grouped by the waits
/// of their cycles, and the replay line of the first buggy schedule.
fn explored_lines(arch: Arch, l: &expected::Line, x: &expected::Explored) -> Vec<String> {
    let mut out = Vec::new();
    let mut head = format!(
        "       complete {}, max {} decisions",
        x.complete, x.max_decisions
    );
    if let Some((b, n)) = x.gave_up {
        head.push_str(&format!(", bound {b} given up after {n} schedules"));
    }
    if x.divergent > 0 {
        head.push_str(&format!(", {} divergent", x.divergent));
    }
    if x.truncated > 0 {
        head.push_str(&format!(
            ", {} truncated (cut at the most decisions, then run free)",
            x.truncated
        ));
    }
    out.push(head);
    let groups = x.pruned_by_waits();
    if !groups.is_empty() {
        let text: Vec<String> = groups
            .iter()
            .map(|(waits, n, proofs)| match proofs {
                1 => format!("{n} by {waits}"),
                _ => format!("{n} by {waits} ({proofs} places held)"),
            })
            .collect();
        out.push(format!("       pruned: {}", text.join("; ")));
    }
    if let Some(t) = &x.schedule {
        out.push(format!(
            "       replay: cargo xtask run --arch {arch} --scenario {} --variant {}{} --mode forced --schedule {}",
            l.row,
            l.variant,
            l.flush
                .as_deref()
                .map_or(String::new(), |f| format!(" --flush {f}")),
            xtask::qemu::shell_quote(t)
        ));
    }
    out
}

/// What booting `arches` needs: QEMU, and the toolchain unless
/// `QUIESCE_KERNELS` names prebuilt kernels.
fn needs_for_boots(arches: &[Arch]) -> Needs {
    let mut needs = Needs::boot(arches);
    needs.toolchain = arches.iter().any(|&a| kbuild::prebuilt(a).is_none());
    needs
}

/// The plain `cargo xtask run`: the quick tour ([`xtask::tour`]), each
/// cell's line printed as soon as its boot ends, a progress line on a
/// terminal.
fn tour(args: &RunArgs, kernels: &[(Arch, PathBuf)]) -> Result<ExitCode> {
    use xtask::tour::{self, What};
    let arches: Vec<Arch> = kernels.iter().map(|(a, _)| *a).collect();
    let steps = tour::plan(&arches);
    let total_cells: usize = steps.iter().map(|s| s.cells.len()).sum();
    println!(
        "quick tour: the self-tests, then {total_cells} cells of the expected table (forced; natural: \
         buggy to the first hit, the others {} ms each; `--full` for the CI-size runs)",
        tour::CLEAN_BUDGET_MS
    );
    let mut progress = xtask::progress::Progress::new();
    let mut cells_done = 0usize;
    let mut mismatches: Vec<String> = Vec::new();
    let mut failed_boots = 0usize;
    let mut current_arch = None;
    let mut header_for = None;
    let mut platform_shown: Option<(Arch, String)> = None;
    let mut skips = SkipGroup::default();
    let started = std::time::Instant::now();
    for (i, step) in steps.iter().enumerate() {
        let kernel = &kernels
            .iter()
            .find(|(a, _)| *a == step.arch)
            .expect("a kernel per architecture")
            .1;
        if current_arch != Some(step.arch) {
            if let Some(text) = skips.flush() {
                progress.println(&text);
            }
            current_arch = Some(step.arch);
            progress.println(&format!(
                "== {}: {} CPUs, {} MiB",
                step.arch, args.smp, args.memory
            ));
        }
        let left: Duration = steps[i..].iter().map(|s| s.estimate).sum();
        let what = match &step.what {
            What::SelfTests => "self-tests".to_string(),
            What::ForcedRow(row) => format!("{row} forced"),
            What::Natural(c) => format!("{}:{} natural", c.row, c.label()),
        };
        progress.update(&format!(
            "[{}] cell {} of {total_cells}: {} {what}; about {} s left",
            xtask::soak::human_secs(started.elapsed().as_secs_f64()),
            cells_done + step.cells.len().min(1),
            step.arch,
            left.as_secs()
        ));
        let mut config = args.config(step.arch, kernel);
        config.cmdline = step.cmdline.clone();
        let boot = boot_echoing(&config, args.verbose, &mut progress)?;
        // What the machine does that the races need, once per architecture
        // and again if a boot measures otherwise.
        let platform = Platform::of(&boot.ktap);
        let described = platform.describe();
        if platform_shown.as_ref() != Some(&(step.arch, described.clone())) {
            progress.println(&format!("   platform: {}", platform.describe_timed()));
            platform_shown = Some((step.arch, described));
        }
        if step.what == What::SelfTests {
            let v = boot.verdict();
            let cases = boot.ktap.cases();
            let skipped = cases.iter().filter(|(_, r)| r.skipped()).count();
            let failed: Vec<&str> = cases
                .iter()
                .filter(|(_, r)| !r.passed())
                .map(|(n, _)| n.as_str())
                .collect();
            progress.println(&format!(
                "   self-tests: {} cases, {} ok, {skipped} skip, {} failed in {:.1} s{}",
                cases.len(),
                cases.len() - skipped - failed.len(),
                failed.len(),
                boot.elapsed.as_secs_f64(),
                if v.passed { "" } else { "  FAILED" }
            ));
            if !v.passed {
                failed_boots += 1;
                mismatches.push(format!("{} self-tests", step.arch));
                progress.println(&boot.failure_report());
            }
            continue;
        }
        if let Some(dir) = &args.report_dir {
            for f in expected::write_race_reports(dir, step.arch, &boot.ktap)
                .with_context(|| format!("writing race reports to {}", dir.display()))?
            {
                progress.println(&format!("   race report written to {}", f.display()));
            }
        }
        let observed = expected::observed(&boot.ktap);
        let lines = expected::compare(step.arch, &platform, &step.selection(), &observed);
        let reports = expected::race_reports(&boot.ktap);
        if header_for != Some(step.arch) {
            header_for = Some(step.arch);
            progress.println(&format!("   {}", expected::HEADER));
        }
        for l in lines.iter().filter(|l| l.verdict() == "skip") {
            if let Some(text) = skips.add(l) {
                progress.println(&text);
            }
        }
        for l in lines.iter().filter(|l| l.verdict() != "skip") {
            if let Some(text) = skips.flush() {
                progress.println(&text);
            }
            progress.println(&format!("   {l}"));
            // The one line that says what happened: the broken invariant,
            // the cycle that made the schedule impossible, or the fix's wait.
            let case = l.case();
            if let Some((_, report)) = reports.iter().find(|(n, _)| *n == case) {
                if let Some(first) = report.iter().find(|d| {
                    d.starts_with("race: BUG")
                        || d.starts_with("cycle:")
                        || d.starts_with("held by the fix:")
                        || d.starts_with("hang:")
                }) {
                    progress.println(&format!("       # {first}"));
                }
            }
            if !l.ok {
                mismatches.push(format!(
                    "{} {} {} {}",
                    step.arch,
                    l.row,
                    l.variant,
                    l.mode.name()
                ));
            }
        }
        cells_done += step.cells.len();
        if !boot.verdict().passed {
            failed_boots += 1;
            progress.println(&boot.failure_report());
        }
    }
    if let Some(text) = skips.flush() {
        progress.println(&text);
    }
    progress.finish();
    println!();
    println!(
        "summary: {} of {total_cells} cells as expected, {failed_boots} boots failed, {} boots in {:.0} s",
        total_cells - mismatches.iter().filter(|m| !m.ends_with("self-tests")).count(),
        steps.len(),
        started.elapsed().as_secs_f64()
    );
    for m in &mismatches {
        println!("  MISMATCH or FAILED: {m}");
    }
    Ok(verdict(mismatches.is_empty() && failed_boots == 0))
}

/// Boots `config`; with `verbose`, then prints its raw console above the
/// progress line.
fn boot_echoing(
    config: &BootConfig,
    verbose: bool,
    progress: &mut xtask::progress::Progress,
) -> Result<Boot> {
    let mut echo = Vec::new();
    let boot = Boot::run(config, |line| {
        if verbose {
            echo.push(format!("   | {line}"));
        }
    })?;
    for l in echo {
        progress.println(&l);
    }
    Ok(boot)
}

/// Skipped cells of one row, mode and reason, printed as one line: a cell
/// that does not exist on an architecture says so once, not per variant.
#[derive(Default)]
struct SkipGroup {
    /// Row, mode, reason, and the variants so far.
    open: Option<(String, expected::Mode, String, Vec<String>)>,
}

impl SkipGroup {
    /// Adds a skipped cell; returns the finished group's line if this cell
    /// starts another.
    fn add(&mut self, l: &expected::Line) -> Option<String> {
        let note = l
            .observed
            .as_ref()
            .and_then(|o| o.note.clone())
            .unwrap_or_default();
        if let Some((row, mode, n, variants)) = &mut self.open {
            if *row == l.row && *mode == l.mode && *n == note {
                variants.push(l.variant.clone());
                return None;
            }
        }
        let done = self.flush();
        self.open = Some((l.row.clone(), l.mode, note, vec![l.variant.clone()]));
        done
    }

    /// The open group's line, if any.
    fn flush(&mut self) -> Option<String> {
        let (row, mode, note, variants) = self.open.take()?;
        Some(format!(
            "   {row:<23} {:<15} {:<8} skip: {} ({note})",
            "-",
            mode.name(),
            variants.join(", ")
        ))
    }
}

/// `run --gdb`: one boot, halted until gdb continues it; the console is
/// echoed, then the results are printed as usual.
fn run_gdb(args: &RunArgs, arch: Arch) -> Result<ExitCode> {
    let kernel = kbuild::kernel(arch, true)?;
    let mut config = args.config(arch, &kernel);
    config.kernel = kernel.clone();
    config.gdb_port = Some(xtask::gdb::free_port()?);
    let port = config.gdb_port.expect("set above");
    let gdb = xtask::gdb::gdb_command(arch, &kernel, port);
    println!("QEMU starts halted with its gdb stub on 127.0.0.1:{port}. Attach with:");
    println!();
    println!("    {}", xtask::gdb::shell_line(&gdb));
    println!();
    println!(
        "then e.g. `break quiesce_kernel::cmdline::Cmdline::parse` and `continue` ({}: Debian package gdb-multiarch).",
        xtask::gdb::GDB
    );
    let boot = Boot::run(&config, |line| println!("   | {line}"))?;
    if args.cells.scenario.is_some() {
        let sel = args.cells.selection(
            None,
            args.mode.as_deref().and_then(expected::Mode::from_name),
        );
        return Ok(if print_scenarios(&boot, &sel, args) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    print_boot(&boot);
    Ok(if boot.verdict().passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn boot_and_print(args: &RunArgs, config: &BootConfig) -> Result<Boot> {
    println!(
        "== {}: {} CPUs, {} MiB, cmdline {:?}",
        config.arch, config.smp, config.memory_mib, config.cmdline
    );
    let verbose = args.verbose;
    Boot::run(config, |line| {
        if verbose {
            println!("   | {line}");
        }
    })
}

/// Prints a scenario boot: the race reports, then expected against observed
/// for every selected cell (a schedule given with `--schedule` is reported,
/// not judged: [`expected::compare_replay`]). Returns whether the boot
/// passed and every cell agrees with the table.
fn print_scenarios(boot: &Boot, sel: &expected::Selection, args: &RunArgs) -> bool {
    let report_dir = args.report_dir.as_deref();
    let observed = expected::observed(&boot.ktap);
    if let Some(dir) = report_dir {
        match expected::write_race_reports(dir, boot.config.arch, &boot.ktap) {
            Ok(files) => {
                for f in files {
                    println!("   race report written to {}", f.display());
                }
            }
            Err(e) => {
                eprintln!("error: writing race reports to {}: {e}", dir.display());
                return false;
            }
        }
    }
    for (name, report) in expected::race_reports(&boot.ktap) {
        println!("   {name}");
        for d in report {
            println!("       # {d}");
        }
    }
    let platform = Platform::of(&boot.ktap);
    println!("   platform: {}", platform.describe_timed());
    let lines = if args.schedule.is_some() {
        expected::compare_replay(boot.config.arch, sel, &observed)
    } else {
        expected::compare(boot.config.arch, &platform, sel, &observed)
    };
    let mut header = None;
    for l in &lines {
        if header != Some(l.header()) {
            header = Some(l.header());
            println!("   {}", l.header());
        }
        println!("   {l}");
        if let Some(x) = l.observed.as_ref().and_then(|o| o.explore.as_ref()) {
            for text in explored_lines(boot.config.arch, l, x) {
                println!("{text}");
            }
        }
    }
    if lines.is_empty() {
        println!("   (the expected table has no selected cell for this architecture)");
    }
    let v = boot.verdict();
    if !v.passed {
        print!("{}", boot.failure_report());
    }
    let agree = lines.iter().all(|l| l.ok);
    println!(
        "   scenarios: {} of {} cells as expected{}",
        lines.iter().filter(|l| l.ok).count(),
        lines.len(),
        if v.passed { "" } else { "; the boot FAILED" }
    );
    v.passed && agree && !lines.is_empty()
}

/// Prints one boot as a readable table of results.
fn print_boot(boot: &Boot) {
    let doc = &boot.ktap;
    if let Some(online) = doc
        .case("boot.cpus_online")
        .and_then(|r| r.diag_value("cpus_online").map(str::to_string))
    {
        println!("   CPUs online: {online} of {}", boot.config.smp);
    }
    for d in &doc.diagnostics {
        println!("   # {d}");
    }
    for (name, r) in doc.cases() {
        let word = match (&r.directive, r.ok) {
            (Some(xtask::ktap::Directive::Skip(why)), true) => format!("skip  ({why})"),
            (_, true) => "ok".to_string(),
            (_, false) => "FAIL".to_string(),
        };
        println!("   {name:<40} {word}");
        for d in &r.diagnostics {
            println!("       # {d}");
        }
        if !r.ok && r.diagnostics.is_empty() {
            if let Some(why) = doc.failure_reason(&name, &r) {
                println!("       # {why}");
            }
        }
    }
    let first = boot
        .first_ktap_line
        .map_or("never".into(), |d| format!("{} ms", d.as_millis()));
    match &boot.status {
        Some(s) => println!(
            "   status: {} ({}) in {:.2} s, first KTAP line after {first}",
            if s.pass { "pass" } else { "fail" },
            s.detail,
            boot.elapsed.as_secs_f64()
        ),
        None => println!("   status: none after {:.2} s", boot.elapsed.as_secs_f64()),
    }
    let v = boot.verdict();
    if !v.passed {
        print!("{}", boot.failure_report());
    }
}

/// `list`: builds the kernels, boots each with `list` and prints what they
/// have (`xtask::catalogue`).
fn list(arch: ArchSel, json: bool) -> Result<ExitCode> {
    let arches = arch.arches();
    setup::ensure(&needs_for_boots(&arches))?;
    let catalogue = xtask::catalogue::from_kernels(&arches)?;
    if json {
        println!("{}", catalogue.json()?);
    } else {
        print!("{}", catalogue.text());
    }
    // A kernel that refuses a variant the table expects to run (or runs
    // one it marks `skip`) is a failed check, not a listing.
    Ok(verdict(catalogue.problems.is_empty()))
}

fn bench(args: &BenchArgs) -> Result<ExitCode> {
    use xtask::bench;
    if args.runs == 0 {
        return Err(usage("--runs must be at least 1"));
    }
    let old = match &args.compare {
        Some(p) => Some(bench::Report::load(p)?),
        None => None,
    };
    let report = match &args.from {
        Some(p) => bench::Report::load(p)?,
        None => {
            let arches = args.arch.arches();
            setup::ensure(&needs_for_boots(&arches))?;
            let opts = bench::Options {
                arches,
                runs: args.runs,
                race_runs: args.race_runs,
                smp: args.smp,
                curve_runs: args.curve_runs,
            };
            bench::run(&opts, &mut xtask::progress::Progress::new())?
        }
    };
    let cmp = old
        .as_ref()
        .map_or_else(Vec::new, |o| bench::compare(o, &report));
    println!("{}; min / median / max", report.conditions);
    print!("{}", bench::text_table(&report, &cmp));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| kbuild::target_dir().join("bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("bench.json");
    let html = out.join("bench.html");
    if args.from.as_deref() != Some(json.as_path()) {
        report.save(&json)?;
    }
    let label = args.compare.as_ref().map(|p| p.display().to_string());
    std::fs::write(&html, bench::html(&report, &cmp, label.as_deref())?)
        .with_context(|| format!("writing {}", html.display()))?;
    println!("report: {} and {}", json.display(), html.display());
    let missed = bench::missed_targets(&report);
    for f in &missed {
        println!(
            "target: {} {}: {}: {}",
            f.arch,
            f.group,
            f.name,
            f.target_note().unwrap_or_default()
        );
    }
    let worse = bench::regressions(&cmp);
    for c in &worse {
        println!(
            "regression: {} {}: {}: median {} -> {} (x{:.2}), the ranges apart",
            c.arch,
            c.group,
            c.name,
            bench::human(c.old),
            bench::human(c.new),
            c.ratio
        );
    }
    for f in &report.failures {
        println!("FAILED boot: {f}");
    }
    let failed = !report.failures.is_empty()
        || (args.fail_on_regression && !worse.is_empty())
        || (args.fail_on_target && !missed.is_empty());
    Ok(verdict(!failed))
}

/// Runs a command in the workspace root, failing with `what` if it fails.
fn run_checked(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.current_dir(xtask::workspace_root()).status()?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `-p` arguments for the backends' host-testable libraries (page-table formats).
fn backend_lib_packages() -> Vec<String> {
    Arch::ALL
        .iter()
        .flat_map(|a| ["-p".to_string(), a.package().to_string()])
        .collect()
}

/// rustfmt and clippy over every crate, each kernel for its own target.
fn lint() -> Result<()> {
    println!("lint: rustfmt");
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run_checked(fmt, "cargo fmt --check (run `cargo fmt --all`)")?;
    println!("lint: clippy (host crates)");
    let mut host = cargo();
    host.args(["clippy", "--quiet", "--all-targets", "--", "-D", "warnings"]);
    run_checked(host, "clippy on the host crates")?;
    println!("lint: clippy (backend libraries on the host)");
    let mut libs = cargo();
    libs.args(["clippy", "--quiet", "--lib", "--tests"])
        .args(backend_lib_packages());
    libs.args(["--", "-D", "warnings"]);
    run_checked(libs, "clippy on the backend libraries")?;
    for arch in Arch::ALL {
        println!("lint: clippy ({arch} kernel)");
        let mut k = kbuild::build_command(arch);
        // `build_command` builds; clippy takes the same arguments.
        let args: Vec<_> = k.get_args().skip(1).map(|a| a.to_os_string()).collect();
        k = cargo();
        k.arg("clippy")
            .arg("--quiet")
            .args(args)
            .args(["--", "-D", "warnings"]);
        // Its output without rustc's notice on the s390x `backchain`
        // target feature (see `kbuild::without_backchain_notice`).
        let out = k
            .current_dir(xtask::workspace_root())
            .stderr(std::process::Stdio::piped())
            .output()?;
        eprint!(
            "{}",
            kbuild::without_backchain_notice(&String::from_utf8_lossy(&out.stderr))
        );
        if !out.status.success() {
            bail!("clippy on the {arch} kernel failed ({})", out.status);
        }
    }
    Ok(())
}

fn test(arches: &[Arch], test_args: &[String], junit: Option<&Path>) -> Result<ExitCode> {
    // The KTAP of every boot goes to `<FILE>.ktap/`, emptied first.
    let ktap_dir = junit.map(|f| {
        let mut d = f.as_os_str().to_owned();
        d.push(".ktap");
        PathBuf::from(d)
    });
    if let Some(d) = &ktap_dir {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("emptying {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for &a in arches {
        println!("building the {a} kernel");
        kbuild::kernel(a, true)?;
    }
    let names: Vec<&str> = arches.iter().map(|a| a.name()).collect();
    // With `--junit` every test binary prints libtest's JSON events, which
    // the reader turns into cases (and the usual lines on the console).
    let mut reader = junit.map(|_| xtask::junit::LibtestReader::default());
    let json_args: &[&str] = if junit.is_some() {
        &xtask::junit::LIBTEST_JSON_ARGS
    } else {
        &[]
    };
    // The backends' page-table formats, tested on the host.
    let mut cmd = cargo();
    cmd.current_dir(xtask::workspace_root())
        .args(["test", "--no-fail-fast", "--lib"])
        .args(backend_lib_packages())
        .arg("--")
        .args(json_args);
    let status = run_tests_with_progress(cmd, None, reader.as_mut())?;
    let backend_ok = status.success();
    if !backend_ok {
        eprintln!("error: backend library tests failed ({status})");
    }
    let mut cmd = cargo();
    cmd.current_dir(xtask::workspace_root())
        .args(["test", "--no-fail-fast"])
        .arg("--")
        .args(test_args)
        .args(json_args)
        .env("QUIESCE_TEST_ARCHES", names.join(","));
    if let Some(d) = &ktap_dir {
        cmd.env(xtask::junit::KTAP_DIR_ENV, std::path::absolute(d)?);
    }
    let status = run_tests_with_progress(cmd, Some(test_args), reader.as_mut())?;
    if let (Some(file), Some(d), Some(reader)) = (junit, &ktap_dir, &reader) {
        let boots = xtask::junit::read_dir(d)?;
        std::fs::write(file, xtask::junit::render(&reader.binaries, &boots))
            .with_context(|| format!("writing {}", file.display()))?;
        let tests: usize = reader.binaries.iter().map(|b| b.cases.len()).sum();
        println!(
            "junit: {} ({tests} tests, {} boots; their KTAP in {})",
            file.display(),
            boots.len(),
            d.display()
        );
    }
    if !status.success() {
        eprintln!("error: tests failed ({status})");
    }
    Ok(verdict(backend_ok && status.success()))
}

/// Runs `cargo test` (`cmd`), echoing its output, with a progress line:
/// tests finished of the total that `--list` counts with `list_args` (if
/// given), failures, time left. With a `reader` (`--junit`), cargo's
/// stderr joins its stdout in one pipe, so that cargo's `Running` lines
/// come before the events of their binary, and every line goes through the
/// reader.
fn run_tests_with_progress(
    mut cmd: Command,
    list_args: Option<&[String]>,
    mut reader: Option<&mut xtask::junit::LibtestReader>,
) -> Result<std::process::ExitStatus> {
    use std::io::BufRead;
    use std::process::Stdio;
    let total = list_args.map_or(0, |test_args| {
        let mut list = cargo();
        list.current_dir(xtask::workspace_root())
            .args(["test", "--quiet", "--no-fail-fast"])
            .arg("--")
            .args(test_args)
            .args(["--list", "--format", "terse"])
            .stderr(Stdio::null());
        list.output().map_or(0, |o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.ends_with(": test"))
                .count()
        })
    });
    let (out, mut child) = if reader.is_some() {
        let (out, writer) = std::io::pipe()?;
        cmd.stdout(writer.try_clone()?).stderr(writer);
        let child = cmd.spawn()?;
        // The command holds the pipe's write ends: drop them, or the read
        // never ends.
        drop(cmd);
        (Box::new(out) as Box<dyn std::io::Read>, child)
    } else {
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let out = child.stdout.take().expect("stdout is piped");
        (Box::new(out) as Box<dyn std::io::Read>, child)
    };
    let mut progress = xtask::progress::Progress::new();
    let (mut done, mut failed) = (0usize, 0usize);
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        let shown = match reader.as_deref_mut() {
            Some(r) => r.line(&line),
            None => vec![line],
        };
        for line in shown {
            progress.println(&line);
            if line.starts_with("test ") {
                // libtest-mimic adds a runtime skip's reason: `ignored (why)`.
                if line.ends_with(" ok") || line.contains(" ... ignored") {
                    done += 1;
                } else if line.ends_with(" FAILED") {
                    done += 1;
                    failed += 1;
                } else {
                    continue;
                }
                let extra = if failed > 0 {
                    format!("{failed} FAILED")
                } else {
                    String::new()
                };
                progress.update(&progress.status("test", done, total.max(done), &extra));
            }
        }
    }
    progress.finish();
    let status = child.wait()?;
    println!(
        "{}",
        progress.status("test", done, total.max(done), &format!("{failed} failed"))
    );
    Ok(status)
}

/// Progress of a soak, shared by its worker threads: the boots done, the
/// hits, and each running boot's iterations, shown through [`Progress`].
///
/// [`Progress`]: xtask::progress::Progress
struct SoakProgress {
    display: xtask::progress::Progress,
    total: usize,
    done: usize,
    hits: u64,
    /// Per running boot: label, iterations so far, target, elapsed ms.
    running: Vec<Option<(String, u64, u64, u64)>>,
}

impl SoakProgress {
    fn show(&mut self) {
        let mut parts = Vec::new();
        let mut left = 0.0f64;
        for (label, it, target, ms) in self.running.iter().flatten() {
            let rate = *it as f64 / (*ms as f64 / 1e3).max(1e-3);
            if rate > 0.0 {
                left = left.max((target.saturating_sub(*it)) as f64 / rate);
            }
            parts.push(format!("{label} {it}/{target}"));
        }
        let extra = format!(
            "{} hits; running: {}{}",
            self.hits,
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join(", ")
            },
            if left > 0.0 {
                format!(" (this boot: ~{} left)", xtask::soak::human_secs(left))
            } else {
                String::new()
            }
        );
        let line = self.display.status("soak", self.done, self.total, &extra);
        self.display.update(&line);
    }

    /// Prints a whole line above the status line.
    fn say(&mut self, text: &str) {
        self.display.println(text);
    }
}

fn soak(args: &SoakArgs) -> Result<ExitCode> {
    use std::sync::Mutex;
    use xtask::soak::{judge, plan, Judgement, SoakResult};
    if args.jobs == 0 {
        return Err(usage("--jobs must be at least 1"));
    }
    if args.fixed_iterations == 0 || args.buggy_iterations == 0 {
        return Err(usage("iteration counts must be at least 1"));
    }
    if !(1..=86_400).contains(&args.budget) {
        return Err(usage(format!(
            "--budget {}: 1 to 86400 seconds",
            args.budget
        )));
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let arches = args.arch.arches();
    let sel = expected::Selection {
        row: args.scenario.clone(),
        variant: args.variant.clone(),
        flush: None,
        mode: None,
    };
    if let Some(row) = &args.scenario {
        if row != "all" && !expected::CELLS.iter().any(|c| c.row == row) {
            let mut rows: Vec<&str> = expected::CELLS.iter().map(|c| c.row).collect();
            rows.dedup();
            return Err(usage(format!(
                "unknown scenario '{row}' (known: {})",
                rows.join(", ")
            )));
        }
    }
    let runs = plan(
        &arches,
        &sel,
        args.fixed_iterations,
        args.buggy_iterations,
        args.budget,
        seed,
    );
    if runs.is_empty() {
        return Err(usage("no natural cell matches the selection"));
    }
    println!(
        "soak: {} boots, seed {seed}, {} CPUs, {} at a time; fixed cells {} iterations with delays, buggy cells {} iterations with and without",
        runs.len(),
        args.smp,
        args.jobs,
        args.fixed_iterations,
        args.buggy_iterations
    );
    if args.dry_run {
        for r in &runs {
            println!("   {}", r.repeat_command(args.smp));
        }
        return Ok(ExitCode::SUCCESS);
    }
    setup::ensure(&needs_for_boots(&arches))?;
    let mut kernels = std::collections::HashMap::new();
    for &a in &arches {
        kernels.insert(a, kbuild::kernel(a, true)?);
    }
    const PROGRESS_S: u64 = 10;
    let progress = Mutex::new(SoakProgress {
        display: xtask::progress::Progress::new(),
        total: runs.len(),
        done: 0,
        hits: 0,
        running: vec![None; args.jobs],
    });
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<Option<(SoakResult, Judgement)>>> = Mutex::new(vec![None; runs.len()]);
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for slot in 0..args.jobs {
            let (runs, kernels, progress, next, results, errors) =
                (&runs, &kernels, &progress, &next, &results, &errors);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(run) = runs.get(i) else { break };
                let label = format!(
                    "{} {}:{}{}",
                    run.cell.arch,
                    run.cell.row,
                    run.cell.label(),
                    if run.delays { "" } else { " (no delays)" }
                );
                let mut config = BootConfig::new(run.cell.arch, kernels[&run.cell.arch].clone());
                config.smp = args.smp;
                config.timeout = Duration::from_secs(run.timeout_s());
                config.cmdline = run.cmdline(PROGRESS_S);
                progress.lock().unwrap().running[slot] =
                    Some((label.clone(), 0, run.iterations, 0));
                let boot = Boot::run(&config, |line| {
                    let Some(rest) = line.trim_start().strip_prefix("# progress:") else {
                        return;
                    };
                    let value = |k: &str| {
                        xtask::ktap::diag_value(rest, k).and_then(|v| v.parse::<u64>().ok())
                    };
                    let mut p = progress.lock().unwrap();
                    p.running[slot] = Some((
                        label.clone(),
                        value("iterations").unwrap_or(0),
                        run.iterations,
                        value("elapsed_ms").unwrap_or(0),
                    ));
                    p.show();
                });
                let boot = match boot {
                    Ok(b) => b,
                    Err(e) => {
                        errors.lock().unwrap().push(format!("{label}: {e:#}"));
                        progress.lock().unwrap().running[slot] = None;
                        continue;
                    }
                };
                let case = run.cell.case();
                let r = SoakResult::of(run, &boot);
                let j = judge(run, &r);
                let mut p = progress.lock().unwrap();
                p.done += 1;
                p.hits += r.hits;
                p.running[slot] = None;
                p.say(&format!(
                    "   {label}: {} iterations, {} hits, overlap {}, first hit {}, {:.0} iterations/s: {j}",
                    r.iterations,
                    r.hits,
                    r.overlap,
                    r.first_hit_ms
                        .map_or("-".into(), |ms| format!("{ms:.1} ms")),
                    r.rate
                ));
                if j != Judgement::Ok {
                    p.say(&format!("     repeat: {}", run.repeat_command(args.smp)));
                    if !boot.verdict().passed {
                        p.say(&boot.failure_report());
                    }
                }
                if r.hits > 0 {
                    if let Some(c) = boot.ktap.case(&case) {
                        for d in c.diagnostics.iter().filter(|d| d.starts_with("race: BUG")) {
                            p.say(&format!("     # {d}"));
                        }
                    }
                }
                results.lock().unwrap()[i] = Some((r, j));
            });
        }
    });
    progress.lock().unwrap().display.finish();
    let results = results.into_inner().unwrap();
    let errors = errors.into_inner().unwrap();
    println!();
    println!(
        "{:<8} {:<24} {:<22} {:<7} {:>10} {:>8} {:>10} {:>14} {:>12}  verdict",
        "arch",
        "row",
        "variant",
        "delays",
        "iterations",
        "hits",
        "overlap",
        "first hit ms",
        "iter/s"
    );
    let mut failed = !errors.is_empty();
    for (run, res) in runs.iter().zip(&results) {
        let Some((r, j)) = res else {
            failed = true;
            continue;
        };
        failed |= *j != Judgement::Ok;
        println!("{}", xtask::soak::table_row(run, r, j));
    }
    for e in &errors {
        println!("error: {e}");
    }
    println!("soak seed: {seed} (repeat with --seed {seed})");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
