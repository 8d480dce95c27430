//! Every cell of the expected table (`xtask/src/expected.rs`): one boot per
//! architecture runs them all (`scenario=all`, 4 CPUs) and each cell's
//! outcome must be the table's. A cell that hits prints a race report.

use quiesce_tests::{assert_passed, boot, TIMEOUT};
use std::time::Duration;
use xtask::expected::{self, Expect, Selection};
use xtask::Arch;

/// A `scenario=all` boot runs 10 000 natural iterations per cell: minutes
/// under TCG (about 75 s alone, 4 minutes beside the other architecture's
/// boot on 2 cores); the kernel catches a hung iteration itself.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(900);

fn every_cell(arch: Arch) {
    let Some(b) = boot(arch, 4, "scenario=all", SCENARIO_TIMEOUT) else {
        return;
    };
    assert_passed(&b);
    let observed = expected::observed(&b.ktap);
    let lines = expected::compare(arch, &Selection::default(), &observed);
    let table: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert!(!lines.is_empty(), "{arch}: no cells");
    assert!(
        lines.iter().all(|l| l.ok),
        "{arch}: cells differ from the table\n{}\n{table}",
        expected::HEADER
    );
    for l in &lines {
        let o = l.observed.as_ref().unwrap();
        let case = b
            .ktap
            .case(&format!(
                "scenario.{}:{}:{}",
                l.row,
                l.variant,
                l.mode.name()
            ))
            .unwrap();
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
                o.iterations >= 10_000,
                "{arch}: natural fixed cells run 10 000 iterations: {l}"
            );
        }
    }
}

#[test]
fn s390x_every_cell() {
    every_cell(Arch::S390x);
}

#[test]
fn x86_64_every_cell() {
    every_cell(Arch::X86_64);
}

/// An unknown scenario is refused with the list of known ones.
#[test]
fn unknown_scenario_is_refused() {
    let Some(b) = boot(Arch::S390x, 2, "scenario=no-such-row", TIMEOUT) else {
        return;
    };
    assert!(!b.verdict().passed);
    assert!(
        b.console
            .iter()
            .any(|l| l.contains("unknown scenario 'no-such-row' (known: all, demo-lock-vs-put")),
        "{}",
        b.failure_report()
    );
}
