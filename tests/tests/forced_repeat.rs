//! Forced mode reproduces every buggy cell in its first iteration, run after
//! run: 12 boots per architecture with seeds 1 to 12, each running every
//! forced cell of the expected table (`scenario=all mode=forced`). Every cell
//! must show the table's outcome in every boot, and every forced `bug` cell
//! must hit in iteration 0 and in every iteration after it.

use quiesce_tests::{assert_passed, assert_tcg_platform, boot};
use std::time::Duration;
use xtask::expected::{self, Expect, Mode, Selection};
use xtask::platform::Platform;
use xtask::Arch;

const RUNS: u64 = 12;

fn forced_runs(arch: Arch) {
    let sel = Selection {
        mode: Some(Mode::Forced),
        ..Selection::default()
    };
    let mut first_iteration_hits = 0;
    let mut buggy_cells = 0;
    for seed in 1..=RUNS {
        let cmdline = format!("scenario=all mode=forced seed={seed}");
        let Some(b) = boot(arch, 4, &cmdline, Duration::from_secs(300)) else {
            return;
        };
        assert_passed(&b);
        assert_tcg_platform(&b, arch, 4);
        let observed = expected::observed(&b.ktap);
        let lines = expected::compare(arch, &Platform::of(&b.ktap), &sel, &observed);
        assert!(!lines.is_empty(), "{arch} seed {seed}: no forced cells");
        for l in &lines {
            assert!(l.ok, "{arch} seed {seed}: {l}");
            if l.expect != Some(Expect::Bug) {
                continue;
            }
            buggy_cells += 1;
            let o = l.observed.as_ref().unwrap();
            assert!(
                o.iterations > 0 && o.hits == o.iterations,
                "{arch} seed {seed}: a forced buggy cell missed an iteration: {l}"
            );
            let case = b.ktap.case(&l.case()).unwrap();
            let report = case
                .diagnostics
                .iter()
                .find(|d| d.starts_with("race: scenario="))
                .unwrap_or_else(|| panic!("{arch} seed {seed}: no race report: {l}"));
            assert!(
                report.contains(" iteration=0 "),
                "{arch} seed {seed}: first hit not in iteration 0: {report}"
            );
            first_iteration_hits += 1;
        }
    }
    assert!(buggy_cells > 0, "{arch}: no forced buggy cell");
    assert_eq!(first_iteration_hits, buggy_cells);
    println!("{arch}: {first_iteration_hits} of {buggy_cells} forced buggy cell runs hit in iteration 0 ({RUNS} boots)");
}

fn main() {
    quiesce_tests::Harness::new()
        .per_arch(
            [
                "s390x_forced_buggy_cells_hit_first_iteration_20_of_20",
                "x86_64_forced_buggy_cells_hit_first_iteration_20_of_20",
            ],
            forced_runs,
        )
        .run()
}
