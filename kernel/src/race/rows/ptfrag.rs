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
//!   about to get, pass after pass (the next once the head's refcount or
//!   type changed), taking and dropping speculative
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
//! - Overlap (the roles met inside the window): the scanner held a
//!   speculative reference on the fresh block's head across the count
//!   setting — it took it (`pfn_scan:after_get` on the head) before the
//!   allocator left `frag:before_block_count` to set the count, and went
//!   on to drop it after the allocator reached `frag:after_block_count`.
//!   Buggy: the reference is wiped; the fixes keep the count elsewhere.
//! - Detectors: the last fragment's frame freed (poisoned) while its PMD
//!   entry still points at it; a negative refcount on the head; the
//!   allocator's read of the last table returning the free-page poison;
//!   and the runner's bad-page check (the scanner's `put_page` dropped the
//!   last reference of a block still marked a page table).
//! - Teardown: a block freed (or leaked by the free checks) while its last
//!   fragment is linked is unlinked from its PMD entry (and a leaked block
//!   freed for good); the last PMD block is unmapped. The run's mm
//!   ([`Run`], built by `prepare`), its VMA removed and its upper tables
//!   kept, serves the next iteration.
//! - End of run: how many speculative references the scanner took on the
//!   table block, and in how many iterations the allocator's block was not
//!   the one setup freed (`# ptfrag: ...`).

use crate::{roles, schedule};
use crate::kprintln;
use crate::mm::arch::{Level, Mmu};
use crate::mm::frag::{self, FragPolicy};
use crate::mm::mm::VmFlags;
use crate::mm::{memory, page, page_alloc, pfn_scanner, pgtable, PAGE_SHIFT};
use crate::race::detect::{self, Finding};
use crate::race::point::{self, points};
use crate::race::scenario::{Commit, CommitRole, Ctx, Row, RowInfo, RunMm, Variant};
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

roles!(ALLOC = "pte_alloc", SCAN = "scanner");

/// The row.
pub struct PtfragRefcount;

/// What the roles and the detectors share in an iteration.
#[derive(Default)]
pub struct State {
    /// The scanner runs (the allocator starts only then).
    scanning: AtomicBool,
    /// The allocator finished.
    alloc_done: AtomicBool,
    /// Head pfn of the block the allocator carved from, plus one (0: none).
    block: AtomicU64,
    /// Physical address of the last fragment (the one left linked), plus one.
    last_table: AtomicU64,
    /// The allocator's read of the last table found the free-page poison:
    /// the entry's physical address, plus one.
    read_freed: AtomicU64,
    /// Speculative references the scanner took on the table block.
    refs: AtomicU64,
    /// The allocator's block was not the one setup freed.
    other_block: AtomicBool,
}

/// What the run keeps: its mm, with the upper tables of the range, lent to
/// each iteration (building an address space per iteration would cost more
/// than the race), and the counts printed at the end.
pub struct Run<A: Mmu> {
    mm: RunMm<A>,
    /// Speculative references the scanner took on the table block.
    refs: u64,
    /// Iterations in which the allocator's block was not the freed one.
    other_block: u64,
}

impl<A: Mmu> Default for Run<A> {
    fn default() -> Self {
        Run {
            mm: RunMm::default(),
            refs: 0,
            other_block: 0,
        }
    }
}

/// The PMD blocks the row uses: one per fragment of a block.
fn span<A: Mmu>() -> u64 {
    frag::frags_per_block::<A>() as u64 * A::PMD_SIZE
}

fn base<A: Mmu>() -> u64 {
    A::TASK_BASE
}

/// The last PMD block: its fragment stays linked.
fn last_block<A: Mmu>() -> u64 {
    base::<A>() + (frag::frags_per_block::<A>() as u64 - 1) * A::PMD_SIZE
}

impl<A: Mmu> Row<A> for PtfragRefcount {
    const INFO: RowInfo = RowInfo {
        catalogue: Some(4),
        seed: "seed 002: page-table fragment allocator refcount vs speculative references (powerpc, July 2018)",
        commits: &[Commit::new(
            "4231aba000f5",
            Some("powerpc/64s: Fix page table fragment refcount race vs speculative references"),
            Some("4.19"),
            CommitRole::Fix,
        )],
        delay_points: &[&points::FRAG_AFTER_BLOCK_ALLOC, &points::PFN_SCAN_AFTER_GET],
        trace_points: &[
            &points::PFN_SCAN_AFTER_PUT,
            &points::GATHER_AFTER_TABLE_FREE,
            &points::FRAG_BEFORE_BLOCK_COUNT,
        ],
        schedule: schedule![
            ALLOC at points::FRAG_AFTER_BLOCK_ALLOC;
            SCAN at points::PFN_SCAN_AFTER_GET;
            ALLOC leave points::FRAG_AFTER_BLOCK_ALLOC;
            ALLOC at points::FRAG_AFTER_BLOCK_COUNT;
            SCAN leave points::PFN_SCAN_AFTER_GET;
        ],
        ..RowInfo::new(
            "ptfrag-refcount",
            "a speculative reference wiped by set_page_count frees a page-table block while a fragment is linked",
            ROLES,
        )
    };
    /// How a fragment block counts its live fragments.
    type Config = FragPolicy;
    const VARIANTS: &'static [Variant<FragPolicy>] = &[
        Variant::new(
            "buggy",
            "fragments counted with set_page_count on the main refcount (powerpc before 4.19)",
            "powerpc before 4231aba000f5 (before 4.19): set_page_count on the main refcount",
            &[],
            FragPolicy::SetPageCount,
        ),
        Variant::new(
            "fixed-a",
            "fragments counted in a separate atomic pt_frag_refcount (4231aba000f5)",
            "4231aba000f5 (4.19): a separate atomic fragment counter (pt_frag_refcount)",
            &[],
            FragPolicy::FragCounter,
        ),
        Variant::new(
            "fixed-b",
            "fragments as top bits of the refcount, flipped by atomic xor (s390 up to 6.7)",
            "s390 up to 6.7 (no single commit): one bit per fragment in the refcount's top bits, flipped by atomic xor",
            &[],
            FragPolicy::XorTopBits,
        ),
    ];
    type State = State;
    type Run = Run<A>;

    fn prepare(v: &Variant<FragPolicy>) -> Result<Run<A>, &'static str> {
        frag::set_policy(v.config);
        // The upper tables of the range (a map and unmap keeps them): every
        // iteration then allocates only PTE tables.
        let mm = RunMm::build(|mm| {
            let tables = memory::mmap_anon(mm, base::<A>(), span::<A>(), VmFlags::RW, false)
                .is_ok()
                && (0..frag::frags_per_block::<A>() as u64)
                    .all(|i| pgtable::pmd_alloc(mm, base::<A>() + i * A::PMD_SIZE).is_some())
                && memory::munmap(mm, base::<A>(), span::<A>()).is_ok();
            tables.then_some(()).ok_or(())
        });
        let run = Run {
            mm,
            ..Run::default()
        };
        Ok(run)
    }

    fn run_mm(run: &mut Run<A>) -> Option<&mut RunMm<A>> {
        Some(&mut run.mm)
    }

    fn finish(run: Run<A>) {
        kprintln!(
            "    # ptfrag: policy={} frags_per_block={} scanner refs on the table block {}; blocks other than the freed one {}",
            frag::policy().name(),
            frag::frags_per_block::<A>(),
            run.refs,
            run.other_block
        );
    }

    fn setup(_: &mut Run<A>, ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        memory::mmap_anon(ctx.mm(), base::<A>(), span::<A>(), VmFlags::RW, false)
            .map_err(|e| format!("mmap: {e:?}"))?;
        ctx.addr = base::<A>();
        // Last: a frame is freed. The buddy allocator gives the next block of
        // this order back from the head of the same list (or splits the same
        // larger block again): the allocator's fresh fragment block.
        let order = frag::block_order::<A>();
        let block = page_alloc::alloc_pages(order).ok_or("no memory for a block")?;
        ctx.pfns = Vec::from([page::page_to_pfn(block)]);
        page_alloc::__free_pages(block, order);
        Ok(())
    }

    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool {
        match role {
            ALLOC => pte_alloc_role(ctx),
            _ => scanner_role(ctx),
        }
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        let st = &ctx.state;
        let head = st.block.load(Ordering::Acquire).checked_sub(1)?;
        let linked = last_linked(ctx);
        let last_pfn = st.last_table.load(Ordering::Acquire).saturating_sub(1) >> PAGE_SHIFT;
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
                let pa = st.read_freed.load(Ordering::Acquire).checked_sub(1)?;
                Some(Finding::frame(
                    format!("page-table entry read from a freed (poisoned) table at {pa:#x}"),
                    pa >> PAGE_SHIFT,
                ))
            })?;
        f.vaddr = Some(last_block::<A>());
        f.cpu = f.cpu.or(cpu);
        Some(f)
    }

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        let head = ctx.pfns[0];
        let on_head = |p: &crate::race::trace::Pass| p.addr == head;
        let setting = ctx.passes(ALLOC, &points::FRAG_BEFORE_BLOCK_COUNT).into_iter().find(on_head);
        let set = ctx.passes(ALLOC, &points::FRAG_AFTER_BLOCK_COUNT).into_iter().find(on_head);
        let (Some(setting), Some(set)) = (setting, set) else {
            return false;
        };
        ctx.passes(SCAN, &points::PFN_SCAN_AFTER_GET)
            .iter()
            .any(|get| on_head(get) && get.before(&setting) && set.before(get))
    }

    fn teardown(run: &mut Run<A>, ctx: &mut Ctx<A, Self>) {
        let st = &ctx.state;
        run.refs += st.refs.load(Ordering::Relaxed);
        run.other_block += u64::from(st.other_block.load(Ordering::Relaxed));
        let head = st.block.load(Ordering::Acquire).checked_sub(1);
        if let (Some(head), Some((pmdp, _))) = (head, last_linked(ctx)) {
            let p = page::pfn_to_page(head);
            if p._refcount.load(Ordering::Acquire) == 0 {
                // The block was freed (poisoned) — or left out of circulation
                // by the free checks (still a page table) — while its last
                // fragment was linked: unlink it; the freed block stays free.
                let mm = ctx.mm();
                {
                    let _guard = mm.page_table_lock.lock();
                    // SAFETY: a live PMD entry of the iteration's mm, no CPU
                    // runs the mm; page_table_lock serialises writers. No CPU
                    // walked the table through the MMU: no TLB holds it.
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
        // The last PMD block: frees the last fragment (and with it the
        // block) where the count was right. The upper tables stay; an mm
        // that cannot be unmapped is torn down (the next setup then fails).
        if memory::munmap(ctx.mm(), last_block::<A>(), A::PMD_SIZE).is_err() {
            if let Some(mm) = ctx.mm.take() {
                memory::exit_mmap(*mm);
            }
        }
    }

}

/// The table allocator: carves every fragment of a fresh block, frees all
/// but the last, reads the last.
fn pte_alloc_role<A: Mmu>(ctx: &Ctx<A, PtfragRefcount>) -> bool {
    let mm = ctx.mm();
    let st = &ctx.state;
    let n = frag::frags_per_block::<A>();
    let frag_bytes = A::PTE_TABLE_SIZE as u64;
    point::wait_until::<A>(|| st.scanning.load(Ordering::Acquire));
    let mut tables = Vec::with_capacity(n);
    {
        // As a fault: `pte_alloc` under mmap_lock for read.
        let _vmas = mm.mmap_lock.read();
        for i in 0..n as u64 {
            let addr = base::<A>() + i * A::PMD_SIZE;
            let Some(ptep) = pgtable::pte_alloc_walk(mm, addr) else {
                st.alloc_done.store(true, Ordering::Release);
                return false;
            };
            tables.push(page::virt_to_phys(ptep as u64) & !(frag_bytes - 1));
        }
    }
    let block_bytes = (crate::mm::PAGE_SIZE) << frag::block_order::<A>();
    let first = tables[0];
    st.block.store((first >> PAGE_SHIFT) + 1, Ordering::Release);
    st.last_table.store(tables[n - 1] + 1, Ordering::Release);
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
    {
        let _vmas = mm.mmap_lock.read();
        if let Some(ptep) = pgtable::follow_pte(mm, last_block::<A>()) {
            let pa = page::virt_to_phys(ptep as u64);
            // SAFETY: an entry of the table the PMD entry links, under
            // mmap_lock for read: no munmap frees it meanwhile.
            let v = unsafe { pgtable::read_entry(ptep) };
            if v == page_alloc::PAGE_POISON || detect::read_of_freed_table(pa).is_some() {
                st.read_freed.store(pa + 1, Ordering::Release);
            }
        }
    }
    st.alloc_done.store(true, Ordering::Release);
    let other = first >> PAGE_SHIFT != ctx.pfns[0];
    st.other_block.store(other, Ordering::Relaxed);
    carved && unmapped && !other
}

/// The pfn scanner over the freed block's frames: passes until it has taken
/// and dropped a reference on the block's head while the head was a page
/// table, or the allocator is done.
fn scanner_role<A: Mmu>(ctx: &Ctx<A, PtfragRefcount>) -> bool {
    let st = &ctx.state;
    let head = ctx.pfns[0];
    let end = head + (1 << frag::block_order::<A>());
    let mut on_table = 0u64;
    st.scanning.store(true, Ordering::Release);
    let hp = page::pfn_to_page(head);
    let state = || (page::page_ref_count(hp), page::PageTable(hp));
    loop {
        let done = st.alloc_done.load(Ordering::Acquire);
        // Read before the pass: a change during it makes the next pass
        // start at once.
        let seen = state();
        pfn_scanner::scan_pass::<A>(head, end, |p| {
            if page::page_to_pfn(p) == head && page::PageTable(p) {
                on_table += 1;
            }
        });
        if done || on_table > 0 {
            break;
        }
        // Scan again once the head's refcount or type changed (the
        // allocator took, carved or freed the block) or the allocator is
        // done: every pass sees a new state. A handshake (`wait_until`), so
        // that explore mode places each pass anywhere after that change
        // instead of passing the scan's scheduling points again and again
        // while the allocator stays parked, and a replayed schedule takes
        // the same path.
        point::wait_until::<A>(|| st.alloc_done.load(Ordering::Acquire) || state() != seen);
    }
    st.refs.store(on_table, Ordering::Relaxed);
    on_table > 0
}

/// The PMD entry of the last PMD block, and whether it links the last
/// fragment.
fn last_linked<A: Mmu>(ctx: &Ctx<A, PtfragRefcount>) -> Option<(*mut u64, u64)> {
    let mm = ctx.mm.as_deref()?;
    let table = ctx.state.last_table.load(Ordering::Acquire).checked_sub(1)?;
    let pmdp = pgtable::follow_pmd(mm, last_block::<A>())?;
    // SAFETY: a live PMD entry of the iteration's mm; no role runs now.
    let pmd = unsafe { pgtable::read_entry(pmdp) };
    (!A::entry_none(Level::Pmd, pmd)
        && A::entry_is_table(Level::Pmd, pmd)
        && A::entry_table(Level::Pmd, pmd) == table)
        .then_some((pmdp, table))
}
