//! Explore mode (`mode=explore`, docs/explore.md) at its default, as
//! `cargo xtask explore` runs it (bounds 0, 1, 2, then higher while the
//! space is small), judged by the expected table's explore cells
//! (`xtask/src/expected.rs`, [`expected::EXPLORE_CELLS`]):
//! `ARCH::every_row::ROW`, one boot per row and architecture. Slow (up to
//! minutes per row under TCG), so listed as ignored: `-- --include-ignored`
//! (or `--ignored`) runs them. CI explores every cell within bound 2 and
//! replays a buggy schedule per row in `tests/tests/scenarios.rs`.

use quiesce_tests::{assert_cells_agree, assert_passed, boot, Harness};
use std::time::{Duration, Instant};
use xtask::expected::{self, Expect, Mode, Observed, Selection};
use xtask::{Arch, Boot};

/// One row's explore boot: each cell explores until its schedules are
/// exhausted or its row's natural time budget (minutes) is spent.
const EXPLORE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Boots `arch` with `cmdline` (an explore run of the cells `sel`
/// selects), asserts that the boot passed and that every selected cell
/// agrees with the table; the cells as observed.
fn explore_cells(arch: Arch, cmdline: &str, sel: &Selection) -> Option<(Boot, Vec<Observed>)> {
    let started = Instant::now();
    let b = boot(arch, 4, cmdline, EXPLORE_TIMEOUT)?;
    assert_passed(&b);
    let (_, table) = assert_cells_agree(arch, cmdline, &b, sel);
    println!(
        "{arch} {cmdline}: {:.1} s\n{table}",
        started.elapsed().as_secs_f64()
    );
    let observed = expected::observed(&b.ktap);
    Some((b, observed))
}

/// (c) Every explore cell of `row`, judged by the table, and what the
/// derived expectations promise beyond the outcome.
fn every_row(arch: Arch, row: &'static str) {
    let sel = Selection::new(row, None, None, Some(Mode::Explore));
    let Some((_, observed)) = explore_cells(arch, &format!("scenario={row} mode=explore"), &sel)
    else {
        return;
    };
    for o in &observed {
        let c = expected::lookup(row, arch, &o.variant, o.flush.as_deref(), Mode::Explore)
            .expect("in the table");
        if c.expect == Expect::Skip {
            continue;
        }
        let x = o.explore.as_ref().expect("explore figures");
        assert_eq!(x.schedules, o.iterations, "{arch} {}: {x:?}", c.label());
        assert_eq!(x.buggy, o.hits, "{arch} {}: {x:?}", c.label());
    }
}

/// Why the every-row tests run only when asked for.
const SLOW: &str = "slow: a row's explore boot takes minutes under TCG \
                    (run with -- --include-ignored)";

/// The tests: per row and architecture, ignored unless asked for (each
/// row's boot takes up to minutes).
fn main() {
    let mut tests = Harness::new();
    for arch in Arch::ALL {
        for row in expected::rows() {
            let name = format!("{arch}::every_row::{}", row.replace('-', "_"));
            tests = tests.test_on_request(name, &[arch], SLOW, move || every_row(arch, row));
        }
    }
    tests.run()
}
