//! Race scenarios: the machinery that makes the catalogue's races happen on
//! purpose (forced mode) or by chance (natural mode), decides the outcome
//! and reports what each CPU did.
//!
//! # Pieces
//! - [`point`]: race points in the mm code ([`point::race_point`]), armed
//!   for natural-mode delays or for a forced schedule; unarmed they cost one
//!   load and a branch.
//! - [`trace`]: per-CPU rings of time-stamped events (points, schedule
//!   steps, flushes, IPIs, NMIs, faults), merged in time order for reports.
//! - [`waitfor`]: who waits for whom, read from live state (LAPIC IRR or
//!   SIGP SENSE, PTL owners, RCU), and the cycle finder behind
//!   `impossible`.
//! - [`detect`]: detectors (bad page state at free, poisoned frames and
//!   descriptors, refcount underflow, page tables freed while linked).
//! - [`scenario`]: the [`scenario::Row`] trait, the registry's
//!   [`scenario::Scenario`], the runner and its outcomes.
//! - [`rows`]: the rows, one file each, and the registry
//!   ([`rows::all`]).
//!
//! # Writing a row
//! A row is a type implementing [`scenario::Row`] in its own file under
//! `race/rows/`, listed by one line in the `registry!` of [`rows`]
//! (`docs/new-row.md` walks through [`rows::demo`], a complete small row).
//! It has:
//!
//! - **constants** (`INFO`, a [`scenario::RowInfo`]): its name, the race in
//!   one line, its roles (`roles!(FAULT = "fault", ZAP = "zap")` numbers
//!   them and names them in `ROLES`), where it comes from
//!   (`catalogue` number, `None` for a demonstration row; `seed`, the
//!   mailing-list thread or catalogue entry; `commits`, the Linux commits
//!   the catalogue and the row's docs name, the subject only where one of
//!   them quotes it), the flush axis, the forced schedule, delay and trace
//!   points, the budget.
//!   `list` on the command line prints it ([`crate::list`],
//!   `cargo xtask list`).
//! - **roles**: role `i` runs on CPU `i + 1` (CPU 0 is the controller: it
//!   sets up, watches for hangs and cycles, runs the detectors and tears
//!   down). A machine with fewer than `roles.len() + 1` CPUs reports
//!   `skip`. Each iteration the framework enters the iteration's mm on
//!   every role CPU (`use_mm`, so the CPU is in the mm's cpumask and its
//!   loads and stores go through the MMU), calls `role(ctx, i)` in task
//!   context with interrupts on, and leaves the mm. `role` returns whether
//!   it *completed its operation* (GUP-fast pinned without falling back,
//!   the zap freed the tables, ...): a run in which some role did not
//!   complete in some iteration and no detector fired is `vacuous`, a
//!   failure, never `clean`.
//! - **variants** (`VARIANTS`): the buggy kernel and each fix, named by the
//!   policy under test only, each with its knobs (`Config`, read by the
//!   roles as `ctx.config()`); `models` names the Linux commit or kernel it
//!   corresponds to, or says in words what it stands for. `prepare(v)`
//!   sets the mm knobs of that kernel (freeing policies, the `do_wp_page`
//!   unlock order, ...; see [`crate::mm::knobs`]: the runner saves them
//!   before and restores them after the run) and builds what the run keeps
//!   (`Run`), or returns `Err(reason)` when the row does not exist on the
//!   architecture (`skip`, reason printed). `finish(run)` ends the run.
//! - **flush axis**: `flush: &[FlushStrategy::Ipi, FlushStrategy::Nmi,
//!   FlushStrategy::Ipte]` for a row whose race depends on how a TLB flush
//!   reaches other CPUs: the runner runs every variant under each of those
//!   the architecture implements, setting the strategy before `prepare`
//!   (which may read it, e.g. to free pages as that architecture does) and
//!   restoring the default after the run; each is the case
//!   `row:variant@flush:mode`. `&[]`: the architecture's default only,
//!   `row:variant:mode`.
//! - **setup / teardown**: `setup(run, ctx)` builds the iteration's world
//!   (mappings, pages; frames to watch in `ctx.pfns`); what the roles and
//!   detectors share is the row's `State`, fresh each iteration in
//!   `ctx.state`. An address space kept for the run is a
//!   [`scenario::RunMm`] in the `Run`, which the runner lends to `ctx.mm`
//!   before `setup` and takes back after `teardown` when `run_mm` returns
//!   it; an mm `setup` builds itself in `ctx.mm` is torn down after
//!   `teardown`. A role never enters or leaves the mm itself.
//!   `teardown(run, ctx)` must also undo what a bug left behind (e.g. free
//!   a page the free checks leaked), so that the state check — every frame
//!   back, no PTL held, no CPU waiting, no RCU callback pending — passes
//!   after each iteration.
//! - **detectors**: `detect(ctx)` runs after the roles finished, before
//!   teardown; return the first [`detect::Finding`]. The runner always checks
//!   [`detect::bad_page_since`] first. A finding makes the iteration a *hit*
//!   and the outcome `bug`; the first hit prints a race report.
//! - **schedule** (forced mode): `INFO.schedule` lists the steps (the
//!   [`schedule!`](crate::schedule) macro writes them), the
//!   same for every variant (they differ in policy only), e.g. for
//!   "B clears the PTE while A holds the PMD it read":
//!   ```text
//!   schedule![
//!       A at GUP_FAST_AFTER_PMD_READ;                // A is there first
//!       B at ZAP_BEFORE_PTL, ZAP_AFTER_PTE_CLEAR;    // then B clears the PTE
//!       A leave GUP_FAST_AFTER_PMD_READ;             // only now A goes on
//!   ]
//!   ```
//!   Steps are in the global order they must happen; each role takes its
//!   steps in its program order (see [`point`]). A CPU holding at a point
//!   keeps its interrupt state, so with interrupts off it holds back IPIs:
//!   a schedule that needs such an IPI taken cannot complete, the prover
//!   finds the cycle and the outcome is `impossible` — unless every wait in
//!   the cycle besides the schedule's own holds is one the variant's fix
//!   adds (`Variant::fix_waits`: its IPI sync, its RCU grace period, the
//!   PTL it keeps held). Then the fix is what holds the interleaving back:
//!   the runner releases the schedule, the iteration runs to its end (and
//!   is `clean` if nothing fires), and the report counts it as
//!   `held_by_fix` with the cycle printed. A point placed in mm code is
//!   declared in [`point::points`]; a point only the row's own code places
//!   is a `static` [`RacePoint`] in the row's file. Either is placed with
//!   [`point::race_point`]`::<A>(&NAME, addr)`.
//! - **waits**: a new place where a CPU spins for another CPU (an IPI
//!   acknowledgement, a lock) publishes a [`waitfor::begin`] / [`waitfor::end`]
//!   record, or the prover cannot see the edge and reports `hang` where a
//!   cycle exists.
//! - **natural mode**: `delay_points` are armed with random delays below
//!   `max_delay_ns` on role CPUs; every point of the schedule and
//!   `trace_points` is traced.
//! - **budget**: [`scenario::Budget`]: iterations in forced and natural
//!   mode (`iterations=` overrides the natural one), a time limit for a
//!   natural run, and the per-iteration limit after which a run without a
//!   wait-for cycle is a `hang`.
//!
//! Then add the row's cells to the expected table (`xtask/src/expected.rs`):
//! one entry per variant and place (both architectures, one, or one flush
//! strategy), with its forced and natural outcome.
//!
//! # Outcomes
//! `bug` (a detector fired), `clean` (no detector fired and every role
//! completed every iteration), `impossible` (forced: a wait-for cycle read
//! from live state), `skip` (the row or variant does not apply; reason
//! printed), and the failures `hang` (an iteration over its limit without a
//! cycle) and `vacuous` (some role did not complete and nothing fired).

pub mod detect;
pub mod explore;
pub mod point;
pub mod rows;
pub mod scenario;
pub(crate) mod selftest;
pub mod trace;
pub mod user;
pub mod waitfor;

pub use point::{race_point, RacePoint, Step};

use crate::Arch;

/// Hooks for code that has no `A: Arch` (the PTL, the trace rings).
struct Hooks {
    cpu: fn() -> usize,
    clock: fn() -> u64,
    irqs_disabled: fn() -> bool,
    hit: fn(&'static RacePoint, u64),
}

static HOOKS: spin::Once<Hooks> = spin::Once::new();

/// Registers the arch's CPU number and clock. Called once at boot.
pub fn init<A: Arch>() {
    HOOKS.call_once(|| Hooks {
        cpu: A::smp_processor_id,
        clock: A::clock_ns,
        irqs_disabled: A::irqs_disabled,
        hit: point::hit_dyn::<A>,
    });
}

/// The calling CPU's number (0 before [`init`]).
pub(crate) fn this_cpu() -> usize {
    HOOKS.get().map_or(0, |h| (h.cpu)())
}

/// [`Arch::clock_ns`] (0 before [`init`]).
pub(crate) fn clock_ns() -> u64 {
    HOOKS.get().map_or(0, |h| (h.clock)())
}

/// An armed point reached by code without an `A: Arch`
/// ([`point::sync_point`]); nothing before [`init`].
pub(crate) fn hit_point(p: &'static RacePoint, addr: u64) {
    if let Some(h) = HOOKS.get() {
        (h.hit)(p, addr);
    }
}

/// [`Arch::irqs_disabled`] (false before [`init`]).
pub(crate) fn irqs_disabled() -> bool {
    HOOKS.get().is_some_and(|h| (h.irqs_disabled)())
}
