//! `cargo xtask soak`: long natural-mode runs, outside CI.
//!
//! CI runs every natural fixed cell for 10 000 iterations and every natural
//! buggy cell briefly. A soak runs the same cells much longer, one boot per
//! run:
//! - every natural cell the table expects `clean` (a fixed kernel) for at
//!   least [`FIXED_ITERATIONS`] iterations with the rows' window-widening
//!   delays armed; one hit, a short run, an overlap below the cell's floor
//!   ([`Cell::below_floor`]) or a failed boot fails the soak;
//! - every natural cell expected `bug` or reporting its hit rate (a buggy
//!   kernel) twice, with and without the delays, for
//!   [`BUGGY_ITERATIONS`] iterations, reporting hits, the time to the first
//!   hit and iterations per second; a `bug` cell with delays that never hits
//!   fails the soak, and so does a hit-rate cell with delays that ends
//!   `clean` below its floor (without delays the hit rate and the overlap
//!   are figures only).
//!
//! Each run prints the command that repeats it (the seed, the iteration and
//! time budgets, the delays), so any hit can be replayed.

use crate::expected::{Cell, Expect, Mode, Selection, CELLS};
use crate::Arch;
use std::fmt;

/// Default iterations per fixed cell.
pub const FIXED_ITERATIONS: u64 = 1_000_000;
/// Default iterations per buggy cell and delay setting.
pub const BUGGY_ITERATIONS: u64 = 100_000;

/// One planned boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoakRun {
    /// The table's cell (natural mode).
    pub cell: Cell,
    /// Whether the rows' window-widening delays are armed.
    pub delays: bool,
    /// Iteration budget.
    pub iterations: u64,
    /// Time budget in seconds (the run stops at whichever comes first).
    pub budget_s: u64,
    /// The seed.
    pub seed: u64,
}

impl SoakRun {
    /// The kernel command line of the run.
    pub fn cmdline(&self, progress_s: u64) -> String {
        format!(
            "{} seed={} iterations={} budget_s={} delays={} progress_s={progress_s}",
            self.cell.kernel_args(),
            self.seed,
            self.iterations,
            self.budget_s,
            u8::from(self.delays)
        )
    }

    /// Whether the cell is a fixed kernel's (expected `clean`).
    pub fn fixed(&self) -> bool {
        self.cell.expect == Expect::Clean
    }

    /// The QEMU time limit: the budget plus room for boot and teardown.
    pub fn timeout_s(&self) -> u64 {
        self.budget_s + 300
    }

    /// The command that repeats this run.
    pub fn repeat_command(&self, smp: usize) -> String {
        format!(
            "cargo xtask run {} --smp {smp} --timeout {} --seed {} -- iterations={} budget_s={} delays={}",
            self.cell.run_options(),
            self.timeout_s(),
            self.seed,
            self.iterations,
            self.budget_s,
            u8::from(self.delays)
        )
    }
}

/// The runs of a soak: every selected natural cell of `arches` that is not
/// `skip`, fixed cells once with delays, buggy cells with and without.
pub fn plan(
    arches: &[Arch],
    sel: &Selection,
    fixed_iterations: u64,
    buggy_iterations: u64,
    budget_s: u64,
    seed: u64,
) -> Vec<SoakRun> {
    let mut runs = Vec::new();
    for c in CELLS
        .iter()
        .filter(|c| arches.contains(&c.arch) && c.mode == Mode::Natural && sel.includes(c))
    {
        let run = |delays, iterations| SoakRun {
            cell: *c,
            delays,
            iterations,
            budget_s,
            seed,
        };
        match c.expect {
            Expect::Clean => runs.push(run(true, fixed_iterations)),
            Expect::Bug | Expect::Report => {
                runs.push(run(true, buggy_iterations));
                runs.push(run(false, buggy_iterations));
            }
            Expect::Skip | Expect::Impossible => {}
        }
    }
    runs
}

/// What one run showed.
#[derive(Clone, Debug, PartialEq)]
pub struct SoakResult {
    /// The kernel's outcome word (`failed` if the boot gave none).
    pub outcome: String,
    /// Iterations run.
    pub iterations: u64,
    /// Iterations in which a detector fired.
    pub hits: u64,
    /// Iterations in which the roles met inside the race window.
    pub overlap: u64,
    /// Time to the first hit, ms.
    pub first_hit_ms: Option<f64>,
    /// Iterations per second.
    pub rate: f64,
    /// Whether the boot passed (KTAP, status line, exit code).
    pub boot_ok: bool,
}

impl SoakResult {
    /// What the boot of `run` showed (its one natural cell).
    pub fn of(run: &SoakRun, boot: &crate::Boot) -> Self {
        let obs = crate::expected::observed(&boot.ktap).into_iter().next();
        let rate = boot
            .ktap
            .case(&run.cell.case())
            .and_then(|r| r.diag_value("iters_per_sec").and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        SoakResult {
            outcome: obs.as_ref().map_or("failed".into(), |o| o.outcome.clone()),
            iterations: obs.as_ref().map_or(0, |o| o.iterations),
            hits: obs.as_ref().map_or(0, |o| o.hits),
            overlap: obs.as_ref().map_or(0, |o| o.overlap),
            first_hit_ms: obs
                .as_ref()
                .and_then(|o| o.first_hit_ns)
                .map(|n| n as f64 / 1e6),
            rate,
            boot_ok: boot.verdict().passed,
        }
    }
}

/// The judgement of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// As the table expects.
    Ok,
    /// Not as expected, with the reason.
    Fail(String),
}

impl fmt::Display for Judgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Judgement::Ok => write!(f, "ok"),
            Judgement::Fail(why) => write!(f, "FAIL: {why}"),
        }
    }
}

/// Judges a run against the table.
pub fn judge(run: &SoakRun, r: &SoakResult) -> Judgement {
    if !r.boot_ok {
        return Judgement::Fail(format!("the boot failed (outcome {})", r.outcome));
    }
    if let Some(why) = run
        .cell
        .below_floor(&r.outcome, r.iterations, r.overlap, run.delays)
    {
        return Judgement::Fail(format!("vacuous: {why}"));
    }
    match run.cell.expect {
        Expect::Clean => {
            if r.outcome != "clean" || r.hits > 0 {
                Judgement::Fail(format!("outcome {} with {} hits", r.outcome, r.hits))
            } else if r.iterations < run.iterations {
                Judgement::Fail(format!(
                    "{} of {} iterations in the {} s budget",
                    r.iterations, run.iterations, run.budget_s
                ))
            } else {
                Judgement::Ok
            }
        }
        Expect::Bug if run.delays && r.hits == 0 => {
            Judgement::Fail(format!("no hit in {} iterations with delays", r.iterations))
        }
        _ if r.outcome != "bug" && r.outcome != "clean" => {
            Judgement::Fail(format!("outcome {}", r.outcome))
        }
        _ => Judgement::Ok,
    }
}

/// One line of the soak's results table: arch, row, variant, delays,
/// iterations, hits, overlap, first hit (ms), iterations per second and
/// the judgement.
pub fn table_row(run: &SoakRun, r: &SoakResult, j: &Judgement) -> String {
    format!(
        "{:<8} {:<24} {:<22} {:<7} {:>10} {:>8} {:>10} {:>14} {:>12.0}  {j}",
        run.cell.arch.to_string(),
        run.cell.row,
        run.cell.label(),
        if run.delays { "on" } else { "off" },
        r.iterations,
        r.hits,
        r.overlap,
        r.first_hit_ms.map_or("-".into(), |ms| format!("{ms:.1}")),
        r.rate
    )
}

/// Formats a duration in seconds as `1h02m`, `3m10s` or `42s`.
pub fn human_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<SoakRun> {
        plan(&Arch::ALL, &Selection::default(), 1_000_000, 1_000, 3600, 7)
    }

    #[test]
    fn every_natural_cell_is_planned() {
        let runs = all();
        for c in CELLS.iter().filter(|c| c.mode == Mode::Natural) {
            let n = runs.iter().filter(|r| r.cell == *c).count();
            let want = match c.expect {
                Expect::Clean => 1,
                Expect::Bug | Expect::Report => 2,
                Expect::Skip | Expect::Impossible => 0,
            };
            assert_eq!(n, want, "{c:?}");
        }
        assert!(runs.iter().all(|r| r.cell.mode == Mode::Natural));
        assert!(runs
            .iter()
            .filter(|r| r.fixed())
            .all(|r| r.delays && r.iterations == 1_000_000));
        assert!(runs.iter().any(|r| !r.delays));
    }

    #[test]
    fn the_cmdline_repeats_the_run() {
        let r = all().into_iter().find(|r| !r.delays).unwrap();
        let line = r.cmdline(10);
        for w in [
            format!("scenario={}", r.cell.row),
            format!("variant={}", r.cell.variant),
            "mode=natural".into(),
            "seed=7".into(),
            "iterations=1000".into(),
            "budget_s=3600".into(),
            "delays=0".into(),
            "progress_s=10".into(),
        ] {
            assert!(line.split(' ').any(|x| x == w), "{w} in {line}");
        }
        let repeat = r.repeat_command(4);
        assert!(repeat.contains("--seed 7") && repeat.contains("delays=0"));
        assert!(repeat.contains(&format!("--timeout {}", r.timeout_s())));
    }

    #[test]
    fn selection_narrows_the_plan() {
        let sel = Selection::new("wp-unlock-vs-zap", Some("fixed"), None, None);
        let runs = plan(&[Arch::S390x], &sel, 10, 10, 60, 1);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].cell.arch, Arch::S390x);
    }

    fn result(outcome: &str, iterations: u64, hits: u64) -> SoakResult {
        SoakResult {
            outcome: outcome.into(),
            iterations,
            hits,
            overlap: iterations / 2,
            first_hit_ms: None,
            rate: 1.0,
            boot_ok: outcome == "clean" || outcome == "bug",
        }
    }

    #[test]
    fn judgement_follows_the_table() {
        let runs = all();
        let fixed = runs.iter().find(|r| r.fixed()).unwrap();
        assert_eq!(judge(fixed, &result("clean", 1_000_000, 0)), Judgement::Ok);
        // Clean, but its roles never met: below the cell's floor.
        let apart = SoakResult {
            overlap: 0,
            ..result("clean", 1_000_000, 0)
        };
        assert!(
            matches!(judge(fixed, &apart), Judgement::Fail(ref why) if why.contains("below the floor")),
            "{}",
            judge(fixed, &apart)
        );
        assert!(matches!(
            judge(fixed, &result("clean", 999_999, 0)),
            Judgement::Fail(_)
        ));
        assert!(matches!(
            judge(fixed, &result("bug", 1_000_000, 1)),
            Judgement::Fail(_)
        ));
        assert!(matches!(
            judge(fixed, &result("vacuous", 1_000_000, 0)),
            Judgement::Fail(_)
        ));
        let bug = |delays| {
            runs.iter()
                .find(|r| r.cell.expect == Expect::Bug && r.delays == delays)
                .unwrap()
        };
        assert_eq!(judge(bug(true), &result("bug", 10, 3)), Judgement::Ok);
        assert!(matches!(
            judge(bug(true), &result("clean", 1000, 0)),
            Judgement::Fail(_)
        ));
        assert_eq!(judge(bug(false), &result("clean", 1000, 0)), Judgement::Ok);
        assert!(matches!(
            judge(bug(false), &result("hang", 3, 0)),
            Judgement::Fail(_)
        ));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_secs(42.4), "42s");
        assert_eq!(human_secs(190.0), "3m10s");
        assert_eq!(human_secs(3720.0), "1h02m");
    }
}
