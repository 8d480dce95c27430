//! Host tests of the command-line parser: defaults, every key, errors and
//! test patterns.

use super::*;

#[test]
fn empty_line_gives_defaults() {
    let c = Cmdline::parse("").unwrap();
    assert!(c.tests.is_empty());
    assert_eq!(c.seed, DEFAULT_SEED);
    assert!(!c.seed_given);
    assert_eq!(c.tick_hz, 100);
    assert!(!c.fail && !c.hang && !c.crash);
    assert!(!c.list);
}

#[test]
fn list_is_a_flag() {
    assert!(Cmdline::parse("list").unwrap().list);
    assert!(Cmdline::parse("list=1").unwrap().list);
    assert!(!Cmdline::parse("list=0").unwrap().list);
    assert!(matches!(
        Cmdline::parse("list=rows"),
        Err(CmdlineError::BadValue { key: "list", .. })
    ));
    assert_eq!(
        Cmdline::parse("list list"),
        Err(CmdlineError::Repeated("list"))
    );
}

#[test]
fn every_key_parses() {
    let c = Cmdline::parse(
        "test=boot.ipi*,heap seed=0x10 iterations=5 scenario=s variant=v mode=forced \
         tick_hz=250 selftest.fail selftest.panic=2 selftest.hang=0 selftest.crash=1",
    )
    .unwrap();
    assert_eq!(c.tests, ["boot.ipi*", "heap"]);
    assert_eq!((c.seed, c.seed_given), (16, true));
    assert_eq!(c.iterations, Some(5));
    assert_eq!(
        (c.scenario, c.variant, c.mode),
        (Some("s"), Some("v"), Some(Mode::Forced))
    );
    assert_eq!(c.tick_hz, 250);
    assert!(c.fail && !c.hang && c.crash);
    assert_eq!(
        Cmdline::parse("dirty=skey").unwrap().dirty,
        Some(crate::mm::dirty::DirtyTracking::StorageKey)
    );
    assert_eq!(c.dirty, None);
    assert_eq!(Cmdline::parse("mem=24M").unwrap().mem_limit, Some(24 << 20));
    assert_eq!(
        Cmdline::parse("mem=0x1000").unwrap().mem_limit,
        Some(0x1000)
    );
    assert_eq!(Cmdline::parse("mem=2g").unwrap().mem_limit, Some(2 << 30));
    assert!(Cmdline::parse("mem=12X").is_err());
    assert!(Cmdline::parse("mem=M").is_err());
    assert_eq!(Cmdline::parse("flush=nmi").unwrap().flush, Some("nmi"));
    assert!(Cmdline::parse("flush=tlbi").is_err());
    assert_eq!(c.panic_cpu, Some(2));
    assert_eq!(c.fault_cpu, None);
    assert_eq!(
        Cmdline::parse("selftest.fault=3").unwrap().fault_cpu,
        Some(3)
    );
    assert_eq!(
        Cmdline::parse("selftest.fault=0x1").unwrap().fault_cpu,
        Some(1)
    );
    assert_eq!((c.budget_ms, c.delays, c.progress_s), (None, true, None));
    assert!(!c.stop_at_hit && Cmdline::parse("stop_at_hit").unwrap().stop_at_hit);
    let soak = Cmdline::parse("budget_s=600 delays=0 progress_s=10").unwrap();
    assert_eq!(
        (soak.budget_ms, soak.delays, soak.progress_s),
        (Some(600_000), false, Some(10))
    );
    assert_eq!(
        Cmdline::parse("budget_ms=250").unwrap().budget_ms,
        Some(250)
    );
}

#[test]
fn unknown_key_is_an_error() {
    assert_eq!(
        Cmdline::parse("seed=1 bogus=3"),
        Err(CmdlineError::UnknownKey("bogus"))
    );
    assert_eq!(
        Cmdline::parse("verbose"),
        Err(CmdlineError::UnknownKey("verbose"))
    );
}

#[test]
fn bad_values_are_errors() {
    assert!(matches!(
        Cmdline::parse("seed=abc"),
        Err(CmdlineError::BadValue { key: "seed", .. })
    ));
    assert!(matches!(
        Cmdline::parse("seed="),
        Err(CmdlineError::BadValue { key: "seed", .. })
    ));
    assert!(matches!(
        Cmdline::parse("mode=fast"),
        Err(CmdlineError::BadValue { key: "mode", .. })
    ));
    assert!(matches!(
        Cmdline::parse("tick_hz=0"),
        Err(CmdlineError::BadValue { .. })
    ));
    assert!(matches!(
        Cmdline::parse("selftest.fail=maybe"),
        Err(CmdlineError::BadValue { .. })
    ));
    for bad in ["selftest.fault", "selftest.fault=", "selftest.fault=cpu1"] {
        assert!(
            matches!(
                Cmdline::parse(bad),
                Err(CmdlineError::BadValue {
                    key: "selftest.fault",
                    ..
                })
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        Cmdline::parse("dirty=pte"),
        Err(CmdlineError::BadValue { key: "dirty", .. })
    ));
    for bad in [
        "budget_s=0",
        "budget_s=86401",
        "budget_ms=0",
        "budget_ms=86400001",
        "budget_s=1 budget_ms=5",
        "budget_ms=5 budget_s=1",
        "progress_s=0",
        "delays=2",
    ] {
        assert!(
            matches!(Cmdline::parse(bad), Err(CmdlineError::BadValue { .. })),
            "{bad}"
        );
    }
    assert_eq!(
        Cmdline::parse("seed=1 seed=2"),
        Err(CmdlineError::Repeated("seed"))
    );
}

#[test]
fn patterns_select_tests() {
    let c = Cmdline::parse("test=ipi,heap*contention").unwrap();
    assert!(c.selects("boot", "ipi_round_trip"));
    assert!(c.selects("boot", "heap_contention"));
    assert!(!c.selects("boot", "timer_ticks"));
    assert!(Cmdline::parse("").unwrap().selects("any", "thing"));
    assert!(matches_pattern("boot.*", "boot.x"));
    assert!(!matches_pattern("a*b", "ba"));
}

#[test]
fn inject_goes_with_a_scenario() {
    use crate::race::scenario::Inject;
    let c = Cmdline::parse("scenario=ptfree-vs-gup-fast inject=deadlock").unwrap();
    assert_eq!(c.inject, Some(Inject::Deadlock));
    let c = Cmdline::parse("scenario=all inject=late-finding").unwrap();
    assert_eq!(c.inject, Some(Inject::LateFinding));
    assert!(matches!(
        Cmdline::parse("inject=deadlock"),
        Err(CmdlineError::BadValue { key: "inject", .. })
    ));
    assert!(matches!(
        Cmdline::parse("scenario=all inject=nothing"),
        Err(CmdlineError::BadValue { key: "inject", .. })
    ));
}
