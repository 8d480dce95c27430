//! `gup-fast-folding` (catalogue row 2, seed 000's thread): GUP-fast over a
//! dynamically folded page-table level steps past its stack copy of the
//! entry.
//!
//! Before d3f7b1bb2040 ("mm/gup: fix gup_fast with dynamic page table
//! folding"), `gup_pud_range` applied `pud_offset` to a *copy* of the p4d
//! entry (`p4d_t p4d = READ_ONCE(*p4dp)`, `pudp = pud_offset(&p4d, addr)`).
//! In a 3-level s390 address space (a region-third table on top; pgd and p4d
//! folded onto it) `pud_offset` of the folded level returns its argument,
//! the address of the copy, and a range crossing a 2 GiB region-third
//! boundary goes on with `pudp++`: the next "pud entry" is whatever lies
//! after the copy on the stack. The fix passes the live entry pointer down
//! (`pud_offset_lockless(p4dp, p4d, addr)`), so `pudp++` is
//! `pud_offset(p4d, next)`, the next live region-third entry.
//!
//! The walk is [`gup`]'s: [`GupWalk::StackCopy`] keeps the copies in a
//! `#[repr(C)]` walk-state array (element 0 the level's own copy, then the
//! copies left for the levels above), so the step past the copy stays in
//! bounds and reads a stale upper entry — defined behaviour, deterministic,
//! and still the wrong entry (see the module docs of [`gup`]).
//!
//! - One role, `gup` (CPU 1; the controller is CPU 0): a single-CPU,
//!   deterministic bug. The role runs GUP-fast (FOLL_GET, recorded with a
//!   [`GupRecord`]) over 4 pages `[B - 2 pages, B + 2 pages)` around
//!   `B = TASK_BASE + 2 GiB`, then slow GUP (a locked walk: `mmap_lock`
//!   and the PTL) over the same range, records both page lists and releases
//!   what it got. The first two pages of `TASK_BASE` are mapped too, so the
//!   stale entry leads somewhere: to them.
//! - Completion: the fast walk got all 4 pages without falling back to slow
//!   GUP (the buggy walk does too — with the wrong pages for the upper half).
//! - Variants: `buggy` (`GupWalk::StackCopy`), `fixed` (`Lockless`), the
//!   knob `prepare` sets (`set_gup_walk`). On an architecture whose new mm does not fold the pud level per mm
//!   (x86-64: 4 levels, p4d folded statically, the pud level never), the
//!   row does not apply: `skip`, reason printed.
//! - Natural and forced: there is nothing to interleave, so the two modes
//!   are the same run. The forced schedule is empty (no CPU is held
//!   anywhere) and the natural mode arms no delay: a buggy iteration hits
//!   because the walk is wrong, not because of timing; `bug` in forced mode
//!   still means "in every iteration, from iteration 0", and `clean` means
//!   every iteration's walk got every page on the fast path and read only
//!   page-table frames and its own copies. `gup_fast:after_pmd_read` is
//!   traced, so the race report lists the PMD entries the walk read, with
//!   their virtual addresses.
//! - Overlap (the walk met the folded level's boundary): the walk read a
//!   pud entry on each side of `B` — the step of the folded level: past
//!   its copy in the buggy walk, to the next live region-third entry in the
//!   fixed one. Every walk that gets that far, so every iteration of both
//!   variants.
//! - Detector: the walk's recorder — an entry read outside every page-table
//!   frame of the frame database (`PG_pgtable`) that is not the level's own
//!   copy ([`GupRecord::stray_reads`]); and GUP-fast pages that differ from
//!   the locked walk's.
//! - The mm is built once per run by `prepare` (a new mm: 3 levels on
//!   s390x; nothing is mapped above 2 GiB + 2 pages, so it stays so), kept
//!   as the row's `Run` ([`RunMm`]) and lent to every iteration; the pages
//!   stay mapped, each iteration's references are released by the role.
//!   What the role saw (the walk's record, both page lists) is the
//!   iteration's [`State`].

use crate::roles;
use crate::mm::arch::{Level, Mmu};
use crate::mm::gup::{self, GupFlags, GupRecord, GupWalk};
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::{page, PAGE_SIZE};
use crate::race::detect::Finding;
use crate::race::point::{self, points};
use crate::race::scenario::{Budget, Commit, CommitRole, Ctx, Row, RowInfo, RunMm, Variant};
use alloc::{format, string::String, vec::Vec};

roles!(GUP = "gup");

/// Pages below and above the boundary.
const HALF: u64 = 2;
/// Pages got.
const NR_PAGES: usize = 2 * HALF as usize;

/// The row.
pub struct GupFastFolding;

/// What the role saw in an iteration.
#[derive(Default)]
pub struct State {
    /// The GUP-fast walk's record.
    rec: spin::Mutex<GupRecord>,
    /// Frames GUP-fast returned, and the locked walk's.
    pfns: spin::Mutex<(Vec<u64>, Vec<u64>)>,
}

impl<A: Mmu> Row<A> for GupFastFolding {
    const INFO: RowInfo = RowInfo {
        catalogue: Some(2),
        seed: "seed 000's thread: \"BUG: Bad page state in process dirtyc0w_child\" on s390 (Sept 2020)",
        commits: &[Commit::new(
            "d3f7b1bb2040",
            Some("mm/gup: fix gup_fast with dynamic page table folding"),
            None,
            CommitRole::Fix,
        )],
        trace_points: &[&points::GUP_FAST_AFTER_PMD_READ],
        max_delay_ns: 0,
        budget: Budget {
            // Single CPU: 10 000 iterations take about 1.3 s.
            natural_time_ns: 60_000_000_000,
            ..Budget::CATALOGUE
        },
        ..RowInfo::new(
            "gup-fast-folding",
            "GUP-fast over a folded pud level steps past its copy of the entry at a 2 GiB boundary",
            ROLES,
        )
    };
    /// The GUP-fast walk.
    type Config = GupWalk;
    const VARIANTS: &'static [Variant<GupWalk>] = &[
        Variant::new(
            "buggy",
            "pud_offset applied to a stack copy of the folded entry (before d3f7b1bb2040)",
            "Linux before d3f7b1bb2040: gup_pud_range applies pud_offset to a stack copy of the p4d entry (s390, 3-level address space)",
            &[],
            GupWalk::StackCopy,
        ),
        Variant::new(
            "fixed",
            "pXd_offset_lockless on the live entry pointer (d3f7b1bb2040)",
            "d3f7b1bb2040: pXd_offset_lockless on the live entry pointer",
            &[],
            GupWalk::Lockless,
        ),
    ];
    type State = State;
    /// The run's mm, with the pages mapped.
    type Run = RunMm<A>;

    fn prepare(v: &Variant<GupWalk>) -> Result<RunMm<A>, &'static str> {
        match folds_pud_per_mm::<A>() {
            None => return Err("no memory for an mm"),
            Some(false) => {
                return Err(
                    "no per-mm folding: a new mm's top table is not a pud table, the pud level is never folded",
                )
            }
            Some(true) => {}
        }
        gup::set_gup_walk(v.config);
        let start = boundary::<A>() - HALF * PAGE_SIZE;
        let len = NR_PAGES as u64 * PAGE_SIZE;
        Ok(RunMm::build(|mm| {
            memory::mmap_anon(mm, A::TASK_BASE, HALF * PAGE_SIZE, VmFlags::RW, true)
                .and_then(|()| memory::mmap_anon(mm, start, len, VmFlags::RW, true))
        }))
    }

    fn run_mm(run: &mut RunMm<A>) -> Option<&mut RunMm<A>> {
        Some(run)
    }

    fn setup(_: &mut RunMm<A>, ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        ctx.addr = boundary::<A>() - HALF * PAGE_SIZE;
        Ok(())
    }

    fn role(ctx: &Ctx<A, Self>, _role: usize) -> bool {
        let mm = ctx.mm();
        let st = &ctx.state;
        let cpu = A::smp_processor_id();
        let mut rec = st.rec.lock();
        let mut fast = Vec::with_capacity(NR_PAGES);
        let before = gup::gup_stats(cpu);
        gup::get_user_pages_fast_traced::<A>(
            ctx.addr,
            NR_PAGES,
            GupFlags::FOLL_GET,
            &mut fast,
            Some(&mut rec),
        );
        let stats = gup::gup_stats(cpu).since(before);
        let mut locked = Vec::with_capacity(NR_PAGES);
        let slow = gup::get_user_pages(mm, ctx.addr, NR_PAGES, GupFlags::FOLL_GET, &mut locked);
        let pfn = |p: &&'static page::Page| page::page_to_pfn(p);
        *st.pfns.lock() = (
            fast.iter().map(pfn).collect(),
            locked.iter().map(pfn).collect(),
        );
        gup::release_user_pages(&fast, GupFlags::FOLL_GET);
        gup::release_user_pages(&locked, GupFlags::FOLL_GET);
        stats.fast_pages == NR_PAGES as u64 && stats.fallbacks == 0 && slow == Ok(NR_PAGES)
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        let st = &ctx.state;
        let rec = st.rec.lock();
        let (fast, locked) = &*st.pfns.lock();
        let stray = rec.stray_reads().next().copied();
        let differs = fast != locked;
        if stray.is_none() && !differs {
            return None;
        }
        let mut what = Vec::new();
        if let Some(r) = stray {
            what.push(format!(
                "GUP-fast read a {} entry at {:#x}, outside every page-table frame and not the walk's own copy{}: {:#x}",
                level_name(r.level),
                r.addr,
                rec.own_copy(r.level)
                    .map_or(String::new(), |c| format!(" (at {c:#x})")),
                r.value
            ));
        }
        if differs {
            what.push(format!(
                "GUP-fast pages [{}] differ from a locked walk's [{}] for [{:#x}, {:#x})",
                hex_list(fast),
                hex_list(locked),
                ctx.addr,
                ctx.addr + NR_PAGES as u64 * PAGE_SIZE
            ));
        }
        // The first page that went wrong, else the first page above the
        // boundary.
        let wrong = fast
            .iter()
            .zip(locked)
            .position(|(f, l)| f != l)
            .unwrap_or(HALF as usize);
        Some(Finding {
            invariant: what.join("; "),
            pfn: fast.get(wrong).copied(),
            vaddr: Some(ctx.addr + wrong as u64 * PAGE_SIZE),
            cpu: point::cpu_of(GUP),
        })
    }

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        let rec = ctx.state.rec.lock();
        rec.reads().iter().filter(|r| r.level == Level::Pud).count() >= 2
    }

    // Single-CPU and deterministic: nothing to hold.
}

/// `TASK_BASE + 2 GiB`: a region-third boundary on s390x.
fn boundary<A: Mmu>() -> u64 {
    A::TASK_BASE + (2u64 << 30).next_multiple_of(A::PUD_SIZE)
}

/// Whether a new mm of this arch folds the pud level onto its top table
/// and a pud step can leave the folded entry (what the bug needs).
fn folds_pud_per_mm<A: Mmu>() -> Option<bool> {
    let mm = Mm::<A>::new()?;
    let limit = A::context_limit(&mm.context);
    memory::exit_mmap(mm);
    Some(limit <= A::P4D_SIZE && A::PUD_SIZE < A::P4D_SIZE)
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Pgd => "pgd",
        Level::P4d => "p4d",
        Level::Pud => "pud",
        Level::Pmd => "pmd",
        Level::Pte => "pte",
    }
}

fn hex_list(pfns: &[u64]) -> String {
    let v: Vec<String> = pfns.iter().map(|p| format!("{p:#x}")).collect();
    v.join(", ")
}

/// The row's expected shape, checked on the host.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::emul::{Emul2k, Emul4k};

    #[test]
    fn schedule_is_empty_and_boundary_is_2g() {
        type R = GupFastFolding;
        assert!(<R as Row<Emul4k>>::INFO.schedule.is_empty());
        assert_eq!(<R as Row<Emul4k>>::INFO.roles.len(), 1);
        assert_eq!(
            boundary::<Emul2k>() - Emul2k::TASK_BASE,
            (2u64 << 30).next_multiple_of(Emul2k::PUD_SIZE)
        );
    }
}
