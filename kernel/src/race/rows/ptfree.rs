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
//! - Roles: `gup` — GUP-fast ([`gup::get_user_pages_fast_traced`], FOLL_PIN in
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
//!   counted in the run ([`Walk`]) and printed at its end
//!   (`# ptfree: ...`), so a run whose walks never met the unmap shows it.
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
//! - Handshake: both roles spin until the other runs (`State::unmap_ready`,
//!   `State::gup_started`), so the munmap starts as the walk does
//!   (either CPU alone is woken late too often for the two to meet); the
//!   walk reaches the PMD before the munmap clears it (after the zap), and
//!   the natural delays after the PMD read let the munmap catch up.
//! - Natural: random delays after the PMD read widen the window. A run has
//!   the catalogue's budget (10 000 iterations), fixed cells included.
//! - Overlap (the roles met inside the window): the walker read the PMD
//!   before the unmap cleared it (it read a table entry; the entry is
//!   never set again in the iteration) and went on to read the PTE table
//!   after the clear (it left `gup_fast:after_pmd_read` after the unmap
//!   passed `free_pgtables:after_pmd_clear`). Immediate freeing: the table
//!   may be freed under the walk; IPI sync and RCU: the free waits for it;
//!   x86-64 flush IPIs: the flush waits for it. A walk that read the PMD
//!   empty completed but did not meet the unmap. `inject=apart` makes
//!   every walk start after the unmap returned: no iteration overlaps.
//! - Detector: the walk's recorder judges each table read as it happens
//!   ([`GupRecord::freed_table_read`]): a read from a frame that was no
//!   longer a page table, or that returned the free-page poison.
//! - Teardown: nothing to repair — a walk that read poison takes no
//!   reference (the poisoned PTE's pfn lies beyond memory), and the runner's
//!   `exit_mmap` takes the mm (each iteration builds its own); it counts how
//!   the walk ended.

use crate::{roles, schedule};
use crate::kprintln;
use crate::mm::arch::{Level, Mmu};
use crate::mm::frag::{self, FragPolicy};
use crate::mm::gup::{self, GupFlags, GupRecord};
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::mmu_gather::{self, PageFree, TableFree, TlbPolicy};
use crate::mm::tlbflush::FlushStrategy;
use crate::mm::{page, page_alloc, pgtable, PAGE_SHIFT, PAGE_SIZE};
use crate::race::detect::{self, Finding};
use crate::race::point::{self, points};
use crate::race::scenario::{Inject, Commit, CommitRole, Ctx, Row, RowInfo, Variant};
use crate::race::waitfor::WaitClass;
use alloc::{boxed::Box, format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

roles!(GUP = "gup", UNMAP = "unmap");

/// Pages mapped and got.
const NR_PAGES: usize = 1;

/// The row.
pub struct PtfreeVsGupFast;

/// How a `gup` walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Walk {
    /// It got every page on the fast path.
    GotAll = 1,
    /// It saw the unmap: it stopped at an entry it read empty.
    SawEmpty,
    /// It saw the unmap: it backed off (page freed or PTE changed).
    BackedOff,
    /// It read a freed table.
    Freed,
    /// None of these.
    Other,
}

impl Walk {
    /// Whether the walk decided every page from live tables (the role
    /// completed).
    fn completed(self) -> bool {
        matches!(self, Walk::GotAll | Walk::SawEmpty | Walk::BackedOff)
    }
}

/// What the roles and the detector share in an iteration.
#[derive(Default)]
pub struct State {
    /// What the walk read.
    rec: spin::Mutex<GupRecord>,
    /// `unmap` is ready and spins for `gup`.
    unmap_ready: AtomicBool,
    /// `gup` starts its walk.
    gup_started: AtomicBool,
    /// How the walk ended (a [`Walk`]; 0 until it ends).
    walk: AtomicU8,
    /// `unmap` returned (for `inject=late-finding`).
    unmap_done: AtomicBool,
}

/// What the run keeps: how the walks ended, by [`Walk`] (`walks[w - 1]`).
#[derive(Default)]
pub struct Run {
    walks: [u64; 5],
}

impl<A: Mmu> Row<A> for PtfreeVsGupFast {
    const INFO: RowInfo = RowInfo {
        catalogue: Some(6),
        seed: "seeds 000 and 003: mm/gup.c's GUP-fast rule quoted in seed 000 (Sept 2020); serialising the flush with GUP-fast where it is not an IPI, seed 003 (March 2020)",
        commits: &[Commit::new(
            "9de7d833e370",
            Some("s390/tlb: Convert to generic mmu_gather"),
            None,
            CommitRole::Context,
        )],
        // x86-64 IPI and NMI shootdown, s390x IPTE (CSP behaves as IPTE
        // here — no interrupt either — and is left out to keep the boot
        // short).
        flush: &[FlushStrategy::Ipi, FlushStrategy::Nmi, FlushStrategy::Ipte],
        delay_points: &[&points::GUP_FAST_AFTER_PMD_READ],
        trace_points: &[
            &points::ZAP_AFTER_PTE_CLEAR,
            &points::GATHER_AFTER_FLUSH,
            &points::FREE_PGTABLES_AFTER_PMD_CLEAR,
        ],
        max_delay_ns: 100_000,
        schedule: schedule![
            GUP at points::GUP_FAST_AFTER_PMD_READ;
            UNMAP at points::ZAP_BEFORE_PTL, points::GATHER_AFTER_TABLE_FREE;
            GUP leave points::GUP_FAST_AFTER_PMD_READ;
        ],
        ..RowInfo::new(
            "ptfree-vs-gup-fast",
            "a PTE table freed by munmap while GUP-fast walks it with interrupts off",
            ROLES,
        )
    };
    /// The table-freeing policy.
    type Config = TableFree;
    /// Each runs under every flush strategy of the row ([`RowInfo::flush`]);
    /// with x86-64 flush IPIs the flush waits for the interrupts-off walker
    /// before any table policy comes into play (the catalogue names only
    /// `immediate` there; with IPI sync or RCU the flush IPI also blocks
    /// first).
    const VARIANTS: &'static [Variant<TableFree>] = &[
        Variant::new(
            "immediate",
            "tables freed right after the flush",
            "no RCU table freeing: tables freed right after the flush, protected only by a flush IPI the interrupts-off walker holds back (mm/gup.c's rule)",
            &[],
            TableFree::Immediate,
        ),
        Variant::new(
            "ipi-sync",
            "an IPI sync before the tables are freed",
            "tlb_remove_table_sync_one before the free (MMU_GATHER_RCU_TABLE_FREE's fallback)",
            &[WaitClass::CallIpi],
            TableFree::IpiSync,
        ),
        Variant::new(
            "rcu",
            "tables freed after an RCU grace period",
            "MMU_GATHER_RCU_TABLE_FREE: tables freed after an RCU-sched grace period",
            &[WaitClass::RcuGp],
            TableFree::Rcu,
        ),
    ];
    type State = State;
    type Run = Run;

    fn prepare(v: &Variant<TableFree>) -> Result<Run, &'static str> {
        mmu_gather::set_tlb_policy(TlbPolicy {
            page_free: PageFree::native::<A>(),
            table_free: v.config,
            ..TlbPolicy::DEFAULT
        });
        frag::set_policy(FragPolicy::OnePerFrame);
        Ok(Run::default())
    }

    fn finish(run: Run) {
        let w = run.walks;
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
    }

    fn setup(_: &mut Run, ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        let mm = Box::new(Mm::<A>::new().ok_or_else(|| String::from("no memory for an mm"))?);
        let addr = A::TASK_BASE;
        let len = NR_PAGES as u64 * PAGE_SIZE;
        let table = memory::mmap_anon(&mm, addr, len, VmFlags::RW, true)
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
        Ok(())
    }

    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool {
        let st = &ctx.state;
        match role {
            GUP => {
                let flags = if ctx.iteration.is_multiple_of(2) {
                    GupFlags::FOLL_PIN
                } else {
                    GupFlags::FOLL_GET
                };
                let cpu = A::smp_processor_id();
                let mut rec = st.rec.lock();
                let mut pages = Vec::with_capacity(NR_PAGES);
                // Start together: the unmap is ready and spins for us.
                point::wait_until::<A>(|| st.unmap_ready.load(Ordering::Acquire));
                st.gup_started.store(true, Ordering::Release);
                // inject=apart: the walk starts once the unmap is done, so
                // the two never meet.
                if ctx.inject == Some(Inject::Apart) {
                    point::wait_until::<A>(|| st.unmap_done.load(Ordering::Acquire));
                }
                // inject=deadlock: the walker holds the PTE table's PTL,
                // which the unmap's zap needs: a deadlock that is not the
                // race's (the verdict must not call it impossible).
                let ptl = (ctx.inject == Some(Inject::Deadlock))
                    .then(|| pgtable::follow_pte(ctx.mm(), ctx.addr))
                    .flatten()
                    .map(|ptep| memory::pte_lockptr(ptep).lock());
                let before = gup::gup_stats(cpu);
                gup::get_user_pages_fast_traced::<A>(
                    ctx.addr,
                    NR_PAGES,
                    flags,
                    &mut pages,
                    Some(&mut rec),
                );
                drop(ptl);
                let stats = gup::gup_stats(cpu).since(before);
                // inject=late-finding: after the release, once the unmap is
                // done, the walker reads the PTE table it walked again, as
                // a walker the table policy does not protect would.
                if ctx.inject == Some(Inject::LateFinding) {
                    point::wait_until::<A>(|| st.unmap_done.load(Ordering::Acquire));
                    let last = rec.reads().iter().rposition(|r| r.level == Level::Pte);
                    if let Some(i) = last {
                        rec.read_again(i);
                    }
                }
                gup::release_user_pages(&pages, flags);
                let saw_empty = rec.reads().last().is_some_and(|r| {
                    matches!(r.level, Level::Pmd | Level::Pte) && A::entry_none(r.level, r.value)
                });
                let walk = if rec.freed_table_read().is_some() {
                    Walk::Freed
                } else if stats.fast_pages == NR_PAGES as u64 {
                    Walk::GotAll
                } else if stats.backoffs > 0 {
                    Walk::BackedOff
                } else if saw_empty {
                    Walk::SawEmpty
                } else {
                    Walk::Other
                };
                st.walk.store(walk as u8, Ordering::Relaxed);
                walk.completed()
            }
            _ => {
                st.unmap_ready.store(true, Ordering::Release);
                point::wait_until::<A>(|| st.gup_started.load(Ordering::Acquire));
                let unmapped = memory::munmap(ctx.mm(), ctx.addr, NR_PAGES as u64 * PAGE_SIZE);
                if unmapped.is_ok() && ctx.config() == TableFree::Rcu {
                    crate::rcu::rcu_barrier_this_cpu_expedited::<A>();
                }
                st.unmap_done.store(true, Ordering::Release);
                unmapped.is_ok() && page_alloc::page_is_poisoned(ctx.pfns[0])
            }
        }
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        let rec = ctx.state.rec.lock();
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

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        let rec = ctx.state.rec.lock();
        let pmd = rec.reads().iter().find(|r| r.level == Level::Pmd);
        let read_table = pmd.is_some_and(|r| {
            !A::entry_none(Level::Pmd, r.value) && A::entry_is_table(Level::Pmd, r.value)
        });
        let read_pte = rec.reads().iter().any(|r| r.level == Level::Pte);
        let walk = ctx.first_pass(GUP, &points::GUP_FAST_AFTER_PMD_READ);
        let cleared = ctx.first_pass(UNMAP, &points::FREE_PGTABLES_AFTER_PMD_CLEAR);
        read_table
            && read_pte
            && matches!((walk, cleared), (Some(w), Some(c)) if c.before(&w))
    }

    fn teardown(run: &mut Run, ctx: &mut Ctx<A, Self>) {
        if let Some(i) = usize::from(ctx.state.walk.load(Ordering::Relaxed)).checked_sub(1) {
            run.walks[i] += 1;
        }
    }

}
