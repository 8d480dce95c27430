//! The page cache of in-kernel RAM files: lookup and fill, dirtying with tree
//! tags, cleaning for I/O and writeback (Linux `mm/filemap.c`,
//! `mm/page-writeback.c`, `mm/truncate.c`).
//!
//! Design. A [`RamFile`] is an [`AddressSpace`] — the tree of its cached pages
//! (`i_pages`, an [`XArray`] with DIRTY / WRITEBACK / TOWRITE tags under its
//! `tree_lock`), `nrpages`, the `i_mmap` list of the shared VMAs that map it —
//! plus a backing store: one 4 KiB block per file page, what a reader would
//! find after the page cache was dropped. Reading a page in fills a fresh
//! frame from its block; writeback copies the frame back.
//!
//! A cached page has `mapping` = its address space's address and `index` = its
//! page offset, holds one reference for the cache, one per PTE mapping it and
//! one per transient user ([`find_get_page`]). How a page is dirtied is chosen
//! per address space ([`DirtyAops`], Linux `a_ops->dirty_folio`):
//! `Nobuffers` sets `PG_dirty`, then tags the entry DIRTY under the tree lock
//! (`__set_page_dirty_nobuffers`); `NoWriteback` sets the flag only
//! (`__set_page_dirty_no_writeback`, as shmem and the swap cache of Linux 3.4).
//!
//! Writeback of a page ([`writeback`]): lock the page, `clear_page_dirty_for_io`
//! (`folio_mkclean` write-protects and cleans every PTE, carrying their dirty
//! bits to the page; then `PG_dirty` is test-cleared), start writeback (tag
//! WRITEBACK, drop the DIRTY tag), copy the frame to the backing store, end
//! writeback, unlock. A store after the mkclean takes a write-protect fault,
//! which dirties the page again: no write is lost. In StorageKey dirty
//! tracking ([`super::dirty`]) mkclean leaves the PTEs writable and reads and
//! clears the frame's change bit instead; a store after it sets C again,
//! which reaches `PG_dirty` at the next mkclean or when the last mapping goes
//! (`page_remove_rmap`). A page-cache fill resets the key.
//!
//! Locking order: `mmap_lock` → page lock → `i_mmap_rwsem` → PTL → `tree_lock`.
//!
//! Invariants:
//! - a page is in the tree exactly while its `mapping` points to the address
//!   space; it is inserted and removed with the page locked;
//! - the DIRTY tag is set only on a page with `PG_dirty` (the tag may lag the
//!   flag: it is dropped when writeback starts);
//! - an `AddressSpace` outlives its cached pages: a [`RamFile`] truncates its
//!   cache when dropped, and VMAs hold the file, so a mapped page's
//!   `mapping` stays valid.

use super::arch::Mmu;
use super::mm::Vma;
use super::page::{self, Page};
use super::xarray::{XArray, XaMark};
use super::{dirty, page_alloc, rmap, PAGE_SIZE};
use crate::Arch;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How pages of an address space are dirtied (`a_ops->dirty_folio`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyAops {
    /// `__set_page_dirty_nobuffers`: `PG_dirty`, then the DIRTY tag in the
    /// tree under `tree_lock`.
    Nobuffers,
    /// `__set_page_dirty_no_writeback`: `PG_dirty` only, no tag.
    NoWriteback,
}

/// One shared VMA mapping a file, as listed in its `i_mmap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapRef {
    /// The mm (address of an `Mm<A>`).
    pub mm: usize,
    /// The VMA's first address.
    pub start: u64,
    /// The VMA's end (exclusive).
    pub end: u64,
    /// The file page at `start` (`vm_pgoff`).
    pub pgoff: u64,
}

impl MmapRef {
    /// The record of `vma` in mm `mm`.
    pub fn of(mm: usize, vma: &Vma) -> Self {
        Self {
            mm,
            start: vma.start,
            end: vma.end,
            pgoff: vma.pgoff,
        }
    }

    /// Where file page `index` is mapped in this VMA, if it is
    /// (`vma_address`).
    pub fn address(&self, index: u64) -> Option<u64> {
        let pages = (self.end - self.start) / PAGE_SIZE;
        (index >= self.pgoff && index - self.pgoff < pages)
            .then(|| self.start + (index - self.pgoff) * PAGE_SIZE)
    }
}

/// An address space (`struct address_space`): cached pages of one file.
pub struct AddressSpace {
    /// The page tree with its tags; its lock is `tree_lock`.
    pub i_pages: XArray<&'static Page>,
    /// Pages in the tree.
    pub nrpages: AtomicUsize,
    /// The shared VMAs mapping the file (Linux: an interval tree under
    /// `i_mmap_rwsem`).
    pub i_mmap: spin::RwLock<Vec<MmapRef>>,
    /// How its pages are dirtied.
    pub a_ops: DirtyAops,
    /// The backing store: one block per file page.
    store: spin::Mutex<Vec<Box<[u8; PAGE_SIZE as usize]>>>,
    /// Pages written back to the store since creation.
    pub nr_written: AtomicU64,
}

impl AddressSpace {
    /// An empty address space of `pages` pages of zeros, whose tree lock masks
    /// interrupts with `A`'s functions.
    pub fn new<A: Arch>(pages: u64, a_ops: DirtyAops) -> Self {
        Self {
            i_pages: XArray::new::<A>(),
            nrpages: AtomicUsize::new(0),
            i_mmap: spin::RwLock::new(Vec::new()),
            a_ops,
            store: spin::Mutex::new(
                (0..pages)
                    .map(|_| Box::new([0u8; PAGE_SIZE as usize]))
                    .collect(),
            ),
            nr_written: AtomicU64::new(0),
        }
    }

    /// Size in pages.
    pub fn nr_blocks(&self) -> u64 {
        self.store.lock().len() as u64
    }

    /// The 64-bit word at byte `offset` of the backing store (what a reader
    /// would see after eviction).
    pub fn read_backing(&self, offset: u64) -> u64 {
        let store = self.store.lock();
        let (blk, off) = ((offset / PAGE_SIZE) as usize, (offset % PAGE_SIZE) as usize);
        let bytes: [u8; 8] = store[blk][off..off + 8].try_into().expect("8 bytes");
        u64::from_ne_bytes(bytes)
    }

    /// Writes the 64-bit word at byte `offset` of the backing store directly
    /// (a write by another host of the file, for tests).
    pub fn write_backing(&self, offset: u64, val: u64) {
        let mut store = self.store.lock();
        let (blk, off) = ((offset / PAGE_SIZE) as usize, (offset % PAGE_SIZE) as usize);
        store[blk][off..off + 8].copy_from_slice(&val.to_ne_bytes());
    }

    fn address(&self) -> usize {
        self as *const Self as usize
    }

    /// Adds a shared VMA to `i_mmap` (`vma_link` → `__vma_link_file`).
    pub fn link_vma(&self, r: MmapRef) {
        self.i_mmap.write().push(r);
    }

    /// Removes a shared VMA from `i_mmap` (`unlink_file_vma`).
    pub fn unlink_vma(&self, r: MmapRef) {
        let mut list = self.i_mmap.write();
        let i = list
            .iter()
            .position(|x| *x == r)
            .expect("unlink_file_vma: the VMA is not in i_mmap");
        list.swap_remove(i);
    }
}

/// An in-kernel RAM file: an address space with its backing store. Dropping
/// it truncates the page cache (every page must be unmapped by then, which
/// holds since VMAs keep the file alive).
pub struct RamFile {
    /// Its page cache.
    pub mapping: AddressSpace,
}

impl core::fmt::Debug for RamFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "RamFile({:#x}, {} pages, {} cached)",
            self.mapping.address(),
            self.mapping.nr_blocks(),
            self.mapping.nrpages.load(Ordering::Relaxed)
        )
    }
}

impl RamFile {
    /// A file of `pages` zero pages whose pages dirty with `a_ops`.
    pub fn new<A: Arch>(pages: u64, a_ops: DirtyAops) -> Self {
        Self {
            mapping: AddressSpace::new::<A>(pages, a_ops),
        }
    }
}

impl Drop for RamFile {
    fn drop(&mut self) {
        truncate_inode_pages(&self.mapping);
    }
}

/// The address space of a page-cache page, `swapper_space` for a page in the
/// swap cache, `None` for other anonymous or free pages (`page_mapping`).
///
/// The reference is valid while the caller keeps the page in its mapping
/// (page lock) or mapped (a VMA holds the file).
pub fn page_mapping(p: &Page) -> Option<&'static AddressSpace> {
    if page::PageSwapCache(p) {
        return super::swap_state::swapper_space();
    }
    let m = p.mapping.load(Ordering::Acquire);
    if m == 0 || m & rmap::PAGE_MAPPING_ANON != 0 || m == page::MAPPING_POISON {
        return None;
    }
    // SAFETY: only `add_to_page_cache` stores a non-anonymous mapping: the
    // address of a live `AddressSpace`, which outlives its cached pages
    // (module invariants); the caller pins the page in it.
    Some(unsafe { &*(m as *const AddressSpace) })
}

/// The cached page at `index` with a reference for the caller
/// (`find_get_page`).
pub fn find_get_page(mapping: &AddressSpace, index: u64) -> Option<&'static Page> {
    let mut tree = mapping.i_pages.lock();
    let p = tree.load(index)?;
    // The cache's reference keeps it alive while we hold the tree lock.
    page::get_page(p);
    Some(p)
}

/// Inserts a new page, which the caller holds the only reference to, at
/// `index` (`add_to_page_cache_locked`): the page is locked, gets the
/// cache's reference, its `mapping` and `index`. On success the caller fills
/// it, marks it uptodate and unlocks it. An existing entry is returned as the
/// error, with the new page untouched.
pub fn add_to_page_cache(
    p: &'static Page,
    mapping: &AddressSpace,
    index: u64,
) -> Result<(), &'static Page> {
    assert!(
        page::trylock_page(p),
        "add_to_page_cache: a new page is locked"
    );
    page::get_page(p);
    p.index.store(index, Ordering::Relaxed);
    p.mapping.store(mapping.address(), Ordering::Release);
    let r = mapping.i_pages.lock().insert(index, p);
    match r {
        Ok(()) => {
            mapping.nrpages.fetch_add(1, Ordering::AcqRel);
            Ok(())
        }
        Err(other) => {
            p.mapping.store(0, Ordering::Release);
            page::page_ref_dec(p);
            page::unlock_page(p);
            Err(other)
        }
    }
}

/// The page at `index`, read in from the backing store if it is not cached
/// (`read_cache_page` / the slow path of `filemap_fault`); with a reference
/// for the caller. `None` when out of memory or beyond the file.
pub fn read_cache_page(mapping: &AddressSpace, index: u64) -> Option<&'static Page> {
    if index >= mapping.nr_blocks() {
        return None;
    }
    loop {
        if let Some(p) = find_get_page(mapping, index) {
            if !page::PageUptodate(p) {
                // Being filled: the filler holds the page lock until uptodate.
                page::wait_on_page_locked(p);
            }
            return Some(p);
        }
        let p = page_alloc::alloc_pages(0)?;
        match add_to_page_cache(p, mapping, index) {
            Ok(()) => {
                {
                    let store = mapping.store.lock();
                    // SAFETY: the frame is ours (locked, not yet uptodate, no
                    // one maps it); RAM is mapped 1:1.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            store[index as usize].as_ptr(),
                            page::page_address(p),
                            PAGE_SIZE as usize,
                        )
                    };
                }
                // StorageKey dirty tracking: the copy set C; the page is clean.
                dirty::page_reset_key_after_fill(page::page_to_pfn(p));
                page::SetPageUptodate(p);
                page::unlock_page(p);
                return Some(p);
            }
            Err(_) => page::put_page(p),
        }
    }
}

/// Removes a locked, unmapped page from its address space and drops the
/// cache's reference (`delete_from_page_cache`).
pub fn delete_from_page_cache(p: &Page) {
    let mapping = page_mapping(p).expect("delete_from_page_cache: not a cached page");
    let index = p.index.load(Ordering::Acquire);
    let removed = mapping.i_pages.lock().erase(index);
    assert!(
        removed.is_some_and(|q| core::ptr::eq(q, p)),
        "delete_from_page_cache: pfn {:#x} is not at index {index}",
        page::page_to_pfn(p)
    );
    p.mapping.store(0, Ordering::Release);
    mapping.nrpages.fetch_sub(1, Ordering::AcqRel);
    // The caller holds a reference of its own: this is never the last.
    page::put_page(p);
}

/// Evicts the clean, unmapped page at `index` (`invalidate_mapping_page`);
/// returns whether it was evicted. A dirty, mapped, locked or written-back
/// page stays.
pub fn evict_page(mapping: &AddressSpace, index: u64) -> bool {
    let Some(p) = find_get_page(mapping, index) else {
        return false;
    };
    let mut done = false;
    if page::trylock_page(p) {
        if !page::PageDirty(p) && !page::PageWriteback(p) && !page::page_mapped(p) {
            delete_from_page_cache(p);
            done = true;
        }
        page::unlock_page(p);
    }
    page::put_page(p);
    done
}

/// Drops every cached page of `mapping`, dirty or not (`truncate_inode_pages`);
/// the pages must be unmapped.
pub fn truncate_inode_pages(mapping: &AddressSpace) {
    loop {
        let batch = mapping.i_pages.lock().find(0, 16);
        if batch.is_empty() {
            return;
        }
        for (_, p) in batch {
            page::get_page(p);
            page::lock_page(p);
            assert!(
                !page::page_mapped(p),
                "truncate_inode_pages: pfn {:#x} is still mapped",
                page::page_to_pfn(p)
            );
            // Cancel dirty: the data is gone with the file.
            page::ClearPageDirty(p);
            if page_mapping(p).is_some() {
                delete_from_page_cache(p);
            }
            page::unlock_page(p);
            page::put_page(p);
        }
    }
}

/// Marks a page dirty the way its address space asks (`set_page_dirty` /
/// `folio_mark_dirty`); returns whether it was clean. An anonymous page only
/// gets `PG_dirty`.
pub fn set_page_dirty(p: &Page) -> bool {
    let aops = match page_mapping(p) {
        Some(_) if page::PageSwapCache(p) => super::swap_state::dirty_aops(),
        Some(m) => m.a_ops,
        None => DirtyAops::NoWriteback,
    };
    match aops {
        DirtyAops::Nobuffers => __set_page_dirty_nobuffers(p),
        DirtyAops::NoWriteback => __set_page_dirty_no_writeback(p),
    }
}

/// `__set_page_dirty_nobuffers`: sets `PG_dirty`; if it was clean and the page
/// still has a mapping, tags its tree entry DIRTY under `tree_lock`. A tag on
/// an index with no entry is reported by the tree (row 7's detector).
pub fn __set_page_dirty_nobuffers(p: &Page) -> bool {
    if !page::TestSetPageDirty(p) {
        return false;
    }
    if let Some(mapping) = page_mapping(p) {
        let mut tree = mapping.i_pages.lock();
        // Recheck under the lock: truncation clears `mapping` under it.
        if page_mapping(p).is_some() {
            tree.set_mark(super::swap_state::page_index(p), XaMark::Dirty);
        }
    }
    true
}

/// `__set_page_dirty_no_writeback`: sets `PG_dirty` only; returns whether it
/// was clean.
pub fn __set_page_dirty_no_writeback(p: &Page) -> bool {
    page::TestSetPageDirty(p)
}

/// Prepares a locked page for I/O (`clear_page_dirty_for_io`): write-protects
/// and cleans every PTE mapping it ([`rmap::folio_mkclean`], whose dirty bits
/// reach `PG_dirty`), then clears `PG_dirty`. Returns whether the page was
/// dirty, i.e. must be written. The DIRTY tag stays until writeback starts.
pub fn clear_page_dirty_for_io<A: Mmu>(p: &Page) -> bool {
    debug_assert!(page::PageLocked(p));
    rmap::folio_mkclean::<A>(p);
    page::TestClearPageDirty(p)
}

/// Starts writeback of a locked page (`folio_start_writeback`): `PG_writeback`,
/// the WRITEBACK tag, and the DIRTY and TOWRITE tags dropped unless the page
/// was dirtied again. The tags are at the page's `page_index` (its swap
/// entry for a swap-cache page).
pub fn set_page_writeback(p: &Page) {
    p.set_flag(page::PG_writeback);
    if let Some(mapping) = page_mapping(p) {
        let index = super::swap_state::page_index(p);
        let mut tree = mapping.i_pages.lock();
        tree.set_mark(index, XaMark::Writeback);
        if !page::PageDirty(p) {
            tree.clear_mark(index, XaMark::Dirty);
        }
        tree.clear_mark(index, XaMark::Towrite);
    }
}

/// Ends writeback (`folio_end_writeback`): the WRITEBACK tag, then the flag.
pub fn end_page_writeback(p: &Page) {
    if let Some(mapping) = page_mapping(p) {
        mapping
            .i_pages
            .lock()
            .clear_mark(super::swap_state::page_index(p), XaMark::Writeback);
    }
    p.clear_flag(page::PG_writeback);
}

/// Writes one page back to its file, synchronously (`write_one_page`): lock,
/// `clear_page_dirty_for_io`, start writeback, copy the frame to the backing
/// store, end writeback, unlock. Returns whether it wrote (the page was
/// dirty and still cached).
pub fn writeback<A: Mmu>(p: &Page) -> bool {
    page::lock_page(p);
    let Some(mapping) = page_mapping(p) else {
        // Truncated meanwhile.
        page::unlock_page(p);
        return false;
    };
    let pfn = page::page_to_pfn(p);
    crate::race::race_point::<A>(&crate::race::point::points::WRITEBACK_BEFORE_MKCLEAN, pfn);
    let wrote = clear_page_dirty_for_io::<A>(p);
    if wrote {
        set_page_writeback(p);
        let index = p.index.load(Ordering::Acquire) as usize;
        {
            let mut store = mapping.store.lock();
            // SAFETY: we hold a reference and the page lock; the frame is RAM,
            // mapped 1:1. SoftDirty: stores through other mappings can no
            // longer reach it: mkclean write-protected every PTE, and a store
            // that faults waits for the page lock. StorageKey: mappings stay
            // writable and a store may land during the copy, but it set the
            // change bit mkclean cleared, so the page is written again (at
            // the latest after its last unmap); the copy reads plain bytes.
            unsafe { A::copy_page(store[index].as_mut_ptr(), page::page_address(p)) };
        }
        mapping.nr_written.fetch_add(1, Ordering::Release);
        crate::race::race_point::<A>(&crate::race::point::points::WRITEBACK_AFTER_WRITE, pfn);
        end_page_writeback(p);
    }
    page::unlock_page(p);
    wrote
}

/// Writes back every page tagged DIRTY (`filemap_write_and_wait`); returns
/// the number of pages written.
pub fn filemap_write_and_wait<A: Mmu>(mapping: &AddressSpace) -> usize {
    let mut written = 0;
    let mut start = 0;
    loop {
        let batch: Vec<(u64, &'static Page)> = {
            let mut tree = mapping.i_pages.lock();
            let b = tree.find_marked(start, XaMark::Dirty, 16);
            for (_, p) in &b {
                page::get_page(p);
            }
            b
        };
        let Some(&(last, _)) = batch.last() else {
            return written;
        };
        for (_, p) in batch {
            written += usize::from(writeback::<A>(p));
            page::put_page(p);
        }
        start = last + 1;
    }
}

#[cfg(test)]
mod tests;
