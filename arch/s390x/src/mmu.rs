//! The MMU: the kernel's address space with DAT on, task address spaces
//! (`Mmu for S390x`), ASCE switching and live PTE changes.
//!
//! Design. At boot, with DAT still off, the boot CPU builds the kernel's 1:1 map
//! of all RAM ([`init_kernel_map`]): a region-third table (3 levels, 4 TiB),
//! segment tables and 4 KiB page tables (QEMU's TCG CPU has no EDAT, so no
//! large pages), allocated from the RAM right after the image, which
//! [`crate::memory`] then keeps away from the frame allocator
//! ([`boot_tables_end`]). Every CPU loads the kernel's ASCE into control
//! register 1 and turns DAT on, then adds DAT to its new PSWs
//! ([`cpu_enable_dat`]): from then on everything, interruption handlers
//! included, runs translated, in primary-space mode. The lowcore still works
//! through prefixing because pages 0 and 1 map to real 0 and 1.
//!
//! A task mm ([`MmContext`]) starts as Linux's does, with a region-third table
//! of its own whose entries covering RAM are copies of the kernel's: they point
//! to the kernel's segment tables, shared, so kernel code, data and stacks
//! translate the same whichever ASCE is loaded. Task mappings live at
//! [`TASK_BASE`] (2 TiB) and above; an mm reaches 4 TiB until
//! [`Mmu::arch_prepare_range`] upgrades it in place to 4 or 5 levels
//! (`crst_table_upgrade`) and reloads the ASCE on every CPU that runs it.
//!
//! Live PTEs follow the s390 rule: a valid PTE is changed only through IPTE
//! (which invalidates it and purges every CPU's TLB), then the new value is
//! stored; an invalid one may be stored directly.
//!
//! Invariants:
//! - the kernel's map never changes after boot, so the copies of its
//!   region-third entries in every mm stay exact;
//! - generic code never frees a table below [`TASK_BASE`] (the shared kernel
//!   segment and page tables), and never the top tables, which
//!   [`Mmu::destroy_context`] frees;
//! - an mm's `pgd`, `asce` and `asce_limit` change only in
//!   [`Mmu::arch_prepare_range`] (mmap_lock held for write), published under
//!   its `page_table_lock`; each CPU's CR1 holds either the kernel's ASCE or
//!   the current ASCE of the mm it runs (reloaded by the upgrade's cross-CPU
//!   call, or by the fault path if a CPU still had the old one).

use crate::{lowcore, sclp, skey, tlb, S390x};
use core::sync::atomic::{AtomicU64, Ordering};
use quiesce_arch_s390x::pgtable::{self as pt, AsceState, TableAlloc, UpgradeError};
use quiesce_kernel::mm::arch::{Level, Mmu, PteProt, StorageKeyOps, StorageKeys};
use quiesce_kernel::mm::mm::{current_mm, Mm};
use quiesce_kernel::mm::tlbflush::{self, FlushStrategy};
use quiesce_kernel::mm::{page, page_alloc, pgtable};
use quiesce_kernel::{kprintln_emergency, smp, Arch};

/// Lowest address of task mappings: 2 TiB, far above the 1:1 map of RAM and in
/// the upper half of what a 3-level mm reaches.
pub const TASK_BASE: u64 = 2 << 40;

extern "C" {
    /// End of the kernel image, .bss included (linker.ld).
    static __image_end: u8;
}

/// The kernel's ASCE (its region-third table, 3 levels), 0 before boot set it.
static KERNEL_ASCE: AtomicU64 = AtomicU64::new(0);
/// The kernel's region-third table.
static KERNEL_PGD: AtomicU64 = AtomicU64::new(0);
/// End of the RAM the kernel's own tables use (after the image).
static BOOT_TABLES_END: AtomicU64 = AtomicU64::new(0);

/// Tables for the kernel's map: bump allocation from the RAM after the image,
/// before the frame allocator exists. Never freed.
struct BootTables {
    next: u64,
    end: u64,
}

impl BootTables {
    fn take(&mut self, size: u64) -> Option<*mut u64> {
        let at = self.next.next_multiple_of(size);
        let end = at.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(core::ptr::with_exposed_provenance_mut(at as usize))
    }
}

impl TableAlloc for BootTables {
    fn alloc_crst(&mut self) -> Option<*mut u64> {
        // 16 KiB-aligned, like an order-2 frame block.
        self.take(pt::CRST_TABLE_SIZE as u64)
    }
    fn free_crst(&mut self, _: *mut u64) {
        unreachable!("the kernel's map is never upgraded");
    }
    fn alloc_pte_table(&mut self) -> Option<*mut u64> {
        self.take(pt::PAGE_TABLE_SIZE as u64)
    }
}

/// The top region tables of task mms (the first region-third table and the
/// region-second and region-first tables of upgrades): order-2 blocks of the
/// frame allocator, marked as page tables (`PG_pgtable`) like every other
/// task table.
struct FrameTables;

impl TableAlloc for FrameTables {
    fn alloc_crst(&mut self) -> Option<*mut u64> {
        let page = page_alloc::alloc_pages(pt::CRST_ALLOC_ORDER)?;
        pgtable::pagetable_ctor(page::page_to_phys(page), pt::CRST_ALLOC_ORDER);
        Some(page::page_address(page).cast())
    }
    fn free_crst(&mut self, table: *mut u64) {
        pgtable::pagetable_dtor(table as u64, pt::CRST_ALLOC_ORDER);
        page_alloc::__free_pages(page::phys_to_page(table as u64), pt::CRST_ALLOC_ORDER);
    }
    fn alloc_pte_table(&mut self) -> Option<*mut u64> {
        // Page tables come from the generic fragment allocator.
        None
    }
}

/// Builds the kernel's 1:1 map of all RAM and turns DAT on on the boot CPU.
/// Boot CPU only, once, DAT off, before anything allocates from RAM beyond the
/// image (the frame allocator starts later, from [`boot_tables_end`] on).
pub fn init_kernel_map() {
    let Some(ram) = sclp::read_storage_size() else {
        panic!("SCLP READ SCP INFO gave no storage size: cannot map RAM");
    };
    let ram = (ram & pt::PAGE_MASK).min(TASK_BASE);
    let image_end = (&raw const __image_end) as u64;
    let mut boot = BootTables {
        next: image_end,
        end: ram,
    };
    let Some(r3) = boot.alloc_crst() else {
        panic!("no RAM after the image for the kernel's page tables");
    };
    // SAFETY: `r3` and every table `map_identity` takes are RAM after the image
    // that nothing uses (the frame allocator does not exist yet and later
    // starts above `BOOT_TABLES_END`); DAT is off, so nothing translates
    // through them yet.
    let tables = unsafe {
        pt::crst_table_init(r3, pt::REGION3_ENTRY_EMPTY);
        pt::map_identity(r3, 0, ram, &mut boot)
    };
    if tables.is_none() {
        panic!("RAM too small for the kernel's page tables");
    }
    let state = AsceState::region3(r3 as u64);
    KERNEL_PGD.store(state.pgd, Ordering::Relaxed);
    BOOT_TABLES_END.store(boot.next.next_multiple_of(pt::PAGE_SIZE), Ordering::Relaxed);
    KERNEL_ASCE.store(state.asce, Ordering::Release);
    cpu_enable_dat();
}

/// End of the kernel's page tables in RAM: the frame allocator gets only RAM
/// above. 0 before [`init_kernel_map`].
pub fn boot_tables_end() -> u64 {
    BOOT_TABLES_END.load(Ordering::Acquire)
}

/// The kernel's ASCE.
pub fn kernel_asce() -> u64 {
    KERNEL_ASCE.load(Ordering::Acquire)
}

/// Loads the kernel's ASCE on the calling CPU, turns DAT on and adds DAT to its
/// new PSWs. Every CPU, first thing (the boot CPU from [`init_kernel_map`]),
/// with interruptions masked.
pub fn cpu_enable_dat() {
    let asce = kernel_asce();
    assert!(asce != 0, "cpu_enable_dat before init_kernel_map");
    // SAFETY: the kernel's tables map all RAM 1:1 and live forever.
    unsafe { tlb::load_primary_asce(asce) };
    let mut old: u8 = 0;
    // SAFETY: STOSM is privileged and only sets the DAT bit of the PSW. The
    // loaded ASCE maps every address this CPU uses (code, stack, lowcore
    // through prefixing, heap) to itself, so execution continues unchanged.
    unsafe {
        core::arch::asm!(
            "stosm 0({p}), {m}",
            p = in(reg_addr) &mut old,
            m = const lowcore::SYSMASK_DAT,
            options(nostack, preserves_flags),
        );
    }
    // SAFETY: the kernel's ASCE is loaded and stays loaded (or a task mm's,
    // which shares the kernel's map).
    unsafe { lowcore::set_new_psws_dat() };
}

/// The arch state of a task mm (Linux `mm->pgd` and `mm->context`).
pub struct MmContext {
    /// The top table (Linux `mm->pgd`).
    pgd: AtomicU64,
    /// The ASCE for control register 1.
    asce: AtomicU64,
    /// End (exclusive) of what the ASCE reaches.
    asce_limit: AtomicU64,
    /// Top tables this context allocated: the first region-third table, and the
    /// region-second and region-first tables of upgrades (0: none).
    crsts: [AtomicU64; 3],
}

impl MmContext {
    /// The current ASCE.
    pub fn asce(&self) -> u64 {
        self.asce.load(Ordering::Acquire)
    }

    fn state(&self) -> AsceState {
        AsceState {
            pgd: self.pgd.load(Ordering::Acquire),
            asce: self.asce.load(Ordering::Acquire),
            asce_limit: self.asce_limit.load(Ordering::Acquire),
        }
    }

    /// Publishes a new top. The ASCE goes last: a CPU that loads it finds the
    /// tables it names complete.
    fn publish(&self, state: AsceState) {
        self.pgd.store(state.pgd, Ordering::Release);
        self.asce_limit.store(state.asce_limit, Ordering::Release);
        self.asce.store(state.asce, Ordering::Release);
    }
}

/// Cross-CPU call after an upgrade: a CPU that runs a task mm reloads its
/// current ASCE and purges its TLB (Linux `__crst_table_upgrade`).
fn reload_user_asce(_: usize) {
    if let Some(mm) = current_mm::<S390x>() {
        // SAFETY: `mm` is the live mm this CPU runs; its ASCE includes the
        // kernel map.
        unsafe { tlb::load_primary_asce(mm.context.asce()) };
        tlb::ptlb();
    }
}

/// If the calling CPU runs a task mm but CR1 still holds an older ASCE of it
/// (an upgrade happened and the cross-CPU reload has not arrived yet), loads
/// the current one. Returns whether it did: the faulting access is then simply
/// retried. Called by the fault path for ASCE-type and region exceptions.
pub fn fixup_stale_asce() -> bool {
    let Some(mm) = current_mm::<S390x>() else {
        return false;
    };
    let asce = mm.context.asce();
    if tlb::primary_asce() == asce {
        return false;
    }
    // SAFETY: as in `reload_user_asce`.
    unsafe { tlb::load_primary_asce(asce) };
    true
}

/// Replaces the valid or invalid PTE `old` at `ptep` (mapping `addr`) with
/// `new` (Linux `ptep_xchg_direct`). A valid entry is first invalidated and
/// purged from every TLB with the selected strategy: IPTE, then the store; or
/// one CSPG with purge that swaps in `new` invalid, then the store of `new`.
///
/// # Safety
/// `ptep` is a live PTE of `addr` under the caller's PTL, holding `old`.
unsafe fn ptep_xchg_direct(ptep: *mut u64, addr: u64, old: u64, new: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        if pt::pte_hw_valid(old) {
            match tlbflush::flush_strategy::<S390x>() {
                FlushStrategy::Csp => {
                    let swapped = tlb::cspg(ptep, old, old | pt::PAGE_INVALID);
                    assert!(swapped, "PTE at {ptep:p} changed under its lock");
                }
                _ => tlb::ipte(ptep, addr),
            }
        }
        ptep.write_volatile(new);
    }
}

fn table_ptr(addr: u64) -> *mut u64 {
    core::ptr::with_exposed_provenance_mut(addr as usize)
}

// SAFETY: the numbered promises of `Mmu`:
// 1. the offset helpers are the library's Linux `pXd_offset` helpers with
//    dynamic folding (`quiesce_arch_s390x::pgtable`, host-tested against a
//    model of the DAT walk): each decides from the table type in the entry and
//    returns the entry pointer itself for a folded level; a folded region
//    entry is never `none`;
// 2. an entry's origin is the table-origin field DAT reads (region/segment
//    origin, page-table origin); region and segment tables are 16 KiB
//    (CRST_ORDER 2, 2048 entries), page tables 2 KiB (256 entries,
//    PTE_TABLE_SIZE = 2048); `mk_table_entry` writes the origin with the
//    table type of the level, so `entry_table` gives it back;
// 3. empty entries have the invalid bit set (and the table type of their
//    level), so DAT raises a translation exception on them;
// 4. PMD_SIZE 1 MiB (a segment), PUD_SIZE 2 GiB (a region-third entry),
//    P4D_SIZE 4 TiB, PGDIR_SIZE 8 PiB are what one entry of each table maps;
// 5. a task region-third table copies the kernel's entries for RAM, pointing
//    to the kernel's shared segment tables, which never change after boot;
//    TASK_BASE (2 TiB) is above them; `switch_mm` loads `next`'s ASCE into
//    CR1; the upgrade (`crst_table_upgrade`) puts a new table on top and
//    keeps the old one, with every entry, in place; `destroy_context` frees
//    the top tables only;
// 6. a valid PTE is never stored over: `ptep_get_and_clear` and
//    `ptep_set_wrprotect` issue IPTE (or CSPG with purge) first, then store;
//    `pmdp_get_and_clear` invalidates the segment entry with IDTE (or CSP with
//    purge) first; `set_pte_at` stores over an invalid entry only;
// 7. CLEAR_FLUSHES_TLB is true: IPTE, IDTE and CSP(G) with purge purge every
//    CPU's TLB synchronously, and the issuing CPU's own purge is completed by
//    the branch that follows them (`crate::tlb`, PLATFORM.md);
// 8. the range and mm flushes issue IDTE for the ASCE (or a CSP purge), which
//    purges every CPU, or PTLB when no other CPU has the mm attached; the
//    page flush has nothing to do: every valid PTE change went through IPTE
//    (promise 6), which purged every TLB already;
// 9. the program-check handler (`crate::fault`) hands translation and
//    protection exceptions on task addresses to `handle_mm_fault` and resumes
//    the access; `probe_load`/`probe_store` use its fixup.
unsafe impl Mmu for S390x {
    type Context = MmContext;

    const PTRS_PER_PTE: usize = pt::PTRS_PER_PTE;
    const PTE_TABLE_SIZE: usize = pt::PAGE_TABLE_SIZE;
    const CRST_ORDER: u32 = pt::CRST_ALLOC_ORDER;
    const PMD_SIZE: u64 = pt::PMD_SIZE;
    const PUD_SIZE: u64 = pt::PUD_SIZE;
    const P4D_SIZE: u64 = pt::P4D_SIZE;
    const PGDIR_SIZE: u64 = pt::PGDIR_SIZE;
    const HAS_HUGE_PMD: bool = false;
    const CLEAR_FLUSHES_TLB: bool = true;
    const HW_YOUNG_DIRTY: bool = false;
    const STORAGE_KEYS: Option<StorageKeyOps> = Some(StorageKeyOps::of::<Self>());
    const TASK_BASE: u64 = TASK_BASE;
    const TASK_SIZE_MAX: u64 = pt::TASK_SIZE_MAX;

    fn init_new_context() -> Option<MmContext> {
        let r3 = FrameTables.alloc_crst()?;
        let kernel = table_ptr(KERNEL_PGD.load(Ordering::Acquire));
        for i in 0..pt::CRST_ENTRIES {
            // SAFETY: both are full region-third tables; `r3` is fresh and ours,
            // the kernel's never changes after boot.
            unsafe { r3.add(i).write_volatile(kernel.add(i).read_volatile()) };
        }
        let state = AsceState::region3(r3 as u64);
        Some(MmContext {
            pgd: AtomicU64::new(state.pgd),
            asce: AtomicU64::new(state.asce),
            asce_limit: AtomicU64::new(state.asce_limit),
            crsts: [
                AtomicU64::new(r3 as u64),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
        })
    }

    fn destroy_context(ctx: &MmContext) {
        for t in &ctx.crsts {
            let table = t.swap(0, Ordering::AcqRel);
            if table != 0 {
                FrameTables.free_crst(table_ptr(table));
            }
        }
    }

    fn context_limit(ctx: &MmContext) -> u64 {
        ctx.asce_limit.load(Ordering::Acquire)
    }

    fn arch_prepare_range(mm: &Mm<Self>, end: u64) -> Result<(), &'static str> {
        let ctx = &mm.context;
        // SAFETY: the mm is live; the caller holds mmap_lock for write, which
        // excludes other upgrades.
        let up = match unsafe { pt::crst_table_upgrade(ctx.state(), end, &mut FrameTables) } {
            Ok(None) => return Ok(()),
            Ok(Some(up)) => up,
            Err(UpgradeError::BeyondTaskSizeMax) => return Err("beyond TASK_SIZE_MAX"),
            Err(UpgradeError::OutOfMemory) => return Err("out of memory for a region table"),
        };
        {
            let _guard = mm.page_table_lock.lock();
            if let Some(t) = up.new_p4d {
                ctx.crsts[1].store(t, Ordering::Release);
            }
            if let Some(t) = up.new_pgd {
                ctx.crsts[2].store(t, Ordering::Release);
            }
            ctx.publish(up.state);
        }
        // Every CPU running the mm switches to the new ASCE. Waiting needs
        // interrupts on; without waiting, a CPU that still uses the old ASCE
        // and touches the new range takes an ASCE-type exception, which the
        // fault path resolves by reloading (`fixup_stale_asce`).
        let irqs_on = !Self::irqs_disabled();
        smp::smp_call_function::<Self>(reload_user_asce, 0, irqs_on);
        let flags = Self::local_irq_save();
        reload_user_asce(0);
        Self::local_irq_restore(flags);
        Ok(())
    }

    unsafe fn switch_mm(next: &Mm<Self>) {
        // SAFETY: the caller keeps `next` alive while loaded; its tables share
        // the kernel's map (init_new_context).
        unsafe { tlb::load_primary_asce(next.context.asce()) };
    }

    fn switch_to_kernel_mm() {
        // SAFETY: the kernel's tables live forever.
        unsafe { tlb::load_primary_asce(kernel_asce()) };
    }

    fn empty_entry(level: Level) -> u64 {
        match level {
            Level::Pgd => pt::REGION1_ENTRY_EMPTY,
            Level::P4d => pt::REGION2_ENTRY_EMPTY,
            Level::Pud => pt::REGION3_ENTRY_EMPTY,
            Level::Pmd => pt::SEGMENT_ENTRY_EMPTY,
            Level::Pte => pt::PAGE_INVALID,
        }
    }

    fn entry_none(level: Level, entry: u64) -> bool {
        match level {
            Level::Pgd => pt::pgd_none(entry),
            Level::P4d => pt::p4d_none(entry),
            Level::Pud => pt::pud_none(entry),
            Level::Pmd => pt::pmd_none(entry),
            Level::Pte => pt::pte_none(entry),
        }
    }

    fn entry_is_table(level: Level, entry: u64) -> bool {
        match level {
            Level::Pgd => !pt::pgd_bad(entry),
            Level::P4d => !pt::p4d_bad(entry),
            Level::Pud => !pt::pud_bad(entry),
            Level::Pmd => !pt::pmd_bad(entry),
            Level::Pte => false,
        }
    }

    fn entry_table(level: Level, entry: u64) -> u64 {
        match level {
            Level::Pgd | Level::P4d | Level::Pud => pt::region_deref(entry),
            Level::Pmd => pt::pmd_deref(entry),
            Level::Pte => entry & pt::PAGE_MASK,
        }
    }

    fn mk_table_entry(level: Level, table: u64) -> u64 {
        match level {
            Level::Pgd => (table & pt::REGION_ENTRY_ORIGIN) | pt::REGION1_ENTRY,
            Level::P4d => (table & pt::REGION_ENTRY_ORIGIN) | pt::REGION2_ENTRY,
            Level::Pud => (table & pt::REGION_ENTRY_ORIGIN) | pt::REGION3_ENTRY,
            Level::Pmd => (table & pt::SEGMENT_ENTRY_ORIGIN) | pt::SEGMENT_ENTRY,
            Level::Pte => panic!("mk_table_entry(Pte): a PTE points to no table"),
        }
    }

    fn pgd_offset(ctx: &MmContext, addr: u64) -> *mut u64 {
        // SAFETY: the mm's top table is live while the mm is (Linux reads
        // `mm->pgd` once, then its first entry).
        unsafe { pt::pgd_offset_raw(table_ptr(ctx.pgd.load(Ordering::Acquire)), addr) }
    }

    unsafe fn p4d_offset(pgdp: *mut u64, addr: u64) -> *mut u64 {
        // SAFETY: the caller's contract.
        unsafe { pt::p4d_offset(pgdp, addr) }
    }

    unsafe fn pud_offset(p4dp: *mut u64, addr: u64) -> *mut u64 {
        // SAFETY: the caller's contract.
        unsafe { pt::pud_offset(p4dp, addr) }
    }

    unsafe fn pmd_offset(pudp: *mut u64, addr: u64) -> *mut u64 {
        // SAFETY: the caller's contract.
        unsafe { pt::pmd_offset(pudp, addr) }
    }

    unsafe fn pte_offset(pmdp: *mut u64, addr: u64) -> *mut u64 {
        // SAFETY: the caller's contract.
        unsafe { pt::pte_offset(pmdp, addr) }
    }

    unsafe fn p4d_offset_lockless(pgdp: *mut u64, pgd: u64, addr: u64) -> *mut u64 {
        // SAFETY: the caller's contract.
        unsafe { pt::p4d_offset_lockless(pgdp, pgd, addr) }
    }

    unsafe fn pud_offset_lockless(p4dp: *mut u64, p4d: u64, addr: u64) -> *mut u64 {
        // SAFETY: the caller's contract.
        unsafe { pt::pud_offset_lockless(p4dp, p4d, addr) }
    }

    unsafe fn pmd_offset_lockless(pudp: *mut u64, pud: u64, addr: u64) -> *mut u64 {
        // SAFETY: the caller's contract.
        unsafe { pt::pmd_offset_lockless(pudp, pud, addr) }
    }

    fn pfn_pte(pfn: u64, prot: PteProt) -> u64 {
        pt::pfn_pte(pfn, prot.write)
    }

    fn pte_pfn(pte: u64) -> u64 {
        pt::pte_pfn(pte)
    }

    fn pte_none(pte: u64) -> bool {
        pt::pte_none(pte)
    }

    fn pte_present(pte: u64) -> bool {
        pt::pte_present(pte)
    }

    fn pte_write(pte: u64) -> bool {
        pt::pte_write(pte)
    }

    fn pte_dirty(pte: u64) -> bool {
        pt::pte_dirty(pte)
    }

    fn pte_young(pte: u64) -> bool {
        pt::pte_young(pte)
    }

    fn pte_mkold(pte: u64) -> u64 {
        pte & !pt::PAGE_YOUNG
    }

    fn pte_mkclean(pte: u64) -> u64 {
        pt::pte_mkclean(pte)
    }

    fn pte_wrprotect(pte: u64) -> u64 {
        pt::pte_wrprotect(pte)
    }

    fn pte_mkwrite(pte: u64) -> u64 {
        pt::pte_mkwrite(pte)
    }

    fn pte_mkdirty(pte: u64) -> u64 {
        pt::pte_mkdirty(pte)
    }

    unsafe fn set_pte_at(_mm: &Mm<Self>, addr: u64, ptep: *mut u64, pte: u64) {
        // SAFETY: the caller's contract: a live PTE under the PTL.
        let old = unsafe { ptep.read_volatile() };
        if pt::pte_hw_valid(old) {
            // A plain store over a valid PTE leaves other CPUs' TLB entries
            // behind: the s390 rule forbids it.
            kprintln_emergency!(
                "# set_pte_at over a valid PTE: addr={addr:#x} old={old:#x} new={pte:#x}"
            );
            panic!("set_pte_at over a valid PTE at {addr:#x}");
        }
        // SAFETY: as above; the entry is invalid, so no CPU caches it.
        unsafe { ptep.write_volatile(pte) };
    }

    unsafe fn ptep_get_and_clear(_mm: &Mm<Self>, addr: u64, ptep: *mut u64) -> u64 {
        // SAFETY: the caller's contract: a live PTE of `addr` under the PTL.
        unsafe {
            let old = ptep.read_volatile();
            ptep_xchg_direct(ptep, addr, old, pt::PAGE_INVALID);
            old
        }
    }

    unsafe fn ptep_clear_unflushed(_mm: &Mm<Self>, _addr: u64, ptep: *mut u64) -> u64 {
        // SAFETY: the caller's contract: a live PTE under the PTL, flushed
        // from every TLB (IDTE) before the page or the entry is reused. A
        // plain store without IPTE leaves every CPU's TLB entry as it was,
        // which is what the caller asks the machine about.
        unsafe {
            let old = ptep.read_volatile();
            ptep.write_volatile(pt::PAGE_INVALID);
            old
        }
    }

    unsafe fn ptep_set_wrprotect(_mm: &Mm<Self>, addr: u64, ptep: *mut u64) {
        // SAFETY: the caller's contract: a live PTE of `addr` under the PTL.
        unsafe {
            let old = ptep.read_volatile();
            if !pt::pte_present(old) {
                return;
            }
            ptep_xchg_direct(ptep, addr, old, pt::pte_wrprotect(old));
        }
    }

    unsafe fn pmdp_get_and_clear(_mm: &Mm<Self>, addr: u64, pmdp: *mut u64) -> u64 {
        // SAFETY: the caller's contract: the live segment entry of `addr`,
        // serialised by the caller's lock.
        unsafe {
            let old = pmdp.read_volatile();
            if old & pt::SEGMENT_ENTRY_INVALID == 0 {
                match tlbflush::flush_strategy::<Self>() {
                    // Linux `pmdp_idte_global`.
                    FlushStrategy::Csp => {
                        // Linux `__pmdp_csp`: the invalid bit is in the low
                        // word (big-endian: the second one).
                        let low = pmdp.cast::<u32>().add(1);
                        let w = old as u32;
                        let swapped = tlb::csp(low, w, w | pt::SEGMENT_ENTRY_INVALID as u32);
                        assert!(swapped, "segment entry at {pmdp:p} changed under its lock");
                    }
                    _ => tlb::idte_segment(pmdp, addr),
                }
            }
            pmdp.write_volatile(pt::SEGMENT_ENTRY_EMPTY);
            old
        }
    }

    fn flush_tlb_page(_mm: &Mm<Self>, _addr: u64) {
        // Nothing left: every change of a valid PTE went through IPTE, which
        // purged all TLBs before the new value was stored.
    }

    fn flush_tlb_range(mm: &Mm<Self>, _start: u64, _end: u64) {
        // For entries changed without IPTE (e.g. tables unhooked by plain
        // stores): purge everything formed through the mm's ASCE.
        Self::flush_tlb_mm(mm);
    }

    fn flush_tlb_mm(mm: &Mm<Self>) {
        // Linux `__tlb_flush_mm`: when only this CPU has the mm attached, a
        // local purge (PTLB) suffices; otherwise IDTE clears the entries
        // formed through the ASCE on every CPU. The PTE changes must be
        // visible before the cpumask is read (a CPU attaching later loads the
        // ASCE, which purges its TLB under QEMU, after setting its bit).
        core::sync::atomic::fence(Ordering::SeqCst);
        let me = S390x::smp_processor_id();
        if mm.other_cpus().next().is_none() {
            tlbflush::count_local_only(me);
            tlb::ptlb();
        } else if tlbflush::flush_strategy::<Self>() == FlushStrategy::Csp {
            tlb::tlb_flush_global();
        } else {
            // SAFETY: IDTE with the clearing option only purges TLB entries.
            unsafe { tlb::idte(mm.context.asce()) };
        }
    }

    const FLUSH_STRATEGIES: &'static [FlushStrategy] = &[FlushStrategy::Ipte, FlushStrategy::Csp];

    fn local_flush_tlb_page(_addr: u64) {
        tlb::ptlb();
    }

    fn probe_load(addr: u64) -> Result<u64, quiesce_kernel::mm::arch::FaultInfo> {
        crate::fault::probe_load(addr)
    }

    fn probe_store(addr: u64, val: u64) -> Result<(), quiesce_kernel::mm::arch::FaultInfo> {
        crate::fault::probe_store(addr, val)
    }
}

/// The storage keys (SSKE, ISKE, RRBE), in [`skey`].
impl StorageKeys for S390x {
    fn set_storage_key(pfn: u64, key: u8) {
        skey::set_storage_key(pfn, key);
    }

    fn get_storage_key(pfn: u64) -> u8 {
        skey::get_storage_key(pfn)
    }

    fn reset_reference_bit(pfn: u64) -> (bool, bool) {
        skey::reset_reference_bit(pfn)
    }
    // `page_test_and_clear_dirty`: the generic one (ISKE, then SSKE with C
    // cleared) is Linux 3.8's s390 code.
}
