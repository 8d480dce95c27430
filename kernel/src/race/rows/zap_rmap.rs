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
//! removes the rmap of a file page whose PTE was dirty after the flush,
//! still under the PTL (`tlb_delay_rmap`; a clean PTE's rmap still goes at
//! the clear): mkclean either sees the page mapped and waits for the PTL
//! (the flush is done when it gets it) or sees it unmapped after the flush.
//! s390 never delays (`MMU_GATHER_NO_GATHER` defines `tlb_delay_rmap`
//! false): its PTE clear is an IPTE, which has purged every TLB before the
//! rmap goes, and 6.2 forces no flush under the PTL there.
//!
//! - Roles: `writer` (CPU 1) stores tagged sequence numbers to the shared
//!   file page through its user mapping, one plain store at a time; `zap`
//!   (CPU 2) MADV_DONTNEEDs the page; `writeback` (CPU 3) writes the page
//!   back (`write_one_page`: lock, `clear_page_dirty_for_io` — mkclean,
//!   clear `PG_dirty` — copy to the backing store, unlock).
//! - Setup: one shared mapping of a one-page RAM file (SoftDirty tracking,
//!   `__set_page_dirty_nobuffers`), built once per run by `prepare` with
//!   its page cached and its page tables, kept as the row's `Run` (a
//!   [`RunMm`]; the VMA holds the file) and lent to every iteration; each
//!   iteration write-faults the page in on the controller: the PTE is
//!   writable and dirty, the page dirty. The handshakes and what the
//!   writer stored are the iteration's [`State`].
//! - Handshakes: the writer stores once (its TLB now holds the writable
//!   translation; on s390x this store may take the write-notify fault),
//!   then publishes that it runs; the zap starts then; writeback starts
//!   once the zap has cleared the PTE (read locklessly), or unmapped the
//!   page, or returned. In natural mode the writer then sleeps (halted, so
//!   that its vCPU leaves the host cores to the zap and writeback) until
//!   writeback has written the page and woken it, and stores once more; in
//!   forced mode it stores where the schedule says (a replayed explore
//!   schedule takes the natural path, the one explore ran). Either way it stops
//!   after the first store it began once writeback had written the page:
//!   a store after that which faulted would dirty the page again and hide
//!   a lost write.
//! - Variants: `buggy` (`RmapOrder::BeforeFlush`, Linux 6.1) and `fixed`
//!   (`RmapOrder::AfterFlush`, 5df397dec7c4), the knob `prepare` sets in
//!   the gather's policy, each run under every flush strategy of the arch
//!   (the flush axis: x86-64 `ipi`, `nmi`; s390x `ipte`). Pages are freed
//!   as Linux frees them under that strategy ([`PageFree::native`]): batched
//!   until after the flush under IPI and NMI flushes, at the PTE clear under
//!   IPTE (s390; the page is the page cache's, the zap only drops the PTE's
//!   reference). So `fixed` is what each arch shipped in 6.2: under IPI and
//!   NMI flushes the dirty PTE's rmap is delayed until after the flush under
//!   the PTL; under IPTE nothing is delayed and no flush is forced under the
//!   PTL (`tlb_delay_rmap` is false with immediate freeing), the rmap goes
//!   at the clear, after IPTE has purged every TLB.
//! - Forced schedule: the writer holds before a store; the zap clears the
//!   PTE and holds at the end of its PTE loop under the PTL
//!   (`zap:before_ptl_flush`: just before its flush under the PTL, or,
//!   s390x `fixed`, where none is forced, before the unlock); the writer
//!   stores once (x86-64: through its stale TLB entry; s390x: IPTE purged
//!   it, the store faults and the fault spins on the zap's PTL — a wait-for
//!   cycle through the fault, not through the fix: `impossible` for both
//!   variants); writeback then runs
//!   from `writeback:before_mkclean` to `writeback:after_write` (buggy: the
//!   page is unmapped, mkclean returns at once, the page is cleaned and
//!   written; fixed: mkclean's rmap walk spins on the zap's PTL, the fix's
//!   own wait — `fix_waits: [PtlWaitedBy(writeback)]` — so the runner
//!   releases the schedule and the iteration completes clean); the writer
//!   stores once more (buggy x86-64: through the stale entry, after the
//!   copy: lost); only then the zap flushes.
//! - Natural: random delays at `zap:before_ptl_flush` widen the window
//!   between the rmap removal and the flush.
//! - Overlap (the roles met inside the window): writeback reached
//!   `folio_mkclean` (`writeback:before_mkclean`) after the zap cleared the
//!   PTE — it starts only then, the handshake — and before the zap left
//!   `zap:before_ptl_flush` for its flush (s390x `fixed`: its unlock).
//!   Buggy: mkclean finds the page unmapped; fixed (IPI, NMI): it finds
//!   the delayed rmap and waits for the zap's PTL; IPTE: every TLB was
//!   purged at the clear.
//! - Detector: a lost write. After the run the page is clean (`PG_dirty`
//!   clear) but its frame holds a sequence number newer than the backing
//!   store's, and the writer stored that number without taking a page
//!   fault since its first store (so through the translation it had before
//!   the zap, not through a PTE a fault installed).
//! - Teardown: nothing to undo. The page stays cached; a PTE a store that
//!   faulted after the zap mapped stays too (writable, dirty, its page
//!   dirty: what `setup` makes anyway), since zapping it would flush every
//!   role CPU, halted by then, whose wake-ups cost more than the iteration.

use crate::{roles, schedule};
use crate::cmdline::Mode;
use crate::mm::arch::Mmu;
use crate::mm::filemap::{self, DirtyAops, RamFile};
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::mmu_gather::{self, PageFree, RmapOrder, TlbPolicy};
use crate::mm::page::{self, pfn_to_page};
use crate::mm::tlbflush::FlushStrategy;
use crate::mm::{pgtable, PAGE_SIZE};
use crate::percpu;
use crate::race::detect::Finding;
use crate::race::point::{self, points, race_point};
use crate::race::scenario::{Commit, CommitRole, Ctx, Row, RowInfo, RunMm, Variant};
use crate::race::user;
use crate::race::waitfor::WaitClass;
use alloc::{format, string::String, sync::Arc, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

roles!(WRITER = "writer", ZAP = "zap", WRITEBACK = "writeback");

/// Safety net: a writer never stores more often than this in an iteration.
const MAX_STORES: u64 = 1 << 20;

/// The row.
pub struct ZapRmapVsMkclean;

/// What the roles and the detector share in an iteration.
#[derive(Default)]
pub struct State {
    /// The writer has stored once (or failed to) and runs.
    writer_runs: AtomicBool,
    /// The zap returned.
    zap_done: AtomicBool,
    /// Writeback returned.
    wb_done: AtomicBool,
    /// `nr_written` of the file when the iteration was set up.
    wb_base: u64,
    /// The iteration's first sequence number.
    seq_base: u64,
    /// The last sequence number the writer stored without a page fault.
    last_nofault: AtomicU64,
}

impl<A: Mmu> Row<A> for ZapRmapVsMkclean {
    const INFO: RowInfo = RowInfo {
        catalogue: Some(3),
        seed: "seed 001: \"[PATCH 01/13] mm: Update ptep_get_lockless()s comment\" (Oct 2022)",
        commits: &[
            Commit::new(
                "1cf35d47712d",
                Some("mm: split 'tlb_flush_mmu()' into tlb flushing and memory freeing parts"),
                Some("3.15"),
                CommitRole::Context,
            ),
            Commit::new(
                "5df397dec7c4",
                Some("mm: delay page_remove_rmap() until after the TLB has been flushed"),
                Some("6.2"),
                CommitRole::Fix,
            ),
        ],
        // x86-64 IPI and NMI shootdown, s390x IPTE (CSP behaves as IPTE
        // here and is left out to keep the boot short).
        flush: &[FlushStrategy::Ipi, FlushStrategy::Nmi, FlushStrategy::Ipte],
        delay_points: &[&points::ZAP_BEFORE_PTL_FLUSH],
        trace_points: &[&points::ZAP_AFTER_PTE_CLEAR, &points::GATHER_AFTER_FLUSH],
        max_delay_ns: 200_000,
        schedule: schedule![
            WRITER at points::USER_BEFORE_STORE;
            ZAP at points::ZAP_BEFORE_PTL_FLUSH;
            WRITER leave points::USER_BEFORE_STORE;
            WRITER at points::USER_AFTER_STORE;
            WRITEBACK at points::WRITEBACK_BEFORE_MKCLEAN, points::WRITEBACK_AFTER_WRITE;
            WRITER at points::USER_BEFORE_STORE, points::USER_AFTER_STORE;
            ZAP leave points::ZAP_BEFORE_PTL_FLUSH;
        ],
        ..RowInfo::new(
            "zap-rmap-vs-mkclean",
            "a zap removes a dirty file page's rmap before its flush; mkclean misses a stale writable TLB entry",
            ROLES,
        )
    };
    /// When the zap removes the page's rmap.
    type Config = RmapOrder;
    const VARIANTS: &'static [Variant<RmapOrder>] = &[
        Variant::new(
            "buggy",
            "rmap removed at the clear, before the flush (Linux 6.1)",
            "Linux 6.1 (1cf35d47712d's flush under the PTL for a dirty shared PTE), before 5df397dec7c4: the rmap removed at the PTE clear; pages freed as each arch shipped it",
            &[],
            RmapOrder::BeforeFlush,
        ),
        Variant::new(
            "fixed",
            "a dirty PTE's rmap removed after the flush, under the PTL, where pages are batched (5df397dec7c4)",
            "5df397dec7c4 (6.2) as each arch shipped it: x86 delays a dirty PTE's rmap until after the flush under the PTL; s390 (immediate freeing) never delays, IPTE flushed at the clear",
            // mkclean's rmap walk spinning on the zap's PTL: the wait
            // 5df397dec7c4 adds where it delays the rmap, and only for the
            // writeback role (a fault spinning on that PTL is not the fix's
            // doing).
            &[WaitClass::PtlWaitedBy(WRITEBACK)],
            RmapOrder::AfterFlush,
        ),
    ];
    type State = State;
    /// The run's mm, with the shared mapping of the file (the VMA holds
    /// the file), its page cached and its page tables.
    type Run = RunMm<A>;

    fn prepare(v: &Variant<RmapOrder>) -> Result<RunMm<A>, &'static str> {
        mmu_gather::set_tlb_policy(TlbPolicy {
            page_free: PageFree::native::<A>(),
            rmap: v.config,
            ..TlbPolicy::DEFAULT
        });
        // The mapping, the cached page and the page tables, kept across
        // iterations so that every iteration starts from the same frames.
        let file = Arc::new(RamFile::new::<A>(1, DirtyAops::Nobuffers));
        let addr = page_addr::<A>();
        Ok(RunMm::build(|mm| {
            memory::mmap_file(mm, addr, PAGE_SIZE, VmFlags::RW, &file, 0, false, true)
                .and_then(|()| memory::madvise_dontneed(mm, addr, PAGE_SIZE))
        }))
    }

    fn run_mm(run: &mut RunMm<A>) -> Option<&mut RunMm<A>> {
        Some(run)
    }

    fn setup(_: &mut RunMm<A>, ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        let addr = page_addr::<A>();
        ctx.addr = addr;
        let pfn = dirty_mapped_page(ctx.mm(), addr)?;
        ctx.pfns = Vec::from([pfn]);
        let mapping = filemap::page_mapping(pfn_to_page(pfn)).ok_or("the page left its file")?;
        ctx.state.wb_base = mapping.nr_written.load(Ordering::Acquire);
        ctx.state.seq_base = (ctx.iteration + 1) << 32;
        Ok(())
    }

    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool {
        let st = &ctx.state;
        let addr = ctx.addr;
        let mm = ctx.mm();
        let p = pfn_to_page(ctx.pfns[0]);
        let mapping = filemap::page_mapping(p).expect("a cached page");
        match role {
            WRITER => {
                let mut seq = st.seq_base + 1;
                // Fills this CPU's TLB with the writable translation (on s390x,
                // whose PTE is hardware-writable only when dirty, it may take
                // the write-notify fault first).
                if A::probe_store(addr, seq).is_err() {
                    st.writer_runs.store(true, Ordering::Release);
                    return false;
                }
                let faults = page_faults::<A>();
                let wb_base = st.wb_base;
                st.last_nofault.store(seq, Ordering::Relaxed);
                st.writer_runs.store(true, Ordering::Release);
                let written = || {
                    mapping.nr_written.load(Ordering::Acquire) != wb_base
                        || st.wb_done.load(Ordering::Acquire)
                };
                if ctx.mode != Mode::Forced || ctx.replay {
                    // Sleep until writeback has written the page (it wakes us),
                    // then store once more: through the stale TLB entry if the
                    // zap has not flushed yet.
                    user::sleep_until::<A>(written);
                    race_point::<A>(&points::USER_BEFORE_STORE, addr);
                    seq += 1;
                    let ok = A::probe_store(addr, seq).is_ok();
                    race_point::<A>(&points::USER_AFTER_STORE, addr);
                    if ok && page_faults::<A>() == faults {
                        st.last_nofault.store(seq, Ordering::Relaxed);
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
                        st.last_nofault.store(seq, Ordering::Relaxed);
                    }
                    if last || stored >= MAX_STORES {
                        return last;
                    }
                }
            }
            ZAP => {
                point::wait_until::<A>(|| st.writer_runs.load(Ordering::Acquire));
                // Completed: the zap cleared the PTE and dropped its reference.
                let r = memory::madvise_dontneed_counted(mm, addr, PAGE_SIZE);
                st.zap_done.store(true, Ordering::Release);
                r == Ok(1)
            }
            _ => {
                point::wait_until::<A>(|| st.writer_runs.load(Ordering::Acquire));
                point::wait_until::<A>(|| {
                    pte_cleared(mm, addr)
                        || !page::page_mapped(p)
                        || st.zap_done.load(Ordering::Acquire)
                });
                // Completed: the page was dirty (the zap or the setup's fault
                // dirtied it) and was written to the backing store.
                let wrote = filemap::writeback::<A>(p);
                st.wb_done.store(true, Ordering::Release);
                user::wake::<A>(WRITER);
                wrote
            }
        }
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        let pfn = ctx.pfns[0];
        let p = pfn_to_page(pfn);
        let mapping = filemap::page_mapping(p)?;
        // SAFETY: a cached page (the cache's reference keeps it); RAM is mapped
        // 1:1; no role runs any more.
        let held = unsafe { core::ptr::read_volatile(page::page_address(p) as *const u64) };
        let written = mapping.read_backing(0);
        let base = ctx.state.seq_base;
        let last_nofault = ctx.state.last_nofault.load(Ordering::Relaxed);
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

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        let mkclean = ctx.first_pass(WRITEBACK, &points::WRITEBACK_BEFORE_MKCLEAN);
        let flush = ctx.first_pass(ZAP, &points::ZAP_BEFORE_PTL_FLUSH);
        matches!((mkclean, flush), (Some(m), Some(f)) if m.before(&f))
    }

    // No teardown: nothing to undo (see the module docs).

}

/// The address of the shared file page (see [`user::stale_tlb_base`]).
fn page_addr<A: Mmu>() -> u64 {
    user::stale_tlb_base::<A>()
}

/// Write-faults the file page in at `addr` (on the controller, which runs
/// no mm: the fault is resolved in software): a writable, dirty PTE and a
/// dirty page. Returns the pfn.
fn dirty_mapped_page<A: Mmu>(mm: &Mm<A>, addr: u64) -> Result<u64, String> {
    let pfn = user::fault_in(mm, addr, true)?;
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
