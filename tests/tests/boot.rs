//! Boot each architecture with 1, 2, 4 and 8 CPUs and assert every self-test.

use quiesce_tests::{assert_passed, boot, TIMEOUT};
use xtask::ktap::Directive;
use xtask::Arch;

/// What each case of the `boot` suite must report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Skip,
}

fn expected(arch: Arch, smp: usize, case: &str) -> Expect {
    match case {
        "cpus_online" | "call_function_wait" | "timer_ticks" | "heap_contention" => Expect::Ok,
        // Need a second CPU to send to.
        "ipi_round_trip" | "ipi_held_by_irqs_off" => {
            if smp >= 2 {
                Expect::Ok
            } else {
                Expect::Skip
            }
        }
        // s390x has no NMI: every external interrupt is maskable.
        "nmi_with_irqs_off" => {
            if arch == Arch::X86_64 && smp >= 2 {
                Expect::Ok
            } else {
                Expect::Skip
            }
        }
        // Only when asked for on the command line.
        "requested_failure" | "requested_panic" => Expect::Skip,
        other => panic!("no expectation for boot.{other}: add it here"),
    }
}

const CASES: [&str; 9] = [
    "cpus_online",
    "ipi_round_trip",
    "call_function_wait",
    "ipi_held_by_irqs_off",
    "nmi_with_irqs_off",
    "timer_ticks",
    "heap_contention",
    "requested_failure",
    "requested_panic",
];

fn boot_and_assert(arch: Arch, smp: usize) {
    let Some(b) = boot(arch, smp, "", TIMEOUT) else {
        return;
    };
    assert_passed(&b);
    let cases = b.ktap.cases();
    let names: Vec<&str> = cases.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<String> = CASES.iter().map(|c| format!("boot.{c}")).collect();
    assert_eq!(names, want, "the boot suite's cases changed");
    for (name, r) in &cases {
        let case = name.strip_prefix("boot.").unwrap();
        let got = match (&r.directive, r.ok) {
            (Some(Directive::Skip(_)), true) => Expect::Skip,
            (None, true) => Expect::Ok,
            _ => panic!("{name} failed\n{}", b.failure_report()),
        };
        assert_eq!(got, expected(arch, smp, case), "{arch} smp={smp} {name}");
    }
    let online = b.ktap.case("boot.cpus_online").unwrap();
    assert_eq!(
        online.diag_value("cpus_online"),
        Some(smp.to_string().as_str()),
        "{arch}: CPUs online"
    );
    assert_eq!(b.ktap.diag_value("arch"), Some(arch.name()));
    if smp >= 2 {
        // The held-back IPI: the sender's wait covered the interrupts-off section.
        let held = b.ktap.case("boot.ipi_held_by_irqs_off").unwrap();
        let wait: u64 = held.diag_value("sender_wait_ns").unwrap().parse().unwrap();
        assert!(
            wait >= 10_000_000,
            "{arch}: sender waited only {wait} ns for a CPU with interrupts off"
        );
    }
}

macro_rules! boot_tests {
    ($($name:ident: $arch:expr, $smp:expr;)*) => {$(
        #[test]
        fn $name() {
            boot_and_assert($arch, $smp);
        }
    )*};
}

boot_tests! {
    s390x_smp1: Arch::S390x, 1;
    s390x_smp2: Arch::S390x, 2;
    s390x_smp4: Arch::S390x, 4;
    s390x_smp8: Arch::S390x, 8;
    x86_64_smp1: Arch::X86_64, 1;
    x86_64_smp2: Arch::X86_64, 2;
    x86_64_smp4: Arch::X86_64, 4;
    x86_64_smp8: Arch::X86_64, 8;
}
