//! The quick tour: what the plain `cargo xtask run` boots.
//!
//! Per architecture (s390x first): the self-tests in one boot, then every
//! cell of the expected table — the forced cells one boot per row, each
//! natural cell a boot of its own, so its line is printed as soon as it
//! ends. Natural cells are shortened, never judged differently:
//!
//! - a cell expected `bug` runs to its first hit (`stop_at_hit`), at most
//!   [`BUG_BUDGET_S`] seconds (the catalogue's own budget is the row's, which
//!   `run --full` and the tests use);
//! - every other natural cell (`clean`, a hit-rate-only cell, a `skip`)
//!   runs [`CLEAN_BUDGET_MS`] of iterations; a hit-rate-only cell also stops
//!   at its first hit. Its iteration count is printed, so a reader sees how
//!   much a short `clean` stands for.
//!
//! The outcomes are compared with the table exactly as in the full runs
//! ([`expected::compare`]).

use crate::expected::{self, Cell, Expect, Mode};
use crate::Arch;
use std::time::Duration;

/// Natural time budget of a cell not expected to hit, in milliseconds.
pub const CLEAN_BUDGET_MS: u64 = 1000;
/// Longest natural run of a cell expected to hit (it stops at the first).
pub const BUG_BUDGET_S: u64 = 30;

/// What one boot of the tour runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// Every self-test.
    SelfTests,
    /// Every forced cell of one row.
    ForcedRow(&'static str),
    /// One natural cell.
    Natural(&'static Cell),
}

/// One boot of the tour.
#[derive(Clone, Debug)]
pub struct Step {
    /// The architecture booted.
    pub arch: Arch,
    /// What it runs.
    pub what: What,
    /// The kernel command line.
    pub cmdline: String,
    /// The table's cells it reports (empty for the self-tests).
    pub cells: Vec<&'static Cell>,
    /// A guess of how long it takes, for the time left.
    pub estimate: Duration,
}

impl Step {
    /// The cells of the table this step checks, as a selection.
    pub fn selection(&self) -> expected::Selection {
        match &self.what {
            What::SelfTests => expected::Selection::default(),
            What::ForcedRow(row) => expected::Selection {
                row: Some(row.to_string()),
                mode: Some(Mode::Forced),
                ..Default::default()
            },
            What::Natural(c) => expected::Selection::cell(c),
        }
    }
}

/// The kernel command line of a natural cell in the tour.
pub fn natural_cmdline(c: &Cell) -> String {
    let base = c.kernel_args();
    match c.expect {
        Expect::Bug => format!("{base} stop_at_hit budget_s={BUG_BUDGET_S}"),
        Expect::Report => format!("{base} stop_at_hit budget_ms={CLEAN_BUDGET_MS}"),
        Expect::Clean | Expect::Impossible | Expect::Skip => {
            format!("{base} budget_ms={CLEAN_BUDGET_MS}")
        }
    }
}

/// Every boot of the tour of `arches`, in order.
pub fn plan(arches: &[Arch]) -> Vec<Step> {
    let mut steps = Vec::new();
    for &arch in arches {
        steps.push(Step {
            arch,
            what: What::SelfTests,
            cmdline: String::new(),
            cells: Vec::new(),
            estimate: Duration::from_secs(match arch {
                Arch::S390x => 5,
                Arch::X86_64 => 3,
            }),
        });
        for row in expected::rows() {
            let cells: Vec<&'static Cell> = expected::CELLS
                .iter()
                .filter(|c| c.arch == arch && c.row == row && c.mode == Mode::Forced)
                .collect();
            if cells.is_empty() {
                continue;
            }
            steps.push(Step {
                arch,
                what: What::ForcedRow(row),
                cmdline: format!("scenario={row} mode=forced"),
                cells,
                estimate: Duration::from_millis(300),
            });
        }
        for c in expected::CELLS
            .iter()
            .filter(|c| c.arch == arch && c.mode == Mode::Natural)
        {
            let estimate = match c.expect {
                Expect::Skip => Duration::from_millis(150),
                Expect::Bug => Duration::from_millis(400),
                _ => Duration::from_millis(CLEAN_BUDGET_MS + 200),
            };
            steps.push(Step {
                arch,
                what: What::Natural(c),
                cmdline: natural_cmdline(c),
                cells: vec![c],
                estimate,
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tour_covers_every_cell_once() {
        let steps = plan(&Arch::ALL);
        let mut covered: Vec<&Cell> = steps.iter().flat_map(|s| s.cells.clone()).collect();
        assert_eq!(covered.len(), expected::CELLS.len());
        covered.dedup();
        assert_eq!(covered.len(), expected::CELLS.len());
        for s in &steps {
            for c in &s.cells {
                assert!(s.selection().includes(c), "{s:?}");
            }
        }
        assert_eq!(
            steps.iter().filter(|s| s.what == What::SelfTests).count(),
            2
        );
    }

    #[test]
    fn natural_budgets_follow_the_expectation() {
        let bug = expected::CELLS
            .iter()
            .find(|c| c.mode == Mode::Natural && c.expect == Expect::Bug)
            .unwrap();
        assert!(natural_cmdline(bug).contains("stop_at_hit budget_s="));
        let clean = expected::CELLS
            .iter()
            .find(|c| c.mode == Mode::Natural && c.expect == Expect::Clean)
            .unwrap();
        let line = natural_cmdline(clean);
        assert!(
            line.contains("budget_ms=") && !line.contains("stop_at_hit"),
            "{line}"
        );
    }
}
