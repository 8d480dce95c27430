//! The buddy frame allocator (Linux `mm/page_alloc.c`), with Linux's free-page
//! checks and page poisoning as detectors.
//!
//! Design. One zone covers all of RAM. Free memory is kept as naturally aligned
//! blocks of 2^order frames, order 0..=[`MAX_PAGE_ORDER`], on one doubly linked
//! free list per order, threaded through the head descriptors (`buddy_next` /
//! `buddy_prev` hold pfns). Allocating order k takes the first block of the
//! smallest order >= k and splits it, putting the upper halves back
//! (`expand`); freeing merges the block with its buddy (pfn ^ 2^order) as long
//! as the buddy is a free block of the same order (`__free_one_page`). Free
//! lists are LIFO. The lists are protected by the zone lock, a spin lock taken
//! with interrupts disabled (an interrupt handler may free pages, e.g. page
//! tables after a TLB flush); per-CPU `pgalloc`/`pgfree` counters count the
//! calls.
//!
//! Detectors (they observe and report; they never panic, the caller decides):
//! - **Free checks** (`free_pages_prepare` / `free_page_is_bad`): every page of a
//!   freed block must have `_refcount` 0, no mapping (`_mapcount` -1), no
//!   `mapping`, and none of [`PAGE_FLAGS_CHECK_AT_FREE`]. A violation prints
//!   `# BUG: Bad page state: ...` with Linux's reason and is recorded
//!   ([`nr_bad_pages`], [`bad_page_reports_since`]); the block is then leaked on
//!   purpose, never put on a free list, as Linux does.
//! - **Poisoning**: a freed frame is filled with [`PAGE_POISON`] (64-bit stores)
//!   and marked [`PG_poisoned`]; its descriptor gets [`MAPCOUNT_POISON`] and
//!   [`MAPPING_POISON`]. When the frame is allocated again the allocator checks
//!   the descriptor (`check_new_page`) and, unless turned off with
//!   [`set_poison_check`], the frame's contents: a write after free is reported
//!   as `use after free: poisoned frame pfn=... modified at offset ...` and the
//!   block is leaked, and the allocation takes another block. Detectors may check
//!   a free frame at any time with [`check_poison`]. Frames freed at boot are
//!   not filled (that would touch all of RAM), only their descriptors poisoned.
//!
//! Invariants:
//! - A frame is in at most one free block; a free block's head has
//!   [`PG_buddy`] and `private` == its order; its other pages have neither.
//! - Every page of a free block has `_refcount` 0 and the poisoned descriptor
//!   fields; nothing but the allocator writes it until it is allocated.
//! - [`nr_free_pages`] equals the frames on the free lists (updated under the
//!   zone lock).
//! - An allocated block of order k starts at a pfn that is a multiple of 2^k;
//!   its head has `_refcount` 1, the other pages 0 (Linux's non-compound
//!   high-order allocation).
//! - On a machine with storage keys (`Mmu::STORAGE_KEYS`), every frame of
//!   a block has the default key (access key 0, R and C clear) when it is
//!   handed out: the arch registers a per-frame hook ([`register_arch`]) that
//!   runs after the checks, which read the frames. The allocator itself never
//!   names an architecture.

use super::page::{
    page_to_pfn, pfn_to_page, pfn_valid, phys_to_virt, FlagNames, PG_buddy, PG_poisoned, Page,
    MAPCOUNT_POISON, MAPPING_POISON, NO_PFN, PAGE_FLAGS_CHECK_AT_FREE, PAGE_FLAGS_CHECK_AT_PREP,
};
use super::{PAGE_SHIFT, PAGE_SIZE};
use crate::{kprintln, IrqFlags, NR_CPUS};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Largest order a block may have (Linux `MAX_PAGE_ORDER`): 4 MiB blocks.
pub const MAX_PAGE_ORDER: u32 = 10;
/// Number of orders (Linux `NR_PAGE_ORDERS`).
pub const NR_PAGE_ORDERS: usize = MAX_PAGE_ORDER as usize + 1;

/// Byte pattern of a freed frame (Linux `PAGE_POISON`, also `POISON_FREE`).
pub const PAGE_POISON: u64 = 0x6b6b_6b6b_6b6b_6b6b;

// ---- arch hooks ------------------------------------------------------------

/// What the allocator needs from the architecture, registered once at boot
/// (the allocator is not generic over [`crate::Arch`], so that every caller can
/// free a page without naming the architecture).
struct Hooks {
    irq_save: fn() -> IrqFlags,
    irq_restore: fn(IrqFlags),
    cpu: fn() -> usize,
    /// Where the arch has storage keys: every frame of a block gets the
    /// default key as it is handed out, after the poison check (Linux
    /// `arch_alloc_page`); `None` where the arch needs nothing.
    storage_keys: Option<super::arch::StorageKeyOps>,
}

static HOOKS: spin::Once<Hooks> = spin::Once::new();

/// Registers the architecture's interrupt masking and CPU number for the zone
/// lock and the per-CPU counters, and, on a machine with storage keys, the
/// per-frame allocation hook that gives every allocated frame the default key.
pub fn register_arch<A: super::arch::Mmu>() {
    HOOKS.call_once(|| Hooks {
        irq_save: A::local_irq_save,
        irq_restore: A::local_irq_restore,
        cpu: A::smp_processor_id,
        storage_keys: A::STORAGE_KEYS,
    });
}

/// The allocation hook of an arch with storage keys: SSKE with
/// [`PAGE_DEFAULT_KEY`](super::arch::PAGE_DEFAULT_KEY), so a frame starts with
/// access key 0 and R and C clear whatever its previous user (or the poison
/// fill and check) did to it. A frame whose key already is the default one
/// (never touched since its key was last set, e.g. fresh at boot) is left
/// alone: R clear means no CPU formed a translation to it since, so SSKE would
/// change nothing, and it is the expensive half (QEMU purges every CPU's TLB).
fn set_default_storage_key(keys: &super::arch::StorageKeyOps, pfn: u64) {
    if keys.get_storage_key(pfn) != super::arch::PAGE_DEFAULT_KEY {
        keys.set_storage_key(pfn, super::arch::PAGE_DEFAULT_KEY);
    }
}

fn irq_save() -> Option<IrqFlags> {
    HOOKS.get().map(|h| (h.irq_save)())
}

fn irq_restore(flags: Option<IrqFlags>) {
    if let (Some(h), Some(f)) = (HOOKS.get(), flags) {
        (h.irq_restore)(f);
    }
}

fn this_cpu() -> usize {
    HOOKS.get().map_or(0, |h| (h.cpu)()).min(NR_CPUS - 1)
}

// ---- the zone --------------------------------------------------------------

/// The free lists (Linux `struct free_area[]`), under the zone lock.
struct FreeArea {
    head: [u32; NR_PAGE_ORDERS],
    nr_free: [usize; NR_PAGE_ORDERS],
}

static ZONE: spin::Mutex<FreeArea> = spin::Mutex::new(FreeArea {
    head: [NO_PFN; NR_PAGE_ORDERS],
    nr_free: [0; NR_PAGE_ORDERS],
});
/// Free frames, all orders.
static NR_FREE_PAGES: AtomicUsize = AtomicUsize::new(0);
/// Frames handed to the allocator at boot.
static MANAGED_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on the free lists under the zone lock, interrupts disabled.
fn with_zone<R>(f: impl FnOnce(&mut FreeArea) -> R) -> R {
    let flags = irq_save();
    let r = f(&mut ZONE.lock());
    irq_restore(flags);
    r
}

impl FreeArea {
    fn add(&mut self, pfn: u64, order: u32) {
        let page = pfn_to_page(pfn);
        let old = self.head[order as usize];
        page.buddy_prev.store(NO_PFN, Ordering::Relaxed);
        page.buddy_next.store(old, Ordering::Relaxed);
        if old != NO_PFN {
            pfn_to_page(u64::from(old))
                .buddy_prev
                .store(pfn as u32, Ordering::Relaxed);
        }
        self.head[order as usize] = pfn as u32;
        page.private.store(order as usize, Ordering::Relaxed);
        page.set_flag(PG_buddy);
        self.nr_free[order as usize] += 1;
        NR_FREE_PAGES.fetch_add(1 << order, Ordering::Relaxed);
    }

    fn del(&mut self, pfn: u64, order: u32) {
        let page = pfn_to_page(pfn);
        let next = page.buddy_next.load(Ordering::Relaxed);
        let prev = page.buddy_prev.load(Ordering::Relaxed);
        if prev == NO_PFN {
            self.head[order as usize] = next;
        } else {
            pfn_to_page(u64::from(prev))
                .buddy_next
                .store(next, Ordering::Relaxed);
        }
        if next != NO_PFN {
            pfn_to_page(u64::from(next))
                .buddy_prev
                .store(prev, Ordering::Relaxed);
        }
        page.buddy_next.store(NO_PFN, Ordering::Relaxed);
        page.buddy_prev.store(NO_PFN, Ordering::Relaxed);
        page.clear_flag(PG_buddy);
        page.private.store(0, Ordering::Relaxed);
        self.nr_free[order as usize] -= 1;
        NR_FREE_PAGES.fetch_sub(1 << order, Ordering::Relaxed);
    }

    /// Whether `pfn` heads a free block of exactly `order` (Linux
    /// `page_is_buddy`).
    fn is_buddy(pfn: u64, order: u32) -> bool {
        if !pfn_valid(pfn) {
            return false;
        }
        let page = pfn_to_page(pfn);
        page.test_flag(PG_buddy) && page.private.load(Ordering::Relaxed) == order as usize
    }

    /// Puts a block on the free lists, merging it with free buddies (Linux
    /// `__free_one_page`).
    fn free_one(&mut self, mut pfn: u64, mut order: u32) {
        while order < MAX_PAGE_ORDER {
            let buddy = pfn ^ (1 << order);
            if !Self::is_buddy(buddy, order) {
                break;
            }
            self.del(buddy, order);
            pfn &= buddy;
            order += 1;
        }
        self.add(pfn, order);
    }

    /// Takes a block of `order`, splitting a larger one if needed (Linux
    /// `__rmqueue_smallest` and `expand`).
    fn take(&mut self, order: u32) -> Option<u64> {
        let found = (order..=MAX_PAGE_ORDER).find(|&o| self.head[o as usize] != NO_PFN)?;
        let pfn = u64::from(self.head[found as usize]);
        self.del(pfn, found);
        let mut high = found;
        while high > order {
            high -= 1;
            self.add(pfn + (1 << high), high);
        }
        Some(pfn)
    }
}

/// Hands frames `[start_pfn, end_pfn)` to the allocator at boot, as maximal
/// aligned blocks. Their descriptors become free (count 0, poisoned fields);
/// the frames themselves are not touched.
pub(crate) fn free_boot_range(start_pfn: u64, end_pfn: u64) {
    for pfn in start_pfn..end_pfn {
        let page = pfn_to_page(pfn);
        page.flags.store(0, Ordering::Relaxed);
        page._refcount.store(0, Ordering::Relaxed);
        poison_descriptor(page);
    }
    let mut pfn = start_pfn;
    while pfn < end_pfn {
        let mut order = (pfn.trailing_zeros()).min(MAX_PAGE_ORDER);
        while pfn + (1 << order) > end_pfn {
            order -= 1;
        }
        with_zone(|z| z.free_one(pfn, order));
        pfn += 1 << order;
    }
    MANAGED_PAGES.fetch_add((end_pfn - start_pfn) as usize, Ordering::Relaxed);
}

// ---- per-CPU counters ------------------------------------------------------

/// Allocation calls per CPU (Linux vm event `PGALLOC`, counted per call).
static PGALLOC: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];
/// Free calls per CPU (`PGFREE`).
static PGFREE: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];

/// `(allocations, frees)` made by `cpu` so far.
pub fn vm_events(cpu: usize) -> (u64, u64) {
    (
        PGALLOC[cpu].load(Ordering::Relaxed),
        PGFREE[cpu].load(Ordering::Relaxed),
    )
}

// ---- statistics ------------------------------------------------------------

/// Free frames (Linux `nr_free_pages()`).
pub fn nr_free_pages() -> usize {
    NR_FREE_PAGES.load(Ordering::Acquire)
}

/// Frames the allocator was given at boot.
pub fn managed_pages() -> usize {
    MANAGED_PAGES.load(Ordering::Acquire)
}

/// Free blocks per order (Linux `/proc/buddyinfo`).
pub fn free_blocks_per_order() -> [usize; NR_PAGE_ORDERS] {
    with_zone(|z| z.nr_free)
}

// ---- allocation ------------------------------------------------------------

/// Whether allocation checks the contents of poisoned frames.
static POISON_CHECK: AtomicBool = AtomicBool::new(true);

/// Turns the check of a reallocated frame's poison on or off (for benchmarks).
/// Freed frames are poisoned either way; [`check_poison`] still works.
pub fn set_poison_check(on: bool) {
    POISON_CHECK.store(on, Ordering::Release);
}

/// Whether allocation checks frame contents.
pub fn poison_check_enabled() -> bool {
    POISON_CHECK.load(Ordering::Acquire)
}

/// Allocates a naturally aligned block of 2^`order` frames. The head page has
/// `_refcount` 1; every page is clean (no flags, no mapping, unmapped). Frame
/// contents are unspecified. Returns `None` when no block is free.
pub fn alloc_pages(order: u32) -> Option<&'static Page> {
    assert!(
        order <= MAX_PAGE_ORDER,
        "alloc_pages: order {order} too large"
    );
    loop {
        let pfn = with_zone(|z| z.take(order))?;
        if prep_new_block(pfn, order) {
            PGALLOC[this_cpu()].fetch_add(1, Ordering::Relaxed);
            let page = pfn_to_page(pfn);
            page._refcount.store(1, Ordering::Release);
            return Some(page);
        }
        // The block failed its checks and stays out of circulation; try another.
    }
}

/// Allocates one frame (Linux `alloc_page`).
pub fn alloc_page() -> Option<&'static Page> {
    alloc_pages(0)
}

/// Checks a block taken off the free lists and makes its descriptors those of
/// an allocated block (Linux `check_new_pages` + `post_alloc_hook`). Returns
/// false, after reporting, if a page of it was modified while free.
fn prep_new_block(pfn: u64, order: u32) -> bool {
    let check_frames = poison_check_enabled();
    for p in pfn..pfn + (1 << order) {
        let page = pfn_to_page(p);
        if let Some((reason, bad_flags)) = check_new_page(page) {
            report_bad_page(page, reason, bad_flags);
            return false;
        }
        if check_frames && page.test_flag(PG_poisoned) {
            if let Err(offset) = check_poison(p) {
                report_poisoned_frame(page, offset);
                return false;
            }
        }
    }
    for p in pfn..pfn + (1 << order) {
        let page = pfn_to_page(p);
        page.clear_flag(PG_poisoned);
        page._mapcount.store(-1, Ordering::Relaxed);
        page.mapping.store(0, Ordering::Relaxed);
        page.index.store(0, Ordering::Relaxed);
        page.private.store(0, Ordering::Relaxed);
        page.pt_frag_refcount.store(0, Ordering::Relaxed);
        page.pt_frag_bits.store(0, Ordering::Relaxed);
    }
    // Last: the poison check above has read the frames, setting R.
    if let Some(keys) = HOOKS.get().and_then(|h| h.storage_keys) {
        for p in pfn..pfn + (1 << order) {
            set_default_storage_key(&keys, p);
        }
    }
    true
}

/// What is wrong with a page just taken off the free lists, if anything.
fn check_new_page(page: &Page) -> Option<(&'static str, u64)> {
    let flags = page.flags();
    if page._refcount.load(Ordering::Acquire) != 0 {
        Some((
            "nonzero _refcount (a reference was taken on a free page)",
            0,
        ))
    } else if page._mapcount.load(Ordering::Acquire) != MAPCOUNT_POISON {
        Some((
            "use after free: poisoned descriptor modified (_mapcount)",
            0,
        ))
    } else if page.mapping.load(Ordering::Acquire) != MAPPING_POISON {
        Some(("use after free: poisoned descriptor modified (mapping)", 0))
    } else if flags & PAGE_FLAGS_CHECK_AT_PREP != 0 {
        Some((
            "PAGE_FLAGS_CHECK_AT_PREP flag(s) set",
            flags & PAGE_FLAGS_CHECK_AT_PREP,
        ))
    } else {
        None
    }
}

/// Makes an order-`order` non-compound allocation `2^order` independent
/// order-0 pages, each with `_refcount` 1 (Linux `split_page`).
pub fn split_page(page: &Page, order: u32) {
    let pfn = page_to_pfn(page);
    for p in pfn + 1..pfn + (1 << order) {
        pfn_to_page(p)._refcount.store(1, Ordering::Release);
    }
}

// ---- freeing ---------------------------------------------------------------

/// Drops a reference on an order-`order` block and frees it when that was the
/// last one (Linux `__free_pages`).
///
/// If someone else still holds a reference — a speculative one, such as the
/// pfn scanner's `get_page_unless_zero` — a compound block is freed whole by
/// the last `put_page`. A non-compound block's last `put_page` sees order 0,
/// so, as Linux does, everything but the head frame is freed here at once
/// (in halves: order-1 .. order 0 blocks after the head), and only the head
/// waits for the other holder.
pub fn __free_pages(page: &Page, order: u32) {
    let head = super::page::PageHead(page);
    if super::page::put_page_testzero(page) {
        free_frozen_pages(page, order);
    } else if !head {
        let pfn = page_to_pfn(page);
        for o in (0..order).rev() {
            free_frozen_pages(pfn_to_page(pfn + (1 << o)), o);
        }
    }
}

/// Frees one frame (Linux `free_page`, by descriptor).
pub fn free_page(page: &Page) {
    __free_pages(page, 0);
}

/// Frees a block whose reference count is already zero (Linux
/// `free_frozen_pages`): checks every page, poisons the frames and puts the
/// block on the free lists. A block that fails the checks is reported and
/// leaked.
pub fn free_frozen_pages(page: &Page, order: u32) {
    crate::race::point::sync_point(
        &crate::race::point::points::SYNC_FREE_PAGE,
        page_to_pfn(page),
    );
    // A freed frame holds no page lock (one freed locked is reported by
    // the checks below).
    crate::race::waitfor::page_unlocked(page as *const Page as u64);
    assert!(
        order <= MAX_PAGE_ORDER,
        "free_frozen_pages: order {order} too large"
    );
    let pfn = page_to_pfn(page);
    assert!(
        pfn.trailing_zeros() >= order,
        "free_frozen_pages: pfn {pfn:#x} is not aligned to order {order}"
    );
    if !free_pages_prepare(pfn, order) {
        return;
    }
    PGFREE[this_cpu()].fetch_add(1, Ordering::Relaxed);
    with_zone(|z| z.free_one(pfn, order));
}

/// Checks and poisons a block being freed (Linux `free_pages_prepare`).
fn free_pages_prepare(pfn: u64, order: u32) -> bool {
    for p in pfn..pfn + (1 << order) {
        let page = pfn_to_page(p);
        // An anonymous page's anon_vma pointer is not a mapping to check: it
        // is dropped here, as Linux does (`PageMappingFlags`).
        let m = page.mapping.load(Ordering::Acquire);
        if m & super::rmap::PAGE_MAPPING_ANON != 0 && m != MAPPING_POISON {
            page.mapping.store(0, Ordering::Release);
        }
        if let Some((reason, bad_flags)) = free_page_is_bad(page) {
            report_bad_page(page, reason, bad_flags);
            return false;
        }
    }
    for p in pfn..pfn + (1 << order) {
        let page = pfn_to_page(p);
        poison_frame(p);
        // Keep nothing but the allocator's own mark: dirty, uptodate, head and
        // the like are dropped silently, as Linux does.
        page.flags.store(PG_poisoned, Ordering::Release);
        poison_descriptor(page);
    }
    true
}

/// Linux's reasons, in Linux's order (`page_bad_reason`).
fn free_page_is_bad(page: &Page) -> Option<(&'static str, u64)> {
    let flags = page.flags();
    if page._mapcount.load(Ordering::Acquire) != -1 {
        Some(("nonzero mapcount", 0))
    } else if page.mapping.load(Ordering::Acquire) != 0 {
        Some(("non-NULL mapping", 0))
    } else if page._refcount.load(Ordering::Acquire) != 0 {
        Some(("nonzero _refcount", 0))
    } else if flags & PAGE_FLAGS_CHECK_AT_FREE != 0 {
        Some((
            "PAGE_FLAGS_CHECK_AT_FREE flag(s) set",
            flags & PAGE_FLAGS_CHECK_AT_FREE,
        ))
    } else {
        None
    }
}

/// Makes the descriptor of a page that the checks at allocation took out of
/// circulation (its fields still poisoned as while free) look allocated: no
/// mapping, unmapped. The caller, having repaired what the report named, can
/// then free it with [`free_frozen_pages`]. Detectors never call this.
pub fn unpoison_leaked_page(page: &Page) {
    page._mapcount.store(-1, Ordering::Release);
    page.mapping.store(0, Ordering::Release);
    page.clear_flag(PG_poisoned);
}

/// Refills free, poisoned frame `pfn` with [`PAGE_POISON`] after a detector
/// found it modified (a store through a stale translation), so that its next
/// allocation does not take it out of circulation; under the zone lock, so
/// no allocation takes it meanwhile. Returns whether the frame was free and
/// poisoned. Teardowns repair with this; detectors never call it.
pub fn repoison_free_frame(pfn: u64) -> bool {
    with_zone(|_| {
        let free = page_is_poisoned(pfn) && pfn_to_page(pfn)._refcount.load(Ordering::Acquire) == 0;
        if free {
            poison_frame(pfn);
        }
        free
    })
}

fn poison_descriptor(page: &Page) {
    page._mapcount.store(MAPCOUNT_POISON, Ordering::Relaxed);
    page.mapping.store(MAPPING_POISON, Ordering::Relaxed);
    page.index.store(PAGE_POISON, Ordering::Relaxed);
    page.private.store(0, Ordering::Relaxed);
    page.compound_tail.store(0, Ordering::Relaxed);
}

// ---- poisoning -------------------------------------------------------------

const WORDS_PER_PAGE: usize = PAGE_SIZE as usize / 8;

fn frame_words(pfn: u64) -> *mut u64 {
    phys_to_virt(pfn << PAGE_SHIFT).cast::<u64>()
}

/// Fills frame `pfn` with [`PAGE_POISON`] (every byte 0x6b). One `memset`:
/// the architecture's string fill (under QEMU TCG several times faster than
/// a loop of word stores).
fn poison_frame(pfn: u64) {
    const _: () = assert!(PAGE_POISON == u64::from_ne_bytes([0x6b; 8]));
    // SAFETY: `pfn` is a frame of RAM being freed: the allocator owns it and
    // it is mapped 1:1 (`phys_to_virt`); a page long.
    unsafe { core::ptr::write_bytes(frame_words(pfn).cast::<u8>(), 0x6b, PAGE_SIZE as usize) };
}

/// Whether frame `pfn` is free and was poisoned when freed (its contents should
/// be [`PAGE_POISON`]; [`check_poison`] verifies).
pub fn page_is_poisoned(pfn: u64) -> bool {
    pfn_valid(pfn) && pfn_to_page(pfn).test_flag(PG_poisoned)
}

/// Checks that poisoned frame `pfn` still holds [`PAGE_POISON`] everywhere;
/// returns the byte offset of the first modified byte otherwise. A frame that
/// is not poisoned (allocated, or free since boot) passes.
pub fn check_poison(pfn: u64) -> Result<(), usize> {
    if !page_is_poisoned(pfn) {
        return Ok(());
    }
    let words = frame_words(pfn);
    // SAFETY: `pfn` is a frame of RAM, mapped 1:1; the read is aligned and in
    // bounds, and volatile because a buggy user may write it concurrently
    // (which is what the check is there to find).
    let word = |i: usize| unsafe { words.add(i).read_volatile() };
    // Eight words a turn, one branch for them (a loop with a branch per
    // word costs several times more under QEMU TCG); the first modified
    // byte is looked for only in a chunk that has one.
    for chunk in (0..WORDS_PER_PAGE).step_by(8) {
        let diff = (chunk..chunk + 8).fold(0, |d, i| d | (word(i) ^ PAGE_POISON));
        if diff == 0 {
            continue;
        }
        for i in chunk..chunk + 8 {
            let w = word(i) ^ PAGE_POISON;
            if w != 0 {
                let byte = w.to_ne_bytes().iter().position(|&b| b != 0).unwrap_or(0);
                return Err(i * 8 + byte);
            }
        }
    }
    Ok(())
}

// ---- reports ---------------------------------------------------------------

/// A bad page state seen by a detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPageReport {
    /// Sequence number (the value of [`nr_bad_pages`] before this report).
    pub seq: u64,
    /// The frame.
    pub pfn: u64,
    /// Its flags when seen.
    pub flags: u64,
    /// Its `_refcount` when seen.
    pub refcount: i32,
    /// Its mapcount (0-based, [`super::page::page_mapcount`]) when seen.
    pub mapcount: i32,
    /// Its `mapping` when seen.
    pub mapping: usize,
    /// Why it is bad, in Linux's words where Linux has them.
    pub reason: &'static str,
    /// The offending flags, for the flag reasons.
    pub bad_flags: u64,
    /// The first modified byte of a poisoned frame.
    pub offset: Option<usize>,
    /// The CPU that saw it.
    pub cpu: usize,
}

/// Reports kept for [`bad_page_reports_since`] (the oldest are dropped).
const BAD_PAGE_LOG: usize = 32;

static NR_BAD_PAGES: AtomicU64 = AtomicU64::new(0);
static BAD_PAGE_LOG_RING: spin::Mutex<Vec<BadPageReport>> = spin::Mutex::new(Vec::new());

/// Bad page states reported since boot.
pub fn nr_bad_pages() -> u64 {
    NR_BAD_PAGES.load(Ordering::Acquire)
}

/// The kept reports with sequence number `seq` or later, oldest first.
pub fn bad_page_reports_since(seq: u64) -> Vec<BadPageReport> {
    let flags = irq_save();
    let out = BAD_PAGE_LOG_RING
        .lock()
        .iter()
        .filter(|r| r.seq >= seq)
        .cloned()
        .collect();
    irq_restore(flags);
    out
}

/// Reports a bad page state seen by a detector (Linux `bad_page`): prints it and
/// records it. Does not change the page.
pub fn report_bad_page(page: &Page, reason: &'static str, bad_flags: u64) {
    record(page, reason, bad_flags, None);
}

fn report_poisoned_frame(page: &Page, offset: usize) {
    record(
        page,
        "use after free: poisoned frame modified",
        0,
        Some(offset),
    );
}

fn record(page: &Page, reason: &'static str, bad_flags: u64, offset: Option<usize>) {
    let r = BadPageReport {
        seq: 0,
        pfn: page_to_pfn(page),
        flags: page.flags(),
        refcount: page._refcount.load(Ordering::Acquire),
        mapcount: super::page::page_mapcount(page),
        mapping: page.mapping.load(Ordering::Acquire),
        reason,
        bad_flags,
        offset,
        cpu: this_cpu(),
    };
    if let Some(offset) = offset {
        kprintln!(
            "# BUG: Bad page state: use after free: poisoned frame pfn={:#x} modified at offset {offset:#x} cpu={}",
            r.pfn,
            r.cpu
        );
    } else {
        kprintln!(
            "# BUG: Bad page state: pfn={:#x} flags={:#x}({}) refcount={} mapcount={} mapping={:#x} reason=\"{reason}\"{}{} cpu={}",
            r.pfn,
            r.flags,
            FlagNames(r.flags),
            r.refcount,
            r.mapcount,
            r.mapping,
            if bad_flags != 0 { " bad_flags=" } else { "" },
            BadFlags(bad_flags),
            r.cpu
        );
    }
    let flags = irq_save();
    {
        let mut log = BAD_PAGE_LOG_RING.lock();
        let seq = NR_BAD_PAGES.fetch_add(1, Ordering::AcqRel);
        if log.len() == BAD_PAGE_LOG {
            log.remove(0);
        }
        log.push(BadPageReport { seq, ..r });
    }
    irq_restore(flags);
}

struct BadFlags(u64);

impl core::fmt::Display for BadFlags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 != 0 {
            write!(f, "{:#x}({})", self.0, FlagNames(self.0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
