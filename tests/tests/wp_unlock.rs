//! Catalogue row `wp-unlock-vs-zap`, forced mode, per architecture: each
//! buggy variant hits in its first iteration and in every one after, with
//! the interleaving of the catalogue (the fault held before `unlock_page`
//! while the zap clears the PTE and frees the locked page), and the fix
//! holds that interleaving back through its PTL in every iteration.

use quiesce_tests::{assert_forced_report, assert_passed, boot, TIMEOUT};
use xtask::expected::{self, Mode};
use xtask::ktap::diag_value as value;
use xtask::Arch;

fn forced(arch: Arch) {
    let Some(b) = boot(arch, 4, "scenario=wp-unlock-vs-zap mode=forced", TIMEOUT) else {
        return;
    };
    assert_passed(&b);
    let observed = expected::observed(&b.ktap);
    for variant in [
        "buggy-immediate",
        "buggy-batched",
        "fixed",
        "fixed-immediate",
    ] {
        let o = observed
            .iter()
            .find(|o| o.row == "wp-unlock-vs-zap" && o.variant == variant && o.mode == Mode::Forced)
            .unwrap_or_else(|| panic!("{arch} {variant}: not run"));
        let case = b
            .ktap
            .case(&format!("scenario.wp-unlock-vs-zap:{variant}:forced"))
            .unwrap();
        let d = &case.diagnostics;
        let row = d.iter().find(|l| l.starts_with("row=")).unwrap();
        let held = value(row, "held_by_fix").and_then(|v| v.parse::<u64>().ok());
        assert!(o.iterations >= 1, "{arch} {variant}: {row}");
        if variant.starts_with("fixed") {
            assert_eq!(o.outcome, "clean", "{arch} {variant}: {row}");
            assert_eq!(o.hits, 0, "{arch} {variant}: {row}");
            // Every iteration: the zap waited for the PTL the fault held (at
            // least once: on a loaded host the prover may see the released
            // cycle again before the fault has left its point).
            assert!(held >= Some(o.iterations), "{arch} {variant}: {row}");
            assert!(
                d.iter().any(|l| l.starts_with("held by the fix:")),
                "{arch} {variant}: {d:#?}"
            );
            continue;
        }
        assert_eq!(o.outcome, "bug", "{arch} {variant}: {row}");
        assert_eq!(o.hits, o.iterations, "{arch} {variant}: {row}");
        assert_eq!(held, Some(0), "{arch} {variant}: {row}");
        // The first hit is iteration 0, and it is the locked page freed; the
        // interleaving: the fault is held before unlock_page, the zap clears
        // the PTE and finishes (page freed), then the fault unlocks.
        assert_forced_report(
            &format!("{arch} {variant}"),
            d,
            &["race: scenario=wp-unlock-vs-zap", "mode=forced"],
            &["race: BUG: bad page state at free", "(locked)"],
            &[
                "fault: step 0 done at wp:before_unlock_page",
                "zap: step 2 done at zap:after_pte_clear",
                "zap: step 3 done at madvise:after_dontneed",
                "fault: step 4 done at wp:before_unlock_page",
            ],
        );
    }
}

fn main() {
    quiesce_tests::Harness::new()
        .per_arch(
            [
                "s390x_forced_hits_in_iteration_0",
                "x86_64_forced_hits_in_iteration_0",
            ],
            forced,
        )
        .run()
}
