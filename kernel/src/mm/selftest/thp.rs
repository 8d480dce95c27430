//! In-kernel tests of huge PMD leaves, collapse and `do_wp_page` reuse (KTAP
//! suite `thp`), on real translation: the block is filled and read back with
//! plain CPU loads and stores, another CPU keeps the old translations in its
//! TLB across the collapse, flushes are the real ones of the selected
//! strategy and the interrupts-off section is a real one on another CPU.
//!
//! The huge-leaf cases run where the MMU maps PMD leaves (x86-64; QEMU TCG
//! gives s390x no EDAT) and say so in a `# SKIP` elsewhere; collapse itself
//! runs on both (without leaves it maps the block through a fresh table).

use super::{faults, load, mapped_mm, no_leak, pte_of, store};
use crate::cmdline::Cmdline;
use crate::ktap::Outcome;
use crate::mm::arch::{Level, Mmu};
use crate::mm::gup::GUP_PIN_COUNTING_BIAS;
use crate::mm::huge_memory::{self, hpage_pmd_nr};
use crate::mm::khugepaged::{self, CollapseAbort, CollapsePolicy, CollapseReport, CollapseResult};
use crate::mm::memory::{self, WpUnlock};
use crate::mm::mm::{self as mmod, Mm};
use crate::mm::mmu_gather::TableFree;
use crate::mm::tlbflush::{self, FlushStrategy};
use crate::mm::{frag, page, page_alloc, pgtable, PAGE_SIZE};
use crate::selftest::TestFn;
use crate::selftest::{start_section, wait_section_end};
use crate::{diag, rcu, smp};
use alloc::{boxed::Box, format, vec::Vec};
use core::sync::atomic::{AtomicU64, Ordering};

/// The suite's KTAP name.
pub(crate) const SUITE: &str = "thp";

/// The `thp` suite, in order.
pub(crate) fn cases<A: Mmu>() -> Vec<(&'static str, TestFn)> {
    crate::selftest::test_cases![
        A;
        collapse_keeps_every_byte, collapse_aborts_on_pin,
        collapse_ipi_sync_vs_irqs_off = collapse_ipi_sync,
        collapse_table_free_policies = collapse_table_free, huge_zap_whole_pmd = huge_zap_whole,
        huge_partial_munmap_splits = huge_partial_munmap,
        huge_fork_and_mprotect = huge_fork_mprotect, huge_exit,
        wp_reuse_exclusive_only = wp_reuse, wp_reuse_waits_for_page_lock = wp_reuse_lock_wait,
    ]
}

const NO_LEAVES: &str = "no huge PMD leaves on this MMU (QEMU TCG offers no EDAT large pages)";

/// The block every case collapses: the first PMD block of the task range.
fn base<A: Mmu>() -> u64 {
    A::TASK_BASE.next_multiple_of(A::PMD_SIZE)
}

fn pattern(a: u64) -> u64 {
    a.rotate_left(23) ^ 0x7a11_c011_a95e_0000
}

/// A block mapped and populated (one PTE per page) in a new mm, with every
/// word set to its pattern if `fill`. This CPU runs the mm afterwards.
fn block_mm<A: Mmu>(fill: bool) -> Result<Box<Mm<A>>, Outcome> {
    assert_eq!(base::<A>(), A::TASK_BASE, "TASK_BASE is PMD-aligned");
    let mm = mapped_mm::<A>(A::PMD_SIZE, true)?;
    // SAFETY: every case calls `unuse_mm` before `exit_mmap`.
    unsafe { mmod::use_mm(&*mm) };
    if fill {
        for a in (base::<A>()..base::<A>() + A::PMD_SIZE).step_by(8) {
            // SAFETY: in the mm's writable VMA.
            unsafe { store(a, pattern(a)) };
        }
    }
    Ok(mm)
}

/// [`block_mm`] filled and collapsed into a huge PMD, loaded on this CPU;
/// torn down again if the collapse fails.
fn huge_mm<A: Mmu>() -> Result<Box<Mm<A>>, Outcome> {
    let mm = block_mm::<A>(true)?;
    if let Err(o) = collapse_ok::<A>(&mm) {
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        return Err(o);
    }
    Ok(mm)
}

/// Runs a huge-leaf case's body under [`no_leak`], or skips the case where
/// the MMU maps no PMD leaves.
fn huge_case<A: Mmu>(body: impl FnOnce() -> Outcome) -> Outcome {
    if !A::HAS_HUGE_PMD {
        return Outcome::Skip(NO_LEAVES);
    }
    no_leak(body)
}

/// Words of `[start, end)` that do not hold their pattern, read here.
fn wrong_words(start: u64, end: u64) -> u64 {
    (start..end)
        .step_by(8)
        // SAFETY: callers pass a range of a readable VMA of the running mm.
        .filter(|&a| unsafe { load(a) } != pattern(a))
        .count() as u64
}

/// The PMD entry of `addr` in `mm`.
fn pmd_of<A: Mmu>(mm: &Mm<A>, addr: u64) -> u64 {
    let pmdp = pgtable::follow_pmd(mm, addr).expect("populated");
    // SAFETY: a live entry of `mm`.
    unsafe { pgtable::read_entry(pmdp) }
}

fn is_huge<A: Mmu>(mm: &Mm<A>, addr: u64) -> bool {
    huge_memory::pmd_trans_huge::<A>(pmd_of(mm, addr))
}

/// Collapses the test block with the fixed policy and checks it collapsed
/// (into a leaf where the MMU has them).
fn collapse_ok<A: Mmu>(mm: &Mm<A>) -> Result<CollapseReport, Outcome> {
    let policy = CollapsePolicy {
        ipi_sync: true,
        table_free: TableFree::Immediate,
    };
    let rep = khugepaged::collapse_huge_page(mm, base::<A>(), &policy);
    if rep.result != CollapseResult::Collapsed {
        return Err(Outcome::Fail(format!("collapse: {:?}", rep.result)));
    }
    if A::HAS_HUGE_PMD != is_huge(mm, base::<A>()) {
        return Err(Outcome::Fail(
            "the collapsed PMD is not what the MMU offers".into(),
        ));
    }
    Ok(rep)
}

/// The test mm and the helper CPU's results.
static THP_MM: AtomicU64 = AtomicU64::new(0);
static HELPER_WRONG: AtomicU64 = AtomicU64::new(0);
static HELPER_FAULTS: AtomicU64 = AtomicU64::new(0);

/// On a helper CPU: run the test mm and read the whole block (its TLB then
/// holds translations of it).
fn helper_attach_and_read<A: Mmu>(_: usize) {
    // SAFETY: the test keeps the mm alive until the helper detached.
    let mm = unsafe { &*(THP_MM.load(Ordering::Acquire) as *const Mm<A>) };
    // SAFETY: as above.
    unsafe { mmod::use_mm(mm) };
    helper_read::<A>(0);
}

/// On a helper CPU running the test mm: read the whole block.
fn helper_read<A: Mmu>(_: usize) {
    let f0 = faults::<A>();
    let wrong = wrong_words(base::<A>(), base::<A>() + A::PMD_SIZE);
    HELPER_FAULTS.store(faults::<A>() - f0, Ordering::Release);
    HELPER_WRONG.store(wrong, Ordering::Release);
}

fn helper_detach<A: Mmu>(_: usize) {
    mmod::unuse_mm::<A>();
}

/// Collapse keeps every word, read here and on a CPU that cached the old
/// translations before the collapse; x86-64: the PMD is a leaf; without
/// leaves: the PMD points to a new table; the old frames are freed.
fn collapse_keeps_every_byte<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let mm = or_return!(block_mm::<A>(true));
        THP_MM.store(&*mm as *const Mm<A> as u64, Ordering::Release);
        let helper = (smp::nr_cpus() >= 2).then_some(1);
        if let Some(h) = helper {
            smp::smp_call_function_single::<A>(h, helper_attach_and_read::<A>, 0, true);
        }
        let before_wrong = HELPER_WRONG.load(Ordering::Acquire);
        let old_pfns: Vec<u64> = (0..hpage_pmd_nr::<A>())
            .map(|i| A::pte_pfn(pte_of(&mm, base::<A>() + i * PAGE_SIZE)))
            .collect();
        let old_pmd = pmd_of(&mm, base::<A>());
        let rep = collapse_ok::<A>(&mm);
        let new_pmd = pmd_of(&mm, base::<A>());
        let old_freed = old_pfns
            .iter()
            .filter(|&&p| page::page_ref_count(page::pfn_to_page(p)) == 0)
            .count();
        let f0 = faults::<A>();
        let here = wrong_words(base::<A>(), base::<A>() + A::PMD_SIZE);
        let here_faults = faults::<A>() - f0;
        let (there, there_faults) = match helper {
            Some(h) => {
                smp::smp_call_function_single::<A>(h, helper_read::<A>, 0, true);
                smp::smp_call_function_single::<A>(h, helper_detach::<A>, 0, true);
                (
                    HELPER_WRONG.load(Ordering::Acquire),
                    HELPER_FAULTS.load(Ordering::Acquire),
                )
            }
            None => (0, 0),
        };
        mmod::unuse_mm::<A>();
        let rss = mm.rss_anon.load(Ordering::Relaxed) as u64;
        memory::exit_mmap(*mm);
        let rep = or_return!(rep);
        diag!(
            "huge_leaf={} old_frames_freed={old_freed} wrong_here={here} faults_here={here_faults} helper={helper:?} wrong_there={there} faults_there={there_faults} collapse_us={}",
            A::HAS_HUGE_PMD,
            (rep.done_ns - rep.pmd_cleared_ns) / 1000
        );
        if before_wrong != 0 {
            return Outcome::Fail("the helper read wrong values before the collapse".into());
        }
        if !A::HAS_HUGE_PMD
            && A::entry_table(Level::Pmd, new_pmd) == A::entry_table(Level::Pmd, old_pmd)
        {
            return Outcome::Fail("the PMD still points to the old table".into());
        }
        if old_freed != old_pfns.len() {
            return Outcome::Fail(format!(
                "{} of {} old frames were not freed",
                old_pfns.len() - old_freed,
                old_pfns.len()
            ));
        }
        if here != 0 || there != 0 || here_faults != 0 || there_faults != 0 {
            return Outcome::Fail(format!(
                "after the collapse: {here} wrong words here, {there} on the helper; faults {here_faults} / {there_faults}"
            ));
        }
        if rss != hpage_pmd_nr::<A>() {
            return Outcome::Fail(format!("rss {rss}"));
        }
        Outcome::Pass
    })
}

/// A page with a GUP pin's references aborts the collapse after the PMD
/// clear; the old PMD is back, every word intact; without the pin the
/// collapse works.
fn collapse_aborts_on_pin<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let mm = or_return!(block_mm::<A>(true));
        let victim = base::<A>() + 100 * PAGE_SIZE;
        let pinned = page::pfn_to_page(A::pte_pfn(pte_of(&mm, victim)));
        page::page_ref_add(pinned, GUP_PIN_COUNTING_BIAS);
        let old_pmd = pmd_of(&mm, base::<A>());
        let policy = CollapsePolicy {
            ipi_sync: true,
            table_free: TableFree::Immediate,
        };
        let rep = khugepaged::collapse_huge_page(&mm, base::<A>(), &policy);
        let restored = pmd_of(&mm, base::<A>()) == old_pmd;
        let f0 = faults::<A>();
        let wrong = wrong_words(base::<A>(), base::<A>() + A::PMD_SIZE);
        let f1 = faults::<A>();
        let locked = page::PageLocked(pinned);
        page::page_ref_sub(pinned, GUP_PIN_COUNTING_BIAS);
        let again = collapse_ok::<A>(&mm);
        let wrong_after = wrong_words(base::<A>(), base::<A>() + A::PMD_SIZE);
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        diag!(
            "result={:?} restored={restored} wrong={wrong} faults={} after_unpin={:?}",
            rep.result,
            f1 - f0,
            again.as_ref().map(|r| r.result)
        );
        let want =
            CollapseResult::Aborted(CollapseAbort::Referenced(victim, 1 + GUP_PIN_COUNTING_BIAS));
        if rep.result != want || rep.pmd_cleared_ns == 0 {
            return Outcome::Fail(format!(
                "collapse gave {:?}, expected {want:?} after the PMD clear",
                rep.result
            ));
        }
        if !restored || wrong != 0 || locked {
            return Outcome::Fail(format!(
                "after the abort: PMD restored {restored}, {wrong} wrong words, page locked {locked}"
            ));
        }
        if let Err(o) = again {
            return o;
        }
        if wrong_after != 0 {
            return Outcome::Fail(format!(
                "{wrong_after} wrong words after the second collapse"
            ));
        }
        Outcome::Pass
    })
}

/// Length of the first interrupts-off section of the IPI-sync case; a
/// retry doubles it.
const SECTION_NS: u64 = 50_000_000;
/// Attempts of a cell whose claim is "did not wait" (see below).
const ATTEMPTS: u32 = 3;

/// One collapse while the mm's CPU `held` spends `section_ns` with
/// interrupts off; returns when the PMD clear returned and when the pin
/// check began, relative to the section's end (ns). The new block is
/// allocated before the section, so that the section times the clear and
/// the check, not the allocator (which first-touches 2 MiB, slow under a
/// shadow-paging hypervisor).
fn collapse_beside_section<A: Mmu>(
    held: usize,
    ipi_sync: bool,
    section_ns: u64,
) -> Result<(i64, i64), Outcome> {
    let order = huge_memory::hpage_pmd_order::<A>();
    let mm = block_mm::<A>(false)?;
    let Some(block) = page_alloc::alloc_pages(order) else {
        memory::exit_mmap(*mm);
        return Err(Outcome::Fail("no block for the collapse".into()));
    };
    let mut hpage = Some(block);
    THP_MM.store(&*mm as *const Mm<A> as u64, Ordering::Release);
    smp::smp_call_function_single::<A>(held, helper_attach_and_read::<A>, 0, true);
    smp::smp_call_function_single::<A>(held, helper_detach::<A>, 0, true);
    start_section::<A>(held, section_ns);
    let policy = CollapsePolicy {
        ipi_sync,
        table_free: TableFree::Immediate,
    };
    let rep = khugepaged::collapse_huge_page_prealloc(&mm, base::<A>(), &policy, &mut hpage);
    let end = wait_section_end::<A>();
    if let Some(unused) = hpage {
        page_alloc::__free_pages(unused, order);
    }
    mmod::unuse_mm::<A>();
    memory::exit_mmap(*mm);
    if rep.result != CollapseResult::Collapsed {
        return Err(Outcome::Fail(format!("collapse: {:?}", rep.result)));
    }
    let rel = |t: u64| t as i64 - end as i64;
    Ok((rel(rep.pmd_cleared_ns), rel(rep.pin_check_ns)))
}

/// A CPU of the mm (it ran it; its TLB may hold the block) spends a section
/// with interrupts off, as GUP-fast does. Per flush strategy and IPI-sync
/// knob: where the PMD clear and the pin check happened relative to the
/// section's end. Expected: with the IPI sync the pin check waits for the
/// section, on every strategy. Without it, it waits only where the PMD flush
/// itself is an interrupt the section holds back (x86-64 fixed-vector IPI
/// shootdown: the flush waits, which is why x86 needed no fix); the NMI
/// shootdown and s390x's IDTE/CSP purge every TLB without the CPU's
/// cooperation, so the clear and (without the sync) the pin check run while
/// the CPU is still in its section.
///
/// "Waited" (after the end) is a certainty; "did not wait" is shown by one
/// run in which the step came before the end. A run in which the host
/// delayed the collapse past the end proves neither, and the cell is
/// repeated with a longer section, up to [`ATTEMPTS`] times.
fn collapse_ipi_sync<A: Mmu>(_: &Cmdline) -> Outcome {
    if let Some(skip) = crate::platform::skip_without(crate::platform::Property::IpiHeldByIrqsOff) {
        return skip;
    }
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    no_leak(|| {
        let held = smp::nr_cpus() - 1;
        let mut result = Outcome::Pass;
        'outer: for &s in A::FLUSH_STRATEGIES {
            if let Err(e) = tlbflush::set_flush_strategy::<A>(s) {
                result = Outcome::Fail(e.into());
                break;
            }
            let flush_waits = s == FlushStrategy::Ipi;
            for ipi_sync in [false, true] {
                let check_waits = ipi_sync || flush_waits;
                let mut section = SECTION_NS;
                for attempt in 1..=ATTEMPTS {
                    let (cleared, checked) =
                        match collapse_beside_section::<A>(held, ipi_sync, section) {
                            Ok(t) => t,
                            Err(o) => {
                                result = o;
                                break 'outer;
                            }
                        };
                    diag!(
                        "strategy={} ipi_sync={ipi_sync} section_ns={section} pmd_cleared_after_section_ns={cleared} pin_check_after_section_ns={checked}",
                        s.name()
                    );
                    // Certain failures: a step that must wait came first.
                    if flush_waits && cleared < 0 {
                        result = Outcome::Fail(format!(
                            "{}: the PMD flush returned inside the interrupts-off section",
                            s.name()
                        ));
                        break 'outer;
                    }
                    if check_waits && checked < 0 {
                        result = Outcome::Fail(format!(
                            "{} ipi_sync={ipi_sync}: the pin check ran inside the interrupts-off section",
                            s.name()
                        ));
                        break 'outer;
                    }
                    let shown = (flush_waits || cleared < 0) && (check_waits || checked < 0);
                    if shown {
                        break;
                    }
                    if attempt == ATTEMPTS {
                        result = Outcome::Fail(format!(
                            "{} ipi_sync={ipi_sync}: in {ATTEMPTS} runs the collapse never reached its {} before the section ended",
                            s.name(),
                            if flush_waits || cleared < 0 { "pin check" } else { "PMD clear" }
                        ));
                        break 'outer;
                    }
                    section *= 2;
                }
            }
        }
        let _ = tlbflush::set_flush_strategy::<A>(A::FLUSH_STRATEGIES[0]);
        result
    })
}

/// Each table-freeing policy frees the old PTE table when it says: at once,
/// after the IPI sync (before the collapse returns), or after an RCU grace
/// period (this CPU keeps interrupts off across the collapse, so none can
/// end before it has looked). One table per frame, so the table's frame is
/// freed with it.
fn collapse_table_free<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let old_frag = frag::policy();
        frag::set_policy(frag::FragPolicy::OnePerFrame);
        let mut result = Outcome::Pass;
        for tf in [TableFree::Immediate, TableFree::IpiSync, TableFree::Rcu] {
            let mm = match block_mm::<A>(false) {
                Ok(m) => m,
                Err(o) => {
                    result = o;
                    break;
                }
            };
            let policy = CollapsePolicy {
                ipi_sync: false,
                table_free: tf,
            };
            let flags = (tf == TableFree::Rcu).then(A::local_irq_save);
            let rep = khugepaged::collapse_huge_page(&mm, base::<A>(), &policy);
            let table_pfn = rep.old_table >> crate::mm::PAGE_SHIFT;
            let at_return = page_alloc::page_is_poisoned(table_pfn);
            if let Some(f) = flags {
                A::local_irq_restore(f);
            }
            rcu::rcu_barrier_this_cpu::<A>();
            let after_gp = page_alloc::page_is_poisoned(table_pfn);
            mmod::unuse_mm::<A>();
            memory::exit_mmap(*mm);
            diag!("table_free={tf:?} freed_at_return={at_return} after_grace_period={after_gp}");
            if rep.result != CollapseResult::Collapsed {
                result = Outcome::Fail(format!("collapse: {:?}", rep.result));
                break;
            }
            if (at_return, after_gp) != (tf != TableFree::Rcu, true) {
                result = Outcome::Fail(format!(
                    "{tf:?}: table freed at return {at_return}, after a grace period {after_gp}"
                ));
                break;
            }
        }
        frag::set_policy(old_frag);
        result
    })
}

/// x86-64: munmap and MADV_DONTNEED of a whole huge PMD zap the leaf: the
/// block and nothing else is freed, rss drops to 0, the range reads zeros
/// (DONTNEED) or faults (munmap).
fn huge_zap_whole<A: Mmu>(_: &Cmdline) -> Outcome {
    huge_case::<A>(|| {
        let zaps0 = huge_memory::THP_ZAP_PMD.load(Ordering::Relaxed);
        let mm = or_return!(huge_mm::<A>());
        let free0 = page_alloc::nr_free_pages();
        let r1 = memory::madvise_dontneed(&mm, base::<A>(), A::PMD_SIZE);
        let freed = page_alloc::nr_free_pages() as i64 - free0 as i64;
        let rss = mm.rss_anon.load(Ordering::Relaxed);
        // SAFETY: in the VMA: a fresh zero page.
        let zero = unsafe { load(base::<A>() + 12345 * 8) };
        let r2 = memory::munmap(&mm, base::<A>(), A::PMD_SIZE);
        let after = A::probe_load(base::<A>());
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        let zaps = huge_memory::THP_ZAP_PMD.load(Ordering::Relaxed) - zaps0;
        diag!("frames_freed_by_dontneed={freed} rss_after={rss} huge_zaps={zaps}");
        if r1.is_err() || r2.is_err() {
            return Outcome::Fail(format!("madvise {r1:?}, munmap {r2:?}"));
        }
        if freed as u64 != hpage_pmd_nr::<A>() || rss != 0 || zero != 0 || zaps != 1 {
            return Outcome::Fail(format!(
                "DONTNEED freed {freed} frames, rss {rss}, read {zero:#x}, {zaps} huge zaps"
            ));
        }
        match after {
            Err(info) if !info.protection => Outcome::Pass,
            other => Outcome::Fail(format!("a load after munmap gave {other:?}")),
        }
    })
}

/// x86-64: munmap of part of a huge PMD splits it: the rest keeps its data
/// (same frames), the unmapped part faults.
fn huge_partial_munmap<A: Mmu>(_: &Cmdline) -> Outcome {
    huge_case::<A>(|| {
        let mm = or_return!(huge_mm::<A>());
        let head = A::pmd_pfn(pmd_of(&mm, base::<A>()));
        let splits0 = huge_memory::THP_SPLIT_PMD.load(Ordering::Relaxed);
        let (hole, hole_len) = (base::<A>() + 64 * PAGE_SIZE, 16 * PAGE_SIZE);
        let r = memory::munmap(&mm, hole, hole_len);
        let splits = huge_memory::THP_SPLIT_PMD.load(Ordering::Relaxed) - splits0;
        let still_huge = is_huge(&mm, base::<A>());
        let same_frames = A::pte_pfn(pte_of(&mm, base::<A>() + 200 * PAGE_SIZE)) == head + 200;
        let f0 = faults::<A>();
        let wrong = wrong_words(base::<A>(), hole)
            + wrong_words(hole + hole_len, base::<A>() + A::PMD_SIZE);
        let f1 = faults::<A>();
        let in_hole = A::probe_load(hole + 8 * PAGE_SIZE);
        let rss = mm.rss_anon.load(Ordering::Relaxed) as u64;
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        diag!("splits={splits} wrong={wrong} faults={} rss={rss}", f1 - f0);
        if r.is_err() || splits != 1 || still_huge || !same_frames {
            return Outcome::Fail(format!(
                "munmap {r:?}, {splits} splits, still huge {still_huge}, same frames {same_frames}"
            ));
        }
        if wrong != 0 || f1 != f0 || rss != hpage_pmd_nr::<A>() - 16 {
            return Outcome::Fail(format!(
                "{wrong} wrong words, {} faults, rss {rss}",
                f1 - f0
            ));
        }
        match in_hole {
            Err(info) if !info.protection => Outcome::Pass,
            other => Outcome::Fail(format!("a load in the hole gave {other:?}")),
        }
    })
}

/// x86-64: fork of a huge-mapped range splits the leaf and shares the small
/// pages copy-on-write; mprotect read-only splits too and stores then fault.
fn huge_fork_mprotect<A: Mmu>(_: &Cmdline) -> Outcome {
    huge_case::<A>(|| {
        let mm = or_return!(huge_mm::<A>());
        let child = memory::dup_mm(&mm);
        let parent_huge = is_huge(&mm, base::<A>());
        let a = base::<A>() + 3 * PAGE_SIZE;
        // SAFETY: in the writable VMA: a COW fault.
        unsafe { store(a, 0xc0c0) };
        let parent_wrong = wrong_words(base::<A>(), base::<A>() + A::PMD_SIZE);
        mmod::unuse_mm::<A>();
        let Some(child) = child else {
            memory::exit_mmap(*mm);
            return Outcome::Fail("dup_mm failed".into());
        };
        // SAFETY: the child lives until exit_mmap below, after unuse_mm.
        unsafe { mmod::use_mm(&*child) };
        let child_wrong = wrong_words(base::<A>(), base::<A>() + A::PMD_SIZE);
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*child);
        // mprotect read-only of part of a new huge block.
        // SAFETY: as in `block_mm`.
        unsafe { mmod::use_mm(&*mm) };
        for a in (base::<A>()..base::<A>() + A::PMD_SIZE).step_by(8) {
            // SAFETY: in the VMA.
            unsafe { store(a, pattern(a)) };
        }
        let recollapsed = collapse_ok::<A>(&mm).is_ok();
        let ro = base::<A>() + A::PMD_SIZE / 2;
        let rp = memory::mprotect(&mm, ro, PAGE_SIZE, mmod::VmFlags::RO);
        let ro_huge = is_huge(&mm, base::<A>());
        let ro_store = A::probe_store(ro, 1);
        let rw_store = A::probe_store(ro + PAGE_SIZE, pattern(ro + PAGE_SIZE));
        let wrong_after = wrong_words(base::<A>(), base::<A>() + A::PMD_SIZE);
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        diag!(
            "parent_huge_after_fork={parent_huge} parent_wrong={parent_wrong} child_wrong={child_wrong} huge_after_mprotect={ro_huge} ro_store={ro_store:?}"
        );
        // The parent's store changed one word: the parent sees it, the child not.
        if parent_huge || parent_wrong != 1 || child_wrong != 0 {
            return Outcome::Fail(format!(
                "after fork: parent huge {parent_huge}, {parent_wrong} words differ in the parent (1 expected), {child_wrong} in the child"
            ));
        }
        if !recollapsed || rp.is_err() || ro_huge || wrong_after != 0 || rw_store.is_err() {
            return Outcome::Fail(format!(
                "mprotect {rp:?}: huge after {ro_huge}, {wrong_after} wrong words, store beside {rw_store:?}"
            ));
        }
        match ro_store {
            Err(info) if info.protection && info.write => Outcome::Pass,
            other => Outcome::Fail(format!("a store to the read-only page gave {other:?}")),
        }
    })
}

/// x86-64: an mm torn down with a huge mapping frees the block and its
/// tables.
fn huge_exit<A: Mmu>(_: &Cmdline) -> Outcome {
    // The leak check fails the case on any bad-page report.
    huge_case::<A>(|| {
        let mm = or_return!(huge_mm::<A>());
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        Outcome::Pass
    })
}

/// The frame `addr` maps in `mm`.
fn pfn_at<A: Mmu>(mm: &Mm<A>, addr: u64) -> u64 {
    A::pte_pfn(pte_of(mm, addr))
}

/// Write-protects the PTE of `addr` (as fork or mprotect leave it).
fn wrprotect<A: Mmu>(mm: &Mm<A>, addr: u64) {
    let ptep = pgtable::follow_pte(mm, addr).expect("populated");
    {
        let _ptl = memory::pte_lockptr(ptep).lock();
        // SAFETY: a live PTE of `mm`, PTL held.
        unsafe { A::ptep_set_wrprotect(mm, addr, ptep) };
    }
    A::flush_tlb_page(mm, addr);
}

/// do_wp_page reuses the page (same frame, no copy) exactly when it has one
/// reference and one mapping, in both unlock orders, and leaves it
/// unlocked; it copies after fork and with an extra reference.
fn wp_reuse<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let a = A::TASK_BASE;
        let mm = or_return!(mapped_mm::<A>(PAGE_SIZE, true));
        // SAFETY: the mm lives until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        let mut fails = Vec::new();
        for order in [WpUnlock::AfterPtl, WpUnlock::BeforePtl] {
            let old = memory::set_wp_unlock_order(order);
            wrprotect(&mm, a);
            let pfn = pfn_at(&mm, a);
            let (r0, c0) = wp_counts();
            // SAFETY: in the writable VMA: a write-protect fault.
            unsafe { store(a, 7) };
            let (r1, c1) = wp_counts();
            memory::set_wp_unlock_order(old);
            let p = page::pfn_to_page(pfn);
            let ok = pfn_at(&mm, a) == pfn
                && (r1 - r0, c1 - c0) == (1, 0)
                && !page::PageLocked(p)
                && A::pte_write(pte_of(&mm, a));
            diag!(
                "{order:?}: reused={} copies={} page_locked={}",
                r1 - r0,
                c1 - c0,
                page::PageLocked(p)
            );
            if !ok {
                fails.push(format!("{order:?}: no reuse of the exclusive page"));
            }
        }
        // An extra reference (a pin, a speculative holder): copy.
        wrprotect(&mm, a);
        let pfn = pfn_at(&mm, a);
        let p = page::pfn_to_page(pfn);
        page::get_page(p);
        // SAFETY: as above.
        unsafe { store(a, 8) };
        if pfn_at(&mm, a) == pfn || page::page_ref_count(p) != 1 || page::PageLocked(p) {
            fails.push("no copy with an extra reference".into());
        }
        page::put_page(p);
        mmod::unuse_mm::<A>();
        // After fork: the parent's store copies.
        let child = memory::dup_mm(&mm);
        // SAFETY: as above.
        unsafe { mmod::use_mm(&*mm) };
        let pfn = pfn_at(&mm, a);
        // SAFETY: as above.
        unsafe { store(a, 9) };
        let copied = pfn_at(&mm, a) != pfn;
        mmod::unuse_mm::<A>();
        let child_value = child.as_ref().map(|c| {
            // SAFETY: as above.
            unsafe { mmod::use_mm(&**c) };
            // SAFETY: in the child's VMA.
            let v = unsafe { load(a) };
            mmod::unuse_mm::<A>();
            v
        });
        if let Some(c) = child {
            memory::exit_mmap(*c);
        }
        memory::exit_mmap(*mm);
        if !copied || child_value != Some(8) {
            fails.push(format!(
                "after fork: copied {copied}, child reads {child_value:?}"
            ));
        }
        match fails.first() {
            Some(f) => Outcome::Fail(f.clone()),
            None => Outcome::Pass,
        }
    })
}

fn wp_counts() -> (u64, u64) {
    (
        memory::WP_REUSED.load(Ordering::Relaxed),
        memory::WP_COPIED.load(Ordering::Relaxed),
    )
}

/// Set by the helper when its store returned.
static WP_DONE: AtomicU64 = AtomicU64::new(0);

/// On the helper CPU: run the test mm and store (a write-protect fault).
fn wp_store<A: Mmu>(_: usize) {
    // SAFETY: the test keeps the mm alive until the helper detached.
    let mm = unsafe { &*(THP_MM.load(Ordering::Acquire) as *const Mm<A>) };
    // SAFETY: as above.
    unsafe { mmod::use_mm(mm) };
    // SAFETY: in the writable VMA.
    unsafe { store(A::TASK_BASE, 0x77) };
    mmod::unuse_mm::<A>();
    WP_DONE.store(1, Ordering::Release);
}

/// When the page lock is held elsewhere, the write fault takes a reference,
/// drops the PTL, waits in lock_page, retakes the PTL, rechecks, and then
/// reuses the page (same frame) and unlocks it.
fn wp_reuse_lock_wait<A: Mmu>(_: &Cmdline) -> Outcome {
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    no_leak(|| {
        let a = A::TASK_BASE;
        let mm = or_return!(mapped_mm::<A>(PAGE_SIZE, true));
        wrprotect(&mm, a);
        let pfn = pfn_at(&mm, a);
        let p = page::pfn_to_page(pfn);
        page::lock_page(p);
        THP_MM.store(&*mm as *const Mm<A> as u64, Ordering::Release);
        WP_DONE.store(0, Ordering::Release);
        let (r0, _) = wp_counts();
        smp::smp_call_function_single::<A>(1, wp_store::<A>, 0, false);
        // Wait until the helper spins in lock_page (bounded).
        let t0 = A::clock_ns();
        while page::page_lock_waiters(p) == 0 && A::clock_ns() - t0 < 1_000_000_000 {
            A::cpu_relax();
        }
        let waited = page::page_lock_waiters(p) == 1;
        let done_early = WP_DONE.load(Ordering::Acquire) != 0;
        // Held by the helper while it waits: the PTE's and its own.
        let refs_while_waiting = page::page_ref_count(p);
        page::unlock_page(p);
        while WP_DONE.load(Ordering::Acquire) == 0 {
            A::cpu_relax();
        }
        let (r1, _) = wp_counts();
        let reused = pfn_at(&mm, a) == pfn && r1 - r0 == 1;
        let locked = page::PageLocked(p);
        let refs = page::page_ref_count(p);
        memory::exit_mmap(*mm);
        diag!("helper_waited={waited} refs_while_waiting={refs_while_waiting} reused={reused} refs_after={refs}");
        if !waited || done_early || refs_while_waiting != 2 {
            return Outcome::Fail(format!(
                "the helper did not wait in lock_page with a reference (waiters {waited}, done {done_early}, refs {refs_while_waiting})"
            ));
        }
        if !reused || locked || refs != 1 {
            return Outcome::Fail(format!("reused {reused}, locked {locked}, refcount {refs}"));
        }
        Outcome::Pass
    })
}
