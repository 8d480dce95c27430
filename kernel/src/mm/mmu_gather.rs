//! mmu_gather: the batch that collects the pages and page tables a zap
//! removes and frees them only when its policy says it is safe
//! (`mm/mmu_gather.c`, `include/asm-generic/tlb.h`).
//!
//! A gather lives from [`tlb_gather_mmu`] to [`tlb_finish_mmu`]. The zap
//! clears PTEs and hands the gather
//! - the address of every cleared entry ([`tlb_remove_tlb_entry`]), which
//!   grows the range the next flush covers;
//! - every page it unmapped ([`tlb_remove_page`]), with the PTE's reference;
//! - every page table it unhooked ([`tlb_remove_table`]).
//!
//! The runtime [`TlbPolicy`] decides what "safe" means:
//! - [`PageFree::Batched`] (generic, x86): pages wait in a vector of
//!   [`GATHER_BATCH`] entries and are freed after the flush; a full vector
//!   forces one flush for the whole batch. [`PageFree::Immediate`] (s390): the
//!   page is freed at the PTE clear, relying on IPTE having purged every TLB.
//! - [`TableFree::Immediate`]: tables are freed right after the flush;
//!   [`TableFree::IpiSync`]: after the flush, an IPI to every other CPU with
//!   wait ([`tlb_remove_table_sync_one`]), which a CPU with interrupts off
//!   (GUP-fast) holds back; [`TableFree::Rcu`] (MMU_GATHER_RCU_TABLE_FREE):
//!   after an RCU-sched grace period ([`crate::rcu::call_rcu`]).
//! - [`RmapOrder::AfterFlush`] (Linux 6.2, 5df397dec7c4): the rmap of a
//!   file page whose PTE was dirty is removed after the flush, still under
//!   the PTL ([`tlb_flush_rmaps`]), where pages are batched; with immediate
//!   freeing (s390, `MMU_GATHER_NO_GATHER`) nothing is delayed
//!   ([`tlb_delay_rmap`]) and no flush is forced under the PTL;
//!   [`RmapOrder::BeforeFlush`] (Linux 6.1): at the clear, with a flush under
//!   the PTL after it for a dirty shared PTE.
//! - [`NestedFlush::ForceFull`]: when another gather on the same mm was in
//!   flight (`mm_tlb_flush_nested`), the finish flushes the whole mm, since the
//!   other gather may have cleared PTEs this one found empty and not flushed
//!   yet (Linux 99baac21e458); [`NestedFlush::Ignore`]: the bug.
//!
//! Invariants:
//! - a page in the batch holds the reference of the PTE it came from and is
//!   freed only by [`tlb_flush_mmu_free`], after a flush covering its address
//!   ([`PageFree::Batched`]);
//! - a table handed over is unhooked from its parent entry and freed only
//!   after a flush covering its span, plus the IPI sync or grace period;
//! - `mm.tlb_flush_pending` counts the gathers of the mm in flight.
//! - every gather ends in [`tlb_finish_mmu`] (or its counting variants): the
//!   type is `#[must_use]`, and dropping a gather that was not finished
//!   panics (its batched pages would never be freed and the mm's
//!   `tlb_flush_pending` would stay raised, so every later gather on the mm
//!   would take itself for nested).

use super::arch::{Level, Mmu};
use super::memory::page_remove_rmap;
use super::mm::Mm;
use super::page::{self, Page};
use super::{frag, page_alloc, tlbflush, PAGE_SIZE};
use crate::{rcu, smp};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, Ordering};

/// Pages per batch: Linux's `MAX_GATHER_BATCH` on 4 KiB pages, one page of
/// pointers less the batch header.
pub const GATHER_BATCH: usize = (PAGE_SIZE as usize - 16) / 8;

/// When unmapped pages are freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageFree {
    /// After the flush (generic `tlb_batch_pages`).
    Batched,
    /// At the PTE clear (s390: IPTE flushed already).
    Immediate,
}

impl PageFree {
    /// How Linux frees pages under the TLB flush strategy in use on `A`:
    /// at the PTE clear after a broadcast invalidation, which has flushed
    /// every CPU already (s390), after the flush otherwise.
    pub fn native<A: Mmu>() -> Self {
        if super::tlbflush::flush_strategy::<A>().is_broadcast() {
            PageFree::Immediate
        } else {
            PageFree::Batched
        }
    }
}

/// When unhooked page tables are freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFree {
    /// Right after the flush.
    Immediate,
    /// After the flush and an IPI round to every other CPU.
    IpiSync,
    /// After the flush and an RCU-sched grace period.
    Rcu,
}

/// When a file page's rmap is removed relative to the flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmapOrder {
    /// At the PTE clear; a dirty shared PTE forces a flush under the PTL
    /// afterwards (Linux 6.1).
    BeforeFlush,
    /// A dirty PTE's rmap after the flush, under the PTL, where the gather
    /// batches pages; every other at the clear (Linux 6.2, 5df397dec7c4).
    AfterFlush,
}

/// What a gather does when another gather of the same mm is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedFlush {
    /// Nothing: flushes only what it cleared itself.
    Ignore,
    /// Flushes the whole mm at the finish.
    ForceFull,
}

/// The gather's runtime policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbPolicy {
    /// Page freeing.
    pub page_free: PageFree,
    /// Table freeing.
    pub table_free: TableFree,
    /// rmap removal order.
    pub rmap: RmapOrder,
    /// Nested gathers.
    pub nested: NestedFlush,
}

impl TlbPolicy {
    /// Today's behaviour: batched pages, tables freed right after the flush,
    /// rmap after the flush, full flush for nested gathers.
    pub const DEFAULT: Self = Self {
        page_free: PageFree::Batched,
        table_free: TableFree::Immediate,
        rmap: RmapOrder::AfterFlush,
        nested: NestedFlush::ForceFull,
    };

    /// Printable names, as `page=batched table=rcu rmap=after nested=full`.
    pub fn names(&self) -> [&'static str; 4] {
        [
            match self.page_free {
                PageFree::Batched => "batched",
                PageFree::Immediate => "immediate",
            },
            match self.table_free {
                TableFree::Immediate => "immediate",
                TableFree::IpiSync => "ipi-sync",
                TableFree::Rcu => "rcu",
            },
            match self.rmap {
                RmapOrder::BeforeFlush => "before-flush",
                RmapOrder::AfterFlush => "after-flush",
            },
            match self.nested {
                NestedFlush::Ignore => "ignore",
                NestedFlush::ForceFull => "full",
            },
        ]
    }

    fn encode(self) -> u8 {
        (self.page_free as u8)
            | (self.table_free as u8) << 1
            | (self.rmap as u8) << 3
            | (self.nested as u8) << 4
    }

    fn decode(v: u8) -> Self {
        Self {
            page_free: [PageFree::Batched, PageFree::Immediate][usize::from(v & 1)],
            table_free: [TableFree::Immediate, TableFree::IpiSync, TableFree::Rcu]
                [usize::from((v >> 1) & 3).min(2)],
            rmap: [RmapOrder::BeforeFlush, RmapOrder::AfterFlush][usize::from((v >> 3) & 1)],
            nested: [NestedFlush::Ignore, NestedFlush::ForceFull][usize::from((v >> 4) & 1)],
        }
    }
}

impl core::fmt::Display for TlbPolicy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [p, t, r, n] = self.names();
        write!(f, "page={p} table={t} rmap={r} nested={n}")
    }
}

/// The policy new gathers take (a knob for tests and scenarios).
static POLICY: AtomicU8 = AtomicU8::new(0xff);

/// The policy new gathers take.
pub fn tlb_policy() -> TlbPolicy {
    match POLICY.load(Ordering::Acquire) {
        0xff => TlbPolicy::DEFAULT,
        v => TlbPolicy::decode(v),
    }
}

/// Sets the policy new gathers take; returns the previous one.
pub fn set_tlb_policy(p: TlbPolicy) -> TlbPolicy {
    let old = tlb_policy();
    POLICY.store(p.encode(), Ordering::Release);
    old
}

/// A gather in flight (`struct mmu_gather`).
///
/// It must be ended with [`tlb_finish_mmu`] (or [`tlb_finish_mmu_counted`],
/// [`tlb_finish_mmu_freed`]); dropping it unfinished panics.
#[must_use = "a gather must be ended with tlb_finish_mmu, which flushes and frees what it holds"]
pub struct MmuGather<'a, A: Mmu> {
    /// The mm being unmapped.
    pub mm: &'a Mm<A>,
    /// The policy, fixed at [`tlb_gather_mmu`].
    pub policy: TlbPolicy,
    /// Tearing down the whole mm (`exit_mmap`).
    pub fullmm: bool,
    start: u64,
    end: u64,
    /// The next flush covers the whole mm (a nested gather's finish).
    need_flush_all: bool,
    freed_tables: bool,
    pages: Vec<&'static Page>,
    delayed_rmap: Vec<&'static Page>,
    tables: Vec<(Level, u64)>,
    /// TLB flushes this gather issued.
    pub flushes: u64,
    /// Pages this gather freed (or dropped its reference to).
    pub pages_freed: u64,
    /// Set by the finish: the drop check passes.
    finished: bool,
}

impl<A: Mmu> Drop for MmuGather<'_, A> {
    /// Catches a gather dropped without [`tlb_finish_mmu`]: its batched
    /// pages and tables would never be freed and `tlb_flush_pending` would
    /// stay raised. A kernel panic fails the run.
    fn drop(&mut self) {
        // A host test that fails while holding a gather unwinds through
        // here: report that failure, not a second panic (which aborts).
        #[cfg(test)]
        if std::thread::panicking() {
            return;
        }
        assert!(
            self.finished,
            "MmuGather dropped unfinished (tlb_finish_mmu never called): {} pages and {} \
             tables not freed, {} rmap removals delayed, tlb_flush_pending left raised",
            self.pages.len(),
            self.tables.len(),
            self.delayed_rmap.len()
        );
    }
}

/// Starts a gather on `mm` with the current policy (`tlb_gather_mmu`).
#[must_use = "a gather must be ended with tlb_finish_mmu"]
pub fn tlb_gather_mmu<A: Mmu>(mm: &Mm<A>) -> MmuGather<'_, A> {
    tlb_gather_mmu_policy(mm, tlb_policy(), false)
}

/// Starts a gather for tearing down all of `mm` (`tlb_gather_mmu_fullmm`).
#[must_use = "a gather must be ended with tlb_finish_mmu"]
pub fn tlb_gather_mmu_fullmm<A: Mmu>(mm: &Mm<A>) -> MmuGather<'_, A> {
    tlb_gather_mmu_policy(mm, tlb_policy(), true)
}

/// Starts a gather with an explicit policy.
#[must_use = "a gather must be ended with tlb_finish_mmu"]
pub fn tlb_gather_mmu_policy<A: Mmu>(
    mm: &Mm<A>,
    policy: TlbPolicy,
    fullmm: bool,
) -> MmuGather<'_, A> {
    // inc_tlb_flush_pending: before any PTE is cleared.
    mm.tlb_flush_pending.fetch_add(1, Ordering::AcqRel);
    MmuGather {
        mm,
        policy,
        fullmm,
        start: u64::MAX,
        end: 0,
        need_flush_all: false,
        freed_tables: false,
        pages: Vec::with_capacity(GATHER_BATCH),
        delayed_rmap: Vec::new(),
        tables: Vec::new(),
        flushes: 0,
        pages_freed: 0,
        finished: false,
    }
}

/// Whether another gather of `mm` is in flight (`mm_tlb_flush_nested`).
pub fn mm_tlb_flush_nested<A: Mmu>(mm: &Mm<A>) -> bool {
    mm.tlb_flush_pending.load(Ordering::Acquire) > 1
}

/// Records that the entry for `addr` was cleared (`tlb_remove_tlb_entry`).
pub fn tlb_remove_tlb_entry<A: Mmu>(tlb: &mut MmuGather<'_, A>, addr: u64) {
    tlb.start = tlb.start.min(addr);
    tlb.end = tlb.end.max(addr + PAGE_SIZE);
}

/// Hands over `page`, unmapped, with its PTE's reference
/// (`__tlb_remove_page`). Immediate freeing drops the reference now;
/// batched freeing keeps it until after the flush. Returns `true` when the
/// batch is full: the caller must flush ([`tlb_flush_mmu`]) before handing
/// over more.
pub fn tlb_remove_page<A: Mmu>(tlb: &mut MmuGather<'_, A>, page: &'static Page) -> bool {
    match tlb.policy.page_free {
        PageFree::Immediate => {
            page::put_page(page);
            tlb.pages_freed += 1;
            false
        }
        PageFree::Batched => {
            tlb.pages.push(page);
            tlb.pages.len() >= GATHER_BATCH
        }
    }
}

/// Whether the policy delays the rmap removal of a file page whose PTE was
/// dirty until after the flush (`tlb_delay_rmap`, asked by the zap for such
/// PTEs only, as 5df397dec7c4); never with immediate page freeing, which
/// frees the page at the clear (s390's `MMU_GATHER_NO_GATHER` defines it
/// false: IPTE flushed every TLB at the clear).
pub fn tlb_delay_rmap<A: Mmu>(tlb: &MmuGather<'_, A>) -> bool {
    tlb.policy.rmap == RmapOrder::AfterFlush && tlb.policy.page_free == PageFree::Batched
}

/// Queues `page`'s rmap removal for [`tlb_flush_rmaps`], which the caller
/// must call under the same PTL after the flush.
pub fn tlb_delay_page_rmap<A: Mmu>(tlb: &mut MmuGather<'_, A>, page: &'static Page) {
    tlb.delayed_rmap.push(page);
}

/// Whether rmap removals wait for [`tlb_flush_rmaps`].
pub fn tlb_rmaps_pending<A: Mmu>(tlb: &MmuGather<'_, A>) -> bool {
    !tlb.delayed_rmap.is_empty()
}

/// Removes the delayed rmaps (`tlb_flush_rmaps`): after the flush, under the
/// PTL the pages were unmapped under.
pub fn tlb_flush_rmaps<A: Mmu>(tlb: &mut MmuGather<'_, A>) {
    for p in tlb.delayed_rmap.drain(..) {
        page_remove_rmap(p);
    }
}

/// Hands over a page table unhooked from its parent entry at `addr`
/// (`tlb_remove_table`). Its span joins the flush range.
pub fn tlb_remove_table<A: Mmu>(tlb: &mut MmuGather<'_, A>, level: Level, table: u64, addr: u64) {
    let span = match level {
        Level::Pte => A::PMD_SIZE,
        Level::Pmd => A::PUD_SIZE,
        Level::Pud => A::P4D_SIZE,
        Level::P4d | Level::Pgd => A::PGDIR_SIZE,
    };
    let base = addr & !(span - 1);
    tlb.start = tlb.start.min(base);
    tlb.end = tlb.end.max(base.saturating_add(span));
    tlb.freed_tables = true;
    let bytes = if level == Level::Pte {
        A::PTE_TABLE_SIZE
    } else {
        (PAGE_SIZE as usize) << A::CRST_ORDER
    };
    tlb.mm.pgtables_bytes.fetch_sub(bytes, Ordering::Relaxed);
    tlb.tables.push((level, table));
}

/// Flushes the gathered range, if any, or the whole mm when a nested
/// gather asked for it (`tlb_flush_mmu_tlbonly`).
pub fn tlb_flush_mmu_tlbonly<A: Mmu>(tlb: &mut MmuGather<'_, A>) {
    if tlb.need_flush_all {
        tlbflush::flush_tlb_mm(tlb.mm);
    } else if tlb.end != 0 {
        tlbflush::flush_tlb_range(tlb.mm, tlb.start, tlb.end);
    } else {
        return;
    }
    tlb.flushes += 1;
    tlb.start = u64::MAX;
    tlb.end = 0;
    tlb.need_flush_all = false;
    tlb.freed_tables = false;
}

/// Frees what the last flush made safe (`tlb_flush_mmu_free`): the batched
/// pages, and the tables as the table policy says.
pub fn tlb_flush_mmu_free<A: Mmu>(tlb: &mut MmuGather<'_, A>) {
    for p in tlb.pages.drain(..) {
        page::put_page(p);
        tlb.pages_freed += 1;
    }
    if tlb.tables.is_empty() {
        return;
    }
    let tables = core::mem::take(&mut tlb.tables);
    free_tables_as::<A>(tlb.policy.table_free, tables);
}

/// Frees page tables that are unhooked from their parents and flushed from
/// every TLB, as `policy` says: now, after an IPI sync, or after an RCU-sched
/// grace period (the gather's table freeing, also used by collapse). The
/// mm's `pgtables_bytes` must already have been lowered.
pub fn free_tables_as<A: Mmu>(policy: TableFree, tables: Vec<(Level, u64)>) {
    match policy {
        TableFree::Immediate => free_tables::<A>(&tables),
        TableFree::IpiSync => {
            tlb_remove_table_sync_one::<A>();
            free_tables::<A>(&tables);
        }
        TableFree::Rcu => {
            let arg = Box::into_raw(Box::new(tables)) as usize;
            rcu::call_rcu::<A>(tlb_remove_table_rcu::<A>, arg);
        }
    }
}

/// Flushes, then frees what the flush made safe (`tlb_flush_mmu`).
pub fn tlb_flush_mmu<A: Mmu>(tlb: &mut MmuGather<'_, A>) {
    tlb_flush_mmu_tlbonly(tlb);
    crate::race::race_point::<A>(&crate::race::point::points::GATHER_AFTER_FLUSH, 0);
    tlb_flush_mmu_free(tlb);
}

/// Ends the gather (`tlb_finish_mmu`): with [`NestedFlush::ForceFull`] and
/// another gather of the mm in flight, flushes the whole task range; then
/// flushes and frees what is left.
pub fn tlb_finish_mmu<A: Mmu>(tlb: MmuGather<'_, A>) {
    tlb_finish_mmu_counted(tlb);
}

/// [`tlb_finish_mmu`], returning the flushes the gather issued in all.
pub fn tlb_finish_mmu_counted<A: Mmu>(tlb: MmuGather<'_, A>) -> u64 {
    finish(tlb).0
}

/// Ends the gather; returns (flushes issued, page references dropped).
fn finish<A: Mmu>(mut tlb: MmuGather<'_, A>) -> (u64, u64) {
    crate::race::race_point::<A>(&crate::race::point::points::GATHER_BEFORE_FINISH, 0);
    assert!(
        tlb.delayed_rmap.is_empty(),
        "tlb_finish_mmu with rmap removals still delayed"
    );
    if tlb.policy.nested == NestedFlush::ForceFull && mm_tlb_flush_nested(tlb.mm) {
        tlb.need_flush_all = true;
    }
    tlb_flush_mmu(&mut tlb);
    // dec_tlb_flush_pending: after the last flush.
    tlb.mm.tlb_flush_pending.fetch_sub(1, Ordering::AcqRel);
    tlb.finished = true;
    (tlb.flushes, tlb.pages_freed)
}

/// [`tlb_finish_mmu`], returning the page references the gather dropped in
/// all (at the clear or after a flush, as its policy says).
pub fn tlb_finish_mmu_freed<A: Mmu>(tlb: MmuGather<'_, A>) -> u64 {
    finish(tlb).1
}

/// Waits until every other CPU has taken an interrupt since the call
/// (`tlb_remove_table_sync_one`): a CPU walking tables with interrupts
/// disabled holds it back until its walk is over.
pub fn tlb_remove_table_sync_one<A: Mmu>() {
    smp::smp_call_function::<A>(|_| {}, 0, true);
}

/// The RCU callback of [`TableFree::Rcu`]: `arg` is a boxed table list.
fn tlb_remove_table_rcu<A: Mmu>(arg: usize) {
    // SAFETY: `arg` came from `Box::into_raw` in `tlb_flush_mmu_free` and is
    // passed to exactly one callback.
    let tables = unsafe { Box::from_raw(arg as *mut Vec<(Level, u64)>) };
    free_tables::<A>(&tables);
}

/// Frees unhooked tables (their mm's accounting was done at hand-over).
fn free_tables<A: Mmu>(tables: &[(Level, u64)]) {
    if let Some(&(_, first)) = tables.first() {
        crate::race::race_point::<A>(&crate::race::point::points::SYNC_FREE_TABLE, first);
    }
    for &(level, table) in tables {
        if level == Level::Pte {
            frag::__pte_free::<A>(table);
        } else {
            super::pgtable::pagetable_dtor(table, A::CRST_ORDER);
            page_alloc::__free_pages(page::phys_to_page(table), A::CRST_ORDER);
        }
    }
    if let Some(&(_, first)) = tables.first() {
        crate::race::race_point::<A>(&crate::race::point::points::GATHER_AFTER_TABLE_FREE, first);
    }
}

#[cfg(test)]
mod tests;
