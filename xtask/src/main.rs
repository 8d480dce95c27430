//! `cargo xtask`: build, run and test quiesce.
//!
//! - `cargo xtask build` builds the kernels.
//! - `cargo xtask run` boots them under QEMU and prints a readable summary; the
//!   exit status is non-zero if any run failed.
//! - `cargo xtask test` runs every host unit test and the boot-and-assert tests.
//! - `cargo xtask list` lists every race row, variant and self-test, read
//!   from the kernels (`--json` for tools).
//! - `cargo xtask qemu-cmd` prints the QEMU command a run would use.
//! - `cargo xtask setup` installs QEMU if it is missing.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;
use xtask::qemu::{Accel, BootConfig};
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
        /// Also write JUnit XML here: one case per KTAP result of every
        /// boot; each boot's raw KTAP is kept in `<FILE>.ktap/`.
        #[arg(long, value_name = "FILE")]
        junit: Option<std::path::PathBuf>,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Print the QEMU command `run` would use.
    QemuCmd(RunArgs),
    /// rustfmt check and clippy (warnings denied) over the host crates and both kernels.
    Lint,
    /// Install QEMU for both architectures if missing (needs root).
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
    /// Self-test boots per architecture.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// CPUs per boot.
    #[arg(long, default_value_t = 4)]
    smp: usize,
    /// Natural-mode runs (one boot each, seeds 1, 2, ..., each to its first
    /// hit) per buggy scenario cell; 0 skips the race figures.
    #[arg(long, default_value_t = 10)]
    race_runs: usize,
    /// Directory for bench.json and bench.html (default target/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// An earlier bench.json: print and plot new / old ratios.
    #[arg(long, value_name = "OLD.json")]
    compare: Option<PathBuf>,
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
    /// QEMU accelerator: tcg, or kvm for the host's own architecture.
    #[arg(long, default_value = "tcg")]
    accel: Accel,
    /// Seconds a boot may take before it counts as a hang (default 400: a
    /// scenario boot runs 10 000 natural iterations per cell, minutes under
    /// TCG; with --gdb, a day).
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
    /// Race scenario to run.
    #[arg(long)]
    scenario: Option<String>,
    /// Scenario variant.
    #[arg(long)]
    variant: Option<String>,
    /// Scenario mode.
    #[arg(long, value_parser = ["natural", "forced"])]
    mode: Option<String>,
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

impl RunArgs {
    fn cmdline(&self) -> String {
        let mut words = Vec::new();
        if let Some(t) = &self.test {
            words.push(format!("test={t}"));
        }
        if let Some(s) = &self.scenario {
            words.push(format!("scenario={s}"));
        }
        if let Some(v) = &self.variant {
            words.push(format!("variant={v}"));
        }
        if let Some(m) = &self.mode {
            words.push(format!("mode={m}"));
        }
        if let Some(s) = self.seed {
            words.push(format!("seed={s}"));
        }
        words.extend(self.kernel_args.iter().cloned());
        words.join(" ")
    }

    fn config(&self, arch: Arch) -> BootConfig {
        let mut c = BootConfig::new(arch, kbuild::kernel_path(arch));
        c.smp = self.smp;
        c.memory_mib = self.memory;
        c.accel = self.accel;
        c.timeout =
            Duration::from_secs(self.timeout.unwrap_or(if self.gdb { 86_400 } else { 400 }));
        c.cmdline = self.cmdline();
        c
    }

    /// Checks everything that can be checked before building.
    fn validate(&self) -> Result<()> {
        if self.gdb && self.arch == ArchSel::All {
            bail!("--gdb debugs one kernel: give --arch s390x or --arch x86_64");
        }
        for arch in self.arch.arches() {
            let mut c = self.config(arch);
            c.kernel = std::env::current_exe()?; // the kernel is checked after the build
            c.validate()?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Action::Build { arch } => {
            for a in arch.arches() {
                let path = kbuild::build(a, false)?;
                println!("{a}: {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Run(args) => run(&args),
        Action::Soak(args) => soak(&args),
        Action::QemuCmd(args) => {
            args.validate()?;
            for a in args.arch.arches() {
                let c = args.config(a);
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
            if !no_lint {
                lint()?;
            }
            test(arch, &test_args, junit.as_deref())
        }
        Action::Bench(args) => bench(&args),
        Action::List { arch, json } => list(arch, json),
        Action::Lint => {
            lint()?;
            Ok(ExitCode::SUCCESS)
        }
        Action::Setup => {
            setup::ensure_qemu(&Arch::ALL)?;
            println!(
                "QEMU: {} and {} present",
                Arch::S390x.qemu_binary(),
                Arch::X86_64.qemu_binary()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(args: &RunArgs) -> Result<ExitCode> {
    args.validate()?;
    let arches = args.arch.arches();
    setup::ensure_qemu(&arches)?;
    if args.gdb {
        return run_gdb(args, arches[0]);
    }
    // The plain `cargo xtask run` boots the self-tests and then every
    // scenario cell; `--scenario` boots only the scenarios asked for.
    let plain = args.scenario.is_none()
        && args.test.is_none()
        && args.variant.is_none()
        && args.mode.is_none()
        && args.seed.is_none()
        && args.kernel_args.is_empty();
    let mut summary = Vec::new();
    for &arch in &arches {
        kbuild::build(arch, true)?;
        if args.scenario.is_none() {
            let config = args.config(arch);
            let boot = boot_and_print(args, &config)?;
            print_boot(&boot);
            summary.push((arch, "self-tests", boot.verdict().passed));
        }
        if args.scenario.is_some() || plain {
            let sel = expected::Selection {
                row: Some(args.scenario.clone().unwrap_or_else(|| "all".into())),
                variant: args.variant.clone(),
                mode: args.mode.as_deref().and_then(expected::Mode::from_name),
            };
            let mut config = args.config(arch);
            if plain {
                config.cmdline = "scenario=all".into();
            }
            let boot = boot_and_print(args, &config)?;
            let ok = print_scenarios(&boot, &sel, args.report_dir.as_deref());
            summary.push((arch, "scenarios", ok));
        }
    }
    println!();
    let line: Vec<String> = summary
        .iter()
        .map(|(a, what, ok)| format!("{a} {what} {}", if *ok { "PASS" } else { "FAIL" }))
        .collect();
    println!("summary: {}", line.join(", "));
    Ok(if summary.iter().all(|(_, _, ok)| *ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `run --gdb`: one boot, halted until gdb continues it; the console is
/// echoed, then the results are printed as usual.
fn run_gdb(args: &RunArgs, arch: Arch) -> Result<ExitCode> {
    let kernel = kbuild::build(arch, true)?;
    let mut config = args.config(arch);
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
    if args.scenario.is_some() {
        let sel = expected::Selection {
            row: args.scenario.clone(),
            variant: args.variant.clone(),
            mode: args.mode.as_deref().and_then(expected::Mode::from_name),
        };
        return Ok(
            if print_scenarios(&boot, &sel, args.report_dir.as_deref()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            },
        );
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
/// for every selected cell. Returns whether the boot passed and every cell
/// agrees with the table.
fn print_scenarios(boot: &Boot, sel: &expected::Selection, report_dir: Option<&Path>) -> bool {
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
    let lines = expected::compare(boot.config.arch, sel, &observed);
    println!("   {}", expected::HEADER);
    for l in &lines {
        println!("   {l}");
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
    setup::ensure_qemu(&arches)?;
    let catalogue = xtask::catalogue::from_kernels(&arches)?;
    if json {
        println!("{}", catalogue.json()?);
    } else {
        print!("{}", catalogue.text());
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(args: &BenchArgs) -> Result<ExitCode> {
    use xtask::bench;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let old = match &args.compare {
        Some(p) => Some(bench::Report::load(p)?),
        None => None,
    };
    let report = match &args.from {
        Some(p) => bench::Report::load(p)?,
        None => {
            let arches = args.arch.arches();
            setup::ensure_qemu(&arches)?;
            let opts = bench::Options {
                arches,
                runs: args.runs,
                race_runs: args.race_runs,
                smp: args.smp,
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
    let met = bench::first_line_target_met(&report);
    if !met {
        println!(
            "the median time to the first KTAP line MISSES the {} ms target",
            bench::FIRST_LINE_TARGET_MS
        );
    }
    for f in &report.failures {
        println!("FAILED boot: {f}");
    }
    Ok(if met && report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
        run_checked(k, &format!("clippy on the {arch} kernel"))?;
    }
    Ok(())
}

fn test(arch: ArchSel, test_args: &[String], junit: Option<&Path>) -> Result<ExitCode> {
    let arches = arch.arches();
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
    setup::ensure_qemu(&arches)?;
    for &a in &arches {
        println!("building the {a} kernel");
        kbuild::build(a, true)?;
    }
    let names: Vec<&str> = arches.iter().map(|a| a.name()).collect();
    // The backends' page-table formats, tested on the host.
    let status = cargo()
        .current_dir(xtask::workspace_root())
        .args(["test", "--no-fail-fast", "--lib"])
        .args(backend_lib_packages())
        .status()?;
    if !status.success() {
        bail!("backend library tests failed ({status})");
    }
    let mut cmd = cargo();
    cmd.current_dir(xtask::workspace_root())
        .args(["test", "--no-fail-fast"])
        .arg("--")
        .args(test_args)
        .env("QUIESCE_TEST_ARCHES", names.join(","));
    if let Some(d) = &ktap_dir {
        cmd.env(xtask::junit::KTAP_DIR_ENV, std::path::absolute(d)?);
    }
    let status = run_tests_with_progress(cmd, test_args)?;
    if let (Some(file), Some(d)) = (junit, &ktap_dir) {
        let boots = xtask::junit::read_dir(d)?;
        std::fs::write(file, xtask::junit::render(&boots))
            .with_context(|| format!("writing {}", file.display()))?;
        println!(
            "junit: {} ({} boots; their KTAP in {})",
            file.display(),
            boots.len(),
            d.display()
        );
    }
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `cargo test` (`cmd`), echoing its output, with a progress line:
/// tests finished of the total that `--list` counts, failures, time left.
fn run_tests_with_progress(
    mut cmd: Command,
    test_args: &[String],
) -> Result<std::process::ExitStatus> {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut list = cargo();
    list.current_dir(xtask::workspace_root())
        .args(["test", "--quiet", "--no-fail-fast"])
        .arg("--")
        .args(test_args)
        .args(["--list", "--format", "terse"])
        .stderr(Stdio::null());
    let total = list.output().map_or(0, |o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.ends_with(": test"))
            .count()
    });
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let out = child.stdout.take().expect("stdout is piped");
    let mut progress = xtask::progress::Progress::new();
    let (mut done, mut failed) = (0usize, 0usize);
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        progress.println(&line);
        if line.starts_with("test ") {
            if line.ends_with(" ok") || line.ends_with(" ignored") {
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
        bail!("--jobs must be at least 1");
    }
    if args.fixed_iterations == 0 || args.buggy_iterations == 0 {
        bail!("iteration counts must be at least 1");
    }
    if !(1..=86_400).contains(&args.budget) {
        bail!("--budget {}: 1 to 86400 seconds", args.budget);
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
        mode: None,
    };
    if let Some(row) = &args.scenario {
        if row != "all" && !expected::CELLS.iter().any(|c| c.row == row) {
            let mut rows: Vec<&str> = expected::CELLS.iter().map(|c| c.row).collect();
            rows.dedup();
            bail!("unknown scenario '{row}' (known: {})", rows.join(", "));
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
        bail!("no natural cell matches the selection");
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
    setup::ensure_qemu(&arches)?;
    let mut kernels = std::collections::HashMap::new();
    for &a in &arches {
        kernels.insert(a, kbuild::build(a, true)?);
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
                    run.cell.variant,
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
                        rest.split_whitespace()
                            .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok())
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
                let obs = expected::observed(&boot.ktap).into_iter().next();
                let case = format!("scenario.{}:{}:natural", run.cell.row, run.cell.variant);
                let rate = boot
                    .ktap
                    .case(&case)
                    .and_then(|r| r.diag_value("iters_per_sec").and_then(|v| v.parse().ok()))
                    .unwrap_or(0.0);
                let r = SoakResult {
                    outcome: obs.as_ref().map_or("failed".into(), |o| o.outcome.clone()),
                    iterations: obs.as_ref().map_or(0, |o| o.iterations),
                    hits: obs.as_ref().map_or(0, |o| o.hits),
                    first_hit_ms: obs
                        .as_ref()
                        .and_then(|o| o.first_hit_ns)
                        .map(|n| n as f64 / 1e6),
                    rate,
                    boot_ok: boot.verdict().passed,
                };
                let j = judge(run, &r);
                let mut p = progress.lock().unwrap();
                p.done += 1;
                p.hits += r.hits;
                p.running[slot] = None;
                p.say(&format!(
                    "   {label}: {} iterations, {} hits, first hit {}, {:.0} iterations/s: {j}",
                    r.iterations,
                    r.hits,
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
        "{:<8} {:<24} {:<22} {:<7} {:>10} {:>8} {:>14} {:>12}  verdict",
        "arch", "row", "variant", "delays", "iterations", "hits", "first hit ms", "iter/s"
    );
    let mut failed = !errors.is_empty();
    for (run, res) in runs.iter().zip(&results) {
        let Some((r, j)) = res else {
            failed = true;
            continue;
        };
        failed |= *j != Judgement::Ok;
        println!(
            "{:<8} {:<24} {:<22} {:<7} {:>10} {:>8} {:>14} {:>12.0}  {j}",
            run.cell.arch.to_string(),
            run.cell.row,
            run.cell.variant,
            if run.delays { "on" } else { "off" },
            r.iterations,
            r.hits,
            r.first_hit_ms.map_or("-".into(), |ms| format!("{ms:.1}")),
            r.rate
        );
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
