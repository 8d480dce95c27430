//! Explore mode (`mode=explore`, docs/explore.md) judged by the expected
//! table's explore cells (`xtask/src/expected.rs`, [`expected::EXPLORE_CELLS`]):
//!
//! - `ARCH::ptfree_vs_gup_fast`: the row under the flush strategy that
//!   sends no interrupt the walker holds back (IPTE on s390x, NMI
//!   shootdown on x86-64): `immediate` has buggy schedules, `ipi-sync`
//!   and `rcu` none, every schedule within the bound run;
//! - `ARCH::replay::ROW`: the first buggy schedule of the row's first
//!   buggy variant (explore ends there, `stop_at_hit`), replayed in forced
//!   mode (`schedule=`), is a bug in every iteration; a row with no buggy
//!   variant on ARCH is a skip;
//! - `ARCH::every_row::ROW`: every row's explore cells, one boot per row
//!   and architecture. Slow (minutes per row under TCG), so listed as
//!   ignored: `-- --include-ignored` (or `--ignored`) runs them.

use quiesce_tests::{
    assert_cells_agree, assert_passed, assert_replay_is_bug, boot, boot_cells, Harness,
};
use std::time::{Duration, Instant};
use xtask::expected::{self, Expect, Mode, Observed, Selection};
use xtask::{Arch, Boot};

/// One row's explore boot: each cell explores until its schedules are
/// exhausted or its row's natural time budget (minutes) is spent.
const EXPLORE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The ptfree row's flush strategy whose `immediate` variant is a bug.
fn ptfree_flush(arch: Arch) -> &'static str {
    match arch {
        Arch::S390x => "ipte",
        Arch::X86_64 => "nmi",
    }
}

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

/// The cell of `variant` among `observed`.
fn cell<'a>(observed: &'a [Observed], variant: &str) -> &'a Observed {
    observed
        .iter()
        .find(|o| o.variant == variant)
        .unwrap_or_else(|| panic!("no cell of {variant}: {observed:#?}"))
}

/// (a) ptfree-vs-gup-fast explored: `immediate` has at least one buggy
/// schedule (and its replay text), the fixes none, over every schedule
/// within the bound.
fn ptfree_vs_gup_fast(arch: Arch) {
    let flush = ptfree_flush(arch);
    let sel = Selection::new("ptfree-vs-gup-fast", None, Some(flush), Some(Mode::Explore));
    let cmdline = format!("scenario=ptfree-vs-gup-fast flush={flush} mode=explore");
    let Some((_, observed)) = explore_cells(arch, &cmdline, &sel) else {
        return;
    };
    assert_eq!(observed.len(), 3, "{arch}: {observed:#?}");
    let buggy = cell(&observed, "immediate");
    let x = buggy.explore.as_ref().expect("explore figures");
    assert_eq!(buggy.outcome, "bug", "{arch}: {buggy:?}");
    assert!(x.buggy >= 1 && x.buggy == buggy.hits, "{arch}: {x:?}");
    assert!(
        x.schedule.is_some() && !x.buggy_schedules.is_empty(),
        "{arch}: {x:?}"
    );
    for fixed in ["ipi-sync", "rcu"] {
        let o = cell(&observed, fixed);
        let x = o.explore.as_ref().expect("explore figures");
        assert_eq!(
            (o.outcome.as_str(), x.buggy),
            ("clean", 0),
            "{arch} {fixed}: {o:?}"
        );
        assert!(
            x.exhausted,
            "{arch} {fixed}: not every schedule within the bound ran: {x:?}"
        );
        assert!(x.schedules > 1 && x.complete > 0, "{arch} {fixed}: {x:?}");
    }
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

/// The first buggy explore cell of `row` on `arch`, if the race can
/// happen there.
fn first_buggy(arch: Arch, row: &str) -> Option<&'static expected::Cell> {
    expected::EXPLORE_CELLS
        .iter()
        .find(|c| c.row == row && c.arch == arch && c.expect == Expect::Bug)
}

/// (b) Per row: the first buggy variant's first buggy schedule (explore
/// ends there, `stop_at_hit`), replayed in forced mode (`schedule=`), is a
/// bug in every iteration.
fn replay_row(arch: Arch, row: &'static str) {
    let c = first_buggy(arch, row).expect("a buggy cell");
    let flush = c.flush.map(|f| format!(" flush={f}")).unwrap_or_default();
    let what = format!("scenario={row} variant={}{flush}", c.variant);
    let Some(observed) = boot_cells(
        arch,
        &format!("{what} mode=explore stop_at_hit"),
        EXPLORE_TIMEOUT,
    ) else {
        return;
    };
    let o = observed
        .iter()
        .find(|o| {
            o.variant == c.variant && o.flush.as_deref() == c.flush && o.mode == Mode::Explore
        })
        .unwrap_or_else(|| panic!("{arch} {what}: no explore cell: {observed:#?}"));
    let x = o.explore.as_ref().expect("explore figures");
    assert_eq!(
        o.outcome, "bug",
        "{arch} {what}: explore found no buggy schedule: {o:?}"
    );
    let schedule = x.schedule.clone().expect("a buggy schedule to replay");
    let Some(r) = assert_replay_is_bug(arch, &what, &schedule, EXPLORE_TIMEOUT) else {
        return;
    };
    println!(
        "{arch} {what}: buggy schedule after {} schedules, replayed: bug in {} of {} forced iterations",
        x.schedules, r.hits, r.iterations
    );
}

/// Why the every-row tests run only when asked for.
const SLOW: &str = "slow: a row's explore boot takes minutes under TCG \
                    (run with -- --include-ignored)";

/// The tests: (a) per architecture, s390x first; (b) per row and
/// architecture; (c) per row and architecture, ignored unless asked for
/// (each row's boot takes minutes).
fn main() {
    let mut tests = Harness::new().per_arch(
        ["s390x::ptfree_vs_gup_fast", "x86_64::ptfree_vs_gup_fast"],
        ptfree_vs_gup_fast,
    );
    for arch in Arch::ALL {
        for row in expected::rows() {
            let name = format!("{arch}::replay::{}", row.replace('-', "_"));
            tests = match first_buggy(arch, row) {
                Some(_) => tests.test(name, &[arch], move || replay_row(arch, row)),
                None => tests.test_unless(
                    name,
                    Some(format!(
                        "no variant of {row} is a bug on {arch}: no buggy schedule to replay"
                    )),
                    || {},
                ),
            };
        }
    }
    for arch in Arch::ALL {
        for row in expected::rows() {
            let name = format!("{arch}::every_row::{}", row.replace('-', "_"));
            tests = tests.test_on_request(name, &[arch], SLOW, move || every_row(arch, row));
        }
    }
    tests.run()
}
