//! The kernel's MMU contract for x86-64: address spaces, live PTE changes and
//! the glue from [`Mmu`] to the page-table format ([`pgtable`]) and the TLB
//! code ([`crate::tlb`]) (Linux: `asm/mmu_context.h`, `mm/pgtable.c`,
//! `asm/pgtable.h`).
//!
//! Design. The kernel runs on the boot PML4 built by head.S (`boot_pml4`,
//! Linux's `init_top_pgt`), whose entry 0 maps 0-4 GiB 1:1 with 2 MiB pages. A
//! task mm gets its own PML4 ([`Mmu::init_new_context`]) that copies the
//! kernel's entries outside the task range ([`pgtable::pgd_ctor`]), so it
//! shares the kernel's lower tables and kernel code keeps running with a
//! task's CR3 loaded. Task mappings use PML4 entries 4-255: from
//! [`pgtable::TASK_BASE`] (2 TiB) to [`pgtable::TASK_SIZE_MAX`] (128 TiB). All
//! four levels exist from the start, so [`Mmu::arch_prepare_range`] only checks
//! the limit. `switch_mm` loads CR3 (no PCID: every load flushes the TLB);
//! loading the CR3 that is loaded already is skipped, as Linux's
//! `switch_mm_irqs_off` does for the same mm, so a CPU keeps its TLB entries.
//!
//! Live PTEs change with single atomic instructions, because the hardware
//! walker sets A and D in them concurrently: `ptep_get_and_clear` is an
//! exchange and `ptep_set_wrprotect` a locked AND, never a read-modify-write
//! that could lose a D bit set in between. None of them flushes the TLB; that
//! is the caller's job ([`Mmu::flush_tlb_page`], [`Mmu::flush_tlb_range`]).
//!
//! Invariants:
//! - the kernel's PML4 is never changed after boot, so copying its kernel
//!   entries once per mm is enough (Linux needs `sync_global_pgds`; we do not);
//! - a task PML4 is freed only after every lower table has been freed
//!   (checked in debug builds) and no CPU runs the mm;
//! - table frames come from the frame allocator, which hands out only RAM in
//!   the 1:1-mapped low 4 GiB, so a table's physical address is also its
//!   pointer.

use crate::{tlb, X86_64};
use core::sync::atomic::{AtomicU64, Ordering};
use quiesce_arch_x86_64::pgtable::{self, PAGE_DIRTY, PAGE_RW};
use quiesce_kernel::mm::arch::{FaultInfo, Level, Mmu, PteProt};
use quiesce_kernel::mm::mm::Mm;
use quiesce_kernel::mm::tlbflush::FlushStrategy;
use quiesce_kernel::mm::{page, page_alloc, pgtable as generic_pgtable};

extern "C" {
    /// The kernel's PML4, built by head.S.
    static boot_pml4: u8;
}

/// Physical address of the kernel's PML4 (Linux: `swapper_pg_dir`).
pub fn kernel_pgd() -> u64 {
    // The image is linked at its physical address: the symbol's address is the
    // table's physical address.
    (&raw const boot_pml4) as u64
}

/// The x86-64 part of an mm: its PML4.
pub struct MmContext {
    /// Physical (= kernel virtual) address of the mm's PML4.
    pgd: u64,
}

impl MmContext {
    /// Physical address of the mm's PML4.
    pub fn pgd(&self) -> u64 {
        self.pgd
    }
}

/// Allocates a frame for a PML4 (`pgd_alloc`'s page) from the frame allocator,
/// marked as a page table (`PG_pgtable`). Its contents are left as they are:
/// [`pgtable::pgd_ctor`] writes every entry.
fn pgd_alloc_page() -> Option<u64> {
    let pgd = page_alloc::alloc_pages(0).map(page::page_to_phys)?;
    generic_pgtable::pagetable_ctor(pgd, 0);
    Some(pgd)
}

/// Frees a frame from [`pgd_alloc_page`].
///
/// # Safety
/// `pgd` came from [`pgd_alloc_page`] and is no longer used by anyone.
unsafe fn pgd_free_page(pgd: u64) {
    generic_pgtable::pagetable_dtor(pgd, 0);
    page_alloc::__free_pages(page::phys_to_page(pgd), 0);
}

/// The atomic view of a live entry.
///
/// # Safety
/// `ptep` points to a live, 8-byte aligned table entry.
unsafe fn pte_atomic<'a>(ptep: *mut u64) -> &'a AtomicU64 {
    // SAFETY: the caller guarantees a live, aligned entry; every concurrent
    // writer (other CPUs' atomics, the hardware walker's locked A/D updates)
    // accesses it atomically.
    unsafe { AtomicU64::from_ptr(ptep) }
}

/// Loads `pgd` into CR3 unless it is loaded already.
///
/// # Safety
/// As [`tlb::write_cr3`].
unsafe fn load_cr3(pgd: u64) {
    if tlb::read_cr3_pa() != pgd {
        // SAFETY: forwarded to the caller.
        unsafe { tlb::write_cr3(pgd) };
    }
}

// SAFETY: the numbered promises of `Mmu`:
// 1. the offset helpers are `pgtable`'s 4-level walk (`p4d` folded
//    statically: `p4d_offset` returns the `pgd` pointer, and a PML4 entry of a
//    populated range is never `none`), indexing 512-entry tables at the
//    addresses the entries hold; host-tested in `pgtable`;
// 2. an entry's table address is bits 12-51, the field the hardware walker
//    reads; every table is one 4 KiB frame of 512 entries (PTE_TABLE_SIZE =
//    4096, CRST_ORDER 0); `mk_table_entry` sets exactly that field (P, RW, US
//    on), without PS, so `entry_is_table` holds for it;
// 3. the empty entry is 0: P clear, the walker faults on it;
// 4. PMD_SIZE 2 MiB, PUD_SIZE 1 GiB, P4D/PGDIR_SIZE 512 GiB are the spans of
//    one entry of a 4-level table;
// 5. a task PML4 copies the boot PML4's kernel entries (`pgd_ctor`), which
//    map 0-4 GiB 1:1 and never change after boot; TASK_BASE (2 TiB) is above
//    them; `switch_mm` loads `next`'s PML4 into CR3; `arch_prepare_range`
//    changes nothing (four levels from the start); `destroy_context` frees
//    only the PML4;
// 6. `set_pte_at` is a plain store over a non-present entry;
//    `ptep_get_and_clear` and `pmdp_get_and_clear` are atomic exchanges and
//    `ptep_set_wrprotect` a locked AND, so a hardware A/D update is never lost;
// 7. CLEAR_FLUSHES_TLB is false: the exchange leaves the TLB to the caller;
// 8. the flushes INVLPG (or reload CR3) locally and shoot down every other CPU
//    in the mm's cpumask, waiting for each acknowledgement (IPI or NMI, see
//    `crate::tlb`); a CPU outside the cpumask has switched CR3 since it last
//    ran the mm, and without PCID that flushed its TLB. INVLPG and the CR3
//    load drop paging-structure caches too, so a freed table is not walked;
// 9. the page-fault handler (`crate::fault`) hands task faults to
//    `handle_mm_fault` and returns to retry; `probe_load`/`probe_store` use
//    the exception-table fixup of `crate::fault`.
unsafe impl Mmu for X86_64 {
    type Context = MmContext;

    const PTRS_PER_PTE: usize = pgtable::PTRS_PER_PTE;
    const PTE_TABLE_SIZE: usize = pgtable::PTRS_PER_PTE * 8;
    const CRST_ORDER: u32 = 0;
    const PMD_SIZE: u64 = pgtable::PMD_SIZE;
    const PUD_SIZE: u64 = pgtable::PUD_SIZE;
    const P4D_SIZE: u64 = pgtable::P4D_SIZE;
    const PGDIR_SIZE: u64 = pgtable::PGDIR_SIZE;
    const HAS_HUGE_PMD: bool = true;
    const CLEAR_FLUSHES_TLB: bool = false;
    const HW_YOUNG_DIRTY: bool = true;
    const TASK_BASE: u64 = pgtable::TASK_BASE;
    const TASK_SIZE_MAX: u64 = pgtable::TASK_SIZE_MAX;

    // ---- address spaces ----------------------------------------------------

    fn init_new_context() -> Option<MmContext> {
        let pgd = pgd_alloc_page()?;
        // SAFETY: a fresh page of our own, and the kernel's PML4, which never
        // changes after boot.
        unsafe { pgtable::pgd_ctor(pgd as *mut u64, kernel_pgd() as *const u64) };
        Some(MmContext { pgd })
    }

    fn destroy_context(ctx: &MmContext) {
        debug_assert!(
            // SAFETY: the mm's PML4 is alive until freed below.
            unsafe { pgtable::pgd_user_empty(ctx.pgd as *const u64) },
            "destroy_context: task page tables left in PML4 {:#x}",
            ctx.pgd
        );
        debug_assert!(
            tlb::read_cr3_pa() != ctx.pgd,
            "destroy_context: PML4 still loaded"
        );
        // SAFETY: the contract: every lower table is freed and no CPU runs the
        // mm any more; the PML4 came from `pgd_alloc_page`.
        unsafe { pgd_free_page(ctx.pgd) };
    }

    fn context_limit(_ctx: &MmContext) -> u64 {
        pgtable::TASK_SIZE_MAX
    }

    fn arch_prepare_range(_mm: &Mm<Self>, end: u64) -> Result<(), &'static str> {
        if end > pgtable::TASK_SIZE_MAX {
            Err("beyond the x86-64 task range (128 TiB, 4-level paging)")
        } else {
            Ok(())
        }
    }

    unsafe fn switch_mm(next: &Mm<Self>) {
        // SAFETY: the PML4 shares the kernel's entries (`init_new_context`),
        // and the caller keeps the mm alive while it is loaded.
        unsafe { load_cr3(next.context.pgd) };
    }

    fn switch_to_kernel_mm() {
        // SAFETY: the kernel's own PML4, alive for the whole run.
        unsafe { load_cr3(kernel_pgd()) };
    }

    // ---- entries -------------------------------------------------------------

    fn empty_entry(_level: Level) -> u64 {
        0
    }

    fn entry_none(level: Level, entry: u64) -> bool {
        match level {
            Level::Pgd => pgtable::pgd_none(entry),
            Level::P4d => pgtable::p4d_none(entry),
            Level::Pud => pgtable::pud_none(entry),
            Level::Pmd => pgtable::pmd_none(entry),
            Level::Pte => pgtable::pte_none(entry),
        }
    }

    fn entry_is_table(level: Level, entry: u64) -> bool {
        match level {
            Level::Pgd => !pgtable::pgd_bad(entry),
            Level::P4d => pgtable::p4d_present(entry) && !pgtable::p4d_bad(entry),
            Level::Pud => pgtable::pud_present(entry) && !pgtable::pud_bad(entry),
            Level::Pmd => pgtable::pmd_present(entry) && !pgtable::pmd_bad(entry),
            Level::Pte => false,
        }
    }

    fn entry_table(level: Level, entry: u64) -> u64 {
        match level {
            // The folded pgd "points" where its p4d view does.
            Level::Pgd | Level::P4d => pgtable::p4d_pgtable(entry),
            Level::Pud => pgtable::pud_pgtable(entry),
            Level::Pmd => pgtable::pmd_page_vaddr(entry),
            Level::Pte => panic!("entry_table: a PTE points to no table"),
        }
    }

    fn mk_table_entry(_level: Level, table: u64) -> u64 {
        pgtable::mk_table_entry(table)
    }

    // ---- offset helpers --------------------------------------------------------

    fn pgd_offset(ctx: &MmContext, addr: u64) -> *mut u64 {
        pgtable::pgd_offset_pgd(ctx.pgd as *mut u64, addr)
    }

    unsafe fn p4d_offset(pgdp: *mut u64, addr: u64) -> *mut u64 {
        pgtable::p4d_offset(pgdp, addr)
    }

    unsafe fn pud_offset(p4dp: *mut u64, addr: u64) -> *mut u64 {
        // SAFETY: forwarded to the caller.
        unsafe { pgtable::pud_offset(p4dp, addr) }
    }

    unsafe fn pmd_offset(pudp: *mut u64, addr: u64) -> *mut u64 {
        // SAFETY: forwarded to the caller.
        unsafe { pgtable::pmd_offset(pudp, addr) }
    }

    unsafe fn pte_offset(pmdp: *mut u64, addr: u64) -> *mut u64 {
        // SAFETY: forwarded to the caller.
        unsafe { pgtable::pte_offset(pmdp, addr) }
    }

    unsafe fn p4d_offset_lockless(pgdp: *mut u64, pgd: u64, addr: u64) -> *mut u64 {
        pgtable::p4d_offset_lockless(pgdp, pgd, addr)
    }

    unsafe fn pud_offset_lockless(p4dp: *mut u64, p4d: u64, addr: u64) -> *mut u64 {
        pgtable::pud_offset_lockless(p4dp, p4d, addr)
    }

    unsafe fn pmd_offset_lockless(pudp: *mut u64, pud: u64, addr: u64) -> *mut u64 {
        pgtable::pmd_offset_lockless(pudp, pud, addr)
    }

    // ---- PTE values ----------------------------------------------------------------

    fn pfn_pte(pfn: u64, prot: PteProt) -> u64 {
        let flags = if prot.write {
            pgtable::PAGE_SHARED | PAGE_DIRTY
        } else {
            pgtable::PAGE_READONLY
        };
        pgtable::pfn_pte(pfn, flags)
    }

    fn pte_pfn(pte: u64) -> u64 {
        pgtable::pte_pfn(pte)
    }

    fn pte_none(pte: u64) -> bool {
        pgtable::pte_none(pte)
    }

    fn pte_present(pte: u64) -> bool {
        pgtable::pte_present(pte)
    }

    fn pte_write(pte: u64) -> bool {
        pgtable::pte_write(pte)
    }

    fn pte_dirty(pte: u64) -> bool {
        pgtable::pte_dirty(pte)
    }

    fn pte_young(pte: u64) -> bool {
        pgtable::pte_young(pte)
    }

    fn pte_mkold(pte: u64) -> u64 {
        pgtable::pte_mkold(pte)
    }

    fn pte_mkclean(pte: u64) -> u64 {
        pgtable::pte_mkclean(pte)
    }

    fn pte_wrprotect(pte: u64) -> u64 {
        pgtable::pte_wrprotect(pte)
    }

    fn pte_mkwrite(pte: u64) -> u64 {
        pgtable::pte_mkwrite(pte)
    }

    fn pte_mkdirty(pte: u64) -> u64 {
        pgtable::pte_mkdirty(pte)
    }

    // ---- PMD leaves -------------------------------------------------------------------------

    fn pmd_leaf(pmd: u64) -> bool {
        pgtable::pmd_leaf(pmd)
    }

    fn pfn_pmd(pfn: u64, prot: PteProt) -> u64 {
        // The leaf carries the same permission and A/D bits as a PTE.
        pgtable::pfn_pmd(pfn, Self::pfn_pte(0, prot))
    }

    fn pmd_pfn(pmd: u64) -> u64 {
        pgtable::pmd_pfn(pmd)
    }

    fn pmd_write(pmd: u64) -> bool {
        pgtable::pte_write(pmd)
    }

    fn pmd_dirty(pmd: u64) -> bool {
        pgtable::pte_dirty(pmd)
    }

    unsafe fn pmdp_get_and_clear(_mm: &Mm<Self>, _addr: u64, pmdp: *mut u64) -> u64 {
        // SAFETY: as `set_pte_at`: a live, aligned entry the caller owns.
        let entry = unsafe { pte_atomic(pmdp) };
        // XCHG: atomic against the walker's A/D update of a leaf.
        entry.swap(0, Ordering::SeqCst)
    }

    // ---- live PTE changes ---------------------------------------------------------------

    unsafe fn set_pte_at(_mm: &Mm<Self>, _addr: u64, ptep: *mut u64, pte: u64) {
        // SAFETY: the caller guarantees a live entry of this mm under its PTL.
        let entry = unsafe { pte_atomic(ptep) };
        debug_assert!(
            !pgtable::pte_present(entry.load(Ordering::Relaxed)),
            "set_pte_at over a present PTE"
        );
        // A plain store: the entry is not present, so no walker writes it.
        // Release: the page's contents are written before it is mapped.
        entry.store(pte, Ordering::Release);
    }

    unsafe fn ptep_get_and_clear(_mm: &Mm<Self>, _addr: u64, ptep: *mut u64) -> u64 {
        // SAFETY: as `set_pte_at`.
        let entry = unsafe { pte_atomic(ptep) };
        // XCHG: atomic against the walker's D-bit update (native_ptep_get_and_clear).
        entry.swap(0, Ordering::SeqCst)
    }

    unsafe fn ptep_clear_unflushed(mm: &Mm<Self>, addr: u64, ptep: *mut u64) -> u64 {
        // SAFETY: forwarded: x86-64's clear never flushes.
        unsafe { Self::ptep_get_and_clear(mm, addr, ptep) }
    }

    unsafe fn ptep_set_wrprotect(_mm: &Mm<Self>, _addr: u64, ptep: *mut u64) {
        // SAFETY: as `set_pte_at`.
        let entry = unsafe { pte_atomic(ptep) };
        // LOCK AND: atomic against the walker's D-bit update.
        entry.fetch_and(!PAGE_RW, Ordering::SeqCst);
    }

    // ---- TLB --------------------------------------------------------------------------------

    fn flush_tlb_page(mm: &Mm<Self>, addr: u64) {
        tlb::flush_tlb_page(mm, addr);
    }

    fn flush_tlb_range(mm: &Mm<Self>, start: u64, end: u64) {
        tlb::flush_tlb_mm_range(mm, start, end);
    }

    fn local_flush_tlb_page(addr: u64) {
        tlb::native_flush_tlb_one_user(addr);
    }

    fn flush_tlb_mm(mm: &Mm<Self>) {
        tlb::flush_tlb_mm(mm);
    }

    const FLUSH_STRATEGIES: &'static [FlushStrategy] = &[FlushStrategy::Ipi, FlushStrategy::Nmi];

    // ---- faults ----------------------------------------------------------------------------------

    fn probe_load(addr: u64) -> Result<u64, FaultInfo> {
        crate::fault::probe_load(addr)
    }

    fn probe_store(addr: u64, val: u64) -> Result<(), FaultInfo> {
        crate::fault::probe_store(addr, val)
    }
}
