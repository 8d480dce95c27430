//! Mapping, faulting and unmapping anonymous memory; copy-on-write; teardown.
//!
//! The first correct versions of Linux's `do_anonymous_page`, `do_wp_page`,
//! `zap_pte_range`, `free_pgtables`, `copy_page_range` and `exit_mmap`. They keep
//! Linux's order for an unmap — clear the PTEs under the PTL, flush the TLB,
//! then drop the page references — so no CPU can reach a freed page through a
//! stale translation. (The selectable mmu_gather policies come later and
//! replace [`zap_page_range`].)
//!
//! Locking, as in Linux: faults take `mmap_lock` for read and the PTL of the
//! PTE table; mmap and munmap take `mmap_lock` for write. The PTL is split per
//! PTE table (a lock in the table frame's descriptor, shared by the fragments
//! of one frame, as on s390).

use super::arch::{FaultInfo, Level, Mmu, PteProt};
use super::fault::FaultError;
use super::mm::{Mm, VmFlags, Vma};
use super::page::{self, Page};
use super::{frag, page_alloc, pgtable, PAGE_SIZE};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// Why an mmap or munmap was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Not page-aligned, empty, or outside the task range.
    BadRange,
    /// Overlaps an existing mapping (MAP_FIXED_NOREPLACE).
    Exists,
    /// The arch could not make the range mappable.
    Arch(&'static str),
    /// No memory.
    NoMemory,
}

/// Split page-table locks, hashed by the frame of the PTE table: the fragments
/// of one frame share a lock (as on s390, where both 2 KiB halves of a frame
/// use the frame's `ptl`); tables in other frames almost always get another.
static PTLOCKS: [spin::Mutex<()>; 256] = [const { spin::Mutex::new(()) }; 256];

/// The PTL of the PTE table `ptep` lies in (`pte_lockptr`).
pub fn pte_lockptr(ptep: *mut u64) -> &'static spin::Mutex<()> {
    let frame = ptep as u64 >> super::PAGE_SHIFT;
    &PTLOCKS[(frame ^ (frame >> 8)) as usize % PTLOCKS.len()]
}

/// Adds the first mapping of a new anonymous page (`page_add_new_anon_rmap`).
pub fn page_add_new_anon_rmap(p: &Page) {
    p._mapcount.store(0, Ordering::Release);
    page::SetPageAnon(p);
}

/// Adds a mapping of an already mapped page (fork: `page_dup_rmap`).
pub fn page_dup_rmap(p: &Page) {
    p._mapcount.fetch_add(1, Ordering::AcqRel);
}

/// Removes a mapping (`page_remove_rmap`).
pub fn page_remove_rmap(p: &Page) {
    let old = p._mapcount.fetch_sub(1, Ordering::AcqRel);
    assert!(
        old >= 0,
        "page_remove_rmap: pfn {} was not mapped",
        page::page_to_pfn(p)
    );
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
    let end = addr.checked_add(len).ok_or(MapError::BadRange)?;
    if len == 0
        || !addr.is_multiple_of(PAGE_SIZE)
        || !len.is_multiple_of(PAGE_SIZE)
        || addr < A::TASK_BASE
        || end > A::TASK_SIZE_MAX
    {
        return Err(MapError::BadRange);
    }
    {
        let mut vmas = mm.mmap_lock.write();
        if vmas.overlaps(addr, end) {
            return Err(MapError::Exists);
        }
        if end > A::context_limit(&mm.context) {
            A::arch_prepare_range(mm, end).map_err(MapError::Arch)?;
        }
        vmas.insert(Vma {
            start: addr,
            end,
            flags,
        });
    }
    if populate {
        let mut a = addr;
        while a < end {
            let info = FaultInfo {
                addr: a,
                write: flags.write,
                protection: false,
                code: 0,
            };
            do_user_fault(mm, info).map_err(|_| MapError::NoMemory)?;
            a += PAGE_SIZE;
        }
    }
    Ok(())
}

/// Unmaps `[addr, addr + len)`: removes the VMAs, zaps the PTEs and frees the
/// page tables the range covered (`munmap`).
pub fn munmap<A: Mmu>(mm: &Mm<A>, addr: u64, len: u64) -> Result<(), MapError> {
    let end = addr.checked_add(len).ok_or(MapError::BadRange)?;
    if len == 0 || !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(MapError::BadRange);
    }
    let mut vmas = mm.mmap_lock.write();
    vmas.remove_range(addr, end);
    zap_page_range(mm, addr, end);
    free_pgtables(mm, &vmas, addr, end);
    Ok(())
}

/// Clears every PTE in `[start, end)`, flushes the TLB, then drops the pages'
/// mappings and references (`zap_pte_range` with a correct, simple gather).
/// Caller holds `mmap_lock` (read for MADV_DONTNEED, write for munmap).
pub fn zap_page_range<A: Mmu>(mm: &Mm<A>, start: u64, end: u64) {
    let mut pages: Vec<&'static Page> = Vec::new();
    let mut addr = start;
    while addr < end {
        let next = pgtable::addr_end(addr, end, A::PMD_SIZE);
        if let Some(pmdp) = pmd_entry(mm, addr) {
            // SAFETY: a live PMD entry of this mm (mmap_lock held).
            let pmd = unsafe { pgtable::read_entry(pmdp) };
            if !A::entry_none(Level::Pmd, pmd) && A::entry_is_table(Level::Pmd, pmd) {
                // SAFETY: the PMD entry points to a live PTE table.
                let _ptl = pte_lockptr(unsafe { A::pte_offset(pmdp, addr) }).lock();
                let mut a = addr;
                while a < next {
                    // SAFETY: `a` lies in this PMD's block, whose table is live;
                    // we hold its PTL.
                    let ptep = unsafe { A::pte_offset(pmdp, a) };
                    // SAFETY: as above.
                    let pte = unsafe { pgtable::read_entry(ptep) };
                    if !A::pte_none(pte) {
                        // SAFETY: as above.
                        let old = unsafe { A::ptep_get_and_clear(mm, a, ptep) };
                        if A::pte_present(old) {
                            let page = page::pfn_to_page(A::pte_pfn(old));
                            page_remove_rmap(page);
                            mm.rss_anon.fetch_sub(1, Ordering::Relaxed);
                            pages.push(page);
                        }
                    }
                    a += PAGE_SIZE;
                }
            }
        }
        addr = next;
    }
    // Unhook, invalidate, free: every CPU has dropped its translations before
    // a page can be reused.
    if !pages.is_empty() {
        A::flush_tlb_range(mm, start, end);
    }
    for p in pages {
        page::put_page(p);
    }
}

/// Frees the PTE tables of every PMD block that `[start, end)` touches and no
/// remaining VMA overlaps (`free_pgtables` with its floor and ceiling taken from
/// the neighbouring VMAs). Upper-level tables stay until the mm is torn down.
/// Caller holds `mmap_lock` for write and zapped the range.
fn free_pgtables<A: Mmu>(mm: &Mm<A>, vmas: &super::mm::VmaList, start: u64, end: u64) {
    let mut addr = start & !(A::PMD_SIZE - 1);
    let mut freed = false;
    while addr < end {
        if !vmas.overlaps(addr, addr + A::PMD_SIZE) {
            freed |= free_pte_table(mm, addr);
        }
        addr += A::PMD_SIZE;
    }
    if freed {
        // No CPU may keep using a cached walk through a freed table.
        A::flush_tlb_range(mm, start, end);
    }
}

/// Clears the PMD entry of the block at `addr` and frees its PTE table, whose
/// entries must all be empty. Returns whether a table was freed.
fn free_pte_table<A: Mmu>(mm: &Mm<A>, addr: u64) -> bool {
    let Some(pmdp) = pmd_entry(mm, addr) else {
        return false;
    };
    let _guard = mm.page_table_lock.lock();
    // SAFETY: a live PMD entry of this mm; page_table_lock serialises writers.
    let pmd = unsafe { pgtable::read_entry(pmdp) };
    if A::entry_none(Level::Pmd, pmd) || !A::entry_is_table(Level::Pmd, pmd) {
        return false;
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
    // SAFETY: the entry is live and we hold page_table_lock.
    unsafe { core::ptr::write_volatile(pmdp, A::empty_entry(Level::Pmd)) };
    pgtable::free_table(mm, Level::Pte, table);
    true
}

/// The PMD entry for `addr`, if the upper tables exist.
fn pmd_entry<A: Mmu>(mm: &Mm<A>, addr: u64) -> Option<*mut u64> {
    if addr >= A::context_limit(&mm.context) {
        return None;
    }
    let pgdp = A::pgd_offset(&mm.context, addr);
    // SAFETY: each pointer comes from the previous level's helper on a
    // non-empty entry of this live mm.
    unsafe {
        if A::entry_none(Level::Pgd, pgtable::read_entry(pgdp)) {
            return None;
        }
        let p4dp = A::p4d_offset(pgdp, addr);
        if A::entry_none(Level::P4d, pgtable::read_entry(p4dp)) {
            return None;
        }
        let pudp = A::pud_offset(p4dp, addr);
        if A::entry_none(Level::Pud, pgtable::read_entry(pudp)) {
            return None;
        }
        Some(A::pmd_offset(pudp, addr))
    }
}

/// Allocates a zeroed page for an anonymous mapping.
fn alloc_zeroed_page() -> Option<&'static Page> {
    let page = page_alloc::alloc_pages(0)?;
    // SAFETY: the frame was just allocated for us; RAM is mapped 1:1.
    unsafe { core::ptr::write_bytes(page::page_address(page), 0, PAGE_SIZE as usize) };
    Some(page)
}

/// Resolves a fault of the current task in `mm` (`handle_mm_fault` for
/// anonymous memory): demand paging, copy-on-write, or a spurious fault whose
/// translation another CPU already installed.
pub fn do_user_fault<A: Mmu>(mm: &Mm<A>, info: FaultInfo) -> Result<(), FaultError> {
    let addr = info.addr & !(PAGE_SIZE - 1);
    let vmas = mm.mmap_lock.read();
    let vma = vmas.find(addr).ok_or(FaultError::NoVma)?;
    if (info.write && !vma.flags.write) || !vma.flags.read {
        return Err(FaultError::AccessDenied);
    }
    let writable = vma.flags.write;
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
        page_add_new_anon_rmap(page);
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
    // do_wp_page: a store to a write-protected anonymous page.
    let old_page = page::pfn_to_page(A::pte_pfn(pte));
    if page::page_mapcount(old_page) == 1 && page::page_ref_count(old_page) == 1 {
        // wp_page_reuse: the only user may just write.
        // SAFETY: live entry, PTL held.
        unsafe { A::ptep_get_and_clear(mm, addr, ptep) };
        A::flush_tlb_page(mm, addr);
        let new = A::pfn_pte(A::pte_pfn(pte), PteProt { write: true });
        // SAFETY: the entry was just cleared, PTL held.
        unsafe { A::set_pte_at(mm, addr, ptep, new) };
        return Ok(());
    }
    // wp_page_copy
    drop(ptl);
    let new_page = page_alloc::alloc_pages(0).ok_or(FaultError::OutOfMemory)?;
    let _ptl = pte_lockptr(ptep).lock();
    // SAFETY: as above.
    if unsafe { pgtable::read_entry(ptep) } != pte {
        page::put_page(new_page);
        return Ok(());
    }
    // SAFETY: both frames are live (the old one is mapped and we hold the PTL;
    // the new one is ours); RAM is mapped 1:1.
    unsafe {
        core::ptr::copy_nonoverlapping(
            page::page_address(old_page),
            page::page_address(new_page),
            PAGE_SIZE as usize,
        )
    };
    page_add_new_anon_rmap(new_page);
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

/// Creates a copy of `src` for a child (`dup_mm` / `copy_page_range` for
/// private anonymous memory): every present page is write-protected in both
/// and shared until one of them writes.
pub fn dup_mm<A: Mmu>(src: &Mm<A>) -> Option<Mm<A>> {
    let dst = Mm::<A>::new()?;
    let vmas = src.mmap_lock.write();
    let mut dst_vmas = dst.mmap_lock.write();
    for vma in vmas.iter() {
        if vma.end > A::context_limit(&dst.context) && A::arch_prepare_range(&dst, vma.end).is_err()
        {
            return None;
        }
        dst_vmas.insert(vma.clone());
        let mut addr = vma.start;
        while addr < vma.end {
            if let Some(sp) = pgtable::follow_pte(src, addr) {
                let _ptl = pte_lockptr(sp).lock();
                // SAFETY: live entry of `src`, its PTL held.
                let pte = unsafe { pgtable::read_entry(sp) };
                if A::pte_present(pte) {
                    let dp = pgtable::pte_alloc_walk(&dst, addr)?;
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

/// Tears down an mm no CPU runs any more (`exit_mmap` + `mmdrop`): zaps every
/// VMA, frees every table and the arch context.
pub fn exit_mmap<A: Mmu>(mm: Mm<A>) {
    let me = A::smp_processor_id();
    let runs = super::mm::current_mm::<A>().is_some_and(|m| core::ptr::eq(m, &mm));
    assert!(!runs, "exit_mmap of the mm CPU {me} runs");
    {
        let mut vmas = mm.mmap_lock.write();
        let ranges: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
        for (s, e) in ranges {
            vmas.remove_range(s, e);
            zap_page_range(&mm, s, e);
            free_pgtables(&mm, &vmas, s, e);
        }
    }
    free_upper_tables(&mm);
    frag::pte_frag_destroy(&mm);
    A::destroy_context(&mm.context);
    assert_eq!(
        mm.rss_anon.load(Ordering::Acquire),
        0,
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
                    unsafe { core::ptr::write_volatile(entryp, A::empty_entry(level)) };
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
