//! The frame database: one [`Page`] descriptor per 4 KiB frame of physical memory
//! (Linux `struct page` in the flat `mem_map`).
//!
//! Design. [`super::memmap::mem_init`] carves an array of descriptors, one per
//! pfn from 0 to `max_pfn`, out of RAM itself (as Linux's `alloc_node_mem_map`
//! does) and publishes it here; from then on [`pfn_to_page`] is an index and
//! [`page_to_pfn`] a pointer difference. Frames that are not usable RAM (holes,
//! the kernel image, the frame database itself) keep a descriptor that is
//! [`PG_reserved`] with a reference count of 1, so they are never freed into
//! the buddy allocator.
//!
//! Every field is an atomic: descriptors are shared by all CPUs, and the race
//! scenarios deliberately touch them from several CPUs at once (a page unlocked
//! after it was freed, a speculative reference on a freed page). Plain
//! read-modify-write of a descriptor field is never done.
//!
//! Conventions (Linux's):
//! - `_refcount` counts references; 0 means free (or frozen, being freed). A
//!   reference is taken only from a live one ([`get_page`]) or speculatively with
//!   [`get_page_unless_zero`], which fails on a free page.
//! - `_mapcount` is **-1-based**, as in Linux: -1 means "mapped by no PTE";
//!   [`page_mapcount`] returns the 0-based count.
//! - The page lock is the [`PG_locked`] bit; a CPU that had to wait for it sets
//!   [`PG_waiters`] and is counted in the descriptor's waiter count. Waiters spin
//!   (with `spin_loop`), so unlocking wakes no one: it clears the bit atomically.
//!
//! Invariants:
//! - The descriptor array never moves and lives until the machine ends, so
//!   `&'static Page` is sound for every valid pfn.
//! - While a frame is free (in the buddy allocator), its `_refcount` is 0, its
//!   `_mapcount` is [`MAPCOUNT_POISON`], its `mapping` is [`MAPPING_POISON`] and
//!   none of the flags of [`PAGE_FLAGS_CHECK_AT_PREP`] is set; the head of a free
//!   block carries [`PG_buddy`] and its order in `private`. The allocator checks
//!   all of that when it hands the frame out again ([`super::page_alloc`]).
//! - The buddy free-list links (`buddy_next`, `buddy_prev`) are touched only
//!   under the allocator's zone lock.

use super::{page_alloc, PAGE_SHIFT};
use crate::race::point::{points, sync_point};
use crate::race::waitfor;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// A page frame's descriptor (Linux `struct page`). 64 bytes, like Linux's.
#[repr(C, align(64))]
pub struct Page {
    /// Page flags (`PG_*` masks) and, in the top bits of a compound head, the
    /// compound order.
    pub flags: AtomicU64,
    /// Reference count; 0 when free.
    pub _refcount: AtomicI32,
    /// PTEs mapping the page, -1-based (-1: unmapped). [`MAPCOUNT_POISON`] while
    /// the frame is free.
    pub _mapcount: AtomicI32,
    /// The owner: an `anon_vma` or address space, as an address; 0 for none,
    /// [`MAPPING_POISON`] while free.
    pub mapping: AtomicUsize,
    /// Offset within the mapping, in pages (or the swap entry of a swap-cache
    /// page).
    pub index: AtomicU64,
    /// Owner-private word; the buddy order on the head of a free block.
    pub private: AtomicUsize,
    /// Next free block of the same order (a pfn), under the zone lock.
    pub(crate) buddy_next: AtomicU32,
    /// Previous free block of the same order (a pfn), under the zone lock.
    pub(crate) buddy_prev: AtomicU32,
    /// Page-table fragments in use in this frame (`pt_frag_refcount`).
    pub pt_frag_refcount: AtomicI32,
    /// s390x page-table fragment state: which 2 KiB halves of the frame are
    /// allocated (and pending an RCU-delayed free), as Linux's `PP`/`AA` bits.
    pub pt_frag_bits: AtomicU32,
    /// CPUs waiting in [`lock_page`] for this page.
    pub(crate) waiters: AtomicU32,
    /// On a tail page of a compound page: its distance in frames from the
    /// head (Linux keeps a pointer to the head, `compound_head`); 0 on every
    /// other page. Set by [`prep_compound_page`], cleared when the block is
    /// freed.
    pub(crate) compound_tail: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Page>() == 64);

/// No pfn: the end of a free list.
pub(crate) const NO_PFN: u32 = u32::MAX;

// ---- flags -----------------------------------------------------------------

macro_rules! page_flags {
    ($( $(#[$doc:meta])* $name:ident = $bit:expr, $text:literal; )*) => {
        $( $(#[$doc])* #[allow(non_upper_case_globals)] pub const $name: u64 = 1 << $bit; )*
        /// Every flag with its name, for reports.
        pub const PAGE_FLAG_NAMES: &[(u64, &str)] = &[$( ($name, $text) ),*];
    };
}

page_flags! {
    /// The page lock ([`lock_page`]).
    PG_locked = 0, "locked";
    /// Someone waits (or waited) for the page lock.
    PG_waiters = 1, "waiters";
    /// Referenced since the last scan.
    PG_referenced = 2, "referenced";
    /// The contents are valid.
    PG_uptodate = 3, "uptodate";
    /// The contents differ from the backing store.
    PG_dirty = 4, "dirty";
    /// On an LRU list.
    PG_lru = 5, "lru";
    /// On the active LRU list.
    PG_active = 6, "active";
    /// Head of a compound page; the order is in the flags' top byte.
    PG_head = 7, "head";
    /// Not managed by the allocator (holes, the kernel image, the frame database).
    PG_reserved = 8, "reserved";
    /// `private` holds owner data.
    PG_private = 9, "private";
    /// Being written back.
    PG_writeback = 10, "writeback";
    /// In the swap cache.
    PG_swapcache = 11, "swapcache";
    /// Backed by swap (anonymous memory).
    PG_swapbacked = 12, "swapbacked";
    /// Anonymous (Linux encodes this in the low bit of `mapping`).
    PG_anon = 13, "anon";
    /// Locked in memory (`mlock`).
    PG_mlocked = 14, "mlocked";
    /// A page table (Linux: the `PGTY_table` page type).
    PG_pgtable = 15, "pgtable";
    /// Head of a free buddy block (Linux: the `PGTY_buddy` page type).
    PG_buddy = 16, "buddy";
    /// The frame was filled with [`PAGE_POISON`] when freed and has not been
    /// handed out since (Linux: `PAGE_EXT_DEBUG_POISON`).
    PG_poisoned = 17, "poisoned";
}

/// Flags that must be clear when a page is freed; a page freed with one of them
/// is a bug ("PAGE_FLAGS_CHECK_AT_FREE flag(s) set"), and the page is leaked.
///
/// Linux's list (`include/linux/page-flags.h`) is lru, locked, private,
/// private_2, writeback, reserved, slab, active, unevictable and mlocked. Here:
/// locked, lru, active, private, writeback, reserved, mlocked, as Linux; plus
/// swapcache (Linux catches a freed swap-cache page through its mapping), pgtable
/// (Linux: a non-zero page type; a page table must be destructed before it is
/// freed) and buddy (a double free). Dirty, uptodate, referenced, anon,
/// swapbacked, waiters and head are cleared silently at free, as Linux does.
pub const PAGE_FLAGS_CHECK_AT_FREE: u64 = PG_locked
    | PG_lru
    | PG_active
    | PG_private
    | PG_writeback
    | PG_reserved
    | PG_mlocked
    | PG_swapcache
    | PG_pgtable
    | PG_buddy;

/// Bits of `flags` holding a compound head's order.
pub const PAGE_ORDER_SHIFT: u32 = 56;
/// Mask of every `PG_*` flag.
pub const PAGEFLAGS_MASK: u64 = (1 << 18) - 1;

/// Flags that must be clear on a page when it is allocated (Linux: every flag).
/// [`PG_poisoned`] is the allocator's own and checked separately.
pub const PAGE_FLAGS_CHECK_AT_PREP: u64 = PAGEFLAGS_MASK & !PG_poisoned;

/// `_mapcount` of a free frame. Any other value on a free frame means someone
/// mapped or unmapped it after it was freed.
pub const MAPCOUNT_POISON: i32 = 0x6b6b_6b6b;
/// `mapping` of a free frame (Linux's poison-pointer style: non-canonical on
/// x86-64, beyond s390x memory).
pub const MAPPING_POISON: usize = 0xdead_0000_0000_0400;

/// Writes the names of the flags set in `flags`, `|`-separated.
pub struct FlagNames(pub u64);

impl core::fmt::Display for FlagNames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        for &(bit, name) in PAGE_FLAG_NAMES {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl Page {
    /// The descriptor of a reserved frame, as the frame database starts out.
    pub(crate) const fn reserved() -> Self {
        Self {
            flags: AtomicU64::new(PG_reserved),
            _refcount: AtomicI32::new(1),
            _mapcount: AtomicI32::new(-1),
            mapping: AtomicUsize::new(0),
            index: AtomicU64::new(0),
            private: AtomicUsize::new(0),
            buddy_next: AtomicU32::new(NO_PFN),
            buddy_prev: AtomicU32::new(NO_PFN),
            pt_frag_refcount: AtomicI32::new(0),
            pt_frag_bits: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            compound_tail: AtomicU32::new(0),
        }
    }

    /// The flags word.
    #[inline]
    pub fn flags(&self) -> u64 {
        self.flags.load(Ordering::Acquire)
    }

    /// Whether every flag of `mask` is set.
    #[inline]
    pub fn test_flag(&self, mask: u64) -> bool {
        self.flags() & mask == mask
    }

    /// Sets the flags of `mask` atomically.
    #[inline]
    pub fn set_flag(&self, mask: u64) {
        self.flags.fetch_or(mask, Ordering::AcqRel);
    }

    /// Clears the flags of `mask` atomically.
    #[inline]
    pub fn clear_flag(&self, mask: u64) {
        self.flags.fetch_and(!mask, Ordering::AcqRel);
    }

    /// Sets `mask` and returns whether all of it was set before.
    #[inline]
    pub fn test_and_set_flag(&self, mask: u64) -> bool {
        self.flags.fetch_or(mask, Ordering::AcqRel) & mask == mask
    }

    /// Clears `mask` and returns whether any of it was set before.
    #[inline]
    pub fn test_and_clear_flag(&self, mask: u64) -> bool {
        self.flags.fetch_and(!mask, Ordering::AcqRel) & mask != 0
    }
}

macro_rules! page_flag_fns {
    ($($test:ident $set:ident $clear:ident = $flag:ident;)*) => {$(
        #[doc = concat!("Whether `", stringify!($flag), "` is set.")]
        #[allow(non_snake_case)]
        #[inline]
        pub fn $test(page: &Page) -> bool {
            page.test_flag($flag)
        }
        #[doc = concat!("Sets `", stringify!($flag), "`.")]
        #[allow(non_snake_case)]
        #[inline]
        pub fn $set(page: &Page) {
            page.set_flag($flag)
        }
        #[doc = concat!("Clears `", stringify!($flag), "`.")]
        #[allow(non_snake_case)]
        #[inline]
        pub fn $clear(page: &Page) {
            page.clear_flag($flag)
        }
    )*};
}

page_flag_fns! {
    PageLocked SetPageLocked ClearPageLocked = PG_locked;
    PageWaiters SetPageWaiters ClearPageWaiters = PG_waiters;
    PageReferenced SetPageReferenced ClearPageReferenced = PG_referenced;
    PageUptodate SetPageUptodate ClearPageUptodate = PG_uptodate;
    PageDirty SetPageDirty ClearPageDirty = PG_dirty;
    PageLRU SetPageLRU ClearPageLRU = PG_lru;
    PageActive SetPageActive ClearPageActive = PG_active;
    PageHead SetPageHead ClearPageHead = PG_head;
    PageReserved SetPageReserved ClearPageReserved = PG_reserved;
    PagePrivate SetPagePrivate ClearPagePrivate = PG_private;
    PageWriteback SetPageWriteback ClearPageWriteback = PG_writeback;
    PageSwapCache SetPageSwapCache ClearPageSwapCache = PG_swapcache;
    PageSwapBacked SetPageSwapBacked ClearPageSwapBacked = PG_swapbacked;
    PageAnon SetPageAnon ClearPageAnon = PG_anon;
    PageMlocked SetPageMlocked ClearPageMlocked = PG_mlocked;
    PageTable SetPageTable ClearPageTable = PG_pgtable;
    PageBuddy SetPageBuddy ClearPageBuddy = PG_buddy;
}

/// Sets `PG_dirty`; returns whether it was clear (Linux `TestSetPageDirty`).
#[allow(non_snake_case)]
pub fn TestSetPageDirty(page: &Page) -> bool {
    !page.test_and_set_flag(PG_dirty)
}

/// Clears `PG_dirty`; returns whether it was set (Linux `TestClearPageDirty`).
#[allow(non_snake_case)]
pub fn TestClearPageDirty(page: &Page) -> bool {
    page.test_and_clear_flag(PG_dirty)
}

// ---- the descriptor array --------------------------------------------------

/// The descriptor array (`mem_map`), null until [`super::memmap::mem_init`].
static MEM_MAP: AtomicPtr<Page> = AtomicPtr::new(core::ptr::null_mut());
/// One past the highest pfn with a descriptor.
static MAX_PFN: AtomicU64 = AtomicU64::new(0);

/// Publishes the descriptor array.
///
/// # Safety
/// `mem_map` points at `max_pfn` initialised descriptors that stay valid and in
/// place for the rest of the program and are used for nothing else. Called once.
pub(crate) unsafe fn set_mem_map(mem_map: *mut Page, max_pfn: u64) {
    MAX_PFN.store(max_pfn, Ordering::Release);
    MEM_MAP.store(mem_map, Ordering::Release);
}

/// One past the highest pfn with a descriptor (Linux `max_pfn`); 0 before the
/// frame database exists.
pub fn max_pfn() -> u64 {
    if MEM_MAP.load(Ordering::Acquire).is_null() {
        0
    } else {
        MAX_PFN.load(Ordering::Acquire)
    }
}

/// Whether `pfn` has a descriptor.
#[inline]
pub fn pfn_valid(pfn: u64) -> bool {
    pfn < max_pfn()
}

/// The descriptor of frame `pfn`. Panics if `pfn` has none ([`pfn_valid`]).
#[inline]
pub fn pfn_to_page(pfn: u64) -> &'static Page {
    let base = MEM_MAP.load(Ordering::Acquire);
    assert!(
        !base.is_null() && pfn < MAX_PFN.load(Ordering::Acquire),
        "pfn_to_page({pfn:#x}): no such frame (max_pfn {:#x})",
        max_pfn()
    );
    // SAFETY: `set_mem_map`'s contract: `base` points at `MAX_PFN` live,
    // initialised descriptors that are never freed or moved; `pfn` is in range.
    unsafe { &*base.add(pfn as usize) }
}

/// A synchronisation event on `page` ([`sync_point`] with its pfn, read only
/// when the point is armed: a descriptor outside the frame database, as in
/// a unit test, has none).
#[inline(always)]
fn sync_page(p: &'static crate::race::RacePoint, page: &Page) {
    if p.armed() {
        sync_point(p, page_to_pfn(page));
    }
}

/// The frame number of `page`, which must be a descriptor of the frame database.
#[inline]
pub fn page_to_pfn(page: &Page) -> u64 {
    let base = MEM_MAP.load(Ordering::Acquire) as usize;
    let at = page as *const Page as usize;
    debug_assert!(at >= base && (at - base).is_multiple_of(core::mem::size_of::<Page>()));
    ((at - base) / core::mem::size_of::<Page>()) as u64
}

/// Physical address of the frame (Linux `page_to_phys`).
#[inline]
pub fn page_to_phys(page: &Page) -> u64 {
    page_to_pfn(page) << PAGE_SHIFT
}

/// The descriptor of the frame containing physical address `phys`.
#[inline]
pub fn phys_to_page(phys: u64) -> &'static Page {
    pfn_to_page(phys >> PAGE_SHIFT)
}

/// Where the kernel reads and writes physical address `phys`. RAM is mapped 1:1
/// in the kernel, so this is `phys` itself; in host unit tests "physical memory"
/// is a host buffer at an offset.
#[inline]
pub fn phys_to_virt(phys: u64) -> *mut u8 {
    (phys as usize).wrapping_add(phys_offset()) as *mut u8
}

/// The physical address of kernel address `virt` in the 1:1 map of RAM (Linux
/// `virt_to_phys`); the inverse of [`phys_to_virt`]. An address outside that
/// map gives a value that no frame has.
#[inline]
pub fn virt_to_phys(virt: u64) -> u64 {
    virt.wrapping_sub(phys_offset() as u64)
}

/// The kernel address of the frame (Linux `page_address`).
#[inline]
pub fn page_address(page: &Page) -> *mut u8 {
    phys_to_virt(page_to_phys(page))
}

#[cfg(not(test))]
#[inline(always)]
fn phys_offset() -> usize {
    0
}

/// Host address of physical address 0 in unit tests.
#[cfg(test)]
pub(crate) static PHYS_OFFSET: AtomicUsize = AtomicUsize::new(0);

#[cfg(test)]
fn phys_offset() -> usize {
    PHYS_OFFSET.load(Ordering::Acquire)
}

// ---- reference counts (include/linux/page_ref.h, mm.h) --------------------

/// The reference count.
#[inline]
pub fn page_ref_count(page: &Page) -> i32 {
    page._refcount.load(Ordering::Acquire)
}

/// Sets the reference count (only on a page no one else can reach).
#[inline]
pub fn set_page_count(page: &Page, v: i32) {
    page._refcount.store(v, Ordering::Release);
}

/// Adds `nr` references.
#[inline]
pub fn page_ref_add(page: &Page, nr: i32) {
    page._refcount.fetch_add(nr, Ordering::AcqRel);
}

/// Drops `nr` references (never to zero: use [`put_page`] for that).
#[inline]
pub fn page_ref_sub(page: &Page, nr: i32) {
    page._refcount.fetch_sub(nr, Ordering::AcqRel);
}

/// Drops `nr` references and returns whether the count reached zero (Linux
/// `page_ref_sub_and_test`).
#[inline]
pub fn page_ref_sub_and_test(page: &Page, nr: i32) -> bool {
    page._refcount.fetch_sub(nr, Ordering::AcqRel) == nr
}

/// Adds a reference.
#[inline]
pub fn page_ref_inc(page: &Page) {
    page_ref_add(page, 1);
}

/// Drops a reference.
#[inline]
pub fn page_ref_dec(page: &Page) {
    page_ref_sub(page, 1);
}

/// Drops a reference and returns whether the count reached zero.
#[inline]
pub fn page_ref_dec_and_test(page: &Page) -> bool {
    page._refcount.fetch_sub(1, Ordering::AcqRel) == 1
}

/// Adds `nr` references unless the count is `u`; returns whether it added
/// (Linux `page_ref_add_unless`).
#[inline]
pub fn page_ref_add_unless(page: &Page, nr: i32, u: i32) -> bool {
    page._refcount
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v != u).then_some(v + nr)
        })
        .is_ok()
}

/// Takes a reference on a page the caller already holds one on (or reaches
/// under a lock that keeps it alive). A reference taken on a page whose count
/// is zero is reported as a bad page (Linux: `VM_BUG_ON_PAGE`), then taken.
#[inline]
pub fn get_page(page: &Page) {
    sync_page(&points::SYNC_PAGE_GET, page);
    let old = page._refcount.fetch_add(1, Ordering::AcqRel);
    if old <= 0 {
        page_alloc::report_bad_page(page, "get_page on a page with zero _refcount", 0);
    }
}

/// Takes a reference unless the page is free (count zero): the speculative
/// reference of GUP-fast and the page cache. Returns whether it took one.
#[inline]
pub fn get_page_unless_zero(page: &Page) -> bool {
    sync_page(&points::SYNC_PAGE_GET, page);
    page_ref_add_unless(page, 1, 0)
}

/// Drops a reference; returns whether it was the last. A put on a page whose
/// count is already zero is reported as a bad page and not done: the count
/// never goes negative.
#[inline]
pub fn put_page_testzero(page: &Page) -> bool {
    sync_page(&points::SYNC_PAGE_PUT, page);
    match page
        ._refcount
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v > 0).then_some(v - 1)
        }) {
        Ok(old) => old == 1,
        Err(_) => {
            page_alloc::report_bad_page(page, "put_page on a page with zero _refcount", 0);
            false
        }
    }
}

/// Drops a reference and frees the page (with its compound order) when it was
/// the last.
#[inline]
pub fn put_page(page: &Page) {
    if put_page_testzero(page) {
        page_alloc::free_frozen_pages(page, compound_order(page));
    }
}

// ---- compound pages --------------------------------------------------------

/// The order of a compound page's head, 0 for any other page.
#[inline]
pub fn compound_order(page: &Page) -> u32 {
    let flags = page.flags();
    if flags & PG_head != 0 {
        (flags >> PAGE_ORDER_SHIFT) as u32
    } else {
        0
    }
}

/// The head of the compound page `page` belongs to, or `page` itself if it is
/// a head or not part of a compound page (Linux `compound_head`). Racy
/// against the block being freed, as Linux's is against a split; a lockless
/// caller rechecks after taking its reference.
#[inline]
pub fn compound_head(page: &'static Page) -> &'static Page {
    match page.compound_tail.load(Ordering::Acquire) {
        0 => page,
        off => pfn_to_page(page_to_pfn(page) - u64::from(off)),
    }
}

/// Makes a freshly allocated order-`order` block a compound page: [`put_page`]
/// on the head then frees the whole block (Linux `prep_compound_page`).
pub fn prep_compound_page(page: &Page, order: u32) {
    if order > 0 {
        let head = page_to_pfn(page);
        for off in 1..1u32 << order {
            pfn_to_page(head + u64::from(off))
                .compound_tail
                .store(off, Ordering::Release);
        }
        page.set_flag(PG_head | (u64::from(order) << PAGE_ORDER_SHIFT));
    }
}

// ---- mapcount --------------------------------------------------------------

/// Number of PTEs mapping the page (0-based).
#[inline]
pub fn page_mapcount(page: &Page) -> i32 {
    page._mapcount.load(Ordering::Acquire) + 1
}

/// Whether any PTE maps the page.
#[inline]
pub fn page_mapped(page: &Page) -> bool {
    page_mapcount(page) > 0
}

// ---- the page lock (mm/filemap.c) -----------------------------------------

/// Takes the page lock if it is free; returns whether it did.
#[inline]
pub fn trylock_page(page: &Page) -> bool {
    sync_page(&points::SYNC_PAGE_LOCK, page);
    trylock_page_raw(page)
}

/// [`trylock_page`] tried up to `tries` times, spinning between tries (a
/// bounded trylock). One synchronisation event for the whole loop: while
/// the holder is parked by explore mode every try fails, so the orderings
/// are the holder's unlock before the loop or after it.
pub fn trylock_page_spin(page: &Page, tries: u32) -> bool {
    sync_page(&points::SYNC_PAGE_LOCK, page);
    (0..tries.max(1)).any(|i| {
        if i > 0 {
            core::hint::spin_loop();
        }
        trylock_page_raw(page)
    })
}

/// [`trylock_page`] without its synchronisation event; records the holder
/// for the race prover.
fn trylock_page_raw(page: &Page) -> bool {
    let got = page.flags.fetch_or(PG_locked, Ordering::Acquire) & PG_locked == 0;
    if got {
        waitfor::page_locked(page as *const Page as u64, crate::race::this_cpu());
    }
    got
}

/// Takes the page lock, spinning while another CPU holds it. A CPU that has to
/// wait sets [`PG_waiters`] and counts itself in the page's waiters while it
/// spins.
pub fn lock_page(page: &Page) {
    if trylock_page(page) {
        return;
    }
    page.waiters.fetch_add(1, Ordering::AcqRel);
    page.set_flag(PG_waiters);
    let wait = waitfor::begin(
        crate::race::this_cpu(),
        waitfor::Wait::PageLock {
            page: page as *const Page as u64,
        },
        crate::race::irqs_disabled(),
    );
    while !trylock_page_raw(page) {
        while page.test_flag(PG_locked) {
            core::hint::spin_loop();
        }
    }
    waitfor::end(wait);
    if page.waiters.fetch_sub(1, Ordering::AcqRel) == 1 {
        // Clear, then look again: a waiter that counted itself meanwhile has set
        // the flag already or will set it after our clear.
        page.clear_flag(PG_waiters);
        if page.waiters.load(Ordering::Acquire) != 0 {
            page.set_flag(PG_waiters);
        }
    }
}

/// Releases the page lock. Unlocking a page that is not locked is reported as a
/// bad page (Linux: `VM_BUG_ON_FOLIO(!folio_test_locked(folio))`); the bit is
/// cleared either way, as the write to the descriptor has happened.
#[inline]
pub fn unlock_page(page: &Page) {
    waitfor::page_unlocked(page as *const Page as u64);
    let old = page.flags.fetch_and(!PG_locked, Ordering::Release);
    if old & PG_locked == 0 {
        page_alloc::report_bad_page(page, "unlock_page on an unlocked page", 0);
    }
    sync_page(&points::SYNC_PAGE_UNLOCK, page);
}

/// Spins until the page is unlocked, without taking the lock.
pub fn wait_on_page_locked(page: &Page) {
    while page.test_flag(PG_locked) {
        core::hint::spin_loop();
    }
}

/// CPUs spinning in [`lock_page`] on `page` right now.
pub fn page_lock_waiters(page: &Page) -> u32 {
    page.waiters.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::memmap::test_mem;

    #[test]
    fn descriptor_is_64_bytes_and_reserved_by_default() {
        assert_eq!(core::mem::size_of::<Page>(), 64);
        let p = Page::reserved();
        assert!(PageReserved(&p));
        assert_eq!(page_ref_count(&p), 1);
        assert_eq!(page_mapcount(&p), 0);
    }

    #[test]
    fn flag_names() {
        assert_eq!(
            alloc::format!("{}", FlagNames(PG_locked | PG_dirty)),
            "locked|dirty"
        );
        assert_eq!(alloc::format!("{}", FlagNames(0)), "");
    }

    #[test]
    fn refcount_helpers() {
        let p = Page::reserved();
        set_page_count(&p, 0);
        assert!(!get_page_unless_zero(&p), "a zero count must stay zero");
        assert_eq!(page_ref_count(&p), 0);
        set_page_count(&p, 1);
        assert!(get_page_unless_zero(&p));
        assert_eq!(page_ref_count(&p), 2);
        page_ref_add(&p, 3);
        page_ref_sub(&p, 2);
        assert_eq!(page_ref_count(&p), 3);
        assert!(!put_page_testzero(&p));
        assert!(!put_page_testzero(&p));
        assert!(put_page_testzero(&p));
        assert_eq!(page_ref_count(&p), 0);
    }

    #[test]
    fn put_page_testzero_on_zero_reports_and_keeps_zero() {
        let _m = test_mem::setup();
        let page = crate::mm::page_alloc::alloc_pages(0).unwrap();
        let pfn = page_to_pfn(page);
        let bad = page_alloc::nr_bad_pages();
        set_page_count(page, 0);
        assert!(!put_page_testzero(page));
        assert_eq!(page_ref_count(page), 0, "the count went below zero");
        let reports = page_alloc::bad_page_reports_since(bad);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].pfn, pfn);
        assert_eq!(reports[0].reason, "put_page on a page with zero _refcount");
        page_alloc::free_frozen_pages(page, 0);
    }

    #[test]
    fn page_lock_excludes_and_counts_waiters() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let page: &'static Page = Box::leak(Box::new(Page::reserved()));
        assert!(trylock_page(page));
        assert!(!trylock_page(page));
        assert!(PageLocked(page));
        let inside = Arc::new(AtomicBool::new(false));
        let t = {
            let inside = inside.clone();
            std::thread::spawn(move || {
                lock_page(page);
                inside.store(true, Ordering::SeqCst);
                unlock_page(page);
            })
        };
        // The waiter counts itself, then sets PG_waiters: wait (bounded) for both.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !(page_lock_waiters(page) == 1 && PageWaiters(page))
            && std::time::Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        assert!(
            PageWaiters(page),
            "a waiting lock_page did not set PG_waiters"
        );
        assert_eq!(page_lock_waiters(page), 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!inside.load(Ordering::SeqCst), "lock_page did not wait");
        unlock_page(page);
        t.join().unwrap();
        assert!(inside.load(Ordering::SeqCst));
        assert!(!PageLocked(page));
        assert!(!PageWaiters(page), "the last waiter clears PG_waiters");
        assert_eq!(page_lock_waiters(page), 0);
    }

    #[test]
    fn lock_page_is_mutual_exclusion_under_contention() {
        let page: &'static Page = Box::leak(Box::new(Page::reserved()));
        let counter: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        lock_page(page);
                        // A non-atomic increment: lost updates if two threads
                        // were inside at once.
                        let v = counter.load(Ordering::Relaxed);
                        std::hint::spin_loop();
                        counter.store(v + 1, Ordering::Relaxed);
                        unlock_page(page);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::SeqCst), 8000);
        assert_eq!(page_lock_waiters(page), 0);
        assert!(!PageWaiters(page));
    }
}
