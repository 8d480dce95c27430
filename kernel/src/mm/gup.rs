//! Get user pages (Linux `mm/gup.c`): slow GUP under `mmap_lock`, and the
//! lockless GUP-fast walk.
//!
//! Slow GUP ([`get_user_pages`], Linux `__get_user_pages`) holds `mmap_lock`
//! for read, looks each page up under its PTL (`follow_page_pte`) and faults
//! it in where it is missing or, for [`GupFlags::FOLL_WRITE`], not writable
//! (a write fault on a COW page breaks the sharing), then retries.
//!
//! GUP-fast ([`get_user_pages_fast`], Linux `lockless_pages_from_mm` and
//! `gup_fast_pgd_range` … `gup_fast_pte_range`) walks the current task's
//! tables with interrupts disabled and no lock, reading every entry once
//! (`READ_ONCE`), taking a speculative reference on each page
//! ([`page::page_ref_add_unless`], which fails on a freed page), and
//! rechecking the PTE — and, as a runtime knob, the PMD entry (70cbc3cc78a9)
//! — after the reference is taken. Any doubt (an empty or non-table entry, a
//! read-only PTE for a write, a failed try-grab, a changed entry) releases
//! what it just took and stops the walk; the rest of the range goes to slow
//! GUP, as Linux's `get_user_pages_fast` does.
//!
//! Why the walk is safe: page tables are freed only after every CPU that may
//! walk them has been reached (the mmu_gather's table-free policies: an IPI
//! that an interrupts-off walker holds back, or RCU-sched, whose grace period
//! waits for it); pages are freed only at refcount zero, which a speculative
//! reference prevents once taken, and the recheck catches an entry that
//! changed before it was.
//!
//! Walks ([`GupWalk`], a runtime knob): the loops are Linux's, per level
//! `pXd_addr_end` with the arch's level sizes and entry pointers stepped with
//! `++`. They differ in how the next level's entry pointer is found:
//! - [`GupWalk::Lockless`] (Linux since d3f7b1bb2040): the `pXd_offset_lockless`
//!   helpers get the live entry pointer and the value read from it, so on a
//!   folded level they return the live pointer and `pudp++` is the next live
//!   entry (`pud_offset(p4d, next)`).
//! - [`GupWalk::StackCopy`] (the historical walk): the ordinary `pXd_offset`
//!   helper is applied to a *copy* of the entry. On a folded level (s390x
//!   region-third-topped mm: pgd and p4d folded) it returns the copy's own
//!   address, and a range crossing a `PUD_SIZE` boundary steps past the copy.
//!   In Linux that reads whatever lies next on the stack. Here the copies live
//!   in a `#[repr(C)]` [`WalkState`] array, element 0 of a level's view being
//!   its own copy and the next elements the copies the walk left for the
//!   levels above, and a step past the copy moves by index within that
//!   array: it reads a stale upper entry (deterministically the wrong one),
//!   never memory outside the array; a step that would leave the array backs
//!   off.
//!
//! Recorder: a [`GupRecord`] passed to [`get_user_pages_fast_traced`] gets
//! the address and value of every entry the fast walk reads;
//! [`addr_in_pgtable_frame`] checks an address against the frame database
//! (`PG_pgtable`, which every task page-table frame carries). Each table
//! read is also judged as it happens: a read from a frame that was not a
//! page table just before it, or that returned the free-page poison, is a
//! read of a freed table ([`GupRecord::freed_table_read`]).
//!
//! Reading a freed table: when a buggy table-freeing policy lets a table go
//! under the walk (race row `ptfree-vs-gup-fast`), the walk reads poison
//! (`PAGE_POISON`). A poisoned PTE is "present" on both arches but its pfn
//! lies far beyond memory, so the walk stops there, takes no reference and
//! leaves the rest to slow GUP, as Linux's walk does with such garbage.
//!
//! Reference counting: [`GupFlags::FOLL_GET`] takes one reference per page,
//! [`GupFlags::FOLL_PIN`] adds [`GUP_PIN_COUNTING_BIAS`] per page (Linux's
//! scheme for small folios), so [`page_maybe_dma_pinned`] can tell. Both go
//! on the refcount of **the page returned**, also for a subpage of a huge
//! page (where Linux counts on the folio): this model's huge pages count
//! references per subpage (`huge_memory.rs`), so a reference taken on a
//! subpage of a PMD leaf stays valid, on the same frame, after the leaf is
//! split or zapped and the block demoted to order-0 pages, and the release
//! drops exactly what was taken. References and pins keep the page alive
//! across munmap; [`unpin_user_page`] and [`put_user_page`] drop them and
//! free the page when theirs was the last reference.
//!
//! Huge PMDs (x86-64 2 MiB leaves, [`Mmu::HAS_HUGE_PMD`]): the fast walk
//! grabs every subpage of the range once and then rechecks the PMD entry
//! (`gup_huge_pmd`), giving them all back if it changed; slow GUP takes them
//! under `page_table_lock` (`follow_huge_pmd`). Leaves are always writable
//! (collapse makes them so; fork and mprotect split them), so FOLL_WRITE
//! never meets a read-only leaf; if it did, the write fault
//! (`huge_pmd_fault`) splits the leaf and the retry goes the PTE way.
//!
//! Not modelled: `FOLL_LONGTERM`, the `write_protect_seq` retry of a pinning
//! GUP-fast against a concurrent fork, and the unshare logic for read-only
//! pins of shared anonymous pages (`gup_must_unshare`).

use super::arch::{FaultInfo, Level, Mmu};
use super::fault::FaultError;
use super::memory::{self, pte_lockptr};
use super::mm::{current_mm, Mm, VmaList};
use super::page::{self, Page};
use super::{page_alloc, pgtable, PAGE_SHIFT, PAGE_SIZE};
use crate::NR_CPUS;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

bitflags::bitflags! {
    /// What GUP is asked for (Linux `FOLL_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct GupFlags: u32 {
        /// The caller will write to the pages: each must be mapped writable
        /// (a COW page is broken first).
        const FOLL_WRITE = 1 << 0;
        /// Take a plain reference per page (released with [`put_user_page`]).
        const FOLL_GET = 1 << 1;
        /// Pin each page: add [`GUP_PIN_COUNTING_BIAS`] (released with
        /// [`unpin_user_page`]).
        const FOLL_PIN = 1 << 2;
    }
}

/// What a pin adds to the refcount (Linux `GUP_PIN_COUNTING_BIAS`).
pub const GUP_PIN_COUNTING_BIAS: i32 = 1024;

/// Normalises the flags: exactly one of FOLL_GET and FOLL_PIN (FOLL_GET when
/// neither is given, as `get_user_pages` implies it).
fn gup_flags(flags: GupFlags) -> GupFlags {
    assert!(
        !flags.contains(GupFlags::FOLL_GET | GupFlags::FOLL_PIN),
        "GUP with both FOLL_GET and FOLL_PIN"
    );
    if flags.contains(GupFlags::FOLL_PIN) {
        flags
    } else {
        flags | GupFlags::FOLL_GET
    }
}

/// The refcount units `refs` pages of `flags` take.
fn ref_units(refs: i32, flags: GupFlags) -> i32 {
    if flags.contains(GupFlags::FOLL_PIN) {
        refs * GUP_PIN_COUNTING_BIAS
    } else {
        refs
    }
}

// ---- knobs ------------------------------------------------------------------------

/// How GUP-fast finds the next level's entry pointer (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GupWalk {
    /// `pXd_offset_lockless` on the live entry pointer and the value read
    /// (d3f7b1bb2040).
    Lockless = 0,
    /// `pXd_offset` applied to a copy of the entry (before d3f7b1bb2040).
    StackCopy = 1,
}

impl GupWalk {
    /// The knob's name for the walk.
    pub fn name(self) -> &'static str {
        match self {
            GupWalk::Lockless => "lockless",
            GupWalk::StackCopy => "stack-copy",
        }
    }
}

static WALK: AtomicU8 = AtomicU8::new(GupWalk::Lockless as u8);
static PMD_RECHECK: AtomicBool = AtomicBool::new(true);

/// Selects the GUP-fast walk for later calls.
pub fn set_gup_walk(w: GupWalk) {
    WALK.store(w as u8, Ordering::Release);
}

/// The GUP-fast walk in use.
pub fn gup_walk() -> GupWalk {
    match WALK.load(Ordering::Acquire) {
        0 => GupWalk::Lockless,
        _ => GupWalk::StackCopy,
    }
}

/// Whether GUP-fast rechecks the PMD entry after grabbing a page of its PTE
/// table (70cbc3cc78a9; on by default), besides the PTE itself.
pub fn set_gup_pmd_recheck(on: bool) {
    PMD_RECHECK.store(on, Ordering::Release);
}

/// See [`set_gup_pmd_recheck`].
pub fn gup_pmd_recheck() -> bool {
    PMD_RECHECK.load(Ordering::Acquire)
}

// ---- counters ---------------------------------------------------------------------

#[repr(C, align(64))]
struct Counters {
    fast_pages: AtomicU64,
    fallbacks: AtomicU64,
    backoffs: AtomicU64,
    slow_pages: AtomicU64,
}

static COUNTERS: [Counters; NR_CPUS] = [const {
    Counters {
        fast_pages: AtomicU64::new(0),
        fallbacks: AtomicU64::new(0),
        backoffs: AtomicU64::new(0),
        slow_pages: AtomicU64::new(0),
    }
}; NR_CPUS];

/// A CPU's GUP counters (relaxed, monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GupStats {
    /// Pages GUP-fast got from its lockless walk.
    pub fast_pages: u64,
    /// GUP-fast calls that left part of the range to slow GUP.
    pub fallbacks: u64,
    /// Races the lockless walk detected: a try-grab that failed on a freed
    /// page, or a reference given back because the PTE or PMD changed.
    pub backoffs: u64,
    /// Pages slow GUP got (called directly or as the fallback).
    pub slow_pages: u64,
}

impl GupStats {
    /// The counts from `earlier` to `self`.
    pub fn since(self, earlier: GupStats) -> GupStats {
        GupStats {
            fast_pages: self.fast_pages - earlier.fast_pages,
            fallbacks: self.fallbacks - earlier.fallbacks,
            backoffs: self.backoffs - earlier.backoffs,
            slow_pages: self.slow_pages - earlier.slow_pages,
        }
    }
}

/// `cpu`'s GUP counters.
pub fn gup_stats(cpu: usize) -> GupStats {
    let c = &COUNTERS[cpu];
    GupStats {
        fast_pages: c.fast_pages.load(Ordering::Relaxed),
        fallbacks: c.fallbacks.load(Ordering::Relaxed),
        backoffs: c.backoffs.load(Ordering::Relaxed),
        slow_pages: c.slow_pages.load(Ordering::Relaxed),
    }
}

fn count(cpu: usize, f: impl FnOnce(&Counters) -> &AtomicU64, n: u64) {
    f(&COUNTERS[cpu]).fetch_add(n, Ordering::Relaxed);
}

// ---- references -------------------------------------------------------------------

/// Takes one GUP reference of `flags` on `page` itself unless it is free
/// (Linux `try_grab_folio` of GUP-fast; here per page, see the module docs).
fn try_grab_folio(page: &'static Page, flags: GupFlags) -> bool {
    page::page_ref_add_unless(page, ref_units(1, flags), 0)
}

/// Takes one GUP reference on a page the caller reaches under its PTL (slow
/// GUP's `try_grab_page`): the mapping holds a reference, so the page is
/// live.
fn try_grab_page(page: &'static Page, flags: GupFlags) -> Result<(), FaultError> {
    if page::page_ref_count(page) <= 0 {
        page_alloc::report_bad_page(page, "GUP on a mapped page with zero _refcount", 0);
        return Err(FaultError::OutOfMemory);
    }
    page::page_ref_add(page, ref_units(1, flags));
    Ok(())
}

/// Drops one GUP reference of `flags` from `page`, freeing it when it was
/// the last (Linux `gup_put_folio`). A page whose count reaches zero here is
/// never part of a compound page (a huge page's subpages hold the leaf's
/// reference until the block is demoted), so it is freed as order 0.
fn gup_put_folio(page: &'static Page, flags: GupFlags) {
    if page::page_ref_sub_and_test(page, ref_units(1, flags)) {
        page_alloc::free_frozen_pages(page, page::compound_order(page));
    }
}

/// Drops a pin taken with [`GupFlags::FOLL_PIN`] (Linux `unpin_user_page`).
pub fn unpin_user_page(page: &'static Page) {
    gup_put_folio(page, GupFlags::FOLL_PIN);
}

/// Drops the pins of every page in `pages` (Linux `unpin_user_pages`).
pub fn unpin_user_pages(pages: &[&'static Page]) {
    for &p in pages {
        unpin_user_page(p);
    }
}

/// Drops a reference taken with [`GupFlags::FOLL_GET`] (`put_page`).
pub fn put_user_page(page: &'static Page) {
    gup_put_folio(page, GupFlags::FOLL_GET);
}

/// Drops what GUP with `flags` took on every page of `pages`.
pub fn release_user_pages(pages: &[&'static Page], flags: GupFlags) {
    let flags = gup_flags(flags);
    for &p in pages {
        gup_put_folio(p, flags);
    }
}

/// Whether the page may be pinned for DMA (Linux `page_maybe_dma_pinned`):
/// its refcount reaches the pin bias. References alone can make it say
/// yes, never a pin make it say no.
pub fn page_maybe_dma_pinned(page: &'static Page) -> bool {
    page::page_ref_count(page) >= GUP_PIN_COUNTING_BIAS
}

// ---- slow GUP -----------------------------------------------------------------------

/// Gets `nr_pages` pages of `mm` from `start` (page-aligned down) into
/// `pages`, faulting them in as needed, with `mmap_lock` held for read
/// (Linux `get_user_pages_remote` / `__get_user_pages`). Returns how many it
/// got: all of them, or those before the first page it could not get (an
/// error if that was the first).
pub fn get_user_pages<A: Mmu>(
    mm: &Mm<A>,
    start: u64,
    nr_pages: usize,
    flags: GupFlags,
    pages: &mut Vec<&'static Page>,
) -> Result<usize, FaultError> {
    let flags = gup_flags(flags);
    let vmas = mm.mmap_lock.read();
    let got = __get_user_pages(mm, &vmas, start & !(PAGE_SIZE - 1), nr_pages, flags, pages);
    drop(vmas);
    let n = match got {
        Ok(n) => n,
        Err((0, e)) => return Err(e),
        Err((n, _)) => n,
    };
    count(A::smp_processor_id(), |c| &c.slow_pages, n as u64);
    Ok(n)
}

/// The loop of slow GUP, `mmap_lock` held for read: per page, check the VMA
/// (`check_vma_flags`), look the page up (`follow_page_pte`), fault it in and
/// retry if that found nothing (`faultin_page`). On an error, returns it with
/// the number of pages got before.
fn __get_user_pages<A: Mmu>(
    mm: &Mm<A>,
    vmas: &VmaList,
    start: u64,
    nr_pages: usize,
    flags: GupFlags,
    pages: &mut Vec<&'static Page>,
) -> Result<usize, (usize, FaultError)> {
    let write = flags.contains(GupFlags::FOLL_WRITE);
    pages.reserve(nr_pages);
    for done in 0..nr_pages {
        let addr = start + done as u64 * PAGE_SIZE;
        let Some(vma) = vmas.find(addr) else {
            return Err((done, FaultError::NoVma));
        };
        if !vma.flags.read || (write && !vma.flags.write) {
            return Err((done, FaultError::AccessDenied));
        }
        let mut tries = 0;
        let page = loop {
            match follow_page::<A>(mm, addr, flags) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => return Err((done, e)),
            }
            // A fault makes the page present (and writable for a write);
            // a concurrent zap may undo it, so retry a few times.
            tries += 1;
            if tries > 8 {
                return Err((done, FaultError::OutOfMemory));
            }
            let info = FaultInfo {
                addr,
                write,
                protection: false,
                code: 0,
            };
            memory::handle_mm_fault_locked(mm, vmas, info).map_err(|e| (done, e))?;
        };
        pages.push(page);
    }
    Ok(nr_pages)
}

/// Looks up the page mapped at `addr` and takes a GUP reference on it
/// (`follow_page_mask`): `None` if nothing usable is mapped (no PTE, or a
/// read-only one for FOLL_WRITE), for the caller to fault in.
fn follow_page<A: Mmu>(
    mm: &Mm<A>,
    addr: u64,
    flags: GupFlags,
) -> Result<Option<&'static Page>, FaultError> {
    let write = flags.contains(GupFlags::FOLL_WRITE);
    let Some(pmdp) = pgtable::follow_pmd(mm, addr) else {
        return Ok(None);
    };
    // SAFETY: a live PMD entry of `mm`; mmap_lock held for read keeps its
    // table.
    let pmd = unsafe { pgtable::read_entry(pmdp) };
    if A::pmd_leaf(pmd) {
        // follow_huge_pmd, under the PMD's lock.
        let _pl = mm.page_table_lock.lock();
        // SAFETY: as above.
        let pmd = unsafe { pgtable::read_entry(pmdp) };
        if !A::pmd_leaf(pmd) {
            return Ok(None);
        }
        if write && !A::pmd_write(pmd) {
            return Ok(None);
        }
        let pfn = A::pmd_pfn(pmd) + ((addr & (A::PMD_SIZE - 1)) >> PAGE_SHIFT);
        let p = page::pfn_to_page(pfn);
        try_grab_page(p, flags)?;
        return Ok(Some(p));
    }
    if A::entry_none(Level::Pmd, pmd) || !A::entry_is_table(Level::Pmd, pmd) {
        return Ok(None);
    }
    // SAFETY: a populated PMD table entry of `mm`, kept by mmap_lock.
    let ptep = unsafe { A::pte_offset(pmdp, addr) };
    let _ptl = pte_lockptr(ptep).lock();
    // SAFETY: a live PTE of `mm`, PTL held.
    let pte = unsafe { pgtable::read_entry(ptep) };
    if !A::pte_present(pte) || (write && !A::pte_write(pte)) {
        return Ok(None);
    }
    let p = page::pfn_to_page(A::pte_pfn(pte));
    try_grab_page(p, flags)?;
    Ok(Some(p))
}

// ---- the recorder -----------------------------------------------------------------

/// Entries a [`GupRecord`] holds; later reads are counted, not kept.
pub const GUP_RECORD_CAP: usize = 96;

/// One entry read by the GUP-fast walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRead {
    /// The level the walk read the entry as.
    pub level: Level,
    /// Where it read it (a kernel address).
    pub addr: u64,
    /// What it read.
    pub value: u64,
    /// A table read whose frame was no longer a page table just before the
    /// read (freed, or reused), or that returned the free-page poison: a
    /// read of a freed page-table frame.
    pub from_freed_table: bool,
}

/// What one GUP-fast walk read (opt-in per call, see
/// [`get_user_pages_fast_traced`]).
pub struct GupRecord {
    reads: [EntryRead; GUP_RECORD_CAP],
    len: usize,
    /// Reads beyond [`GUP_RECORD_CAP`].
    pub dropped: usize,
    /// Per level (index `Level as usize`): the address of the entry copy the
    /// StackCopy walk applied that level's offset helper to; reading it at
    /// that level is reading the walk's own copy.
    own_copies: [Option<u64>; 5],
    /// Whether interrupts were disabled when the walk reached a leaf entry
    /// (`None`: it never did).
    pub irqs_off_at_leaf: Option<bool>,
    /// The walk used.
    pub walk: GupWalk,
}

impl Default for GupRecord {
    fn default() -> Self {
        Self::new()
    }
}

impl GupRecord {
    /// An empty record.
    pub const fn new() -> Self {
        Self {
            reads: [EntryRead {
                level: Level::Pgd,
                addr: 0,
                value: 0,
                from_freed_table: false,
            }; GUP_RECORD_CAP],
            len: 0,
            dropped: 0,
            own_copies: [None; 5],
            irqs_off_at_leaf: None,
            walk: GupWalk::Lockless,
        }
    }

    /// The reads, in order.
    pub fn reads(&self) -> &[EntryRead] {
        &self.reads[..self.len]
    }

    /// The address of the walk's own copy at `level`, if it made one.
    pub fn own_copy(&self, level: Level) -> Option<u64> {
        self.own_copies[level as usize]
    }

    /// Whether `r` read the walk's own entry copy at its level.
    pub fn is_own_copy(&self, r: &EntryRead) -> bool {
        self.own_copy(r.level) == Some(r.addr)
    }

    /// Reads that were neither in a page-table frame nor of the walk's own
    /// copy at their level: what Linux's historical walk read beyond its
    /// stack copy.
    pub fn stray_reads(&self) -> impl Iterator<Item = &EntryRead> {
        self.reads()
            .iter()
            .filter(|r| !addr_in_pgtable_frame(r.addr) && !self.is_own_copy(r))
    }

    /// The first read of a freed page-table frame, if any.
    pub fn freed_table_read(&self) -> Option<&EntryRead> {
        self.reads().iter().find(|r| r.from_freed_table)
    }

    /// Reads the entry of the `i`-th read again, recorded and judged as the
    /// walk judges a table read: what a walker that kept a table's address
    /// beyond what protects the table would read. A self-check of the race
    /// verdicts (`inject=late-finding`); `None` if there is no such read.
    pub fn read_again(&mut self, i: usize) -> Option<u64> {
        let r = *self.reads().get(i)?;
        let was_table = addr_in_pgtable_frame(r.addr);
        // SAFETY: `r.addr` is an entry a walk read; page-table frames, freed
        // or not, are RAM the kernel keeps mapped, so the aligned load is
        // defined. What it returns is judged below.
        let v = unsafe { pgtable::read_entry(r.addr as *mut u64) };
        let freed = !was_table || v == page_alloc::PAGE_POISON;
        self.push(r.level, r.addr, v, freed);
        Some(v)
    }

    fn push(&mut self, level: Level, addr: u64, value: u64, from_freed_table: bool) {
        if self.len < GUP_RECORD_CAP {
            self.reads[self.len] = EntryRead {
                level,
                addr,
                value,
                from_freed_table,
            };
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }
}

/// Whether kernel address `addr` lies in a frame that holds page tables
/// (`PG_pgtable` in the frame database).
pub fn addr_in_pgtable_frame(addr: u64) -> bool {
    let pfn = page::virt_to_phys(addr) >> PAGE_SHIFT;
    page::pfn_valid(pfn) && page::PageTable(page::pfn_to_page(pfn))
}

// ---- GUP-fast -------------------------------------------------------------------------

/// Slots of [`WalkState`]: the copy the pmd level's offset helper is applied
/// to (a pud entry), then the pud level's (a p4d entry), then the p4d level's
/// (a pgd entry).
const SLOT_PMD: usize = 0;
const SLOT_PUD: usize = 1;
const SLOT_P4D: usize = 2;
const WALK_SLOTS: usize = 3;

/// The entry copies of the StackCopy walk, laid out as a stack frame of the
/// historical walk would hold them: a level's view starts at its own copy
/// (element 0), followed by the copies the walk left for the levels above.
#[repr(C)]
struct WalkState {
    slots: [u64; WALK_SLOTS],
}

/// Where the walk reads a level's entries from: a live table, or a slot of
/// [`WalkState`] (the StackCopy walk on a folded level).
#[derive(Clone, Copy, Debug)]
enum Cursor {
    Table(*mut u64),
    Slot(usize),
}

/// One GUP-fast walk, interrupts disabled.
struct FastWalk<'a, A: Mmu> {
    flags: GupFlags,
    walk: GupWalk,
    pmd_recheck: bool,
    pages: &'a mut Vec<&'static Page>,
    backoffs: u64,
    state: WalkState,
    rec: Option<&'a mut GupRecord>,
    _arch: core::marker::PhantomData<A>,
}

/// A hook host tests run between the try-grab and the recheck, to change the
/// PTE under the walk.
#[cfg(test)]
pub(crate) static GRAB_HOOK: spin::Mutex<Option<fn(u64)>> = spin::Mutex::new(None);

impl<A: Mmu> FastWalk<'_, A> {
    fn slot_ptr(&mut self, i: usize) -> *mut u64 {
        core::ptr::addr_of_mut!(self.state.slots[i])
    }

    fn ptr(&mut self, c: Cursor) -> *mut u64 {
        match c {
            Cursor::Table(p) => p,
            Cursor::Slot(i) => self.slot_ptr(i),
        }
    }

    /// `READ_ONCE(*pXdp)`, recorded. With a recorder, a table read is
    /// also judged at the time of the read: whether its frame was still a
    /// page table just before it ([`EntryRead::from_freed_table`]).
    fn read(&mut self, level: Level, c: Cursor) -> u64 {
        let p = self.ptr(c);
        let was_table = match (c, self.rec.is_some()) {
            (Cursor::Table(_), true) => addr_in_pgtable_frame(p as u64),
            _ => true,
        };
        // SAFETY: a table cursor points to an entry of a live table of the
        // current mm: it came from the arch's offset helpers on entries read
        // in this walk, stepped within the range their parent entry covers,
        // and tables are freed only after this interrupts-off walk (see the
        // module docs) - unless the kernel's table-freeing policy is the
        // bug under test, and then the frame is still RAM the kernel maps
        // (freed frames stay mapped), so the load is defined; what it
        // returns is judged below and by the entry checks. A slot cursor
        // points into `self.state`.
        let v = unsafe { pgtable::read_entry(p) };
        if let Some(r) = self.rec.as_deref_mut() {
            let freed =
                matches!(c, Cursor::Table(_)) && (!was_table || v == page_alloc::PAGE_POISON);
            r.push(level, p as u64, v, freed);
        }
        v
    }

    /// `pXdp++`: `None` when a slot cursor would leave the walk state.
    fn step(c: Cursor) -> Option<Cursor> {
        match c {
            Cursor::Table(p) => Some(Cursor::Table(p.wrapping_add(1))),
            Cursor::Slot(i) => (i + 1 < WALK_SLOTS).then_some(Cursor::Slot(i + 1)),
        }
    }

    /// The entry of `level` for `addr` below the parent entry `parent` read
    /// from `parentp`: `pXd_offset_lockless(parentp, parent, addr)`, or
    /// `pXd_offset(&copy, addr)` in the StackCopy walk.
    fn offset(&mut self, level: Level, parentp: Cursor, parent: u64, addr: u64) -> Cursor {
        match self.walk {
            GupWalk::Lockless => {
                let pp = self.ptr(parentp);
                // SAFETY: `pp` is the live entry `parent` was read from, and
                // `parent` was checked present and a table.
                Cursor::Table(unsafe {
                    match level {
                        Level::P4d => A::p4d_offset_lockless(pp, parent, addr),
                        Level::Pud => A::pud_offset_lockless(pp, parent, addr),
                        _ => A::pmd_offset_lockless(pp, parent, addr),
                    }
                })
            }
            GupWalk::StackCopy => {
                let slot = match level {
                    Level::P4d => SLOT_P4D,
                    Level::Pud => SLOT_PUD,
                    _ => SLOT_PMD,
                };
                self.state.slots[slot] = parent;
                let sp = self.slot_ptr(slot);
                if let Some(r) = self.rec.as_deref_mut() {
                    r.own_copies[level as usize] = Some(sp as u64);
                }
                // SAFETY: `sp` holds a copy of a present table entry; the
                // helper reads it and either returns `sp` (folded level) or
                // descends into the live table the entry points to.
                let p = unsafe {
                    match level {
                        Level::P4d => A::p4d_offset(sp, addr),
                        Level::Pud => A::pud_offset(sp, addr),
                        _ => A::pmd_offset(sp, addr),
                    }
                };
                if p == sp {
                    Cursor::Slot(slot)
                } else {
                    Cursor::Table(p)
                }
            }
        }
    }

    /// An upper entry the walk can descend through (`!pXd_none`, not bad).
    fn usable(level: Level, e: u64) -> bool {
        !A::entry_none(level, e) && A::entry_is_table(level, e)
    }

    /// The bytes an entry of `level` maps (`pXd_addr_end`'s step).
    fn entry_size(level: Level) -> u64 {
        match level {
            Level::Pgd => A::PGDIR_SIZE,
            Level::P4d => A::P4D_SIZE,
            Level::Pud => A::PUD_SIZE,
            Level::Pmd => A::PMD_SIZE,
            Level::Pte => PAGE_SIZE,
        }
    }

    /// The loop of every `gup_fast_pXd_range` above the PTEs: reads each
    /// entry of `level` from `pxdp` on that covers part of `[addr, end)`
    /// once and hands it on as `entry(self, pxdp, pxd, addr, next)`; stops at
    /// the first entry that fails.
    fn each_entry(
        &mut self,
        level: Level,
        mut pxdp: Cursor,
        mut addr: u64,
        end: u64,
        mut entry: impl FnMut(&mut Self, Cursor, u64, u64, u64) -> bool,
    ) -> bool {
        loop {
            let pxd = self.read(level, pxdp);
            let next = pgtable::addr_end(addr, end, Self::entry_size(level));
            if !entry(self, pxdp, pxd, addr, next) {
                return false;
            }
            addr = next;
            if addr == end {
                return true;
            }
            let Some(c) = Self::step(pxdp) else {
                return false;
            };
            pxdp = c;
        }
    }

    /// `gup_fast_pgd_range`.
    fn pgd_range(&mut self, ctx: &A::Context, addr: u64, end: u64) -> bool {
        let pgdp = Cursor::Table(A::pgd_offset(ctx, addr));
        self.each_entry(Level::Pgd, pgdp, addr, end, |w, pgdp, pgd, addr, next| {
            Self::usable(Level::Pgd, pgd) && w.p4d_range(pgdp, pgd, addr, next)
        })
    }

    /// `gup_fast_p4d_range`.
    fn p4d_range(&mut self, pgdp: Cursor, pgd: u64, addr: u64, end: u64) -> bool {
        self.upper_range(Level::P4d, pgdp, pgd, addr, end, Self::pud_range)
    }

    /// `gup_fast_pud_range`.
    fn pud_range(&mut self, p4dp: Cursor, p4d: u64, addr: u64, end: u64) -> bool {
        self.upper_range(Level::Pud, p4dp, p4d, addr, end, Self::pmd_range)
    }

    /// The body of `gup_fast_p4d_range` and `gup_fast_pud_range`: the
    /// entries of `level` below the parent entry `parent` read from
    /// `parentp`, each walked further by `lower` if it is a table.
    fn upper_range(
        &mut self,
        level: Level,
        parentp: Cursor,
        parent: u64,
        addr: u64,
        end: u64,
        lower: impl Fn(&mut Self, Cursor, u64, u64, u64) -> bool,
    ) -> bool {
        let first = self.offset(level, parentp, parent, addr);
        self.each_entry(level, first, addr, end, |w, pxdp, pxd, addr, next| {
            Self::usable(level, pxd) && lower(w, pxdp, pxd, addr, next)
        })
    }

    /// `gup_fast_pmd_range`: a PMD leaf goes to [`Self::huge_pmd`], a table
    /// to [`Self::pte_range`].
    fn pmd_range(&mut self, pudp: Cursor, pud: u64, addr: u64, end: u64) -> bool {
        let pmdp = self.offset(Level::Pmd, pudp, pud, addr);
        self.each_entry(Level::Pmd, pmdp, addr, end, |w, pmdp, pmd, addr, next| {
            crate::race::race_point::<A>(
                &crate::race::point::points::GUP_FAST_AFTER_PMD_READ,
                addr,
            );
            if A::entry_none(Level::Pmd, pmd) {
                return false;
            }
            if A::pmd_leaf(pmd) {
                w.huge_pmd(pmd, pmdp, addr, next)
            } else {
                A::entry_is_table(Level::Pmd, pmd) && w.pte_range(pmd, pmdp, addr, next)
            }
        })
    }

    fn note_leaf(&mut self) {
        if let Some(r) = self.rec.as_deref_mut() {
            r.irqs_off_at_leaf = Some(A::irqs_disabled());
        }
    }

    /// `gup_fast_pte_range`: per PTE, read it once, check it, try-grab the
    /// page, recheck the PMD (knob) and the PTE; on any doubt give the
    /// reference back and stop.
    fn pte_range(&mut self, pmd: u64, pmdp: Cursor, mut addr: u64, end: u64) -> bool {
        self.note_leaf();
        let write = self.flags.contains(GupFlags::FOLL_WRITE);
        // pte_offset_map(&pmd, addr): the table of the value read once.
        let mut pmd_copy = pmd;
        // SAFETY: `pmd_copy` is a present PMD table entry.
        let mut ptep = unsafe { A::pte_offset(&mut pmd_copy, addr) };
        loop {
            let pte = self.read(Level::Pte, Cursor::Table(ptep));
            if !A::pte_present(pte) || (write && !A::pte_write(pte)) {
                return false;
            }
            let pfn = A::pte_pfn(pte);
            // A PTE read from a table freed under the walk holds the
            // free-page poison: present on both arches, with a pfn far
            // beyond memory, so the walk stops here without a reference.
            if !page::pfn_valid(pfn) {
                return false;
            }
            let page = page::pfn_to_page(pfn);
            if !try_grab_folio(page, self.flags) {
                self.backoffs += 1;
                return false;
            }
            #[cfg(test)]
            if let Some(hook) = *GRAB_HOOK.lock() {
                hook(addr);
            }
            let pmd_changed = self.pmd_recheck && self.read(Level::Pmd, pmdp) != pmd;
            let changed = pmd_changed || self.read(Level::Pte, Cursor::Table(ptep)) != pte;
            crate::race::race_point::<A>(&crate::race::point::points::GUP_FAST_AFTER_RECHECK, addr);
            if changed {
                gup_put_folio(page, self.flags);
                self.backoffs += 1;
                return false;
            }
            self.pages.push(page);
            addr += PAGE_SIZE;
            if addr == end {
                return true;
            }
            ptep = ptep.wrapping_add(1);
        }
    }

    /// `gup_fast_pmd_leaf` (`gup_huge_pmd`): a try-grab of every subpage in
    /// `[addr, end)` (references are per subpage, see the module docs), then
    /// a recheck of the PMD; on a failed grab or a changed PMD every
    /// reference taken here is given back.
    fn huge_pmd(&mut self, pmd: u64, pmdp: Cursor, addr: u64, end: u64) -> bool {
        self.note_leaf();
        if self.flags.contains(GupFlags::FOLL_WRITE) && !A::pmd_write(pmd) {
            return false;
        }
        let first = A::pmd_pfn(pmd) + ((addr & (A::PMD_SIZE - 1)) >> PAGE_SHIFT);
        let refs = (end - addr) / PAGE_SIZE;
        if !page::pfn_valid(first + refs - 1) {
            return false;
        }
        let before = self.pages.len();
        let mut ok = true;
        for pfn in first..first + refs {
            let p = page::pfn_to_page(pfn);
            if !try_grab_folio(p, self.flags) {
                ok = false;
                break;
            }
            self.pages.push(p);
        }
        if ok && self.read(Level::Pmd, pmdp) == pmd {
            return true;
        }
        for p in self.pages.drain(before..) {
            gup_put_folio(p, self.flags);
        }
        self.backoffs += 1;
        false
    }
}

/// The lockless walk over `[start, end)` of `mm`, interrupts disabled
/// (Linux `lockless_pages_from_mm`): appends the pages it got to `pages`
/// and returns how many.
fn lockless_pages_from_mm<A: Mmu>(
    mm: &Mm<A>,
    start: u64,
    end: u64,
    flags: GupFlags,
    pages: &mut Vec<&'static Page>,
    rec: Option<&mut GupRecord>,
) -> (usize, u64) {
    let before = pages.len();
    let walk = gup_walk();
    let rec = rec.map(|r| {
        *r = GupRecord::new();
        r.walk = walk;
        r
    });
    let mut w = FastWalk::<A> {
        flags,
        walk,
        pmd_recheck: gup_pmd_recheck(),
        pages,
        backoffs: 0,
        state: WalkState {
            slots: [0; WALK_SLOTS],
        },
        rec,
        _arch: core::marker::PhantomData,
    };
    // Interrupts off: a CPU freeing page tables waits for us (IPI or
    // RCU-sched) before it reuses them.
    let irq = A::local_irq_save();
    w.pgd_range(&mm.context, start, end);
    A::local_irq_restore(irq);
    let backoffs = w.backoffs;
    (pages.len() - before, backoffs)
}

/// Gets `nr_pages` pages of the current task's mm from `start` (aligned
/// down) into `pages` (Linux `get_user_pages_fast` / `pin_user_pages_fast`):
/// the lockless walk first, slow GUP for what it left. Returns how many it
/// got (fewer if part of the range cannot be got: no VMA, no access).
/// Called in task context, interrupts enabled, on a CPU that runs an mm.
pub fn get_user_pages_fast<A: Mmu>(
    start: u64,
    nr_pages: usize,
    flags: GupFlags,
    pages: &mut Vec<&'static Page>,
) -> usize {
    get_user_pages_fast_traced::<A>(start, nr_pages, flags, pages, None)
}

/// [`get_user_pages_fast`], recording the lockless walk in `rec`.
pub fn get_user_pages_fast_traced<A: Mmu>(
    start: u64,
    nr_pages: usize,
    flags: GupFlags,
    pages: &mut Vec<&'static Page>,
    rec: Option<&mut GupRecord>,
) -> usize {
    let flags = gup_flags(flags);
    let cpu = A::smp_processor_id();
    let Some(mm) = current_mm::<A>() else {
        return 0;
    };
    debug_assert!(
        mm.cpumask.load(Ordering::Acquire) & (1 << cpu) != 0,
        "GUP-fast on CPU {cpu}, not in its mm's cpumask"
    );
    if nr_pages == 0 {
        return 0;
    }
    let start = start & !(PAGE_SIZE - 1);
    let Some(end) = (nr_pages as u64)
        .checked_mul(PAGE_SIZE)
        .and_then(|len| start.checked_add(len))
    else {
        return 0;
    };
    pages.reserve(nr_pages);
    // Only what the mm's top level reaches can be walked (access_ok).
    let (nr, backoffs) = if start >= A::TASK_BASE && end <= A::context_limit(&mm.context) {
        lockless_pages_from_mm(mm, start, end, flags, pages, rec)
    } else {
        (0, 0)
    };
    crate::race::race_point::<A>(&crate::race::point::points::GUP_FAST_AFTER_WALK, start);
    count(cpu, |c| &c.fast_pages, nr as u64);
    count(cpu, |c| &c.backoffs, backoffs);
    if nr == nr_pages {
        return nr;
    }
    count(cpu, |c| &c.fallbacks, 1);
    // Slow GUP may fault, and a fault may wait for a TLB shootdown.
    debug_assert!(
        !A::irqs_disabled(),
        "GUP-fast fell back to slow GUP with interrupts disabled"
    );
    let rest = start + nr as u64 * PAGE_SIZE;
    nr + get_user_pages(mm, rest, nr_pages - nr, flags, pages).unwrap_or(0)
}

#[cfg(test)]
mod tests;
