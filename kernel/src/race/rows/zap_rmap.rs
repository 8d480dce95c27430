//! `zap-rmap-vs-mkclean` (catalogue row 3, seed 001): a zap removes a dirty
//! shared-file page's rmap before the TLB flush; writeback's `folio_mkclean`
//! finds the page unmapped, cleans it and writes it out while another CPU
//! still stores through its stale writable TLB entry: the store is lost.
//!
//! Since 1cf35d47712d (3.15) `zap_pte_range` flushes the TLB before
//! dropping the PTL when it cleared a dirty shared PTE, but Linux up to 6.1
//! removed the page's rmap at the clear, before that flush. `folio_mkclean` returns at
//! once for a page that is not mapped, so it neither takes the PTL nor
//! waits for the flush: the page is cleaned and written while a CPU can
//! still write to it through its TLB, and that write leaves a page marked
//! clean that holds data the backing store does not. 5df397dec7c4 ("mm:
//! delay page_remove_rmap() until after the TLB has been flushed", 6.2)
//! removes the rmap after the flush, still under the PTL: mkclean either
//! sees the page mapped and waits for the PTL (the flush is done when it
//! gets it) or sees it unmapped after the flush.
//!
//! - Roles: `writer` (CPU 1) stores tagged sequence numbers to the shared
//!   file page through its user mapping, one plain store at a time; `zap`
//!   (CPU 2) MADV_DONTNEEDs the page; `writeback` (CPU 3) writes the page
//!   back (`write_one_page`: lock, `clear_page_dirty_for_io` — mkclean,
//!   clear `PG_dirty` — copy to the backing store, unlock).
//! - Setup: one shared mapping of a one-page RAM file (SoftDirty tracking,
//!   `__set_page_dirty_nobuffers`), built per run with its page cached and
//!   its page tables; each iteration write-faults the page in on the
//!   controller: the PTE is writable and dirty, the page dirty.
//! - Handshakes: the writer stores once (its TLB now holds the writable
//!   translation; on s390x this store may take the write-notify fault),
//!   then publishes that it runs; the zap starts then; writeback starts
//!   once the zap has cleared the PTE (read locklessly), or unmapped the
//!   page, or returned. In natural mode the writer then sleeps (halted, so
//!   that its vCPU leaves the host cores to the zap and writeback) until
//!   writeback has written the page and woken it, and stores once more; in
//!   forced mode it stores where the schedule says. Either way it stops
//!   after the first store it began once writeback had written the page:
//!   a store after that which faulted would dirty the page again and hide
//!   a lost write.
//! - Variants: `buggy` (`RmapOrder::BeforeFlush`, Linux 6.1) and `fixed`
//!   (`RmapOrder::AfterFlush`, 5df397dec7c4), each run under every flush
//!   strategy of the arch (the flush axis: x86-64 `ipi`, `nmi`; s390x
//!   `ipte`). Pages are batched until after the flush on both arches: the
//!   page is the page cache's and is never freed here, and the delayed rmap
//!   needs a batching gather (`tlb_delay_rmap`).
//! - Forced schedule: the writer holds before a store; the zap clears the
//!   PTE and holds just before its flush under the PTL
//!   (`zap:before_ptl_flush`); the writer stores once (x86-64: through its
//!   stale TLB entry; s390x: IPTE purged it, the store faults and the fault
//!   spins on the zap's PTL — a wait-for cycle through the fault, not
//!   through the fix: `impossible` for both variants); writeback then runs
//!   from `writeback:before_mkclean` to `writeback:after_write` (buggy: the
//!   page is unmapped, mkclean returns at once, the page is cleaned and
//!   written; fixed: mkclean's rmap walk spins on the zap's PTL, the fix's
//!   own wait — `fix_waits: [PtlWaitedBy(writeback)]` — so the runner
//!   releases the schedule and the iteration completes clean); the writer
//!   stores once more (buggy x86-64: through the stale entry, after the
//!   copy: lost); only then the zap flushes.
//! - Natural: random delays at `zap:before_ptl_flush` widen the window
//!   between the rmap removal and the flush.
//! - Detector: a lost write. After the run the page is clean (`PG_dirty`
//!   clear) but its frame holds a sequence number newer than the backing
//!   store's, and the writer stored that number without taking a page
//!   fault since its first store (so through the translation it had before
//!   the zap, not through a PTE a fault installed).
//! - Teardown: nothing to undo. The page stays cached; a PTE a store that
//!   faulted after the zap mapped stays too (writable, dirty, its page
//!   dirty: what `setup` makes anyway), since zapping it would flush every
//!   role CPU, halted by then, whose wake-ups cost more than the iteration.

use super::detect::Finding;
use super::point::{self, points, race_point, RacePoint, Step};
use super::run_mm::RunMm;
use super::scenario::{variant_config, Budget, Commit, CommitRole, Ctx, Scenario, Variant};
use super::user;
use super::waitfor::WaitClass;
use crate::cmdline::Mode;
use crate::mm::arch::{FaultInfo, Mmu};
use crate::mm::filemap::{self, DirtyAops, RamFile};
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::mmu_gather::{self, PageFree, RmapOrder, TlbPolicy};
use crate::mm::page::{self, pfn_to_page};
use crate::mm::tlbflush::FlushStrategy;
use crate::mm::{pgtable, PAGE_SIZE};
use crate::percpu;
use alloc::{boxed::Box, format, string::String, sync::Arc, vec, vec::Vec};
use core::sync::atomic::Ordering;

const WRITER: usize = 0;
const ZAP: usize = 1;
const WRITEBACK: usize = 2;

/// `ctx.word` slots.
const WRITER_RUNS: usize = 0;
const ZAP_DONE: usize = 1;
const WB_DONE: usize = 2;
/// `nr_written` of the file when the iteration was set up.
const WB_BASE: usize = 3;
/// The last sequence number the writer stored without a page fault.
const LAST_NOFAULT: usize = 4;
/// The iteration's first sequence number.
const SEQ_BASE: usize = 5;

/// Safety net: a writer never stores more often than this in an iteration.
const MAX_STORES: u64 = 1 << 20;

static DELAY_POINTS: [&RacePoint; 1] = [&points::ZAP_BEFORE_PTL_FLUSH];
static TRACE_POINTS: [&RacePoint; 2] = [&points::ZAP_AFTER_PTE_CLEAR, &points::GATHER_AFTER_FLUSH];

/// mkclean's rmap walk spinning on the zap's PTL: the wait 5df397dec7c4
/// adds, and only for the writeback role (a fault spinning on that PTL is
/// not the fix's doing).
const FIX_WAITS: &[WaitClass] = &[WaitClass::PtlWaitedBy(WRITEBACK)];

/// The variants; [`CONFIG`] holds the knobs of each, in the same order.
/// Each runs under every flush strategy of the row ([`FLUSH`]).
static VARIANTS: [Variant; 2] = [
    Variant::new(
        "buggy",
        "rmap removed at the clear, before the flush (Linux 6.1)",
        "Linux 6.1 (1cf35d47712d's flush under the PTL), before 5df397dec7c4: the rmap removed at the PTE clear",
        &[],
    ),
    Variant::new(
        "fixed",
        "rmap removed after the flush, under the PTL (5df397dec7c4)",
        "5df397dec7c4 (6.2): the rmap removed after the flush, under the PTL",
        FIX_WAITS,
    ),
];

static CONFIG: [RmapOrder; 2] = [RmapOrder::BeforeFlush, RmapOrder::AfterFlush];

/// The flush strategies the variants run under: x86-64 IPI and NMI
/// shootdown, s390x IPTE (CSP behaves as IPTE here and is left out to keep
/// the boot short).
static FLUSH: [FlushStrategy; 3] = [FlushStrategy::Ipi, FlushStrategy::Nmi, FlushStrategy::Ipte];

fn config(v: &Variant) -> RmapOrder {
    variant_config(&VARIANTS, &CONFIG, v)
}

/// The run's mm ([`RunMm`]), with the
/// shared mapping of the file, its page cached and its page tables: built
/// by `set_variant`, lent to each iteration by `setup`, taken back by
/// `teardown`, torn down by `reset` (which drops the file with its VMA).
static RUN_MM: RunMm = RunMm::new();

const RW: VmFlags = VmFlags {
    read: true,
    write: true,
};

fn set_variant<A: Mmu>(v: &Variant) -> Result<(), &'static str> {
    let rmap = config(v);
    mmu_gather::set_tlb_policy(TlbPolicy {
        page_free: PageFree::Batched,
        rmap,
        ..TlbPolicy::DEFAULT
    });
    // The mapping, the cached page and the page tables, kept across
    // iterations so that every iteration starts from the same frames.
    // Without memory for them `setup` finds no mm and the run fails.
    if let Some(mm) = Mm::<A>::new().map(Box::new) {
        let file = Arc::new(RamFile::new::<A>(1, DirtyAops::Nobuffers));
        let addr = page_addr::<A>();
        let ok = memory::mmap_file(&mm, addr, PAGE_SIZE, RW, &file, 0, false, true)
            .and_then(|()| memory::madvise_dontneed(&mm, addr, PAGE_SIZE));
        if ok.is_ok() {
            RUN_MM.put(mm);
        } else {
            memory::exit_mmap(*mm);
        }
    }
    Ok(())
}

fn reset<A: Mmu>() {
    RUN_MM.destroy::<A>();
    mmu_gather::set_tlb_policy(TlbPolicy::DEFAULT);
}

/// The address of the shared file page (see [`user::stale_tlb_base`]).
fn page_addr<A: Mmu>() -> u64 {
    user::stale_tlb_base::<A>()
}

/// The Linux commits of the row.
static COMMITS: [Commit; 2] = [
    Commit {
        hash: "1cf35d47712d",
        subject: Some("mm: split 'tlb_flush_mmu()' into tlb flushing and memory freeing parts"),
        release: Some("3.15"),
        role: CommitRole::Context,
    },
    Commit {
        hash: "5df397dec7c4",
        subject: Some("mm: delay page_remove_rmap() until after the TLB has been flushed"),
        release: Some("6.2"),
        role: CommitRole::Fix,
    },
];

/// The row.
pub fn scenario<A: Mmu>() -> Scenario<A> {
    Scenario {
        name: "zap-rmap-vs-mkclean",
        about: "a zap removes a dirty file page's rmap before its flush; mkclean misses a stale writable TLB entry",
        catalogue: Some(3),
        seed: "seed 001: \"[PATCH 01/13] mm: Update ptep_get_lockless()s comment\" (Oct 2022)",
        commits: &COMMITS,
        roles: &["writer", "zap", "writeback"],
        variants: &VARIANTS,
        flush: &FLUSH,
        set_variant: set_variant::<A>,
        reset: reset::<A>,
        setup: setup::<A>,
        role: role::<A>,
        detect: detect::<A>,
        teardown: teardown::<A>,
        schedule: |_| {
            vec![
                Step::at(WRITER, &points::USER_BEFORE_STORE),
                Step::at(ZAP, &points::ZAP_BEFORE_PTL_FLUSH),
                Step::leave(WRITER, &points::USER_BEFORE_STORE),
                Step::at(WRITER, &points::USER_AFTER_STORE),
                Step::at(WRITEBACK, &points::WRITEBACK_BEFORE_MKCLEAN),
                Step::at(WRITEBACK, &points::WRITEBACK_AFTER_WRITE),
                Step::at(WRITER, &points::USER_BEFORE_STORE),
                Step::at(WRITER, &points::USER_AFTER_STORE),
                Step::leave(ZAP, &points::ZAP_BEFORE_PTL_FLUSH),
            ]
        },
        delay_points: &DELAY_POINTS,
        trace_points: &TRACE_POINTS,
        max_delay_ns: 200_000,
        budget: Budget::CATALOGUE,
    }
}

fn setup<A: Mmu>(ctx: &mut Ctx<A>) -> Result<(), String> {
    let mm = RUN_MM
        .take::<A>()
        .ok_or_else(|| String::from("no mm for the run"))?;
    let addr = page_addr::<A>();
    let r = dirty_mapped_page(&mm, addr);
    ctx.mm = Some(mm);
    ctx.addr = addr;
    let pfn = r?;
    ctx.pfns = Vec::from([pfn]);
    let mapping = filemap::page_mapping(pfn_to_page(pfn)).ok_or("the page left its file")?;
    ctx.word[WB_BASE].store(
        mapping.nr_written.load(Ordering::Acquire),
        Ordering::Relaxed,
    );
    ctx.word[SEQ_BASE].store((ctx.iteration + 1) << 32, Ordering::Relaxed);
    Ok(())
}

/// Write-faults the file page in at `addr` (on the controller, which runs
/// no mm: the fault is resolved in software): a writable, dirty PTE and a
/// dirty page. Returns the pfn.
fn dirty_mapped_page<A: Mmu>(mm: &Mm<A>, addr: u64) -> Result<u64, String> {
    let info = FaultInfo {
        addr,
        write: true,
        protection: false,
        code: 0,
    };
    memory::do_user_fault(mm, info).map_err(|e| format!("fault: {e}"))?;
    let ptep = pgtable::follow_pte(mm, addr).ok_or_else(|| String::from("no PTE table"))?;
    let pte = {
        let _ptl = memory::pte_lockptr(ptep).lock();
        // SAFETY: a live PTE of this mm (no CPU runs it yet); PTL held.
        unsafe { pgtable::read_entry(ptep) }
    };
    if !A::pte_present(pte) || !A::pte_write(pte) {
        return Err(format!("PTE {pte:#x} is not present and writable"));
    }
    let pfn = A::pte_pfn(pte);
    if !page::PageDirty(pfn_to_page(pfn)) {
        return Err(format!("page {pfn:#x} is not dirty after a write fault"));
    }
    Ok(pfn)
}

fn page_faults<A: Mmu>() -> u64 {
    percpu::this_cpu::<A>().page_faults.load(Ordering::Relaxed)
}

/// Whether the PTE at `addr` is empty, read without the PTL (a handshake
/// only: the zap has cleared it).
fn pte_cleared<A: Mmu>(mm: &Mm<A>, addr: u64) -> bool {
    pgtable::follow_pte(mm, addr).is_none_or(|ptep| {
        // SAFETY: MADV_DONTNEED keeps page tables; the table lives as long
        // as the run's mm. A racy read of one entry.
        A::pte_none(unsafe { pgtable::read_entry(ptep) })
    })
}

fn role<A: Mmu>(ctx: &Ctx<A>, role: usize) -> bool {
    let addr = ctx.addr;
    let mm = ctx.mm.as_deref().expect("the iteration's mm");
    let p = pfn_to_page(ctx.pfns[0]);
    let mapping = filemap::page_mapping(p).expect("a cached page");
    match role {
        WRITER => {
            let mut seq = ctx.word[SEQ_BASE].load(Ordering::Relaxed) + 1;
            // Fills this CPU's TLB with the writable translation (on s390x,
            // whose PTE is hardware-writable only when dirty, it may take
            // the write-notify fault first).
            if A::probe_store(addr, seq).is_err() {
                ctx.word[WRITER_RUNS].store(1, Ordering::Release);
                return false;
            }
            let faults = page_faults::<A>();
            let wb_base = ctx.word[WB_BASE].load(Ordering::Relaxed);
            ctx.word[LAST_NOFAULT].store(seq, Ordering::Relaxed);
            ctx.word[WRITER_RUNS].store(1, Ordering::Release);
            let written = || {
                mapping.nr_written.load(Ordering::Acquire) != wb_base
                    || ctx.word[WB_DONE].load(Ordering::Acquire) != 0
            };
            if ctx.mode == Mode::Natural {
                // Sleep until writeback has written the page (it wakes us),
                // then store once more: through the stale TLB entry if the
                // zap has not flushed yet.
                user::sleep_until::<A>(written);
                race_point::<A>(&points::USER_BEFORE_STORE, addr);
                seq += 1;
                let ok = A::probe_store(addr, seq).is_ok();
                race_point::<A>(&points::USER_AFTER_STORE, addr);
                if ok && page_faults::<A>() == faults {
                    ctx.word[LAST_NOFAULT].store(seq, Ordering::Relaxed);
                }
                return ok;
            }
            // Forced: store after store, each one where the schedule says.
            let mut stored = 0;
            loop {
                race_point::<A>(&points::USER_BEFORE_STORE, addr);
                let last = written();
                seq += 1;
                let ok = A::probe_store(addr, seq).is_ok();
                race_point::<A>(&points::USER_AFTER_STORE, addr);
                if !ok {
                    return false;
                }
                stored += 1;
                if page_faults::<A>() == faults {
                    ctx.word[LAST_NOFAULT].store(seq, Ordering::Relaxed);
                }
                if last || stored >= MAX_STORES {
                    return last;
                }
            }
        }
        ZAP => {
            while ctx.word[WRITER_RUNS].load(Ordering::Acquire) == 0 {
                A::cpu_relax();
            }
            // Completed: the zap cleared the PTE and dropped its reference.
            let r = memory::madvise_dontneed_counted(mm, addr, PAGE_SIZE);
            ctx.word[ZAP_DONE].store(1, Ordering::Release);
            r == Ok(1)
        }
        _ => {
            while ctx.word[WRITER_RUNS].load(Ordering::Acquire) == 0 {
                A::cpu_relax();
            }
            while !pte_cleared(mm, addr)
                && page::page_mapped(p)
                && ctx.word[ZAP_DONE].load(Ordering::Acquire) == 0
            {
                A::cpu_relax();
            }
            // Completed: the page was dirty (the zap or the setup's fault
            // dirtied it) and was written to the backing store.
            let wrote = filemap::writeback::<A>(p);
            ctx.word[WB_DONE].store(1, Ordering::Release);
            user::wake::<A>(WRITER);
            wrote
        }
    }
}

fn detect<A: Mmu>(ctx: &Ctx<A>) -> Option<Finding> {
    let pfn = ctx.pfns[0];
    let p = pfn_to_page(pfn);
    let mapping = filemap::page_mapping(p)?;
    // SAFETY: a cached page (the cache's reference keeps it); RAM is mapped
    // 1:1; no role runs any more.
    let held = unsafe { core::ptr::read_volatile(page::page_address(p) as *const u64) };
    let written = mapping.read_backing(0);
    let base = ctx.word[SEQ_BASE].load(Ordering::Relaxed);
    let last_nofault = ctx.word[LAST_NOFAULT].load(Ordering::Relaxed);
    if page::PageDirty(p) || held <= written || held <= base || held > last_nofault {
        return None;
    }
    let mut f = Finding::frame(
        format!(
            "lost write: the page is clean after writeback but holds store #{} (seq {held:#x}), newer than the backing store's #{} (seq {written:#x}); the writer stored it without a page fault, through the writable TLB entry it had before the zap, after folio_mkclean let writeback clean the page",
            held - base,
            written.saturating_sub(base),
        ),
        pfn,
    )
    .at(ctx.addr);
    f.cpu = point::cpu_of(WRITER);
    Some(f)
}

fn teardown<A: Mmu>(ctx: &mut Ctx<A>) {
    // The mapping, its page tables and the cached page stay for the next
    // iteration, and so does a PTE that a store which faulted after the zap
    // mapped (writable and dirty, its page dirty: what `setup` makes
    // anyway). Zapping it here would flush every role CPU, halted by now:
    // waking them costs more than the iteration itself under TCG.
    if let Some(mm) = ctx.mm.take() {
        RUN_MM.put(mm);
    }
}
