//! In-kernel tests of GUP (KTAP suite `gup`): slow GUP and GUP-fast on real
//! page tables, with the CPU running the mm through its MMU.
//!
//! Each case builds its own mm, attaches it on the CPUs it needs, gets pages
//! both ways and compares frames, counters and contents; the walk knob
//! selects between the lockless walk and the historical stack-copy walk,
//! whose folded-level bug (d3f7b1bb2040) the recorder shows on s390x. Every
//! case runs in `no_leak`, releases what it got and restores the knobs.

use super::{load, new_mm, no_leak, store};
use crate::cmdline::Cmdline;
use crate::ktap::Outcome;
use crate::mm::arch::{Level, Mmu};
use crate::mm::gup::{
    self, addr_in_pgtable_frame, get_user_pages, get_user_pages_fast, get_user_pages_fast_traced,
    GupFlags, GupRecord, GupStats, GupWalk, GUP_PIN_COUNTING_BIAS,
};
use crate::mm::khugepaged::{self, CollapseAbort, CollapsePolicy, CollapseResult};
use crate::mm::mm::{self as mmod, Mm, VmFlags};
use crate::mm::mmu_gather::TableFree;
use crate::mm::page::{self, Page};
use crate::mm::{huge_memory, memory, page_alloc, pgtable, PAGE_SIZE};
use crate::selftest::TestFn;
use crate::{diag, smp, NR_CPUS};
use alloc::{boxed::Box, format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The suite's name.
pub(crate) const SUITE: &str = "gup";

/// The `gup` cases, in order.
pub(crate) fn cases<A: Mmu>() -> Vec<(&'static str, TestFn)> {
    crate::selftest::test_cases![
        A;
        fast_equals_slow, folded_walk_crossing_pud, fallback_when_needed, pin_survives_munmap,
        pin_write_breaks_cow_after_fork = pin_write_breaks_cow, huge_pmd_fast_equals_slow,
        huge_pmd_pin_blocks_collapse, huge_pmd_pin_across_split, fast_on_second_cpu, throughput,
    ]
}

const RW: VmFlags = VmFlags::RW;
const P: u64 = PAGE_SIZE;

/// A boxed mm that is detached from this CPU (if attached) and torn down
/// when dropped.
struct TestMm<A: Mmu>(Option<Box<Mm<A>>>);

impl<A: Mmu> TestMm<A> {
    fn new() -> Result<Self, String> {
        new_mm::<A>()
            .map(|m| Self(Some(m)))
            .map_err(|_| String::from("no memory for an mm"))
    }

    fn mm(&self) -> &Mm<A> {
        self.0.as_deref().expect("live until dropped")
    }

    /// Maps `[addr, addr + pages * P)` read-write.
    fn map(&self, addr: u64, pages: u64, populate: bool) -> Result<(), String> {
        memory::mmap_anon(self.mm(), addr, pages * P, RW, populate)
            .map_err(|e| format!("mmap at {addr:#x}: {e:?}"))
    }

    /// Runs the mm on this CPU.
    fn attach(&self) {
        // SAFETY: the mm is detached in `drop` before it is freed.
        unsafe { mmod::use_mm(self.mm()) };
    }
}

impl<A: Mmu> Drop for TestMm<A> {
    fn drop(&mut self) {
        let mm = self.0.take().expect("dropped once");
        if mmod::current_mm::<A>().is_some_and(|m| core::ptr::eq(m, &*mm)) {
            mmod::unuse_mm::<A>();
        }
        memory::exit_mmap(*mm);
    }
}

/// Pages got by GUP with `flags`, released when dropped.
struct Held {
    pages: Vec<&'static Page>,
    flags: GupFlags,
}

impl Held {
    fn new(flags: GupFlags) -> Self {
        Self {
            pages: Vec::new(),
            flags,
        }
    }

    fn pfns(&self) -> Vec<u64> {
        self.pages.iter().map(|p| page::page_to_pfn(p)).collect()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        gup::release_user_pages(&self.pages, self.flags);
    }
}

fn stats<A: Mmu>() -> GupStats {
    gup::gup_stats(A::smp_processor_id())
}

/// Slow GUP of `n` pages from `start` of `mm`, all or an error.
fn slow<A: Mmu>(mm: &Mm<A>, start: u64, n: usize, flags: GupFlags) -> Result<Held, String> {
    let mut h = Held::new(flags);
    match get_user_pages(mm, start, n, flags, &mut h.pages) {
        Ok(got) if got == n => Ok(h),
        other => Err(format!("slow GUP of {n} pages at {start:#x}: {other:?}")),
    }
}

/// GUP-fast of `n` pages from `start` of this CPU's mm, recorded.
fn fast<A: Mmu>(start: u64, n: usize, flags: GupFlags, rec: Option<&mut GupRecord>) -> Held {
    let mut h = Held::new(flags);
    get_user_pages_fast_traced::<A>(start, n, flags, &mut h.pages, rec);
    h
}

/// Stores each page's address into it through the MMU.
fn fill(start: u64, pages: u64) {
    for i in 0..pages {
        let a = start + i * P;
        // SAFETY: the callers map `[start, start + pages * P)` writable in
        // the mm this CPU runs.
        unsafe { store(a, a) };
    }
}

fn outcome(r: Result<(), String>) -> Outcome {
    match r {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}

/// GUP-fast and slow GUP return the same frames for a populated range that
/// crosses a PMD boundary; the lockless walk took all of them (no fallback)
/// with interrupts disabled and read only page-table frames.
fn fast_equals_slow<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| outcome(fast_equals_slow_body::<A>()))
}

fn fast_equals_slow_body<A: Mmu>() -> Result<(), String> {
    // Few enough pages that the recorder keeps every read.
    const N: u64 = 24;
    let start = A::TASK_BASE + A::PMD_SIZE - (N / 2) * P;
    let t = TestMm::<A>::new()?;
    t.map(start, N, false)?;
    t.attach();
    fill(start, N);
    let want = slow(t.mm(), start, N as usize, GupFlags::FOLL_GET)?;
    for flags in [GupFlags::FOLL_GET, GupFlags::FOLL_PIN] {
        let before = stats::<A>();
        let mut rec = GupRecord::new();
        let got = fast::<A>(start, N as usize, flags, Some(&mut rec));
        let d = stats::<A>().since(before);
        let outside = rec
            .reads()
            .iter()
            .filter(|r| !addr_in_pgtable_frame(r.addr))
            .count();
        diag!(
            "flags={flags:?} pages={} fast_pages={} fallbacks={} backoffs={} entry_reads={} outside_pgtable_frames={outside} irqs_off_at_leaf={:?}",
            got.pages.len(),
            d.fast_pages,
            d.fallbacks,
            d.backoffs,
            rec.reads().len(),
            rec.irqs_off_at_leaf
        );
        if got.pfns() != want.pfns() {
            return Err(format!(
                "{flags:?}: GUP-fast and slow GUP got different frames"
            ));
        }
        if (d.fast_pages, d.fallbacks) != (N, 0) {
            return Err(format!(
                "{flags:?}: the fast path got {} of {N} pages, {} fallbacks",
                d.fast_pages, d.fallbacks
            ));
        }
        if outside != 0 || rec.dropped != 0 {
            return Err(format!("{outside} entry reads outside page-table frames"));
        }
        if rec.irqs_off_at_leaf != Some(true) {
            return Err("the lockless walk ran with interrupts enabled".into());
        }
        if flags == GupFlags::FOLL_PIN && !got.pages.iter().all(|p| gup::page_maybe_dma_pinned(p)) {
            return Err("a pinned page does not look pinned".into());
        }
    }
    Ok(())
}

/// A range crossing a `PUD_SIZE` boundary, with the mm's pud level folded
/// (s390x: a new mm is topped by a region-third table, pgd and p4d folded
/// onto it). The lockless walk gets the right pages and reads only
/// page-table frames; the stack-copy walk steps past its copy of the
/// entry, reads a stale upper entry outside every page-table frame, and
/// (with the first pages of `TASK_BASE` populated) returns those pages for
/// the second half of the range: the bug d3f7b1bb2040 fixed. Where no level
/// is folded per mm (x86-64), both walks agree and read only page-table
/// frames, besides the stack-copy walk's own copy of the statically folded
/// p4d entry.
fn folded_walk_crossing_pud<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| outcome(folded_walk_body::<A>()))
}

fn folded_walk_body<A: Mmu>() -> Result<(), String> {
    const HALF: u64 = 2;
    // TASK_BASE + 2 GiB: a region-third boundary on s390x, a PUD boundary
    // everywhere.
    let boundary = A::TASK_BASE + (2u64 << 30).next_multiple_of(A::PUD_SIZE);
    let start = boundary - HALF * P;
    let n = (2 * HALF) as usize;
    let t = TestMm::<A>::new()?;
    t.map(A::TASK_BASE, HALF, false)?;
    t.map(start, 2 * HALF, false)?;
    t.attach();
    fill(A::TASK_BASE, HALF);
    fill(start, 2 * HALF);
    // Whether this mm folds the pud level (decided as the walk does, by the
    // arch's offset helpers on the live entries).
    let pgdp = A::pgd_offset(&t.mm().context, start);
    // SAFETY: live entries of the mm, populated by the fills above.
    let pud_folded = unsafe {
        let p4dp = A::p4d_offset(pgdp, start);
        A::pud_offset(p4dp, start) == p4dp
    };
    // An mm whose top table reaches no further than one p4d entry is topped
    // by a pud table: p4d (and pgd) must be folded onto it.
    let limit = A::context_limit(&t.mm().context);
    if pud_folded != (limit <= A::P4D_SIZE) {
        return Err(format!(
            "pud_offset folded={pud_folded} with a top level reaching {limit:#x}"
        ));
    }
    let steps_past_copy = pud_folded && A::PUD_SIZE < A::P4D_SIZE;
    diag!(
        "range=[{start:#x}, {:#x}) pud_folded={pud_folded} context_limit={limit:#x}",
        start + n as u64 * P
    );
    let want = slow(t.mm(), start, n, GupFlags::FOLL_GET)?;
    let low = slow(t.mm(), A::TASK_BASE, HALF as usize, GupFlags::FOLL_GET)?;
    let mut result = Ok(());
    for walk in [GupWalk::Lockless, GupWalk::StackCopy] {
        gup::set_gup_walk(walk);
        let mut rec = GupRecord::new();
        let before = stats::<A>();
        let got = fast::<A>(start, n, GupFlags::FOLL_GET, Some(&mut rec));
        let d = stats::<A>().since(before);
        gup::set_gup_walk(GupWalk::Lockless);
        let in_frames = rec
            .reads()
            .iter()
            .filter(|r| addr_in_pgtable_frame(r.addr))
            .count();
        let own = rec.reads().iter().filter(|r| rec.is_own_copy(r)).count();
        let stray: Vec<_> = rec.stray_reads().copied().collect();
        diag!(
            "walk={} entry_reads={} in_pgtable_frames={in_frames} own_copy_reads={own} stray_reads={} fast_pages={} fallbacks={}",
            walk.name(),
            rec.reads().len(),
            stray.len(),
            d.fast_pages,
            d.fallbacks
        );
        for r in &stray {
            diag!(
                "walk={} read {:?} entry at {:#x} (outside every page-table frame, not the level's own copy at {:#x}): {:#x}",
                walk.name(),
                r.level,
                r.addr,
                rec.own_copy(r.level).unwrap_or(0),
                r.value
            );
        }
        let wrong_half = got.pages.len() == n && got.pfns()[HALF as usize..] == low.pfns()[..];
        if wrong_half {
            diag!(
                "walk={}: GUP-fast returned the pages of {:#x} for {boundary:#x}",
                walk.name(),
                A::TASK_BASE
            );
        }
        let buggy = walk == GupWalk::StackCopy && steps_past_copy;
        if buggy {
            if stray.is_empty() || stray.iter().any(|r| r.level != Level::Pud) {
                result = Err(format!(
                    "stack-copy walk over a folded pud: expected a stray pud read, got {stray:?}"
                ));
            } else if !wrong_half {
                result = Err("stack-copy walk: the stray entry did not yield the low pages".into());
            }
        } else {
            if got.pfns() != want.pfns() {
                result = Err(format!(
                    "walk={}: GUP-fast and slow GUP differ",
                    walk.name()
                ));
            } else if !stray.is_empty() {
                result = Err(format!("walk={}: stray reads {stray:?}", walk.name()));
            } else if walk == GupWalk::Lockless && in_frames != rec.reads().len() {
                result = Err("lockless walk: a read outside page-table frames".into());
            } else if d.fast_pages != n as u64 {
                result = Err(format!("walk={}: fallback to slow GUP", walk.name()));
            }
        }
        if result.is_err() {
            break;
        }
    }
    if !steps_past_copy {
        diag!("no per-mm folding of the pud level here: both walks stay on live tables or the walk's own copy");
    }
    result?;
    // A mapping 8 TiB up makes s390x upgrade the mm in place (region-second
    // table on top, only pgd folded): the lockless walk follows the new
    // folding for the old range and the new page alike.
    let high = A::TASK_BASE + (8 << 40);
    t.map(high, 1, false)?;
    fill(high, 1);
    drop((want, low));
    for (at, pages) in [(start, n), (high, 1)] {
        let want = slow(t.mm(), at, pages, GupFlags::FOLL_GET)?;
        let mut rec = GupRecord::new();
        let got = fast::<A>(at, pages, GupFlags::FOLL_GET, Some(&mut rec));
        let outside = rec
            .reads()
            .iter()
            .filter(|r| !addr_in_pgtable_frame(r.addr))
            .count();
        if got.pfns() != want.pfns() || outside != 0 {
            return Err(format!(
                "after the upgrade (limit {:#x}): fast and slow differ at {at:#x} or {outside} reads outside page-table frames",
                A::context_limit(&t.mm().context)
            ));
        }
    }
    diag!(
        "after mapping {high:#x}: context_limit={:#x}, lockless walk == slow GUP, reads in page-table frames only",
        A::context_limit(&t.mm().context)
    );
    Ok(())
}

/// GUP-fast falls back to slow GUP where it must — unpopulated pages, and
/// FOLL_WRITE on read-only (COW after fork) PTEs — without a back-off (no
/// race), and the result equals slow GUP's.
fn fallback_when_needed<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| outcome(fallback_body::<A>()))
}

fn fallback_body<A: Mmu>() -> Result<(), String> {
    const N: u64 = 8;
    let start = A::TASK_BASE;
    let t = TestMm::<A>::new()?;
    t.map(start, N, false)?;
    t.attach();
    fill(start, N / 2);
    // The second half is mapped, never touched.
    let before = stats::<A>();
    let got = fast::<A>(start, N as usize, GupFlags::FOLL_GET, None);
    let d = stats::<A>().since(before);
    let want = slow(t.mm(), start, N as usize, GupFlags::FOLL_GET)?;
    diag!(
        "unpopulated: fast_pages={} fallbacks={} backoffs={} slow_pages={}",
        d.fast_pages,
        d.fallbacks,
        d.backoffs,
        d.slow_pages
    );
    if got.pfns() != want.pfns() {
        return Err("unpopulated: the result differs from slow GUP".into());
    }
    if (d.fast_pages, d.fallbacks, d.backoffs, d.slow_pages) != (N / 2, 1, 0, N / 2) {
        return Err(format!("unpopulated: counters {d:?}"));
    }
    drop((got, want));
    // Fork: every PTE of the parent becomes read-only.
    let child = memory::dup_mm(t.mm()).ok_or("dup_mm: no memory")?;
    let child = TestMm::<A>(Some(child));
    let flags = GupFlags::FOLL_WRITE | GupFlags::FOLL_GET;
    let before = stats::<A>();
    let got = fast::<A>(start, N as usize, flags, None);
    let d = stats::<A>().since(before);
    let want = slow(t.mm(), start, N as usize, flags)?;
    diag!(
        "cow: fast_pages={} fallbacks={} backoffs={} slow_pages={}",
        d.fast_pages,
        d.fallbacks,
        d.backoffs,
        d.slow_pages
    );
    if got.pfns() != want.pfns() {
        return Err("cow: the result differs from slow GUP".into());
    }
    if (d.fast_pages, d.fallbacks, d.backoffs) != (0, 1, 0) {
        return Err(format!("cow: counters {d:?}"));
    }
    drop((got, want, child));
    Ok(())
}

/// Pinned pages stay allocated across munmap, with their content, the
/// refcount holding exactly the pin bias; unpinning frees them.
fn pin_survives_munmap<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| outcome(pin_munmap_body::<A>()))
}

fn pin_munmap_body<A: Mmu>() -> Result<(), String> {
    const N: u64 = 4;
    let start = A::TASK_BASE;
    let t = TestMm::<A>::new()?;
    t.map(start, N, false)?;
    t.attach();
    fill(start, N);
    let mut got = fast::<A>(start, N as usize, GupFlags::FOLL_PIN, None);
    if got.pages.len() != N as usize {
        return Err(format!("pinned {} of {N} pages", got.pages.len()));
    }
    memory::munmap(t.mm(), start, N * P).map_err(|e| format!("munmap: {e:?}"))?;
    let gone = A::probe_load(start).is_err();
    let mut bad = String::new();
    for (i, p) in got.pages.iter().enumerate() {
        // SAFETY: the pin keeps the frame allocated; RAM is mapped 1:1.
        let v = unsafe { page::page_address(p).cast::<u64>().read_volatile() };
        let refs = page::page_ref_count(p);
        let want = start + i as u64 * P;
        if v != want || refs != GUP_PIN_COUNTING_BIAS || page::page_mapped(p) {
            bad.push_str(&format!(
                " page{i}: value={v:#x} refcount={refs} mapcount={}",
                page::page_mapcount(p)
            ));
        }
    }
    let refs = page::page_ref_count(got.pages[0]);
    let free = page_alloc::nr_free_pages();
    let pages = core::mem::take(&mut got.pages);
    gup::unpin_user_pages(&pages);
    let freed = page_alloc::nr_free_pages().saturating_sub(free);
    let still_held = pages
        .iter()
        .filter(|p| page::page_ref_count(p) != 0)
        .count();
    diag!(
        "after munmap: unmapped={gone} refcount={refs} (bias {GUP_PIN_COUNTING_BIAS}); after unpin: {freed} more free frames, {still_held} pages still referenced"
    );
    if !gone || !bad.is_empty() {
        return Err(format!("after munmap (unmapped={gone}):{bad}"));
    }
    if still_held != 0 || freed < N as usize {
        return Err(format!(
            "unpin left {still_held} pages referenced, {freed} frames freed"
        ));
    }
    Ok(())
}

/// After fork, FOLL_WRITE|FOLL_PIN in the parent breaks COW: the parent's
/// pinned pages are its own copies (the child keeps the originals), a store
/// through the pin is seen by the parent and not by the child.
fn pin_write_breaks_cow<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| outcome(pin_cow_body::<A>()))
}

fn pin_cow_body<A: Mmu>() -> Result<(), String> {
    const N: u64 = 2;
    let start = A::TASK_BASE;
    let t = TestMm::<A>::new()?;
    t.map(start, N, false)?;
    t.attach();
    fill(start, N);
    let child = memory::dup_mm(t.mm()).ok_or("dup_mm: no memory")?;
    let child = TestMm::<A>(Some(child));
    let pinned = fast::<A>(
        start,
        N as usize,
        GupFlags::FOLL_WRITE | GupFlags::FOLL_PIN,
        None,
    );
    let theirs = slow(child.mm(), start, N as usize, GupFlags::FOLL_GET)?;
    if pinned.pages.len() != N as usize {
        return Err(format!("pinned {} of {N}", pinned.pages.len()));
    }
    for p in &pinned.pages {
        // SAFETY: a pinned frame; RAM is mapped 1:1.
        unsafe { page::page_address(p).cast::<u64>().write_volatile(0xd1a) };
    }
    // SAFETY: in the parent's VMA, this CPU runs the parent.
    let parent_sees = unsafe { load(start) };
    let child_page = theirs.pages[0];
    // SAFETY: a referenced frame; RAM is mapped 1:1.
    let child_sees = unsafe { page::page_address(child_page).cast::<u64>().read_volatile() };
    diag!(
        "parent_pfn={:#x} child_pfn={:#x} parent_reads={parent_sees:#x} child_page_holds={child_sees:#x} pinned={}",
        page::page_to_pfn(pinned.pages[0]),
        page::page_to_pfn(child_page),
        gup::page_maybe_dma_pinned(pinned.pages[0])
    );
    if pinned
        .pfns()
        .iter()
        .zip(theirs.pfns())
        .any(|(&a, b)| a == b)
    {
        return Err("the parent's pinned page is still shared with the child".into());
    }
    if parent_sees != 0xd1a || child_sees != start {
        return Err(format!(
            "parent reads {parent_sees:#x}, child's page holds {child_sees:#x}"
        ));
    }
    drop((pinned, theirs, child));
    Ok(())
}

// ---- huge PMD leaves ------------------------------------------------------------------

const NO_LEAVES: &str = "no PMD leaves (QEMU TCG has no EDAT)";

/// The collapse policy of these cases (Linux's, table freed at once).
fn collapse_policy() -> CollapsePolicy {
    CollapsePolicy {
        ipi_sync: true,
        table_free: TableFree::Immediate,
    }
}

/// The PMD entry of `addr` in `mm`, 0 if there is no PMD.
fn pmd_of<A: Mmu>(mm: &Mm<A>, addr: u64) -> u64 {
    // SAFETY: a live entry of `mm`; the test alone changes it.
    pgtable::follow_pmd(mm, addr).map_or(0, |p| unsafe { pgtable::read_entry(p) })
}

/// Maps `[TASK_BASE, TASK_BASE + PMD_SIZE + extra * P)` populated, runs it
/// on this CPU, fills every page with its address and collapses the first
/// PMD block. Returns the mm and the pfn of the huge page's head.
fn collapsed_block<A: Mmu>(extra: u64) -> Result<(TestMm<A>, u64), String> {
    let base = A::TASK_BASE;
    assert_eq!(base % A::PMD_SIZE, 0, "TASK_BASE is PMD-aligned");
    let n = A::PMD_SIZE / P + extra;
    let t = TestMm::<A>::new()?;
    memory::mmap_anon(t.mm(), base, n * P, RW, true).map_err(|e| format!("mmap: {e:?}"))?;
    t.attach();
    fill(base, n);
    let rep = khugepaged::collapse_huge_page(t.mm(), base, &collapse_policy());
    if rep.result != CollapseResult::Collapsed {
        return Err(format!("collapse: {:?}", rep.result));
    }
    let pmd = pmd_of(t.mm(), base);
    if !huge_memory::pmd_trans_huge::<A>(pmd) {
        return Err("the collapsed block is not mapped by a PMD leaf".into());
    }
    Ok((t, A::pmd_pfn(pmd)))
}

/// x86-64: GUP-fast and slow GUP over a range inside a PMD leaf and one
/// crossing its end agree page for page; the leaf's subpages come in order,
/// all from the lockless walk; each reference or pin lands on the subpage
/// returned (the head's count is its own: the leaf's reference); pins show
/// as pinned and their release restores every count. FOLL_WRITE slow GUP
/// takes the writable leaf as it is (no split). Pins taken on the leaf hold
/// their frames, with their contents, across a munmap that zaps the leaf
/// whole; unpinning frees them.
fn huge_pmd_fast_equals_slow<A: Mmu>(_: &Cmdline) -> Outcome {
    if !A::HAS_HUGE_PMD {
        return Outcome::Skip(NO_LEAVES);
    }
    no_leak(|| outcome(huge_fast_slow_body::<A>()))
}

fn huge_fast_slow_body<A: Mmu>() -> Result<(), String> {
    const EXTRA: u64 = 8;
    let bad0 = page_alloc::nr_bad_pages();
    let (t, head_pfn) = collapsed_block::<A>(EXTRA)?;
    let base = A::TASK_BASE;
    let head = page::pfn_to_page(head_pfn);
    let nr = A::PMD_SIZE / P;
    // (start, pages): inside the leaf; across its end into small pages.
    let ranges = [(base + 16 * P, 32u64), (base + A::PMD_SIZE - 8 * P, 16)];
    for (start, n) in ranges {
        let want = slow(t.mm(), start, n as usize, GupFlags::FOLL_GET)?;
        let first = (start - base) / P;
        let leaf_part = (nr - first).min(n);
        let expect: Vec<u64> = (first..first + leaf_part).map(|i| head_pfn + i).collect();
        if want.pfns()[..leaf_part as usize] != expect[..] {
            return Err(format!(
                "slow GUP at {start:#x}: not the leaf's subpages in order"
            ));
        }
        let counts = |pages: &[&'static Page]| -> Vec<i32> {
            pages.iter().map(|p| page::page_ref_count(p)).collect()
        };
        let before = counts(&want.pages);
        let head_before = page::page_ref_count(head);
        for flags in [GupFlags::FOLL_GET, GupFlags::FOLL_PIN] {
            let s0 = stats::<A>();
            let got = fast::<A>(start, n as usize, flags, None);
            let d = stats::<A>().since(s0);
            let unit = if flags == GupFlags::FOLL_PIN {
                GUP_PIN_COUNTING_BIAS
            } else {
                1
            };
            let during = counts(&want.pages);
            let head_during = page::page_ref_count(head);
            let pinned = got.pages.iter().all(|p| gup::page_maybe_dma_pinned(p));
            let wrong_data = got
                .pages
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    // SAFETY: a referenced frame; RAM is mapped 1:1.
                    let v = unsafe { page::page_address(p).cast::<u64>().read_volatile() };
                    v != start + *i as u64 * P
                })
                .count();
            got_pages_check(&got, &want, flags)?;
            drop(got);
            let after = counts(&want.pages);
            diag!(
                "range={:#x}+{n} leaf_pages={leaf_part} flags={flags:?} fast_pages={} fallbacks={} head_refcount={head_during} subpage_refcount={} pinned={pinned}",
                start - base,
                d.fast_pages,
                d.fallbacks,
                during[0]
            );
            if (d.fast_pages, d.fallbacks) != (n, 0) {
                return Err(format!(
                    "{flags:?} at {start:#x}: the fast path got {} of {n} pages, {} fallbacks",
                    d.fast_pages, d.fallbacks
                ));
            }
            if during.iter().zip(&before).any(|(d, b)| *d != b + unit) {
                return Err(format!(
                    "{flags:?} at {start:#x}: refcounts {:?}, were {:?}",
                    &during[..4],
                    &before[..4]
                ));
            }
            if head_during != head_before || head_before != 1 {
                return Err(format!(
                    "{flags:?}: the head's refcount went {head_before} -> {head_during}, not its own 1"
                ));
            }
            if flags == GupFlags::FOLL_PIN && !pinned {
                return Err("a pinned subpage does not look pinned".into());
            }
            if wrong_data != 0 {
                return Err(format!("{wrong_data} pages hold the wrong data"));
            }
            if after != before {
                return Err(format!(
                    "{flags:?}: the release left refcounts {:?}",
                    &after[..4]
                ));
            }
        }
        drop(want);
    }
    // FOLL_WRITE on the (writable) leaf: taken as it is.
    let splits0 = huge_memory::THP_SPLIT_PMD.load(Ordering::Relaxed);
    let w = slow(
        t.mm(),
        base + 5 * P,
        3,
        GupFlags::FOLL_WRITE | GupFlags::FOLL_PIN,
    )?;
    let splits = huge_memory::THP_SPLIT_PMD.load(Ordering::Relaxed) - splits0;
    if w.pfns() != [head_pfn + 5, head_pfn + 6, head_pfn + 7] || splits != 0 {
        return Err(format!(
            "FOLL_WRITE on the leaf: {splits} splits, other frames"
        ));
    }
    if !huge_memory::pmd_trans_huge::<A>(pmd_of(t.mm(), base)) {
        return Err("FOLL_WRITE on a writable leaf split it".into());
    }
    drop(w);
    // Pins across a munmap that zaps the leaf whole.
    let mut pinned = fast::<A>(base + 100 * P, 4, GupFlags::FOLL_PIN, None);
    let zaps0 = huge_memory::THP_ZAP_PMD.load(Ordering::Relaxed);
    memory::munmap(t.mm(), base, A::PMD_SIZE).map_err(|e| format!("munmap: {e:?}"))?;
    let zaps = huge_memory::THP_ZAP_PMD.load(Ordering::Relaxed) - zaps0;
    let mut bad = String::new();
    for (i, p) in pinned.pages.iter().enumerate() {
        // SAFETY: the pin keeps the frame allocated; RAM is mapped 1:1.
        let v = unsafe { page::page_address(p).cast::<u64>().read_volatile() };
        let want = base + (100 + i as u64) * P;
        if v != want || page::page_ref_count(p) != GUP_PIN_COUNTING_BIAS {
            bad.push_str(&format!(
                " page{i}: value={v:#x} refcount={}",
                page::page_ref_count(p)
            ));
        }
    }
    let free = page_alloc::nr_free_pages();
    let pages = core::mem::take(&mut pinned.pages);
    gup::unpin_user_pages(&pages);
    let freed = page_alloc::nr_free_pages() - free;
    let bad_pages = page_alloc::nr_bad_pages() - bad0;
    diag!("after whole-leaf munmap: huge_zaps={zaps} pinned_pages_held={} unpin_freed={freed} bad_pages={bad_pages}", pages.len());
    if zaps != 1 || pages.len() != 4 || !bad.is_empty() {
        return Err(format!(
            "munmap: {zaps} huge zaps, pinned {}:{bad}",
            pages.len()
        ));
    }
    if freed != 4 || bad_pages != 0 {
        return Err(format!("unpin freed {freed} frames, {bad_pages} bad pages"));
    }
    drop(t);
    Ok(())
}

/// The fast and the slow GUP of a range got the same frames.
fn got_pages_check(got: &Held, want: &Held, flags: GupFlags) -> Result<(), String> {
    if got.pfns() != want.pfns() {
        return Err(format!(
            "{flags:?}: GUP-fast and slow GUP got different frames"
        ));
    }
    Ok(())
}

/// A pin taken by real GUP on one small page of a block makes its collapse
/// abort with that page's count (the PTE's reference plus the pin bias), and
/// leaves the block as it was; after the unpin the collapse succeeds (into a
/// PMD leaf where the MMU has them, a fresh PTE table elsewhere).
fn huge_pmd_pin_blocks_collapse<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| outcome(pin_blocks_collapse_body::<A>()))
}

fn pin_blocks_collapse_body<A: Mmu>() -> Result<(), String> {
    let base = A::TASK_BASE;
    let n = A::PMD_SIZE / P;
    let t = TestMm::<A>::new()?;
    memory::mmap_anon(t.mm(), base, A::PMD_SIZE, RW, true).map_err(|e| format!("mmap: {e:?}"))?;
    t.attach();
    fill(base, n);
    let target = base + 77 * P;
    let pin = fast::<A>(target, 1, GupFlags::FOLL_PIN, None);
    if pin.pages.len() != 1 {
        return Err("GUP-fast did not pin the page".into());
    }
    let old_pfn = page::page_to_pfn(pin.pages[0]);
    let rep = khugepaged::collapse_huge_page(t.mm(), base, &collapse_policy());
    let still_mapped = pgtable::follow_pte(t.mm(), target).is_some_and(|ptep| {
        // SAFETY: a live PTE of the mm; the test alone changes it.
        let pte = unsafe { pgtable::read_entry(ptep) };
        A::pte_present(pte) && A::pte_pfn(pte) == old_pfn
    });
    diag!("with a pin: {:?}", rep.result);
    let want =
        CollapseResult::Aborted(CollapseAbort::Referenced(target, 1 + GUP_PIN_COUNTING_BIAS));
    if rep.result != want || !still_mapped {
        return Err(format!(
            "collapse with a pin: {:?}, old page still mapped {still_mapped}",
            rep.result
        ));
    }
    drop(pin);
    let rep = khugepaged::collapse_huge_page(t.mm(), base, &collapse_policy());
    let leaf = huge_memory::pmd_trans_huge::<A>(pmd_of(t.mm(), base));
    diag!("after the unpin: {:?} leaf={leaf}", rep.result);
    if rep.result != CollapseResult::Collapsed || leaf != A::HAS_HUGE_PMD {
        return Err(format!(
            "collapse after the unpin: {:?}, leaf {leaf}",
            rep.result
        ));
    }
    // SAFETY: in the VMA of the running mm.
    let v = unsafe { load(target) };
    if v != target {
        return Err(format!("after the collapse {target:#x} reads {v:#x}"));
    }
    drop(t);
    Ok(())
}

/// x86-64: pins on part of a PMD leaf (the head and tails) across a partial
/// munmap that splits the leaf: every pinned frame keeps exactly the pin's
/// bias (plus its PTE's reference where still mapped), the unmapped pinned
/// frames survive with their contents, each unpin releases exactly what its
/// pin took (the unmapped frames are freed, the mapped ones drop back to
/// their PTE's reference), no bad page is reported and nothing leaks.
fn huge_pmd_pin_across_split<A: Mmu>(_: &Cmdline) -> Outcome {
    if !A::HAS_HUGE_PMD {
        return Outcome::Skip(NO_LEAVES);
    }
    no_leak(|| outcome(pin_across_split_body::<A>()))
}

fn pin_across_split_body<A: Mmu>() -> Result<(), String> {
    let bad0 = page_alloc::nr_bad_pages();
    let (t, head_pfn) = collapsed_block::<A>(0)?;
    let base = A::TASK_BASE;
    // Pages 0..8 pinned: 0..4 stay mapped, 4..8 fall in the hole.
    const PINNED: u64 = 8;
    let (hole, hole_pages) = (base + 4 * P, 60u64);
    let mut pinned = fast::<A>(base, PINNED as usize, GupFlags::FOLL_PIN, None);
    if pinned.pfns() != (0..PINNED).map(|i| head_pfn + i).collect::<Vec<_>>() {
        return Err("GUP-fast did not pin the leaf's first subpages".into());
    }
    let splits0 = huge_memory::THP_SPLIT_PMD.load(Ordering::Relaxed);
    memory::munmap(t.mm(), hole, hole_pages * P).map_err(|e| format!("munmap: {e:?}"))?;
    let splits = huge_memory::THP_SPLIT_PMD.load(Ordering::Relaxed) - splits0;
    let leaf = huge_memory::pmd_trans_huge::<A>(pmd_of(t.mm(), base));
    let mut bad = String::new();
    for (i, p) in pinned.pages.iter().enumerate() {
        let mapped = (i as u64) < 4;
        let want_refs = GUP_PIN_COUNTING_BIAS + i32::from(mapped);
        // SAFETY: a pinned frame; RAM is mapped 1:1.
        let v = unsafe { page::page_address(p).cast::<u64>().read_volatile() };
        let refs = page::page_ref_count(p);
        if refs != want_refs || v != base + i as u64 * P || page::page_mapped(p) != mapped {
            bad.push_str(&format!(
                " page{i}: refcount={refs} (want {want_refs}) value={v:#x} mapcount={}",
                page::page_mapcount(p)
            ));
        }
    }
    let free = page_alloc::nr_free_pages();
    let pages = core::mem::take(&mut pinned.pages);
    gup::unpin_user_pages(&pages);
    let freed = page_alloc::nr_free_pages() - free;
    let refs_after: Vec<i32> = pages.iter().map(|p| page::page_ref_count(p)).collect();
    // SAFETY: in the VMA of the running mm (page 2 stays mapped).
    let v = unsafe { load(base + 2 * P) };
    let bad_pages = page_alloc::nr_bad_pages() - bad0;
    diag!(
        "splits={splits} still_leaf={leaf} unpin_freed={freed} refcounts_after_unpin={refs_after:?} bad_pages={bad_pages}"
    );
    if splits != 1 || leaf || !bad.is_empty() {
        return Err(format!(
            "after the split ({splits} splits, leaf {leaf}):{bad}"
        ));
    }
    if freed != 4 || refs_after != [1, 1, 1, 1, 0, 0, 0, 0] || bad_pages != 0 {
        return Err(format!(
            "unpin freed {freed} frames, refcounts {refs_after:?}, {bad_pages} bad pages"
        ));
    }
    if v != base + 2 * P {
        return Err(format!("page 2 reads {v:#x} after the unpin"));
    }
    drop(t);
    Ok(())
}

// ---- a second CPU ---------------------------------------------------------------------

static REMOTE_MM: AtomicUsize = AtomicUsize::new(0);
static REMOTE_START: AtomicU64 = AtomicU64::new(0);
static REMOTE_DONE: AtomicBool = AtomicBool::new(false);
static REMOTE_IRQS_BEFORE: AtomicBool = AtomicBool::new(false);
static REMOTE_IRQS_AT_LEAF: AtomicUsize = AtomicUsize::new(0);
static REMOTE_PFNS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static REMOTE_GOT: AtomicUsize = AtomicUsize::new(0);
static REMOTE_FAST: AtomicU64 = AtomicU64::new(0);

fn remote_attach<A: Mmu>(_: usize) {
    // SAFETY: the test keeps the mm alive until `remote_detach` ran.
    let mm = unsafe { &*(REMOTE_MM.load(Ordering::Acquire) as *const Mm<A>) };
    // SAFETY: as above.
    unsafe { mmod::use_mm(mm) };
}

fn remote_detach<A: Mmu>(_: usize) {
    mmod::unuse_mm::<A>();
}

/// On the second CPU's idle loop (task context): GUP-fast of `n` pages.
fn remote_gup<A: Mmu>(n: usize) {
    REMOTE_IRQS_BEFORE.store(A::irqs_disabled(), Ordering::Release);
    let before = stats::<A>();
    let mut rec = GupRecord::new();
    let got = fast::<A>(
        REMOTE_START.load(Ordering::Acquire),
        n,
        GupFlags::FOLL_PIN,
        Some(&mut rec),
    );
    REMOTE_FAST.store(stats::<A>().since(before).fast_pages, Ordering::Release);
    REMOTE_IRQS_AT_LEAF.store(
        match rec.irqs_off_at_leaf {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        },
        Ordering::Release,
    );
    REMOTE_GOT.store(got.pages.len(), Ordering::Release);
    for (slot, pfn) in REMOTE_PFNS.iter().zip(got.pfns()) {
        slot.store(pfn, Ordering::Release);
    }
    drop(got);
    REMOTE_DONE.store(true, Ordering::Release);
}

/// GUP-fast on a second CPU that runs the mm, called in task context with
/// interrupts enabled: the walk itself runs with them disabled and gets the
/// pages slow GUP gets on this CPU.
fn fast_on_second_cpu<A: Mmu>(_: &Cmdline) -> Outcome {
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    no_leak(|| outcome(second_cpu_body::<A>()))
}

fn second_cpu_body<A: Mmu>() -> Result<(), String> {
    const N: usize = 8;
    let cpu = smp::nr_cpus() - 1;
    let start = A::TASK_BASE + 3 * A::PMD_SIZE - 4 * P;
    let t = TestMm::<A>::new()?;
    t.map(start, N as u64, false)?;
    t.attach();
    fill(start, N as u64);
    let want = slow(t.mm(), start, N, GupFlags::FOLL_GET)?;
    REMOTE_MM.store(t.mm() as *const Mm<A> as usize, Ordering::Release);
    REMOTE_START.store(start, Ordering::Release);
    REMOTE_DONE.store(false, Ordering::Release);
    smp::smp_call_function_single::<A>(cpu, remote_attach::<A>, 0, true);
    smp::run_on_idle::<A>(cpu, remote_gup::<A>, N);
    while !REMOTE_DONE.load(Ordering::Acquire) {
        A::cpu_relax();
    }
    smp::smp_call_function_single::<A>(cpu, remote_detach::<A>, 0, true);
    let got: Vec<u64> = REMOTE_PFNS
        .iter()
        .take(REMOTE_GOT.load(Ordering::Acquire))
        .map(|p| p.load(Ordering::Acquire))
        .collect();
    let irqs_before = REMOTE_IRQS_BEFORE.load(Ordering::Acquire);
    let at_leaf = REMOTE_IRQS_AT_LEAF.load(Ordering::Acquire);
    let fast_pages = REMOTE_FAST.load(Ordering::Acquire);
    diag!(
        "cpu={cpu} pages={} fast_pages={fast_pages} irqs_disabled_before={irqs_before} irqs_disabled_in_walk={}",
        got.len(),
        at_leaf == 2
    );
    if got != want.pfns() {
        return Err(format!("CPU {cpu} got other frames than slow GUP"));
    }
    if irqs_before || at_leaf != 2 {
        return Err(format!(
            "interrupts: disabled before the call {irqs_before}, in the walk {}",
            at_leaf == 2
        ));
    }
    if fast_pages != N as u64 {
        return Err(format!("CPU {cpu}: {fast_pages} pages from the fast path"));
    }
    Ok(())
}

// ---- throughput -----------------------------------------------------------------------------

/// Pages per GUP call in the benchmark, and each CPU's range.
const BENCH_PAGES: usize = 256;
/// Pages per GUP call of the run in progress: [`BENCH_PAGES`], or a point of
/// the cost curve (`bench.curves`, one CPU, up to 2048 pages per call).
static BENCH_NR: AtomicUsize = AtomicUsize::new(BENCH_PAGES);
/// Measuring window per figure.
const BENCH_NS: u64 = 20_000_000;

static BENCH_MM: AtomicUsize = AtomicUsize::new(0);
static BENCH_GO: AtomicBool = AtomicBool::new(false);
static BENCH_READY: AtomicUsize = AtomicUsize::new(0);
static BENCH_DONE: AtomicUsize = AtomicUsize::new(0);
static BENCH_ERRORS: AtomicUsize = AtomicUsize::new(0);
/// Per CPU: pages got and nanoseconds spent in GUP calls.
static BENCH_PAGES_DONE: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];
static BENCH_TIME: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];

/// The range of `cpu` in the benchmark mm.
fn bench_start<A: Mmu>(cpu: usize) -> u64 {
    A::TASK_BASE + (cpu * BENCH_PAGES) as u64 * P
}

/// On each benchmark CPU: attach the mm, wait for the start, then GUP its
/// range (`fast` != 0: GUP-fast, else slow GUP) and release it again for
/// [`BENCH_NS`], timing only the GUP calls.
fn bench_cpu<A: Mmu>(fast_path: usize) {
    // SAFETY: the test keeps the mm alive until every CPU is done.
    let mm = unsafe { &*(BENCH_MM.load(Ordering::Acquire) as *const Mm<A>) };
    // SAFETY: as above; detached below.
    unsafe { mmod::use_mm(mm) };
    let cpu = A::smp_processor_id();
    let start = bench_start::<A>(cpu);
    let nr = BENCH_NR.load(Ordering::Acquire);
    let mut pages: Vec<&'static Page> = Vec::with_capacity(nr);
    BENCH_READY.fetch_add(1, Ordering::AcqRel);
    while !BENCH_GO.load(Ordering::Acquire) {
        A::cpu_relax();
    }
    let (mut done, mut spent) = (0u64, 0u64);
    let t_end = A::clock_ns() + BENCH_NS;
    while A::clock_ns() < t_end {
        pages.clear();
        let t0 = A::clock_ns();
        let got = if fast_path != 0 {
            get_user_pages_fast::<A>(start, nr, GupFlags::FOLL_PIN, &mut pages)
        } else {
            get_user_pages(mm, start, nr, GupFlags::FOLL_PIN, &mut pages).unwrap_or(0)
        };
        spent += A::clock_ns() - t0;
        if got != nr {
            BENCH_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        gup::unpin_user_pages(&pages);
        done += got as u64;
    }
    BENCH_PAGES_DONE[cpu].store(done, Ordering::Release);
    BENCH_TIME[cpu].store(spent.max(1), Ordering::Release);
    mmod::unuse_mm::<A>();
    BENCH_DONE.fetch_add(1, Ordering::AcqRel);
}

/// Runs the benchmark on CPUs `0..cpus`, `nr` pages per call; returns the
/// summed pages per second (each CPU's pages over its own time in GUP).
fn bench_rate<A: Mmu>(mm: &Mm<A>, cpus: usize, nr: usize, fast_path: bool) -> u64 {
    debug_assert!(cpus == 1 || nr <= BENCH_PAGES, "each CPU has its own range");
    BENCH_NR.store(nr, Ordering::Release);
    BENCH_MM.store(mm as *const Mm<A> as usize, Ordering::Release);
    BENCH_GO.store(false, Ordering::Release);
    BENCH_READY.store(0, Ordering::Release);
    BENCH_DONE.store(0, Ordering::Release);
    let mode = usize::from(fast_path);
    for cpu in 1..cpus {
        smp::run_on_idle::<A>(cpu, bench_cpu::<A>, mode);
    }
    // This CPU joins once the others are ready.
    while BENCH_READY.load(Ordering::Acquire) < cpus - 1 {
        A::cpu_relax();
    }
    BENCH_GO.store(true, Ordering::Release);
    BENCH_READY.fetch_add(1, Ordering::AcqRel);
    bench_cpu::<A>(mode);
    while BENCH_DONE.load(Ordering::Acquire) < cpus {
        A::cpu_relax();
    }
    (0..cpus)
        .map(|c| {
            BENCH_PAGES_DONE[c].load(Ordering::Acquire) * 1_000_000_000
                / BENCH_TIME[c].load(Ordering::Acquire)
        })
        .sum()
}

/// Pages per second of GUP-fast and of slow GUP (FOLL_PIN of populated
/// pages, then unpin), on one CPU and on every CPU at once, each CPU on its
/// own range of one mm.
///
/// With `bench.curves`, also the cost curve: pages per second on one CPU
/// against the pages per call, 1 to 2048.
fn throughput<A: Mmu>(args: &Cmdline) -> Outcome {
    no_leak(|| outcome(throughput_body::<A>(args.curves)))
}

fn throughput_body<A: Mmu>(curves: bool) -> Result<(), String> {
    let n = smp::nr_cpus();
    let t = TestMm::<A>::new()?;
    let curve_pages = super::gather::CURVE_PAGES;
    let most = curve_pages[curve_pages.len() - 1] as usize;
    let range = if curves { most } else { 0 };
    t.map(A::TASK_BASE, (n * BENCH_PAGES).max(range) as u64, true)?;
    BENCH_ERRORS.store(0, Ordering::Release);
    if curves {
        for nr in curve_pages {
            let fast = bench_rate(t.mm(), 1, nr as usize, true);
            let slow = bench_rate(t.mm(), 1, nr as usize, false);
            diag!("gup_curve_fast_{nr}={fast} gup_curve_slow_{nr}={slow}");
        }
    }
    let fast1 = bench_rate(t.mm(), 1, BENCH_PAGES, true);
    let slow1 = bench_rate(t.mm(), 1, BENCH_PAGES, false);
    let fast_all = bench_rate(t.mm(), n, BENCH_PAGES, true);
    let slow_all = bench_rate(t.mm(), n, BENCH_PAGES, false);
    diag!(
        "gup_fast_pages_per_sec_1cpu={fast1} gup_slow_pages_per_sec_1cpu={slow1} speedup_1cpu={}.{:02}",
        fast1 / slow1.max(1),
        fast1 * 100 / slow1.max(1) % 100
    );
    diag!(
        "gup_fast_pages_per_sec_all_cpus={fast_all} gup_slow_pages_per_sec_all_cpus={slow_all} cpus={n}"
    );
    let errors = BENCH_ERRORS.load(Ordering::Acquire);
    if errors != 0 {
        return Err(format!("{errors} GUP calls got fewer pages than asked"));
    }
    // The pages are back to their single mapping reference.
    let p0 = pgtable::follow_pte(t.mm(), A::TASK_BASE)
        // SAFETY: a live PTE of the mm.
        .map(|p| unsafe { pgtable::read_entry(p) })
        .filter(|&pte| A::pte_present(pte))
        .map(|pte| page::page_ref_count(page::pfn_to_page(A::pte_pfn(pte))));
    if p0 != Some(1) {
        return Err(format!(
            "after the benchmark the first page's refcount is {p0:?}"
        ));
    }
    Ok(())
}
