//! Generic page-table walks on top of the arch's `pXd_offset` helpers.
//!
//! Two kinds of walk, as in Linux:
//! - [`pte_alloc_walk`] (the `p4d_alloc` … `pte_alloc` chain of a fault): finds
//!   the PTE for an address, allocating and populating missing tables under the
//!   mm's `page_table_lock`, rechecking each entry after taking the lock;
//! - [`follow_pte`]: finds an existing PTE without allocating.
//!
//! Folded levels need no special case here: the arch's offset helpers return
//! the same pointer for a folded level and its `entry_none` never reports a
//! folded entry empty, exactly as Linux's generic code relies on.

use super::arch::{Level, Mmu};
use super::mm::Mm;
use super::{frag, page_alloc, PAGE_SIZE};
use core::sync::atomic::Ordering;

/// Reads an entry once (`READ_ONCE`).
///
/// # Safety
/// `p` points to a live table entry.
pub unsafe fn read_entry(p: *mut u64) -> u64 {
    // SAFETY: the caller guarantees `p` is a live, aligned entry; a volatile
    // load is a single 64-bit access that the compiler cannot repeat or tear.
    unsafe { core::ptr::read_volatile(p) }
}

/// Stores an entry (`WRITE_ONCE`): the one raw store of this module, behind
/// the named helpers below. Never for a valid PTE of a live table: those
/// belong to the arch ([`Mmu::set_pte_at`], [`Mmu::ptep_get_and_clear`]).
///
/// # Safety
/// `p` points to a table entry; the caller holds what serialises writers of
/// it (see each helper).
unsafe fn write_entry(p: *mut u64, v: u64) {
    // SAFETY: as `read_entry`; the caller holds the lock that serialises
    // writers of this entry.
    unsafe { core::ptr::write_volatile(p, v) }
}

// ---- named entry stores (Linux `pXd_populate`, `pXd_clear`, `set_pXd`) -----
//
// Upper entries (`pgd` to `pmd`) are written by generic code, always under
// the mm's `page_table_lock` (or on a table no CPU reaches yet); the arch
// decides their values ([`Mmu::mk_table_entry`], [`Mmu::empty_entry`]).

/// Points the empty upper entry `entryp` of `level` to the lower table
/// `table` (`pgd_populate` … `pmd_populate`).
///
/// # Safety
/// `entryp` is an entry of `level` of a live table of the mm, currently
/// empty; the caller holds the mm's `page_table_lock`; `table` is a table of
/// the level below, filled with its empty entries (and with whatever it maps,
/// published before this store).
pub unsafe fn pxd_populate<A: Mmu>(level: Level, entryp: *mut u64, table: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { write_entry(entryp, A::mk_table_entry(level, table)) }
}

/// `pmd_populate`: [`pxd_populate`] for a PMD entry and a PTE table.
///
/// # Safety
/// As [`pxd_populate`].
pub unsafe fn pmd_populate<A: Mmu>(pmdp: *mut u64, table: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { pxd_populate::<A>(Level::Pmd, pmdp, table) }
}

/// Empties the upper entry `entryp` of `level` (`pgd_clear` … `pmd_clear`),
/// with a plain store: no TLB flush.
///
/// # Safety
/// `entryp` is an entry of `level` of a live table of the mm; the caller
/// holds the mm's `page_table_lock`, and no CPU can translate through the
/// entry any more (the mm runs nowhere, or the entry was never walked by an
/// MMU, or the caller flushes before the table below is reused).
pub unsafe fn pxd_clear<A: Mmu>(level: Level, entryp: *mut u64) {
    // SAFETY: forwarded to the caller.
    unsafe { write_entry(entryp, A::empty_entry(level)) }
}

/// `pmd_clear`: [`pxd_clear`] for a PMD entry.
///
/// # Safety
/// As [`pxd_clear`].
pub unsafe fn pmd_clear<A: Mmu>(pmdp: *mut u64) {
    // SAFETY: forwarded to the caller.
    unsafe { pxd_clear::<A>(Level::Pmd, pmdp) }
}

/// `set_pmd`: stores `pmd` (a table entry or a leaf, as the arch made it)
/// into an empty PMD entry.
///
/// # Safety
/// As [`pxd_populate`]: the entry is empty and flushed, `page_table_lock`
/// held, and what `pmd` maps is published before this store.
pub unsafe fn set_pmd(pmdp: *mut u64, pmd: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { write_entry(pmdp, pmd) }
}

/// `set_pte`: stores `pte` into a PTE table no CPU reaches yet (a fresh
/// table, before [`pmd_populate`] publishes it), with a plain store.
///
/// # Safety
/// `ptep` is an entry of a PTE table that is not hooked into any mm (so no
/// walker, hardware or lockless, reads it) and that the caller owns.
pub unsafe fn set_pte(ptep: *mut u64, pte: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { write_entry(ptep, pte) }
}

/// `pte_clear`: empties a PTE with a plain store, no invalidation and no
/// flush (Linux `ptep_clear` on a table collapse unhooked).
///
/// # Safety
/// `ptep` is an entry of a PTE table that is unhooked from its PMD and
/// flushed from every TLB, so no CPU translates through it; the caller holds
/// its PTL.
pub unsafe fn pte_clear<A: Mmu>(ptep: *mut u64) {
    // SAFETY: forwarded to the caller.
    unsafe { write_entry(ptep, A::empty_entry(Level::Pte)) }
}

/// The level below `level`.
fn next_level(level: Level) -> Level {
    match level {
        Level::Pgd => Level::P4d,
        Level::P4d => Level::Pud,
        Level::Pud => Level::Pmd,
        Level::Pmd | Level::Pte => Level::Pte,
    }
}

/// Marks every frame of the order-`order` block at physical `table` as a page
/// table (`PG_pgtable`, Linux's `pagetable_ctor`): every frame that holds a
/// task page table carries the mark, whichever level and whoever allocated
/// it (this module, the fragment allocator, the arch's top tables), so a
/// lockless walker's reads can be checked against it.
pub fn pagetable_ctor(table: u64, order: u32) {
    let first = table >> super::PAGE_SHIFT;
    for pfn in first..first + (1 << order) {
        super::page::pfn_to_page(pfn).set_flag(super::page::PG_pgtable);
    }
}

/// Clears what [`pagetable_ctor`] set, before the block is freed
/// (`pagetable_dtor`; `PG_pgtable` is checked at free).
pub fn pagetable_dtor(table: u64, order: u32) {
    let first = table >> super::PAGE_SHIFT;
    for pfn in first..first + (1 << order) {
        super::page::pfn_to_page(pfn).clear_flag(super::page::PG_pgtable);
    }
}

/// Allocates a table for `level` (an upper table, or a PTE table through the
/// fragment allocator), filled with that level's empty entries. Returns its
/// address.
pub fn alloc_table<A: Mmu>(mm: &Mm<A>, level: Level) -> Option<u64> {
    let (table, bytes) = if level == Level::Pte {
        (frag::pte_alloc_one(mm)?, A::PTE_TABLE_SIZE)
    } else {
        let page = page_alloc::alloc_pages(A::CRST_ORDER)?;
        let table = super::page::page_to_phys(page);
        pagetable_ctor(table, A::CRST_ORDER);
        (table, (PAGE_SIZE as usize) << A::CRST_ORDER)
    };
    let empty = A::empty_entry(level);
    let entries = super::page::phys_to_virt(table).cast::<u64>();
    for i in 0..bytes / 8 {
        // SAFETY: the table was just allocated for us and is `bytes` long.
        unsafe { write_entry(entries.add(i), empty) };
    }
    mm.pgtables_bytes.fetch_add(bytes, Ordering::Relaxed);
    Some(table)
}

/// Frees a table allocated by [`alloc_table`].
pub fn free_table<A: Mmu>(mm: &Mm<A>, level: Level, table: u64) {
    if level == Level::Pte {
        frag::pte_free(mm, table);
        mm.pgtables_bytes
            .fetch_sub(A::PTE_TABLE_SIZE, Ordering::Relaxed);
    } else {
        pagetable_dtor(table, A::CRST_ORDER);
        page_alloc::__free_pages(super::page::phys_to_page(table), A::CRST_ORDER);
        mm.pgtables_bytes
            .fetch_sub((PAGE_SIZE as usize) << A::CRST_ORDER, Ordering::Relaxed);
    }
}

/// Makes sure the entry at `entryp` (of `level`) points to a table, allocating
/// and populating one if it is empty. Returns `None` when out of memory.
fn ensure_table<A: Mmu>(mm: &Mm<A>, level: Level, entryp: *mut u64) -> Option<()> {
    // SAFETY: `entryp` came from the arch's offset helpers for this mm.
    if !A::entry_none(level, unsafe { read_entry(entryp) }) {
        return Some(());
    }
    let table = alloc_table(mm, next_level(level))?;
    let _guard = mm.page_table_lock.lock();
    // SAFETY: as above; we hold `page_table_lock`, which serialises populating.
    if A::entry_none(level, unsafe { read_entry(entryp) }) {
        // SAFETY: the entry is empty, we hold the lock, and the table is
        // filled with empty entries.
        unsafe { pxd_populate::<A>(level, entryp, table) };
    } else {
        // Another CPU populated it first.
        drop(_guard);
        free_table(mm, next_level(level), table);
    }
    Some(())
}

/// Walks to the PMD entry of `addr`, allocating missing upper tables but not
/// the PTE table (Linux `pmd_alloc`). Returns `None` when out of memory.
/// `addr` must be below the mm's current limit.
pub fn pmd_alloc<A: Mmu>(mm: &Mm<A>, addr: u64) -> Option<*mut u64> {
    debug_assert!(addr < A::context_limit(&mm.context));
    let pgdp = A::pgd_offset(&mm.context, addr);
    ensure_table(mm, Level::Pgd, pgdp)?;
    // SAFETY: each pointer comes from the previous level's offset helper on a
    // populated entry of this mm; tables are freed only under mmap_lock for
    // write, which the callers exclude.
    unsafe {
        let p4dp = A::p4d_offset(pgdp, addr);
        ensure_table(mm, Level::P4d, p4dp)?;
        let pudp = A::pud_offset(p4dp, addr);
        ensure_table(mm, Level::Pud, pudp)?;
        Some(A::pmd_offset(pudp, addr))
    }
}

/// Walks to the PTE of `addr`, allocating missing tables (`pmd_alloc`, then
/// `pte_alloc`). Returns `None` when out of memory. `addr` must be below the
/// mm's current limit.
pub fn pte_alloc_walk<A: Mmu>(mm: &Mm<A>, addr: u64) -> Option<*mut u64> {
    let pmdp = pmd_alloc(mm, addr)?;
    ensure_table(mm, Level::Pmd, pmdp)?;
    // SAFETY: `pmdp` is a live entry of this mm, populated just now or before.
    Some(unsafe { A::pte_offset(pmdp, addr) })
}

/// Walks to the PMD entry of `addr` without allocating; `None` if an upper
/// table is missing. The entry itself may be empty, a table or a leaf.
pub fn follow_pmd<A: Mmu>(mm: &Mm<A>, addr: u64) -> Option<*mut u64> {
    if addr >= A::context_limit(&mm.context) {
        return None;
    }
    let pgdp = A::pgd_offset(&mm.context, addr);
    // SAFETY: as in `pte_alloc_walk`; every entry is checked before descending.
    unsafe {
        if A::entry_none(Level::Pgd, read_entry(pgdp)) {
            return None;
        }
        let p4dp = A::p4d_offset(pgdp, addr);
        if A::entry_none(Level::P4d, read_entry(p4dp)) {
            return None;
        }
        let pudp = A::pud_offset(p4dp, addr);
        if A::entry_none(Level::Pud, read_entry(pudp)) {
            return None;
        }
        Some(A::pmd_offset(pudp, addr))
    }
}

/// Walks to the PTE of `addr` without allocating; `None` if a table is missing.
pub fn follow_pte<A: Mmu>(mm: &Mm<A>, addr: u64) -> Option<*mut u64> {
    let pmdp = follow_pmd(mm, addr)?;
    // SAFETY: a live PMD entry of this mm, checked before descending.
    unsafe {
        let pmd = read_entry(pmdp);
        if A::entry_none(Level::Pmd, pmd) || !A::entry_is_table(Level::Pmd, pmd) {
            return None;
        }
        Some(A::pte_offset(pmdp, addr))
    }
}

/// Clears the PMD entry that maps `addr` and makes sure no CPU translates
/// through it any more (`pmdp_collapse_flush`): where clearing does not purge
/// the TLBs itself ([`Mmu::CLEAR_FLUSHES_TLB`] false, x86-64), the whole
/// block is flushed with the selected strategy. Returns the old entry.
///
/// # Safety
/// As [`Mmu::pmdp_get_and_clear`]; interrupts enabled (the flush may wait for
/// other CPUs).
pub unsafe fn pmdp_collapse_flush<A: Mmu>(mm: &Mm<A>, addr: u64, pmdp: *mut u64) -> u64 {
    // SAFETY: forwarded to the caller.
    let old = unsafe { A::pmdp_get_and_clear(mm, addr, pmdp) };
    let start = addr & !(A::PMD_SIZE - 1);
    crate::race::race_point::<A>(
        &crate::race::point::points::PMDP_COLLAPSE_AFTER_CLEAR,
        start,
    );
    if !A::CLEAR_FLUSHES_TLB {
        super::tlbflush::flush_tlb_range(mm, start, start + A::PMD_SIZE);
    }
    old
}

/// `pmd_addr_end`-style helper: the end of the `size`-aligned block holding
/// `addr`, clamped to `end`.
pub fn addr_end(addr: u64, end: u64, size: u64) -> u64 {
    let boundary = (addr & !(size - 1)).wrapping_add(size);
    if boundary.wrapping_sub(1) < end.wrapping_sub(1) {
        boundary
    } else {
        end
    }
}
