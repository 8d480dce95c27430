//! Boots under `--accel kvm`: x86-64 on an x86-64 host with `/dev/kvm`,
//! opt-in with `QUIESCE_TEST_KVM=1` (the hypervisor of the project's
//! machines is a slow shadow-paging one: these boots take about 3 minutes;
//! CI runs under TCG). Elsewhere each test is reported ignored with the
//! reason.
//!
//! What a hypervisor may legitimately do differently is measured by the
//! boot's platform line (`kernel/src/platform.rs`); the tests assert that
//! the boot is judged by what it measured: a self-test whose claim needs a
//! property the machine lacks is a skip with the reason, never `ok`; every
//! forced cell agrees with the expected table on that platform, an
//! alternative chosen only for a property measured `no`.

use quiesce_tests::{boot_under, Harness};
use std::time::Duration;
use xtask::expected::{self, Mode, Selection};
use xtask::ktap::Directive;
use xtask::platform::{Platform, Property};
use xtask::qemu::Accel;
use xtask::Arch;

/// A self-test boot took 130 s on the project's machines.
const TIMEOUT: Duration = Duration::from_secs(900);

/// Why the KVM boots cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    if std::env::consts::ARCH != "x86_64" {
        return Some(format!(
            "KVM runs the x86_64 kernel on an x86_64 host, this one is {}",
            std::env::consts::ARCH
        ));
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm does not exist on this host".into());
    }
    if std::env::var_os("QUIESCE_TEST_KVM").is_none_or(|v| v != "1") {
        return Some("KVM boots run only with QUIESCE_TEST_KVM=1".into());
    }
    quiesce_tests::arches_left_out(&[Arch::X86_64])
}

/// The self-test of each property, and its case name.
const PROPERTY_TESTS: [(Property, &str); 2] = [
    (Property::StaleTlb, "mm.stale_tlb_after_pte_clear"),
    (Property::IpiHeldByIrqsOff, "boot.ipi_held_by_irqs_off"),
];

fn self_tests() {
    let Some(b) = boot_under(Accel::Kvm, Arch::X86_64, 4, "", TIMEOUT) else {
        return;
    };
    quiesce_tests::assert_passed(&b);
    let platform = Platform::of(&b.ktap);
    assert!(platform.printed(), "no platform line");
    for (p, case) in PROPERTY_TESTS {
        let r = b.ktap.case(case).unwrap();
        match (platform.value(p), &r.directive) {
            (Some("yes"), None) => {}
            (Some("no"), Some(Directive::Skip(why))) => assert_eq!(why, p.lacking(), "{case}"),
            (v, d) => panic!(
                "{case}: {p}={v:?} but the case says {d:?} ({})",
                platform.describe()
            ),
        }
    }
}

fn forced_cells() {
    let Some(b) = boot_under(
        Accel::Kvm,
        Arch::X86_64,
        4,
        "scenario=all mode=forced",
        TIMEOUT,
    ) else {
        return;
    };
    quiesce_tests::assert_passed(&b);
    let platform = Platform::of(&b.ktap);
    assert!(platform.printed(), "no platform line");
    let sel = Selection {
        mode: Some(Mode::Forced),
        ..Selection::default()
    };
    let lines = expected::compare(Arch::X86_64, &platform, &sel, &expected::observed(&b.ktap));
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l.ok, "{l} ({})", platform.describe());
        if let Some(because) = &l.because {
            assert!(
                Property::ALL
                    .iter()
                    .any(|&p| platform.lacks(p) && because.ends_with(p.lacking())),
                "{l}: an alternative for a property not measured absent ({})",
                platform.describe()
            );
        }
    }
}

fn main() {
    Harness::new()
        .test_unless("x86_64_kvm_self_tests", unavailable(), self_tests)
        .test_unless("x86_64_kvm_forced_cells", unavailable(), forced_cells)
        .run()
}
