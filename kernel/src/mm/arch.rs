//! The MMU half of the arch contract: page-table format, the offset helpers of the
//! `pXd_offset` family, live PTE changes, TLB flushes and address-space switches.
//!
//! Linux's five levels are named here as in Linux: `pgd` → `p4d` → `pud` → `pmd` →
//! `pte`. An architecture with fewer levels folds some of them, and folding is the
//! arch's business: x86-64 (4 levels) folds `p4d` statically, so `p4d_offset`
//! returns the `pgd` pointer itself; s390x folds dynamically per mm (a new mm
//! starts with a region-third table on top, so `pgd` and `p4d` are folded onto it,
//! until `crst_table_upgrade`), and its offset helpers decide from the table type
//! found in the entry, exactly as Linux's do. Generic code therefore never indexes
//! a table itself; it always goes through these helpers, which is what makes the
//! folding bug of d3f7b1bb2040 reproducible.
//!
//! Entries are plain `u64` values; the arch interprets them. Table pointers are
//! the tables' addresses in the kernel's address space, which maps RAM 1:1
//! (virtual = physical) on both backends.
//!
//! Rules for live entries (the arch owns them, generic code never stores a PTE):
//! - a PTE is installed with [`Mmu::set_pte_at`] only over an entry that is not
//!   valid;
//! - a valid PTE is removed with [`Mmu::ptep_get_and_clear`]: x86-64 exchanges it
//!   atomically (a hardware D bit set in between is not lost) and leaves the TLB
//!   flush to the caller; s390x invalidates it with IPTE, which purges every CPU's
//!   TLB, before the entry is stored;
//! - write protection goes through [`Mmu::ptep_set_wrprotect`] with the same
//!   split of duties.

use super::mm::Mm;
use super::tlbflush::FlushStrategy;
use crate::Arch;

/// The five page-table levels, in Linux's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Top level of the full tree (s390x region-first, x86-64 PML4).
    Pgd,
    /// s390x region-second; folded into `pgd` on x86-64.
    P4d,
    /// s390x region-third, x86-64 PDPT.
    Pud,
    /// s390x segment table, x86-64 page directory.
    Pmd,
    /// Page table.
    Pte,
}

/// What a new PTE allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PteProt {
    /// Stores allowed.
    pub write: bool,
}

/// How a hardware page fault was raised, decoded by the arch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultInfo {
    /// The faulting virtual address, page-aligned where the hardware reports
    /// only the page (s390x translation-exception identification).
    pub addr: u64,
    /// The access was a store (x86-64: error code W; s390x: the TEID's
    /// fetch/store indication, or a protection exception).
    pub write: bool,
    /// The translation existed and forbade the access (x86-64 P=1; s390x
    /// protection exception 0x04), as opposed to a missing translation.
    pub protection: bool,
    /// Arch-specific interruption code or vector, for reports.
    pub code: u64,
}

/// The MMU operations the generic memory model needs. Every function is
/// implemented by the backend; the constants describe its table geometry.
///
/// # Safety
///
/// Generic unsafe code (the walks of [`crate::mm::pgtable`] and GUP-fast,
/// the named entry stores, the zap, the gather's freeing, collapse and split)
/// dereferences the pointers and table addresses this trait hands out and
/// frees memory on the strength of its flushes. An implementation promises:
///
/// 1. **Entry pointers are live entries.** [`Mmu::pgd_offset`] (for `addr`
///    below [`Mmu::context_limit`]) and, under their stated preconditions,
///    the `pXd_offset` helpers and their `_lockless` forms return an aligned
///    pointer to a `u64` entry inside a live table of that mm (for a folded
///    level: the pointer of the level above, whose entry
///    [`Mmu::entry_none`] never reports empty).
/// 2. **A table entry names the table the walker reads.** For an entry with
///    `!entry_none && entry_is_table`, [`Mmu::entry_table`] is the address
///    (RAM, 1:1 mapped) of the lower table that the hardware walker
///    translates through: a PTE table of [`Mmu::PTRS_PER_PTE`] entries
///    ([`Mmu::PTE_TABLE_SIZE`] bytes, `PTRS_PER_PTE * 8`), an upper table of
///    `PAGE_SIZE << CRST_ORDER` bytes; and `entry_table(l, mk_table_entry(l,
///    t)) == t`. `pte_offset` of such a PMD entry points into that table.
/// 3. **Empty entries map nothing.** A table filled with
///    [`Mmu::empty_entry`] translates nothing for the hardware, and
///    `entry_none(l, empty_entry(l))` holds.
/// 4. **Sizes are what one entry maps.** `PMD_SIZE` … `PGDIR_SIZE` are the
///    spans of one entry of each level (the gather flushes a freed table's
///    span before freeing it), `CRST_ORDER` the order of every upper table.
/// 5. **The kernel's map is in every mm and never changes.** Every mm made
///    by [`Mmu::init_new_context`], and the kernel's own tables, map all RAM
///    1:1 with the kernel's tables, which no `Mmu` operation on an mm
///    changes; [`Mmu::TASK_BASE`] lies above that map. Generic code reads
///    and writes any RAM frame (tables, freed and poisoned frames) at its
///    physical address whichever mm is loaded. [`Mmu::switch_mm`] loads
///    exactly `next`'s tables; [`Mmu::arch_prepare_range`] keeps every
///    mapping and every entry pointer of the mm valid;
///    [`Mmu::destroy_context`] frees only the top tables the arch allocated.
/// 6. **Live entries change only through the arch, by the hardware's rule.**
///    [`Mmu::set_pte_at`] stores over an entry that is not valid;
///    [`Mmu::ptep_get_and_clear`], [`Mmu::ptep_set_wrprotect`] and
///    [`Mmu::pmdp_get_and_clear`] change a valid entry the way the MMU
///    requires and return (for the clears) the value it had: x86-64 with an
///    atomic exchange or AND, so a hardware A/D update in between is not
///    lost; s390x never stores over a valid entry, but invalidates it first
///    with IPTE/IDTE (or CSP(G) with purge under the `csp` strategy), which
///    purges every CPU's TLB, then stores the new value.
/// 7. **`CLEAR_FLUSHES_TLB` is true only when the clear purges.** If true,
///    no CPU translates through an entry once `ptep_get_and_clear` /
///    `pmdp_get_and_clear` returned (immediate page freeing and
///    [`crate::mm::pgtable::pmdp_collapse_flush`] skip the flush on it).
/// 8. **Flushes flush.** When [`Mmu::flush_tlb_page`],
///    [`Mmu::flush_tlb_range`] or [`Mmu::flush_tlb_mm`] returns, no CPU, the
///    caller included, holds a translation of the range for that mm formed
///    from an entry (or through a table) changed before the call: the
///    gather frees pages and tables right after.
/// 9. **Faults are handled or reported.** A fault on a task address is
///    handed to the generic fault handler and the access retried;
///    [`Mmu::probe_load`] / [`Mmu::probe_store`] access memory only through
///    the current translation and turn a fault that no handler resolves
///    into `Err`.
pub unsafe trait Mmu: Arch + Sized {
    /// Per-mm arch state: the top table and, on s390x, the current ASCE and
    /// its limit. Changed only under the mm's `mmap_lock` held for write.
    type Context: Send + Sync;

    /// Entries in a PTE table (x86-64 512, s390x 256).
    const PTRS_PER_PTE: usize;
    /// Bytes in a PTE table (x86-64 4096, s390x 2048): the fragment size.
    const PTE_TABLE_SIZE: usize;
    /// Frame order of an upper-level table (x86-64 0; s390x 2: 16 KiB CRSTs).
    const CRST_ORDER: u32;
    /// Bytes mapped by one PMD entry (x86-64 2 MiB, s390x 1 MiB).
    const PMD_SIZE: u64;
    /// Bytes mapped by one PUD entry (x86-64 1 GiB, s390x 2 GiB).
    const PUD_SIZE: u64;
    /// Bytes mapped by one P4D entry (x86-64 512 GiB as the folded pgd; s390x
    /// 4 TiB).
    const P4D_SIZE: u64;
    /// Bytes mapped by one PGD entry (x86-64 512 GiB; s390x 8 PiB).
    const PGDIR_SIZE: u64;
    /// Whether a PMD can map a huge page (x86-64 2 MiB; not s390x under QEMU).
    const HAS_HUGE_PMD: bool;
    /// Whether [`Mmu::ptep_get_and_clear`] itself purges the entry from every
    /// CPU's TLB (s390x IPTE: true), or leaves a stale entry until the caller
    /// flushes (x86-64: false). The catalogue's rows differ on exactly this.
    const CLEAR_FLUSHES_TLB: bool;
    /// Whether the MMU itself sets a PTE's young and dirty bits on access
    /// (x86-64 A/D: true). s390x keeps reference and change bits per frame, in
    /// the storage key, and its PTE bits are software bits (false).
    const HW_YOUNG_DIRTY: bool;
    /// The storage-key operations, where the machine keeps a storage key per
    /// 4 KiB frame (s390x: `Some(StorageKeyOps::of::<Self>())`, from its
    /// [`StorageKeys`] impl), with a reference and a change bit that the
    /// hardware sets on access through any mapping, from any CPU. `None`
    /// (the default) on arches without keys: generic code that needs keys
    /// takes them from here, or is bounded by [`StorageKeys`].
    const STORAGE_KEYS: Option<StorageKeyOps> = None;
    /// Lowest address for task mappings: above the kernel's 1:1 map of RAM.
    const TASK_BASE: u64;
    /// End (exclusive) of the task address range the arch can ever map.
    const TASK_SIZE_MAX: u64;

    // ---- address spaces -------------------------------------------------

    /// Creates the arch state of a new mm: allocates its top table (which
    /// shares the kernel's 1:1 map of RAM) with the generic frame allocator.
    /// s390x starts with three levels (region-third table, 4 TiB).
    fn init_new_context() -> Option<Self::Context>;
    /// Frees what [`Mmu::init_new_context`] and any upgrades allocated, after
    /// every lower table has been freed by `free_pgtables`.
    fn destroy_context(ctx: &Self::Context);
    /// End (exclusive) of what the mm's current top level can map.
    fn context_limit(ctx: &Self::Context) -> u64;
    /// Makes addresses below `end` mappable (s390x: `crst_table_upgrade` to 4 or
    /// 5 levels in place, keeping every mapping and reloading the ASCE on every
    /// CPU that runs the mm). Called with `mmap_lock` held for write.
    fn arch_prepare_range(mm: &Mm<Self>, end: u64) -> Result<(), &'static str>;
    /// Loads `next`'s tables on the calling CPU (x86-64 CR3; s390x primary ASCE),
    /// so that its loads and stores translate through them. The generic caller
    /// has added the CPU to `next`'s cpumask first.
    ///
    /// # Safety
    /// `next` must stay alive while it is loaded; the kernel's own mapping must
    /// be part of it (it is, by [`Mmu::init_new_context`]).
    unsafe fn switch_mm(next: &Mm<Self>);
    /// Loads the kernel's own tables (no task mm) on the calling CPU.
    fn switch_to_kernel_mm();

    // ---- entries ---------------------------------------------------------

    /// The value a fresh table of `level` is filled with (x86-64 0; s390x the
    /// invalid entry of that table type).
    fn empty_entry(level: Level) -> u64;
    /// Whether an entry of `level` is empty (`pXd_none`).
    fn entry_none(level: Level, entry: u64) -> bool;
    /// Whether a non-empty upper entry points to a lower table (not a leaf,
    /// not malformed): `!pXd_bad`.
    fn entry_is_table(level: Level, entry: u64) -> bool;
    /// The address of the lower table an upper entry points to.
    fn entry_table(level: Level, entry: u64) -> u64;
    /// The upper entry of `level` that points to `table` (`pXd_populate`).
    fn mk_table_entry(level: Level, table: u64) -> u64;

    // ---- offset helpers (Linux's pXd_offset family) -----------------------

    /// `pgd_offset(mm, addr)`: the entry in the mm's top table for `addr`.
    /// On s390x the top table may be a region-third or region-second table.
    fn pgd_offset(ctx: &Self::Context, addr: u64) -> *mut u64;
    /// `p4d_offset(pgdp, addr)`: reads `*pgdp` (once) to decide.
    ///
    /// # Safety
    /// `pgdp` points to a live entry of a top table.
    unsafe fn p4d_offset(pgdp: *mut u64, addr: u64) -> *mut u64;
    /// `pud_offset(p4dp, addr)`.
    ///
    /// # Safety
    /// `p4dp` is what [`Mmu::p4d_offset`] returned for this walk.
    unsafe fn pud_offset(p4dp: *mut u64, addr: u64) -> *mut u64;
    /// `pmd_offset(pudp, addr)`.
    ///
    /// # Safety
    /// `pudp` is what [`Mmu::pud_offset`] returned for this walk.
    unsafe fn pmd_offset(pudp: *mut u64, addr: u64) -> *mut u64;
    /// `pte_offset(pmdp, addr)`: into the PTE table `*pmdp` points to.
    ///
    /// # Safety
    /// `*pmdp` is a populated PMD entry.
    unsafe fn pte_offset(pmdp: *mut u64, addr: u64) -> *mut u64;
    /// `p4d_offset_lockless(pgdp, pgd, addr)`: like `p4d_offset` but decides from
    /// the value `pgd` read once by the caller (d3f7b1bb2040).
    ///
    /// # Safety
    /// `pgdp` is the live entry `pgd` was read from.
    unsafe fn p4d_offset_lockless(pgdp: *mut u64, pgd: u64, addr: u64) -> *mut u64;
    /// `pud_offset_lockless(p4dp, p4d, addr)`.
    ///
    /// # Safety
    /// `p4dp` is the live entry `p4d` was read from.
    unsafe fn pud_offset_lockless(p4dp: *mut u64, p4d: u64, addr: u64) -> *mut u64;
    /// `pmd_offset_lockless(pudp, pud, addr)`.
    ///
    /// # Safety
    /// `pudp` is the live entry `pud` was read from.
    unsafe fn pmd_offset_lockless(pudp: *mut u64, pud: u64, addr: u64) -> *mut u64;

    // ---- PTE values --------------------------------------------------------

    /// A PTE mapping frame `pfn` with `prot` (`pfn_pte`), valid, young and, if
    /// writable, dirty (the generic fault path makes writable PTEs only for
    /// stores, so a dirty mark there is exact).
    fn pfn_pte(pfn: u64, prot: PteProt) -> u64;
    /// The frame a present PTE maps.
    fn pte_pfn(pte: u64) -> u64;
    /// Whether a PTE is empty (never mapped or cleared).
    fn pte_none(pte: u64) -> bool;
    /// Whether a PTE is valid for the hardware.
    fn pte_present(pte: u64) -> bool;
    /// Whether a present PTE allows stores.
    fn pte_write(pte: u64) -> bool;
    /// Whether the hardware (x86-64) or software (s390x) dirty bit is set.
    fn pte_dirty(pte: u64) -> bool;
    /// Whether the accessed/young bit is set.
    fn pte_young(pte: u64) -> bool;
    /// The PTE with the young bit cleared (`pte_mkold`).
    fn pte_mkold(pte: u64) -> u64;
    /// The PTE with the dirty bit cleared (`pte_mkclean`). On s390x a clean PTE
    /// is also hardware-protected, so the next store faults and can set the
    /// software dirty bit.
    fn pte_mkclean(pte: u64) -> u64;
    /// The PTE without write permission (`pte_wrprotect`): stores through it
    /// fault; the dirty bit is kept.
    fn pte_wrprotect(pte: u64) -> u64;
    /// The PTE with write permission (`pte_mkwrite`). On s390x it becomes
    /// hardware-writable only if it is also dirty.
    fn pte_mkwrite(pte: u64) -> u64;
    /// The PTE marked dirty (`pte_mkdirty`); on s390x a writable PTE becomes
    /// hardware-writable with it.
    fn pte_mkdirty(pte: u64) -> u64;

    // ---- PMD leaves (huge pages; only where HAS_HUGE_PMD) -------------------------
    //
    // A PMD leaf maps a whole PMD_SIZE block (x86-64 2 MiB, PSE). Arches
    // without them keep the defaults: `pmd_leaf` is always false and the
    // others are never called.

    /// Whether a PMD entry maps a block itself instead of pointing to a PTE
    /// table (`pmd_leaf`).
    fn pmd_leaf(pmd: u64) -> bool {
        let _ = pmd;
        false
    }
    /// A PMD leaf mapping the PMD_SIZE-aligned block that starts at frame
    /// `pfn` (`pmd_mkhuge(pfn_pmd(pfn, prot))`), young and, if writable,
    /// dirty, like [`Mmu::pfn_pte`].
    fn pfn_pmd(pfn: u64, prot: PteProt) -> u64 {
        let _ = (pfn, prot);
        unreachable!("pfn_pmd: no PMD leaves on this architecture (check HAS_HUGE_PMD)")
    }
    /// The first frame a PMD leaf maps (`pmd_pfn`).
    fn pmd_pfn(pmd: u64) -> u64 {
        let _ = pmd;
        unreachable!("pmd_pfn: no PMD leaves on this architecture (check HAS_HUGE_PMD)")
    }
    /// Whether a PMD leaf allows stores (`pmd_write`).
    fn pmd_write(pmd: u64) -> bool {
        let _ = pmd;
        unreachable!("pmd_write: no PMD leaves on this architecture (check HAS_HUGE_PMD)")
    }
    /// Whether a PMD leaf is dirty (`pmd_dirty`).
    fn pmd_dirty(pmd: u64) -> bool {
        let _ = pmd;
        unreachable!("pmd_dirty: no PMD leaves on this architecture (check HAS_HUGE_PMD)")
    }

    /// Clears a PMD entry (a table entry or a leaf) and returns its old value
    /// (`pmdp_huge_get_and_clear`). Like [`Mmu::ptep_get_and_clear`]: x86-64
    /// exchanges it and leaves the flush to the caller; s390x invalidates
    /// the segment entry and purges every CPU's TLB first (IDTE, or CSP with
    /// purge under that strategy), then stores the empty entry. Generic
    /// callers use [`crate::mm::pgtable::pmdp_collapse_flush`].
    ///
    /// # Safety
    /// `pmdp` is the live PMD entry of `mm` that maps `addr`; the caller
    /// holds `mmap_lock` for write or the `page_table_lock`, so no other
    /// writer changes it.
    unsafe fn pmdp_get_and_clear(mm: &Mm<Self>, addr: u64, pmdp: *mut u64) -> u64;

    // ---- live PTE changes ------------------------------------------------------

    /// Installs `pte` at `ptep`, which holds no valid entry.
    ///
    /// # Safety
    /// `ptep` is an entry of a live PTE table of `mm`, the PTL is held.
    unsafe fn set_pte_at(mm: &Mm<Self>, addr: u64, ptep: *mut u64, pte: u64);
    /// Clears a PTE and returns its old value (x86-64: atomic exchange, no flush;
    /// s390x: IPTE, then the invalid entry is stored).
    ///
    /// # Safety
    /// As [`Mmu::set_pte_at`].
    unsafe fn ptep_get_and_clear(mm: &Mm<Self>, addr: u64, ptep: *mut u64) -> u64;
    /// Clears a present PTE and returns its old value, invalidating no TLB
    /// entry: every CPU's cached translation is left to the machine
    /// (x86-64: the exchange of [`Mmu::ptep_get_and_clear`]; s390x: the
    /// invalid entry stored without IPTE, which Linux never does). Only the
    /// platform probe ([`crate::platform`]) uses it, to ask the machine
    /// whether another CPU still translates through a cleared entry.
    ///
    /// # Safety
    /// As [`Mmu::set_pte_at`]; and the caller flushes the page from every
    /// TLB ([`Mmu::flush_tlb_range`]) before the page is freed or the entry
    /// set again.
    unsafe fn ptep_clear_unflushed(mm: &Mm<Self>, addr: u64, ptep: *mut u64) -> u64;
    /// Makes a present PTE read-only (x86-64: atomic, no flush; s390x: IPTE,
    /// then the protected entry is stored).
    ///
    /// # Safety
    /// As [`Mmu::set_pte_at`].
    unsafe fn ptep_set_wrprotect(mm: &Mm<Self>, addr: u64, ptep: *mut u64);

    // ---- TLB ---------------------------------------------------------------------

    /// Flushes `addr` for `mm` from every CPU that may hold it (x86-64: INVLPG
    /// here and a shootdown IPI to the other CPUs in the mm's cpumask, waiting
    /// for their acknowledgement; s390x: nothing is left after IPTE, so this is a
    /// no-op or a local purge). Called with interrupts enabled.
    fn flush_tlb_page(mm: &Mm<Self>, addr: u64);
    /// Flushes `[start, end)` for `mm` everywhere (s390x: IDTE for the ASCE or
    /// CSPG purge where entries were changed without IPTE).
    fn flush_tlb_range(mm: &Mm<Self>, start: u64, end: u64);
    /// Flushes the calling CPU's TLB entry for `addr` only (x86-64 INVLPG; s390x
    /// PTLB), to set up "stale translation" experiments.
    fn local_flush_tlb_page(addr: u64);
    /// Flushes every translation of `mm` everywhere (x86-64: CR3 reload here
    /// and a full flush on the other CPUs of the cpumask; s390x: IDTE for the
    /// ASCE, or PTLB when only the calling CPU has the mm attached).
    fn flush_tlb_mm(mm: &Mm<Self>);
    /// The strategies [`crate::mm::tlbflush::set_flush_strategy`] accepts;
    /// the first is the default.
    const FLUSH_STRATEGIES: &'static [FlushStrategy];

    // ---- faults ----------------------------------------------------------------------

    /// Loads the 64-bit word at `addr` through the current translation; a fault
    /// that the generic fault handler cannot resolve returns `Err` with what the
    /// hardware reported, instead of failing the run (an exception-table fixup,
    /// as Linux's `copy_from_kernel_nofault`).
    fn probe_load(addr: u64) -> Result<u64, FaultInfo>;
    /// Stores `val` at `addr` like [`Mmu::probe_load`].
    fn probe_store(addr: u64, val: u64) -> Result<(), FaultInfo>;
}

/// Storage keys (s390x): an optional capability of an [`Mmu`], implemented
/// only by arches that keep a key per 4 KiB frame. Generic code reaches it
/// through [`Mmu::STORAGE_KEYS`] (or a `K: StorageKeys` bound); an arch
/// without keys implements nothing, so there are no defaults that panic.
///
/// Keys are per frame, not per mapping: every mapping of the frame, on every
/// CPU, sets the same R and C bits. Values use the `PAGE_*` key bits of this
/// module, the one definition of the key layout (the s390x backend uses
/// them too).
///
/// Not an `unsafe trait`: no unsafe code relies on what a key says (the
/// kernel runs with PSW key 0, so a key never denies an access).
pub trait StorageKeys: Mmu {
    /// Sets frame `pfn`'s storage key to `key` (SSKE; bit 0 is ignored). When
    /// this returns, every CPU, the caller included, sets R and C afresh on
    /// its next access to the frame.
    fn set_storage_key(pfn: u64, key: u8);
    /// Frame `pfn`'s storage key (ISKE).
    fn get_storage_key(pfn: u64) -> u8;
    /// Clears frame `pfn`'s reference bit and returns the old `(R, C)` (RRBE,
    /// from its condition code); C is left as it was.
    fn reset_reference_bit(pfn: u64) -> (bool, bool);
    /// Linux 3.8 `page_test_and_clear_dirty`: reads frame `pfn`'s key and, if
    /// its change bit is set, clears it with SSKE, keeping the access-control,
    /// fetch-protection and reference bits. Returns whether C was set.
    ///
    /// Read and rewrite are two instructions: a store on another CPU between
    /// them sets C, which the rewrite then loses (Linux has the same window
    /// and relies on the page being unmapped first).
    fn page_test_and_clear_dirty(pfn: u64) -> bool {
        let key = Self::get_storage_key(pfn);
        if key & PAGE_CHANGED == 0 {
            return false;
        }
        Self::set_storage_key(pfn, key_clear_changed(key));
        true
    }
}

/// A [`StorageKeys`] implementation as values, for generic code bounded only
/// by [`Mmu`] ([`Mmu::STORAGE_KEYS`]): the same four operations.
#[derive(Clone, Copy)]
pub struct StorageKeyOps {
    set: fn(u64, u8),
    get: fn(u64) -> u8,
    reset_reference: fn(u64) -> (bool, bool),
    test_and_clear_dirty: fn(u64) -> bool,
}

impl StorageKeyOps {
    /// The operations of `K`.
    pub const fn of<K: StorageKeys>() -> Self {
        Self {
            set: K::set_storage_key,
            get: K::get_storage_key,
            reset_reference: K::reset_reference_bit,
            test_and_clear_dirty: K::page_test_and_clear_dirty,
        }
    }
    /// [`StorageKeys::set_storage_key`].
    pub fn set_storage_key(&self, pfn: u64, key: u8) {
        (self.set)(pfn, key);
    }
    /// [`StorageKeys::get_storage_key`].
    pub fn get_storage_key(&self, pfn: u64) -> u8 {
        (self.get)(pfn)
    }
    /// [`StorageKeys::reset_reference_bit`].
    pub fn reset_reference_bit(&self, pfn: u64) -> (bool, bool) {
        (self.reset_reference)(pfn)
    }
    /// [`StorageKeys::page_test_and_clear_dirty`].
    pub fn page_test_and_clear_dirty(&self, pfn: u64) -> bool {
        (self.test_and_clear_dirty)(pfn)
    }
}

// ---- storage-key bits (Linux s390 `asm/page.h`) --------------------------------
//
// The key layout, defined once: a 7-bit key in a byte, `ACC ACC ACC ACC F R C
// 0` (bits 56-62 of the register SSKE and ISKE use; bit 0x01 is not part of
// the key). The s390x backend re-exports these.

/// Access-control bits of a storage key (`_PAGE_ACC_BITS`).
pub const PAGE_ACC_BITS: u8 = 0xf0;
/// Fetch-protection bit (`_PAGE_FP_BIT`).
pub const PAGE_FP_BIT: u8 = 0x08;
/// Reference bit, set by the hardware on any access (`_PAGE_REFERENCED`).
pub const PAGE_REFERENCED: u8 = 0x04;
/// Change bit, set by the hardware on a store (`_PAGE_CHANGED`).
pub const PAGE_CHANGED: u8 = 0x02;
/// The key every frame gets when it is allocated (`PAGE_DEFAULT_KEY`): access
/// key 0, no fetch protection, R and C clear.
pub const PAGE_DEFAULT_KEY: u8 = 0;
/// The seven bits a key has; bit 0x01 of the byte is not part of it.
pub const KEY_MASK: u8 = PAGE_ACC_BITS | PAGE_FP_BIT | PAGE_REFERENCED | PAGE_CHANGED;

/// `key` without its change bit, everything else kept (what
/// `page_test_and_clear_dirty` writes back).
pub const fn key_clear_changed(key: u8) -> u8 {
    key & KEY_MASK & !PAGE_CHANGED
}

/// `key` as RRBE leaves it: the reference bit cleared, the rest kept.
pub const fn key_clear_referenced(key: u8) -> u8 {
    key & KEY_MASK & !PAGE_REFERENCED
}
