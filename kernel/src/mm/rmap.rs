//! The reverse map: from a page to the PTEs that map it (Linux `mm/rmap.c`),
//! and `folio_mkclean`, which write-protects and cleans every one of them
//! before writeback.
//!
//! Design. A page's `mapping` word says where its mappings are found:
//! - a **file page** points to its [`AddressSpace`]; the mappings are in the
//!   address space's `i_mmap` list, one record per shared VMA (mm, range,
//!   `pgoff`), and the page's address in a VMA is
//!   `start + (index - pgoff) * PAGE_SIZE` (`vma_address`);
//! - an **anonymous page** points to an [`AnonVma`] with the low bit
//!   [`PAGE_MAPPING_ANON`] set (as Linux); its `index` is its virtual page
//!   number (private anonymous VMAs have `vm_pgoff = start >> PAGE_SHIFT`, and
//!   nothing moves them). The anon_vma lists the mms that may map the page:
//!   the mm that created it and every mm forked from it since. This model has
//!   one anon_vma per mm instead of one per VMA, and each mm is linked into
//!   the anon_vmas of its ancestors (its `anon_vma_chain`).
//!
//! A walk ([`rmap_walk`]) visits every PTE that maps the page, with that PTE
//! table's PTL held. What keeps the page tables alive during a walk: for a
//! file page, `i_mmap_rwsem` held for read (a VMA is unlinked from `i_mmap`,
//! under the lock held for write, before its page tables are freed); for an
//! anonymous page, the mm's `mmap_lock` held for read (a simplification:
//! Linux uses the anon_vma lock, which here would not cover page-table
//! freeing of a single munmap).
//!
//! Invariants:
//! - `page_mapcount` is exact: one per PTE mapping the page, added when the PTE
//!   is installed and removed when it is cleared (after the flush);
//! - an mm is in the member list of every anon_vma of its chain until
//!   `exit_mmap`; a walk reaches only mms that are members, hence alive.

use super::arch::Mmu;
use super::filemap::{self, AddressSpace};
use super::memory::pte_lockptr;
use super::mm::Mm;
use super::page::{self, Page};
use super::{dirty, pgtable, PAGE_SHIFT};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// Low bit of `page.mapping` on an anonymous page (`PAGE_MAPPING_ANON`).
pub const PAGE_MAPPING_ANON: usize = 1;

/// The mms that may map the anonymous pages hung off this object
/// (`struct anon_vma` with its chain, collapsed per mm; see the module docs).
pub struct AnonVma {
    /// Member mms, as addresses of `Mm<A>` (the arch is the one the kernel
    /// runs; host tests use one emulated arch per address space).
    mms: spin::RwLock<Vec<usize>>,
}

impl Default for AnonVma {
    fn default() -> Self {
        Self::new()
    }
}

impl AnonVma {
    /// An anon_vma with no member.
    pub const fn new() -> Self {
        Self {
            mms: spin::RwLock::new(Vec::new()),
        }
    }

    /// Adds mm `mm` (an address of an `Mm`) to the members.
    pub fn link(&self, mm: usize) {
        self.mms.write().push(mm);
    }

    /// Removes mm `mm` from the members (`unlink_anon_vmas`).
    pub fn unlink(&self, mm: usize) {
        self.mms.write().retain(|&m| m != mm);
    }

    /// Number of member mms.
    pub fn nr_members(&self) -> usize {
        self.mms.read().len()
    }
}

/// The anon_vma an anonymous page hangs off (`folio_anon_vma`).
///
/// The reference is valid while the page is mapped: a mapping mm is a member
/// of a chain that holds the anon_vma.
pub fn page_anon_vma(p: &Page) -> Option<&'static AnonVma> {
    let m = p.mapping.load(Ordering::Acquire);
    if m & PAGE_MAPPING_ANON == 0 || m == PAGE_MAPPING_ANON {
        return None;
    }
    // SAFETY: only `page_add_new_anon_rmap` stores an anon mapping: the
    // address of an `AnonVma` held by the chain of the mm that maps the page,
    // which keeps it alive while the page is mapped (callers check that).
    Some(unsafe { &*((m & !PAGE_MAPPING_ANON) as *const AnonVma) })
}

/// Hangs a new anonymous page off `mm`'s anon_vma at virtual address `addr`
/// (the `mapping` and `index` half of `page_add_new_anon_rmap`).
pub fn page_set_anon_rmap<A: Mmu>(p: &Page, mm: &Mm<A>, addr: u64) {
    let av = mm.anon_vma();
    p.index.store(addr >> PAGE_SHIFT, Ordering::Relaxed);
    p.mapping.store(
        alloc::sync::Arc::as_ptr(&av) as usize | PAGE_MAPPING_ANON,
        Ordering::Release,
    );
}

/// Calls `f(mm, addr, ptep, pte)` for every present PTE that maps `page`,
/// with the PTE table's PTL held, until `f` returns false (`rmap_walk`).
/// The caller must not hold a PTL, nor (for an anonymous page) the
/// `mmap_lock` of an mm that maps it: the walk takes them.
pub fn rmap_walk<A: Mmu>(p: &Page, mut f: impl FnMut(&Mm<A>, u64, *mut u64, u64) -> bool) {
    let pfn = page::page_to_pfn(p);
    let index = p.index.load(Ordering::Acquire);
    // Visits `addr` in `mm`; returns whether to go on.
    let mut visit = |mm: &Mm<A>, addr: u64| -> bool {
        let Some(ptep) = pgtable::follow_pte(mm, addr) else {
            return true;
        };
        let _ptl = pte_lockptr(ptep).lock();
        // SAFETY: a live PTE of `mm` (the table is kept by the caller's lock,
        // see the module docs), PTL held.
        let pte = unsafe { pgtable::read_entry(ptep) };
        if A::pte_present(pte) && A::pte_pfn(pte) == pfn {
            f(mm, addr, ptep, pte)
        } else {
            true
        }
    };
    if let Some(av) = page_anon_vma(p) {
        let addr = index << PAGE_SHIFT;
        for &m in av.mms.read().iter() {
            // SAFETY: members are live mms of arch `A` (module invariants).
            let mm = unsafe { &*(m as *const Mm<A>) };
            let vmas = mm.mmap_lock.read();
            if vmas.find(addr).is_some_and(|v| !v.is_shared_file()) && !visit(mm, addr) {
                return;
            }
        }
    } else if let Some(mapping) = filemap::page_mapping(p) {
        for r in mapping.i_mmap.read().iter() {
            let Some(addr) = r.address(index) else {
                continue;
            };
            // SAFETY: a VMA record is unlinked before its mm goes away.
            let mm = unsafe { &*(r.mm as *const Mm<A>) };
            if !visit(mm, addr) {
                return;
            }
        }
    }
}

/// Write-protects and cleans every PTE that maps the file page `page`
/// (`folio_mkclean`): under each PTE's PTL, a writable or dirty PTE is
/// cleared, flushed from every TLB and replaced by a read-only, clean one;
/// the dirty bits found are carried to the page (`set_page_dirty`). Returns
/// whether any PTE was dirty. Caller holds the page lock.
///
/// Returns at once, without a walk, when the page is not mapped, as Linux
/// does: a mapping whose rmap was already removed is not waited for
/// (the race of catalogue row 3).
///
/// In StorageKey dirty tracking ([`dirty`]) the PTEs hold no dirty state and
/// stay writable (no write-notify): the page is dirty if its frame's change
/// bit is set, which is cleared here (Linux 3.8 `page_mkclean` →
/// `page_test_and_clear_dirty`); the next store anywhere sets it again.
pub fn folio_mkclean<A: Mmu>(p: &Page) -> bool {
    if !page::page_mapped(p) {
        return false;
    }
    // File pages only: an anonymous page, even in the swap cache (whose
    // mapping has no VMAs in i_mmap), has nothing to clean here.
    if filemap::page_mapping(p).is_none() || page::PageAnon(p) {
        return false;
    }
    if !dirty::pte_tracks_dirty() {
        let dirty = dirty::page_test_and_clear_dirty(page::page_to_pfn(p));
        if dirty {
            filemap::set_page_dirty(p);
        }
        return dirty;
    }
    let mut dirty = false;
    rmap_walk::<A>(p, |mm, addr, ptep, pte| {
        if A::pte_write(pte) || A::pte_dirty(pte) {
            // page_mkclean_one: ptep_clear_flush, then the protected entry.
            // SAFETY: a live PTE of `mm`, its PTL held by the walk.
            let old = unsafe { A::ptep_get_and_clear(mm, addr, ptep) };
            A::flush_tlb_page(mm, addr);
            dirty |= A::pte_dirty(old);
            let new = A::pte_mkclean(A::pte_wrprotect(old));
            // SAFETY: the entry was just cleared; PTL held.
            unsafe { A::set_pte_at(mm, addr, ptep, new) };
        }
        true
    });
    if dirty {
        filemap::set_page_dirty(p);
    }
    dirty
}

/// The PTEs mapping `page` that the walk finds, as `(mm address, addr)`
/// (for tests and reports).
pub fn page_mappings<A: Mmu>(p: &Page) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    rmap_walk::<A>(p, |mm, addr, _, _| {
        out.push((mm as *const Mm<A> as usize, addr));
        true
    });
    out
}

impl AddressSpace {
    /// The number of `i_mmap` records (shared VMAs mapping this file).
    pub fn nr_mmaps(&self) -> usize {
        self.i_mmap.read().len()
    }
}
