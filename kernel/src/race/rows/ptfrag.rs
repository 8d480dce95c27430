//! `ptfrag-refcount` (catalogue row 4, seed 002): a speculative reference
//! wiped out by `set_page_count` when a frame becomes a page-table fragment
//! block.
//!
//! PTE tables are carved as fragments from a larger block
//! ([`crate::mm::frag`]: on s390x two 2 KiB tables per 4 KiB frame, as s390
//! did up to 6.7; on x86-64 sixteen 4 KiB tables from an order-4 block, as
//! powerpc carves its 64 KiB page). The block's head counts the fragments not
//! yet freed. Powerpc before 4.19 counted them on the main refcount, set
//! with `set_page_count(page, PTE_FRAG_NR)` when the block was carved. Any
//! CPU may hold a speculative reference on any in-use frame at any time
//! (compaction's `get_page_unless_zero` on a pfn it scans): taken between
//! the block's allocation and `set_page_count`, it is wiped out, and its
//! `put_page` afterwards leaves the count one short. The block is then freed
//! when the last-but-one fragment goes, while the last one is still linked
//! from a PMD entry. 4231aba000f5 ("powerpc/64s: Fix page table fragment
//! refcount race vs speculative references") counts fragments in a separate
//! atomic (`pt_frag_refcount`); s390 up to 6.7 flipped one bit per fragment
//! in the refcount's top bits with an atomic xor, which speculative
//! increments and decrements never touch.
//!
//! - Roles: `pte_alloc` — in an mm whose upper tables exist, allocates the
//!   PTE tables of one PMD block after another (`pte_alloc` of a fault) until
//!   it has carved every fragment of one fresh block, then `munmap`s all
//!   but the last PMD block (zap, `free_pgtables`: every fragment but the
//!   last is freed, the last stays linked), then reads the last table's
//!   first entry as the next fault there would. `scanner` — the pfn
//!   scanner ([`pfn_scanner::scan_pass`]) over the block the allocator is
//!   about to get, pass after pass, taking and dropping speculative
//!   references, from before the allocator starts until it has taken and
//!   dropped one on the table block (or the allocator is done).
//! - Setup: "a frame is freed": the last thing setup does is allocate a
//!   block of the fragment order and free it, so the buddy allocator hands
//!   the same block to the next allocation of that order — the allocator's
//!   fresh fragment block. The scanner scans that block's frames.
//! - Completion: `pte_alloc` completes when it carved all the block's
//!   fragments in order from that one fresh block (the block the setup
//!   freed) and `munmap` unlinked every table but the last. `scanner`
//!   completes when it took and dropped a reference on the block's head
//!   while the head was a page table, i.e. on the frame that became the
//!   table block.
//! - Variants: `buggy` ([`FragPolicy::SetPageCount`]), `fixed-a`
//!   ([`FragPolicy::FragCounter`], 4231aba000f5), `fixed-b`
//!   ([`FragPolicy::XorTopBits`], s390 up to 6.7). All apply to both arches.
//!   The fixes add no wait: they tolerate the interleaving.
//! - Forced schedule: `pte_alloc` holds at `frag:after_block_alloc` (the
//!   head has the allocator's one reference); `scanner` takes its
//!   speculative reference and holds at `pfn_scan:after_get`; `pte_alloc`
//!   sets the fragment count (`frag:after_block_count`); only then does the
//!   scanner inspect the frame (a page table: not what it wants) and put its
//!   reference.
//! - Natural: random delays at both points widen the windows.
//! - Detectors: the last fragment's frame freed (poisoned) while its PMD
//!   entry still points at it; a negative refcount on the head; the
//!   allocator's read of the last table returning the free-page poison;
//!   and the runner's bad-page check (the scanner's `put_page` dropped the
//!   last reference of a block still marked a page table).
//! - Teardown: a block freed (or leaked by the free checks) while its last
//!   fragment is linked is unlinked from its PMD entry (and a leaked block
//!   freed for good); the last PMD block is unmapped. The mm, its VMA
//!   removed and its upper tables kept, serves the next iteration.

use super::detect::{self, Finding};
use super::point::{self, points, RacePoint, Step};
use super::run_mm::RunMm;
use super::scenario::{Budget, Commit, CommitRole, Ctx, Scenario, Variant};
use crate::kprintln;
use crate::mm::arch::{Level, Mmu};
use crate::mm::frag::{self, FragPolicy};
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::{memory, page, page_alloc, pfn_scanner, pgtable, PAGE_SHIFT};
use alloc::{boxed::Box, format, string::String, vec, vec::Vec};
use core::sync::atomic::{AtomicU64, Ordering};

const ALLOC: usize = 0;
const SCAN: usize = 1;

// `ctx.word` slots.

/// The scanner runs (the allocator starts only then).
const SCANNING: usize = 0;
/// The allocator finished.
const ALLOC_DONE: usize = 1;
/// Head pfn of the block the allocator carved from, plus one (0: none).
const BLOCK: usize = 2;
/// Physical address of the last fragment (the one left linked), plus one.
const LAST_TABLE: usize = 3;
/// The allocator's read of the last table found the free-page poison: the
/// entry's physical address, plus one.
const READ_FREED: usize = 4;

static DELAY_POINTS: [&RacePoint; 2] =
    [&points::FRAG_AFTER_BLOCK_ALLOC, &points::PFN_SCAN_AFTER_GET];
static TRACE_POINTS: [&RacePoint; 2] = [
    &points::PFN_SCAN_AFTER_PUT,
    &points::GATHER_AFTER_TABLE_FREE,
];

static VARIANTS: [Variant; 3] = [
    Variant {
        name: "buggy",
        about: "fragments counted with set_page_count on the main refcount (powerpc before 4.19)",
        models: "powerpc before 4231aba000f5 (before 4.19): set_page_count on the main refcount",
        fix_waits: &[],
    },
    Variant {
        name: "fixed-a",
        about: "fragments counted in a separate atomic pt_frag_refcount (4231aba000f5)",
        models: "4231aba000f5 (4.19): a separate atomic fragment counter (pt_frag_refcount)",
        fix_waits: &[],
    },
    Variant {
        name: "fixed-b",
        about: "fragments as top bits of the refcount, flipped by atomic xor (s390 up to 6.7)",
        models: "s390 up to 6.7 (no single commit): one bit per fragment in the refcount's top bits, flipped by atomic xor",
        fix_waits: &[],
    },
];

fn policy_of(v: &Variant) -> FragPolicy {
    match v.name {
        "buggy" => FragPolicy::SetPageCount,
        "fixed-a" => FragPolicy::FragCounter,
        _ => FragPolicy::XorTopBits,
    }
}

/// The run's mm ([`RunMm`]), with the
/// upper tables of the range, lent to each iteration (as in
/// [`super::wp_unlock`]): building an address space per iteration would cost
/// more than the race.
static RUN_MM: RunMm = RunMm::new();

/// Per-run counts, printed by `reset`.
static STATS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// `STATS` slots: speculative references the scanner took on the table
/// block; iterations in which the allocator's block was not the freed one.
const ST_REFS: usize = 0;
const ST_OTHER_BLOCK: usize = 1;

/// The PMD blocks the row uses: one per fragment of a block.
fn span<A: Mmu>() -> u64 {
    frag::frags_per_block::<A>() as u64 * A::PMD_SIZE
}

fn base<A: Mmu>() -> u64 {
    A::TASK_BASE
}

const RW: VmFlags = VmFlags {
    read: true,
    write: true,
};

fn set_variant<A: Mmu>(v: &Variant) -> Result<(), &'static str> {
    frag::set_policy(policy_of(v));
    for s in &STATS {
        s.store(0, Ordering::Relaxed);
    }
    // The upper tables of the range (a map and unmap keeps them): every
    // iteration then allocates only PTE tables. Without memory, `setup`
    // finds no mm and the run fails.
    if let Some(mm) = Mm::<A>::new().map(Box::new) {
        let ok = memory::mmap_anon(&mm, base::<A>(), span::<A>(), RW, false).is_ok()
            && (0..frag::frags_per_block::<A>() as u64)
                .all(|i| pgtable::pmd_alloc(&mm, base::<A>() + i * A::PMD_SIZE).is_some())
            && memory::munmap(&mm, base::<A>(), span::<A>()).is_ok();
        if ok {
            RUN_MM.put(mm);
        } else {
            memory::exit_mmap(*mm);
        }
    }
    Ok(())
}

fn reset<A: Mmu>() {
    RUN_MM.destroy::<A>();
    let s = STATS.each_ref().map(|c| c.swap(0, Ordering::Relaxed));
    kprintln!(
        "    # ptfrag: policy={} frags_per_block={} scanner refs on the table block {}; blocks other than the freed one {}",
        frag::policy().name(),
        frag::frags_per_block::<A>(),
        s[ST_REFS],
        s[ST_OTHER_BLOCK]
    );
    frag::set_policy(FragPolicy::FragCounter);
}

/// The Linux commits of the row.
static COMMITS: [Commit; 1] = [Commit {
    hash: "4231aba000f5",
    subject: Some("powerpc/64s: Fix page table fragment refcount race vs speculative references"),
    release: Some("4.19"),
    role: CommitRole::Fix,
}];

/// The row.
pub fn scenario<A: Mmu>() -> Scenario<A> {
    Scenario {
        name: "ptfrag-refcount",
        about: "a speculative reference wiped by set_page_count frees a page-table block while a fragment is linked",
        catalogue: Some(4),
        seed: "seed 002: page-table fragment allocator refcount vs speculative references (powerpc, July 2018)",
        commits: &COMMITS,
        roles: &["pte_alloc", "scanner"],
        variants: &VARIANTS,
        flush: &[],
        set_variant: set_variant::<A>,
        reset: reset::<A>,
        setup: setup::<A>,
        role: role::<A>,
        detect: detect::<A>,
        teardown: teardown::<A>,
        schedule: |_| {
            vec![
                Step::at(ALLOC, &points::FRAG_AFTER_BLOCK_ALLOC),
                Step::at(SCAN, &points::PFN_SCAN_AFTER_GET),
                Step::leave(ALLOC, &points::FRAG_AFTER_BLOCK_ALLOC),
                Step::at(ALLOC, &points::FRAG_AFTER_BLOCK_COUNT),
                Step::leave(SCAN, &points::PFN_SCAN_AFTER_GET),
            ]
        },
        delay_points: &DELAY_POINTS,
        trace_points: &TRACE_POINTS,
        max_delay_ns: 20_000,
        budget: Budget::CATALOGUE,
    }
}

fn setup<A: Mmu>(ctx: &mut Ctx<A>) -> Result<(), String> {
    let mm = RUN_MM
        .take::<A>()
        .ok_or_else(|| String::from("no mm for the run"))?;
    let r = memory::mmap_anon(&mm, base::<A>(), span::<A>(), RW, false);
    ctx.mm = Some(mm);
    ctx.addr = base::<A>();
    r.map_err(|e| format!("mmap: {e:?}"))?;
    let mut pfns = Vec::with_capacity(1);
    // Last: a frame is freed. The buddy allocator gives the next block of
    // this order back from the head of the same list (or splits the same
    // larger block again): the allocator's fresh fragment block.
    let order = frag::block_order::<A>();
    let block = page_alloc::alloc_pages(order).ok_or("no memory for a block")?;
    pfns.push(page::page_to_pfn(block));
    ctx.pfns = pfns;
    page_alloc::__free_pages(block, order);
    Ok(())
}

fn role<A: Mmu>(ctx: &Ctx<A>, role: usize) -> bool {
    match role {
        ALLOC => pte_alloc_role(ctx),
        _ => scanner_role(ctx),
    }
}

/// The table allocator: carves every fragment of a fresh block, frees all
/// but the last, reads the last.
fn pte_alloc_role<A: Mmu>(ctx: &Ctx<A>) -> bool {
    let mm = ctx.mm.as_deref().expect("setup lent the mm");
    let n = frag::frags_per_block::<A>();
    let frag_bytes = A::PTE_TABLE_SIZE as u64;
    while ctx.word[SCANNING].load(Ordering::Acquire) == 0 {
        A::cpu_relax();
    }
    let mut tables = Vec::with_capacity(n);
    {
        // As a fault: `pte_alloc` under mmap_lock for read.
        let _vmas = mm.mmap_lock.read();
        for i in 0..n as u64 {
            let addr = base::<A>() + i * A::PMD_SIZE;
            let Some(ptep) = pgtable::pte_alloc_walk(mm, addr) else {
                ctx.word[ALLOC_DONE].store(1, Ordering::Release);
                return false;
            };
            tables.push(page::virt_to_phys(ptep as u64) & !(frag_bytes - 1));
        }
    }
    let block_bytes = (crate::mm::PAGE_SIZE) << frag::block_order::<A>();
    let first = tables[0];
    ctx.word[BLOCK].store((first >> PAGE_SHIFT) + 1, Ordering::Release);
    ctx.word[LAST_TABLE].store(tables[n - 1] + 1, Ordering::Release);
    // One fresh block, its fragments carved in order.
    let carved = first.is_multiple_of(block_bytes)
        && tables
            .iter()
            .enumerate()
            .all(|(i, &t)| t == first + i as u64 * frag_bytes);
    // Free every table but the last.
    let unmapped = memory::munmap(mm, base::<A>(), (n as u64 - 1) * A::PMD_SIZE).is_ok()
        && (0..n as u64 - 1)
            .all(|i| pgtable::follow_pte(mm, base::<A>() + i * A::PMD_SIZE).is_none());
    // The next fault in the last PMD block reads its table.
    let last = base::<A>() + (n as u64 - 1) * A::PMD_SIZE;
    {
        let _vmas = mm.mmap_lock.read();
        if let Some(ptep) = pgtable::follow_pte(mm, last) {
            let pa = page::virt_to_phys(ptep as u64);
            // SAFETY: an entry of the table the PMD entry links, under
            // mmap_lock for read: no munmap frees it meanwhile.
            let v = unsafe { pgtable::read_entry(ptep) };
            if v == page_alloc::PAGE_POISON || detect::read_of_freed_table(pa).is_some() {
                ctx.word[READ_FREED].store(pa + 1, Ordering::Release);
            }
        }
    }
    ctx.word[ALLOC_DONE].store(1, Ordering::Release);
    let other = first >> PAGE_SHIFT != ctx.pfns[0];
    if other {
        STATS[ST_OTHER_BLOCK].fetch_add(1, Ordering::Relaxed);
    }
    carved && unmapped && !other
}

/// The pfn scanner over the freed block's frames: passes until it has taken
/// and dropped a reference on the block's head while the head was a page
/// table, or the allocator is done.
fn scanner_role<A: Mmu>(ctx: &Ctx<A>) -> bool {
    let head = ctx.pfns[0];
    let end = head + (1 << frag::block_order::<A>());
    let mut on_table = 0u64;
    ctx.word[SCANNING].store(1, Ordering::Release);
    loop {
        let done = ctx.word[ALLOC_DONE].load(Ordering::Acquire) != 0;
        pfn_scanner::scan_pass::<A>(head, end, |p| {
            if page::page_to_pfn(p) == head && page::PageTable(p) {
                on_table += 1;
            }
        });
        if done || on_table > 0 {
            break;
        }
        A::cpu_relax();
    }
    STATS[ST_REFS].fetch_add(on_table, Ordering::Relaxed);
    on_table > 0
}

/// The PMD entry of the last PMD block, and whether it links the last
/// fragment.
fn last_linked<A: Mmu>(ctx: &Ctx<A>) -> Option<(*mut u64, u64)> {
    let mm = ctx.mm.as_deref()?;
    let table = ctx.word[LAST_TABLE]
        .load(Ordering::Acquire)
        .checked_sub(1)?;
    let last = base::<A>() + (frag::frags_per_block::<A>() as u64 - 1) * A::PMD_SIZE;
    let pmdp = pgtable::follow_pmd(mm, last)?;
    // SAFETY: a live PMD entry of the iteration's mm; no role runs now.
    let pmd = unsafe { pgtable::read_entry(pmdp) };
    (!A::entry_none(Level::Pmd, pmd)
        && A::entry_is_table(Level::Pmd, pmd)
        && A::entry_table(Level::Pmd, pmd) == table)
        .then_some((pmdp, table))
}

fn detect<A: Mmu>(ctx: &Ctx<A>) -> Option<Finding> {
    let head = ctx.word[BLOCK].load(Ordering::Acquire).checked_sub(1)?;
    let linked = last_linked(ctx);
    let last_pfn = ctx.word[LAST_TABLE]
        .load(Ordering::Acquire)
        .saturating_sub(1)
        >> PAGE_SHIFT;
    let cpu = point::cpu_of(ALLOC);
    let mut f = detect::table_freed_while_linked(last_pfn, linked.is_some())
        .map(|mut f| {
            f.invariant = format!(
                "{} (the block headed by pfn {head:#x} was freed while its last fragment is linked)",
                f.invariant
            );
            f
        })
        .or_else(|| detect::refcount_underflow(head))
        .or_else(|| {
            let pa = ctx.word[READ_FREED].load(Ordering::Acquire).checked_sub(1)?;
            Some(Finding::frame(
                format!("page-table entry read from a freed (poisoned) table at {pa:#x}"),
                pa >> PAGE_SHIFT,
            ))
        })?;
    f.vaddr = Some(base::<A>() + (frag::frags_per_block::<A>() as u64 - 1) * A::PMD_SIZE);
    f.cpu = f.cpu.or(cpu);
    Some(f)
}

fn teardown<A: Mmu>(ctx: &mut Ctx<A>) {
    let head = ctx.word[BLOCK].load(Ordering::Acquire).checked_sub(1);
    if let (Some(head), Some((pmdp, _))) = (head, last_linked(ctx)) {
        let p = page::pfn_to_page(head);
        if p._refcount.load(Ordering::Acquire) == 0 {
            // The block was freed (poisoned) — or left out of circulation by
            // the free checks (still a page table) — while its last fragment
            // was linked: unlink it; the freed block stays free.
            let mm = ctx.mm.as_deref().expect("the iteration's mm");
            {
                let _guard = mm.page_table_lock.lock();
                // SAFETY: a live PMD entry of the iteration's mm, no CPU runs
                // the mm; page_table_lock serialises writers. No CPU walked
                // the table through the MMU: no TLB holds it.
                unsafe { pgtable::pmd_clear::<A>(pmdp) };
            }
            mm.pgtables_bytes
                .fetch_sub(A::PTE_TABLE_SIZE, Ordering::Relaxed);
            if !page_alloc::page_is_poisoned(head) {
                let order = frag::block_order::<A>();
                pgtable::pagetable_dtor(head << PAGE_SHIFT, order);
                for pfn in head..head + (1 << order) {
                    page::pfn_to_page(pfn).private.store(0, Ordering::Release);
                }
                page_alloc::free_frozen_pages(p, order);
            }
        }
    }
    if let Some(mm) = ctx.mm.take() {
        // The last PMD block: frees the last fragment (and with it the
        // block) where the count was right. The upper tables stay.
        let last = base::<A>() + (frag::frags_per_block::<A>() as u64 - 1) * A::PMD_SIZE;
        if memory::munmap(&mm, last, A::PMD_SIZE).is_ok() {
            RUN_MM.put(mm);
        } else {
            memory::exit_mmap(*mm);
        }
    }
}
