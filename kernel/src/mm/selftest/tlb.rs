//! In-kernel tests of the TLB flush API and its strategies (KTAP suite `tlb`).
//!
//! Each case maps one anonymous page in a fresh mm, attaches the mm on some
//! CPUs (their bit in the cpumask, their TLB filled by a read), changes the
//! PTE and flushes through [`tlbflush`], then checks the per-CPU counters and
//! what the other CPUs read afterwards. Every case checks that no frame
//! leaked (`no_leak`) and restores the arch's default strategy.

use super::{faults, load, mapped_mm, no_leak, store};
use crate::cmdline::Cmdline;
use crate::ktap::Outcome;
use crate::mm::arch::Mmu;
use crate::mm::mm::{self as mmod, Mm};
use crate::mm::tlbflush::{self, FlushStrategy, TlbFlushStats};
use crate::mm::{memory, page, pgtable, PAGE_SIZE};
use crate::selftest::{wait_for_time, TestFn};
use crate::{diag, smp, NR_CPUS};
use alloc::{boxed::Box, format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The suite's name.
pub(crate) const SUITE: &str = "tlb";

/// The `tlb` cases, in order.
pub(crate) fn cases<A: Mmu>() -> Vec<(&'static str, TestFn)> {
    crate::selftest::test_cases![
        A;
        strategy_knob, shootdown_reaches_cpumask, pmd_clear_flush, local_flush_when_alone,
        flush_vs_irqs_off, shootdown_latency,
    ]
}

/// The mm the helper CPUs attach, as an address.
static TLB_MM: AtomicU64 = AtomicU64::new(0);
static TLB_ADDR: AtomicU64 = AtomicU64::new(0);
/// Per CPU: the value its last read returned and the faults it took.
static READ_VALUE: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];
static READ_FAULTS: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];

/// On a helper CPU: attach the test mm and read the page (fills its TLB).
fn attach_and_read<A: Mmu>(_: usize) {
    // SAFETY: the test keeps the mm alive until every helper ran `detach`.
    let mm = unsafe { &*(TLB_MM.load(Ordering::Acquire) as *const Mm<A>) };
    // SAFETY: as above.
    unsafe { mmod::use_mm(mm) };
    read::<A>(0);
}

/// On a helper CPU: read the page, recording the value and the faults taken.
fn read<A: Mmu>(_: usize) {
    let me = A::smp_processor_id();
    let f0 = faults::<A>();
    // SAFETY: the address is in a VMA of the mm this CPU runs; a missing
    // translation is resolved by the fault handler.
    let v = unsafe { load(TLB_ADDR.load(Ordering::Acquire)) };
    READ_FAULTS[me].store(faults::<A>() - f0, Ordering::Release);
    READ_VALUE[me].store(v, Ordering::Release);
}

fn detach<A: Mmu>(_: usize) {
    mmod::unuse_mm::<A>();
}

fn stats_all() -> Vec<TlbFlushStats> {
    (0..smp::nr_cpus()).map(tlbflush::tlb_flush_stats).collect()
}

/// Clears the test page's PTE as a zap would; returns the old PTE, whose page
/// the caller drops with [`drop_old`] after the flush.
fn clear<A: Mmu>(mm: &Mm<A>, addr: u64) -> u64 {
    let ptep = pgtable::follow_pte(mm, addr).expect("the page was populated");
    // SAFETY: a live PTE of this mm; no other CPU changes it meanwhile.
    unsafe { A::ptep_get_and_clear(mm, addr, ptep) }
}

/// Drops the page `old` mapped, once no TLB can reach it any more.
fn drop_old<A: Mmu>(mm: &Mm<A>, old: u64) {
    let page = page::pfn_to_page(A::pte_pfn(old));
    memory::page_remove_rmap(page);
    mm.rss_anon.fetch_sub(1, Ordering::Relaxed);
    page::put_page(page);
}

/// A populated one-page mm, attached here with `0xfeed` stored, and published
/// for the helpers.
fn setup<A: Mmu>() -> Result<Box<Mm<A>>, Outcome> {
    let addr = A::TASK_BASE;
    let mm = mapped_mm::<A>(PAGE_SIZE, true)?;
    // SAFETY: the mm lives until `teardown`, after every CPU left it.
    unsafe { mmod::use_mm(&*mm) };
    // SAFETY: in the VMA.
    unsafe { store(addr, 0xfeed) };
    TLB_MM.store(&*mm as *const Mm<A> as u64, Ordering::Release);
    TLB_ADDR.store(addr, Ordering::Release);
    Ok(mm)
}

/// Detaches the test mm from `helpers` and this CPU and restores the default
/// strategy; the caller then frees the mm with `exit_mmap`.
fn leave<A: Mmu>(helpers: &[usize]) {
    for &cpu in helpers {
        smp::smp_call_function_single::<A>(cpu, detach::<A>, 0, true);
    }
    mmod::unuse_mm::<A>();
    let _ = tlbflush::set_flush_strategy::<A>(A::FLUSH_STRATEGIES[0]);
}

fn strategy_knob<A: Mmu>(_: &Cmdline) -> Outcome {
    let names: Vec<&str> = A::FLUSH_STRATEGIES.iter().map(|s| s.name()).collect();
    diag!(
        "flush_strategies={} default={}",
        names.join(","),
        tlbflush::flush_strategy::<A>().name()
    );
    for s in FlushStrategy::ALL {
        let res = tlbflush::set_flush_strategy::<A>(s);
        let supported = A::FLUSH_STRATEGIES.contains(&s);
        if res.is_ok() != supported {
            let _ = tlbflush::set_flush_strategy::<A>(A::FLUSH_STRATEGIES[0]);
            return Outcome::Fail(format!("set_flush_strategy({}) returned {res:?}", s.name()));
        }
        if let Err(e) = res {
            diag!("refused {}: {e}", s.name());
        } else if tlbflush::flush_strategy::<A>() != s {
            return Outcome::Fail(format!("the knob did not take {}", s.name()));
        }
    }
    let _ = tlbflush::set_flush_strategy::<A>(A::FLUSH_STRATEGIES[0]);
    Outcome::Pass
}

/// (a) With the mm attached on CPU 0 and CPU 1 only, a page flush is received
/// by CPU 1 and no other CPU (per strategy; none at all for hardware
/// broadcast), and CPU 1's next read faults instead of using a stale entry.
fn shootdown_reaches_cpumask<A: Mmu>(_: &Cmdline) -> Outcome {
    observed_invalidation::<A>("flush", invalidate_pte::<A>, release_pte::<A>)
}

/// A PMD entry cleared with `pmdp_collapse_flush` (x86-64: exchange, then a
/// shootdown of the block; s390x: IDTE on the segment entry, or CSP with
/// purge) is gone from every TLB: the observer CPU's next read faults and
/// finds a new table instead of the old page. Per strategy, the flush is
/// received by the observer only where it is interrupt-driven.
fn pmd_clear_flush<A: Mmu>(_: &Cmdline) -> Outcome {
    observed_invalidation::<A>("PMD clear", invalidate_pmd::<A>, release_pmd::<A>)
}

/// Clears the test page's PTE and flushes the page; returns the old PTE.
fn invalidate_pte<A: Mmu>(mm: &Mm<A>, addr: u64) -> u64 {
    let old = clear::<A>(mm, addr);
    tlbflush::flush_tlb_page(mm, addr);
    old
}

fn release_pte<A: Mmu>(mm: &Mm<A>, _addr: u64, old: u64) -> u64 {
    drop_old::<A>(mm, old);
    old
}

/// Clears the test page's PMD entry with `pmdp_collapse_flush`; returns the
/// old entry.
fn invalidate_pmd<A: Mmu>(mm: &Mm<A>, addr: u64) -> u64 {
    let _w = mm.mmap_lock.write();
    let pmdp = pgtable::follow_pmd(mm, addr).expect("the page was populated");
    // SAFETY: the live PMD entry of `addr`; mmap_lock is held for write, so
    // no fault or zap changes it; interrupts are on.
    unsafe { pgtable::pmdp_collapse_flush(mm, addr, pmdp) }
}

/// Tears down the table the PMD entry `old_pmd` pointed to by hand: its one
/// PTE and page, then the table. Returns the PTE.
fn release_pmd<A: Mmu>(mm: &Mm<A>, addr: u64, old_pmd: u64) -> u64 {
    let table = A::entry_table(crate::mm::arch::Level::Pmd, old_pmd);
    let ptep = page::phys_to_virt(table)
        .cast::<u64>()
        .wrapping_add(((addr / PAGE_SIZE) as usize) % A::PTRS_PER_PTE);
    // SAFETY: the unhooked table is ours alone now; no TLB holds it.
    let old = unsafe { A::ptep_get_and_clear(mm, addr, ptep) };
    drop_old::<A>(mm, old);
    mm.pgtables_bytes
        .fetch_sub(A::PTE_TABLE_SIZE, Ordering::Relaxed);
    crate::mm::frag::__pte_free::<A>(table);
    old
}

/// Per strategy: CPU 1 attaches the test mm and reads the page; this CPU
/// runs `invalidate`; then CPU 1 reads again (after `release`, which frees
/// what `invalidate` unhooked and returns the old PTE). The invalidation must
/// reach CPU 1 only (by interrupt), or no CPU (hardware broadcast), and CPU
/// 1's second read must fault into a fresh zero page.
fn observed_invalidation<A: Mmu>(
    what: &str,
    invalidate: fn(&Mm<A>, u64) -> u64,
    release: fn(&Mm<A>, u64, u64) -> u64,
) -> Outcome {
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    no_leak(|| {
        for &s in A::FLUSH_STRATEGIES {
            if let Err(e) = tlbflush::set_flush_strategy::<A>(s) {
                return Outcome::Fail(e.into());
            }
            let mm = or_return!(setup::<A>());
            let addr = A::TASK_BASE;
            let observer = 1;
            smp::smp_call_function_single::<A>(observer, attach_and_read::<A>, 0, true);
            let seen_before = READ_VALUE[observer].load(Ordering::Acquire);
            let before = stats_all();
            let old = invalidate(&mm, addr);
            let after = stats_all();
            smp::smp_call_function_single::<A>(observer, read::<A>, 0, true);
            let (seen, took) = (
                READ_VALUE[observer].load(Ordering::Acquire),
                READ_FAULTS[observer].load(Ordering::Acquire),
            );
            let old_pte = release(&mm, addr, old);
            leave::<A>(&[observer]);
            memory::exit_mmap(*mm);
            let received: Vec<u64> = before
                .iter()
                .zip(&after)
                .map(|(b, a)| a.received - b.received)
                .collect();
            let mut recv = String::new();
            for (cpu, r) in received.iter().enumerate() {
                recv.push_str(&format!(" cpu{cpu}={r}"));
            }
            diag!(
                "strategy={} received{recv} observer_value_before={seen_before:#x} after={seen:#x} observer_faults={took}",
                s.name()
            );
            let remote = u64::from(!s.is_broadcast());
            for (cpu, &r) in received.iter().enumerate() {
                let want = if cpu == observer { remote } else { 0 };
                if r != want {
                    return Outcome::Fail(format!(
                        "{}: CPU {cpu} received {r} flushes, expected {want}",
                        s.name()
                    ));
                }
            }
            if seen_before != 0xfeed || !A::pte_present(old_pte) {
                return Outcome::Fail(format!(
                    "the observer read {seen_before:#x} before (old PTE {old_pte:#x})"
                ));
            }
            crate::platform::note_without(
                crate::platform::Property::StaleTlb,
                "that the invalidation removed the observer's TLB entry",
            );
            if (seen, took) != (0, 1) {
                return Outcome::Fail(format!(
                    "{}: after the {what} the observer read {seen:#x} with {took} faults (stale TLB entry)",
                    s.name()
                ));
            }
        }
        Outcome::Pass
    })
}

/// (c) With the mm attached on this CPU only, `flush_tlb_mm` stays local: no
/// IPI or NMI sent, no CPU receives a request, the local-only count grows.
fn local_flush_when_alone<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let mm = or_return!(setup::<A>());
        let me = A::smp_processor_id();
        let before = stats_all();
        tlbflush::flush_tlb_mm(&*mm);
        tlbflush::flush_tlb_range(&*mm, A::TASK_BASE, A::TASK_BASE + PAGE_SIZE);
        let after = stats_all();
        // SAFETY: in the VMA; the page is still mapped.
        let v = unsafe { load(A::TASK_BASE) };
        leave::<A>(&[]);
        memory::exit_mmap(*mm);
        let (b, a) = (before[me], after[me]);
        let received: u64 = before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.received - b.received)
            .sum();
        diag!(
            "issued={} local_only={} ipis_sent={} nmis_sent={} received_anywhere={received}",
            a.issued - b.issued,
            a.local_only - b.local_only,
            a.ipis_sent - b.ipis_sent,
            a.nmis_sent - b.nmis_sent
        );
        if a.issued - b.issued != 2 || a.local_only - b.local_only != 2 {
            return Outcome::Fail("the flushes were not counted as local-only".into());
        }
        if a.ipis_sent != b.ipis_sent || a.nmis_sent != b.nmis_sent || received != 0 {
            return Outcome::Fail("a local-only flush reached another CPU".into());
        }
        if v != 0xfeed {
            return Outcome::Fail(format!("read {v:#x} after the local flush"));
        }
        Outcome::Pass
    })
}

/// Flushes timed per strategy and per number of target CPUs: 1, 2, 4, ...
/// below the other CPUs' count, and all of them (`targets_all`; on a 1-CPU
/// machine that is none: the local flush alone, the start of the cost curve
/// `cargo xtask bench` draws from machines of 1 to 16 CPUs).
fn shootdown_latency<A: Mmu>(_: &Cmdline) -> Outcome {
    const ROUNDS: usize = 64;
    let n = smp::nr_cpus();
    let all = n - 1;
    let counts: Vec<usize> = core::iter::successors(Some(1), |k| Some(k * 2))
        .take_while(|&k| k < all)
        .chain([all])
        .collect();
    no_leak(|| {
        for &s in A::FLUSH_STRATEGIES {
            if let Err(e) = tlbflush::set_flush_strategy::<A>(s) {
                return Outcome::Fail(e.into());
            }
            for &k in &counts {
                let mm = or_return!(setup::<A>());
                let helpers: Vec<usize> = (1..=k).collect();
                for &cpu in &helpers {
                    smp::smp_call_function_single::<A>(cpu, attach_and_read::<A>, 0, true);
                }
                let mut ns: Vec<u64> = (0..ROUNDS)
                    .map(|_| {
                        let t0 = A::clock_ns();
                        // A one-page range: x86-64 a shootdown, s390x an
                        // IDTE (`flush_tlb_page` has nothing to do there).
                        tlbflush::flush_tlb_range(&*mm, A::TASK_BASE, A::TASK_BASE + PAGE_SIZE);
                        A::clock_ns() - t0
                    })
                    .collect();
                leave::<A>(&helpers);
                memory::exit_mmap(*mm);
                ns.sort_unstable();
                let label = if k == all {
                    "all".into()
                } else {
                    format!("{k}")
                };
                diag!(
                    "shootdown_ns_{}_targets_{label}={} min={} max={}",
                    s.name(),
                    ns[ROUNDS / 2],
                    ns[0],
                    ns[ROUNDS - 1]
                );
            }
        }
        Outcome::Pass
    })
}

/// Length of the interrupts-off section of [`flush_vs_irqs_off`].
const SECTION_NS: u64 = 150_000_000;
static SECTION_START: AtomicU64 = AtomicU64::new(0);
static SECTION_END: AtomicU64 = AtomicU64::new(0);
/// Set by CPU 0 once the PTE is cleared (the reading variant waits for it).
static CLEARED: AtomicBool = AtomicBool::new(false);
/// The section's second read happened with interrupts still off.
static READ_IN_SECTION: AtomicBool = AtomicBool::new(false);

/// On the target's idle loop: an interrupts-off section of [`SECTION_NS`].
/// With `reread` set, it waits (inside the section) for [`CLEARED`] and reads
/// the test page again, recording value and faults.
fn irqs_off_section<A: Mmu>(reread: usize) {
    let flags = A::local_irq_save();
    let start = A::clock_ns();
    SECTION_START.store(start, Ordering::Release);
    while A::clock_ns() - start < SECTION_NS {
        if reread != 0
            && CLEARED.load(Ordering::Acquire)
            && !READ_IN_SECTION.load(Ordering::Relaxed)
        {
            read::<A>(0);
            READ_IN_SECTION.store(A::irqs_disabled(), Ordering::Release);
        }
        A::cpu_relax();
    }
    SECTION_END.store(A::clock_ns(), Ordering::Release);
    A::local_irq_restore(flags);
}

/// Starts the section on `cpu` and returns its start time.
fn start_section<A: Mmu>(cpu: usize, reread: bool) -> u64 {
    SECTION_START.store(0, Ordering::Release);
    SECTION_END.store(0, Ordering::Release);
    CLEARED.store(false, Ordering::Release);
    READ_IN_SECTION.store(false, Ordering::Release);
    smp::run_on_idle::<A>(cpu, irqs_off_section::<A>, reread as usize);
    wait_for_time::<A>(&SECTION_START)
}

fn wait_section_end<A: Mmu>() -> u64 {
    wait_for_time::<A>(&SECTION_END)
}

/// (b) A flush against a CPU with interrupts off: the fixed-IPI shootdown
/// waits for the section to end, the NMI shootdown does not, and hardware
/// broadcast (IPTE) purges the CPU's TLB during the section (its next read
/// there faults).
fn flush_vs_irqs_off<A: Mmu>(_: &Cmdline) -> Outcome {
    if let Some(skip) = crate::platform::skip_without(crate::platform::Property::IpiHeldByIrqsOff) {
        return skip;
    }
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    let target = smp::nr_cpus() - 1;
    no_leak(|| {
        let mut figures = String::new();
        for &s in A::FLUSH_STRATEGIES {
            if let Err(e) = tlbflush::set_flush_strategy::<A>(s) {
                return Outcome::Fail(e.into());
            }
            let mm = or_return!(setup::<A>());
            let addr = A::TASK_BASE;
            smp::smp_call_function_single::<A>(target, attach_and_read::<A>, 0, true);
            let reread = s.is_broadcast();
            let start = start_section::<A>(target, reread);
            let t0 = A::clock_ns();
            let old = clear::<A>(&mm, addr);
            tlbflush::flush_tlb_page(&*mm, addr);
            let t1 = A::clock_ns();
            CLEARED.store(true, Ordering::Release);
            let end = wait_section_end::<A>();
            drop_old::<A>(&mm, old);
            let (seen, took, in_section) = (
                READ_VALUE[target].load(Ordering::Acquire),
                READ_FAULTS[target].load(Ordering::Acquire),
                READ_IN_SECTION.load(Ordering::Acquire),
            );
            leave::<A>(&[target]);
            memory::exit_mmap(*mm);
            let wait = t1 - t0;
            figures.push_str(&format!(" {}_flush_wait_ns={wait}", s.name()));
            diag!(
                "strategy={} section_ns={} flush_done_before_section_end_ns={}",
                s.name(),
                end - start,
                end as i64 - t1 as i64
            );
            match s {
                FlushStrategy::Ipi if t1 < end => {
                    return Outcome::Fail(format!(
                        "the IPI shootdown completed {} ns before CPU {target} enabled interrupts",
                        end - t1
                    ));
                }
                FlushStrategy::Nmi if t1 >= end => {
                    return Outcome::Fail(format!(
                        "the NMI shootdown waited for CPU {target}'s interrupts-off section"
                    ));
                }
                FlushStrategy::Ipte | FlushStrategy::Csp
                    if !(in_section && seen == 0 && took == 1) =>
                {
                    return Outcome::Fail(format!(
                        "CPU {target} read {seen:#x} with {took} faults (in section: {in_section}) after the {} purge",
                        s.name()
                    ));
                }
                _ => {}
            }
        }
        diag!("{}", figures.trim_start());
        Outcome::Pass
    })
}
