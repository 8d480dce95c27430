//! `collapse-vs-gup-fast` (catalogue row 5, seed 003): THP collapse clears
//! the PMD and checks for pins while GUP-fast, which read the old PMD
//! before the clear, pins a small page of the old table after the check.
//!
//! Collapse ([`crate::mm::khugepaged::collapse_huge_page`], `mmap_lock` for
//! write) clears the PMD
//! and flushes (`pmdp_collapse_flush`), checks that no small page has a
//! reference beyond its PTE's (a pin adds `GUP_PIN_COUNTING_BIAS`), copies
//! the pages into a new block, clears the old PTEs, frees the old pages and
//! installs the block. GUP-fast walks with interrupts off and no lock; if it
//! read the PMD before the clear it walks the unhooked old table, pins a
//! small page after the pin check, and its PTE recheck passes (the old PTEs
//! are cleared only after the copy). The pin then holds a page the mapping
//! no longer uses, and what is written through it after the copy never
//! reaches the mapped data. Fixes: 70cbc3cc78a9 (GUP-fast rechecks the PMD
//! after the grab and backs off when it changed), 2ba99c5e0881 (collapse
//! sends an IPI sync after the PMD clear, before the pin check: the
//! interrupts-off walker is gone by then, and its pin is seen). x86-64's
//! IPI shootdown already waits for the walker at the flush; an NMI
//! shootdown (like broadcast invalidation) and s390x's IDTE/CSP do not.
//!
//! - Roles: `collapse` (CPU 1) collapses the block (mmap_lock for write);
//!   `gup` (CPU 2) pins page 0 of the block with FOLL_PIN | FOLL_WRITE
//!   ([`get_user_pages_fast_traced`]: the lockless walk with interrupts
//!   off, slow GUP for what it left), writes the iteration's mark through
//!   the kernel mapping of the pinned page (as a driver's DMA or a
//!   `kmap` user would), notes whether the page was still mapped, and
//!   unpins.
//! - Completion: `collapse` completes when it collapsed the block, or
//!   aborted because the pin check saw `gup`'s pin (the correct answer to a
//!   pin taken before the check). `gup` completes when it pinned, wrote and
//!   unpinned, and its lockless walk decided on the fast path: it pinned
//!   the page there, or saw the collapse — the walk stopped at a PMD it read
//!   empty (cleared) or at a PTE of the old table it read empty (cleared
//!   after the copy), or backed off because a recheck (PMD or PTE) found
//!   the entry changed — after which slow GUP (waiting for `mmap_lock`) pinned the
//!   page the mapping uses. A walk that stopped for any other reason did not
//!   complete. How often each happened is printed per run
//!   (`# collapse: ...`), so a run whose walks never met the collapse shows
//!   it.
//! - Variants, each run under every flush strategy of the arch (the flush
//!   axis: x86-64 `ipi`, `nmi`; s390x `ipte`):
//!   `buggy` — PTE recheck only, no IPI sync, the old table freed right
//!   away; `fixed-a` — GUP-fast rechecks the PMD too
//!   (`set_gup_pmd_recheck`), the old table freed after an RCU grace period
//!   (what 70cbc3cc78a9 relies on: the recheck alone does not keep the
//!   table); `fixed-b` — an IPI sync after the PMD clear, before the pin
//!   check ([`CollapsePolicy::ipi_sync`]), the table freed right away (no
//!   walker is left in it); `rcu-only` — the old table freed after an RCU
//!   grace period, nothing else: still a bug, RCU keeps the table, not the
//!   page.
//! - Forced schedule: `gup` holds at `gup_fast:after_pmd_read` (interrupts
//!   off, the old PMD read); `collapse`, which waited at
//!   `khugepaged:before_pmd_clear` (mmap_lock held) until then so that the
//!   walk reads the PMD before the clear, clears the PMD, flushes and passes
//!   the pin check (`khugepaged:after_isolate`); then `gup` walks the old
//!   table, pins and rechecks (`gup_fast:after_recheck`); only then
//!   `collapse` copies, clears the old PTEs and installs the block
//!   (`khugepaged:after_install`); only then `gup` returns from its walk
//!   (`gup_fast:after_walk`) and writes. `buggy`, `rcu-only`: the pin is on
//!   the old page, the write lands after the copy: `bug` every iteration.
//!   `fixed-a`: the PMD recheck sees the clear, GUP-fast backs off, slow
//!   GUP waits for `mmap_lock` and pins the new page: `clean` (no wait
//!   added: the fix makes the walker back off). `fixed-b`: `collapse` waits
//!   in the IPI sync for `gup`'s interrupts-off CPU (the fix's own wait,
//!   `CallIpi`): held by the fix; released, `gup` pins before the pin
//!   check, which sees the pin and aborts the collapse: `clean`. x86-64
//!   with flush IPIs: `collapse` waits for the flush IPI that `gup` holds
//!   back, before anything else: `impossible`, whatever the variant.
//! - Natural: random delays below 1 ms after the PMD read (interrupts off)
//!   widen the window: the walk must read the PMD before the clear and grab
//!   the page after the pin check, which comes tens to hundreds of
//!   microseconds later under TCG. Both roles spin until the other runs
//!   (`State::collapse_ready`, `State::gup_ready`). `gup` holds its pin
//!   until `collapse` returned (`State::collapse_done`, halted until
//!   `collapse` sends it an IPI), as a pin for DMA
//!   outlives the collapse: a pin taken before the pin check is always seen
//!   by it, and a write through a pin taken after it always comes after the
//!   copy.
//! - Overlap (the roles met inside the window): the walker read the PMD
//!   before the collapse cleared it — it read the old table (the collapse
//!   clears the PMD once and puts the same table back only after its pin
//!   check, which a pin of this walk came before; a collapse aborted for
//!   another reason does not count) — and went on to the old table after
//!   the clear (it left `gup_fast:after_pmd_read` after the collapse
//!   passed `pmdp_collapse_flush:after_clear`). Buggy, rcu-only:
//!   it may pin after the pin check; fixed-a: the PMD recheck sees the
//!   clear; fixed-b: the IPI sync waits for the walk; x86-64 flush IPIs:
//!   the flush waits for it.
//! - Detectors: data written through the pin missing from the mapping (the
//!   word at the pinned address, read after both roles through a locked
//!   walk, is not the iteration's mark); a pinned page that the mapping no
//!   longer uses (its mapcount was 0 while `gup` held the pin).
//! - The mm is built once per run (one PMD block, populated) and lent to
//!   every iteration ([`RunMm`]): a collapse leaves the block mapped by
//!   independent small pages on s390x (a fresh table); on x86-64 it leaves
//!   a PMD leaf, which teardown splits back into small pages
//!   ([`crate::mm::huge_memory::split_huge_pmd`]). The collapse takes its
//!   new block from khugepaged's preallocated one
//!   ([`collapse_huge_page_prealloc`]), which a collapse aborted by the pin
//!   check keeps and teardown refills after a collapse used it: an aborted
//!   collapse then allocates and frees no block. The mark differs per
//!   iteration.

use crate::{roles, schedule};
use crate::kprintln;
use crate::mm::arch::{Level, Mmu};
use crate::mm::frag::{self, FragPolicy};
use crate::mm::gup::{self, GupFlags, GupRecord};
use crate::mm::huge_memory::hpage_pmd_order;
use crate::mm::huge_memory::{self, pmd_trans_huge};
use crate::mm::khugepaged::{
    collapse_huge_page_prealloc, CollapseAbort, CollapsePolicy, CollapseResult,
};
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::mmu_gather::TableFree;
use crate::mm::page_alloc;
use crate::mm::tlbflush::FlushStrategy;
use crate::mm::{page, pgtable, PAGE_SHIFT, PAGE_SIZE};
use crate::race::detect::Finding;
use crate::race::point::{self, points};
use crate::race::user;
use crate::race::scenario::{
    Budget, Commit, CommitRole::Fix, Ctx, Row, RowInfo, RunMm, Variant,
};
use crate::race::waitfor::WaitClass;
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

roles!(COLLAPSE = "collapse", GUP = "gup");

/// The row.
pub struct CollapseVsGupFast;

/// A variant's knobs.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// GUP-fast rechecks the PMD after the grab (70cbc3cc78a9).
    pmd_recheck: bool,
    /// The collapse's IPI sync and how it frees the old table.
    policy: CollapsePolicy,
}

const fn config(pmd_recheck: bool, ipi_sync: bool, table_free: TableFree) -> Config {
    Config {
        pmd_recheck,
        policy: CollapsePolicy {
            ipi_sync,
            table_free,
        },
    }
}

/// How the roles' operations ended in an iteration.
#[derive(Default)]
struct Tally {
    collapsed: AtomicU64,
    aborted_for_pin: AtomicU64,
    aborted_other: AtomicU64,
    fast: AtomicU64,
    saw_empty: AtomicU64,
    backed_off: AtomicU64,
    other: AtomicU64,
    collapse_ns: AtomicU64,
    gup_ns: AtomicU64,
}

impl Tally {
    /// The counts, in the order of the `# collapse:` line.
    fn values(&self) -> [u64; 9] {
        [
            &self.collapsed,
            &self.aborted_for_pin,
            &self.aborted_other,
            &self.fast,
            &self.saw_empty,
            &self.backed_off,
            &self.other,
            &self.collapse_ns,
            &self.gup_ns,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// What the roles and the detector share in an iteration.
#[derive(Default)]
pub struct State {
    /// `gup` is running.
    gup_ready: AtomicBool,
    /// `collapse` is running.
    collapse_ready: AtomicBool,
    /// The mark `gup` writes (differs per iteration).
    mark: u64,
    /// The pfn `gup` pinned, plus one (0: none).
    pinned: AtomicU64,
    /// The pinned page had no mapping while pinned.
    unmapped_while_pinned: AtomicBool,
    /// `collapse_huge_page` returned.
    collapse_done: AtomicBool,
    /// The old PTE table the collapse cleared the PMD of (0: none).
    old_table: AtomicU64,
    /// What the `gup` role's walk read.
    rec: spin::Mutex<GupRecord>,
    /// khugepaged's preallocated block, lent by the run for the iteration.
    hpage: spin::Mutex<Option<&'static page::Page>>,
    /// How far each role got (printed when the iteration's world is
    /// dropped with a role short of its end, a hang's diagnosis: an
    /// iteration whose roles never returned gets no teardown).
    /// `collapse`: 1 collapsing, 2 returned, 3 in the RCU barrier, 4 done;
    /// `gup`: 1 walking, 2 waiting for the collapse, 3 unpinned, 4 done.
    stage: [AtomicU64; 2],
    /// How the roles' operations ended.
    tally: Tally,
}

impl Drop for State {
    fn drop(&mut self) {
        let stage = self.stage.each_ref().map(|s| s.load(Ordering::Relaxed));
        if stage.iter().any(|&s| s != 0 && s != 4) {
            kprintln!(
                "    # collapse: the last iteration ended with collapse at stage {} and gup at stage {} of 4",
                stage[COLLAPSE],
                stage[GUP]
            );
        }
    }
}

/// What a run keeps.
pub struct Run<A: Mmu> {
    /// The run's mm: one populated PMD block.
    mm: RunMm<A>,
    /// khugepaged's preallocated block: full between iterations (refilled
    /// by `teardown` after a collapse used it), so that every iteration
    /// starts and ends with the same free frames, and a collapse the pin
    /// check aborts neither allocates nor frees a block.
    hpage: Option<&'static page::Page>,
    /// The iterations' [`Tally`], summed.
    tally: [u64; 9],
}

impl<A: Mmu> Default for Run<A> {
    fn default() -> Self {
        Run {
            mm: RunMm::default(),
            hpage: None,
            tally: [0; 9],
        }
    }
}

impl<A: Mmu> Run<A> {
    fn refill_hpage(&mut self) {
        if self.hpage.is_none() {
            self.hpage = page_alloc::alloc_pages(hpage_pmd_order::<A>());
        }
    }
}

/// The block: the first PMD block of the task range.
fn base<A: Mmu>() -> u64 {
    A::TASK_BASE.next_multiple_of(A::PMD_SIZE)
}

impl<A: Mmu> Row<A> for CollapseVsGupFast {
    const INFO: RowInfo = RowInfo {
        catalogue: Some(5),
        seed: "seed 003: \"mm: khugepaged: fix potential page state corruption\" (March 2020)",
        commits: &[
            Commit::new("70cbc3cc78a9", Some("mm: gup: fix the fast GUP race against THP collapse"), None, Fix),
            Commit::new("2ba99c5e0881", Some("mm/khugepaged: fix GUP-fast interaction by sending IPI"), None, Fix),
        ],
        // x86-64 IPI and NMI shootdown, s390x IPTE/IDTE.
        flush: &[FlushStrategy::Ipi, FlushStrategy::Nmi, FlushStrategy::Ipte],
        delay_points: &[&points::GUP_FAST_AFTER_PMD_READ],
        trace_points: &[&points::PMDP_COLLAPSE_AFTER_CLEAR],
        max_delay_ns: 1_000_000,
        budget: Budget {
            // Not the catalogue's 10 000: a collapse that is not aborted
            // copies a 2 MiB block and frees its 512 small pages, 10-30 ms
            // under TCG, and with x86-64 flush IPIs 10-50 % of iterations
            // collapse (45-160 iterations/s). The long runs belong to
            // `cargo xtask soak`.
            natural_iterations: 400,
            ..Budget::CATALOGUE
        },
        schedule: schedule![
            GUP at points::GUP_FAST_AFTER_PMD_READ;
            COLLAPSE at points::COLLAPSE_BEFORE_PMD_CLEAR, points::COLLAPSE_AFTER_ISOLATE;
            GUP leave points::GUP_FAST_AFTER_PMD_READ;
            GUP at points::GUP_FAST_AFTER_RECHECK;
            COLLAPSE leave points::COLLAPSE_AFTER_ISOLATE;
            COLLAPSE at points::COLLAPSE_AFTER_INSTALL;
            GUP at points::GUP_FAST_AFTER_WALK;
        ],
        ..RowInfo::new("collapse-vs-gup-fast", "GUP-fast pins a small page of the old table after THP collapse checked for pins", ROLES)
    };
    type Config = Config;
    /// Each runs under every flush strategy of the row.
    const VARIANTS: &'static [Variant<Config>] = {
        use TableFree::{Immediate, Rcu};
        &[
            Variant::new("buggy", "PTE recheck only", "Linux before 70cbc3cc78a9 and 2ba99c5e0881: GUP-fast rechecks only the PTE", &[], config(false, false, Immediate)),
            Variant::new("fixed-a", "GUP-fast rechecks the PMD (70cbc3cc78a9), table freed after RCU", "70cbc3cc78a9: GUP-fast rechecks the PMD too (the old table freed after RCU)", &[], config(true, false, Rcu)),
            Variant::new("fixed-b", "IPI sync after the PMD clear (2ba99c5e0881)", "2ba99c5e0881: an IPI sync after the PMD clear, before the pin check", &[WaitClass::CallIpi], config(false, true, Immediate)),
            Variant::new("rcu-only", "old table freed after an RCU grace period, nothing else", "no Linux kernel: MMU_GATHER_RCU_TABLE_FREE alone, which keeps the old table but not the page", &[], config(false, false, Rcu)),
        ]
    };
    type State = State;
    type Run = Run<A>;

    fn prepare(v: &Variant<Config>) -> Result<Run<A>, &'static str> {
        gup::set_gup_pmd_recheck(v.config.pmd_recheck);
        // A frame per PTE table: a table allocated and freed in an iteration
        // (collapse's new one, a split's) gives its frame back, so every
        // iteration ends with the free frames it began with.
        frag::set_policy(FragPolicy::OnePerFrame);
        let mut run = Run::default();
        run.refill_hpage();
        run.mm = RunMm::build(|mm| {
            memory::mmap_anon(mm, base::<A>(), A::PMD_SIZE, VmFlags::RW, true)
        });
        Ok(run)
    }

    fn run_mm(run: &mut Run<A>) -> Option<&mut RunMm<A>> {
        Some(&mut run.mm)
    }

    fn finish(mut run: Run<A>) {
        if let Some(h) = run.hpage.take() {
            page_alloc::__free_pages(h, hpage_pmd_order::<A>());
        }
        let t = run.tally;
        if t.iter().any(|&n| n != 0) {
            kprintln!(
                "    # collapse: collapsed {}, aborted for the pin {}, aborted otherwise {}; gup walks: pinned on the fast path {}, saw the collapse: empty PMD/PTE {} back-off {}; other {}; mean collapse {} us, mean GUP {} us",
                t[0],
                t[1],
                t[2],
                t[3],
                t[4],
                t[5],
                t[6],
                t[7] / 1000 / (t[0] + t[1] + t[2]).max(1),
                t[8] / 1000 / (t[3] + t[4] + t[5] + t[6]).max(1),
            );
        }
    }

    fn setup(run: &mut Run<A>, ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        ctx.addr = base::<A>();
        ctx.state.mark = 0x636f_6c6c_0000_0000 | (ctx.iteration + 1);
        *ctx.state.hpage.get_mut() = run.hpage.take();
        Ok(())
    }

    fn teardown(run: &mut Run<A>, ctx: &mut Ctx<A, Self>) {
        for (sum, n) in run.tally.iter_mut().zip(ctx.state.tally.values()) {
            *sum += n;
        }
        run.hpage = ctx.state.hpage.get_mut().take();
        run.refill_hpage();
        // A collapse into a PMD leaf (x86-64): back to small pages for the
        // next iteration.
        let split = ctx.mm.as_deref().map(|mm| {
            let _vmas = mm.mmap_lock.write();
            huge_memory::split_huge_pmds_in(mm, ctx.addr, ctx.addr + A::PMD_SIZE)
        });
        if let Some(Err(_)) = split {
            // No memory for the table: the next iteration finds no mm.
            if let Some(mm) = ctx.mm.take() {
                memory::exit_mmap(*mm);
            }
        }
    }

    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool {
        if role == COLLAPSE {
            collapse::<A>(ctx)
        } else {
            gup_pin::<A>(ctx)
        }
    }

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        let st = &ctx.state;
        let old = st.old_table.load(Ordering::Relaxed);
        let read_old = old != 0
            && st.tally.aborted_other.load(Ordering::Relaxed) == 0
            && st.rec.lock().reads().iter().find(|r| r.level == Level::Pmd).is_some_and(|r| {
                !A::entry_none(Level::Pmd, r.value)
                    && A::entry_is_table(Level::Pmd, r.value)
                    && A::entry_table(Level::Pmd, r.value) == old
            });
        let walk = ctx.first_pass(GUP, &points::GUP_FAST_AFTER_PMD_READ);
        let cleared = ctx.first_pass(COLLAPSE, &points::PMDP_COLLAPSE_AFTER_CLEAR);
        read_old && matches!((walk, cleared), (Some(w), Some(c)) if c.before(&w))
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        let st = &ctx.state;
        let mm = ctx.mm.as_deref()?;
        let pinned = st.pinned.load(Ordering::Relaxed).checked_sub(1)?;
        let mark = st.mark;
        let unmapped = st.unmapped_while_pinned.load(Ordering::Relaxed);
        let (mapped, v) = mapped_word(mm, ctx.addr).unwrap_or((0, 0));
        let lost = v != mark;
        if !lost && !unmapped {
            return None;
        }
        let mut what = Vec::new();
        if lost {
            what.push(format!(
                "data written through a GUP pin missing from the mapping: {mark:#x} written to pfn {pinned:#x}, the mapping's pfn {mapped:#x} holds {v:#x}"
            ));
        }
        if unmapped {
            what.push(format!(
                "a pinned page the mapping no longer uses: pfn {pinned:#x} had no mapping while pinned (the mapping uses pfn {mapped:#x})"
            ));
        }
        Some(Finding {
            invariant: what.join("; "),
            pfn: Some(pinned),
            vaddr: Some(ctx.addr),
            cpu: point::cpu_of(GUP),
        })
    }

}

/// The `collapse` role: collapses the block; completed when it collapsed
/// it or the pin check saw `gup`'s pin.
fn collapse<A: Mmu>(ctx: &Ctx<A, CollapseVsGupFast>) -> bool {
    let st = &ctx.state;
    let mm = ctx.mm();
    st.collapse_ready.store(true, Ordering::Release);
    point::wait_until::<A>(|| st.gup_ready.load(Ordering::Acquire));
    let policy = ctx.config().policy;
    st.stage[COLLAPSE].store(1, Ordering::Relaxed);
    let t0 = A::clock_ns();
    let mut hpage = st.hpage.lock().take();
    let rep = collapse_huge_page_prealloc(mm, ctx.addr, &policy, &mut hpage);
    st.old_table.store(rep.old_table, Ordering::Relaxed);
    *st.hpage.lock() = hpage;
    st.stage[COLLAPSE].store(2, Ordering::Relaxed);
    st.collapse_done.store(true, Ordering::Release);
    if let Some(cpu) = point::cpu_of(GUP) {
        A::send_ipi(cpu);
    }
    if policy.table_free == TableFree::Rcu {
        // The old table is freed by an RCU callback queued here: wait
        // for it, so that it is free before the state check.
        st.stage[COLLAPSE].store(3, Ordering::Relaxed);
        crate::rcu::rcu_barrier_this_cpu_expedited::<A>();
    }
    st.stage[COLLAPSE].store(4, Ordering::Relaxed);
    st.tally
        .collapse_ns
        .fetch_add(A::clock_ns() - t0, Ordering::Relaxed);
    let (counter, ok) = match rep.result {
        CollapseResult::Collapsed => (&st.tally.collapsed, true),
        CollapseResult::Aborted(CollapseAbort::Referenced(..)) => {
            (&st.tally.aborted_for_pin, true)
        }
        CollapseResult::Aborted(_) => (&st.tally.aborted_other, false),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    ok
}

/// The `gup` role: pins page 0 of the block, writes the mark through the
/// pin once the collapse returned, and unpins; completed when its
/// lockless walk decided on the fast path.
fn gup_pin<A: Mmu>(ctx: &Ctx<A, CollapseVsGupFast>) -> bool {
    let st = &ctx.state;
    let flags = GupFlags::FOLL_PIN | GupFlags::FOLL_WRITE;
    let cpu = A::smp_processor_id();
    let mut rec = st.rec.lock();
    let mut pages = Vec::with_capacity(1);
    point::wait_until::<A>(|| st.collapse_ready.load(Ordering::Acquire));
    st.gup_ready.store(true, Ordering::Release);
    st.stage[GUP].store(1, Ordering::Relaxed);
    let before = gup::gup_stats(cpu);
    let t0 = A::clock_ns();
    let got = gup::get_user_pages_fast_traced::<A>(ctx.addr, 1, flags, &mut pages, Some(&mut rec));
    st.tally
        .gup_ns
        .fetch_add(A::clock_ns() - t0, Ordering::Relaxed);
    let stats = gup::gup_stats(cpu).since(before);
    let Some(&p) = pages.first().filter(|_| got == 1) else {
        gup::release_user_pages(&pages, flags);
        st.tally.other.fetch_add(1, Ordering::Relaxed);
        st.stage[GUP].store(4, Ordering::Relaxed);
        return false;
    };
    st.stage[GUP].store(2, Ordering::Relaxed);
    // Hold the pin until the collapse is over, as a pin for DMA does
    // (halted, not spinning: a spinning vCPU slows every other one).
    user::sleep_until::<A>(|| st.collapse_done.load(Ordering::Acquire));
    // The write through the pin: the kernel mapping of the page, as a
    // driver's DMA would reach it.
    let off = (ctx.addr & (PAGE_SIZE - 1)) as usize;
    // SAFETY: `p` is pinned (it cannot be freed until the unpin below) and
    // RAM is mapped 1:1; `off` is 8-byte aligned within the page.
    unsafe { core::ptr::write_volatile(page::page_address(p).add(off).cast::<u64>(), st.mark) };
    if page::page_mapcount(p) <= 0 {
        st.unmapped_while_pinned.store(true, Ordering::Relaxed);
    }
    st.pinned.store(page::page_to_pfn(p) + 1, Ordering::Relaxed);
    gup::release_user_pages(&pages, flags);
    // The walk stopped at an entry it read empty: the PMD the collapse
    // cleared, or a PTE of the old table it cleared after the copy.
    let saw_empty = rec.reads().last().is_some_and(|r| {
        matches!(r.level, Level::Pmd | Level::Pte) && A::entry_none(r.level, r.value)
    });
    let counter = if rec.freed_table_read().is_some() {
        &st.tally.other
    } else if stats.fast_pages == 1 {
        &st.tally.fast
    } else if stats.backoffs > 0 {
        &st.tally.backed_off
    } else if saw_empty {
        &st.tally.saw_empty
    } else {
        &st.tally.other
    };
    counter.fetch_add(1, Ordering::Relaxed);
    st.stage[GUP].store(4, Ordering::Relaxed);
    !core::ptr::eq(counter, &st.tally.other)
}

/// The frame that maps `addr` in `mm` now and the word at `addr` in it,
/// read under `mmap_lock` and the page-table locks (a locked walk).
fn mapped_word<A: Mmu>(mm: &Mm<A>, addr: u64) -> Option<(u64, u64)> {
    let _vmas = mm.mmap_lock.read();
    let pmdp = pgtable::follow_pmd(mm, addr)?;
    let pfn = {
        let _pl = mm.page_table_lock.lock();
        // SAFETY: a live PMD entry of `mm`; mmap_lock and page_table_lock
        // held.
        let pmd = unsafe { pgtable::read_entry(pmdp) };
        if pmd_trans_huge::<A>(pmd) {
            Some(A::pmd_pfn(pmd) + ((addr & (A::PMD_SIZE - 1)) >> PAGE_SHIFT))
        } else if A::entry_none(Level::Pmd, pmd) || !A::entry_is_table(Level::Pmd, pmd) {
            return None;
        } else {
            None
        }
    };
    let pfn = match pfn {
        Some(p) => p,
        None => {
            let ptep = pgtable::follow_pte(mm, addr)?;
            let _ptl = memory::pte_lockptr(ptep).lock();
            // SAFETY: a live PTE of `mm`; mmap_lock and its PTL held.
            let pte = unsafe { pgtable::read_entry(ptep) };
            if !A::pte_present(pte) {
                return None;
            }
            A::pte_pfn(pte)
        }
    };
    let off = (addr & (PAGE_SIZE - 1)) as usize;
    // SAFETY: a mapped frame of `mm`, kept by mmap_lock; RAM is mapped 1:1.
    let v = unsafe {
        core::ptr::read_volatile(page::phys_to_virt(pfn << PAGE_SHIFT).add(off).cast::<u64>())
    };
    Some((pfn, v))
}
