//! Mapping, faulting and unmapping memory — private anonymous and shared file
//! mappings; copy-on-write; write-notify on shared mappings; teardown.
//!
//! The first correct versions of Linux's `do_mmap`, `munmap`, `mprotect`,
//! `madvise(MADV_DONTNEED)`, `do_anonymous_page`, `do_wp_page`,
//! `do_shared_fault`, `wp_page_shared`, `zap_pte_range`, `free_pgtables`,
//! `copy_page_range` and `exit_mmap`.
//!
//! Unmap order: zaps run on an [`MmuGather`] ([`super::mmu_gather`]), whose
//! runtime policy decides when pages, rmaps and tables go. With the default
//! policy: under the PTL of each PTE table, clear the PTEs (carrying a dirty
//! file PTE's dirty bit to its page), hand the pages to the gather; if file
//! pages were unmapped, flush the TLB and remove their rmaps before the PTL is
//! dropped, as Linux 6.2's fix for catalogue row 3 does; pages are freed after
//! the flush of their batch, tables right after the gather's last flush. No
//! CPU can reach a freed page through a stale translation, and `folio_mkclean`
//! cannot miss a mapping some CPU can still write through.
//!
//! Shared file mappings are write-notify mappings: a read fault maps the page
//! read-only (clean), and the first store takes a write-protect fault that
//! makes the PTE writable and dirty (break before make: clear, flush, set) and
//! dirties the page in the page cache. That is also s390's software dirty-bit
//! mode: a PTE is hardware-writable only when dirty. In StorageKey dirty
//! tracking ([`super::dirty`]) the write fault is the same, but mkclean leaves
//! the PTE writable and the frame's change bit holds the dirty state: a zap
//! ignores PTE dirty bits and `page_remove_rmap` moves C to the page.
//!
//! Huge PMD leaves (x86-64 only, [`super::huge_memory`]): a zap of a whole
//! block clears the leaf onto the gather, a partial zap, fork and mprotect
//! split it first, a fault in a leaf-mapped block is spurious (or splits a
//! leaf that forbids the store); a leaf never reaches `pte_alloc_walk` or
//! `free_pgtables`.
//!
//! `do_wp_page` reuses an exclusive anonymous page under its page lock; where
//! the lock is released relative to the PTL is a runtime knob
//! ([`set_wp_unlock_order`], catalogue row `wp-unlock-vs-zap`).
//!
//! Locking, as in Linux: faults take `mmap_lock` for read, then (file pages)
//! the page lock, then the PTL of the PTE table; mmap, munmap and mprotect take
//! `mmap_lock` for write; MADV_DONTNEED for read. The PTL is split per PTE
//! table (a lock hashed by the table's frame, shared by the fragments of one
//! frame, as on s390).
//!
//! Invariants:
//! - a present PTE holds one page reference and one mapcount of its page;
//! - SoftDirty: a writable PTE of a shared file page is dirty, and its page is
//!   `PG_dirty` (set after the PTE, under the page lock, which writeback holds
//!   across mkclean and the copy); StorageKey: a store through a writable PTE
//!   after the last mkclean set the frame's change bit;
//! - the shared file VMAs of an mm are listed in their files' `i_mmap` exactly
//!   as they are in the VMA list ([`sync_i_mmap`] swaps the records of a
//!   change per file, under the file's `i_mmap` lock, so a walk never misses a
//!   live PTE), and are unlinked before their page tables are freed.

use super::arch::{FaultInfo, Level, Mmu, PteProt};
use super::fault::FaultError;
use super::filemap::{self, MmapRef, RamFile};
use super::mm::{Mm, VmFlags, Vma, VmaList};
use super::mmu_gather::{self, MmuGather, RmapOrder};
use super::page::{self, Page};
use super::{dirty, frag, huge_memory, page_alloc, pgtable, rmap, PAGE_SIZE};
use crate::race::point::{points, race_point, sync_point};
use crate::race::waitfor::{self, NR_PTL};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// Why an mmap, munmap, mprotect or madvise was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Not page-aligned, empty, outside the task range, or beyond the file.
    BadRange,
    /// Overlaps an existing mapping (MAP_FIXED_NOREPLACE).
    Exists,
    /// Part of the range is not mapped (mprotect, madvise: ENOMEM).
    Unmapped,
    /// The arch could not make the range mappable.
    Arch(&'static str),
    /// No memory.
    NoMemory,
}

/// What a new mapping maps.
#[derive(Clone, Debug)]
pub enum MapTarget {
    /// Private anonymous memory (MAP_PRIVATE | MAP_ANONYMOUS).
    Anon,
    /// A shared mapping of `file` from page `pgoff` on (MAP_SHARED).
    File {
        /// The file.
        file: Arc<RamFile>,
        /// First file page mapped.
        pgoff: u64,
    },
}

/// Split page-table locks, hashed by the frame of the PTE table: the fragments
/// of one frame share a lock (as on s390, where both 2 KiB halves of a frame
/// use the frame's `ptl`); tables in other frames almost always get another.
static PTLOCKS: [Ptl; NR_PTL] = [const { Ptl(spin::Mutex::new(())) }; NR_PTL];

/// Address of the PTL table (see [`crate::race::user::stale_tlb_base`]).
pub(crate) fn ptlocks_addr() -> u64 {
    PTLOCKS.as_ptr() as u64
}

/// The PTL of the PTE table `ptep` lies in (`pte_lockptr`).
pub fn pte_lockptr(ptep: *mut u64) -> &'static Ptl {
    let frame = ptep as u64 >> super::PAGE_SHIFT;
    &PTLOCKS[(frame ^ (frame >> 8)) as usize % PTLOCKS.len()]
}

/// A split page-table lock: a spin lock that records its owner, and a CPU
/// spinning on it records that it waits, for the race prover
/// ([`crate::race::waitfor`]: "the PTL owner").
pub struct Ptl(spin::Mutex<()>);

/// A held [`Ptl`]; dropping it releases the lock.
pub struct PtlGuard<'a> {
    guard: Option<spin::MutexGuard<'a, ()>>,
    idx: usize,
}

impl Ptl {
    fn idx(&self) -> usize {
        (self as *const Ptl as usize - PTLOCKS.as_ptr() as usize) / core::mem::size_of::<Ptl>()
    }

    fn acquired<'a>(&'a self, guard: spin::MutexGuard<'a, ()>) -> PtlGuard<'a> {
        let idx = self.idx();
        waitfor::ptl_acquired(idx, crate::race::this_cpu());
        PtlGuard {
            guard: Some(guard),
            idx,
        }
    }

    /// Takes the lock, spinning (interrupts as they are) while another CPU
    /// holds it.
    pub fn lock(&self) -> PtlGuard<'_> {
        sync_point(&points::SYNC_PTL_LOCK, self.idx() as u64);
        if let Some(g) = self.0.try_lock() {
            return self.acquired(g);
        }
        let wait = waitfor::begin(
            crate::race::this_cpu(),
            waitfor::Wait::Lock { idx: self.idx() },
            crate::race::irqs_disabled(),
        );
        let g = loop {
            if let Some(g) = self.0.try_lock() {
                break g;
            }
            core::hint::spin_loop();
        };
        waitfor::end(wait);
        self.acquired(g)
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<PtlGuard<'_>> {
        sync_point(&points::SYNC_PTL_LOCK, self.idx() as u64);
        self.0.try_lock().map(|g| self.acquired(g))
    }

    /// Whether some CPU holds the lock.
    pub fn is_locked(&self) -> bool {
        self.0.is_locked()
    }
}

impl Drop for PtlGuard<'_> {
    fn drop(&mut self) {
        // The owner is cleared before the lock is released.
        waitfor::ptl_released(self.idx);
        drop(self.guard.take());
        sync_point(&points::SYNC_PTL_UNLOCK, self.idx as u64);
    }
}

// ---- rmap bookkeeping -------------------------------------------------------

/// Adds the first mapping of a new anonymous page at `addr` of `mm`
/// (`page_add_new_anon_rmap`): mapcount 1, `PG_anon`, and the page hung off
/// the mm's anon_vma with its virtual page number as index.
pub fn page_add_new_anon_rmap<A: Mmu>(p: &Page, mm: &Mm<A>, addr: u64) {
    rmap::page_set_anon_rmap(p, mm, addr);
    page::SetPageAnon(p);
    p._mapcount.store(0, Ordering::Release);
}

/// Adds a PTE mapping of a page-cache page (`page_add_file_rmap`).
pub fn page_add_file_rmap(p: &Page) {
    p._mapcount.fetch_add(1, Ordering::AcqRel);
}

/// Adds a mapping of an already mapped page (fork: `page_dup_rmap`).
pub fn page_dup_rmap(p: &Page) {
    p._mapcount.fetch_add(1, Ordering::AcqRel);
}

/// Removes a mapping (`page_remove_rmap`). In StorageKey dirty tracking
/// ([`super::dirty`]), when the last mapping of a page-cache page is gone,
/// its frame's change bit is read and cleared and, if it was set, the page is
/// dirtied (Linux 3.8: `if (!page_mapped(page) &&
/// page_test_and_clear_dirty(pfn)) set_page_dirty(page)`). Callers have
/// flushed the PTE from every TLB, so no store can set C afterwards.
pub fn page_remove_rmap(p: &Page) {
    let old = p._mapcount.fetch_sub(1, Ordering::AcqRel);
    assert!(
        old >= 0,
        "page_remove_rmap: pfn {} was not mapped",
        page::page_to_pfn(p)
    );
    if old == 0 && page_test_and_clear_dirty_mapped(p) {
        filemap::set_page_dirty(p);
    }
}

/// In StorageKey dirty tracking, after the last mapping of a page with a
/// mapping (a page-cache page, or an anonymous page with `PG_swapcache`)
/// went: reads and clears its frame's change bit; whether it was set.
fn page_test_and_clear_dirty_mapped(p: &Page) -> bool {
    let dirty = filemap::page_mapping(p).is_some()
        && dirty::page_test_and_clear_dirty(page::page_to_pfn(p));
    if dirty {
        dirty::count_key_dirty();
    }
    dirty
}

/// [`page_remove_rmap`] for `zap_pte_range`, which holds the PTL but
/// neither the page lock nor a pin on a swap-cache page's mapping
/// (`page_remove_rmap_nolock`, the RFC of seed 004). With
/// [`dirty::SkeyTransfer::Unlocked`] a set change bit is moved to the page
/// as [`page_remove_rmap`] does. With [`dirty::SkeyTransfer::PageLockTrylock`]
/// it reaches the page only under the page lock, tried
/// [`dirty::SKEY_TRYLOCK_SPINS`] times (the PTL is held: no sleeping); not
/// had, a file page is dirtied anyway (its open file pins the mapping) and a
/// swap-cache page's dirty bit is dropped and counted
/// ([`dirty::skey_stats`]). The race point `rmap:skey_dirty` marks a change
/// bit found set. File pages whose rmap removal the gather delays until after
/// the flush go through [`page_remove_rmap`]: the RFC dirties a file page
/// whether or not it gets the lock.
pub fn page_remove_rmap_nolock<A: Mmu>(p: &Page) {
    let old = p._mapcount.fetch_sub(1, Ordering::AcqRel);
    assert!(
        old >= 0,
        "page_remove_rmap: pfn {} was not mapped",
        page::page_to_pfn(p)
    );
    if old != 0 || !page_test_and_clear_dirty_mapped(p) {
        return;
    }
    race_point::<A>(&points::RMAP_SKEY_DIRTY, page::page_to_pfn(p));
    if dirty::skey_transfer() == dirty::SkeyTransfer::Unlocked {
        filemap::set_page_dirty(p);
        return;
    }
    if page::trylock_page_spin(p, dirty::SKEY_TRYLOCK_SPINS) {
        filemap::set_page_dirty(p);
        page::unlock_page(p);
    } else if page::PageSwapCache(p) {
        // No choice but to lose the key's information (the RFC).
        dirty::count_key_dropped();
    } else {
        filemap::set_page_dirty(p);
    }
}

// ---- VMA operations -------------------------------------------------------------

/// Checks an address range for the task address space.
fn check_range<A: Mmu>(addr: u64, len: u64) -> Result<u64, MapError> {
    let end = addr.checked_add(len).ok_or(MapError::BadRange)?;
    if len == 0
        || !addr.is_multiple_of(PAGE_SIZE)
        || !len.is_multiple_of(PAGE_SIZE)
        || addr < A::TASK_BASE
        || end > A::TASK_SIZE_MAX
    {
        return Err(MapError::BadRange);
    }
    Ok(end)
}

/// The shared file VMAs overlapping or touching `[start, end)`: every one an
/// operation on that range can split, merge or remove.
fn file_vmas_near(vmas: &VmaList, start: u64, end: u64) -> Vec<Vma> {
    let (lo, hi) = (start.saturating_sub(1), end.saturating_add(1));
    vmas.iter()
        .filter(|v| v.is_shared_file() && v.start < hi && lo < v.end)
        .cloned()
        .collect()
}

/// Brings the `i_mmap` lists of the files involved from `before` to `after`
/// (`vma_link` / `unlink_file_vma` of a split, merge or removal), one file at
/// a time, each under its `i_mmap` lock held for write: a walk sees either
/// the old records or the new ones, which map the same pages at the same
/// addresses where PTEs can exist.
fn sync_i_mmap<A: Mmu>(mm: &Mm<A>, before: &[Vma], after: &[Vma]) {
    if before == after {
        return;
    }
    let me = mm.rmap_addr();
    let mut files: Vec<&Arc<RamFile>> = Vec::new();
    for v in before.iter().chain(after) {
        let f = v.file.as_ref().expect("a shared file VMA");
        if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
            files.push(f);
        }
    }
    let of = |f: &Arc<RamFile>, v: &Vma| v.file.as_ref().is_some_and(|g| Arc::ptr_eq(f, g));
    for f in files {
        let mut list = f.mapping.i_mmap.write();
        for v in before.iter().filter(|v| of(f, v)) {
            let r = MmapRef::of(me, v);
            let i = list
                .iter()
                .position(|x| *x == r)
                .expect("unlink_file_vma: the VMA is not in i_mmap");
            list.swap_remove(i);
        }
        for v in after.iter().filter(|v| of(f, v)) {
            list.push(MmapRef::of(me, v));
        }
    }
}

/// Unmaps `[start, end)` with `mmap_lock` held for write: removes the VMAs,
/// zaps the PTEs, unlinks the file VMAs, frees the page tables (`do_vmi_munmap`).
fn do_munmap<A: Mmu>(mm: &Mm<A>, vmas: &mut VmaList, start: u64, end: u64) {
    if !vmas.overlaps(start, end) {
        return;
    }
    let before = file_vmas_near(vmas, start, end);
    vmas.remove_range(start, end);
    let mut tlb = mmu_gather::tlb_gather_mmu(mm);
    unmap_page_range(&mut tlb, start, end);
    let after = file_vmas_near(vmas, start, end);
    sync_i_mmap(mm, &before, &after);
    free_pgtables(&mut tlb, vmas, start, end);
    mmu_gather::tlb_finish_mmu(tlb);
}

/// Maps `[addr, addr + len)` (`do_mmap` at a fixed address): private anonymous
/// memory or a shared file mapping, as `target` says. With `replace`
/// (MAP_FIXED) whatever was mapped there is unmapped first; without it
/// (MAP_FIXED_NOREPLACE) an overlap is refused. With `populate`
/// (MAP_POPULATE) every page is faulted in: for writing in a private writable
/// mapping, for reading otherwise (a shared mapping stays write-notify).
pub fn do_mmap<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    len: u64,
    flags: VmFlags,
    target: MapTarget,
    replace: bool,
    populate: bool,
) -> Result<(), MapError> {
    let end = check_range::<A>(addr, len)?;
    let vma = match target {
        MapTarget::Anon => Vma::anon(addr, end, flags),
        MapTarget::File { file, pgoff } => {
            let pages = len / PAGE_SIZE;
            if pgoff
                .checked_add(pages)
                .is_none_or(|e| e > file.mapping.nr_blocks())
            {
                return Err(MapError::BadRange);
            }
            Vma {
                start: addr,
                end,
                flags,
                file: Some(file),
                pgoff,
            }
        }
    };
    let write_populate = flags.write && !vma.is_shared_file();
    {
        let mut vmas = mm.mmap_lock.write();
        if vmas.overlaps(addr, end) {
            if !replace {
                return Err(MapError::Exists);
            }
            do_munmap(mm, &mut vmas, addr, end);
        }
        if end > A::context_limit(&mm.context) {
            A::arch_prepare_range(mm, end).map_err(MapError::Arch)?;
        }
        let before = file_vmas_near(&vmas, addr, end);
        vmas.insert(vma);
        let after = file_vmas_near(&vmas, addr, end);
        sync_i_mmap(mm, &before, &after);
    }
    if populate {
        let mut a = addr;
        while a < end {
            let info = FaultInfo {
                addr: a,
                write: write_populate,
                protection: false,
                code: 0,
            };
            do_user_fault(mm, info).map_err(|_| MapError::NoMemory)?;
            a += PAGE_SIZE;
        }
    }
    Ok(())
}

/// Maps `[addr, addr + len)` as private anonymous memory (`mmap` with
/// MAP_FIXED_NOREPLACE | MAP_PRIVATE | MAP_ANONYMOUS); with `populate`, faults
/// every page in (MAP_POPULATE).
pub fn mmap_anon<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    len: u64,
    flags: VmFlags,
    populate: bool,
) -> Result<(), MapError> {
    do_mmap(mm, addr, len, flags, MapTarget::Anon, false, populate)
}

/// Maps pages `pgoff..` of `file` shared at `[addr, addr + len)` (`mmap` with
/// MAP_SHARED and MAP_FIXED if `replace`, else MAP_FIXED_NOREPLACE).
#[allow(clippy::too_many_arguments)]
pub fn mmap_file<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    len: u64,
    flags: VmFlags,
    file: &Arc<RamFile>,
    pgoff: u64,
    replace: bool,
    populate: bool,
) -> Result<(), MapError> {
    let target = MapTarget::File {
        file: file.clone(),
        pgoff,
    };
    do_mmap(mm, addr, len, flags, target, replace, populate)
}

/// Unmaps `[addr, addr + len)`: removes the VMAs, zaps the PTEs and frees the
/// page tables the range covered (`munmap`).
pub fn munmap<A: Mmu>(mm: &Mm<A>, addr: u64, len: u64) -> Result<(), MapError> {
    let end = addr.checked_add(len).ok_or(MapError::BadRange)?;
    if len == 0 || !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(MapError::BadRange);
    }
    let mut vmas = mm.mmap_lock.write();
    do_munmap(mm, &mut vmas, addr, end);
    Ok(())
}

/// Changes the access flags of `[addr, addr + len)`, which VMAs must cover
/// (`mprotect`): VMAs are split at the edges and merged where they became
/// compatible; where write permission is removed, every writable PTE is
/// write-protected through the arch (`change_protection`) and the range is
/// flushed. Added permissions take effect at the next fault.
pub fn mprotect<A: Mmu>(mm: &Mm<A>, addr: u64, len: u64, flags: VmFlags) -> Result<(), MapError> {
    let end = check_range::<A>(addr, len)?;
    let mut vmas = mm.mmap_lock.write();
    if !vmas.covers(addr, end) {
        return Err(MapError::Unmapped);
    }
    let lose_write = vmas
        .iter()
        .any(|v| v.start < end && addr < v.end && v.flags.write && !flags.write);
    let before = file_vmas_near(&vmas, addr, end);
    vmas.set_flags(addr, end, flags);
    let after = file_vmas_near(&vmas, addr, end);
    sync_i_mmap(mm, &before, &after);
    if lose_write {
        // A huge leaf is always writable: split those of the range first.
        huge_memory::split_huge_pmds_in(mm, addr, end).map_err(|_| MapError::NoMemory)?;
        let mut changed = false;
        let mut a = addr;
        while a < end {
            if let Some(ptep) = pgtable::follow_pte(mm, a) {
                let _ptl = pte_lockptr(ptep).lock();
                // SAFETY: a live PTE of this mm (mmap_lock held for write), PTL
                // held.
                let pte = unsafe { pgtable::read_entry(ptep) };
                if A::pte_present(pte) && A::pte_write(pte) {
                    // SAFETY: as above.
                    unsafe { A::ptep_set_wrprotect(mm, a, ptep) };
                    changed = true;
                }
            }
            a += PAGE_SIZE;
        }
        if changed {
            A::flush_tlb_range(mm, addr, end);
        }
    }
    Ok(())
}

/// Drops the pages of `[addr, addr + len)` (`madvise(MADV_DONTNEED)`, with
/// `mmap_lock` held for read): zaps the PTEs of every VMA in the range and
/// keeps the VMAs. Anonymous memory reads back as zeros afterwards; a shared
/// file mapping reads back the page cache (a dirty PTE dirtied its page).
/// Returns `Unmapped` if part of the range has no VMA (the rest is zapped).
pub fn madvise_dontneed<A: Mmu>(mm: &Mm<A>, addr: u64, len: u64) -> Result<(), MapError> {
    madvise_dontneed_counted(mm, addr, len).map(|_| ())
}

/// [`madvise_dontneed`], returning how many page references the zap dropped
/// (the PTEs' references: for a page no one else holds, a free).
pub fn madvise_dontneed_counted<A: Mmu>(mm: &Mm<A>, addr: u64, len: u64) -> Result<u64, MapError> {
    let end = check_range::<A>(addr, len)?;
    let vmas = mm.mmap_lock.read();
    let mut tlb = mmu_gather::tlb_gather_mmu(mm);
    for v in vmas.iter().filter(|v| v.start < end && addr < v.end) {
        unmap_page_range(&mut tlb, v.start.max(addr), v.end.min(end));
    }
    let freed = mmu_gather::tlb_finish_mmu_freed(tlb);
    race_point::<A>(&points::MADVISE_AFTER_DONTNEED, addr);
    if vmas.covers(addr, end) {
        Ok(freed)
    } else {
        Err(MapError::Unmapped)
    }
}

// ---- zap ----------------------------------------------------------------------------------

/// Clears every PTE in `[start, end)` on a gather of its own and flushes and
/// frees at the end (`zap_page_range`). Caller holds `mmap_lock` (read for
/// MADV_DONTNEED, write for munmap).
pub fn zap_page_range<A: Mmu>(mm: &Mm<A>, start: u64, end: u64) {
    let mut tlb = mmu_gather::tlb_gather_mmu(mm);
    unmap_page_range(&mut tlb, start, end);
    mmu_gather::tlb_finish_mmu(tlb);
}

/// Clears every PTE in `[start, end)` onto `tlb`, one PTE table at a time
/// (`unmap_page_range`).
pub fn unmap_page_range<A: Mmu>(tlb: &mut MmuGather<'_, A>, start: u64, end: u64) {
    let mut addr = start;
    while addr < end {
        let next = pgtable::addr_end(addr, end, A::PMD_SIZE);
        let Some(pmdp) = pgtable::follow_pmd(tlb.mm, addr) else {
            addr = next;
            continue;
        };
        // SAFETY: a live PMD entry of this mm (mmap_lock held).
        if huge_memory::pmd_trans_huge::<A>(unsafe { pgtable::read_entry(pmdp) }) {
            if next - addr == A::PMD_SIZE {
                // The whole block: zap the leaf (zap_huge_pmd); if a fault
                // split it meanwhile, zap its PTEs below.
                if let Some(full) = huge_memory::zap_huge_pmd(tlb, addr) {
                    if full {
                        mmu_gather::tlb_flush_mmu(tlb);
                    }
                    addr = next;
                    continue;
                }
            } else {
                // Part of the block: split it, then zap PTEs.
                huge_memory::split_huge_pmd(tlb.mm, addr)
                    .expect("zap: no memory for the PTE table of a huge PMD split");
            }
        }
        addr = zap_pte_range(tlb, pmdp, addr, next);
    }
}

/// Clears the PTEs of `[addr, end)` (one PMD block) under the table's PTL
/// (`zap_pte_range`); returns where it stopped: `end`, or earlier when the
/// gather's batch filled up (flushed and freed before returning).
///
/// Per PTE: clear it; a dirty PTE of a file page dirties the page before the
/// PTL is dropped (PTE dirty-bit mode; in storage-key mode `page_remove_rmap`
/// moves the change bit); hand the page to the gather. rmap removal follows the
/// policy, as 5df397dec7c4 decides it: a dirty file PTE's rmap is removed
/// after the flush under the PTL ([`mmu_gather::tlb_flush_rmaps`]) when the
/// gather delays rmaps ([`mmu_gather::tlb_delay_rmap`]: batched freeing,
/// never with immediate freeing, as s390's `MMU_GATHER_NO_GATHER`); every
/// other rmap at the clear. A flush under the PTL is forced by a full batch,
/// by a delayed rmap, and (rmap before the flush, Linux 6.1) by a dirty
/// shared PTE. The race point `zap:before_ptl_flush` marks the end of the
/// PTE loop under the PTL, before that flush where one is forced, before
/// the unlock where none is (nothing to flush under the PTL: the rmap went
/// at a clear that needed no flush, or the PTEs were clean).
fn zap_pte_range<A: Mmu>(tlb: &mut MmuGather<'_, A>, pmdp: *mut u64, addr: u64, end: u64) -> u64 {
    let mm = tlb.mm;
    // SAFETY: a live PMD entry of this mm (mmap_lock held).
    let pmd = unsafe { pgtable::read_entry(pmdp) };
    if A::entry_none(Level::Pmd, pmd) || !A::entry_is_table(Level::Pmd, pmd) {
        return end;
    }
    race_point::<A>(&points::ZAP_BEFORE_PTL, addr);
    // SAFETY: the PMD entry points to a live PTE table.
    let ptl = pte_lockptr(unsafe { A::pte_offset(pmdp, addr) }).lock();
    let mut force_flush = false;
    let mut batch_full = false;
    let mut a = addr;
    while a < end {
        // SAFETY: `a` lies in this PMD's block, whose table is live; we hold
        // its PTL.
        let ptep = unsafe { A::pte_offset(pmdp, a) };
        // SAFETY: as above.
        let pte = unsafe { pgtable::read_entry(ptep) };
        a += PAGE_SIZE;
        if A::pte_none(pte) {
            continue;
        }
        // SAFETY: as above.
        let old = unsafe { A::ptep_get_and_clear(mm, a - PAGE_SIZE, ptep) };
        race_point::<A>(&points::ZAP_AFTER_PTE_CLEAR, a - PAGE_SIZE);
        mmu_gather::tlb_remove_tlb_entry(tlb, a - PAGE_SIZE);
        if !A::pte_present(old) {
            continue;
        }
        let p = page::pfn_to_page(A::pte_pfn(old));
        let mut delay_rmap = false;
        if page::PageAnon(p) {
            mm.rss_anon.fetch_sub(1, Ordering::Relaxed);
        } else {
            // StorageKey mode keeps no dirty bit in the PTE (3.8's s390
            // `pte_dirty` was 0): nothing is delayed, and the change bit
            // `page_remove_rmap` reads is final at the clear, which purged
            // every TLB (IPTE).
            let dirty = dirty::pte_tracks_dirty() && A::pte_dirty(old);
            if dirty {
                filemap::set_page_dirty(p);
                if mmu_gather::tlb_delay_rmap(tlb) {
                    // 5df397dec7c4 (6.2): only a dirty PTE's rmap waits
                    // for the flush under the PTL.
                    delay_rmap = true;
                    force_flush = true;
                } else if tlb.policy.rmap == RmapOrder::BeforeFlush {
                    // Linux 6.1 (1cf35d47712d): the rmap goes now, the
                    // flush under the PTL after.
                    force_flush = true;
                }
            }
            mm.rss_file.fetch_sub(1, Ordering::Relaxed);
        }
        if delay_rmap {
            mmu_gather::tlb_delay_page_rmap(tlb, p);
        } else {
            page_remove_rmap_nolock::<A>(p);
        }
        if mmu_gather::tlb_remove_page(tlb, p) {
            force_flush = true;
            batch_full = true;
            break;
        }
    }
    race_point::<A>(&points::ZAP_BEFORE_PTL_FLUSH, addr);
    if force_flush || mmu_gather::tlb_rmaps_pending(tlb) {
        // Invalidate, then unhook from the rmap, still under the PTL: mkclean
        // cannot miss a mapping a CPU can write through.
        mmu_gather::tlb_flush_mmu_tlbonly(tlb);
        mmu_gather::tlb_flush_rmaps(tlb);
    }
    drop(ptl);
    if batch_full {
        mmu_gather::tlb_flush_mmu_free(tlb);
    }
    a
}

/// Unhooks the PTE tables of every PMD block that `[start, end)` touches and
/// no remaining VMA overlaps onto `tlb`, which frees them after its flush as
/// its policy says (`free_pgtables` with its floor and ceiling taken from the
/// neighbouring VMAs). Upper-level tables stay until the mm is torn down.
/// Caller holds `mmap_lock` for write and zapped the range.
pub fn free_pgtables<A: Mmu>(
    tlb: &mut MmuGather<'_, A>,
    vmas: &super::mm::VmaList,
    start: u64,
    end: u64,
) {
    let mut addr = start & !(A::PMD_SIZE - 1);
    while addr < end {
        if !vmas.overlaps(addr, addr + A::PMD_SIZE) {
            free_pte_table(tlb, addr);
        }
        addr += A::PMD_SIZE;
    }
}

/// Clears the PMD entry of the block at `addr` and hands its PTE table, whose
/// entries must all be empty, to `tlb` (`free_pte_range`).
fn free_pte_table<A: Mmu>(tlb: &mut MmuGather<'_, A>, addr: u64) {
    let mm = tlb.mm;
    let Some(pmdp) = pgtable::follow_pmd(mm, addr) else {
        return;
    };
    let _guard = mm.page_table_lock.lock();
    // SAFETY: a live PMD entry of this mm; page_table_lock serialises writers.
    let pmd = unsafe { pgtable::read_entry(pmdp) };
    assert!(
        !huge_memory::pmd_trans_huge::<A>(pmd),
        "free_pgtables: huge PMD {pmd:#x} left at {addr:#x}"
    );
    if A::entry_none(Level::Pmd, pmd) || !A::entry_is_table(Level::Pmd, pmd) {
        return;
    }
    let table = A::entry_table(Level::Pmd, pmd);
    let entries = page::phys_to_virt(table).cast::<u64>();
    for i in 0..A::PTRS_PER_PTE {
        // SAFETY: the table is live and PTRS_PER_PTE entries long.
        let pte = unsafe { pgtable::read_entry(entries.add(i)) };
        assert!(
            A::pte_none(pte),
            "free_pgtables: live PTE {pte:#x} in table {table:#x}"
        );
    }
    // SAFETY: the entry is live and we hold page_table_lock; the gather
    // flushes the table's span before the table is freed.
    unsafe { pgtable::pmd_clear::<A>(pmdp) };
    race_point::<A>(&points::FREE_PGTABLES_AFTER_PMD_CLEAR, addr);
    mmu_gather::tlb_remove_table(tlb, Level::Pte, table, addr);
}

/// Allocates a zeroed page for an anonymous mapping.
fn alloc_zeroed_page() -> Option<&'static Page> {
    let page = page_alloc::alloc_pages(0)?;
    // SAFETY: the frame was just allocated for us; RAM is mapped 1:1.
    unsafe { core::ptr::write_bytes(page::page_address(page), 0, PAGE_SIZE as usize) };
    Some(page)
}

/// Resolves a fault of the current task in `mm` (`handle_mm_fault`): demand
/// paging and copy-on-write of anonymous memory, page-cache faults and
/// write-notify of shared file mappings, or a spurious fault whose
/// translation another CPU already installed.
pub fn do_user_fault<A: Mmu>(mm: &Mm<A>, info: FaultInfo) -> Result<(), FaultError> {
    let vmas = mm.mmap_lock.read();
    handle_mm_fault_locked(mm, &vmas, info)
}

/// [`do_user_fault`] with `mmap_lock` already held for read by the caller,
/// who passes the VMAs it guards (slow GUP faults pages in this way).
pub(crate) fn handle_mm_fault_locked<A: Mmu>(
    mm: &Mm<A>,
    vmas: &VmaList,
    info: FaultInfo,
) -> Result<(), FaultError> {
    let addr = info.addr & !(PAGE_SIZE - 1);
    let vma = vmas.find(addr).ok_or(FaultError::NoVma)?;
    if (info.write && !vma.flags.write) || !vma.flags.read {
        return Err(FaultError::AccessDenied);
    }
    if vma.is_shared_file() {
        return do_shared_fault(mm, vma, addr, info.write);
    }
    let writable = vma.flags.write;
    if let Some(r) = huge_memory::huge_pmd_fault(mm, addr, info.write) {
        return r.map_err(|_| FaultError::OutOfMemory);
    }
    let ptep = pgtable::pte_alloc_walk(mm, addr).ok_or(FaultError::OutOfMemory)?;
    let ptl = pte_lockptr(ptep).lock();
    // SAFETY: a live entry of this mm, PTL held.
    let pte = unsafe { pgtable::read_entry(ptep) };
    if A::pte_none(pte) || !A::pte_present(pte) {
        // do_anonymous_page
        drop(ptl);
        let page = alloc_zeroed_page().ok_or(FaultError::OutOfMemory)?;
        let _ptl = pte_lockptr(ptep).lock();
        // SAFETY: as above.
        if !A::pte_none(unsafe { pgtable::read_entry(ptep) }) {
            // Another CPU faulted it in meanwhile.
            page::put_page(page);
            return Ok(());
        }
        page_add_new_anon_rmap(page, mm, addr);
        mm.rss_anon.fetch_add(1, Ordering::Relaxed);
        let new = A::pfn_pte(page::page_to_pfn(page), PteProt { write: writable });
        // SAFETY: the entry is empty, PTL held.
        unsafe { A::set_pte_at(mm, addr, ptep, new) };
        return Ok(());
    }
    if !info.write || A::pte_write(pte) {
        // Spurious: another CPU fixed it, or a stale TLB entry was flushed.
        return Ok(());
    }
    do_wp_page(mm, addr, ptep, pte, ptl)
}

/// Where `do_wp_page`'s reuse path releases the page lock (a runtime knob,
/// catalogue row `wp-unlock-vs-zap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WpUnlock {
    /// After the PTL is released (09854ba94c6a, the bug): a zap may free the
    /// page in between, still locked.
    AfterPtl,
    /// Before the PTE is made writable, under the PTL (be068f29034f, the
    /// fix).
    BeforePtl,
    /// A self-check (`inject=misplaced-point`): the buggy order, with the
    /// race point `wp:before_unlock_page` placed before the PTL is
    /// released, out of the window it should mark. Forced mode then holds
    /// the fault under the PTL, as with the fix; explore still finds the
    /// window through the PTL release and the page unlock.
    AfterPtlPointUnderPtl,
}

static WP_UNLOCK: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(1);

/// The unlock order `do_wp_page`'s reuse takes.
pub fn wp_unlock_order() -> WpUnlock {
    match WP_UNLOCK.load(Ordering::Acquire) {
        0 => WpUnlock::AfterPtl,
        2 => WpUnlock::AfterPtlPointUnderPtl,
        _ => WpUnlock::BeforePtl,
    }
}

/// Sets the unlock order of `do_wp_page`'s reuse; returns the previous one.
pub fn set_wp_unlock_order(o: WpUnlock) -> WpUnlock {
    let old = wp_unlock_order();
    WP_UNLOCK.store(o as u8, Ordering::Release);
    old
}

/// Write faults on anonymous pages that reused the page ([`do_wp_page`]).
pub static WP_REUSED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Write faults on anonymous pages that copied the page ([`do_wp_page`]).
pub static WP_COPIED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A store to the write-protected anonymous PTE `pte` at `ptep`, whose PTL
/// `ptl` is held (`do_wp_page`, Linux 5.9): the page is reused when, under
/// the page lock, it has exactly one reference and one mapping; otherwise it
/// is copied. The lock is taken with `trylock_page`, or, when another CPU
/// holds it, by taking a reference, dropping the PTL, `lock_page`, and
/// retaking the PTL and rechecking the PTE. Where the page is unlocked
/// relative to the PTL release follows [`wp_unlock_order`].
fn do_wp_page<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    ptep: *mut u64,
    pte: u64,
    mut ptl: PtlGuard<'static>,
) -> Result<(), FaultError> {
    let old_page = page::pfn_to_page(A::pte_pfn(pte));
    if page::PageAnon(old_page) && page::page_ref_count(old_page) == 1 {
        if !page::trylock_page(old_page) {
            page::get_page(old_page);
            drop(ptl);
            page::lock_page(old_page);
            ptl = pte_lockptr(ptep).lock();
            // SAFETY: a live entry of this mm, PTL held.
            if unsafe { pgtable::read_entry(ptep) } != pte {
                drop(ptl);
                page::unlock_page(old_page);
                page::put_page(old_page);
                return Ok(());
            }
            // The PTE still holds its reference: this is not the last one.
            page::put_page(old_page);
        }
        if page::page_mapcount(old_page) == 1 && page::page_ref_count(old_page) == 1 {
            WP_REUSED.fetch_add(1, Ordering::Relaxed);
            match wp_unlock_order() {
                WpUnlock::BeforePtl => {
                    race_point::<A>(&points::WP_BEFORE_UNLOCK_PAGE, addr);
                    page::unlock_page(old_page);
                    wp_page_reuse(mm, addr, ptep, pte, ptl);
                }
                WpUnlock::AfterPtl => {
                    wp_page_reuse(mm, addr, ptep, pte, ptl);
                    // The PTL is released: only the page lock is held, and
                    // it holds no reference.
                    race_point::<A>(&points::WP_BEFORE_UNLOCK_PAGE, addr);
                    page::unlock_page(old_page);
                }
                WpUnlock::AfterPtlPointUnderPtl => {
                    race_point::<A>(&points::WP_BEFORE_UNLOCK_PAGE, addr);
                    wp_page_reuse(mm, addr, ptep, pte, ptl);
                    page::unlock_page(old_page);
                }
            }
            return Ok(());
        }
        page::unlock_page(old_page);
    }
    wp_page_copy(mm, addr, ptep, pte, old_page, ptl)
}

/// The only user may just write (`wp_page_reuse`): the PTE is made writable
/// and dirty (clear, flush, set), then the PTL is released.
fn wp_page_reuse<A: Mmu>(mm: &Mm<A>, addr: u64, ptep: *mut u64, pte: u64, ptl: PtlGuard<'static>) {
    // SAFETY: live entry, PTL held.
    unsafe { A::ptep_get_and_clear(mm, addr, ptep) };
    A::flush_tlb_page(mm, addr);
    let new = A::pte_mkdirty(A::pfn_pte(A::pte_pfn(pte), PteProt { write: true }));
    // SAFETY: the entry was just cleared, PTL held.
    unsafe { A::set_pte_at(mm, addr, ptep, new) };
    drop(ptl);
}

/// Copies the page and maps the copy writable (`wp_page_copy`).
fn wp_page_copy<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    ptep: *mut u64,
    pte: u64,
    old_page: &'static Page,
    ptl: PtlGuard<'static>,
) -> Result<(), FaultError> {
    drop(ptl);
    let new_page = page_alloc::alloc_pages(0).ok_or(FaultError::OutOfMemory)?;
    let _ptl = pte_lockptr(ptep).lock();
    // SAFETY: as above.
    if unsafe { pgtable::read_entry(ptep) } != pte {
        page::put_page(new_page);
        return Ok(());
    }
    WP_COPIED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: both frames are live (the old one is mapped and we hold the PTL;
    // the new one is ours); RAM is mapped 1:1.
    unsafe { A::copy_page(page::page_address(new_page), page::page_address(old_page)) };
    page_add_new_anon_rmap(new_page, mm, addr);
    // SAFETY: live entry, PTL held.
    unsafe { A::ptep_get_and_clear(mm, addr, ptep) };
    A::flush_tlb_page(mm, addr);
    let new = A::pfn_pte(page::page_to_pfn(new_page), PteProt { write: true });
    // SAFETY: the entry was just cleared, PTL held.
    unsafe { A::set_pte_at(mm, addr, ptep, new) };
    page_remove_rmap(old_page);
    page::put_page(old_page);
    Ok(())
}

/// A fault in a shared file mapping (`do_read_fault` / `do_shared_fault` /
/// `wp_page_shared`). Caller holds `mmap_lock` for read.
///
/// - No PTE: the page is found in the page cache or read in from the backing
///   store, locked, and mapped — read-only and clean for a load
///   (write-notify), writable and dirty for a store, which also dirties the
///   page.
/// - A store to a read-only (or, without hardware dirty bits, clean) PTE: the
///   page is locked, the PTE replaced by a writable, dirty one (clear, flush,
///   set), and the page dirtied.
fn do_shared_fault<A: Mmu>(
    mm: &Mm<A>,
    vma: &Vma,
    addr: u64,
    write: bool,
) -> Result<(), FaultError> {
    let file = vma.file.as_ref().expect("a shared file VMA");
    let mapping = &file.mapping;
    let ptep = pgtable::pte_alloc_walk(mm, addr).ok_or(FaultError::OutOfMemory)?;
    let (pte, mapped) = {
        let _ptl = pte_lockptr(ptep).lock();
        // SAFETY: a live entry of this mm, PTL held.
        let pte = unsafe { pgtable::read_entry(ptep) };
        let mapped = A::pte_present(pte).then(|| {
            let p = page::pfn_to_page(A::pte_pfn(pte));
            // The PTE's reference keeps it alive while we hold the PTL.
            page::get_page(p);
            p
        });
        (pte, mapped)
    };
    if let Some(p) = mapped {
        let spurious = !write || (A::pte_write(pte) && (A::HW_YOUNG_DIRTY || A::pte_dirty(pte)));
        if !spurious {
            // wp_page_shared
            page::lock_page(p);
            {
                let _ptl = pte_lockptr(ptep).lock();
                // SAFETY: as above.
                if unsafe { pgtable::read_entry(ptep) } == pte {
                    // SAFETY: live entry, PTL held.
                    let old = unsafe { A::ptep_get_and_clear(mm, addr, ptep) };
                    A::flush_tlb_page(mm, addr);
                    let new = A::pte_mkdirty(A::pte_mkwrite(old));
                    // SAFETY: the entry was just cleared, PTL held.
                    unsafe { A::set_pte_at(mm, addr, ptep, new) };
                }
            }
            filemap::set_page_dirty(p);
            page::unlock_page(p);
        }
        page::put_page(p);
        return Ok(());
    }
    // filemap_fault, then finish_fault.
    let index = vma.linear_page_index(addr);
    let p = filemap::read_cache_page(mapping, index).ok_or(FaultError::OutOfMemory)?;
    page::lock_page(p);
    if !filemap::page_mapping(p).is_some_and(|m| core::ptr::eq(m, mapping)) {
        // Truncated meanwhile: the access faults again and reads it in anew.
        page::unlock_page(p);
        page::put_page(p);
        return Ok(());
    }
    let installed = {
        let _ptl = pte_lockptr(ptep).lock();
        // SAFETY: as above.
        if A::pte_none(unsafe { pgtable::read_entry(ptep) }) {
            page_add_file_rmap(p);
            mm.rss_file.fetch_add(1, Ordering::Relaxed);
            let new = A::pfn_pte(page::page_to_pfn(p), PteProt { write });
            // SAFETY: the entry is empty, PTL held; our reference becomes the
            // PTE's.
            unsafe { A::set_pte_at(mm, addr, ptep, new) };
            true
        } else {
            false
        }
    };
    if installed && write {
        filemap::set_page_dirty(p);
    }
    page::unlock_page(p);
    if !installed {
        // Another CPU mapped it meanwhile.
        page::put_page(p);
    }
    Ok(())
}

/// Creates a copy of `src` for a child (`dup_mm` / `dup_mmap`). Private
/// anonymous memory: every present page is write-protected in both and shared
/// until one of them writes (`copy_page_range`); the child joins every
/// anon_vma of the parent. Shared file mappings: the VMA is copied and linked
/// into the file's `i_mmap`, the PTEs are not (as Linux, the child faults the
/// pages in from the page cache). The child is boxed: rmap structures list it
/// by address.
pub fn dup_mm<A: Mmu>(src: &Mm<A>) -> Option<Box<Mm<A>>> {
    let dst = Box::new(Mm::<A>::new()?);
    let vmas = src.mmap_lock.write();
    {
        // anon_vma_fork: the child's own anon_vma first, then the parent's.
        dst.anon_vma();
        let me = dst.rmap_addr();
        let parent_chain = src.anon_vma_chain.lock().clone();
        let mut chain = dst.anon_vma_chain.lock();
        for av in parent_chain {
            av.link(me);
            chain.push(av);
        }
    }
    let mut dst_vmas = dst.mmap_lock.write();
    for vma in vmas.iter() {
        if vma.end > A::context_limit(&dst.context) && A::arch_prepare_range(&dst, vma.end).is_err()
        {
            drop(dst_vmas);
            exit_mmap(*dst);
            return None;
        }
        dst_vmas.insert(vma.clone());
        if let Some(f) = &vma.file {
            f.mapping.link_vma(MmapRef::of(dst.rmap_addr(), vma));
            continue;
        }
        // Huge leaves are never shared: split those of the VMA first.
        if huge_memory::split_huge_pmds_in(src, vma.start, vma.end).is_err() {
            drop(dst_vmas);
            exit_mmap(*dst);
            return None;
        }
        let mut addr = vma.start;
        while addr < vma.end {
            if let Some(sp) = pgtable::follow_pte(src, addr) {
                let ptl = pte_lockptr(sp).lock();
                // SAFETY: live entry of `src`, its PTL held.
                let pte = unsafe { pgtable::read_entry(sp) };
                if A::pte_present(pte) {
                    let Some(dp) = pgtable::pte_alloc_walk(&dst, addr) else {
                        drop(ptl);
                        drop(dst_vmas);
                        exit_mmap(*dst);
                        return None;
                    };
                    if A::pte_write(pte) {
                        // SAFETY: live entry of `src`, PTL held.
                        unsafe { A::ptep_set_wrprotect(src, addr, sp) };
                    }
                    let page = page::pfn_to_page(A::pte_pfn(pte));
                    page::get_page(page);
                    page_dup_rmap(page);
                    dst.rss_anon.fetch_add(1, Ordering::Relaxed);
                    let ro = A::pfn_pte(A::pte_pfn(pte), PteProt { write: false });
                    let _dptl = (!core::ptr::eq(pte_lockptr(dp), pte_lockptr(sp)))
                        .then(|| pte_lockptr(dp).lock());
                    // SAFETY: a fresh, empty entry of `dst`.
                    unsafe { A::set_pte_at(&dst, addr, dp, ro) };
                }
            }
            addr += PAGE_SIZE;
        }
        A::flush_tlb_range(src, vma.start, vma.end);
    }
    drop(dst_vmas);
    Some(dst)
}

/// Tears down an mm no CPU runs any more (`exit_mmap` + `mmdrop`): leaves the
/// rmap structures (no CPU stores through the mm, and every dirty PTE dirties
/// its page in the zap), zaps every VMA, frees every table and the arch
/// context.
pub fn exit_mmap<A: Mmu>(mm: Mm<A>) {
    let me = A::smp_processor_id();
    let runs = super::mm::current_mm::<A>().is_some_and(|m| core::ptr::eq(m, &mm));
    assert!(!runs, "exit_mmap of the mm CPU {me} runs");
    let listed = mm.listed_addr();
    {
        let mut vmas = mm.mmap_lock.write();
        let ranges: Vec<Vma> = vmas.iter().cloned().collect();
        for v in &ranges {
            if let Some(f) = &v.file {
                f.mapping.unlink_vma(MmapRef::of(listed, v));
            }
        }
        for av in mm.anon_vma_chain.lock().drain(..) {
            av.unlink(listed);
        }
        let mut tlb = mmu_gather::tlb_gather_mmu_fullmm(&mm);
        for v in ranges {
            vmas.remove_range(v.start, v.end);
            unmap_page_range(&mut tlb, v.start, v.end);
            free_pgtables(&mut tlb, &vmas, v.start, v.end);
        }
        mmu_gather::tlb_finish_mmu(tlb);
    }
    free_upper_tables(&mm);
    frag::pte_frag_destroy(&mm);
    A::destroy_context(&mm.context);
    assert_eq!(
        (
            mm.rss_anon.load(Ordering::Acquire),
            mm.rss_file.load(Ordering::Acquire)
        ),
        (0, 0),
        "exit_mmap left resident pages"
    );
}

/// Frees every remaining upper-level table of the task range, children before
/// parents, visiting only populated entries (a 5-level s390x mm spans 16 EiB).
/// All PTE tables are gone already. Entries whose span reaches below
/// `TASK_BASE` are shared with the kernel's 1:1 map or hold the mm's top tables,
/// which `destroy_context` frees: they are never cleared here.
fn free_upper_tables<A: Mmu>(mm: &Mm<A>) {
    let end = A::context_limit(&mm.context).min(A::TASK_SIZE_MAX);
    free_tables_below(mm, Level::Pgd, A::TASK_BASE, end);
}

/// The span of one entry of `level`.
fn span<A: Mmu>(level: Level) -> u64 {
    match level {
        Level::Pgd => A::PGDIR_SIZE,
        Level::P4d => A::P4D_SIZE,
        Level::Pud => A::PUD_SIZE,
        Level::Pmd | Level::Pte => A::PMD_SIZE,
    }
}

/// The entry pointers of the upper levels for `addr`, as far as populated:
/// `[pgd, p4d, pud]`. A folded level returns the same pointer as the level
/// below it, as the arch's helpers do.
fn upper_entries<A: Mmu>(mm: &Mm<A>, addr: u64) -> [Option<*mut u64>; 3] {
    let pgdp = A::pgd_offset(&mm.context, addr);
    // SAFETY: each pointer comes from the previous level's helper on a
    // non-empty entry of this live mm, which no CPU runs any more.
    unsafe {
        if A::entry_none(Level::Pgd, pgtable::read_entry(pgdp)) {
            return [Some(pgdp), None, None];
        }
        let p4dp = A::p4d_offset(pgdp, addr);
        if A::entry_none(Level::P4d, pgtable::read_entry(p4dp)) {
            return [Some(pgdp), Some(p4dp), None];
        }
        [Some(pgdp), Some(p4dp), Some(A::pud_offset(p4dp, addr))]
    }
}

/// Frees the tables that the entries of `level` covering `[start, end)` point
/// to, after freeing everything below them.
fn free_tables_below<A: Mmu>(mm: &Mm<A>, level: Level, start: u64, end: u64) {
    let step = span::<A>(level);
    let idx = match level {
        Level::Pgd => 0,
        Level::P4d => 1,
        Level::Pud => 2,
        _ => return,
    };
    let mut addr = start;
    while addr < end {
        let next = pgtable::addr_end(addr, end, step);
        let ptrs = upper_entries(mm, addr);
        if let Some(entryp) = ptrs[idx] {
            // SAFETY: a live entry of this mm.
            let e = unsafe { pgtable::read_entry(entryp) };
            if !A::entry_none(level, e) {
                if level != Level::Pud {
                    free_tables_below(mm, next_level(level), addr, next);
                }
                // A folded level shares its entry with the level below: only
                // the lowest of equal pointers is a real entry of this level.
                let folded = ptrs.get(idx + 1).copied().flatten() == Some(entryp);
                let block = addr & !(step - 1);
                if !folded && block >= A::TASK_BASE && A::entry_is_table(level, e) {
                    let _guard = mm.page_table_lock.lock();
                    let table = A::entry_table(level, e);
                    // SAFETY: as above; every table below has been freed.
                    unsafe { pgtable::pxd_clear::<A>(level, entryp) };
                    pgtable::free_table(mm, next_level(level), table);
                }
            }
        }
        addr = next;
    }
}

fn next_level(level: Level) -> Level {
    match level {
        Level::Pgd => Level::P4d,
        Level::P4d => Level::Pud,
        Level::Pud => Level::Pmd,
        _ => Level::Pte,
    }
}
