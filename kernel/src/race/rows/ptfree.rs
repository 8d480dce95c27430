//! `ptfree-vs-gup-fast` (catalogue row 6): GUP-fast walks page tables with
//! interrupts off while another CPU unmaps the range and frees the tables.
//!
//! The rule quoted from `mm/gup.c`: GUP-fast relies on page tables not being
//! freed while it walks them with interrupts disabled. Freeing must wait for
//! every such walker: an IPI it holds back (x86-64's flush IPI, or the
//! explicit `tlb_remove_table_sync_one`), or an RCU-sched grace period
//! (MMU_GATHER_RCU_TABLE_FREE). s390x flushes with IPTE/CSP and sends no IPI;
//! x86-64 with an NMI (or broadcast) shootdown neither: there a table freed
//! right after the flush can be freed under the walker.
//!
//! - Roles: `gup` — GUP-fast ([`get_user_pages_fast_traced`], FOLL_PIN in
//!   even iterations, FOLL_GET in odd ones) over the populated range, in a
//!   task of the mm; releases what it got. `unmap` — `munmap` of the range
//!   (zap, `free_pgtables`, the gather frees the PTE table with the
//!   variant's policy); with RCU freeing it then waits for its own callbacks
//!   (an expedited `rcu_barrier`), so that the table is free before the
//!   state check and the free happens on the role's CPU.
//! - Completion: `unmap` completes when the PTE table's frame is free at its
//!   end. `gup` completes when its lockless walk decided every page on the
//!   fast path from live tables: it got every page, or it saw the unmap —
//!   it stopped at an entry it read empty (PMD or PTE), or backed off
//!   because the page was freed or the PTE changed under its try-grab —
//!   which is the correct answer (slow GUP then finds no VMA). A walk that
//!   read a freed table did not complete. How often each happened is
//!   printed per run (`# ptfree: ...`), so a run whose walks never met the
//!   unmap shows it.
//! - Variants: table freeing `immediate` (after the flush), `ipi-sync`
//!   (an IPI sync, then free), `rcu`; each runs under every flush strategy
//!   of the arch (the flush axis: x86-64 `ipi`, `nmi`; s390x `ipte`; CSP
//!   behaves as IPTE here — no interrupt either — and is left out to keep
//!   the boot short).
//!   PTE tables get a frame each (the fragment rows are row 4's), so a freed
//!   table is a freed, poisoned frame. Pages are freed at the PTE clear with
//!   a broadcast flush (s390 style), batched after the flush otherwise.
//! - Forced schedule: `gup` holds at `gup_fast:after_pmd_read` (interrupts
//!   off, the PMD entry read, its PTE table not yet); `unmap` starts its zap
//!   only then and must reach `gather:after_table_free`; only then `gup`
//!   reads the PTE table. Immediate freeing with a flush that no
//!   interrupts-off CPU holds back (ipte, csp, nmi): `bug` in every
//!   iteration. IPI sync: `unmap` waits in `tlb_remove_table_sync_one` for
//!   the `gup` CPU (a cross-CPU call, the fix's own wait): held by the fix,
//!   then `clean`. RCU: `unmap` waits for the grace period that the `gup`
//!   CPU holds back (the fix's own wait): held by the fix, then `clean`.
//!   x86-64 IPI flush: `unmap` waits for the flush IPI that `gup` holds back
//!   before any table is freed, whatever the table policy: `impossible`.
//! - Handshake: both roles spin until the other runs (`word[2]`: `unmap`
//!   ready, `word[1]`: `gup` starts), so the munmap starts as the walk does
//!   (either CPU alone is woken late too often for the two to meet); the
//!   walk reaches the PMD before the munmap clears it (after the zap), and
//!   the natural delays after the PMD read let the munmap catch up.
//! - Natural: random delays after the PMD read widen the window. A run
//!   stops after 10 000 iterations or 5 s: the fixed cells report their
//!   hit rate (`Report` in the expected table) rather than running 10 000
//!   iterations, since each maps, walks and unmaps, and IPI sync and RCU
//!   wake every CPU.
//! - Detector: the walk's recorder judges each table read as it happens
//!   ([`GupRecord::freed_table_read`]): a read from a frame that was no
//!   longer a page table, or that returned the free-page poison.
//! - Teardown: nothing to repair — a walk that read poison takes no
//!   reference (the poisoned PTE's pfn lies beyond memory), and the runner's
//!   `exit_mmap` takes the mm.

use super::detect::{self, Finding};
use super::point::{self, points, RacePoint, Step};
use super::scenario::{variant_config, Budget, Commit, CommitRole, Ctx, Scenario, Variant};
use super::waitfor::WaitClass;
use crate::kprintln;
use crate::mm::arch::{Level, Mmu};
use crate::mm::frag::{self, FragPolicy};
use crate::mm::gup::{self, GupFlags, GupRecord};
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::mmu_gather::{self, PageFree, TableFree, TlbPolicy};
use crate::mm::tlbflush::{self, FlushStrategy};
use crate::mm::{page, page_alloc, pgtable, PAGE_SHIFT, PAGE_SIZE};
use alloc::{boxed::Box, format, string::String, vec, vec::Vec};
use core::sync::atomic::{AtomicU64, Ordering};

const GUP: usize = 0;
const UNMAP: usize = 1;

/// Pages mapped and got.
const NR_PAGES: usize = 1;

static DELAY_POINTS: [&RacePoint; 1] = [&points::GUP_FAST_AFTER_PMD_READ];
static TRACE_POINTS: [&RacePoint; 2] = [&points::ZAP_AFTER_PTE_CLEAR, &points::GATHER_AFTER_FLUSH];

/// The variants; [`CONFIG`] holds the knobs of each, in the same order.
/// Each runs under every flush strategy of the row ([`FLUSH`]); with x86-64
/// flush IPIs the flush waits for the interrupts-off walker before any
/// table policy comes into play (the catalogue names only `immediate`
/// there; with IPI sync or RCU the flush IPI also blocks first).
static VARIANTS: [Variant; 3] = [
    Variant::new(
        "immediate",
        "tables freed right after the flush",
        "no RCU table freeing: tables freed right after the flush, protected only by a flush IPI the interrupts-off walker holds back (mm/gup.c's rule)",
        &[],
    ),
    Variant::new(
        "ipi-sync",
        "an IPI sync before the tables are freed",
        "tlb_remove_table_sync_one before the free (MMU_GATHER_RCU_TABLE_FREE's fallback)",
        &[WaitClass::CallIpi],
    ),
    Variant::new(
        "rcu",
        "tables freed after an RCU grace period",
        "MMU_GATHER_RCU_TABLE_FREE: tables freed after an RCU-sched grace period",
        &[WaitClass::RcuGp],
    ),
];

/// Per variant: the table-freeing policy.
static CONFIG: [TableFree; 3] = [TableFree::Immediate, TableFree::IpiSync, TableFree::Rcu];

/// The flush strategies the variants run under: x86-64 IPI and NMI
/// shootdown, s390x IPTE (CSP behaves as IPTE here — no interrupt either —
/// and is left out to keep the boot short).
static FLUSH: [FlushStrategy; 3] = [FlushStrategy::Ipi, FlushStrategy::Nmi, FlushStrategy::Ipte];

fn config(v: &Variant) -> TableFree {
    variant_config(&VARIANTS, &CONFIG, v)
}

/// The Linux commits of the row.
static COMMITS: [Commit; 1] = [Commit {
    hash: "9de7d833e370",
    subject: Some("s390/tlb: Convert to generic mmu_gather"),
    release: None,
    role: CommitRole::Context,
}];

/// The row.
pub fn scenario<A: Mmu>() -> Scenario<A> {
    Scenario {
        name: "ptfree-vs-gup-fast",
        about: "a PTE table freed by munmap while GUP-fast walks it with interrupts off",
        catalogue: Some(6),
        seed: "seeds 000 and 003: mm/gup.c's GUP-fast rule quoted in seed 000 (Sept 2020); serialising the flush with GUP-fast where it is not an IPI, seed 003 (March 2020)",
        commits: &COMMITS,
        roles: &["gup", "unmap"],
        variants: &VARIANTS,
        flush: &FLUSH,
        set_variant: set_variant::<A>,
        reset,
        setup: setup::<A>,
        role: role::<A>,
        detect: detect::<A>,
        teardown: |ctx| ctx.extra = None,
        schedule: |_| {
            vec![
                Step::at(GUP, &points::GUP_FAST_AFTER_PMD_READ),
                Step::at(UNMAP, &points::ZAP_BEFORE_PTL),
                Step::at(UNMAP, &points::GATHER_AFTER_TABLE_FREE),
                Step::leave(GUP, &points::GUP_FAST_AFTER_PMD_READ),
            ]
        },
        delay_points: &DELAY_POINTS,
        trace_points: &TRACE_POINTS,
        max_delay_ns: 100_000,
        budget: Budget::CATALOGUE,
    }
}

fn set_variant<A: Mmu>(v: &Variant) -> Result<(), &'static str> {
    let table_free = config(v);
    let flush = tlbflush::flush_strategy::<A>();
    mmu_gather::set_tlb_policy(TlbPolicy {
        page_free: if flush.is_broadcast() {
            PageFree::Immediate
        } else {
            PageFree::Batched
        },
        table_free,
        ..TlbPolicy::DEFAULT
    });
    frag::set_policy(FragPolicy::OnePerFrame);
    Ok(())
}

/// How the `gup` role's walks ended in a run.
struct Walks {
    got_all: AtomicU64,
    saw_empty: AtomicU64,
    backed_off: AtomicU64,
    freed: AtomicU64,
    other: AtomicU64,
}

static WALKS: Walks = Walks {
    got_all: AtomicU64::new(0),
    saw_empty: AtomicU64::new(0),
    backed_off: AtomicU64::new(0),
    freed: AtomicU64::new(0),
    other: AtomicU64::new(0),
};

fn reset() {
    let w = [
        &WALKS.got_all,
        &WALKS.saw_empty,
        &WALKS.backed_off,
        &WALKS.freed,
        &WALKS.other,
    ]
    .map(|c| c.swap(0, Ordering::Relaxed));
    if w.iter().any(|&n| n != 0) {
        kprintln!(
            "    # ptfree: gup walks: got every page {}, saw the unmap: empty entry {} back-off {}; read a freed table {}; other {}",
            w[0],
            w[1],
            w[2],
            w[3],
            w[4]
        );
    }
    mmu_gather::set_tlb_policy(TlbPolicy::DEFAULT);
    // The fragment allocator's default policy.
    frag::set_policy(FragPolicy::FragCounter);
}

/// The row's own state: what the walk read.
struct Extra {
    rec: spin::Mutex<GupRecord>,
}

fn extra<A: Mmu>(ctx: &Ctx<A>) -> &Extra {
    ctx.extra
        .as_deref()
        .and_then(|e| e.downcast_ref::<Extra>())
        .expect("setup stores the row's state")
}

const RW: VmFlags = VmFlags {
    read: true,
    write: true,
};

fn setup<A: Mmu>(ctx: &mut Ctx<A>) -> Result<(), String> {
    let mm = Box::new(Mm::<A>::new().ok_or_else(|| String::from("no memory for an mm"))?);
    let addr = A::TASK_BASE;
    let len = NR_PAGES as u64 * PAGE_SIZE;
    let table = memory::mmap_anon(&mm, addr, len, RW, true)
        .map_err(|e| format!("mmap: {e:?}"))
        .and_then(|()| {
            let pmdp = pgtable::follow_pmd(&*mm, addr).ok_or("no PMD after populate")?;
            // SAFETY: a live PMD entry of `mm`, which no other CPU uses yet.
            let pmd = unsafe { pgtable::read_entry(pmdp) };
            if A::entry_none(Level::Pmd, pmd) || !A::entry_is_table(Level::Pmd, pmd) {
                return Err(format!("PMD {pmd:#x} is not a PTE table after populate"));
            }
            Ok(A::entry_table(Level::Pmd, pmd))
        });
    let table = match table {
        Ok(t) => t,
        Err(e) => {
            memory::exit_mmap(*mm);
            return Err(e);
        }
    };
    ctx.mm = Some(mm);
    ctx.addr = addr;
    ctx.pfns = Vec::from([table >> PAGE_SHIFT]);
    ctx.extra = Some(Box::new(Extra {
        rec: spin::Mutex::new(GupRecord::new()),
    }));
    Ok(())
}

fn role<A: Mmu>(ctx: &Ctx<A>, role: usize) -> bool {
    let mm = ctx.mm.as_deref().expect("setup made the mm");
    match role {
        GUP => {
            let flags = if ctx.iteration.is_multiple_of(2) {
                GupFlags::FOLL_PIN
            } else {
                GupFlags::FOLL_GET
            };
            let cpu = A::smp_processor_id();
            let mut rec = extra(ctx).rec.lock();
            let mut pages = Vec::with_capacity(NR_PAGES);
            // Start together: the unmap is ready and spins for us.
            while ctx.word[2].load(Ordering::Acquire) == 0 {
                A::cpu_relax();
            }
            ctx.word[1].store(1, Ordering::Release);
            let before = gup::gup_stats(cpu);
            gup::get_user_pages_fast_traced::<A>(
                ctx.addr,
                NR_PAGES,
                flags,
                &mut pages,
                Some(&mut rec),
            );
            let stats = gup::gup_stats(cpu).since(before);
            gup::release_user_pages(&pages, flags);
            let saw_empty = rec.reads().last().is_some_and(|r| {
                matches!(r.level, Level::Pmd | Level::Pte) && A::entry_none(r.level, r.value)
            });
            let outcome = if rec.freed_table_read().is_some() {
                &WALKS.freed
            } else if stats.fast_pages == NR_PAGES as u64 {
                &WALKS.got_all
            } else if stats.backoffs > 0 {
                &WALKS.backed_off
            } else if saw_empty {
                &WALKS.saw_empty
            } else {
                &WALKS.other
            };
            outcome.fetch_add(1, Ordering::Relaxed);
            core::ptr::eq(outcome, &WALKS.got_all)
                || core::ptr::eq(outcome, &WALKS.backed_off)
                || core::ptr::eq(outcome, &WALKS.saw_empty)
        }
        _ => {
            ctx.word[2].store(1, Ordering::Release);
            while ctx.word[1].load(Ordering::Acquire) == 0 {
                A::cpu_relax();
            }
            if memory::munmap(mm, ctx.addr, NR_PAGES as u64 * PAGE_SIZE).is_err() {
                return false;
            }
            if mmu_gather::tlb_policy().table_free == TableFree::Rcu {
                crate::rcu::rcu_barrier_this_cpu_expedited::<A>();
            }
            page_alloc::page_is_poisoned(ctx.pfns[0])
        }
    }
}

fn detect<A: Mmu>(ctx: &Ctx<A>) -> Option<Finding> {
    let rec = extra(ctx).rec.lock();
    let r = rec.freed_table_read()?;
    let what = match r.level {
        Level::Pgd => "pgd",
        Level::P4d => "p4d",
        Level::Pud => "pud",
        Level::Pmd => "pmd",
        Level::Pte => "pte",
    };
    let mut f = detect::recorded_read_of_freed_table(page::virt_to_phys(r.addr), r.value, what)
        .at(ctx.addr);
    f.cpu = point::cpu_of(GUP);
    Some(f)
}
