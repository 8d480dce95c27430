//! The z/Architecture DAT table format, Linux's offset helpers with dynamic
//! folding, `crst_table_upgrade`, the kernel's 1:1 map builder and a model of
//! the hardware walk.
//!
//! Design. DAT translates a 64-bit virtual address through up to five levels:
//! region-first (bits 0-10 of the address, i.e. `addr >> 53`), region-second
//! (`>> 42`), region-third (`>> 31`), segment (`>> 20`) and page table
//! (`>> 12`, 8 bits). Region and segment tables ("CRSTs", combined region and
//! segment tables) have 2048 entries of 8 bytes (16 KiB, an order-2 allocation);
//! page tables have 256 entries (2 KiB, two per frame). The address-space-control
//! element (ASCE) names the top table and its type, so an address space needs
//! only as many levels as its highest address: Linux starts every mm with a
//! region-third table (3 levels, 4 TiB) and upgrades it in place to 4 levels
//! (8 PiB) or 5 levels (2^64) when a mapping above the limit is requested
//! ([`crst_table_upgrade`]): a new top table whose entry 0 points to the old top.
//!
//! Linux names the levels `pgd` (region-first), `p4d` (region-second), `pud`
//! (region-third), `pmd` (segment) and `pte`. In an mm with fewer levels the
//! missing upper ones are folded onto the top table, *dynamically*: every region
//! and segment entry carries its table's type in bits 60-61, empty entries too,
//! and the offset helpers decide from that type whether to descend or to return
//! the pointer they were given ([`p4d_offset`] of a region-third entry returns
//! the pgd pointer itself). [`pgd_offset_raw`] picks the index shift from the type
//! of the top table's *first* entry. The `_lockless` variants take the entry's
//! value, read once by the caller, together with the pointer it was read from
//! (the fix of d3f7b1bb2040): a walker that hands a stack copy to the plain
//! helpers gets the copy's address back for a folded level.
//!
//! PTEs follow Linux (3.9 and later): the hardware bits are invalid (0x400) and
//! protection (0x200); present, young, dirty, read and write are software bits,
//! so a PTE is writable for the hardware only if it is write *and* dirty, and
//! valid only if it is young. Empty is exactly [`PAGE_INVALID`].
//!
//! Invariants:
//! - every entry of a region or segment table carries the table's type bits,
//!   also when invalid (tables are initialised with [`crst_table_init`]);
//! - a region-third table is never a top table of fewer than 3 levels: the
//!   kernel and every mm start at 3 levels and only grow;
//! - table addresses are those of the kernel's 1:1 map (in host tests: host
//!   pointers), so an entry's origin is also where the table is read.

use core::ptr;

/// Base page shift.
pub const PAGE_SHIFT: u32 = 12;
/// Base page size.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of a page's address.
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);

// ---- PTE bits ----------------------------------------------------------------

/// Hardware: instruction-execution protection (only with CR0 IEP, never set here).
pub const PAGE_NOEXEC: u64 = 0x100;
/// Hardware: stores through this PTE raise a protection exception.
pub const PAGE_PROTECT: u64 = 0x200;
/// Hardware: the PTE is invalid for translation.
pub const PAGE_INVALID: u64 = 0x400;
/// Hardware bit 52: must be zero in a 4 KiB PTE (translation specification).
pub const PAGE_LARGE: u64 = 0x800;
/// Software: the PTE maps a page (possibly invalid for the hardware: old).
pub const PAGE_PRESENT: u64 = 0x001;
/// Software: young (accessed). A present PTE is hardware-valid only when young.
pub const PAGE_YOUNG: u64 = 0x004;
/// Software: dirty. A writable PTE is hardware-writable only when dirty.
pub const PAGE_DIRTY: u64 = 0x008;
/// Software: reads allowed.
pub const PAGE_READ: u64 = 0x010;
/// Software: writes allowed.
pub const PAGE_WRITE: u64 = 0x020;
/// The kernel's own PTEs (Linux `PAGE_KERNEL_EXEC`: the kernel runs from them).
pub const PAGE_KERNEL: u64 = PAGE_PRESENT | PAGE_READ | PAGE_WRITE | PAGE_YOUNG | PAGE_DIRTY;

// ---- region / segment entry bits ---------------------------------------------

/// Origin of the next-lower region or segment table (4 KiB aligned).
pub const REGION_ENTRY_ORIGIN: u64 = !0xfff;
/// Region protection (EDAT-1 only; never set here).
pub const REGION_ENTRY_PROTECT: u64 = 0x200;
/// Region table offset (TF, bits 56-57): the first quarter of the next table
/// that is present. Always 0 here (full tables).
pub const REGION_ENTRY_OFFSET: u64 = 0xc0;
/// The region entry is invalid.
pub const REGION_ENTRY_INVALID: u64 = 0x20;
/// Table type of a region or segment entry (bits 60-61).
pub const REGION_ENTRY_TYPE_MASK: u64 = 0x0c;
/// Table type: region-first.
pub const REGION_ENTRY_TYPE_R1: u64 = 0x0c;
/// Table type: region-second.
pub const REGION_ENTRY_TYPE_R2: u64 = 0x08;
/// Table type: region-third.
pub const REGION_ENTRY_TYPE_R3: u64 = 0x04;
/// Table length of the next-lower table (TL, bits 62-63): 3 = 4 quarters = all
/// 2048 entries.
pub const REGION_ENTRY_LENGTH: u64 = 0x03;
/// A valid region-first entry, without its origin.
pub const REGION1_ENTRY: u64 = REGION_ENTRY_TYPE_R1 | REGION_ENTRY_LENGTH;
/// An empty region-first entry.
pub const REGION1_ENTRY_EMPTY: u64 = REGION_ENTRY_TYPE_R1 | REGION_ENTRY_INVALID;
/// A valid region-second entry, without its origin.
pub const REGION2_ENTRY: u64 = REGION_ENTRY_TYPE_R2 | REGION_ENTRY_LENGTH;
/// An empty region-second entry.
pub const REGION2_ENTRY_EMPTY: u64 = REGION_ENTRY_TYPE_R2 | REGION_ENTRY_INVALID;
/// A valid region-third entry, without its origin.
pub const REGION3_ENTRY: u64 = REGION_ENTRY_TYPE_R3 | REGION_ENTRY_LENGTH;
/// An empty region-third entry.
pub const REGION3_ENTRY_EMPTY: u64 = REGION_ENTRY_TYPE_R3 | REGION_ENTRY_INVALID;
/// Bits a region entry may carry (Linux `_REGION_ENTRY_BITS`).
pub const REGION_ENTRY_BITS: u64 = 0xffff_ffff_ffff_f22f;

/// Origin of the page table (2 KiB aligned).
pub const SEGMENT_ENTRY_ORIGIN: u64 = !0x7ff;
/// Segment protection: every page of the segment is read-only.
pub const SEGMENT_ENTRY_PROTECT: u64 = 0x200;
/// The segment entry is invalid.
pub const SEGMENT_ENTRY_INVALID: u64 = 0x20;
/// Common segment (never set here: with a private-space ASCE it is a
/// translation-specification exception).
pub const SEGMENT_ENTRY_COMMON: u64 = 0x10;
/// Table type field of a segment entry (always 0).
pub const SEGMENT_ENTRY_TYPE_MASK: u64 = 0x0c;
/// A valid segment entry, without its origin.
pub const SEGMENT_ENTRY: u64 = 0;
/// An empty segment entry.
pub const SEGMENT_ENTRY_EMPTY: u64 = SEGMENT_ENTRY_INVALID;
/// Bits a (non-large) segment entry may carry (Linux `_SEGMENT_ENTRY_BITS`).
pub const SEGMENT_ENTRY_BITS: u64 = 0xffff_ffff_ffff_fe33;

// ---- ASCE bits -------------------------------------------------------------------

/// Origin of the top table.
pub const ASCE_ORIGIN: u64 = !0xfff;
/// Private space: common segments are not used.
pub const ASCE_PRIVATE_SPACE: u64 = 0x100;
/// Storage-alteration event control.
pub const ASCE_ALT_EVENT: u64 = 0x80;
/// Space-switch event control.
pub const ASCE_SPACE_SWITCH: u64 = 0x40;
/// Real space: no tables, virtual = real.
pub const ASCE_REAL_SPACE: u64 = 0x20;
/// Designation type of the top table.
pub const ASCE_TYPE_MASK: u64 = 0x0c;
/// Top table is region-first (5 levels).
pub const ASCE_TYPE_REGION1: u64 = 0x0c;
/// Top table is region-second (4 levels).
pub const ASCE_TYPE_REGION2: u64 = 0x08;
/// Top table is region-third (3 levels).
pub const ASCE_TYPE_REGION3: u64 = 0x04;
/// Top table is a segment table (2 levels; never used here).
pub const ASCE_TYPE_SEGMENT: u64 = 0x00;
/// Table length of the top table: 3 = all 2048 entries.
pub const ASCE_TABLE_LENGTH: u64 = 0x03;

// ---- geometry --------------------------------------------------------------------

/// Entries of a region or segment table.
pub const CRST_ENTRIES: usize = 2048;
/// Entries of a page table.
pub const PTRS_PER_PTE: usize = 256;
/// Bytes of a region or segment table.
pub const CRST_TABLE_SIZE: usize = CRST_ENTRIES * 8;
/// Bytes of a page table.
pub const PAGE_TABLE_SIZE: usize = PTRS_PER_PTE * 8;
/// Frame order of a region or segment table (16 KiB).
pub const CRST_ALLOC_ORDER: u32 = 2;

/// Index shift of a region-first table.
pub const REGION1_SHIFT: u32 = 53;
/// Index shift of a region-second table.
pub const REGION2_SHIFT: u32 = 42;
/// Index shift of a region-third table.
pub const REGION3_SHIFT: u32 = 31;
/// Index shift of a segment table.
pub const SEGMENT_SHIFT: u32 = 20;
/// Bytes one region-first entry maps (8 PiB); also the limit of a 4-level mm.
pub const REGION1_SIZE: u64 = 1 << REGION1_SHIFT;
/// Bytes one region-second entry maps (4 TiB); also the limit of a 3-level mm.
pub const REGION2_SIZE: u64 = 1 << REGION2_SHIFT;
/// Bytes one region-third entry maps (2 GiB).
pub const REGION3_SIZE: u64 = 1 << REGION3_SHIFT;
/// Bytes one segment entry maps (1 MiB).
pub const SEGMENT_SIZE: u64 = 1 << SEGMENT_SHIFT;

/// Linux `PGDIR_SIZE`.
pub const PGDIR_SIZE: u64 = REGION1_SIZE;
/// Linux `P4D_SIZE`.
pub const P4D_SIZE: u64 = REGION2_SIZE;
/// Linux `PUD_SIZE`.
pub const PUD_SIZE: u64 = REGION3_SIZE;
/// Linux `PMD_SIZE`.
pub const PMD_SIZE: u64 = SEGMENT_SIZE;

/// Limit of an mm with a region-third top table (3 levels).
pub const ASCE_LIMIT_3: u64 = REGION2_SIZE;
/// Limit of an mm with a region-second top table (4 levels).
pub const ASCE_LIMIT_4: u64 = REGION1_SIZE;
/// Highest limit (5 levels), Linux's `TASK_SIZE_MAX` (`-PAGE_SIZE`).
pub const TASK_SIZE_MAX: u64 = 0u64.wrapping_sub(PAGE_SIZE);

// ---- indexes -----------------------------------------------------------------------

const CRST_INDEX_MASK: u64 = CRST_ENTRIES as u64 - 1;

/// Index into a region-first table.
pub const fn pgd_index(addr: u64) -> usize {
    ((addr >> REGION1_SHIFT) & CRST_INDEX_MASK) as usize
}
/// Index into a region-second table.
pub const fn p4d_index(addr: u64) -> usize {
    ((addr >> REGION2_SHIFT) & CRST_INDEX_MASK) as usize
}
/// Index into a region-third table.
pub const fn pud_index(addr: u64) -> usize {
    ((addr >> REGION3_SHIFT) & CRST_INDEX_MASK) as usize
}
/// Index into a segment table.
pub const fn pmd_index(addr: u64) -> usize {
    ((addr >> SEGMENT_SHIFT) & CRST_INDEX_MASK) as usize
}
/// Index into a page table.
pub const fn pte_index(addr: u64) -> usize {
    ((addr >> PAGE_SHIFT) & (PTRS_PER_PTE as u64 - 1)) as usize
}

// ---- entry predicates (Linux pXd_none / pXd_bad / pXd_folded) -------------------------

/// The table type bits of a region or segment entry.
pub const fn entry_type(entry: u64) -> u64 {
    entry & REGION_ENTRY_TYPE_MASK
}

/// The pgd level is folded: `pgd` is an entry of a lower table type.
pub const fn pgd_folded(pgd: u64) -> bool {
    entry_type(pgd) < REGION_ENTRY_TYPE_R1
}
/// The p4d level is folded.
pub const fn p4d_folded(p4d: u64) -> bool {
    entry_type(p4d) < REGION_ENTRY_TYPE_R2
}
/// The pud level is folded.
pub const fn pud_folded(pud: u64) -> bool {
    entry_type(pud) < REGION_ENTRY_TYPE_R3
}

/// `pgd_none`: a folded pgd is never none.
pub const fn pgd_none(pgd: u64) -> bool {
    !pgd_folded(pgd) && pgd & REGION_ENTRY_INVALID != 0
}
/// `p4d_none`.
pub const fn p4d_none(p4d: u64) -> bool {
    !p4d_folded(p4d) && p4d == REGION2_ENTRY_EMPTY
}
/// `pud_none`.
pub const fn pud_none(pud: u64) -> bool {
    !pud_folded(pud) && pud == REGION3_ENTRY_EMPTY
}
/// `pmd_none`.
pub const fn pmd_none(pmd: u64) -> bool {
    pmd == SEGMENT_ENTRY_EMPTY
}
/// `pte_none`.
pub const fn pte_none(pte: u64) -> bool {
    pte == PAGE_INVALID
}

/// `pgd_bad`: a region-first entry with bits outside the format.
pub const fn pgd_bad(pgd: u64) -> bool {
    !pgd_folded(pgd) && pgd & !REGION_ENTRY_BITS != 0
}
/// `p4d_bad`: a wrong type for the level, or stray bits.
pub const fn p4d_bad(p4d: u64) -> bool {
    let t = entry_type(p4d);
    if t > REGION_ENTRY_TYPE_R2 {
        return true;
    }
    t == REGION_ENTRY_TYPE_R2 && p4d & !REGION_ENTRY_BITS != 0
}
/// `pud_bad`.
pub const fn pud_bad(pud: u64) -> bool {
    let t = entry_type(pud);
    if t > REGION_ENTRY_TYPE_R3 {
        return true;
    }
    t == REGION_ENTRY_TYPE_R3 && pud & !REGION_ENTRY_BITS != 0
}
/// `pmd_bad`: not a segment entry, or stray bits (no large pages here).
pub const fn pmd_bad(pmd: u64) -> bool {
    entry_type(pmd) != 0 || pmd & !SEGMENT_ENTRY_BITS != 0
}

/// The table a region entry points to (`pgd_deref`, `p4d_deref`, `pud_deref`).
pub const fn region_deref(entry: u64) -> u64 {
    entry & REGION_ENTRY_ORIGIN
}
/// The page table a segment entry points to (`pmd_deref`).
pub const fn pmd_deref(pmd: u64) -> u64 {
    pmd & SEGMENT_ENTRY_ORIGIN
}

// ---- offset helpers ------------------------------------------------------------------

/// Reads a table entry once.
///
/// # Safety
/// `p` points to a live, aligned table entry.
#[inline(always)]
pub unsafe fn read_once(p: *const u64) -> u64 {
    // SAFETY: the caller's contract; a volatile 64-bit load is one access.
    unsafe { ptr::read_volatile(p) }
}

/// `pgd_offset_raw(pgd, addr)`: the top-table entry for `addr`. The index
/// shift comes from the table type of the table's first entry (region-first 53,
/// region-second 42, region-third 31, segment 20), so it always indexes the top
/// table, whatever it is.
///
/// # Safety
/// `pgd` is a live top table of [`CRST_ENTRIES`] entries.
#[inline]
pub unsafe fn pgd_offset_raw(pgd: *mut u64, addr: u64) -> *mut u64 {
    // SAFETY: entry 0 of a live table.
    let rste = unsafe { read_once(pgd) };
    let shift = (entry_type(rste) >> 2) * 11 + 20;
    // SAFETY: the index is below CRST_ENTRIES.
    unsafe { pgd.add(((addr >> shift) & CRST_INDEX_MASK) as usize) }
}

/// `p4d_offset_lockless(pgdp, pgd, addr)`: descends only if `pgd` is a
/// region-first entry; otherwise the p4d level is folded and `pgdp` itself is
/// returned. Decides from `pgd` only: `*pgdp` is not read.
///
/// # Safety
/// `pgd` is a valid entry (or folded); when it is a region-first entry, its
/// origin is a live region-second table.
#[inline]
pub unsafe fn p4d_offset_lockless(pgdp: *mut u64, pgd: u64, addr: u64) -> *mut u64 {
    if entry_type(pgd) >= REGION_ENTRY_TYPE_R1 {
        // SAFETY: the caller's contract; the index is in the table.
        unsafe { (region_deref(pgd) as *mut u64).add(p4d_index(addr)) }
    } else {
        pgdp
    }
}

/// `p4d_offset(pgdp, addr)`: reads `*pgdp` once and decides from it.
///
/// # Safety
/// `pgdp` points to a live entry; see [`p4d_offset_lockless`].
#[inline]
pub unsafe fn p4d_offset(pgdp: *mut u64, addr: u64) -> *mut u64 {
    // SAFETY: the caller's contract.
    unsafe { p4d_offset_lockless(pgdp, read_once(pgdp), addr) }
}

/// `pud_offset_lockless(p4dp, p4d, addr)`: descends only if `p4d` is a
/// region-second (or higher) entry.
///
/// # Safety
/// As [`p4d_offset_lockless`], one level down.
#[inline]
pub unsafe fn pud_offset_lockless(p4dp: *mut u64, p4d: u64, addr: u64) -> *mut u64 {
    if entry_type(p4d) >= REGION_ENTRY_TYPE_R2 {
        // SAFETY: the caller's contract; the index is in the table.
        unsafe { (region_deref(p4d) as *mut u64).add(pud_index(addr)) }
    } else {
        p4dp
    }
}

/// `pud_offset(p4dp, addr)`.
///
/// # Safety
/// As [`p4d_offset`].
#[inline]
pub unsafe fn pud_offset(p4dp: *mut u64, addr: u64) -> *mut u64 {
    // SAFETY: the caller's contract.
    unsafe { pud_offset_lockless(p4dp, read_once(p4dp), addr) }
}

/// `pmd_offset_lockless(pudp, pud, addr)`: descends only if `pud` is a
/// region-third (or higher) entry.
///
/// # Safety
/// As [`p4d_offset_lockless`], two levels down.
#[inline]
pub unsafe fn pmd_offset_lockless(pudp: *mut u64, pud: u64, addr: u64) -> *mut u64 {
    if entry_type(pud) >= REGION_ENTRY_TYPE_R3 {
        // SAFETY: the caller's contract; the index is in the table.
        unsafe { (region_deref(pud) as *mut u64).add(pmd_index(addr)) }
    } else {
        pudp
    }
}

/// `pmd_offset(pudp, addr)`.
///
/// # Safety
/// As [`p4d_offset`].
#[inline]
pub unsafe fn pmd_offset(pudp: *mut u64, addr: u64) -> *mut u64 {
    // SAFETY: the caller's contract.
    unsafe { pmd_offset_lockless(pudp, read_once(pudp), addr) }
}

/// `pte_offset(pmdp, addr)`: the PTE in the page table `*pmdp` points to.
///
/// # Safety
/// `*pmdp` is a valid segment entry pointing to a live page table.
#[inline]
pub unsafe fn pte_offset(pmdp: *mut u64, addr: u64) -> *mut u64 {
    // SAFETY: the caller's contract; the index is below PTRS_PER_PTE.
    unsafe { (pmd_deref(read_once(pmdp)) as *mut u64).add(pte_index(addr)) }
}

// ---- PTE values ------------------------------------------------------------------

/// `pfn_pte`: a present, young PTE for frame `pfn`; writable PTEs are made
/// dirty (hardware-writable), read-only ones protected.
pub const fn pfn_pte(pfn: u64, write: bool) -> u64 {
    let bits = PAGE_PRESENT | PAGE_READ | PAGE_YOUNG;
    let bits = if write {
        bits | PAGE_WRITE | PAGE_DIRTY
    } else {
        bits | PAGE_PROTECT
    };
    (pfn << PAGE_SHIFT) | bits
}
/// The frame a present PTE maps.
pub const fn pte_pfn(pte: u64) -> u64 {
    pte >> PAGE_SHIFT
}
/// `pte_present` (software bit; an old present PTE is hardware-invalid).
pub const fn pte_present(pte: u64) -> bool {
    pte & PAGE_PRESENT != 0
}
/// Whether the hardware translates through the PTE.
pub const fn pte_hw_valid(pte: u64) -> bool {
    pte & PAGE_INVALID == 0
}
/// `pte_write`.
pub const fn pte_write(pte: u64) -> bool {
    pte & PAGE_WRITE != 0
}
/// `pte_dirty`.
pub const fn pte_dirty(pte: u64) -> bool {
    pte & PAGE_DIRTY != 0
}
/// `pte_young`.
pub const fn pte_young(pte: u64) -> bool {
    pte & PAGE_YOUNG != 0
}
/// `pte_wrprotect`: no software write, hardware-protected; dirty stays.
pub const fn pte_wrprotect(pte: u64) -> u64 {
    (pte & !PAGE_WRITE) | PAGE_PROTECT
}
/// `pte_mkwrite`: software write; hardware-writable only if also dirty.
pub const fn pte_mkwrite(pte: u64) -> u64 {
    let pte = pte | PAGE_WRITE;
    if pte & PAGE_DIRTY != 0 {
        pte & !PAGE_PROTECT
    } else {
        pte
    }
}
/// `pte_mkdirty`: software dirty; a writable PTE becomes hardware-writable.
pub const fn pte_mkdirty(pte: u64) -> u64 {
    let pte = pte | PAGE_DIRTY;
    if pte & PAGE_WRITE != 0 {
        pte & !PAGE_PROTECT
    } else {
        pte
    }
}
/// `pte_mkclean`: no software dirty, hardware-protected, so the next store
/// faults and sets the dirty bit again (the software dirty-bit scheme).
pub const fn pte_mkclean(pte: u64) -> u64 {
    (pte & !PAGE_DIRTY) | PAGE_PROTECT
}
/// The kernel's 1:1 PTE of the page at `addr`.
pub const fn kernel_pte(addr: u64) -> u64 {
    (addr & PAGE_MASK) | PAGE_KERNEL
}

// ---- ASCE --------------------------------------------------------------------

/// An address space's top: the top table, its ASCE and the limit that follows
/// from the ASCE type (Linux `mm->pgd`, `mm->context.asce`,
/// `mm->context.asce_limit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsceState {
    /// Address of the top table.
    pub pgd: u64,
    /// The ASCE for control register 1.
    pub asce: u64,
    /// End (exclusive) of what the ASCE translates.
    pub asce_limit: u64,
}

impl AsceState {
    /// A 3-level address space on the region-third table `r3`.
    pub const fn region3(r3: u64) -> Self {
        Self {
            pgd: r3,
            asce: (r3 & ASCE_ORIGIN) | ASCE_TYPE_REGION3 | ASCE_TABLE_LENGTH,
            asce_limit: ASCE_LIMIT_3,
        }
    }

    /// Number of translation levels (3 to 5) from the ASCE type.
    pub const fn levels(&self) -> u32 {
        ((self.asce & ASCE_TYPE_MASK) >> 2) as u32 + 2
    }
}

// ---- table set-up ----------------------------------------------------------------

/// Where tables come from: the kernel's frame allocator in the kernel, the
/// host heap in tests.
pub trait TableAlloc {
    /// A region or segment table: [`CRST_TABLE_SIZE`] bytes, 4 KiB aligned (Linux
    /// gives 16 KiB-aligned order-2 blocks), contents undefined.
    fn alloc_crst(&mut self) -> Option<*mut u64>;
    /// Returns a table from [`TableAlloc::alloc_crst`].
    fn free_crst(&mut self, table: *mut u64);
    /// A page table: [`PAGE_TABLE_SIZE`] bytes, 2 KiB aligned, contents undefined.
    fn alloc_pte_table(&mut self) -> Option<*mut u64>;
}

/// `crst_table_init`: fills a region or segment table with `entry`.
///
/// # Safety
/// `table` is a table of [`CRST_ENTRIES`] entries that nothing else uses yet.
pub unsafe fn crst_table_init(table: *mut u64, entry: u64) {
    for i in 0..CRST_ENTRIES {
        // SAFETY: in bounds of a table we own.
        unsafe { ptr::write_volatile(table.add(i), entry) };
    }
}

/// Fills a page table with empty PTEs.
///
/// # Safety
/// `table` is a page table of [`PTRS_PER_PTE`] entries that nothing else uses yet.
pub unsafe fn pte_table_init(table: *mut u64) {
    for i in 0..PTRS_PER_PTE {
        // SAFETY: in bounds of a table we own.
        unsafe { ptr::write_volatile(table.add(i), PAGE_INVALID) };
    }
}

/// Why [`crst_table_upgrade`] did not upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeError {
    /// `end` is above [`TASK_SIZE_MAX`].
    BeyondTaskSizeMax,
    /// No memory for a new top table.
    OutOfMemory,
}

/// The outcome of an upgrade: the new top and the tables it added (top-down:
/// region-first, region-second), for the mm to free at teardown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The new top.
    pub state: AsceState,
    /// New region-second table (3 → 4 levels), if any.
    pub new_p4d: Option<u64>,
    /// New region-first table (→ 5 levels), if any.
    pub new_pgd: Option<u64>,
}

/// `crst_table_upgrade`: makes an address space reach `end` by putting new top
/// tables above the current one, in place: the new table's entry 0 points to the
/// old top (which maps the lowest part of the new range, so every existing
/// mapping stays where it is), and the ASCE type and limit grow. 3 → 4 levels
/// below 8 PiB, 3 or 4 → 5 levels above. Returns `Ok(None)` when `cur` already
/// reaches `end`.
///
/// Publishing the new state (under the mm's `page_table_lock`) and reloading the
/// ASCE on the CPUs that run the mm are the caller's: the new tables are private
/// until then, and the old top stays valid for CPUs still using the old ASCE.
///
/// # Safety
/// `cur` describes a live address space of at least 3 levels; the caller
/// excludes other upgrades (Linux: `mmap_lock` held for write).
pub unsafe fn crst_table_upgrade(
    cur: AsceState,
    end: u64,
    alloc: &mut impl TableAlloc,
) -> Result<Option<Upgrade>, UpgradeError> {
    debug_assert!(cur.asce_limit >= ASCE_LIMIT_3);
    if end <= cur.asce_limit {
        return Ok(None);
    }
    if end > TASK_SIZE_MAX {
        return Err(UpgradeError::BeyondTaskSizeMax);
    }
    let mut new_p4d = None;
    if cur.asce_limit == ASCE_LIMIT_3 {
        let t = alloc.alloc_crst().ok_or(UpgradeError::OutOfMemory)?;
        // SAFETY: a fresh table.
        unsafe { crst_table_init(t, REGION2_ENTRY_EMPTY) };
        new_p4d = Some(t);
    }
    let mut new_pgd = None;
    if end > ASCE_LIMIT_4 {
        let Some(t) = alloc.alloc_crst() else {
            if let Some(p4d) = new_p4d {
                alloc.free_crst(p4d);
            }
            return Err(UpgradeError::OutOfMemory);
        };
        // SAFETY: a fresh table.
        unsafe { crst_table_init(t, REGION1_ENTRY_EMPTY) };
        new_pgd = Some(t);
    }
    let mut state = cur;
    if let Some(p4d) = new_p4d {
        // p4d_populate: entry 0 of the new region-second table covers
        // [0, 4 TiB), exactly what the old region-third table maps.
        // SAFETY: a fresh, private table.
        unsafe { ptr::write_volatile(p4d, (state.pgd & REGION_ENTRY_ORIGIN) | REGION2_ENTRY) };
        state = AsceState {
            pgd: p4d as u64,
            asce: (p4d as u64 & ASCE_ORIGIN) | ASCE_TYPE_REGION2 | ASCE_TABLE_LENGTH,
            asce_limit: ASCE_LIMIT_4,
        };
    }
    if let Some(pgd) = new_pgd {
        // pgd_populate: entry 0 covers [0, 8 PiB), the region-second table.
        // SAFETY: a fresh, private table.
        unsafe { ptr::write_volatile(pgd, (state.pgd & REGION_ENTRY_ORIGIN) | REGION1_ENTRY) };
        state = AsceState {
            pgd: pgd as u64,
            asce: (pgd as u64 & ASCE_ORIGIN) | ASCE_TYPE_REGION1 | ASCE_TABLE_LENGTH,
            asce_limit: TASK_SIZE_MAX,
        };
    }
    Ok(Some(Upgrade {
        state,
        new_p4d: new_p4d.map(|p| p as u64),
        new_pgd: new_pgd.map(|p| p as u64),
    }))
}

/// Maps `[start, end)` 1:1 with [`PAGE_KERNEL`] PTEs under the region-third
/// table `r3` (the kernel's own map), allocating segment and page tables as
/// needed. Page-aligned bounds; `end` at most [`ASCE_LIMIT_3`]. Returns the
/// number of tables allocated, or `None` when `alloc` ran dry.
///
/// # Safety
/// `r3` is an initialised region-third table that no CPU translates through
/// yet, and so are all tables under it.
pub unsafe fn map_identity(
    r3: *mut u64,
    start: u64,
    end: u64,
    alloc: &mut impl TableAlloc,
) -> Option<usize> {
    debug_assert!(
        start.is_multiple_of(PAGE_SIZE) && end.is_multiple_of(PAGE_SIZE) && end <= ASCE_LIMIT_3
    );
    let mut tables = 0;
    let mut addr = start;
    while addr < end {
        // SAFETY: the indexes are in bounds; every table under `r3` is ours and
        // initialised (by this function or before it).
        unsafe {
            let pudp = r3.add(pud_index(addr));
            if pud_none(read_once(pudp)) {
                let sto = alloc.alloc_crst()?;
                crst_table_init(sto, SEGMENT_ENTRY_EMPTY);
                ptr::write_volatile(pudp, (sto as u64 & REGION_ENTRY_ORIGIN) | REGION3_ENTRY);
                tables += 1;
            }
            let pmdp = pmd_offset(pudp, addr);
            if pmd_none(read_once(pmdp)) {
                let pto = alloc.alloc_pte_table()?;
                pte_table_init(pto);
                ptr::write_volatile(pmdp, (pto as u64 & SEGMENT_ENTRY_ORIGIN) | SEGMENT_ENTRY);
                tables += 1;
            }
            ptr::write_volatile(pte_offset(pmdp, addr), kernel_pte(addr));
        }
        addr += PAGE_SIZE;
    }
    Some(tables)
}

// ---- the hardware walk, modelled ------------------------------------------------------

/// Program-interruption codes of DAT (and what they mean for the walk).
pub mod pgm {
    /// Protection (DAT protection when TEID bit 61 is set).
    pub const PROTECTION: u16 = 0x04;
    /// Segment translation: invalid segment entry, or beyond the table length.
    pub const SEGMENT_TRANSLATION: u16 = 0x10;
    /// Page translation: invalid PTE.
    pub const PAGE_TRANSLATION: u16 = 0x11;
    /// Translation specification: malformed entry.
    pub const TRANSLATION_SPECIFICATION: u16 = 0x12;
    /// ASCE type: the address is beyond what the ASCE's top table reaches.
    pub const ASCE_TYPE: u16 = 0x38;
    /// Region-first translation.
    pub const REGION_FIRST_TRANSLATION: u16 = 0x39;
    /// Region-second translation.
    pub const REGION_SECOND_TRANSLATION: u16 = 0x3a;
    /// Region-third translation.
    pub const REGION_THIRD_TRANSLATION: u16 = 0x3b;
}

/// Translates `vaddr` through `asce` as the CPU's DAT does (full-length tables,
/// no EDAT), for an access that stores if `write`. Returns the real address or
/// the program-interruption code. A model for tests; the kernel never walks
/// for the hardware.
///
/// # Safety
/// Every valid entry reachable from `asce` points to a live table.
pub unsafe fn dat_translate(asce: u64, vaddr: u64, write: bool) -> Result<u64, u16> {
    let top = asce & ASCE_ORIGIN;
    let ty = asce & ASCE_TYPE_MASK;
    // Address bits above what the top table covers must be zero.
    let reach_shift = match ty {
        ASCE_TYPE_REGION1 => 64,
        ASCE_TYPE_REGION2 => 53,
        ASCE_TYPE_REGION3 => 42,
        _ => 31,
    };
    if reach_shift < 64 && vaddr >> reach_shift != 0 {
        return Err(pgm::ASCE_TYPE);
    }
    let levels: [(u64, u32, u16); 4] = [
        (
            REGION_ENTRY_TYPE_R1,
            REGION1_SHIFT,
            pgm::REGION_FIRST_TRANSLATION,
        ),
        (
            REGION_ENTRY_TYPE_R2,
            REGION2_SHIFT,
            pgm::REGION_SECOND_TRANSLATION,
        ),
        (
            REGION_ENTRY_TYPE_R3,
            REGION3_SHIFT,
            pgm::REGION_THIRD_TRANSLATION,
        ),
        (0, SEGMENT_SHIFT, pgm::SEGMENT_TRANSLATION),
    ];
    let first = 3 - (ty >> 2) as usize;
    let mut table = top;
    let mut protect = false;
    for &(tt, shift, code) in &levels[first..] {
        let idx = (vaddr >> shift) & CRST_INDEX_MASK;
        // SAFETY: the caller's contract: `table` is live.
        let entry = unsafe { read_once((table + idx * 8) as *const u64) };
        if entry & REGION_ENTRY_INVALID != 0 {
            return Err(code);
        }
        if entry_type(entry) != tt {
            return Err(pgm::TRANSLATION_SPECIFICATION);
        }
        if tt == 0 {
            protect |= entry & SEGMENT_ENTRY_PROTECT != 0;
            table = entry & SEGMENT_ENTRY_ORIGIN;
        } else {
            table = entry & REGION_ENTRY_ORIGIN;
        }
    }
    // SAFETY: as above, the page table is live.
    let pte = unsafe { read_once((table + pte_index(vaddr) as u64 * 8) as *const u64) };
    if pte & PAGE_INVALID != 0 {
        return Err(pgm::PAGE_TRANSLATION);
    }
    if pte & PAGE_LARGE != 0 {
        return Err(pgm::TRANSLATION_SPECIFICATION);
    }
    if write && (protect || pte & PAGE_PROTECT != 0) {
        return Err(pgm::PROTECTION);
    }
    Ok((pte & PAGE_MASK) | (vaddr & !PAGE_MASK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc, dealloc, Layout};
    use std::vec::Vec;

    /// Host-heap tables, freed when dropped.
    #[derive(Default)]
    struct HostTables {
        live: Vec<(*mut u8, Layout)>,
        fail_after: Option<usize>,
    }

    impl HostTables {
        fn take(&mut self, size: usize, align: usize) -> Option<*mut u64> {
            if let Some(n) = self.fail_after.as_mut() {
                if *n == 0 {
                    return None;
                }
                *n -= 1;
            }
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { alloc(layout) };
            assert!(!p.is_null());
            // Garbage, as a fresh frame may hold.
            // SAFETY: `p` is `size` bytes.
            unsafe { p.write_bytes(0x6b, size) };
            self.live.push((p, layout));
            Some(p.cast())
        }
    }

    impl TableAlloc for HostTables {
        fn alloc_crst(&mut self) -> Option<*mut u64> {
            self.take(CRST_TABLE_SIZE, CRST_TABLE_SIZE)
        }
        fn free_crst(&mut self, table: *mut u64) {
            let i = self
                .live
                .iter()
                .position(|(p, _)| *p == table.cast())
                .unwrap();
            let (p, l) = self.live.swap_remove(i);
            // SAFETY: allocated by `take` with this layout.
            unsafe { dealloc(p, l) };
        }
        fn alloc_pte_table(&mut self) -> Option<*mut u64> {
            self.take(PAGE_TABLE_SIZE, PAGE_TABLE_SIZE)
        }
    }

    impl Drop for HostTables {
        fn drop(&mut self) {
            for (p, l) in self.live.drain(..) {
                // SAFETY: allocated by `take` with this layout.
                unsafe { dealloc(p, l) };
            }
        }
    }

    /// A task mm as the kernel builds one: a region-third top whose first
    /// entry is valid (the shared kernel map of the first 2 GiB).
    struct TestMm {
        state: AsceState,
        tables: HostTables,
    }

    const TASK_BASE: u64 = 2 << 40;

    impl TestMm {
        fn new() -> Self {
            let mut tables = HostTables::default();
            let r3 = tables.alloc_crst().unwrap();
            // SAFETY: fresh tables.
            unsafe {
                crst_table_init(r3, REGION3_ENTRY_EMPTY);
                map_identity(r3, 0, 4 * SEGMENT_SIZE, &mut tables).unwrap();
            }
            Self {
                state: AsceState::region3(r3 as u64),
                tables,
            }
        }

        /// The generic fault path's walk: allocate what is missing, through the
        /// offset helpers only (as kernel/src/mm/pgtable.rs does).
        fn pte_alloc(&mut self, addr: u64) -> *mut u64 {
            assert!(addr < self.state.asce_limit);
            // SAFETY: every table reachable from the top is live and ours.
            unsafe {
                let pgdp = pgd_offset_raw(self.state.pgd as *mut u64, addr);
                if pgd_none(read_once(pgdp)) {
                    let t = self.tables.alloc_crst().unwrap();
                    crst_table_init(t, REGION2_ENTRY_EMPTY);
                    *pgdp = t as u64 | REGION1_ENTRY;
                }
                let p4dp = p4d_offset(pgdp, addr);
                if p4d_none(read_once(p4dp)) {
                    let t = self.tables.alloc_crst().unwrap();
                    crst_table_init(t, REGION3_ENTRY_EMPTY);
                    *p4dp = t as u64 | REGION2_ENTRY;
                }
                let pudp = pud_offset(p4dp, addr);
                if pud_none(read_once(pudp)) {
                    let t = self.tables.alloc_crst().unwrap();
                    crst_table_init(t, SEGMENT_ENTRY_EMPTY);
                    *pudp = t as u64 | REGION3_ENTRY;
                }
                let pmdp = pmd_offset(pudp, addr);
                if pmd_none(read_once(pmdp)) {
                    let t = self.tables.alloc_pte_table().unwrap();
                    pte_table_init(t);
                    *pmdp = t as u64 | SEGMENT_ENTRY;
                }
                pte_offset(pmdp, addr)
            }
        }

        fn map(&mut self, addr: u64, pfn: u64, write: bool) {
            let ptep = self.pte_alloc(addr);
            // SAFETY: a live PTE.
            unsafe {
                assert!(pte_none(*ptep));
                *ptep = pfn_pte(pfn, write);
            }
        }

        /// The locked walk (no allocation): the PTE value, if mapped.
        fn lookup(&self, addr: u64) -> Option<u64> {
            if addr >= self.state.asce_limit {
                return None;
            }
            // SAFETY: as in `pte_alloc`.
            unsafe {
                let pgdp = pgd_offset_raw(self.state.pgd as *mut u64, addr);
                if pgd_none(*pgdp) || pgd_bad(*pgdp) {
                    return None;
                }
                let p4dp = p4d_offset(pgdp, addr);
                if p4d_none(*p4dp) || p4d_bad(*p4dp) {
                    return None;
                }
                let pudp = pud_offset(p4dp, addr);
                if pud_none(*pudp) || pud_bad(*pudp) {
                    return None;
                }
                let pmdp = pmd_offset(pudp, addr);
                if pmd_none(*pmdp) || pmd_bad(*pmdp) {
                    return None;
                }
                let pte = *pte_offset(pmdp, addr);
                (!pte_none(pte)).then_some(pte)
            }
        }

        fn translate(&self, addr: u64, write: bool) -> Result<u64, u16> {
            // SAFETY: all tables live.
            unsafe { dat_translate(self.state.asce, addr, write) }
        }

        fn upgrade(&mut self, end: u64) -> Option<Upgrade> {
            // SAFETY: a live mm; single-threaded test.
            let up = unsafe { crst_table_upgrade(self.state, end, &mut self.tables) }.unwrap();
            if let Some(u) = up {
                self.state = u.state;
            }
            up
        }
    }

    #[test]
    fn entry_bits() {
        assert_eq!(REGION3_ENTRY_EMPTY, 0x24);
        assert_eq!(SEGMENT_ENTRY_EMPTY, 0x20);
        assert!(pte_none(PAGE_INVALID));
        let rw = pfn_pte(0x1234, true);
        assert_eq!(pte_pfn(rw), 0x1234);
        assert!(pte_present(rw) && pte_write(rw) && pte_dirty(rw) && pte_young(rw));
        assert!(pte_hw_valid(rw));
        assert_eq!(rw & (PAGE_PROTECT | PAGE_INVALID | PAGE_LARGE), 0);
        let ro = pfn_pte(0x1234, false);
        assert!(pte_present(ro) && !pte_write(ro) && !pte_dirty(ro) && pte_hw_valid(ro));
        assert_ne!(ro & PAGE_PROTECT, 0);
        let wp = pte_wrprotect(rw);
        assert!(!pte_write(wp) && pte_dirty(wp) && wp & PAGE_PROTECT != 0);
        let clean = pte_mkclean(rw);
        assert!(pte_write(clean) && !pte_dirty(clean) && clean & PAGE_PROTECT != 0);
        assert_eq!(pte_mkdirty(clean), rw, "dirty again: hardware-writable");
        assert_eq!(pte_mkwrite(wp), rw, "a dirty PTE made writable");
        let ro_clean = pte_mkclean(wp);
        assert_ne!(
            pte_mkwrite(ro_clean) & PAGE_PROTECT,
            0,
            "clean: still protected"
        );
        // Empty entries are "none" only at their own level; a folded level never is.
        assert!(pud_none(REGION3_ENTRY_EMPTY));
        assert!(!p4d_none(REGION3_ENTRY_EMPTY) && !pgd_none(REGION3_ENTRY_EMPTY));
        assert!(p4d_none(REGION2_ENTRY_EMPTY) && !pgd_none(REGION2_ENTRY_EMPTY));
        assert!(pgd_none(REGION1_ENTRY_EMPTY));
        // A region-third entry where a segment entry belongs is bad, and the
        // reverse is folded (not bad).
        assert!(pmd_bad(0x1000 | REGION3_ENTRY));
        assert!(!pud_bad(0x1000 | SEGMENT_ENTRY));
        assert!(pud_bad(0x1000 | REGION2_ENTRY));
        assert!(!pud_bad(0x1000 | REGION3_ENTRY));
        let asce = AsceState::region3(0x4000);
        assert_eq!(asce.asce, 0x4000 | 0x04 | 0x03);
        assert_eq!(asce.levels(), 3);
        assert_eq!(TASK_SIZE_MAX, 0xffff_ffff_ffff_f000);
    }

    #[test]
    fn three_level_walk_and_hardware_agree() {
        let mut mm = TestMm::new();
        let a = TASK_BASE + 0x1234_5000;
        mm.map(a, 0x777, true);
        mm.map(a + PAGE_SIZE, 0x778, false);
        assert_eq!(mm.lookup(a).map(pte_pfn), Some(0x777));
        assert_eq!(mm.translate(a + 8, true), Ok(0x777_008));
        assert_eq!(mm.translate(a + PAGE_SIZE, false), Ok(0x778_000));
        assert_eq!(mm.translate(a + PAGE_SIZE, true), Err(pgm::PROTECTION));
        assert_eq!(
            mm.translate(a + 2 * PAGE_SIZE, false),
            Err(pgm::PAGE_TRANSLATION)
        );
        assert_eq!(
            mm.translate(a + SEGMENT_SIZE, false),
            Err(pgm::SEGMENT_TRANSLATION)
        );
        assert_eq!(
            mm.translate(a + REGION3_SIZE, false),
            Err(pgm::REGION_THIRD_TRANSLATION)
        );
        // The kernel part is shared and 1:1.
        assert_eq!(mm.translate(0x2_0008, false), Ok(0x2_0008));
        // Beyond a 3-level mm's 4 TiB: the ASCE does not reach.
        assert_eq!(mm.translate(5 << 40, false), Err(pgm::ASCE_TYPE));
        assert_eq!(mm.lookup(5 << 40), None);
    }

    #[test]
    fn folded_levels_return_the_pointer_they_were_given() {
        let mut mm = TestMm::new();
        let a = TASK_BASE + 0x10_0000;
        mm.map(a, 1, true);
        // SAFETY: live tables.
        unsafe {
            let pgd = mm.state.pgd as *mut u64;
            let pgdp = pgd_offset_raw(pgd, a);
            // The top is a region-third table: pgd_offset indexes it by bits 33-43.
            assert_eq!(pgdp, pgd.add(pud_index(a)));
            let p4dp = p4d_offset(pgdp, a);
            assert_eq!(p4dp, pgdp, "p4d folded onto the pgd pointer");
            let pudp = pud_offset(p4dp, a);
            assert_eq!(pudp, pgdp, "pud folded onto the pgd pointer");
            let pmdp = pmd_offset(pudp, a);
            assert_eq!(pmdp as u64, region_deref(*pgdp) + pmd_index(a) as u64 * 8);
            // A stack copy of the folded entry is returned as is: the walk goes on
            // through the copy (what GUP-fast did before d3f7b1bb2040).
            let mut copy = read_once(pgdp);
            let cp = &mut copy as *mut u64;
            assert_eq!(pud_offset(p4d_offset(cp, a), a), cp);
            // With the lockless helpers and the real pointer, stepping to the next
            // entry equals the helper for the next 2 GiB region (the fix).
            let pgd_val = read_once(pgdp);
            let p4dp = p4d_offset_lockless(pgdp, pgd_val, a);
            let pudp = pud_offset_lockless(p4dp, pgd_val, a);
            let next = (a & !(REGION3_SIZE - 1)) + REGION3_SIZE;
            assert_eq!(
                pudp.add(1),
                pud_offset(p4d_offset(pgd_offset_raw(pgd, next), next), next)
            );
        }
    }

    #[test]
    fn lockless_helpers_decide_from_the_value_passed() {
        let mut mm = TestMm::new();
        // Memory holds a region-third entry (p4d folded), but the value the
        // caller read once is a region-first entry: the value decides, memory is
        // not read again.
        let r2 = mm.tables.alloc_crst().unwrap();
        // SAFETY: fresh table; reads through it stay in bounds.
        unsafe {
            crst_table_init(r2, REGION2_ENTRY_EMPTY);
            let mut slot: u64 = 0x8000 | REGION3_ENTRY;
            let slotp = &mut slot as *mut u64;
            let value = r2 as u64 | REGION1_ENTRY;
            let a = 3u64 << REGION2_SHIFT;
            assert_eq!(p4d_offset_lockless(slotp, value, a), r2.add(3));
            assert_eq!(p4d_offset(slotp, a), slotp, "memory says: folded");
            let r3 = 0x8000u64 | REGION2_ENTRY;
            assert_eq!(
                pud_offset_lockless(slotp, r3, 5 << 31) as u64,
                0x8000 + 5 * 8
            );
            let sto = 0x4000u64 | REGION3_ENTRY;
            assert_eq!(
                pmd_offset_lockless(slotp, sto, 7 << 20) as u64,
                0x4000 + 7 * 8
            );
            assert_eq!(pmd_offset_lockless(slotp, SEGMENT_ENTRY, 7 << 20), slotp);
            assert_eq!(slot, 0x8000 | REGION3_ENTRY, "nothing stored");
        }
    }

    #[test]
    fn upgrade_to_four_and_five_levels_keeps_mappings() {
        let mut mm = TestMm::new();
        let low = TASK_BASE + 0x5000;
        mm.map(low, 0x42, true);
        let old_top = mm.state.pgd;
        assert!(mm.upgrade(ASCE_LIMIT_3).is_none(), "already reaches 4 TiB");

        let up = mm.upgrade(5 << 40).unwrap();
        assert!(up.new_p4d.is_some() && up.new_pgd.is_none());
        assert_eq!(mm.state.asce_limit, ASCE_LIMIT_4);
        assert_eq!(mm.state.levels(), 4);
        // SAFETY: live top table.
        unsafe {
            let top = mm.state.pgd as *mut u64;
            assert_eq!(region_deref(*top), old_top, "entry 0 points to the old top");
            // pgd_offset now indexes the region-second table.
            assert_eq!(pgd_offset_raw(top, 5 << 40), top.add(p4d_index(5 << 40)));
            let pgdp = pgd_offset_raw(top, low);
            assert_eq!(p4d_offset(pgdp, low), pgdp, "p4d still folded at 4 levels");
        }
        assert_eq!(mm.lookup(low).map(pte_pfn), Some(0x42));
        assert_eq!(mm.translate(low, true), Ok(0x42_000));
        assert_eq!(
            mm.translate(0x2_0000, false),
            Ok(0x2_0000),
            "kernel map kept"
        );
        assert_eq!(
            mm.translate(5 << 40, false),
            Err(pgm::REGION_SECOND_TRANSLATION)
        );
        mm.map(5 << 40, 0x43, false);
        assert_eq!(mm.translate((5 << 40) + 1, false), Ok(0x43_001));
        assert_eq!(mm.translate(1 << 60, false), Err(pgm::ASCE_TYPE));

        let up = mm.upgrade(1 << 60).unwrap();
        assert!(up.new_p4d.is_none() && up.new_pgd.is_some());
        assert_eq!(mm.state.asce_limit, TASK_SIZE_MAX);
        assert_eq!(mm.state.levels(), 5);
        for (a, pfn) in [(low, 0x42), (5 << 40, 0x43)] {
            assert_eq!(mm.lookup(a).map(pte_pfn), Some(pfn));
            assert_eq!(mm.translate(a, false), Ok(pfn << PAGE_SHIFT));
        }
        assert_eq!(
            mm.translate(1 << 60, false),
            Err(pgm::REGION_FIRST_TRANSLATION)
        );
        mm.map(1 << 60, 0x44, true);
        assert_eq!(mm.translate(1 << 60, true), Ok(0x44_000));
        // SAFETY: live tables.
        unsafe {
            let top = mm.state.pgd as *mut u64;
            let pgdp = pgd_offset_raw(top, 1 << 60);
            assert_eq!(pgdp, top.add(pgd_index(1 << 60)));
            assert_ne!(
                p4d_offset(pgdp, 1 << 60),
                pgdp,
                "nothing folded at 5 levels"
            );
        }
    }

    #[test]
    fn upgrade_three_to_five_at_once_and_limits() {
        let mut mm = TestMm::new();
        mm.map(TASK_BASE, 9, true);
        let up = mm.upgrade(ASCE_LIMIT_4 + 1).unwrap();
        assert!(up.new_p4d.is_some() && up.new_pgd.is_some());
        assert_eq!(mm.state.levels(), 5);
        assert_eq!(mm.translate(TASK_BASE, false), Ok(9 << PAGE_SHIFT));
        // SAFETY: a live mm.
        let err = unsafe { crst_table_upgrade(mm.state, u64::MAX, &mut mm.tables) };
        assert_eq!(err, Err(UpgradeError::BeyondTaskSizeMax));
        // Out of memory half-way frees what it took and changes nothing.
        let mut mm = TestMm::new();
        mm.tables.fail_after = Some(1);
        let before = mm.tables.live.len();
        // SAFETY: a live mm.
        let err = unsafe { crst_table_upgrade(mm.state, 1 << 60, &mut mm.tables) };
        assert_eq!(err, Err(UpgradeError::OutOfMemory));
        assert_eq!(mm.tables.live.len(), before);
    }

    #[test]
    fn identity_map_translates_one_to_one() {
        let mut tables = HostTables::default();
        let r3 = tables.alloc_crst().unwrap();
        let end = (2u64 << 30) + 3 * SEGMENT_SIZE;
        // SAFETY: fresh tables.
        let n = unsafe {
            crst_table_init(r3, REGION3_ENTRY_EMPTY);
            map_identity(r3, 0, end, &mut tables).unwrap()
        };
        // Two segment tables, one page table per MiB.
        assert_eq!(n, 2 + (end / SEGMENT_SIZE) as usize);
        let asce = AsceState::region3(r3 as u64).asce;
        for a in [0, 0x1fff, 0x2_0000, (1 << 30) + 0x123, end - 8] {
            // SAFETY: live tables.
            assert_eq!(unsafe { dat_translate(asce, a, true) }, Ok(a));
        }
        // SAFETY: live tables.
        unsafe {
            assert_eq!(
                dat_translate(asce, end, false),
                Err(pgm::SEGMENT_TRANSLATION)
            );
            assert_eq!(
                dat_translate(asce, 4 << 30, false),
                Err(pgm::REGION_THIRD_TRANSLATION)
            );
            assert_eq!(dat_translate(asce, 4 << 40, false), Err(pgm::ASCE_TYPE));
        }
        // Running dry is reported.
        let mut dry = HostTables::default();
        dry.fail_after = Some(2);
        let r3 = dry.alloc_crst().unwrap();
        // SAFETY: fresh tables.
        unsafe {
            crst_table_init(r3, REGION3_ENTRY_EMPTY);
            assert_eq!(map_identity(r3, 0, 4 * SEGMENT_SIZE, &mut dry), None);
        }
    }
}
