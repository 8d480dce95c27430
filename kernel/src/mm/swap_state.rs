//! The swap cache (Linux `mm/swap_state.c`): anonymous pages on their way to
//! or from swap, indexed by swap entry in the tree of `swapper_space`.
//!
//! Reclaim takes a locked anonymous page, allocates a swap entry
//! ([`get_swap_page`]) and adds the page to the swap cache
//! ([`add_to_swap_cache`]): the page gets `PG_swapcache`, its `private` holds
//! the entry, and the tree holds the page at the entry's index; the cache owns
//! one reference. [`delete_from_swap_cache`] undoes all of it.
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
//! Invariants (with `Together`): `PG_swapcache` set ⇔ the tree holds the page
//! at `private`. With `FlagFirst` the first implication has a window: exactly
//! the bug the tree's missing-entry detector reports.

use super::filemap::{AddressSpace, DirtyAops};
use super::page::{self, Page};
use crate::race::point::{points, race_point};
use crate::Arch;
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
/// then [`add_to_swap_cache_with`]. Returns the entry.
pub fn add_to_swap<A: Arch>(p: &'static Page) -> Option<u64> {
    let entry = get_swap_page();
    add_to_swap_cache_with::<A>(p, entry, || {}).then_some(entry)
}

/// The swap-cache page at `entry`, if any (`lookup_swap_cache`, without a
/// reference).
pub fn lookup_swap_cache(entry: u64) -> Option<&'static Page> {
    swapper_space()?.i_pages.load(entry)
}

/// Takes a locked page out of the swap cache (`delete_from_swap_cache`) and
/// drops the cache's reference.
pub fn delete_from_swap_cache(p: &'static Page) {
    assert!(
        page::PageLocked(p),
        "delete_from_swap_cache: page not locked"
    );
    let space = swapper_space().expect("a page was added to the swap cache");
    {
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
    }
    space.nrpages.fetch_sub(1, Ordering::Relaxed);
    page::ClearPageDirty(p);
    page::put_page(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::emul::Emul4k;
    use crate::mm::filemap::set_page_dirty;
    use crate::mm::memmap::test_mem;
    use crate::mm::xarray::{nr_tag_on_missing_entry, XaMark};
    use crate::mm::{page, page_alloc};

    /// A locked anonymous page of our own.
    fn anon_page() -> &'static Page {
        let p = page_alloc::alloc_pages(0).unwrap();
        page::SetPageAnon(p);
        assert!(page::trylock_page(p));
        p
    }

    fn release(p: &'static Page) {
        page::unlock_page(p);
        page::put_page(p);
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
        assert_eq!(page_index(p), entry);
        assert!(lookup_swap_cache(entry).is_some_and(|q| core::ptr::eq(q, p)));
        assert_eq!(
            page::page_ref_count(p),
            2,
            "the swap cache holds a reference"
        );
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
