//! The verdicts cannot be fooled by a broken kernel: self-checks that break
//! the kernel on purpose (`inject=`) must turn the cell they break into a
//! mismatch, however the kernel names its outcome.
//!
//! - `inject=deadlock`: the walker of `ptfree-vs-gup-fast` holds the PTE
//!   table's PTL, which the unmap needs. On x86-64 the forced `immediate`
//!   cell under flush IPIs is `impossible` in the table, proven by the
//!   flush IPI the interrupts-off walker holds back; the injected cycle is a
//!   PTL cycle instead, and the cell must fail naming it. On s390x the same
//!   cell under IPTE is `bug`; the deadlock must not pass either.
//! - `inject=late-finding`: after the run is released (x86-64: the
//!   `impossible` cell; s390x: `ipi-sync`, whose fix holds the schedule
//!   back), the walker reads the table it walked again once the unmap freed
//!   it. The detectors judge what happens after a release: the cell is
//!   `bug`.
//! - `inject=misplaced-point`: `wp-unlock-vs-zap`'s fix is broken (the page
//!   is unlocked after the PTL release, the bug's order) and the row's race
//!   point moved before the release, out of the window. Explore mode must
//!   still find the window through the synchronisation events (the PTL
//!   release, the page unlock): the fixed cell explored has buggy
//!   schedules, and the first one, replayed in forced mode, is a bug in
//!   every iteration.
//! - `inject=apart`: in a natural run of a fixed `ptfree-vs-gup-fast` cell
//!   the walker starts only once the unmap is done. Every walk completes
//!   (it reads an empty PMD) and nothing fires: the kernel says `clean`,
//!   but no iteration overlapped, and the table's floor must judge the cell
//!   `vacuous`.

use quiesce_tests::{assert_passed, assert_replay_is_bug, boot, boot_to_fail, TIMEOUT};
use xtask::expected::{self, Mode, Selection};
use xtask::platform::Platform;
use xtask::{Arch, Boot};

/// The forced cell of `ptfree-vs-gup-fast` that each self-check breaks:
/// its variant and flush strategy on `arch`.
fn cell(arch: Arch, inject: &str) -> (&'static str, &'static str) {
    match (arch, inject) {
        (Arch::X86_64, _) => ("immediate", "ipi"),
        (Arch::S390x, "deadlock") => ("immediate", "ipte"),
        (Arch::S390x, _) => ("ipi-sync", "ipte"),
    }
}

/// Boots the cell with `inject=` (a boot that must fail: its cell must
/// differ from the table); returns the comparison's line.
fn injected(arch: Arch, inject: &str) -> Option<expected::Line> {
    let (variant, flush) = cell(arch, inject);
    let cmdline = format!(
        "scenario=ptfree-vs-gup-fast variant={variant} flush={flush} mode=forced inject={inject}"
    );
    let b = boot_to_fail(arch, 4, &cmdline, TIMEOUT)?;
    assert_passed(&b);
    let sel = Selection::new(
        "ptfree-vs-gup-fast",
        Some(variant),
        Some(flush),
        Some(Mode::Forced),
    );
    let platform = Platform::of(&b.ktap);
    let lines = expected::compare(arch, &platform, &sel, &expected::observed(&b.ktap));
    assert_eq!(lines.len(), 1, "{arch}: {lines:?}");
    assert_junit_shows_the_mismatch(&b, &lines[0]);
    Some(lines.into_iter().next().unwrap())
}

/// The JUnit XML of the boot (`cargo xtask test --junit`) shows the broken
/// cell as the one `<failure>` when the boot is read as one that must pass,
/// and none as the boot that must fail that it is.
fn assert_junit_shows_the_mismatch(b: &Boot, l: &expected::Line) {
    let xml = |must_fail| {
        xtask::junit::render(
            &[],
            &[xtask::junit::BootLog {
                name: "boot".into(),
                console: b.console.join("\n"),
                must_fail,
            }],
        )
    };
    let case = &l.case()["scenario.".len()..];
    let failure = format!("<testcase classname=\"boot.scenario\" name=\"{case}\"><failure ");
    let as_passing = xml(false);
    assert_eq!(as_passing.matches("<failure ").count(), 1, "{as_passing}");
    assert!(as_passing.contains(&failure), "{as_passing}");
    let as_failing = xml(true);
    assert!(!as_failing.contains("<failure"), "{as_failing}");
}

fn deadlock_is_not_the_catalogues_cycle(arch: Arch) {
    let Some(l) = injected(arch, "deadlock") else {
        return;
    };
    let o = l.observed.as_ref().expect("the cell ran");
    assert!(!l.ok, "{arch}: an injected deadlock passed: {l}");
    assert_eq!(o.outcome, "impossible", "{arch}: {l}");
    assert!(
        o.evidence
            .as_deref()
            .is_some_and(|e| e.contains("ptl:unmap>gup")),
        "{arch}: the cycle found is not named: {l}"
    );
    if arch == Arch::X86_64 {
        assert!(
            format!("{l}").contains("the table's proof is flush-ipi:unmap>gup"),
            "{arch}: {l}"
        );
    }
}

fn roles_apart_are_vacuous(arch: Arch) {
    let flush = match arch {
        Arch::S390x => "ipte",
        Arch::X86_64 => "nmi",
    };
    let cmdline = format!(
        "scenario=ptfree-vs-gup-fast variant=rcu flush={flush} mode=natural iterations=300 inject=apart"
    );
    let Some(b) = boot_to_fail(arch, 4, &cmdline, TIMEOUT) else {
        return;
    };
    assert_passed(&b);
    let observed = expected::observed(&b.ktap);
    let o = &observed[0];
    // The kernel's own verdict: every role completed, nothing fired.
    assert_eq!(
        (o.outcome.as_str(), o.iterations, o.hits, o.overlap),
        ("clean", 300, 0, 0),
        "{arch}: {o:?}"
    );
    let sel = Selection::new(
        "ptfree-vs-gup-fast",
        Some("rcu"),
        Some(flush),
        Some(Mode::Natural),
    );
    let lines = expected::compare(arch, &Platform::of(&b.ktap), &sel, &observed);
    let l = &lines[0];
    assert!(!l.ok, "{arch}: roles that never met passed: {l}");
    assert_eq!(
        l.observed.as_ref().map(|o| o.outcome.as_str()),
        Some("vacuous"),
        "{arch}: {l}"
    );
    assert!(
        format!("{l}").contains("overlap 0 below the floor"),
        "{arch}: {l}"
    );
    assert_junit_shows_the_mismatch(&b, l);
}

fn finding_after_release_is_bug(arch: Arch) {
    let Some(l) = injected(arch, "late-finding") else {
        return;
    };
    let o = l.observed.as_ref().expect("the cell ran");
    assert!(!l.ok, "{arch}: a finding after the release passed: {l}");
    assert_eq!(o.outcome, "bug", "{arch}: {l}");
    assert!(o.hits > 0, "{arch}: {l}");
}

/// `inject=` breaks a scenario run only: without `scenario=` the command
/// line is refused.
fn inject_needs_a_scenario(arch: Arch) {
    let Some(b) = boot_to_fail(arch, 2, "inject=deadlock", TIMEOUT) else {
        return;
    };
    assert!(!b.verdict().passed, "{arch}");
    quiesce_tests::assert_console(&b, |l| l.contains("inject= goes with scenario="));
}

/// `inject=misplaced-point`: explore finds the window no race point marks,
/// and its buggy schedule replays as a forced bug.
fn explore_finds_a_misplaced_point(arch: Arch) {
    let base = "scenario=wp-unlock-vs-zap variant=fixed inject=misplaced-point";
    let Some(b) = boot(arch, 4, &format!("{base} mode=explore"), TIMEOUT) else {
        return;
    };
    assert_passed(&b);
    let observed = expected::observed(&b.ktap);
    assert_eq!(observed.len(), 1, "{arch}: {observed:#?}");
    let o = &observed[0];
    let x = o.explore.as_ref().expect("explore figures");
    assert_eq!(
        (o.mode, o.outcome.as_str()),
        (Mode::Explore, "bug"),
        "{arch}: explore missed the window: {x:?}"
    );
    assert!(x.buggy >= 1, "{arch}: {x:?}");
    let schedule = x.schedule.clone().expect("a buggy schedule to replay");
    assert_replay_is_bug(arch, base, &schedule, TIMEOUT);
}

fn main() {
    quiesce_tests::Harness::new()
        .per_arch(
            [
                "s390x_explore_finds_a_misplaced_point",
                "x86_64_explore_finds_a_misplaced_point",
            ],
            explore_finds_a_misplaced_point,
        )
        .per_arch(
            ["s390x_deadlock", "x86_64_deadlock"],
            deadlock_is_not_the_catalogues_cycle,
        )
        .per_arch(
            ["s390x_late_finding", "x86_64_late_finding"],
            finding_after_release_is_bug,
        )
        .per_arch(
            ["s390x_roles_apart", "x86_64_roles_apart"],
            roles_apart_are_vacuous,
        )
        .per_arch(
            [
                "s390x_inject_needs_scenario",
                "x86_64_inject_needs_scenario",
            ],
            inject_needs_a_scenario,
        )
        .run()
}
