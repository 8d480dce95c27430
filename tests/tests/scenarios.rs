//! Every cell of the expected table (`xtask/src/expected.rs`): one boot per
//! row and architecture (`scenario=ROW`, 4 CPUs, both modes, every
//! variant under every flush strategy of the row), each cell's outcome
//! must be the table's. Natural runs end at
//! their first hit (`stop_at_hit`): a buggy cell must hit within its row's
//! natural budget, a fixed cell runs its 10 000 iterations. A cell that hits
//! prints a race report. One test per row and architecture, so that
//! `cargo nextest run --partition` spreads the rows over machines.

use quiesce_tests::{
    assert_cells_agree, assert_passed, assert_tcg_platform, boot, Harness, TIMEOUT,
};
use std::time::Duration;
use xtask::expected::{self, Expect, Observed, Selection};
use xtask::{Arch, Boot};

/// A row's boot runs 10 000 natural iterations per natural cell: up to
/// minutes under TCG on a loaded 2-core host; the kernel catches a hung
/// iteration itself.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(900);

/// Iterations a natural clean cell must run: the catalogue's 10 000, except
/// where an iteration costs tens of milliseconds under TCG (a collapse
/// copies a 2 MiB block): there the row's own budget, and the long runs are
/// `cargo xtask soak`'s.
fn natural_min_iterations(row: &str) -> u64 {
    match row {
        "collapse-vs-gup-fast" => 400,
        _ => 10_000,
    }
}

fn every_cell(arch: Arch, row: &str) {
    let cmdline = format!("scenario={row} stop_at_hit");
    let Some(b) = boot(arch, 4, &cmdline, SCENARIO_TIMEOUT) else {
        return;
    };
    assert_passed(&b);
    assert_tcg_platform(&b, arch, 4);
    let sel = Selection::new(row, None, None, None);
    let (lines, table) = assert_cells_agree(arch, row, &b, &sel);
    for l in &lines {
        let o = l.observed.as_ref().unwrap();
        let case = b.ktap.case(&l.case()).unwrap();
        let reported = case
            .diagnostics
            .iter()
            .any(|d| d.starts_with("race: BUG: "));
        // A hit prints its race report; a run without one prints none.
        assert_eq!(reported, o.hits > 0, "{arch}: {l}");
        match l.expect {
            // A forced buggy cell hits in every iteration.
            Some(Expect::Bug) if l.mode == expected::Mode::Forced => {
                assert!(o.iterations > 0 && o.hits == o.iterations, "{arch}: {l}")
            }
            Some(Expect::Clean) => assert!(o.iterations > 0 && o.hits == 0, "{arch}: {l}"),
            _ => {}
        }
        if l.mode == expected::Mode::Natural && l.expect == Some(Expect::Clean) {
            let min = natural_min_iterations(row);
            assert!(
                o.iterations >= min,
                "{arch}: natural fixed cells of {row} run {min} iterations: {l}"
            );
        }
    }
    println!("{arch} {row}:\n{table}");
}

/// An unknown scenario is refused with the list of known ones.
fn unknown_scenario_is_refused() {
    let Some(b) = quiesce_tests::boot_to_fail(Arch::S390x, 2, "scenario=no-such-row", TIMEOUT)
    else {
        return;
    };
    assert!(!b.verdict().passed);
    quiesce_tests::assert_console(&b, |l| {
        l.contains("unknown scenario 'no-such-row' (known: all, demo-lock-vs-put")
    });
}

/// Boots `arch` with 4 CPUs and `cmdline`, which selects one cell, and
/// asserts that the boot passed; the boot and the cell as it reported it
/// (`None` if `arch` is not enabled).
fn natural_cell(arch: Arch, cmdline: &str) -> Option<(Boot, Observed)> {
    let b = boot(arch, 4, cmdline, TIMEOUT)?;
    assert_passed(&b);
    let o = expected::observed(&b.ktap)[0].clone();
    Some((b, o))
}

/// The natural-mode keys of soaks and benchmarks do what they say:
/// `stop_at_hit` ends a buggy run at its first hit, `budget_s` ends a run
/// (not before its time), `delays=0` is reported, `progress_s` prints
/// progress lines.
fn natural_keys(arch: Arch) {
    let Some((_, o)) = natural_cell(
        arch,
        "scenario=wp-unlock-vs-zap variant=buggy-immediate mode=natural seed=3 stop_at_hit",
    ) else {
        return;
    };
    assert_eq!((o.outcome.as_str(), o.hits), ("bug", 1), "{arch}: {o:?}");
    assert!(o.iterations < 10_000, "{arch}: {o:?}");
    let Some((b, o)) = natural_cell(
        arch,
        "scenario=wp-unlock-vs-zap variant=fixed mode=natural iterations=100000000 budget_s=3 delays=0 progress_s=1",
    ) else {
        return;
    };
    assert_eq!(o.outcome, "clean", "{arch}: {o:?}");
    assert!(
        o.iterations > 0 && o.iterations < 100_000_000,
        "{arch}: {o:?}"
    );
    let case = b
        .ktap
        .case("scenario.wp-unlock-vs-zap:fixed:natural")
        .unwrap();
    let line = case
        .diagnostics
        .iter()
        .find(|d| d.starts_with("row="))
        .unwrap();
    let value = |k: &str| xtask::ktap::diag_value(line, k).unwrap();
    // The budget, not the iteration count, ended the run, and not before
    // its time. How far past the budget it went is a `cargo xtask bench`
    // figure with a target, not a pass/fail here.
    let elapsed: u64 = value("elapsed_ms").parse().unwrap();
    assert!(elapsed >= 3_000, "{arch}: {elapsed} ms");
    assert_eq!(value("delays"), "0", "{arch}");
    let progress = b
        .console
        .iter()
        .filter(|l| l.contains("# progress: row=wp-unlock-vs-zap"))
        .count();
    assert!(progress >= 2, "{arch}: {progress} progress lines");
}

/// The tests: one per row of the expected table and architecture
/// (`s390x::ROW`, `x86_64::ROW`, the row's name with `_` for `-`), read
/// from the table, so a new row's cells are tested without a line here;
/// and the refusal and natural-key tests. A test whose architecture is
/// not in `QUIESCE_TEST_ARCHES` is reported ignored.
fn main() {
    let mut tests = Harness::new();
    for arch in Arch::ALL {
        for row in expected::rows() {
            let name = format!("{arch}::{}", row.replace('-', "_"));
            tests = tests.test(name, &[arch], move || every_cell(arch, row));
        }
        tests = tests.test(format!("{arch}_natural_keys"), &[arch], move || {
            natural_keys(arch)
        });
    }
    tests
        .test(
            "unknown_scenario_is_refused",
            &[Arch::S390x],
            unknown_scenario_is_refused,
        )
        .run()
}
