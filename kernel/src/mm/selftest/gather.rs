//! In-kernel tests of the mmu_gather and its policies (KTAP suite `gather`).
//!
//! Design. Each case builds a task mm, populates anonymous pages with real
//! faults, and zaps through [`crate::mm::mmu_gather`] with an explicit policy,
//! reading the free-frame count of the allocator before and after the flush,
//! the IPI sync or the grace period. Page tables come one per frame
//! ([`FragPolicy::OnePerFrame`], set for the case and restored) so that a freed
//! table shows as one free frame. The cross-CPU cases hold the last CPU in an
//! interrupts-off section ([`smp::run_on_idle`]) and show that a table is not
//! freed (RCU) or the zap does not return (IPI sync) before the section ends.
//! Every case checks that no frame leaked.

use super::no_leak;
use crate::cmdline::Cmdline;
use crate::ktap::Outcome;
use crate::mm::frag::{self, FragPolicy};
use crate::mm::memory;
use crate::mm::mm::Mm;
use crate::mm::mmu_gather::{self as g, NestedFlush, PageFree, TableFree, TlbPolicy};
use crate::mm::{page_alloc, PAGE_SIZE};
use crate::selftest::TestFn;
use crate::selftest::{section_end, start_section, wait_section_end};
use crate::{diag, rcu, smp};
use alloc::{boxed::Box, format, vec::Vec};

/// The suite's name.
pub(crate) const SUITE: &str = "gather";

/// The `gather` cases, in order.
pub(crate) fn cases<A: crate::mm::arch::Mmu>() -> Vec<(&'static str, TestFn)> {
    crate::selftest::test_cases![
        A;
        batched_zap_one_flush_per_batch = batched_zap, page_free_policies, table_free_policies,
        rcu_table_free_waits_for_irqs_off_cpu = rcu_waits,
        ipi_sync_waits_for_irqs_off_cpu = ipi_sync_waits, nested_gathers_full_flush = nested,
        zap_throughput,
    ]
}

fn fail(msg: alloc::string::String) -> Outcome {
    Outcome::Fail(msg)
}

fn policy(page_free: PageFree, table_free: TableFree) -> TlbPolicy {
    TlbPolicy {
        page_free,
        table_free,
        ..TlbPolicy::DEFAULT
    }
}

/// A boxed mm with `pages` populated anonymous pages at `TASK_BASE`.
fn populated<A: crate::mm::arch::Mmu>(pages: u64) -> Result<Box<Mm<A>>, Outcome> {
    super::mapped_mm::<A>(pages * PAGE_SIZE, true)
}

/// Zaps `pages` pages at `TASK_BASE` on one gather; returns its flushes.
fn zap<A: crate::mm::arch::Mmu>(mm: &Mm<A>, pages: u64, p: TlbPolicy) -> u64 {
    let _vmas = mm.mmap_lock.read();
    let mut tlb = g::tlb_gather_mmu_policy(mm, p, false);
    memory::unmap_page_range(&mut tlb, A::TASK_BASE, A::TASK_BASE + pages * PAGE_SIZE);
    g::tlb_finish_mmu_counted(tlb)
}

fn batched_zap<A: crate::mm::arch::Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let n = 2 * g::GATHER_BATCH as u64 + 10;
        let mut got = [0u64; 2];
        for (i, pf) in [PageFree::Batched, PageFree::Immediate]
            .into_iter()
            .enumerate()
        {
            let mm = or_return!(populated::<A>(n));
            got[i] = zap(&mm, n, policy(pf, TableFree::Immediate));
            memory::exit_mmap(*mm);
        }
        diag!(
            "pages={n} batch={} flushes_batched={} flushes_immediate={}",
            g::GATHER_BATCH,
            got[0],
            got[1]
        );
        let want = n.div_ceil(g::GATHER_BATCH as u64);
        if got != [want, 1] {
            return fail(format!(
                "flushes {got:?}, expected [{want}, 1]: one per batch of {}",
                g::GATHER_BATCH
            ));
        }
        Outcome::Pass
    })
}

fn page_free_policies<A: crate::mm::arch::Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        for pf in [PageFree::Batched, PageFree::Immediate] {
            let mm = or_return!(populated::<A>(8));
            let before = page_alloc::nr_free_pages();
            let (mid, after) = {
                let _vmas = mm.mmap_lock.read();
                let mut tlb =
                    g::tlb_gather_mmu_policy(&mm, policy(pf, TableFree::Immediate), false);
                memory::unmap_page_range(&mut tlb, A::TASK_BASE, A::TASK_BASE + 8 * PAGE_SIZE);
                let mid = page_alloc::nr_free_pages();
                g::tlb_finish_mmu(tlb);
                (mid, page_alloc::nr_free_pages())
            };
            memory::exit_mmap(*mm);
            let [name, ..] = policy(pf, TableFree::Immediate).names();
            diag!(
                "{name}: freed_at_clear={} freed_after_flush={}",
                mid - before,
                after - before
            );
            let want_mid = if pf == PageFree::Batched {
                before
            } else {
                before + 8
            };
            if mid != want_mid || after != before + 8 {
                return fail(format!(
                    "{name}: {} freed at the clear, {} after the flush",
                    mid - before,
                    after - before
                ));
            }
        }
        Outcome::Pass
    })
}

/// Runs `body` with one page table per frame.
fn one_table_per_frame(body: impl FnOnce() -> Outcome) -> Outcome {
    let old = frag::policy();
    frag::set_policy(FragPolicy::OnePerFrame);
    let o = body();
    frag::set_policy(old);
    o
}

fn table_free_policies<A: crate::mm::arch::Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        one_table_per_frame(|| {
            for tf in [TableFree::Immediate, TableFree::IpiSync, TableFree::Rcu] {
                let mm = or_return!(populated::<A>(1));
                let before = page_alloc::nr_free_pages();
                let old = g::set_tlb_policy(policy(PageFree::Batched, tf));
                // For the RCU policy, this CPU stays in a read-side critical
                // section (interrupts off) until it has counted: no grace
                // period can end before the count, whatever the other CPUs do.
                // (Only this CPU has the mm: the flush needs no IPI.)
                let flags = (tf == TableFree::Rcu).then(A::local_irq_save);
                let r = memory::munmap(&mm, A::TASK_BASE, PAGE_SIZE);
                let at_finish = page_alloc::nr_free_pages() - before;
                if let Some(f) = flags {
                    A::local_irq_restore(f);
                }
                g::set_tlb_policy(old);
                rcu::rcu_barrier_this_cpu::<A>();
                let after_gp = page_alloc::nr_free_pages() - before;
                memory::exit_mmap(*mm);
                let name = policy(PageFree::Batched, tf).names()[1];
                diag!("{name}: frames_freed_at_finish={at_finish} after_grace_period={after_gp}");
                if r.is_err() {
                    return fail(format!("{name}: munmap {r:?}"));
                }
                // One data page, one PTE table.
                let want = if tf == TableFree::Rcu { (1, 2) } else { (2, 2) };
                if (at_finish, after_gp) != want {
                    return fail(format!(
                        "{name}: freed {at_finish} at the finish and {after_gp} after a grace period, expected {want:?}"
                    ));
                }
            }
            Outcome::Pass
        })
    })
}

/// Section length of the cross-CPU cases (the held CPU plays a GUP-fast walk).
const SECTION_NS: u64 = 50_000_000;

/// Runs a cross-CPU case (skipped with one CPU) under [`no_leak`], with one
/// table per frame: `body(mm, cpu, start)` gets an mm with one populated page
/// and runs once the last CPU, `cpu`, is inside an interrupts-off section
/// that began at `start`.
fn with_held_cpu<A: crate::mm::arch::Mmu>(
    body: impl FnOnce(Box<Mm<A>>, usize, u64) -> Outcome,
) -> Outcome {
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    no_leak(|| {
        one_table_per_frame(|| {
            let mm = or_return!(populated::<A>(1));
            let cpu = smp::nr_cpus() - 1;
            let start = start_section::<A>(cpu, SECTION_NS);
            body(mm, cpu, start)
        })
    })
}

fn rcu_waits<A: crate::mm::arch::Mmu>(_: &Cmdline) -> Outcome {
    if let Some(skip) = crate::platform::skip_without(crate::platform::Property::IpiHeldByIrqsOff) {
        return skip;
    }
    with_held_cpu::<A>(|mm, cpu, start| {
        let before = page_alloc::nr_free_pages();
        let old = g::set_tlb_policy(policy(PageFree::Batched, TableFree::Rcu));
        let r = memory::munmap(&mm, A::TASK_BASE, PAGE_SIZE);
        g::set_tlb_policy(old);
        // Ticks keep coming here (interrupts on): wait for the table while
        // the other CPU is in its section.
        let (freed_in_section, freed_at) = loop {
            if page_alloc::nr_free_pages() >= before + 2 {
                // Read after the count: still in the section means the
                // table went while the CPU had interrupts off.
                break (section_end().is_none(), A::clock_ns());
            }
            if section_end().is_some() {
                rcu::rcu_barrier_this_cpu::<A>();
            }
            A::cpu_relax();
        };
        let end = wait_section_end::<A>();
        memory::exit_mmap(*mm);
        diag!(
            "held_cpu={cpu} irqs_off_ns={} table_freed_after_section_ns={}",
            end - start,
            freed_at as i64 - end as i64
        );
        if r.is_err() {
            return fail(format!("munmap {r:?}"));
        }
        if freed_in_section {
            return fail(format!(
                "the table was freed while CPU {cpu} had interrupts off"
            ));
        }
        Outcome::Pass
    })
}

fn ipi_sync_waits<A: crate::mm::arch::Mmu>(_: &Cmdline) -> Outcome {
    if let Some(skip) = crate::platform::skip_without(crate::platform::Property::IpiHeldByIrqsOff) {
        return skip;
    }
    with_held_cpu::<A>(|mm, cpu, _| {
        let old = g::set_tlb_policy(policy(PageFree::Batched, TableFree::IpiSync));
        let r = memory::munmap(&mm, A::TASK_BASE, PAGE_SIZE);
        let returned = A::clock_ns();
        g::set_tlb_policy(old);
        let end = wait_section_end::<A>();
        memory::exit_mmap(*mm);
        diag!(
            "held_cpu={cpu} munmap_returned_after_section_ns={}",
            returned as i64 - end as i64
        );
        if r.is_err() {
            return fail(format!("munmap {r:?}"));
        }
        if returned < end {
            return fail(format!(
                "munmap returned while CPU {cpu} had interrupts off"
            ));
        }
        Outcome::Pass
    })
}

fn nested<A: crate::mm::arch::Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let Some(mm) = Mm::<A>::new().map(Box::new) else {
            return fail("no memory for an mm".into());
        };
        let mut got = [0u64; 2];
        for (i, n) in [NestedFlush::ForceFull, NestedFlush::Ignore]
            .into_iter()
            .enumerate()
        {
            let p = TlbPolicy {
                nested: n,
                ..TlbPolicy::DEFAULT
            };
            let outer = g::tlb_gather_mmu_policy(&mm, p, false);
            let inner = g::tlb_gather_mmu_policy(&mm, p, false);
            // The inner gather found every PTE cleared by the outer one.
            got[i] = g::tlb_finish_mmu_counted(inner);
            g::tlb_finish_mmu(outer);
        }
        memory::exit_mmap(*mm);
        diag!(
            "inner_flushes_full={} inner_flushes_ignore={}",
            got[0],
            got[1]
        );
        if got != [1, 0] {
            return fail(format!("inner gather flushes {got:?}, expected [1, 0]"));
        }
        Outcome::Pass
    })
}

/// The page counts of the cost curves (`bench.curves`): 1 to 2048, doubling.
pub(crate) const CURVE_PAGES: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];

/// Zap time each point of the zap curve sums up at least (a one-page zap
/// takes microseconds: one zap alone would be mostly clock reads).
const CURVE_ZAP_NS: u64 = 2_000_000;

/// Pages per second of zapping `pages` populated pages under `pf`: zaps of
/// fresh mms (populating them is not timed) until their zap time reaches
/// [`CURVE_ZAP_NS`].
fn zap_rate<A: crate::mm::arch::Mmu>(pages: u64, pf: PageFree) -> Result<u64, Outcome> {
    let (mut zapped, mut spent) = (0u64, 0u64);
    while spent < CURVE_ZAP_NS {
        let mm = populated::<A>(pages)?;
        let t0 = A::clock_ns();
        zap(&mm, pages, policy(pf, TableFree::Immediate));
        spent += (A::clock_ns() - t0).max(1);
        zapped += pages;
        memory::exit_mmap(*mm);
    }
    Ok(zapped * 1_000_000_000 / spent)
}

fn zap_throughput<A: crate::mm::arch::Mmu>(args: &Cmdline) -> Outcome {
    if args.curves {
        // The cost curve: pages per second against the size of the zap.
        let curve = no_leak(|| {
            for pages in CURVE_PAGES {
                let batched = or_return!(zap_rate::<A>(pages, PageFree::Batched));
                let immediate = or_return!(zap_rate::<A>(pages, PageFree::Immediate));
                diag!(
                    "zap_curve_batched_{pages}={batched} zap_curve_immediate_{pages}={immediate}"
                );
            }
            Outcome::Pass
        });
        if !matches!(curve, Outcome::Pass) {
            return curve;
        }
    }
    no_leak(|| {
        const N: u64 = 2048;
        let mut rate = [0u64; 2];
        for (i, pf) in [PageFree::Batched, PageFree::Immediate]
            .into_iter()
            .enumerate()
        {
            let mm = or_return!(populated::<A>(N));
            let t0 = A::clock_ns();
            zap(&mm, N, policy(pf, TableFree::Immediate));
            let dt = (A::clock_ns() - t0).max(1);
            rate[i] = N * 1_000_000_000 / dt;
            memory::exit_mmap(*mm);
        }
        diag!(
            "zap_pages_per_sec_batched={} immediate={}",
            rate[0],
            rate[1]
        );
        Outcome::Pass
    })
}
