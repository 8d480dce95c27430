//! The swap cache (Linux `mm/swap_state.c`): anonymous pages on their way to
//! or from swap, indexed by swap entry in the tree of `swapper_space`.
//!
//! Reclaim takes a locked anonymous page, allocates a swap entry
//! ([`get_swap_page`]) and adds the page to the swap cache
//! ([`add_to_swap_cache_with`]): the page gets `PG_swapcache`, its `private`
//! holds the entry, and the tree holds the page at the entry's index; the
//! cache owns one reference. [`add_to_swap`] then marks the page dirty, as
//! Linux 3.3 does ("Add it to the swap cache and mark it dirty"): the swap
//! slot holds nothing yet, so the page must be written before it can go.
//! [`delete_from_swap_cache`] undoes all of it and frees the entry's slot.
//!
//! The swap device: one 4 KiB slot per entry, written by [`pageout`]
//! (`swap_writepage`, a copy of the frame), freed with the entry when the
//! page leaves the swap cache (`swapcache_free`: this model puts no swap
//! entry in a PTE, so the cache is the entry's only user). Reclaim lets a
//! page go only when it is clean ([`remove_mapping`], `__remove_mapping`):
//! then its slot holds its data. [`remove_mapping`] checks exactly that
//! before it frees both — a check of this model, not a Linux one: a frame
//! that differs from its slot is a write reclaim discarded, counted by
//! [`nr_lost_writes`] with the first differing word ([`last_lost_write`]).
//!
//! While a page is in the swap cache, [`super::filemap::page_mapping`] returns
//! `swapper_space` for it, so `set_page_dirty` dispatches through the swap
//! cache's dirty policy ([`SwapDirtyAops`]) and tags the page's entry by
//! `page_index` (the swap entry). Two runtime knobs replay the history of row 7
//! of the catalogue:
//! - [`SwapCacheOrder`]: `FlagFirst` sets `PG_swapcache` and `private` before
//!   inserting into the tree, outside the tree lock (Linux before 3.4, the
//!   window of seed 004); `Together` does all three under the tree lock
//!   (fixed-d), so no CPU sees the flag without the entry.
//! - [`SwapDirtyAops`]: `Nobuffers` tags the tree (`__set_page_dirty_nobuffers`,
//!   the buggy 3.3 swapper_space); `NoWriteback` only sets `PG_dirty`
//!   (aca50bd3b4c4, fixed-b).
//!
//! Invariants:
//! - (with `Together`) `PG_swapcache` set ⇔ the tree holds the page at
//!   `private`. With `FlagFirst` the first implication has a window: exactly
//!   the bug the tree's missing-entry detector reports;
//! - a swap slot exists only while its entry's page is in the swap cache,
//!   and only once [`pageout`] wrote it;
//! - a swap-cache page that is clean, not under writeback and unmapped holds
//!   the same bytes as its slot (a page never written has a slot of zeros):
//!   what [`remove_mapping`] checks.

use super::arch::Mmu;
use super::filemap::{self, AddressSpace, DirtyAops};
use super::page::{self, Page};
use super::PAGE_SIZE;
use crate::race::point::{points, race_point};
use crate::Arch;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Where `PG_swapcache` is set relative to the tree insertion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SwapCacheOrder {
    /// Flag and `private` first, then insert under the tree lock (before 3.4).
    FlagFirst = 0,
    /// Flag, `private` and insertion together under the tree lock.
    Together = 1,
}

/// How `set_page_dirty` treats a swap-cache page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SwapDirtyAops {
    /// `__set_page_dirty_nobuffers`: `PG_dirty` and the tree's DIRTY tag.
    Nobuffers = 0,
    /// `__set_page_dirty_no_writeback`: `PG_dirty` only.
    NoWriteback = 1,
}

static ORDER: AtomicU8 = AtomicU8::new(SwapCacheOrder::Together as u8);
static DIRTY_AOPS: AtomicU8 = AtomicU8::new(SwapDirtyAops::NoWriteback as u8);
static NEXT_ENTRY: AtomicU64 = AtomicU64::new(1);
static SWAPPER_SPACE: spin::Once<AddressSpace> = spin::Once::new();
/// The swap device: the written slots, by swap entry.
static SWAP_SLOTS: spin::Mutex<BTreeMap<u64, Box<[u8; PAGE_SIZE as usize]>>> =
    spin::Mutex::new(BTreeMap::new());
static NR_SWAP_WRITES: AtomicU64 = AtomicU64::new(0);
static NR_LOST_WRITES: AtomicU64 = AtomicU64::new(0);
static LAST_LOST_WRITE: spin::Mutex<Option<LostWrite>> = spin::Mutex::new(None);

/// A swap-cache page [`remove_mapping`] found clean while its frame held
/// bytes its swap slot did not: the first differing 64-bit word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostWrite {
    /// The page's swap entry.
    pub entry: u64,
    /// Its frame.
    pub pfn: u64,
    /// Byte offset of the word in the page.
    pub offset: u64,
    /// The word in the frame.
    pub page_word: u64,
    /// The word in the slot; `None`: the slot was never written.
    pub slot_word: Option<u64>,
}

/// Selects the insertion order.
pub fn set_order(o: SwapCacheOrder) {
    ORDER.store(o as u8, Ordering::Release);
}

/// The insertion order.
pub fn order() -> SwapCacheOrder {
    match ORDER.load(Ordering::Acquire) {
        0 => SwapCacheOrder::FlagFirst,
        _ => SwapCacheOrder::Together,
    }
}

/// Selects the dirty policy of swap-cache pages.
pub fn set_dirty_aops(a: SwapDirtyAops) {
    DIRTY_AOPS.store(a as u8, Ordering::Release);
}

/// The dirty policy of swap-cache pages (the knob).
pub fn swap_dirty_aops() -> SwapDirtyAops {
    match DIRTY_AOPS.load(Ordering::Acquire) {
        0 => SwapDirtyAops::Nobuffers,
        _ => SwapDirtyAops::NoWriteback,
    }
}

/// The dirty policy of swap-cache pages, as the page cache's [`DirtyAops`].
pub fn dirty_aops() -> DirtyAops {
    match DIRTY_AOPS.load(Ordering::Acquire) {
        0 => DirtyAops::Nobuffers,
        _ => DirtyAops::NoWriteback,
    }
}

/// `swapper_space`, once a page has been added to the swap cache.
pub fn swapper_space() -> Option<&'static AddressSpace> {
    SWAPPER_SPACE.get()
}

fn swapper_space_init<A: Arch>() -> &'static AddressSpace {
    // The tree's own a_ops are not consulted: `set_page_dirty` asks
    // `dirty_aops()` for swap-cache pages, so the knob can change at run time.
    SWAPPER_SPACE.call_once(|| AddressSpace::new::<A>(0, DirtyAops::Nobuffers))
}

/// The index of a page in its tree (`page_index`): the swap entry for a
/// swap-cache page, the file or virtual page index otherwise.
pub fn page_index(p: &Page) -> u64 {
    if page::PageSwapCache(p) {
        p.private.load(Ordering::Acquire) as u64
    } else {
        p.index.load(Ordering::Acquire)
    }
}

/// Allocates a swap entry (`get_swap_page`). Entries are never reused.
pub fn get_swap_page() -> u64 {
    NEXT_ENTRY.fetch_add(1, Ordering::Relaxed)
}

/// Adds a locked anonymous page to the swap cache at `entry`
/// (`__add_to_swap_cache`), in the configured [`order`]. `between` runs at the
/// point where the two orders differ — after the flag under `FlagFirst`,
/// before anything under `Together` — so a test can act inside the window;
/// the race point `swap:add_window` is there too.
/// Returns `false` (and changes nothing) if `entry` is taken.
pub fn add_to_swap_cache_with<A: Arch>(
    p: &'static Page,
    entry: u64,
    between: impl FnOnce(),
) -> bool {
    assert!(page::PageLocked(p), "add_to_swap_cache: page not locked");
    assert!(
        !page::PageSwapCache(p),
        "add_to_swap_cache: page already in the swap cache"
    );
    let space = swapper_space_init::<A>();
    page::get_page(p);
    let inserted = match order() {
        SwapCacheOrder::FlagFirst => {
            page::SetPageSwapCache(p);
            p.private.store(entry as usize, Ordering::Release);
            race_point::<A>(&points::SWAP_ADD_WINDOW, entry);
            between();
            let ok = space.i_pages.lock().insert(entry, p).is_ok();
            if !ok {
                page::ClearPageSwapCache(p);
                p.private.store(0, Ordering::Release);
            }
            ok
        }
        SwapCacheOrder::Together => {
            race_point::<A>(&points::SWAP_ADD_WINDOW, entry);
            between();
            let mut tree = space.i_pages.lock();
            let ok = tree.insert(entry, p).is_ok();
            if ok {
                page::SetPageSwapCache(p);
                p.private.store(entry as usize, Ordering::Release);
            }
            ok
        }
    };
    if inserted {
        space.nrpages.fetch_add(1, Ordering::Relaxed);
    } else {
        page::put_page(p);
    }
    inserted
}

/// Adds a locked anonymous page to the swap cache (`add_to_swap`): a new entry,
/// then [`add_to_swap_cache_with`], then `PG_dirty` (as Linux 3.3: the new
/// slot holds nothing, the page must be written before reclaim can let it
/// go). Returns the entry.
pub fn add_to_swap<A: Arch>(p: &'static Page) -> Option<u64> {
    let entry = get_swap_page();
    if !add_to_swap_cache_with::<A>(p, entry, || {}) {
        return None;
    }
    page::SetPageDirty(p);
    Some(entry)
}

/// The swap-cache page at `entry`, if any (`lookup_swap_cache`, without a
/// reference).
pub fn lookup_swap_cache(entry: u64) -> Option<&'static Page> {
    swapper_space()?.i_pages.load(entry)
}

/// Takes a locked page out of the swap cache (`delete_from_swap_cache`),
/// frees its entry's slot (`swapcache_free`: no PTE holds the entry in this
/// model) and drops the cache's reference. `PG_dirty` is left as it is.
pub fn delete_from_swap_cache(p: &'static Page) {
    assert!(
        page::PageLocked(p),
        "delete_from_swap_cache: page not locked"
    );
    let space = swapper_space().expect("a page was added to the swap cache");
    let entry = {
        let mut tree = space.i_pages.lock();
        let entry = p.private.load(Ordering::Acquire) as u64;
        let gone = tree.erase(entry);
        assert!(
            gone.is_some_and(|q| core::ptr::eq(q, p)),
            "delete_from_swap_cache: pfn {} not at entry {entry}",
            page::page_to_pfn(p)
        );
        page::ClearPageSwapCache(p);
        p.private.store(0, Ordering::Release);
        entry
    };
    space.nrpages.fetch_sub(1, Ordering::Relaxed);
    SWAP_SLOTS.lock().remove(&entry);
    page::put_page(p);
}

/// Writes a locked, unmapped swap-cache page out if it is dirty (reclaim's
/// `pageout` → `swap_writepage`, after `try_to_unmap`): `clear_page_dirty_for_io`, then under
/// `PG_writeback` a copy of the frame to the entry's slot. Synchronous (Linux
/// ends the writeback from the I/O completion). Returns whether it wrote.
pub fn pageout<A: Mmu>(p: &'static Page) -> bool {
    assert!(
        page::PageLocked(p) && page::PageSwapCache(p) && !page::page_mapped(p),
        "pageout: not a locked, unmapped swap-cache page"
    );
    if !filemap::clear_page_dirty_for_io::<A>(p) {
        return false;
    }
    filemap::set_page_writeback(p);
    let entry = p.private.load(Ordering::Acquire) as u64;
    let mut slot = Box::new([0u8; PAGE_SIZE as usize]);
    // SAFETY: the caller holds a reference and the page lock; the frame is
    // RAM, mapped 1:1. Reclaim writes a page out only after its unmap,
    // whose flush dropped every TLB entry for it, so no store lands in the
    // frame during the copy.
    unsafe { A::copy_page(slot.as_mut_ptr(), page::page_address(p)) };
    SWAP_SLOTS.lock().insert(entry, slot);
    NR_SWAP_WRITES.fetch_add(1, Ordering::Relaxed);
    filemap::end_page_writeback(p);
    true
}

/// Lets a locked swap-cache page go (`__remove_mapping`): only when it is
/// clean, not under writeback and held by no one but the swap cache and the
/// caller (`page_freeze_refs(page, 2)`), which also means unmapped. Then it
/// leaves the swap cache and its slot is freed ([`delete_from_swap_cache`]);
/// the caller frees the page with its own reference. Before that it checks
/// that the frame holds what the slot holds (the invariant that makes
/// discarding a clean page safe); a difference is recorded as a lost write
/// ([`nr_lost_writes`], [`last_lost_write`]). Returns whether the page left
/// the swap cache.
pub fn remove_mapping(p: &'static Page) -> bool {
    assert!(
        page::PageLocked(p) && page::PageSwapCache(p),
        "remove_mapping: not a locked swap-cache page"
    );
    if page::page_ref_count(p) != 2 || page::PageDirty(p) || page::PageWriteback(p) {
        return false;
    }
    let entry = p.private.load(Ordering::Acquire) as u64;
    if let Some(lost) = first_difference(p, entry) {
        NR_LOST_WRITES.fetch_add(1, Ordering::AcqRel);
        *LAST_LOST_WRITE.lock() = Some(lost);
    }
    delete_from_swap_cache(p);
    true
}

/// The first word where the frame of swap-cache page `p` differs from the
/// slot of `entry` (zeros if never written).
fn first_difference(p: &Page, entry: u64) -> Option<LostWrite> {
    let slots = SWAP_SLOTS.lock();
    let slot = slots.get(&entry);
    let base = page::page_address(p) as *const u64;
    (0..PAGE_SIZE / 8).find_map(|i| {
        // SAFETY: a word of the frame of a page the caller holds, locked and
        // unmapped; RAM is mapped 1:1.
        let page_word = unsafe { core::ptr::read_volatile(base.add(i as usize)) };
        let slot_word = slot.map(|s| {
            let o = (i * 8) as usize;
            u64::from_ne_bytes(s[o..o + 8].try_into().expect("8 bytes"))
        });
        (page_word != slot_word.unwrap_or(0)).then_some(LostWrite {
            entry,
            pfn: page::page_to_pfn(p),
            offset: i * 8,
            page_word,
            slot_word,
        })
    })
}

/// Frees the swap of a locked swap-cache page (`try_to_free_swap`, as
/// reclaim's `activate_locked` does for a page it could not unmap): not
/// under writeback, and no PTE holds its entry in this model. The page
/// leaves the swap cache dirty: it is its data's only copy again. Returns
/// whether it freed.
pub fn try_to_free_swap(p: &'static Page) -> bool {
    if !page::PageSwapCache(p) || page::PageWriteback(p) {
        return false;
    }
    delete_from_swap_cache(p);
    page::SetPageDirty(p);
    true
}

/// The word at byte `offset` of the slot of swap entry `entry`, if it was
/// written and the entry is still in use.
pub fn swap_slot_word(entry: u64, offset: u64) -> Option<u64> {
    let slots = SWAP_SLOTS.lock();
    let o = offset as usize;
    slots
        .get(&entry)
        .map(|s| u64::from_ne_bytes(s[o..o + 8].try_into().expect("8 bytes")))
}

/// Swap slots written since boot.
pub fn nr_swap_writes() -> u64 {
    NR_SWAP_WRITES.load(Ordering::Acquire)
}

/// Lost writes [`remove_mapping`] found since boot.
pub fn nr_lost_writes() -> u64 {
    NR_LOST_WRITES.load(Ordering::Acquire)
}

/// The last lost write [`remove_mapping`] found.
pub fn last_lost_write() -> Option<LostWrite> {
    *LAST_LOST_WRITE.lock()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::emul::Emul4k;
    use crate::mm::filemap::set_page_dirty;
    use crate::mm::memmap::test_mem;
    use crate::mm::xarray::{nr_tag_on_missing_entry, XaMark};
    use crate::mm::{page, page_alloc};

    /// A locked, zeroed anonymous page of our own.
    fn anon_page() -> &'static Page {
        let p = page_alloc::alloc_pages(0).unwrap();
        // SAFETY: a frame we own; test RAM is mapped.
        unsafe { core::ptr::write_bytes(page::page_address(p), 0, PAGE_SIZE as usize) };
        page::SetPageAnon(p);
        assert!(page::trylock_page(p));
        p
    }

    fn release(p: &'static Page) {
        page::unlock_page(p);
        page::put_page(p);
    }

    /// Stores `val` at byte `offset` of `p`'s frame.
    fn store(p: &Page, offset: usize, val: u64) {
        // SAFETY: a frame of a page the test holds; test RAM is mapped.
        unsafe { (page::page_address(p).add(offset) as *mut u64).write_volatile(val) };
    }

    #[test]
    fn add_dirty_and_delete() {
        let _m = test_mem::setup();
        let (free, bad) = (page_alloc::nr_free_pages(), page_alloc::nr_bad_pages());
        set_order(SwapCacheOrder::Together);
        set_dirty_aops(SwapDirtyAops::Nobuffers);
        let p = anon_page();
        let entry = add_to_swap::<Emul4k>(p).unwrap();
        assert!(page::PageSwapCache(p));
        assert!(page::PageDirty(p), "add_to_swap marks the page dirty");
        assert_eq!(page_index(p), entry);
        assert!(lookup_swap_cache(entry).is_some_and(|q| core::ptr::eq(q, p)));
        assert_eq!(
            page::page_ref_count(p),
            2,
            "the swap cache holds a reference"
        );
        // Cleaned (as pageout's clear_page_dirty_for_io does), then dirtied
        // again: tagged at its entry.
        assert!(page::TestClearPageDirty(p));
        let missing = nr_tag_on_missing_entry();
        assert!(set_page_dirty(p));
        assert!(
            swapper_space()
                .unwrap()
                .i_pages
                .get_mark(entry, XaMark::Dirty),
            "tagged at its entry"
        );
        assert_eq!(nr_tag_on_missing_entry(), missing);
        delete_from_swap_cache(p);
        assert!(!page::PageSwapCache(p) && lookup_swap_cache(entry).is_none());
        assert_eq!(page::page_ref_count(p), 1);
        release(p);
        set_dirty_aops(SwapDirtyAops::NoWriteback);
        assert_eq!(
            (page_alloc::nr_free_pages(), page_alloc::nr_bad_pages()),
            (free, bad)
        );
    }

    /// Reclaim's way out for an unmapped page: written because add_to_swap
    /// dirtied it, then let go clean with its data in its slot.
    #[test]
    fn pageout_then_remove_mapping_keeps_the_data() {
        let _m = test_mem::setup();
        set_dirty_aops(SwapDirtyAops::NoWriteback);
        let p = anon_page();
        store(p, 8, 0x5eed);
        let (writes, lost) = (nr_swap_writes(), nr_lost_writes());
        let entry = add_to_swap::<Emul4k>(p).unwrap();
        assert!(pageout::<Emul4k>(p), "a dirty page is written");
        assert!(!page::PageDirty(p) && !page::PageWriteback(p));
        assert_eq!(swap_slot_word(entry, 8), Some(0x5eed));
        assert!(!pageout::<Emul4k>(p), "a clean page is not written");
        assert!(remove_mapping(p));
        assert_eq!((nr_swap_writes(), nr_lost_writes()), (writes + 1, lost));
        assert!(!page::PageSwapCache(p));
        assert_eq!(
            swap_slot_word(entry, 8),
            None,
            "the slot went with the entry"
        );
        release(p);
    }

    /// A clean page whose frame differs from its slot is a lost write:
    /// never written, or stored to after its writeback.
    #[test]
    fn remove_mapping_reports_data_the_slot_lacks() {
        let _m = test_mem::setup();
        set_dirty_aops(SwapDirtyAops::NoWriteback);
        set_order(SwapCacheOrder::Together);
        // Never written: added without add_to_swap's dirtying.
        let p = anon_page();
        store(p, 16, 7);
        let lost = nr_lost_writes();
        let entry = get_swap_page();
        assert!(add_to_swap_cache_with::<Emul4k>(p, entry, || {}));
        assert!(remove_mapping(p));
        assert_eq!(nr_lost_writes(), lost + 1);
        let l = last_lost_write().unwrap();
        assert_eq!(
            (l.entry, l.offset, l.page_word, l.slot_word),
            (entry, 16, 7, None)
        );
        // Written, then stored to.
        let entry = add_to_swap::<Emul4k>(p).unwrap();
        assert!(pageout::<Emul4k>(p));
        store(p, 16, 8);
        assert!(remove_mapping(p));
        assert_eq!(nr_lost_writes(), lost + 2);
        let l = last_lost_write().unwrap();
        assert_eq!(
            (l.entry, l.offset, l.page_word, l.slot_word),
            (entry, 16, 8, Some(7))
        );
        // Dirty or referenced by another: not let go.
        let entry = add_to_swap::<Emul4k>(p).unwrap();
        assert!(!remove_mapping(p), "dirty");
        assert!(pageout::<Emul4k>(p));
        page::get_page(p);
        assert!(!remove_mapping(p), "a third reference");
        page::put_page(p);
        assert!(try_to_free_swap(p));
        assert!(page::PageDirty(p) && lookup_swap_cache(entry).is_none());
        assert_eq!(nr_lost_writes(), lost + 2);
        release(p);
    }

    /// `set_page_dirty` inside the window between `PG_swapcache` and the tree
    /// insertion: reported with the buggy order and dirty policy, not with
    /// either fix.
    fn dirty_in_window(order: SwapCacheOrder, aops: SwapDirtyAops) -> u64 {
        set_order(order);
        set_dirty_aops(aops);
        let p = anon_page();
        let before = nr_tag_on_missing_entry();
        assert!(add_to_swap_cache_with::<Emul4k>(p, get_swap_page(), || {
            set_page_dirty(p);
        }));
        let reports = nr_tag_on_missing_entry() - before;
        delete_from_swap_cache(p);
        release(p);
        set_order(SwapCacheOrder::Together);
        set_dirty_aops(SwapDirtyAops::NoWriteback);
        reports
    }

    #[test]
    fn the_flag_first_window_tags_a_missing_entry() {
        let _m = test_mem::setup();
        assert_eq!(
            dirty_in_window(SwapCacheOrder::FlagFirst, SwapDirtyAops::Nobuffers),
            1,
            "buggy"
        );
        assert_eq!(
            dirty_in_window(SwapCacheOrder::FlagFirst, SwapDirtyAops::NoWriteback),
            0,
            "fixed-b"
        );
        assert_eq!(
            dirty_in_window(SwapCacheOrder::Together, SwapDirtyAops::Nobuffers),
            0,
            "fixed-d"
        );
    }
}
