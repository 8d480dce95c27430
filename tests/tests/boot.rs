//! Boot each architecture with 1, 2, 4 and 8 CPUs and assert every self-test of
//! every suite.

use quiesce_tests::{assert_passed, assert_tcg_platform, boot, TIMEOUT};
use xtask::ktap::Directive;
use xtask::Arch;

/// What each case must report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Skip,
}

/// `Ok` where the case applies, else `Skip`.
fn ok_if(applies: bool) -> Expect {
    if applies {
        Expect::Ok
    } else {
        Expect::Skip
    }
}

fn expected(arch: Arch, smp: usize, case: &str) -> Expect {
    match case {
        "boot.cpus_online"
        | "boot.call_function_wait"
        | "boot.timer_ticks"
        | "boot.heap_contention" => Expect::Ok,
        // Need a second CPU to send to.
        "boot.ipi_round_trip" | "boot.ipi_held_by_irqs_off" => ok_if(smp >= 2),
        // s390x has no NMI: every external interrupt is maskable.
        "boot.nmi_with_irqs_off" => ok_if(arch == Arch::X86_64 && smp >= 2),
        // Only when asked for on the command line.
        "boot.requested_failure" | "boot.requested_panic" | "boot.requested_fault" => Expect::Skip,
        // The frame allocator: every case runs on every machine.
        c if c.starts_with("mm_page.") => Expect::Ok,
        "mm.map_fault_unmap"
        | "mm.fault_on_every_cpu"
        | "mm.cow_after_dup"
        | "mm.upgrade_keeps_mappings"
        | "mm.fault_throughput"
        | "mm.swap_cache_add_remove" => Expect::Ok,
        // Needs a second CPU to hold the translation / to scan.
        "mm.stale_tlb_after_pte_clear" | "mm.pfn_scanner_beside_churn" => ok_if(smp >= 2),
        // Hardware A/D bits in the PTE: x86-64 only (s390x: storage keys).
        "mm.hw_young_dirty" => ok_if(arch == Arch::X86_64),
        // Only s390x folds levels: a new x86-64 mm already reaches TASK_SIZE_MAX.
        "mm.access_beyond_limit" => ok_if(arch == Arch::S390x),
        // Storage keys: s390x only; the cross-CPU case needs a second CPU.
        "skey.change_bit_on_another_cpu" => ok_if(arch == Arch::S390x && smp >= 2),
        c if c.starts_with("skey.") => ok_if(arch == Arch::S390x),
        // Shared file mappings, writeback and mkclean: every machine, except
        // the writes from several CPUs.
        "mm_file.shared_writes_every_cpu" => ok_if(smp >= 2),
        // StorageKey dirty tracking: only where there are storage keys.
        c if c.starts_with("mm_file.dirty_skey_") || c == "mm_file.writeback_throughput_skey" => {
            ok_if(arch == Arch::S390x)
        }
        c if c.starts_with("mm_file.") => Expect::Ok,
        // The mmu_gather: the cross-CPU cases hold a second CPU.
        "gather.rcu_table_free_waits_for_irqs_off_cpu"
        | "gather.ipi_sync_waits_for_irqs_off_cpu" => ok_if(smp >= 2),
        c if c.starts_with("gather.") => Expect::Ok,
        // TLB flushes: the knob and the local-only flush need one CPU; a
        // shootdown needs a CPU to shoot at. The latency figures run on
        // every machine (one CPU: the local flush, the start of the cost
        // curve).
        "tlb.strategy_knob" | "tlb.local_flush_when_alone" | "tlb.shootdown_latency" => Expect::Ok,
        c if c.starts_with("tlb.") => ok_if(smp >= 2),
        // The race-scenario machinery: the cost figure and the leak check
        // need one role CPU, the others a controller and two roles.
        "race.unarmed_point_cost" => Expect::Ok,
        // Huge pages: the leaf cases need PMD leaves (x86-64 only: QEMU TCG
        // gives s390x no EDAT); the interrupts-off and page-lock cases need a
        // second CPU.
        "thp.huge_zap_whole_pmd"
        | "thp.huge_partial_munmap_splits"
        | "thp.huge_fork_and_mprotect"
        | "thp.huge_exit"
        | "gup.huge_pmd_fast_equals_slow"
        | "gup.huge_pmd_pin_across_split" => ok_if(arch == Arch::X86_64),
        "thp.collapse_ipi_sync_vs_irqs_off"
        | "thp.wp_reuse_waits_for_page_lock"
        | "gup.fast_on_second_cpu"
        | "race.natural_seed_repeats"
        | "race.state_check_catches_leak" => ok_if(smp >= 2),
        c if c.starts_with("thp.") => Expect::Ok,
        c if c.starts_with("gup.") => Expect::Ok,
        c if c.starts_with("race.") => ok_if(smp >= 3),
        other => panic!("no expectation for {other}: add it here"),
    }
}

/// Every case, in the order the kernel runs them.
const CASES: [&str; 89] = [
    "boot.cpus_online",
    "boot.ipi_round_trip",
    "boot.call_function_wait",
    "boot.ipi_held_by_irqs_off",
    "boot.nmi_with_irqs_off",
    "boot.timer_ticks",
    "boot.heap_contention",
    "boot.requested_failure",
    "boot.requested_panic",
    "boot.requested_fault",
    "mm_page.memory_discovered",
    "mm_page.alloc_free_every_order",
    "mm_page.split_merge",
    "mm_page.alloc_contention",
    "mm_page.bad_page_locked",
    "mm_page.bad_page_mapcount",
    "mm_page.poison_use_after_free",
    "mm_page.get_page_unless_zero_freed",
    "mm_page.alloc_throughput",
    "mm.map_fault_unmap",
    "mm.fault_on_every_cpu",
    "mm.cow_after_dup",
    "mm.hw_young_dirty",
    "mm.stale_tlb_after_pte_clear",
    "mm.upgrade_keeps_mappings",
    "mm.access_beyond_limit",
    "mm.pfn_scanner_beside_churn",
    "mm.swap_cache_add_remove",
    "mm.fault_throughput",
    "skey.key_set_at_alloc",
    "skey.change_bit_set_by_store",
    "skey.sske_and_rrbe_reset",
    "skey.page_test_and_clear_dirty",
    "skey.change_bit_on_another_cpu",
    "gather.batched_zap_one_flush_per_batch",
    "gather.page_free_policies",
    "gather.table_free_policies",
    "gather.rcu_table_free_waits_for_irqs_off_cpu",
    "gather.ipi_sync_waits_for_irqs_off_cpu",
    "gather.nested_gathers_full_flush",
    "gather.zap_throughput",
    "tlb.strategy_knob",
    "tlb.shootdown_reaches_cpumask",
    "tlb.pmd_clear_flush",
    "tlb.local_flush_when_alone",
    "tlb.flush_vs_irqs_off",
    "tlb.shootdown_latency",
    "gup.fast_equals_slow",
    "gup.folded_walk_crossing_pud",
    "gup.fallback_when_needed",
    "gup.pin_survives_munmap",
    "gup.pin_write_breaks_cow_after_fork",
    "gup.huge_pmd_fast_equals_slow",
    "gup.huge_pmd_pin_blocks_collapse",
    "gup.huge_pmd_pin_across_split",
    "gup.fast_on_second_cpu",
    "gup.throughput",
    "thp.collapse_keeps_every_byte",
    "thp.collapse_aborts_on_pin",
    "thp.collapse_ipi_sync_vs_irqs_off",
    "thp.collapse_table_free_policies",
    "thp.huge_zap_whole_pmd",
    "thp.huge_partial_munmap_splits",
    "thp.huge_fork_and_mprotect",
    "thp.huge_exit",
    "thp.wp_reuse_exclusive_only",
    "thp.wp_reuse_waits_for_page_lock",
    "mm_file.vma_operations",
    "mm_file.shared_writes_every_cpu",
    "mm_file.mkclean_every_cpu",
    "mm_file.cow_after_fork_with_file",
    "mm_file.writeback_throughput",
    "mm_file.dirty_softdirty_keeps_every_byte",
    "mm_file.dirty_skey_keeps_every_byte",
    "mm_file.dirty_skey_mkclean_clears_change_bit",
    "mm_file.dirty_skey_last_unmap_dirties_page",
    "mm_file.writeback_throughput_softdirty",
    "mm_file.writeback_throughput_skey",
    "race.unarmed_point_cost",
    "race.forced_schedule_followed",
    "race.waiter_keeps_irqs_off",
    "race.natural_seed_repeats",
    "race.trace_merge_in_time_order",
    "race.impossible_ipi_cycle",
    "race.impossible_ptl_cycle",
    "race.impossible_rcu_cycle",
    "race.hang_without_cycle",
    "race.detector_race_report",
    "race.state_check_catches_leak",
];

fn boot_and_assert(arch: Arch, smp: usize) {
    let Some(b) = boot(arch, smp, "", TIMEOUT) else {
        return;
    };
    assert_passed(&b);
    assert_tcg_platform(&b, arch, smp);
    let cases = b.ktap.cases();
    let names: Vec<&str> = cases.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, CASES, "the suites' cases changed");
    for (name, r) in &cases {
        let case = name.as_str();
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
    // 256 MiB of RAM, less the image and low memory, all handed to the allocator.
    let mem = b.ktap.case("mm_page.memory_discovered").unwrap();
    let ram_mib: u64 = mem.diag_value("ram_mib").unwrap().parse().unwrap();
    assert!(
        (200..256).contains(&ram_mib),
        "{arch}: {ram_mib} MiB usable of 256"
    );
    // The detectors fired exactly as provoked, naming Linux's reasons.
    for (case, key, value) in [
        ("bad_page_locked", "bad_flags", "0x1"),
        ("bad_page_mapcount", "mapcount", "1"),
        ("poison_use_after_free", "offset", "0x321"),
    ] {
        let r = b.ktap.case(&format!("mm_page.{case}")).unwrap();
        assert_eq!(r.diag_value(key), Some(value), "{arch}: mm_page.{case}");
    }
    // The mmu_gather: one flush per batch of 510 pages; the RCU policy frees
    // the table only after the grace period; the full flush of a nested gather.
    for (case, key, value) in [
        ("batched_zap_one_flush_per_batch", "flushes_batched", "3"),
        ("batched_zap_one_flush_per_batch", "flushes_immediate", "1"),
        ("nested_gathers_full_flush", "inner_flushes_full", "1"),
        ("nested_gathers_full_flush", "inner_flushes_ignore", "0"),
    ] {
        let r = b.ktap.case(&format!("gather.{case}")).unwrap();
        assert_eq!(
            r.diag_value(key),
            Some(value),
            "{arch}: gather.{case} {key}"
        );
    }
    let bugs = b
        .console
        .iter()
        .filter(|l| l.contains("# BUG: Bad page state"))
        .count();
    // Three from mm_page's detector tests, one from race.detector_race_report
    // (the demonstration row's forced buggy run) where it runs.
    assert_eq!(
        bugs,
        if smp >= 3 { 4 } else { 3 },
        "{arch}: bad-page reports\n{}",
        b.console.join("\n")
    );
    let faults = b.ktap.case("mm.map_fault_unmap").unwrap();
    assert_eq!(
        faults.diag_value("faults_on_store"),
        Some("64"),
        "{arch}: one fault per first touch"
    );
    assert_eq!(
        faults.diag_value("faults_on_load"),
        Some("0"),
        "{arch}: no fault on a mapped page"
    );
    // s390x maps above a 3-level (4 TiB) and a 4-level (8 PiB) mm by upgrading
    // in place; x86-64 cannot map 9 PiB at all.
    let upgrade = b.ktap.case("mm.upgrade_keeps_mappings").unwrap();
    let mapped = if arch == Arch::S390x { "3" } else { "2" };
    assert_eq!(
        upgrade.diag_value("mapped"),
        Some(mapped),
        "{arch}: mappings across upgrades"
    );
    if arch == Arch::S390x {
        // An access beyond the ASCE's reach: program check 0x38 (ASCE type).
        let beyond = b.ktap.case("mm.access_beyond_limit").unwrap();
        assert_eq!(
            beyond.diag_value("code"),
            Some("0x38"),
            "{arch}: program check beyond the limit"
        );
    }
    if smp >= 2 {
        // After a PTE clear without a flush: x86-64 still reads through the stale
        // TLB entry without a fault; s390x's IPTE purged it, so the observer
        // faults and gets a fresh zeroed page.
        let stale = b.ktap.case("mm.stale_tlb_after_pte_clear").unwrap();
        let (value, faults) = if arch == Arch::X86_64 {
            ("0xfeed", "0")
        } else {
            ("0x0", "1")
        };
        assert_eq!(
            stale.diag_value("value_after_clear"),
            Some(value),
            "{arch}: stale read"
        );
        assert_eq!(
            stale.diag_value("observer_faults"),
            Some(faults),
            "{arch}: observer faults"
        );
    }
    if arch == Arch::S390x {
        // Storage keys, per frame: SSKE 0 reads 0x00, a load sets R (0x04), a
        // store C (0x06); clearing C makes the next store set it again, also
        // on another CPU; RRBE clears R only.
        let mut keys = vec![
            ("key_set_at_alloc", "key_at_alloc", "0x00"),
            ("change_bit_set_by_store", "key_after_sske", "0x00"),
            ("change_bit_set_by_store", "key_after_load", "0x04"),
            ("change_bit_set_by_store", "key_after_store", "0x06"),
            ("sske_and_rrbe_reset", "key_after_clear_c", "0x04"),
            ("sske_and_rrbe_reset", "key_after_second_store", "0x06"),
            ("sske_and_rrbe_reset", "rrbe_old", "RC"),
            ("sske_and_rrbe_reset", "key_after_rrbe", "0x02"),
            ("sske_and_rrbe_reset", "key_after_load", "0x06"),
            ("page_test_and_clear_dirty", "key_after_clear", "0x04"),
        ];
        if smp >= 2 {
            keys.extend([
                (
                    "change_bit_on_another_cpu",
                    "key_after_remote_store",
                    "0x06",
                ),
                ("change_bit_on_another_cpu", "key_after_clear", "0x04"),
                (
                    "change_bit_on_another_cpu",
                    "key_after_second_remote_store",
                    "0x06",
                ),
            ]);
        }
        for (case, key, value) in keys {
            let r = b.ktap.case(&format!("skey.{case}")).unwrap();
            assert_eq!(r.diag_value(key), Some(value), "{arch}: skey.{case} {key}");
        }
    }
    // mkclean write-protected the page's mapping on every CPU: the next store
    // on each took exactly one fault (a stale writable TLB entry would take
    // none), and writeback reached the backing store.
    let mkclean = b.ktap.case("mm_file.mkclean_every_cpu").unwrap();
    let n = smp.to_string();
    assert_eq!(
        mkclean.diag_value("protected_by_mkclean"),
        Some(n.as_str()),
        "{arch}: mkclean"
    );
    for cpu in 0..smp {
        assert_eq!(
            mkclean.diag_value(&format!("cpu{cpu}")),
            Some("1"),
            "{arch}: CPU {cpu}'s faults after mkclean"
        );
    }
    let wb = b.ktap.case("mm_file.writeback_throughput").unwrap();
    assert!(
        wb.diag_value("writeback_pages_per_sec")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v > 0),
        "{arch}: writeback figure"
    );
    if smp >= 3 {
        // The prover's cycles name their live evidence; the hang has none.
        for (case, evidence) in [
            ("impossible_ipi_cycle", "the IPI is pending on cpu1"),
            ("impossible_ptl_cycle", "spins on PTL"),
            ("impossible_rcu_cycle", "waits for RCU grace period"),
        ] {
            let r = b.ktap.case(&format!("race.{case}")).unwrap();
            assert_eq!(
                r.diag_value("outcome"),
                Some("impossible"),
                "{arch}: {case}"
            );
            assert!(
                r.diagnostics.iter().any(|d| d.contains(evidence)),
                "{arch}: {case}: {:?}",
                r.diagnostics
            );
        }
        let hang = b.ktap.case("race.hang_without_cycle").unwrap();
        assert_eq!(hang.diag_value("outcome"), Some("hang"), "{arch}");
        let report = b.ktap.case("race.detector_race_report").unwrap();
        assert!(
            report
                .diagnostics
                .iter()
                .any(|d| d.starts_with("race: BUG: bad page state")),
            "{arch}: race report"
        );
        assert!(
            report.diagnostics.iter().any(|d| d.starts_with("trace: ")),
            "{arch}: race report events"
        );
    }
    // The cost of an unarmed race point is measured and printed; its
    // target is a `cargo xtask bench` figure, never a pass/fail here.
    let cost = b.ktap.case("race.unarmed_point_cost").unwrap();
    let ns: f64 = cost
        .diag_value("race_point_unarmed_ns")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ns.is_finite() && ns >= 0.0,
        "{arch}: unarmed race point {ns} ns"
    );
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

/// One test per architecture and CPU count: `s390x_smp1` ... `x86_64_smp8`.
fn main() {
    let mut tests = quiesce_tests::Harness::new();
    for arch in Arch::ALL {
        for smp in [1, 2, 4, 8] {
            tests = tests.test(format!("{arch}_smp{smp}"), &[arch], move || {
                boot_and_assert(arch, smp)
            });
        }
    }
    tests.run()
}
