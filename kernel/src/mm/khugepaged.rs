//! Collapse of small anonymous pages into one PMD-sized block
//! (`mm/khugepaged.c`: `collapse_huge_page`, `__collapse_huge_page_isolate`,
//! `__collapse_huge_page_copy`), the writer side of catalogue row 5
//! (`collapse-vs-gup-fast`).
//!
//! [`collapse_huge_page`] works on one PMD block of one private, writable
//! anonymous VMA whose every page is present, anonymous and mapped once. The
//! steps, in Linux's order (Linux 6.1 with 2ba99c5e0881):
//! 1. allocate the new block (order [`hpage_pmd_order`]; or take the one a
//!    failed collapse left, [`collapse_huge_page_prealloc`]; on arches
//!    without PMD leaves also a fresh PTE table);
//! 2. take `mmap_lock` for write (no fault, zap or slow GUP runs in the mm);
//! 3. under `page_table_lock`, clear the PMD and flush the block
//!    ([`pgtable::pmdp_collapse_flush`]: x86-64 exchange and shootdown with
//!    the selected strategy; s390x IDTE on the segment entry or CSP with
//!    purge). From here on no CPU *translates* through the old table, but a
//!    lockless walker (GUP-fast) that read the old PMD before the clear may
//!    still be walking it;
//! 4. with [`CollapsePolicy::ipi_sync`], `tlb_remove_table_sync_one`: wait
//!    until every other CPU has taken an interrupt, i.e. has left any
//!    interrupts-off walk (the fix of 2ba99c5e0881; on x86-64 the IPI
//!    shootdown of step 3 already waited for the CPUs of the mm);
//! 5. under the PTE table's PTL, isolate every small page (`isolate`): it must
//!    be present, anonymous, mapped once, not locked (it is locked now), and
//!    have exactly one reference, the PTE's. A GUP pin adds
//!    `GUP_PIN_COUNTING_BIAS` (1024) and any other holder at least one: then
//!    the collapse aborts and restores the old PMD (nothing was changed
//!    below it: every byte stays where it was);
//! 6. copy every small page into the new block, then, under the old table's
//!    PTL, clear each old PTE, remove the page's rmap, unlock and release it
//!    (freed: the PTE held the only reference);
//! 7. install the block: x86-64 a writable PMD leaf on the compound page
//!    (one rmap, on the head; one reference on every subpage); elsewhere a fresh PTE table mapping the new
//!    frames as independent pages;
//! 8. hand the old PTE table to the table-freeing policy
//!    ([`CollapsePolicy::table_free`]: now, after an IPI sync, or after an
//!    RCU grace period), as the mmu_gather does.
//!
//! The race of row 5 lives between steps 3 and 6: a GUP-fast walker that
//! still sees the old table pins a small page after step 5's check; its PTE
//! recheck passes until step 6 clears the PTE. [`CollapseReport`] carries the
//! times of the PMD clear, the pin check and the end, for tests and
//! scenarios.

use super::arch::{Level, Mmu, PteProt};
#[cfg(test)]
use super::gup::GUP_PIN_COUNTING_BIAS;
use super::huge_memory::{hpage_pmd_nr, hpage_pmd_order, pmd_trans_huge};
use super::memory::{page_add_new_anon_rmap, page_remove_rmap, pte_lockptr};
use super::mm::Mm;
use super::mmu_gather::{self, TableFree};
use super::page::{self, Page};
use super::{page_alloc, pgtable, PAGE_SIZE};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// Runtime knobs of a collapse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollapsePolicy {
    /// IPI sync (`tlb_remove_table_sync_one`) after the PMD clear and flush,
    /// before the pin check (2ba99c5e0881).
    pub ipi_sync: bool,
    /// How the old PTE table is freed.
    pub table_free: TableFree,
}

impl CollapsePolicy {
    /// Linux since 2ba99c5e0881: the IPI sync, and the table freed as the
    /// gather frees tables today.
    pub fn fixed() -> Self {
        Self {
            ipi_sync: true,
            table_free: mmu_gather::tlb_policy().table_free,
        }
    }
}

/// Why a collapse did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollapseAbort {
    /// No private, writable anonymous VMA covers the whole block.
    NoSuitableVma,
    /// The PMD is empty or already a leaf.
    PmdNotTable,
    /// A PTE of the block is not present.
    PteNotPresent(u64),
    /// A page is not anonymous.
    NotAnon(u64),
    /// A page is mapped more than once (shared with a fork).
    Shared(u64),
    /// A page is locked by someone else.
    PageLocked(u64),
    /// A page has references beyond its mapping (a pin): its address and
    /// refcount.
    Referenced(u64, i32),
    /// No memory for the new block or table.
    NoMemory,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollapseResult {
    /// The block is mapped by the new pages.
    Collapsed,
    /// Nothing changed (the old PMD is back, if it was cleared).
    Aborted(CollapseAbort),
}

/// The outcome of [`collapse_huge_page`], with times (`clock_ns`) of its
/// steps; 0 for a step not reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollapseReport {
    /// Collapsed or why not.
    pub result: CollapseResult,
    /// When the PMD clear and flush returned.
    pub pmd_cleared_ns: u64,
    /// When the pin check began (after the optional IPI sync).
    pub pin_check_ns: u64,
    /// When the collapse returned.
    pub done_ns: u64,
    /// The old PTE table (0 if the PMD was never cleared).
    pub old_table: u64,
}

/// Collapses that installed a new block.
pub static THP_COLLAPSED: AtomicU64 = AtomicU64::new(0);
/// Collapses that aborted after clearing the PMD and restored it.
pub static THP_COLLAPSE_RESTORED: AtomicU64 = AtomicU64::new(0);
/// Collapses that aborted for a page's extra reference.
pub static THP_COLLAPSE_REFERENCED: AtomicU64 = AtomicU64::new(0);

/// Collapses the PMD block holding `addr` in `mm` (see the module docs).
/// Takes `mmap_lock` for write; the caller holds no lock of `mm` and has
/// interrupts enabled.
pub fn collapse_huge_page<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    policy: &CollapsePolicy,
) -> CollapseReport {
    let mut hpage = None;
    let report = collapse_huge_page_prealloc(mm, addr, policy, &mut hpage);
    if let Some(head) = hpage {
        page_alloc::__free_pages(head, hpage_pmd_order::<A>());
    }
    report
}

/// [`collapse_huge_page`] with the new block taken from `hpage` when it
/// holds one (allocated otherwise), and left there when the collapse did
/// not use it — khugepaged's preallocated huge page (`*hpage`, kept from a
/// failed collapse for the next one in Linux up to 5.x's
/// `khugepaged_prealloc_page`). A block in `hpage` is an allocated,
/// order-[`hpage_pmd_order`] block that nothing else uses.
pub fn collapse_huge_page_prealloc<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    policy: &CollapsePolicy,
    hpage: &mut Option<&'static Page>,
) -> CollapseReport {
    let mut report = CollapseReport {
        result: CollapseResult::Collapsed,
        pmd_cleared_ns: 0,
        pin_check_ns: 0,
        done_ns: 0,
        old_table: 0,
    };
    let r = collapse(mm, addr, policy, hpage, &mut report);
    report.result = match r {
        Ok(()) => {
            THP_COLLAPSED.fetch_add(1, Ordering::Relaxed);
            CollapseResult::Collapsed
        }
        Err(why) => {
            if let CollapseAbort::Referenced(..) = why {
                THP_COLLAPSE_REFERENCED.fetch_add(1, Ordering::Relaxed);
            }
            CollapseResult::Aborted(why)
        }
    };
    report.done_ns = A::clock_ns();
    report
}

/// The new block and, without PMD leaves, its fresh PTE table.
struct NewBlock {
    head: &'static Page,
    table: Option<u64>,
}

impl NewBlock {
    fn alloc<A: Mmu>(mm: &Mm<A>, hpage: &mut Option<&'static Page>) -> Option<Self> {
        let head = match hpage.take() {
            Some(h) => h,
            None => page_alloc::alloc_pages(hpage_pmd_order::<A>())?,
        };
        let table = if A::HAS_HUGE_PMD {
            None
        } else {
            match pgtable::alloc_table(mm, Level::Pte) {
                Some(t) => Some(t),
                None => {
                    *hpage = Some(head);
                    return None;
                }
            }
        };
        Some(Self { head, table })
    }

    /// Gives the block back to `hpage` and frees the table.
    fn free<A: Mmu>(self, mm: &Mm<A>, hpage: &mut Option<&'static Page>) {
        *hpage = Some(self.head);
        if let Some(t) = self.table {
            pgtable::free_table(mm, Level::Pte, t);
        }
    }
}

fn collapse<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    policy: &CollapsePolicy,
    hpage: &mut Option<&'static Page>,
    report: &mut CollapseReport,
) -> Result<(), CollapseAbort> {
    let haddr = addr & !(A::PMD_SIZE - 1);
    let new = NewBlock::alloc(mm, hpage).ok_or(CollapseAbort::NoMemory)?;
    let vmas = mm.mmap_lock.write();
    // hugepage_vma_revalidate / find_pmd_or_thp_or_none
    let suitable = vmas.find(haddr).is_some_and(|v| {
        !v.is_shared_file() && v.flags.write && v.start <= haddr && haddr + A::PMD_SIZE <= v.end
    });
    let pmdp = pgtable::follow_pmd(mm, haddr);
    let checked = match (suitable, pmdp) {
        (false, _) => Err(CollapseAbort::NoSuitableVma),
        (true, None) => Err(CollapseAbort::PmdNotTable),
        (true, Some(pmdp)) => {
            // SAFETY: a live PMD entry of this mm; mmap_lock held for write.
            let pmd = unsafe { pgtable::read_entry(pmdp) };
            if A::entry_none(Level::Pmd, pmd)
                || pmd_trans_huge::<A>(pmd)
                || !A::entry_is_table(Level::Pmd, pmd)
            {
                Err(CollapseAbort::PmdNotTable)
            } else {
                Ok(pmdp)
            }
        }
    };
    let pmdp = match checked {
        Ok(p) => p,
        Err(e) => {
            drop(vmas);
            new.free(mm, hpage);
            return Err(e);
        }
    };

    crate::race::race_point::<A>(
        &crate::race::point::points::COLLAPSE_BEFORE_PMD_CLEAR,
        haddr,
    );
    // Clear the PMD and flush the block (pmdp_collapse_flush under pmd_lock).
    let old_pmd = {
        let _pmd_ptl = mm.page_table_lock.lock();
        // SAFETY: the live PMD entry of `haddr`; mmap_lock held for write and
        // page_table_lock held; interrupts are on.
        unsafe { pgtable::pmdp_collapse_flush(mm, haddr, pmdp) }
    };
    report.pmd_cleared_ns = A::clock_ns();
    let old_table = A::entry_table(Level::Pmd, old_pmd);
    report.old_table = old_table;
    let old_ptes = page::phys_to_virt(old_table).cast::<u64>();
    // The entry of page `i` of the block in the (unhooked) old table.
    let old_ptep = |i: u64| old_ptes.wrapping_add(i as usize);
    if policy.ipi_sync {
        // 2ba99c5e0881: no lockless walker is left in the old table after
        // this (it ran with interrupts off).
        mmu_gather::tlb_remove_table_sync_one::<A>();
    }

    // __collapse_huge_page_isolate, under the old table's PTL.
    report.pin_check_ns = A::clock_ns();
    let ptl = pte_lockptr(old_ptep(0));
    let isolated = {
        let _ptl = ptl.lock();
        isolate::<A>(haddr, old_ptep)
    };
    let pages = match isolated {
        Ok(p) => p,
        Err(e) => {
            // Put the old table back: nothing below it changed.
            {
                let _pmd_ptl = mm.page_table_lock.lock();
                // SAFETY: the entry is empty (we cleared it, and mmap_lock
                // held for write keeps every populater out); we hold
                // page_table_lock.
                unsafe { pgtable::set_pmd(pmdp, old_pmd) };
            }
            drop(vmas);
            new.free(mm, hpage);
            THP_COLLAPSE_RESTORED.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };

    crate::race::race_point::<A>(&crate::race::point::points::COLLAPSE_AFTER_ISOLATE, haddr);

    // __collapse_huge_page_copy: copy every page, then unmap and free it.
    let dst = page::page_address(new.head);
    for (i, p) in pages.iter().enumerate() {
        // SAFETY: the source frame is locked and mapped only by the unhooked
        // table; the destination is our new block, PMD_SIZE long; RAM is
        // mapped 1:1.
        unsafe { A::copy_page(dst.add(i * PAGE_SIZE as usize), page::page_address(p)) };
    }
    {
        let _ptl = ptl.lock();
        for (i, p) in pages.iter().enumerate() {
            // SAFETY: an entry of the old table, unhooked and flushed from
            // every TLB: a plain clear (`ptep_clear`); PTL held.
            unsafe { pgtable::pte_clear::<A>(old_ptep(i as u64)) };
            page_remove_rmap(p);
        }
    }
    for p in &pages {
        page::unlock_page(p);
        page::put_page(p);
    }

    // Install the new block.
    let pfn = page::page_to_pfn(new.head);
    let entry = match new.table {
        None => {
            // Every subpage holds the leaf's reference (see huge_memory).
            page_alloc::split_page(new.head, hpage_pmd_order::<A>());
            page::prep_compound_page(new.head, hpage_pmd_order::<A>());
            page_add_new_anon_rmap(new.head, mm, haddr);
            A::pfn_pmd(pfn, PteProt { write: true })
        }
        Some(table) => {
            page_alloc::split_page(new.head, hpage_pmd_order::<A>());
            let ptes = page::phys_to_virt(table).cast::<u64>();
            for i in 0..hpage_pmd_nr::<A>() {
                let p = page::pfn_to_page(pfn + i);
                page_add_new_anon_rmap(p, mm, haddr + i * PAGE_SIZE);
                // SAFETY: the fresh table is ours until hooked up below.
                unsafe {
                    pgtable::set_pte(
                        ptes.add(i as usize),
                        A::pfn_pte(pfn + i, PteProt { write: true }),
                    )
                };
            }
            A::mk_table_entry(Level::Pmd, table)
        }
    };
    // smp_wmb: the contents before the entry that publishes them.
    core::sync::atomic::fence(Ordering::Release);
    {
        let _pmd_ptl = mm.page_table_lock.lock();
        // SAFETY: the entry is empty and flushed; page_table_lock held.
        unsafe { pgtable::set_pmd(pmdp, entry) };
    }
    crate::race::race_point::<A>(&crate::race::point::points::COLLAPSE_AFTER_INSTALL, haddr);
    drop(vmas);

    // The old table goes as the table-freeing policy says.
    mm.pgtables_bytes
        .fetch_sub(A::PTE_TABLE_SIZE, Ordering::Relaxed);
    mmu_gather::free_tables_as::<A>(policy.table_free, alloc::vec![(Level::Pte, old_table)]);
    Ok(())
}

/// Checks and locks every small page of the block (`__collapse_huge_page_isolate`);
/// on failure unlocks what it locked. Caller holds the old table's PTL.
fn isolate<A: Mmu>(
    haddr: u64,
    old_ptep: impl Fn(u64) -> *mut u64,
) -> Result<Vec<&'static Page>, CollapseAbort> {
    let mut pages: Vec<&'static Page> = Vec::with_capacity(hpage_pmd_nr::<A>() as usize);
    let mut result = Ok(());
    for i in 0..hpage_pmd_nr::<A>() {
        let a = haddr + i * PAGE_SIZE;
        // SAFETY: an entry of the old table, which we hold (unhooked) and
        // whose PTL is held.
        let pte = unsafe { pgtable::read_entry(old_ptep(i)) };
        if !A::pte_present(pte) {
            result = Err(CollapseAbort::PteNotPresent(a));
            break;
        }
        let p = page::pfn_to_page(A::pte_pfn(pte));
        if !page::PageAnon(p) {
            result = Err(CollapseAbort::NotAnon(a));
            break;
        }
        if page::page_mapcount(p) != 1 {
            result = Err(CollapseAbort::Shared(a));
            break;
        }
        if !page::trylock_page(p) {
            result = Err(CollapseAbort::PageLocked(a));
            break;
        }
        // The pin check: the PTE's reference and nothing else.
        let refs = page::page_ref_count(p);
        if refs != 1 {
            page::unlock_page(p);
            result = Err(CollapseAbort::Referenced(a, refs));
            break;
        }
        pages.push(p);
    }
    match result {
        Ok(()) => Ok(pages),
        Err(e) => {
            for p in pages {
                page::unlock_page(p);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;
