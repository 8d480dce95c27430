//! Every cell of the expected table (`xtask/src/expected.rs`), per row and
//! architecture, in one test (`ARCH::ROW`) so that `cargo nextest run
//! --partition` spreads the rows over machines:
//!
//! 1. **Explore** (one boot, `mode=explore`): every explore cell explores
//!    bounds 0, 1 and 2 in turn, at most [`EXPLORE_SCHEDULES`] schedules a
//!    cell, and must agree with the table. A buggy cell ends at its first
//!    buggy schedule (`stop_at_hit`); a clean one must have run every
//!    schedule within the bound it states.
//! 2. **Replay**: the first buggy cell's buggy schedule, replayed in forced
//!    mode (`schedule=`), is a bug in every iteration.
//! 3. **Forced and natural** (one boot): every cell must agree with the
//!    table. Natural runs end at their first hit (`stop_at_hit`): a buggy
//!    cell must hit within its row's natural budget. A clean cell runs
//!    10 000 iterations, or [`NATURAL_EXPLORED`] where step 1 ran every
//!    ordering of every clean cell of the row within bound 1 or more: the
//!    orderings are then covered by explore, and the natural run checks
//!    what explore does not vary (timing, the hardware's own order within
//!    a step). `cargo xtask soak` runs the long natural runs.
//!
//! A cell that hits prints a race report.

use quiesce_tests::{
    assert_cells_agree, assert_passed, assert_replay_is_bug, assert_tcg_platform, boot, Harness,
    TIMEOUT,
};
use std::time::Duration;
use xtask::expected::{self, Expect, Observed, Selection};
use xtask::{Arch, Boot};

/// A row's boot: up to minutes under TCG on a loaded 2-core host (10 000
/// natural iterations per cell where explore did not cover the row); the
/// kernel catches a hung iteration itself.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(900);

/// Schedules an explore cell runs at most in CI (bounds 0, 1, 2 in turn):
/// where bound 2 takes more, the cell states the bound it exhausted.
const EXPLORE_SCHEDULES: u64 = 1_000;

/// Iterations of a natural clean cell whose row's orderings explore ran.
const NATURAL_EXPLORED: u64 = 1_000;

/// Iterations a natural clean cell must run: the catalogue's 10 000, or
/// [`NATURAL_EXPLORED`] where explore covered the row; where an iteration
/// costs tens of milliseconds under TCG (a collapse copies a 2 MiB block)
/// at most the row's own budget, and the long runs are `cargo xtask
/// soak`'s.
fn natural_min_iterations(row: &str, explored: bool) -> u64 {
    let full = if explored { NATURAL_EXPLORED } else { 10_000 };
    match row {
        "collapse-vs-gup-fast" => full.min(400),
        _ => full,
    }
}

/// Step 1 and 2: the row's explore cells, and the replay of the first
/// buggy schedule. Returns whether every clean cell ran every ordering
/// within bound 1 or more.
fn explore_cells(arch: Arch, row: &str) -> Option<bool> {
    let cmdline =
        format!("scenario={row} mode=explore bound=2 iterations={EXPLORE_SCHEDULES} stop_at_hit");
    let b = boot(arch, 4, &cmdline, SCENARIO_TIMEOUT)?;
    assert_passed(&b);
    let sel = Selection::new(row, None, None, Some(expected::Mode::Explore));
    let (lines, table) = assert_cells_agree(arch, row, &b, &sel);
    println!("{arch} {row} explore:\n{table}");
    let mut covered = true;
    let mut replay = None;
    for l in &lines {
        let o = l.observed.as_ref().unwrap();
        let Some(x) = o.explore.as_ref() else {
            continue;
        };
        assert_eq!(
            (x.schedules, x.buggy),
            (o.iterations, o.hits),
            "{arch}: {l}"
        );
        match l.expect {
            Some(Expect::Bug) => {
                let text = x.schedule.clone().expect("a buggy schedule to replay");
                replay.get_or_insert((o.clone(), text));
            }
            Some(Expect::Clean) => {
                assert!(x.exhausted && x.complete > 0, "{arch}: {l}: {x:?}");
                covered &= x.bound != Some(0);
            }
            _ => {}
        }
    }
    match replay {
        Some((o, text)) => {
            let flush = o
                .flush
                .as_deref()
                .map(|f| format!(" flush={f}"))
                .unwrap_or_default();
            let what = format!("scenario={row} variant={}{flush}", o.variant);
            let r = assert_replay_is_bug(arch, &what, &text, SCENARIO_TIMEOUT)?;
            println!(
                "{arch} {what}: buggy schedule replayed: bug in {} of {} forced iterations",
                r.hits, r.iterations
            );
        }
        None => println!("{arch} {row}: no buggy explore cell, nothing to replay"),
    }
    Some(covered)
}

fn every_cell(arch: Arch, row: &str) {
    let Some(explored) = explore_cells(arch, row) else {
        return;
    };
    let min = natural_min_iterations(row, explored);
    let cmdline = format!("scenario={row} stop_at_hit iterations={min}");
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
            assert!(
                o.iterations >= min,
                "{arch}: natural clean cells of {row} run {min} iterations: {l}"
            );
        }
    }
    println!("{arch} {row} (natural clean cells: {min} iterations):\n{table}");
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
