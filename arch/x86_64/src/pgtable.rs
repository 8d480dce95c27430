//! The x86-64 4-level page-table format (Linux: `asm/pgtable_types.h`,
//! `asm/pgtable_64_types.h`, `asm/pgtable.h`, `asm-generic/pgtable-nop4d.h`).
//!
//! Design. Four levels of 512 eight-byte entries in 4 KiB tables: PML4 (`pgd`),
//! PDPT (`pud`), page directory (`pmd`) and page table (`pte`). Linux's fifth
//! level, `p4d`, is folded statically as in Linux without 5-level paging:
//! [`p4d_offset`] returns the `pgd` entry pointer itself, [`pgd_none`] and
//! [`pgd_bad`] are constant `false`, and the real checks of a PML4 entry are
//! [`p4d_none`] and [`p4d_bad`]. Generic code can therefore walk all five
//! levels without knowing that one of them does not exist.
//!
//! Entries are plain `u64` values. Upper entries point to the next table by its
//! physical address; the kernel maps RAM 1:1, so that address is also the
//! table's pointer (host tests rely on the same: there a "physical" address is a
//! host pointer). A PMD entry with [`PAGE_PSE`] is a 2 MiB leaf; 1 GiB PUD
//! leaves are recognised by the walker but never built.
//!
//! The offset helpers come in two kinds, as in Linux since d3f7b1bb2040:
//! `pXd_offset(pXdp, addr)` reads the upper entry once and descends;
//! `pXd_offset_lockless(pXdp, pXd, addr)` descends from a value the caller has
//! read once already (GUP-fast), so a concurrent change of the live entry
//! cannot make the walk mix two different tables.
//!
//! Invariants:
//! - task tables and task PTEs carry [`PAGE_USER`] (the kernel runs in ring 0
//!   without SMAP, so this only marks them as task memory, as in Linux);
//! - [`PAGE_NX`] is never set: the kernel leaves EFER.NXE off, where bit 63 is
//!   reserved and setting it would raise a reserved-bit page fault;
//! - the kernel's own mappings live in PML4 entries below [`USER_PGD_FIRST`]
//!   (the 1:1 map of 0-4 GiB is entry 0) and from [`USER_PGD_END`] up; task
//!   mappings use only the entries in between, so every task PML4 can share the
//!   kernel's lower tables by copying those entries ([`pgd_ctor`]).

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// Base page size.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// log2 of the bytes one PMD entry maps.
pub const PMD_SHIFT: u32 = 21;
/// Bytes one PMD entry maps (a 2 MiB leaf or a PTE table's range).
pub const PMD_SIZE: u64 = 1 << PMD_SHIFT;
/// log2 of the bytes one PUD entry maps.
pub const PUD_SHIFT: u32 = 30;
/// Bytes one PUD entry maps.
pub const PUD_SIZE: u64 = 1 << PUD_SHIFT;
/// log2 of the bytes one PGD (PML4) entry maps.
pub const PGDIR_SHIFT: u32 = 39;
/// Bytes one PGD (PML4) entry maps.
pub const PGDIR_SIZE: u64 = 1 << PGDIR_SHIFT;
/// The folded p4d level covers what its pgd entry covers.
pub const P4D_SHIFT: u32 = PGDIR_SHIFT;
/// Bytes one (folded) P4D entry maps.
pub const P4D_SIZE: u64 = 1 << P4D_SHIFT;

/// Entries in a PML4.
pub const PTRS_PER_PGD: usize = 512;
/// Entries in a (folded) p4d "table": the pgd entry itself.
pub const PTRS_PER_P4D: usize = 1;
/// Entries in a PDPT.
pub const PTRS_PER_PUD: usize = 512;
/// Entries in a page directory.
pub const PTRS_PER_PMD: usize = 512;
/// Entries in a page table.
pub const PTRS_PER_PTE: usize = 512;

/// Present.
pub const PAGE_PRESENT: u64 = 1 << 0;
/// Writable.
pub const PAGE_RW: u64 = 1 << 1;
/// User-accessible.
pub const PAGE_USER: u64 = 1 << 2;
/// Page write-through.
pub const PAGE_PWT: u64 = 1 << 3;
/// Page cache disable.
pub const PAGE_PCD: u64 = 1 << 4;
/// Accessed: set by the hardware walker on a TLB fill.
pub const PAGE_ACCESSED: u64 = 1 << 5;
/// Dirty: set by the hardware on the first store through a writable leaf.
pub const PAGE_DIRTY: u64 = 1 << 6;
/// Page size: a PMD (or PUD) entry that is a leaf.
pub const PAGE_PSE: u64 = 1 << 7;
/// Global: survives CR3 reloads (with CR4.PGE). Unused by the kernel.
pub const PAGE_GLOBAL: u64 = 1 << 8;
/// PAT bit of a large-page leaf (bit 12, inside the address field of a PTE).
pub const PAGE_PAT_LARGE: u64 = 1 << 12;
/// No-execute. Reserved while EFER.NXE is off: never set here.
pub const PAGE_NX: u64 = 1 << 63;

/// The physical-address field of an entry (bits 12-51).
pub const PTE_PFN_MASK: u64 = 0x000f_ffff_ffff_f000;
/// The flag bits of an entry: everything outside the address field.
pub const PTE_FLAGS_MASK: u64 = !PTE_PFN_MASK;
/// The physical-address field of a 2 MiB leaf (bits 21-51).
pub const PMD_PAGE_MASK: u64 = PTE_PFN_MASK & !(PMD_SIZE - 1);

/// Flags of an upper entry that points to a task table (`_PAGE_TABLE`).
pub const PAGE_TABLE: u64 = PAGE_PRESENT | PAGE_RW | PAGE_USER | PAGE_ACCESSED | PAGE_DIRTY;
/// Flags of an upper entry that points to a kernel table (`_KERNPG_TABLE`).
pub const KERNPG_TABLE: u64 = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY;
/// Protection of a read-only task page, young (`PAGE_READONLY` without NX).
pub const PAGE_READONLY: u64 = PAGE_PRESENT | PAGE_USER | PAGE_ACCESSED;
/// Protection of a writable task page, young (`PAGE_SHARED` without NX).
pub const PAGE_SHARED: u64 = PAGE_PRESENT | PAGE_RW | PAGE_USER | PAGE_ACCESSED;

/// Lowest task address: PML4 entry 4, clear of the kernel's 1:1 map of RAM.
pub const TASK_BASE: u64 = 0x200_0000_0000;
/// End (exclusive) of the task range: the lower canonical half, 128 TiB.
pub const TASK_SIZE_MAX: u64 = 1 << 47;
/// First PML4 entry that belongs to tasks.
pub const USER_PGD_FIRST: usize = pgd_index(TASK_BASE);
/// PML4 entry after the last one that belongs to tasks.
pub const USER_PGD_END: usize = pgd_index(TASK_SIZE_MAX - 1) + 1;

const _: () = assert!(USER_PGD_FIRST == 4 && USER_PGD_END == 256);

/// How much a leaf maps (Linux `enum pg_level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgLevel {
    /// A PTE: 4 KiB.
    Level4K,
    /// A PMD leaf: 2 MiB.
    Level2M,
    /// A PUD leaf: 1 GiB.
    Level1G,
}

impl PgLevel {
    /// Bytes a leaf of this level maps.
    pub const fn size(self) -> u64 {
        match self {
            Self::Level4K => PAGE_SIZE,
            Self::Level2M => PMD_SIZE,
            Self::Level1G => PUD_SIZE,
        }
    }
}

// ---- indices -------------------------------------------------------------------

/// Index of `addr`'s entry in a PML4.
pub const fn pgd_index(addr: u64) -> usize {
    ((addr >> PGDIR_SHIFT) as usize) & (PTRS_PER_PGD - 1)
}

/// Index of `addr`'s entry in a PDPT.
pub const fn pud_index(addr: u64) -> usize {
    ((addr >> PUD_SHIFT) as usize) & (PTRS_PER_PUD - 1)
}

/// Index of `addr`'s entry in a page directory.
pub const fn pmd_index(addr: u64) -> usize {
    ((addr >> PMD_SHIFT) as usize) & (PTRS_PER_PMD - 1)
}

/// Index of `addr`'s entry in a page table.
pub const fn pte_index(addr: u64) -> usize {
    ((addr >> PAGE_SHIFT) as usize) & (PTRS_PER_PTE - 1)
}

// ---- reading entries -------------------------------------------------------------

/// Reads an entry exactly once (`READ_ONCE`): one aligned 64-bit load that the
/// compiler can neither repeat nor tear.
///
/// # Safety
/// `entryp` points to a live, aligned table entry.
#[inline]
pub unsafe fn read_once(entryp: *const u64) -> u64 {
    // SAFETY: the caller guarantees a live, aligned entry.
    unsafe { core::ptr::read_volatile(entryp) }
}

// ---- pgd (folded p4d on top of it) -----------------------------------------------

/// A pgd entry is never empty by itself: with p4d folded, the PML4 entry is
/// checked as a p4d ([`p4d_none`]).
pub const fn pgd_none(_pgd: u64) -> bool {
    false
}

/// A pgd entry is never bad by itself (folded, see [`pgd_none`]).
pub const fn pgd_bad(_pgd: u64) -> bool {
    false
}

/// The entry for `addr` in the PML4 at `pgd` (`pgd_offset_pgd`).
pub fn pgd_offset_pgd(pgd: *mut u64, addr: u64) -> *mut u64 {
    pgd.wrapping_add(pgd_index(addr))
}

/// `p4d_offset`: the folded level is the pgd entry itself.
pub fn p4d_offset(pgdp: *mut u64, _addr: u64) -> *mut u64 {
    pgdp
}

/// `p4d_offset_lockless`: as [`p4d_offset`]; the value read by the caller
/// decides nothing, the level is folded statically.
pub fn p4d_offset_lockless(pgdp: *mut u64, _pgd: u64, _addr: u64) -> *mut u64 {
    pgdp
}

// ---- p4d (the PML4 entry) ---------------------------------------------------------

/// Whether a PML4 entry is empty.
pub const fn p4d_none(p4d: u64) -> bool {
    p4d == 0
}

/// Whether a PML4 entry is present.
pub const fn p4d_present(p4d: u64) -> bool {
    p4d & PAGE_PRESENT != 0
}

/// Whether a PML4 entry carries a flag no table entry has (PS, G, NX, the
/// caching bits): a corrupted entry.
pub const fn p4d_bad(p4d: u64) -> bool {
    p4d & PTE_FLAGS_MASK & !(KERNPG_TABLE | PAGE_USER) != 0
}

/// The PDPT a PML4 entry points to (`p4d_pgtable`).
pub const fn p4d_pgtable(p4d: u64) -> u64 {
    p4d & PTE_PFN_MASK
}

/// `pud_offset`: reads `*p4dp` once and returns the PDPT entry for `addr`.
///
/// # Safety
/// `p4dp` points to a live, populated PML4 entry.
pub unsafe fn pud_offset(p4dp: *mut u64, addr: u64) -> *mut u64 {
    // SAFETY: the caller guarantees a live entry.
    pud_offset_lockless(p4dp, unsafe { read_once(p4dp) }, addr)
}

/// `pud_offset_lockless`: the PDPT entry for `addr` in the table that `p4d`, a
/// value the caller read once from `p4dp`, points to.
pub fn pud_offset_lockless(_p4dp: *mut u64, p4d: u64, addr: u64) -> *mut u64 {
    (p4d_pgtable(p4d) as *mut u64).wrapping_add(pud_index(addr))
}

// ---- pud ------------------------------------------------------------------------------

/// Whether a PDPT entry is empty.
pub const fn pud_none(pud: u64) -> bool {
    pud == 0
}

/// Whether a PDPT entry is present.
pub const fn pud_present(pud: u64) -> bool {
    pud & PAGE_PRESENT != 0
}

/// Whether a PDPT entry is a 1 GiB leaf.
pub const fn pud_leaf(pud: u64) -> bool {
    pud & (PAGE_PRESENT | PAGE_PSE) == PAGE_PRESENT | PAGE_PSE
}

/// Whether a PDPT entry is not a table entry (a leaf counts as bad here, as in
/// Linux: a table walk must not descend into it).
pub const fn pud_bad(pud: u64) -> bool {
    pud & PTE_FLAGS_MASK & !(KERNPG_TABLE | PAGE_USER) != 0
}

/// The page directory a PDPT entry points to (`pud_pgtable`).
pub const fn pud_pgtable(pud: u64) -> u64 {
    pud & PTE_PFN_MASK
}

/// `pmd_offset`: reads `*pudp` once and returns the page-directory entry for
/// `addr`.
///
/// # Safety
/// `pudp` points to a live PDPT entry that points to a page directory.
pub unsafe fn pmd_offset(pudp: *mut u64, addr: u64) -> *mut u64 {
    // SAFETY: the caller guarantees a live entry.
    pmd_offset_lockless(pudp, unsafe { read_once(pudp) }, addr)
}

/// `pmd_offset_lockless`: the page-directory entry for `addr` in the table that
/// `pud` (read once from `pudp`) points to.
pub fn pmd_offset_lockless(_pudp: *mut u64, pud: u64, addr: u64) -> *mut u64 {
    (pud_pgtable(pud) as *mut u64).wrapping_add(pmd_index(addr))
}

// ---- pmd --------------------------------------------------------------------------------

/// Whether a page-directory entry is empty.
pub const fn pmd_none(pmd: u64) -> bool {
    pmd == 0
}

/// Whether a page-directory entry is present.
pub const fn pmd_present(pmd: u64) -> bool {
    pmd & PAGE_PRESENT != 0
}

/// Whether a page-directory entry is a 2 MiB leaf (`pmd_leaf`, formerly
/// `pmd_large`).
pub const fn pmd_leaf(pmd: u64) -> bool {
    pmd & (PAGE_PRESENT | PAGE_PSE) == PAGE_PRESENT | PAGE_PSE
}

/// Whether a page-directory entry is not a table entry (a 2 MiB leaf counts as
/// bad for a table walk).
pub const fn pmd_bad(pmd: u64) -> bool {
    pmd & PTE_FLAGS_MASK & !(KERNPG_TABLE | PAGE_USER) != 0
}

/// The page table a page-directory entry points to (`pmd_page_vaddr`).
pub const fn pmd_page_vaddr(pmd: u64) -> u64 {
    pmd & PTE_PFN_MASK
}

/// The first frame of a 2 MiB leaf (`pmd_pfn`; bit 12 is PAT there, not
/// address).
pub const fn pmd_pfn(pmd: u64) -> u64 {
    (pmd & PMD_PAGE_MASK) >> PAGE_SHIFT
}

/// A 2 MiB leaf mapping the 2 MiB-aligned frame `pfn` with `prot`
/// (`pmd_mkhuge(pfn_pmd(pfn, prot))`).
pub const fn pfn_pmd(pfn: u64, prot: u64) -> u64 {
    ((pfn << PAGE_SHIFT) & PMD_PAGE_MASK) | (prot & PTE_FLAGS_MASK) | PAGE_PSE
}

/// `pte_offset_kernel` / `pte_offset_map`: reads `*pmdp` once and returns the
/// PTE for `addr`.
///
/// # Safety
/// `pmdp` points to a live page-directory entry that points to a page table.
pub unsafe fn pte_offset(pmdp: *mut u64, addr: u64) -> *mut u64 {
    // SAFETY: the caller guarantees a live entry.
    pte_offset_lockless(pmdp, unsafe { read_once(pmdp) }, addr)
}

/// The PTE for `addr` in the page table that `pmd` (read once from `pmdp`)
/// points to.
pub fn pte_offset_lockless(_pmdp: *mut u64, pmd: u64, addr: u64) -> *mut u64 {
    (pmd_page_vaddr(pmd) as *mut u64).wrapping_add(pte_index(addr))
}

// ---- pte --------------------------------------------------------------------------------

/// Whether a PTE is empty: never mapped, or cleared.
pub const fn pte_none(pte: u64) -> bool {
    pte == 0
}

/// Whether a PTE is present for the hardware.
pub const fn pte_present(pte: u64) -> bool {
    pte & PAGE_PRESENT != 0
}

/// Whether a PTE allows stores.
pub const fn pte_write(pte: u64) -> bool {
    pte & PAGE_RW != 0
}

/// Whether the hardware has set the dirty bit (or the PTE was made dirty).
pub const fn pte_dirty(pte: u64) -> bool {
    pte & PAGE_DIRTY != 0
}

/// Whether the accessed bit is set.
pub const fn pte_young(pte: u64) -> bool {
    pte & PAGE_ACCESSED != 0
}

/// The frame a PTE maps.
pub const fn pte_pfn(pte: u64) -> u64 {
    (pte & PTE_PFN_MASK) >> PAGE_SHIFT
}

/// A PTE mapping frame `pfn` with the flags `prot` (`pfn_pte`).
pub const fn pfn_pte(pfn: u64, prot: u64) -> u64 {
    ((pfn << PAGE_SHIFT) & PTE_PFN_MASK) | (prot & PTE_FLAGS_MASK)
}

/// The PTE without write permission.
pub const fn pte_wrprotect(pte: u64) -> u64 {
    pte & !PAGE_RW
}

/// The PTE with write permission.
pub const fn pte_mkwrite(pte: u64) -> u64 {
    pte | PAGE_RW
}

/// The PTE marked dirty.
pub const fn pte_mkdirty(pte: u64) -> u64 {
    pte | PAGE_DIRTY
}

/// The PTE marked clean.
pub const fn pte_mkclean(pte: u64) -> u64 {
    pte & !PAGE_DIRTY
}

/// The PTE marked young.
pub const fn pte_mkyoung(pte: u64) -> u64 {
    pte | PAGE_ACCESSED
}

/// The PTE marked old.
pub const fn pte_mkold(pte: u64) -> u64 {
    pte & !PAGE_ACCESSED
}

// ---- tables -------------------------------------------------------------------------------

/// The upper entry that points to the task table at physical address `table`
/// (`p4d_populate`, `pud_populate`, `pmd_populate`: `_PAGE_TABLE | table`).
pub const fn mk_table_entry(table: u64) -> u64 {
    (table & PTE_PFN_MASK) | PAGE_TABLE
}

/// Fills a new PML4 (`pgd_ctor`): the kernel's entries (below
/// [`USER_PGD_FIRST`] and from [`USER_PGD_END`] on) are copied from
/// `kernel_pgd`, so the new address space shares the kernel's lower tables;
/// the task entries are cleared.
///
/// # Safety
/// `pgd` is a writable 4 KiB table nobody else uses yet; `kernel_pgd` is a
/// live PML4 whose kernel entries do not change while it is read.
pub unsafe fn pgd_ctor(pgd: *mut u64, kernel_pgd: *const u64) {
    for i in 0..PTRS_PER_PGD {
        let entry = if (USER_PGD_FIRST..USER_PGD_END).contains(&i) {
            0
        } else {
            // SAFETY: `i` < 512 indexes inside the live kernel PML4.
            unsafe { read_once(kernel_pgd.add(i)) }
        };
        // SAFETY: `i` < 512 indexes inside the new table, which is ours alone.
        unsafe { core::ptr::write_volatile(pgd.add(i), entry) };
    }
}

/// Whether the task entries of a PML4 are all empty (every lower table freed).
///
/// # Safety
/// `pgd` is a live PML4.
pub unsafe fn pgd_user_empty(pgd: *const u64) -> bool {
    (USER_PGD_FIRST..USER_PGD_END).all(|i| {
        // SAFETY: `i` < 512 indexes inside the live table.
        p4d_none(unsafe { read_once(pgd.add(i)) })
    })
}

/// Walks the tables below the PML4 entry `pgdp` of `addr` the way the hardware
/// does (`lookup_address_in_pgd`): returns the leaf entry that maps `addr` and
/// its level, or `None` when an upper entry on the way is not present or is
/// not a table. The returned 4 KiB entry may itself be non-present.
///
/// # Safety
/// `pgdp` is the live PML4 entry for `addr`, and every table below it stays
/// alive during the walk.
pub unsafe fn lookup_address_in_pgd(pgdp: *mut u64, addr: u64) -> Option<(*mut u64, PgLevel)> {
    // SAFETY: each pointer is derived from an entry read once and checked to
    // be a present table entry, inside tables the caller keeps alive.
    unsafe {
        let p4dp = p4d_offset(pgdp, addr);
        let p4d = read_once(p4dp);
        if !p4d_present(p4d) || p4d_bad(p4d) {
            return None;
        }
        let pudp = pud_offset_lockless(p4dp, p4d, addr);
        let pud = read_once(pudp);
        if pud_leaf(pud) {
            return Some((pudp, PgLevel::Level1G));
        }
        if !pud_present(pud) || pud_bad(pud) {
            return None;
        }
        let pmdp = pmd_offset_lockless(pudp, pud, addr);
        let pmd = read_once(pmdp);
        if pmd_leaf(pmd) {
            return Some((pmdp, PgLevel::Level2M));
        }
        if !pmd_present(pmd) || pmd_bad(pmd) {
            return None;
        }
        Some((pte_offset_lockless(pmdp, pmd, addr), PgLevel::Level4K))
    }
}

/// The physical address `addr` translates to through the PML4 at `pgd`, as the
/// hardware would find it, or `None` if it is not mapped.
///
/// # Safety
/// As [`lookup_address_in_pgd`], for the live PML4 `pgd`.
pub unsafe fn virt_to_phys_walk(pgd: *mut u64, addr: u64) -> Option<u64> {
    // SAFETY: forwarded to the caller.
    let (entryp, level) = unsafe { lookup_address_in_pgd(pgd_offset_pgd(pgd, addr), addr)? };
    // SAFETY: as above; the walk returned a live entry.
    let entry = unsafe { read_once(entryp) };
    if entry & PAGE_PRESENT == 0 {
        return None;
    }
    let base = entry & PTE_PFN_MASK & !(level.size() - 1);
    Some(base | (addr & (level.size() - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// Zeroed 4 KiB tables in host memory, freed on drop.
    struct Tables(Vec<*mut u64>);

    impl Tables {
        fn new() -> Self {
            Self(Vec::new())
        }

        fn table(&mut self) -> *mut u64 {
            let layout = Layout::from_size_align(4096, 4096).unwrap();
            // SAFETY: a non-zero-sized layout.
            let p = unsafe { alloc_zeroed(layout) } as *mut u64;
            assert!(!p.is_null());
            self.0.push(p);
            p
        }
    }

    impl Drop for Tables {
        fn drop(&mut self) {
            let layout = Layout::from_size_align(4096, 4096).unwrap();
            for &p in &self.0 {
                // SAFETY: allocated in `table` with this layout.
                unsafe { dealloc(p as *mut u8, layout) };
            }
        }
    }

    fn set(p: *mut u64, v: u64) {
        // SAFETY: test tables are live for the whole test.
        unsafe { p.write_volatile(v) }
    }

    fn get(p: *mut u64) -> u64 {
        // SAFETY: as in `set`.
        unsafe { read_once(p) }
    }

    /// Populates the upper levels for `addr` down to the PMD entry, the way the
    /// generic `pte_alloc_walk` does through the offset helpers.
    fn walk_alloc_pmd(t: &mut Tables, pgd: *mut u64, addr: u64) -> *mut u64 {
        let pgdp = pgd_offset_pgd(pgd, addr);
        assert!(!pgd_none(get(pgdp)), "folded pgd is never none");
        let p4dp = p4d_offset(pgdp, addr);
        if p4d_none(get(p4dp)) {
            let pud = t.table();
            set(p4dp, mk_table_entry(pud as u64));
        }
        // SAFETY: populated just above.
        let pudp = unsafe { pud_offset(p4dp, addr) };
        if pud_none(get(pudp)) {
            let pmd = t.table();
            set(pudp, mk_table_entry(pmd as u64));
        }
        // SAFETY: populated just above.
        unsafe { pmd_offset(pudp, addr) }
    }

    #[test]
    fn entry_bits_are_the_architectural_ones() {
        assert_eq!(PAGE_PRESENT, 0x1);
        assert_eq!(PAGE_RW, 0x2);
        assert_eq!(PAGE_USER, 0x4);
        assert_eq!(PAGE_PWT | PAGE_PCD, 0x18);
        assert_eq!(PAGE_ACCESSED, 0x20);
        assert_eq!(PAGE_DIRTY, 0x40);
        assert_eq!(PAGE_PSE, 0x80);
        assert_eq!(PAGE_GLOBAL, 0x100);
        assert_eq!(PAGE_NX, 0x8000_0000_0000_0000);
        assert_eq!(PTE_PFN_MASK.count_ones(), 40);
        assert_eq!(PAGE_TABLE, 0x67);
        assert_eq!(KERNPG_TABLE, 0x63);
    }

    #[test]
    fn indices_split_a_canonical_address() {
        let addr =
            (3 << PGDIR_SHIFT) | (5 << PUD_SHIFT) | (7 << PMD_SHIFT) | (9 << PAGE_SHIFT) | 0x123;
        assert_eq!(pgd_index(addr), 3);
        assert_eq!(pud_index(addr), 5);
        assert_eq!(pmd_index(addr), 7);
        assert_eq!(pte_index(addr), 9);
        assert_eq!(pgd_index(TASK_BASE), 4);
        assert_eq!(pgd_index(TASK_SIZE_MAX - 1), 255);
        // The upper canonical half indexes the upper half of the PML4.
        assert_eq!(pgd_index(0xffff_8000_0000_0000), 256);
        assert_eq!(PGDIR_SIZE, 512 << 30);
        assert_eq!(P4D_SIZE, PGDIR_SIZE);
    }

    #[test]
    fn pte_values_and_predicates() {
        let ro = pfn_pte(0x1234, PAGE_READONLY);
        assert!(pte_present(ro) && !pte_write(ro) && !pte_dirty(ro) && pte_young(ro));
        assert!(!pte_none(ro));
        assert_eq!(pte_pfn(ro), 0x1234);
        assert_ne!(ro & PAGE_USER, 0);
        let rw = pfn_pte(0x1234, PAGE_SHARED | PAGE_DIRTY);
        assert!(pte_write(rw) && pte_dirty(rw));
        assert_eq!(pte_wrprotect(rw), ro | PAGE_DIRTY);
        assert_eq!(pte_mkclean(pte_wrprotect(rw)), ro);
        assert_eq!(pte_mkwrite(ro) & PAGE_RW, PAGE_RW);
        assert!(!pte_young(pte_mkold(ro)) && pte_young(pte_mkyoung(pte_mkold(ro))));
        assert!(pte_dirty(pte_mkdirty(ro)));
        // The largest physical address x86-64 allows (52 bits) round-trips;
        // bits beyond it are not taken into the flags.
        let top = (1 << 40) - 1;
        assert_eq!(pte_pfn(pfn_pte(top, PAGE_READONLY)), top);
        assert_eq!(pfn_pte(1 << 40, 0), 0);
        assert!(pte_none(0) && !pte_present(0));
        // A cleared-but-not-none entry (flags only) is not present.
        assert!(!pte_present(PAGE_DIRTY) && !pte_none(PAGE_DIRTY));
    }

    #[test]
    fn map_and_walk_4k() {
        let mut t = Tables::new();
        let pgd = t.table();
        let addr = TASK_BASE + 0x1234_5000;
        let pmdp = walk_alloc_pmd(&mut t, pgd, addr);
        assert!(pmd_none(get(pmdp)));
        let pte_table = t.table();
        set(pmdp, mk_table_entry(pte_table as u64));
        assert!(pmd_present(get(pmdp)) && !pmd_bad(get(pmdp)) && !pmd_leaf(get(pmdp)));
        // SAFETY: populated just above.
        let ptep = unsafe { pte_offset(pmdp, addr) };
        assert_eq!(ptep, pte_table.wrapping_add(pte_index(addr)));
        assert_eq!(
            virt_to_phys_walk_safe(pgd, addr),
            None,
            "an empty PTE maps nothing"
        );
        set(ptep, pfn_pte(0xabcde, PAGE_SHARED));
        assert_eq!(virt_to_phys_walk_safe(pgd, addr + 0x42), Some(0xabcde042));
        // The neighbouring page uses the next PTE and is still unmapped.
        assert_eq!(virt_to_phys_walk_safe(pgd, addr + PAGE_SIZE), None);
        let pgdp = pgd_offset_pgd(pgd, addr);
        // SAFETY: live tables.
        let (leaf, level) = unsafe { lookup_address_in_pgd(pgdp, addr) }.unwrap();
        assert_eq!((leaf, level), (ptep, PgLevel::Level4K));
        // Another address in the same PMD range shares every upper table.
        let other = addr + 17 * PAGE_SIZE;
        assert_eq!(walk_alloc_pmd(&mut t, pgd, other), pmdp);
        assert_eq!(t.0.len(), 4);
    }

    #[test]
    fn map_and_walk_2m() {
        let mut t = Tables::new();
        let pgd = t.table();
        let addr = TASK_BASE + 5 * PMD_SIZE;
        let pmdp = walk_alloc_pmd(&mut t, pgd, addr);
        let pmd = pfn_pmd(0x4_0000, PAGE_SHARED);
        assert_eq!(pmd & PAGE_PSE, PAGE_PSE);
        set(pmdp, pmd);
        assert!(pmd_leaf(pmd) && pmd_bad(pmd) && pmd_present(pmd));
        assert_eq!(pmd_pfn(pmd), 0x4_0000);
        // The PAT bit of a large leaf is not part of its address.
        assert_eq!(pmd_pfn(pmd | PAGE_PAT_LARGE), 0x4_0000);
        let pgdp = pgd_offset_pgd(pgd, addr);
        // SAFETY: live tables.
        let (leaf, level) = unsafe { lookup_address_in_pgd(pgdp, addr + 0x1_2345) }.unwrap();
        assert_eq!((leaf, level), (pmdp, PgLevel::Level2M));
        assert_eq!(
            virt_to_phys_walk_safe(pgd, addr + 0x1_2345),
            Some((0x4_0000 << PAGE_SHIFT) + 0x1_2345)
        );
        assert_eq!(
            virt_to_phys_walk_safe(pgd, addr + PMD_SIZE - 1),
            Some((0x4_0000 << PAGE_SHIFT) + PMD_SIZE - 1)
        );
        assert_eq!(virt_to_phys_walk_safe(pgd, addr + PMD_SIZE), None);
    }

    #[test]
    fn p4d_is_folded_into_pgd() {
        let mut t = Tables::new();
        let pgd = t.table();
        let addr = TASK_BASE + 3 * PGDIR_SIZE + 0x1000;
        let pgdp = pgd_offset_pgd(pgd, addr);
        assert_eq!(pgdp, pgd.wrapping_add(7));
        assert_eq!(p4d_offset(pgdp, addr), pgdp);
        assert_eq!(p4d_offset_lockless(pgdp, 0, addr), pgdp);
        // The pgd level never reports an empty or bad entry; the p4d checks of
        // the same entry do the work.
        assert!(!pgd_none(0) && !pgd_bad(u64::MAX));
        assert!(p4d_none(get(pgdp)));
        let pud = t.table();
        set(pgdp, mk_table_entry(pud as u64));
        assert!(!p4d_none(get(pgdp)) && p4d_present(get(pgdp)) && !p4d_bad(get(pgdp)));
        assert_eq!(p4d_pgtable(get(pgdp)), pud as u64);
        assert!(p4d_bad(get(pgdp) | PAGE_PSE));
        assert!(p4d_bad(get(pgdp) | PAGE_NX));
    }

    #[test]
    fn lockless_helpers_use_the_value_read_once() {
        let mut t = Tables::new();
        let pgd = t.table();
        let addr = TASK_BASE + 0x4000_0000 + 0x20_3000;
        let pmdp = walk_alloc_pmd(&mut t, pgd, addr);
        let pte_table = t.table();
        set(pmdp, mk_table_entry(pte_table as u64));
        let p4dp = p4d_offset(pgd_offset_pgd(pgd, addr), addr);
        // SAFETY: live tables.
        let pudp = unsafe { pud_offset(p4dp, addr) };

        // A lockless walker read each entry once...
        let p4d = get(p4dp);
        let pud = get(pudp);
        let pmd = get(pmdp);
        // ...then another CPU replaced the PDPT and cleared the PMD entry.
        let new_pud_table = t.table();
        set(p4dp, mk_table_entry(new_pud_table as u64));
        set(pmdp, 0);

        // The lockless helpers stay in the tables the walker saw.
        assert_eq!(pud_offset_lockless(p4dp, p4d, addr), pudp);
        assert_eq!(pmd_offset_lockless(pudp, pud, addr), pmdp);
        assert_eq!(
            pte_offset_lockless(pmdp, pmd, addr),
            pte_table.wrapping_add(pte_index(addr))
        );
        // The locking helpers re-read the live entries.
        // SAFETY: live tables.
        let fresh = unsafe { pud_offset(p4dp, addr) };
        assert_eq!(fresh, new_pud_table.wrapping_add(pud_index(addr)));
    }

    #[test]
    fn pgd_ctor_shares_kernel_entries_only() {
        let mut t = Tables::new();
        let kernel = t.table();
        for i in [0, 1, 3, 4, 100, 255, 256, 511] {
            set(
                kernel.wrapping_add(i),
                mk_table_entry(0x1000 * (i as u64 + 1)),
            );
        }
        let pgd = t.table();
        for i in 0..512 {
            set(pgd.wrapping_add(i), 0xdead_0000 | PAGE_PRESENT);
        }
        // SAFETY: two live tables.
        unsafe { pgd_ctor(pgd, kernel) };
        for i in 0..512 {
            let want = if (4..256).contains(&i) {
                0
            } else {
                get(kernel.wrapping_add(i))
            };
            assert_eq!(get(pgd.wrapping_add(i)), want, "entry {i}");
        }
        // SAFETY: live table.
        assert!(unsafe { pgd_user_empty(pgd) });
        set(pgd.wrapping_add(USER_PGD_FIRST), mk_table_entry(0x5000));
        // SAFETY: live table.
        assert!(!unsafe { pgd_user_empty(pgd) });
    }

    #[test]
    fn bad_upper_entries_are_not_tables() {
        let table = mk_table_entry(0x7000);
        assert!(!pud_bad(table) && !pmd_bad(table) && !p4d_bad(table));
        // A kernel table entry (no user bit, hardware-set accessed bit) is good.
        assert!(!pud_bad(0x7000 | KERNPG_TABLE));
        // A leaf or a cached-disabled/global entry is not a table.
        assert!(pud_bad(table | PAGE_PSE) && pud_leaf(table | PAGE_PSE));
        assert!(pmd_bad(table | PAGE_GLOBAL));
        assert!(!pud_leaf(PAGE_PSE), "a non-present entry is no leaf");
    }

    fn virt_to_phys_walk_safe(pgd: *mut u64, addr: u64) -> Option<u64> {
        // SAFETY: the tests' tables are alive while they walk them.
        unsafe { virt_to_phys_walk(pgd, addr) }
    }
}
