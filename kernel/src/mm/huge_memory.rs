//! Anonymous PMD leaves (transparent huge pages, `mm/huge_memory.c`): zap and
//! split. Only where the arch maps blocks with a PMD ([`Mmu::HAS_HUGE_PMD`],
//! x86-64); everywhere else no PMD is ever a leaf and nothing here runs.
//!
//! A huge mapping is one PMD leaf mapping a whole, aligned PMD_SIZE block of
//! one private anonymous VMA, backed by a compound page of order
//! [`hpage_pmd_order`] (x86-64: 9, 2 MiB). The rmap is on the head only (its
//! mapcount is 1), but **references are per subpage**: while the leaf maps
//! the block, every subpage, head and tails, holds one reference, the
//! leaf's, and a GUP reference or pin on a subpage is taken on that subpage
//! itself (see `gup.rs`), never on the head. Nothing therefore has to move
//! when the block stops being compound (split, zap): each subpage already
//! carries exactly what its holders took, and each holder releases exactly
//! what it took, on the same frame. A subpage's count cannot reach zero
//! while the block is compound (the leaf's reference goes only after the
//! block was demoted by [`demote_huge_page`]), so a compound THP is never
//! freed whole: its frames are freed one by one, each when its last holder
//! lets go (a pinned subpage outlives the mapping as an order-0 page). Leaves
//! are created only by [`super::khugepaged::collapse_huge_page`], under
//! `mmap_lock` held for write, and are always writable (the VMA is).
//!
//! Every path that meets a PMD handles a leaf:
//! - zap ([`super::memory::unmap_page_range`]): a range covering the whole
//!   block clears the leaf, demotes the block and hands every subpage to
//!   the gather ([`zap_huge_pmd`]); a partial range splits the leaf first;
//! - fork and mprotect split the leaves of the range first (a huge mapping is
//!   therefore never shared and never read-only);
//! - a fault in a leaf-mapped block is spurious (the leaf was installed
//!   while the faulting CPU waited for `mmap_lock`), or a store to a leaf
//!   that does not allow stores, which splits it;
//! - `free_pgtables` never frees a leaf (it is not a table: by then the zap
//!   has cleared or split it).
//!
//! **The split** ([`split_huge_pmd`]) is the simple, correct one for a
//! mapping that is never shared: it turns the compound page back into
//! PMD_SIZE / PAGE_SIZE independent order-0 pages in place (no copy) and maps
//! them through a fresh PTE table. Under `page_table_lock`: fill the new,
//! unhooked table with one PTE per subpage (same write and dirty state as the
//! leaf); give every tail its own rmap (one mapping); demote the block (no
//! reference moves: the leaf's reference on each subpage becomes its PTE's,
//! GUP references stay where GUP took them); clear the leaf and flush the
//! block from every TLB (x86 needs the 2 MiB entry gone before 4 KiB ones for
//! the same addresses can be created); hook up the table. A CPU that faults
//! in between finds the PMD empty, waits for `page_table_lock` in
//! `pte_alloc_walk`, and then finds the new table. Unlike Linux, which keeps
//! the folio and maps its subpages (and refuses to split a pinned folio),
//! the folio is split with the mapping; a pin taken on a subpage of the leaf
//! stays on that frame and is released from it.
//!
//! Locking: the leaf changes only under `page_table_lock` (Linux's
//! `pmd_lock`); zaps and splits run under `mmap_lock` (read for
//! MADV_DONTNEED and faults, write for munmap, mprotect, fork, exit).

use super::arch::{Level, Mmu, PteProt};
use super::memory::{page_add_new_anon_rmap, page_remove_rmap};
use super::mm::Mm;
use super::mmu_gather::{self, MmuGather};
use super::page::{self, PG_head, PAGE_ORDER_SHIFT};
use super::{pgtable, PAGE_SIZE};
use core::sync::atomic::{AtomicU64, Ordering};

/// Huge PMD leaves split ([`split_huge_pmd`]).
pub static THP_SPLIT_PMD: AtomicU64 = AtomicU64::new(0);
/// Huge PMD leaves zapped whole ([`zap_huge_pmd`]).
pub static THP_ZAP_PMD: AtomicU64 = AtomicU64::new(0);

/// The order of a block one PMD maps (`HPAGE_PMD_ORDER`).
pub fn hpage_pmd_order<A: Mmu>() -> u32 {
    (A::PMD_SIZE / PAGE_SIZE).trailing_zeros()
}

/// Pages in a block one PMD maps (`HPAGE_PMD_NR`).
pub fn hpage_pmd_nr<A: Mmu>() -> u64 {
    A::PMD_SIZE / PAGE_SIZE
}

/// Whether `pmd` is a huge leaf (`pmd_trans_huge`): never where the arch
/// has none.
pub fn pmd_trans_huge<A: Mmu>(pmd: u64) -> bool {
    A::HAS_HUGE_PMD && A::pmd_leaf(pmd)
}

/// No memory for the PTE table of a split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitNoMemory;

/// Clears the huge leaf of the block at `addr` onto `tlb`
/// (`zap_huge_pmd`): the whole block joins the flush range, the head loses
/// its mapping, the block is demoted ([`demote_huge_page`]) and every
/// subpage goes to the gather with the leaf's reference on it (freed after
/// the flush unless a GUP holder still has it). Returns whether the
/// gather's batch is full (the caller flushes and frees it), or `None` if
/// the entry is not a leaf (split or zapped meanwhile).
pub fn zap_huge_pmd<A: Mmu>(tlb: &mut MmuGather<'_, A>, addr: u64) -> Option<bool> {
    let mm = tlb.mm;
    let pmdp = pgtable::follow_pmd(mm, addr)?;
    let guard = mm.page_table_lock.lock();
    // SAFETY: a live PMD entry of this mm; page_table_lock serialises writers.
    let pmd = unsafe { pgtable::read_entry(pmdp) };
    if !pmd_trans_huge::<A>(pmd) {
        return None;
    }
    // SAFETY: as above; no flush here: the gather flushes the block.
    unsafe { A::pmdp_get_and_clear(mm, addr, pmdp) };
    mmu_gather::tlb_remove_tlb_entry(tlb, addr);
    mmu_gather::tlb_remove_tlb_entry(tlb, addr + A::PMD_SIZE - PAGE_SIZE);
    let head = page::pfn_to_page(A::pmd_pfn(pmd));
    mm.rss_anon
        .fetch_sub(hpage_pmd_nr::<A>() as usize, Ordering::Relaxed);
    page_remove_rmap(head);
    demote_huge_page::<A>(head);
    let pfn = A::pmd_pfn(pmd);
    let mut full = false;
    for i in 0..hpage_pmd_nr::<A>() {
        full |= mmu_gather::tlb_remove_page(tlb, page::pfn_to_page(pfn + i));
    }
    drop(guard);
    THP_ZAP_PMD.fetch_add(1, Ordering::Relaxed);
    Some(full)
}

/// Splits the huge leaf of the block holding `addr` into a PTE table mapping
/// the same frames (`__split_huge_pmd`; see the module docs for the method).
/// Fails only when no PTE table could be allocated; an entry that is not a
/// leaf is left alone.
pub fn split_huge_pmd<A: Mmu>(mm: &Mm<A>, addr: u64) -> Result<(), SplitNoMemory> {
    let haddr = addr & !(A::PMD_SIZE - 1);
    let Some(pmdp) = pgtable::follow_pmd(mm, haddr) else {
        return Ok(());
    };
    let table = pgtable::alloc_table(mm, Level::Pte).ok_or(SplitNoMemory)?;
    let guard = mm.page_table_lock.lock();
    // SAFETY: a live PMD entry of this mm; page_table_lock serialises writers.
    let pmd = unsafe { pgtable::read_entry(pmdp) };
    if !pmd_trans_huge::<A>(pmd) {
        drop(guard);
        pgtable::free_table(mm, Level::Pte, table);
        return Ok(());
    }
    let pfn = A::pmd_pfn(pmd);
    let head = page::pfn_to_page(pfn);
    let prot = PteProt {
        write: A::pmd_write(pmd),
    };
    let entries = page::phys_to_virt(table).cast::<u64>();
    for i in 0..hpage_pmd_nr::<A>() {
        let mut pte = A::pfn_pte(pfn + i, prot);
        if !A::pmd_dirty(pmd) {
            pte = A::pte_mkclean(pte);
        }
        // SAFETY: the new table is ours alone until it is hooked up below;
        // `i` is below its number of entries.
        unsafe { pgtable::set_pte(entries.add(i as usize), pte) };
        if i > 0 {
            page_add_new_anon_rmap(page::pfn_to_page(pfn + i), mm, haddr + i * PAGE_SIZE);
        }
    }
    demote_huge_page::<A>(head);
    // SAFETY: the live leaf; interrupts are on (callers run in task context).
    unsafe { pgtable::pmdp_collapse_flush(mm, haddr, pmdp) };
    core::sync::atomic::fence(Ordering::Release);
    // SAFETY: the entry is empty and flushed; we hold page_table_lock.
    unsafe { pgtable::pmd_populate::<A>(pmdp, table) };
    drop(guard);
    THP_SPLIT_PMD.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Makes the huge page `head` PMD_SIZE / PAGE_SIZE independent order-0
/// pages in place (the folio split of this model): the head loses
/// `PG_head` and its order, the tails their link to the head. References
/// are not touched: each subpage already holds its own (see the module
/// docs). Caller holds `page_table_lock` and has taken the head off the
/// leaf's rmap or is about to map every subpage with a PTE.
pub fn demote_huge_page<A: Mmu>(head: &'static page::Page) {
    debug_assert_eq!(page::compound_order(head), hpage_pmd_order::<A>());
    let pfn = page::page_to_pfn(head);
    for i in 1..hpage_pmd_nr::<A>() {
        page::pfn_to_page(pfn + i)
            .compound_tail
            .store(0, Ordering::Release);
    }
    head.clear_flag(PG_head | (0xff << PAGE_ORDER_SHIFT));
}

/// Splits every huge leaf in the PMD blocks that `[start, end)` touches.
/// Caller holds `mmap_lock`.
pub fn split_huge_pmds_in<A: Mmu>(mm: &Mm<A>, start: u64, end: u64) -> Result<(), SplitNoMemory> {
    if !A::HAS_HUGE_PMD {
        return Ok(());
    }
    let mut addr = start & !(A::PMD_SIZE - 1);
    while addr < end {
        if let Some(pmdp) = pgtable::follow_pmd(mm, addr) {
            // SAFETY: a live PMD entry of this mm.
            if pmd_trans_huge::<A>(unsafe { pgtable::read_entry(pmdp) }) {
                split_huge_pmd(mm, addr)?;
            }
        }
        addr += A::PMD_SIZE;
    }
    Ok(())
}

/// A fault at `addr` in a block a huge leaf may map (`do_huge_pmd_*`):
/// `Some(Ok)` if the leaf already allows the access (spurious: installed
/// while the CPU waited), `None` if the caller goes on with the PTE path
/// (no leaf, or the leaf was split for a store it does not allow), `Some(Err)`
/// if the split found no memory. Caller holds `mmap_lock` for read.
pub fn huge_pmd_fault<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    write: bool,
) -> Option<Result<(), SplitNoMemory>> {
    if !A::HAS_HUGE_PMD {
        return None;
    }
    let pmdp = pgtable::follow_pmd(mm, addr)?;
    // SAFETY: a live PMD entry of this mm.
    let pmd = unsafe { pgtable::read_entry(pmdp) };
    if !pmd_trans_huge::<A>(pmd) {
        return None;
    }
    if !write || A::pmd_write(pmd) {
        return Some(Ok(()));
    }
    split_huge_pmd(mm, addr).err().map(Err)
}
