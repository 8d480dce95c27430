//! Scenarios, their registry and the runner (see the module docs of
//! [`crate::race`] for how a row is written).
//!
//! The runner runs on CPU 0, the controller; role `i` runs on CPU `i + 1` in
//! a loop started from that CPU's idle loop (task context, interrupts on).
//! Each iteration: `setup`, arm the points (schedule or delays), release the
//! roles, watch them — every millisecond the wait-for graph is read from live
//! state; a cycle that persists for [`CYCLE_STABLE_NS`] is `impossible`, an
//! iteration over its time limit without one is `hang` — then run the
//! detectors, print the race report of the first hit, disarm, `teardown`,
//! and check that the iteration left nothing behind: every frame free again
//! (RCU callbacks run first), no PTL held, no CPU in a wait record, no point
//! armed. A failed state check ends the run as a failure.
//!
//! Invariants: only the controller changes the run configuration (points,
//! schedule, roles) and only while every role is between iterations; an
//! aborted iteration (hang or cycle) is released with [`point::abort`] and the
//! controller waits for every role to finish before it tears down.

use super::detect::{self, Finding};
use super::explore::{self, Explorer};
use super::point::{self, Arming, RacePoint, Step};
use super::trace;
use super::waitfor::{self, WaitClass};
use crate::cmdline::{Cmdline, Mode};
use crate::ktap::{Outcome as KtapOutcome, Run};
use crate::mm::arch::Mmu;
use crate::mm::knobs::Knobs;
use crate::mm::mm::{unuse_mm, use_mm, Mm};
use crate::mm::page_alloc;
use crate::mm::tlbflush::{self, FlushStrategy};
use crate::{kprintln, percpu, smp, Arch, NR_CPUS};
use alloc::{boxed::Box, format, string::String, vec, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// A kernel variant of a row: the buggy kernel or one fix, with the knobs
/// it sets (`C`, the row's [`Row::Config`]; `()` where only the name is
/// needed, as in the registry's [`Scenario::variants`]).
#[derive(Clone, Copy, Debug)]
pub struct Variant<C: 'static = ()> {
    /// Its name on the command line (`variant=`), e.g. `buggy`, `fixed-a`.
    pub name: &'static str,
    /// One line: what this kernel does differently.
    pub about: &'static str,
    /// One line: the Linux kernel this variant models: a commit ("5df397dec7c4
    /// (6.2)"), the kernel before one ("Linux 6.1, before 5df397dec7c4"), a
    /// shipped configuration, or, where it models no Linux kernel, what it
    /// stands for in words. Listed by `list` (see [`crate::list`]).
    pub models: &'static str,
    /// The waits this kernel's fix adds (its IPI sync, its RCU grace
    /// period, the PTL it keeps held). In forced mode, a wait-for cycle
    /// made only of schedule holds and these waits is the fix holding the
    /// bad interleaving back: the held CPUs are released, the iteration runs
    /// to its end and counts as `held_by_fix`; it can still be `clean`. A
    /// cycle through any other wait is `impossible`. Empty for a buggy
    /// kernel.
    pub fix_waits: &'static [WaitClass],
    /// What this kernel sets: the row's knobs for it.
    pub config: C,
}

impl<C: Copy> Variant<C> {
    /// A variant: its name, one line on what it does, what Linux kernel
    /// it models, the waits its fix adds, and its knobs.
    pub const fn new(
        name: &'static str,
        about: &'static str,
        models: &'static str,
        fix_waits: &'static [WaitClass],
        config: C,
    ) -> Self {
        Variant {
            name,
            about,
            models,
            fix_waits,
            config,
        }
    }

    /// The variant without its knobs, for the registry.
    pub fn meta(&self) -> Variant {
        Variant::new(self.name, self.about, self.models, self.fix_waits, ())
    }
}

/// What a Linux commit is to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitRole {
    /// It fixes the race (one of the row's fixed variants models it).
    Fix,
    /// It introduced the race (the buggy variants model the kernel with it).
    Introduced,
    /// It shaped the code the row replays without introducing or fixing the
    /// race (the catalogue or the seed thread names it).
    Context,
}

impl CommitRole {
    /// The role's word in the `list` output.
    pub fn word(self) -> &'static str {
        match self {
            CommitRole::Fix => "fix",
            CommitRole::Introduced => "introduced",
            CommitRole::Context => "context",
        }
    }
}

/// A Linux commit a row comes from, as the race catalogue, the row's module
/// docs or its seed thread name it.
#[derive(Debug)]
pub struct Commit {
    /// The short hash (12 hex digits).
    pub hash: &'static str,
    /// The subject line, where the catalogue, the row docs or the seed
    /// thread quote it (`None`: none of them does, and none is made up).
    pub subject: Option<&'static str>,
    /// The first release with it, where the catalogue names one ("6.2").
    pub release: Option<&'static str>,
    /// What it is to the row.
    pub role: CommitRole,
}

impl Commit {
    /// A commit: its hash, subject (where quoted), first release (where
    /// named) and what it is to the row.
    pub const fn new(
        hash: &'static str,
        subject: Option<&'static str>,
        release: Option<&'static str>,
        role: CommitRole,
    ) -> Self {
        Commit {
            hash,
            subject,
            release,
            role,
        }
    }
}

/// How long a row may run.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Iterations in forced mode (each buggy one must hit).
    pub forced_iterations: u64,
    /// Iterations in natural mode (`iterations=` overrides).
    pub natural_iterations: u64,
    /// A natural run stops after this long, whatever the iterations.
    pub natural_time_ns: u64,
    /// One iteration longer than this is a hang, unless the prover finds a
    /// wait-for cycle.
    pub iteration_timeout_ns: u64,
}

impl Budget {
    /// The catalogue's budget: 3 forced iterations (each buggy one hits in
    /// the first), 10 000 natural ones. The 240 s bound is generous: the
    /// iterations decide, and it only ends a run the host slowed down badly
    /// (the slowest fixed cells run about 150 iterations/s under TCG). An
    /// iteration over 2 s is a hang unless the prover finds a cycle.
    pub const CATALOGUE: Budget = Budget {
        forced_iterations: 3,
        natural_iterations: 10_000,
        natural_time_ns: 240_000_000_000,
        iteration_timeout_ns: 2_000_000_000,
    };
}

/// What one iteration works on: built by [`Row::setup`], read by the roles
/// and the detectors, taken apart by [`Row::teardown`].
pub struct Ctx<A: Mmu, R: Row<A>> {
    /// The iteration's address space: every role runs as a task of it. The
    /// runner lends the run's mm here ([`Row::run_mm`]) before `setup` and
    /// takes it back after `teardown`; an mm left here that is not the
    /// run's is torn down.
    pub mm: Option<Box<Mm<A>>>,
    /// The row's address of interest.
    pub addr: u64,
    /// Frames the detectors watch.
    pub pfns: Vec<u64>,
    /// The variant being run.
    pub variant: &'static Variant<R::Config>,
    /// The mode being run.
    pub mode: Mode,
    /// A forced run that replays a given schedule (`schedule=`, one explore
    /// found): a row whose roles take other paths in forced mode than in
    /// explore mode takes explore's, the ones the schedule was found on.
    pub replay: bool,
    /// Iteration number, from 0.
    pub iteration: u64,
    /// A self-check the run injects (`inject=`), for the row to act on.
    pub inject: Option<Inject>,
    /// What the row's roles and detectors share in this iteration
    /// (handshakes, results), fresh each iteration.
    pub state: R::State,
}

impl<A: Mmu, R: Row<A>> Ctx<A, R> {
    /// The knobs of the variant being run.
    pub fn config(&self) -> R::Config {
        self.variant.config
    }

    /// The iteration's mm (after `setup` put one in).
    pub fn mm(&self) -> &Mm<A> {
        self.mm.as_deref().expect("the iteration's mm")
    }

    /// Role `role`'s passes through the armed point `p` in this
    /// iteration, in order ([`trace::passes`]; empty for a point not armed
    /// or not reached). For [`Row::overlapped`], after the roles finished.
    pub fn passes(&self, role: usize, p: &'static RacePoint) -> Vec<trace::Pass> {
        point::cpu_of(role).map_or_else(Vec::new, |cpu| trace::passes(cpu, p))
    }

    /// Role `role`'s first pass through `p` in this iteration
    /// ([`Ctx::passes`]).
    pub fn first_pass(&self, role: usize, p: &'static RacePoint) -> Option<trace::Pass> {
        self.passes(role, p).first().copied()
    }
}

/// An address space kept for a whole run: built once by [`Row::prepare`],
/// lent to each iteration's [`Ctx::mm`] by the runner (see
/// [`Row::run_mm`]), torn down when the run ends. Building and tearing
/// down an mm with its mappings per iteration can cost more than the race.
pub struct RunMm<A: Mmu>(Option<Box<Mm<A>>>);

impl<A: Mmu> RunMm<A> {
    /// A slot holding `mm`.
    pub fn new(mm: Box<Mm<A>>) -> Self {
        RunMm(Some(mm))
    }

    /// A new mm with what `map` maps in it (VMAs, pages, the page tables
    /// the iterations reuse). Without memory for the mm, or if `map`
    /// fails, the slot is empty: the first `setup` finds no mm and the run
    /// fails.
    pub fn build<E>(map: impl FnOnce(&Mm<A>) -> Result<(), E>) -> Self {
        let Some(mm) = Mm::<A>::new().map(Box::new) else {
            return Self::default();
        };
        match map(&mm) {
            Ok(()) => RunMm(Some(mm)),
            Err(_) => {
                crate::mm::memory::exit_mmap(*mm);
                Self::default()
            }
        }
    }
}

impl<A: Mmu> Default for RunMm<A> {
    fn default() -> Self {
        RunMm(None)
    }
}

impl<A: Mmu> Drop for RunMm<A> {
    fn drop(&mut self) {
        if let Some(mm) = self.0.take() {
            crate::mm::memory::exit_mmap(*mm);
        }
    }
}

/// What a row is, apart from its code: the constants of a [`Row`].
#[derive(Clone, Copy, Debug)]
pub struct RowInfo {
    /// Its name on the command line (`scenario=`).
    pub name: &'static str,
    /// One line: the race.
    pub about: &'static str,
    /// Its number in the catalogue (rows 1 to 8); `None` for a
    /// demonstration row.
    pub catalogue: Option<u8>,
    /// One line: the mailing-list thread (the seed) or the catalogue entry
    /// the row comes from.
    pub seed: &'static str,
    /// The Linux commits the catalogue and the row's docs name for it.
    pub commits: &'static [Commit],
    /// Role names; role `i` runs on CPU `i + 1`.
    pub roles: &'static [&'static str],
    /// The TLB flush strategies each variant runs under (the flush axis):
    /// the runner runs every variant under each of these that the
    /// architecture implements ([`Mmu::FLUSH_STRATEGIES`]), one case
    /// `row:variant@flush:mode` each. Empty: the row does not depend on
    /// how a flush reaches other CPUs and runs under the architecture's
    /// default strategy, one case `row:variant:mode`.
    pub flush: &'static [FlushStrategy],
    /// The forced schedule: the interleaving under test, the same for
    /// every variant (the variants differ in policy only). Its points are
    /// traced in natural mode too.
    pub schedule: &'static [Step],
    /// Points armed with random delays in natural mode.
    pub delay_points: &'static [&'static RacePoint],
    /// Points traced in both modes (besides the schedule's).
    pub trace_points: &'static [&'static RacePoint],
    /// Longest natural-mode delay.
    pub max_delay_ns: u64,
    /// The budget.
    pub budget: Budget,
}

impl RowInfo {
    /// A row with its name, race and roles; no catalogue number, seed,
    /// commits, flush axis, schedule, delay or trace points; delays up to
    /// 20 us; the catalogue's budget. Fill in the rest with `..`.
    pub const fn new(
        name: &'static str,
        about: &'static str,
        roles: &'static [&'static str],
    ) -> Self {
        RowInfo {
            name,
            about,
            catalogue: None,
            seed: "",
            commits: &[],
            roles,
            flush: &[],
            schedule: &[],
            delay_points: &[],
            trace_points: &[],
            max_delay_ns: 20_000,
            budget: Budget::CATALOGUE,
        }
    }
}

/// A row of the catalogue (or a demonstration row), written as a type: its
/// constants ([`RowInfo`], [`Row::VARIANTS`]), its typed state and its
/// code, with defaults for what most rows leave alone (nothing kept across
/// iterations, no detector beyond the runner's bad-page check, nothing to
/// tear down). [`Scenario::of`] puts it in the registry.
///
/// One run of a variant: the runner saves the mm's knobs
/// ([`crate::mm::knobs`]), calls [`Row::prepare`] (which sets the knobs of
/// the variant and builds what the run keeps), then for each iteration
/// lends the run's mm, calls `setup`, runs `role(ctx, i)` on CPU `i + 1`,
/// `detect`, `teardown`, and takes the mm back; at the end
/// [`Row::finish`], and the knobs are restored.
pub trait Row<A: Mmu>: Sized + 'static {
    /// What the row is.
    const INFO: RowInfo;
    /// The knobs a variant sets (a policy enum, a few flags).
    type Config: Copy + Send + Sync + 'static;
    /// The buggy kernel and each fix, with their knobs.
    const VARIANTS: &'static [Variant<Self::Config>];
    /// What the roles and detectors of one iteration share: handshake
    /// words, results, counters. A fresh `Default` each iteration; it must
    /// be `Sync` because every role CPU reads it.
    type State: Default + Sync;
    /// What the run keeps across iterations (its mm, counters to print at
    /// the end); dropped when the run ends.
    type Run: Default;

    /// Sets the knobs of `variant` and builds what the run keeps, or says
    /// why the row does not exist on this architecture (`skip`).
    fn prepare(_variant: &Variant<Self::Config>) -> Result<Self::Run, &'static str> {
        Ok(Self::Run::default())
    }
    /// The run's mm, if the run keeps one: the runner lends it to each
    /// iteration's [`Ctx::mm`] before `setup` and takes it back after
    /// `teardown` (a `teardown` that finds it unfit tears it down with
    /// `ctx.mm.take()`; the next `setup` then fails the run).
    fn run_mm(_run: &mut Self::Run) -> Option<&mut RunMm<A>> {
        None
    }
    /// Ends the run (prints what the run counted); the knobs are restored
    /// by the runner.
    fn finish(_run: Self::Run) {}
    /// Builds an iteration's world.
    fn setup(run: &mut Self::Run, ctx: &mut Ctx<A, Self>) -> Result<(), String>;
    /// Runs role `role`; returns whether it completed its operation.
    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool;
    /// The row's detectors (the runner adds the bad-page check).
    fn detect(_ctx: &Ctx<A, Self>) -> Option<Finding> {
        None
    }
    /// Whether the roles met inside the race window in this iteration, as
    /// the row's module docs define it (e.g. the walker read the PMD
    /// before the unmap cleared it and read the PTE table after the
    /// clear): an observation of what happened — the order of the roles'
    /// passes through race points ([`Ctx::passes`]), what the roles
    /// recorded — possible in every variant (the window opens, a fix makes
    /// it harmless). Called after the roles finished and the detectors
    /// ran, before `teardown`; the iterations it holds for are the run's
    /// `overlap`, which the expected table's floor judges in natural mode.
    fn overlapped(ctx: &Ctx<A, Self>) -> bool;
    /// Takes an iteration's world apart, repairing what a bug left behind.
    fn teardown(_run: &mut Self::Run, _ctx: &mut Ctx<A, Self>) {}
}

/// A row in the registry: its constants, its variants by name, and its
/// runner, with the row's types erased by monomorphisation (each function
/// pointer is the generic runner instantiated for the row).
pub struct Scenario<A: Mmu> {
    /// What the row is.
    pub info: RowInfo,
    /// The buggy kernel and each fix, without their knobs.
    pub variants: Vec<Variant>,
    run: fn(usize, &RunConfig) -> Report,
    accepts: fn(usize) -> Result<(), &'static str>,
    _arch: core::marker::PhantomData<A>,
}

impl<A: Mmu> core::ops::Deref for Scenario<A> {
    type Target = RowInfo;
    fn deref(&self) -> &RowInfo {
        &self.info
    }
}

impl<A: Mmu> Scenario<A> {
    /// The registry's form of the row `R`.
    pub fn of<R: Row<A>>() -> Self {
        Scenario {
            info: R::INFO,
            variants: R::VARIANTS.iter().map(Variant::meta).collect(),
            run: |v, cfg| run_row::<A, R>(&R::VARIANTS[v], cfg),
            accepts: |v| {
                let knobs = Knobs::save();
                let r = R::prepare(&R::VARIANTS[v]).map(R::finish);
                knobs.restore::<A>();
                r
            },
            _arch: core::marker::PhantomData,
        }
    }

    /// The variant named `name`, by index.
    pub fn variant(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|v| v.name == name)
    }

    /// Runs variant `v` as `cfg` says ([`run_with`]).
    pub fn run(&self, v: usize, cfg: &RunConfig) -> Report {
        (self.run)(v, cfg)
    }

    /// Whether variant `v` exists on this architecture: its `prepare`
    /// runs and the run ends at once (the knobs restored).
    pub fn accepts(&self, v: usize) -> Result<(), &'static str> {
        (self.accepts)(v)
    }
}

pub use super::rows::all;

/// What a run showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A detector fired.
    Bug,
    /// No detector fired and every role completed every iteration.
    Clean,
    /// The forced schedule cannot be taken: a wait-for cycle was read from
    /// live state.
    Impossible,
    /// The row or variant does not apply here.
    Skip(&'static str),
    /// An iteration ran over its limit without a wait-for cycle (failure).
    Hang,
    /// No detector fired but some role did not complete its operation
    /// (failure).
    Vacuous,
}

impl Outcome {
    /// The outcome's word, as in the expected table.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Bug => "bug",
            Outcome::Clean => "clean",
            Outcome::Impossible => "impossible",
            Outcome::Skip(_) => "skip",
            Outcome::Hang => "hang",
            Outcome::Vacuous => "vacuous",
        }
    }

    /// Whether the outcome is a failure of the run itself.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Hang | Outcome::Vacuous)
    }
}

/// The result of running one (row, variant, mode).
#[derive(Clone, Debug)]
pub struct Report {
    /// The outcome.
    pub outcome: Outcome,
    /// Iterations run.
    pub iterations: u64,
    /// Iterations in which a detector fired.
    pub hits: u64,
    /// From the start of the run to the end of the first hit iteration.
    pub first_hit_ns: Option<u64>,
    /// Wall time of the run.
    pub elapsed_ns: u64,
    /// Iterations in which some role did not complete.
    pub incomplete: u64,
    /// Iterations in which the roles met inside the race window
    /// ([`Row::overlapped`]).
    pub overlap: u64,
    /// The first finding.
    pub finding: Option<Finding>,
    /// The wait-for cycle that made the run `impossible`.
    pub cycle: Option<String>,
    /// Forced iterations in which the variant's fix held the schedule back
    /// (a cycle through its own waits, see [`Variant::fix_waits`]).
    pub held_by_fix: u64,
    /// The first such cycle.
    pub fix_cycle: Option<String>,
    /// The proof of the cycle that made the run `impossible` (or `hang`),
    /// in the expected table's words ([`evidence`]).
    pub evidence: Option<String>,
    /// The proof of the first cycle the fix held, in the same words.
    pub fix_evidence: Option<String>,
    /// The wait-for edges seen when a run was declared `hang`.
    pub hang_edges: Option<String>,
    /// A state check that failed, or a setup error: the run failed.
    pub state_error: Option<String>,
    /// The seed.
    pub seed: u64,
    /// The flush strategy of the run, for a row with a flush axis.
    pub flush: Option<FlushStrategy>,
    /// Whether the natural-mode delays were armed.
    pub delays: bool,
    /// Explore mode: what the exploration covered.
    pub explore: Option<ExploreSummary>,
    /// Where the run's time went, summed over its iterations
    /// ([`Phase`]): printed with the report, to show what bounds the
    /// iteration rate.
    pub phase_ns: [u64; Phase::COUNT],
}

/// The parts of an iteration the runner times ([`Report::phase_ns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The row's `setup` and the arming of its points.
    Setup,
    /// From kicking the role CPUs to the last role's report: the roles'
    /// work, their wake-up from halt and the controller's.
    Roles,
    /// The detectors and the bookkeeping of the result.
    Detect,
    /// The row's `teardown` and the end of the iteration's mm.
    Teardown,
    /// The state check after the iteration (RCU callbacks run to the end,
    /// frames counted, locks and waits checked).
    Check,
}

impl Phase {
    /// How many phases there are.
    pub const COUNT: usize = 5;
    /// Every phase, in the order an iteration runs them.
    pub const ALL: [Phase; Phase::COUNT] = [
        Phase::Setup,
        Phase::Roles,
        Phase::Detect,
        Phase::Teardown,
        Phase::Check,
    ];

    /// Its name in the `# time:` line.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Roles => "roles",
            Phase::Detect => "detect",
            Phase::Teardown => "teardown",
            Phase::Check => "check",
        }
    }
}

/// What an explore run covered (its schedules are [`Report::iterations`],
/// its buggy ones [`Report::hits`]).
#[derive(Clone, Debug, Default)]
pub struct ExploreSummary {
    /// Every ordering within the bound was run.
    pub exhausted: bool,
    /// The highest preemption bound within which every schedule ran
    /// (`None`: every ordering ran, or an unbounded run cut short).
    pub bound: Option<u32>,
    /// A bound tried and given up, with the schedules it ran: above
    /// [`EXPLORE_DEFAULT_BOUND`] because its space is too large
    /// ([`EXPLORE_DEEPEN_MAX`]), or any bound cut by the run's limits
    /// (schedules, time, `stop_at_hit`); the bound below it was exhausted.
    pub gave_up: Option<(u32, u64)>,
    /// Schedules that ran to their end.
    pub complete: u64,
    /// Schedules pruned by a wait-for cycle, by proof ([`evidence`]; a
    /// cycle the fix holds is prefixed `fix:`).
    pub pruned: Vec<(String, u64)>,
    /// Schedules whose replayed prefix met other parked roles.
    pub divergent: u64,
    /// Schedules cut at [`EXPLORE_MAX_DECISIONS`] (the roles then ran
    /// free to their end): neither complete nor explored to the end.
    pub truncated: u64,
    /// The most decisions one schedule made.
    pub max_decisions: usize,
    /// The first buggy schedule, in the text form `schedule=` replays.
    pub buggy_schedule: Option<String>,
}

impl ExploreSummary {
    /// Schedules pruned as refused by the hardware or the fix.
    pub fn pruned_total(&self) -> u64 {
        self.pruned.iter().map(|(_, n)| n).sum()
    }
}

impl Report {
    fn new(seed: u64) -> Self {
        Self {
            outcome: Outcome::Clean,
            iterations: 0,
            hits: 0,
            first_hit_ns: None,
            elapsed_ns: 0,
            incomplete: 0,
            overlap: 0,
            finding: None,
            cycle: None,
            held_by_fix: 0,
            fix_cycle: None,
            evidence: None,
            fix_evidence: None,
            hang_edges: None,
            state_error: None,
            seed,
            flush: None,
            delays: false,
            explore: None,
            phase_ns: [0; Phase::COUNT],
        }
    }

    fn skip(seed: u64, why: &'static str) -> Self {
        Self {
            outcome: Outcome::Skip(why),
            ..Self::new(seed)
        }
    }

    /// Whether the run failed (hang, vacuous, or a state check).
    pub fn failed(&self) -> bool {
        self.outcome.is_failure() || self.state_error.is_some()
    }
}

/// How long a wait-for cycle must persist (re-read from live state at every
/// probe) before the run is declared `impossible`: two tick periods, so
/// that every CPU that could report a quiescent state or take an interrupt
/// has had the chance.
pub const CYCLE_STABLE_NS: u64 = 20_000_000;
/// [`CYCLE_STABLE_NS`] in explore mode. There every role but the granted
/// one is parked and goes on only when the controller grants it, so a
/// cycle through a parked role cannot resolve by itself; its edges are
/// facts of live state (a lock's recorded holder, a flush IPI pending at a
/// CPU with interrupts off), read again at every probe. Three probes that
/// agree are enough.
pub const EXPLORE_CYCLE_STABLE_NS: u64 = 3_000_000;
/// How often the controller reads the wait-for graph (at most: it halts
/// between probes and wakes at a role's report or the tick).
const PROBE_NS: u64 = 1_000_000;
/// How long roles may take to finish once an aborted iteration is released.
const RECOVER_NS: u64 = 2_000_000_000;

/// Where the runner's data for the current run lies ([`runner_addrs`]).
static RUNNER_ADDRS: spin::Mutex<Vec<u64>> = spin::Mutex::new(Vec::new());

/// The first and last byte addresses of what the role CPUs of the current
/// run read on every iteration (the iteration's [`Ctx`], the words they
/// report through): a row that needs a TLB entry of its own to survive
/// keeps its page out of their slots ([`super::user::stale_tlb_base`]).
/// Empty outside a run.
pub(crate) fn runner_addrs() -> Vec<u64> {
    RUNNER_ADDRS.lock().clone()
}

/// Set once roles could not be recovered: later runs would be meaningless.
static WEDGED: AtomicBool = AtomicBool::new(false);

/// A self-check that breaks the kernel on purpose to show that a verdict
/// catches it (`inject=`, accepted only with `scenario=`). A row that
/// implements none ignores it; `ptfree-vs-gup-fast` implements the first,
/// second and fourth, `wp-unlock-vs-zap` the third.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inject {
    /// `deadlock`: a role holds a lock another role needs, unrelated to the
    /// race (the walker holds the PTE table's PTL across its walk): a
    /// deadlock of the kernel, whose cycle is not the catalogue's proof.
    Deadlock,
    /// `late-finding`: once the run is released (impossible, or held by
    /// the fix), a role does what the race would have done (the walker
    /// reads the table it walked again after the unmap freed it): a finding
    /// after the release, which must make the cell `bug`.
    LateFinding,
    /// `misplaced-point`: the fix is broken and its row's race point moved
    /// out of the window (`do_wp_page` unlocks the reused page after the
    /// PTL release, as the bug does, but `wp:before_unlock_page` sits
    /// before the release): forced mode and the natural delays no longer
    /// reach the window; explore must still find it through the
    /// synchronisation events.
    MisplacedPoint,
    /// `apart`: the roles never meet inside the race window (the walker
    /// begins its walk only once the unmap is done, and finds the PMD
    /// empty): every role completes and nothing fires, yet no iteration
    /// tested the race — a natural run whose overlap the expected table's
    /// floor must find wanting.
    Apart,
}

impl Inject {
    /// The self-check named `name` on the command line.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "deadlock" => Some(Inject::Deadlock),
            "late-finding" => Some(Inject::LateFinding),
            "misplaced-point" => Some(Inject::MisplacedPoint),
            "apart" => Some(Inject::Apart),
            _ => None,
        }
    }
}

/// How one run runs: handed to [`run_with`] by the caller (the command
/// line's `scenario=` handling, a self-test), never kept in a global.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Forced or natural.
    pub mode: Mode,
    /// The seed of the natural-mode delays (printed with every result).
    pub seed: u64,
    /// The flush strategy for a row with a flush axis; `None`: the
    /// architecture's default.
    pub flush: Option<FlushStrategy>,
    /// Natural mode: an iteration budget replacing the row's
    /// (`iterations=`).
    pub iterations: Option<u64>,
    /// Natural mode: a time budget replacing the row's (`budget_s=`,
    /// `budget_ms=`).
    pub time_budget_ns: Option<u64>,
    /// Natural mode: arm the row's window-widening delays (`delays=`).
    pub delays: bool,
    /// Natural mode: print a progress line this often (`progress_s=`).
    pub progress_ns: Option<u64>,
    /// Natural and explore mode: end the run at its first hit
    /// (`stop_at_hit`; explore: at the first buggy schedule, the space
    /// then not exhausted).
    pub stop_at_hit: bool,
    /// A self-check that breaks the kernel on purpose (`inject=`).
    pub inject: Option<Inject>,
    /// Explore mode: the preemption bound (`bound=K`: bounds 0, 1, ... up
    /// to K, each once the one before is exhausted with orderings left
    /// out; `None`: up to [`EXPLORE_DEFAULT_BOUND`], then higher ones
    /// while the space is small enough to run every ordering, see
    /// [`EXPLORE_DEEPEN_MAX`]).
    pub bound: Option<u32>,
    /// Forced mode: a schedule replacing the row's (`schedule=`).
    pub schedule: Option<Vec<Step>>,
}

/// The preemption bound explore always exhausts (reached from bound 0 one
/// exhausted bound at a time).
pub const EXPLORE_DEFAULT_BOUND: u32 = 2;
/// Beyond [`EXPLORE_DEFAULT_BOUND`], explore raises the bound by one while
/// the bound just exhausted took at most half this many schedules, and
/// gives a higher bound up once it took this many: a space that small is
/// explored to its end (every ordering, no bound), a larger one within the
/// highest bound exhausted.
pub const EXPLORE_DEEPEN_MAX: u64 = 500;
/// Decisions one explore schedule makes at most: a role that loops longer
/// than this is released and the schedule counts as truncated.
pub const EXPLORE_MAX_DECISIONS: usize = 512;
/// How long an explore run may take (`budget_s=` overrides; generous: a
/// loaded 2-core host runs 20 schedules/s where a quiet one runs 200): a space not
/// exhausted by then is reported so, with the schedules run.
pub const EXPLORE_TIME_NS: u64 = 300_000_000_000;
/// Schedules an explore run runs at most (`iterations=` overrides).
pub const EXPLORE_MAX_SCHEDULES: u64 = 5_000;

impl RunConfig {
    /// The row's own budgets, delays armed, no progress lines, the
    /// architecture's default flush strategy.
    pub const fn new(mode: Mode, seed: u64) -> Self {
        RunConfig {
            mode,
            seed,
            flush: None,
            iterations: None,
            time_budget_ns: None,
            delays: true,
            progress_ns: None,
            stop_at_hit: false,
            inject: None,
            bound: None,
            schedule: None,
        }
    }
}

/// What the controller shares with the role CPUs.
struct Shared<A: Mmu, R: Row<A>> {
    ctx: AtomicPtr<Ctx<A, R>>,
    gen: AtomicU64,
    stop: AtomicBool,
    done: [AtomicU64; 8],
    completed: [AtomicBool; 8],
    exited: AtomicUsize,
}

/// The loop a role CPU runs for the whole run.
fn role_loop<A: Mmu, R: Row<A>>(arg: usize) {
    // SAFETY: `run` passes a `Shared` it keeps alive until every role loop
    // has counted itself in `exited` (or leaks it).
    let sh = unsafe { &*(arg as *const Shared<A, R>) };
    let cpu = A::smp_processor_id();
    let role = point::role_of(cpu).expect("role loop on a CPU without a role");
    let mut seen = 0;
    loop {
        if sh.stop.load(Ordering::Acquire) {
            break;
        }
        // Halt between iterations (interrupts off while checking, so the
        // controller's kick cannot slip in before the halt): a spinning
        // vCPU would take host time from the CPUs that run.
        A::local_irq_disable();
        let g = sh.gen.load(Ordering::Acquire);
        if g == seen {
            if !sh.stop.load(Ordering::Acquire) {
                crate::rcu::idle_halt::<A>();
            }
            A::local_irq_enable();
            continue;
        }
        A::local_irq_enable();
        seen = g;
        // SAFETY: the controller publishes the iteration's `Ctx` before
        // bumping `gen` and keeps it alive until every role reported `done`.
        let ctx = unsafe { &*sh.ctx.load(Ordering::Acquire) };
        if let Some(mm) = ctx.mm.as_deref() {
            // SAFETY: the mm lives in the `Ctx` until teardown, which runs
            // only after this role left it (`unuse_mm` below, then `done`).
            unsafe { use_mm(mm) };
        }
        point::race_point::<A>(&point::points::ROLE_START, 0);
        let ok = R::role(ctx, role);
        point::race_point::<A>(&point::points::ROLE_END, 0);
        if ctx.mm.is_some() {
            unuse_mm::<A>();
        }
        sh.completed[role].store(ok, Ordering::Relaxed);
        sh.done[role].store(g, Ordering::Release);
        // Wake the controller (a bare IPI: nothing queued, nothing traced).
        A::send_ipi(0);
    }
    sh.exited.fetch_add(1, Ordering::AcqRel);
}

/// Runs RCU callbacks until none is pending on any CPU (bounded), so that
/// tables freed after a grace period count as free.
fn quiesce_rcu<A: Arch>() {
    let t0 = A::clock_ns();
    while (0..smp::nr_cpus()).any(|c| crate::rcu::pending_callbacks::<A>(c) > 0)
        && A::clock_ns() - t0 < 1_000_000_000
    {
        crate::rcu::synchronize_rcu::<A>();
        crate::rcu::rcu_do_batch::<A>();
    }
}

/// Runs the row `R` in `variant` and `mode` with the row's own budgets
/// (`iterations` replaces them), under the architecture's default flush
/// strategy ([`run_row`]).
pub fn run<A: Mmu, R: Row<A>>(
    variant: &'static Variant<R::Config>,
    mode: Mode,
    seed: u64,
    iterations: Option<u64>,
) -> Report {
    let cfg = RunConfig {
        iterations,
        ..RunConfig::new(mode, seed)
    };
    run_row::<A, R>(variant, &cfg)
}

/// Runs the row `R` in `variant` as `cfg` says, with TLB flushes reaching
/// other CPUs by `cfg.flush` for the whole run and the mm's knobs saved
/// around it: the architecture's default strategy and the knobs are back
/// when it returns. Prints the race report of the first hit as KTAP
/// diagnostics.
pub fn run_row<A: Mmu, R: Row<A>>(variant: &'static Variant<R::Config>, cfg: &RunConfig) -> Report {
    let default = A::FLUSH_STRATEGIES[0];
    if let Some(f) = cfg.flush {
        if tlbflush::set_flush_strategy::<A>(f).is_err() {
            return Report::skip(
                cfg.seed,
                "this architecture does not implement that flush strategy",
            );
        }
    }
    let knobs = Knobs::save();
    let rep = run_set::<A, R>(variant, cfg);
    knobs.restore::<A>();
    tlbflush::set_flush_strategy::<A>(default).expect("the architecture's default strategy");
    rep
}

fn run_set<A: Mmu, R: Row<A>>(variant: &'static Variant<R::Config>, cfg: &RunConfig) -> Report {
    let s = &R::INFO;
    let (mode, seed) = (cfg.mode, cfg.seed);
    let mut rep = Report::new(seed);
    rep.flush = cfg.flush;
    rep.delays = mode == Mode::Natural && cfg.delays;
    if WEDGED.load(Ordering::Acquire) {
        rep.state_error = Some("an earlier run left role CPUs stuck".into());
        return rep;
    }
    if s.roles.len() > MAX_ROLES {
        rep.state_error = Some(format!("{} roles, at most {MAX_ROLES}", s.roles.len()));
        return rep;
    }
    let need = s.roles.len() + 1;
    if smp::nr_cpus() < need {
        return Report::skip(seed, needs_cpus(need));
    }
    if A::smp_processor_id() != 0 || A::irqs_disabled() {
        rep.state_error = Some("the controller must be CPU 0 with interrupts on".into());
        return rep;
    }
    // What the role CPUs read on every iteration, allocated before the
    // row builds its world so that the row can keep its user pages out of
    // their TLB slots ([`runner_addrs`]).
    let shared = Box::new(Shared::<A, R> {
        ctx: AtomicPtr::new(core::ptr::null_mut()),
        gen: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        done: [const { AtomicU64::new(0) }; 8],
        completed: [const { AtomicBool::new(false) }; 8],
        exited: AtomicUsize::new(0),
    });
    let mut slot: Box<Option<Ctx<A, R>>> = Box::new(None);
    let (sh_at, ctx_at) = (&*shared as *const _ as u64, &*slot as *const _ as u64);
    *RUNNER_ADDRS.lock() = Vec::from([
        sh_at,
        sh_at + size_of::<Shared<A, R>>() as u64 - 1,
        ctx_at,
        ctx_at + size_of::<Option<Ctx<A, R>>>() as u64 - 1,
    ]);
    let mut run = match R::prepare(variant) {
        Ok(run) => run,
        Err(why) => {
            RUNNER_ADDRS.lock().clear();
            return Report::skip(seed, why);
        }
    };
    let role_cpus: Vec<usize> = (1..need).collect();
    point::disarm_all();
    point::set_roles(&role_cpus);
    let sh: &Shared<A, R> = &shared;
    for &cpu in &role_cpus {
        smp::run_on_idle::<A>(cpu, role_loop::<A, R>, sh as *const Shared<A, R> as usize);
    }
    let limit = match mode {
        Mode::Forced => cfg.iterations.unwrap_or(s.budget.forced_iterations),
        Mode::Natural => cfg.iterations.unwrap_or(s.budget.natural_iterations),
        Mode::Explore => cfg.iterations.unwrap_or(EXPLORE_MAX_SCHEDULES),
    };
    let schedule = cfg.schedule.as_deref().unwrap_or(s.schedule);
    let mut explorer = (mode == Mode::Explore).then(|| Explorer::new(Some(0)));
    let top_bound = cfg.bound.unwrap_or(EXPLORE_DEFAULT_BOUND);
    // Iterative context bounding: the schedules run when the current bound
    // began, and the highest bound exhausted (with orderings left out).
    let (mut pass_start, mut settled) = (0u64, None::<u32>);
    if explorer.is_some() {
        rep.explore = Some(ExploreSummary::default());
    }
    let time_budget = cfg.time_budget_ns.unwrap_or(match mode {
        Mode::Explore => EXPLORE_TIME_NS,
        _ => s.budget.natural_time_ns,
    });
    let progress_ns = cfg.progress_ns.unwrap_or(0);
    let start = A::clock_ns();
    let mut last_progress = start;
    let mut wedged = false;
    for it in 0..limit {
        let now = A::clock_ns();
        if mode != Mode::Forced && now - start > time_budget {
            break;
        }
        if mode == Mode::Natural && progress_ns > 0 && now - last_progress >= progress_ns {
            last_progress = now;
            kprintln!(
                "    # progress: row={} variant={} iterations={} hits={} overlap={} elapsed_ms={}",
                s.name,
                variant.name,
                rep.iterations,
                rep.hits,
                rep.overlap,
                (now - start) / 1_000_000
            );
        }
        let step = iteration(
            &mut run,
            sh,
            &mut slot,
            variant,
            cfg,
            it,
            schedule,
            start,
            &mut rep,
            explorer.as_mut(),
        );
        if let Some(ex) = explorer.as_mut() {
            let pass = rep.iterations - pass_start;
            if step == Ok(true) && !ex.advance() {
                // Iterative context bounding (as CHESS): a bound whose
                // schedules are exhausted while it left orderings out goes
                // on with one more preemption, up to the default bound,
                // then further while the space stays small. A depth-first
                // search within bound 2 alone varies the last decisions
                // first and can spend its budget there, missing a bug one
                // early preemption shows.
                match ex.bound {
                    Some(b)
                        if ex.bound_cut
                            && (b < top_bound
                                || cfg.bound.is_none() && pass * 2 <= EXPLORE_DEEPEN_MAX) =>
                    {
                        settled = Some(b);
                        pass_start = rep.iterations;
                        let divergent = ex.divergent;
                        *ex = Explorer::new(Some(b + 1));
                        ex.divergent = divergent;
                    }
                    _ => break,
                }
            } else if cfg.bound.is_none()
                && ex.bound.is_some_and(|b| b > EXPLORE_DEFAULT_BOUND)
                && pass >= EXPLORE_DEEPEN_MAX
            {
                // Too large to run every ordering: the result is the bound
                // exhausted before.
                break;
            }
        }
        match step {
            // Explore: at the first buggy schedule that ran to its end.
            Ok(true)
                if mode != Mode::Forced
                    && rep.hits > 0
                    && cfg.stop_at_hit
                    && rep
                        .explore
                        .as_ref()
                        .is_none_or(|x| x.buggy_schedule.is_some()) =>
            {
                break
            }
            Ok(true) => {}
            Ok(false) => break,
            Err(()) => {
                wedged = true;
                break;
            }
        }
    }
    rep.elapsed_ns = A::clock_ns() - start;
    point::disarm_all();
    trace::set_enabled(false);
    sh.stop.store(true, Ordering::Release);
    for &cpu in &role_cpus {
        A::send_ipi(cpu);
    }
    let t0 = A::clock_ns();
    while sh.exited.load(Ordering::Acquire) < role_cpus.len() {
        if A::clock_ns() - t0 > RECOVER_NS {
            wedged = true;
            break;
        }
        A::cpu_relax();
    }
    if wedged {
        WEDGED.store(true, Ordering::Release);
        rep.state_error
            .get_or_insert_with(|| "role CPUs did not finish after the run was released".into());
        // Role CPUs may still read them.
        Box::leak(shared);
        Box::leak(slot);
    } else {
        drop(shared);
    }
    RUNNER_ADDRS.lock().clear();
    point::set_roles(&[]);
    R::finish(run);
    if let (Some(ex), Some(x)) = (explorer, rep.explore.as_mut()) {
        (x.exhausted, x.bound) = if ex.exhausted && !ex.bound_cut {
            // Nothing left out by the bound: every ordering ran.
            (true, None)
        } else if !ex.exhausted && settled.is_some() {
            // A bound given up (too large, or the run's limits): the bound
            // exhausted before it stands.
            if let Some(b) = ex.bound {
                x.gave_up = Some((b, rep.iterations - pass_start));
            }
            (true, settled)
        } else {
            (ex.exhausted, ex.bound)
        };
        x.divergent = ex.divergent;
    }
    // A finding decides, also one after a release: the roles ran to the
    // end and the detectors judged what they did.
    if matches!(rep.outcome, Outcome::Clean | Outcome::Impossible) && rep.hits > 0 {
        rep.outcome = Outcome::Bug;
    } else if rep.outcome == Outcome::Clean
        && (rep.iterations == 0
            || rep.incomplete > 0
            || rep.explore.as_ref().is_some_and(|x| x.complete == 0))
    {
        rep.outcome = Outcome::Vacuous;
    }
    rep
}

/// A cycle as the expected table states its proof: each wait of the cycle
/// as `class:waiter>holder` with role names (`flush-ipi`, `call-ipi`,
/// `ptl`, `rcu-gp`), and each role the schedule holds as
/// `held:role@point`, sorted, joined with `+`; e.g.
/// `flush-ipi:unmap>gup+held:gup@gup_fast:after_pmd_read`.
fn evidence(s: &RowInfo, cycle: &[waitfor::Edge], role_of: fn(usize) -> Option<usize>) -> String {
    let name = |cpu: usize| {
        role_of(cpu)
            .and_then(|r| s.roles.get(r).copied())
            .unwrap_or("?")
    };
    let mut parts: Vec<String> = cycle
        .iter()
        .map(|e| match e.class() {
            Some(c) => format!("{}:{}>{}", c.word(), name(e.from), name(e.to)),
            None => format!(
                "held:{}@{}",
                name(e.from),
                point::held_at(e.from).map_or("?", |p| p.name)
            ),
        })
        .collect();
    parts.sort();
    parts.join("+")
}

fn needs_cpus(n: usize) -> &'static str {
    match n {
        0..=2 => "needs 2 or more CPUs",
        3 => "needs 3 or more CPUs",
        4 => "needs 4 or more CPUs",
        _ => "needs more CPUs than this machine has",
    }
}

/// One iteration. `Ok(true)`: go on; `Ok(false)`: the run is decided or
/// failed; `Err`: the roles could not be recovered.
#[allow(clippy::too_many_arguments)]
fn iteration<A: Mmu, R: Row<A>>(
    run: &mut R::Run,
    sh: &Shared<A, R>,
    slot: &mut Option<Ctx<A, R>>,
    variant: &'static Variant<R::Config>,
    cfg: &RunConfig,
    it: u64,
    schedule: &[Step],
    start: u64,
    rep: &mut Report,
    explorer: Option<&mut Explorer>,
) -> Result<bool, ()> {
    let s = &R::INFO;
    let (mode, seed) = (cfg.mode, cfg.seed);
    // Phase timing: each `lap` adds the time since the last to a phase.
    let mut lap_at = A::clock_ns();
    let mut lap = |rep: &mut Report, phase: Phase| {
        let now = A::clock_ns();
        rep.phase_ns[phase as usize] += now - lap_at;
        lap_at = now;
    };
    let free_before = page_alloc::nr_free_pages();
    // In the run's slot: if the roles cannot be recovered it is leaked,
    // not freed under them.
    let ctx = slot.insert(Ctx::<A, R> {
        mm: R::run_mm(run).and_then(|slot| slot.0.take()),
        addr: 0,
        pfns: Vec::new(),
        variant,
        mode,
        replay: cfg.schedule.is_some(),
        iteration: it,
        inject: cfg.inject,
        state: R::State::default(),
    });
    if R::run_mm(run).is_some() && ctx.mm.is_none() {
        rep.state_error = Some(format!("iteration {it}: no mm for the run"));
        *slot = None;
        return Ok(false);
    }
    if let Err(e) = R::setup(run, ctx) {
        rep.state_error = Some(format!("setup of iteration {it} failed: {e}"));
        if let (Some(kept), Some(mm)) = (R::run_mm(run), ctx.mm.take()) {
            kept.0 = Some(mm);
        }
        *slot = None;
        return Ok(false);
    }
    let seq = page_alloc::nr_bad_pages();
    trace::set_enabled(false);
    trace::clear();
    point::disarm_all();
    for p in s.trace_points {
        point::arm(p, Arming::Trace);
    }
    match mode {
        Mode::Forced => {
            point::set_schedule(schedule);
            for st in schedule {
                point::arm(st.point, Arming::Schedule);
            }
        }
        Mode::Natural => {
            point::set_schedule(&[]);
            point::set_natural(seed, it, s.max_delay_ns);
            for st in schedule {
                point::arm(st.point, Arming::Trace);
            }
            if cfg.delays {
                for p in s.delay_points {
                    point::arm(p, Arming::Delay);
                }
            }
        }
        Mode::Explore => {
            point::explore_reset();
            point::explore_watch(&ctx.pfns);
            let row_points = schedule
                .iter()
                .map(|st| st.point)
                .chain(s.delay_points.iter().copied())
                .chain(s.trace_points.iter().copied());
            for p in row_points
                .chain([
                    &point::points::ROLE_START,
                    &point::points::ROLE_END,
                    &point::points::ROLE_WAIT,
                ])
                .chain(point::points::SYNC.iter().copied())
            {
                point::arm(p, Arming::Explore);
            }
        }
    }
    trace::set_enabled(true);
    lap(rep, Phase::Setup);
    let roles = s.roles.len();
    sh.ctx.store(ctx as *mut Ctx<A, R>, Ordering::Release);
    let g = sh.gen.fetch_add(1, Ordering::AcqRel) + 1;
    for r in 0..roles {
        if let Some(cpu) = point::cpu_of(r) {
            A::send_ipi(cpu);
        }
    }
    let all_done = || (0..roles).all(|r| sh.done[r].load(Ordering::Acquire) == g);

    // Watch: finished, a persistent wait-for cycle, or the time limit.
    let t0 = A::clock_ns();
    let mut last_probe = t0;
    let mut cycle_mask = 0u64;
    let mut cycle_since = 0u64;
    let mut held = false;
    let mut verdict: Option<Outcome> = None;
    let mut explorer = explorer;
    if let Some(ex) = explorer.as_deref_mut() {
        let done = |r: usize| sh.done[r].load(Ordering::Acquire) == g;
        verdict = explore_watch::<A>(s, variant.fix_waits, ex, roles, &done, rep);
        if verdict == Some(Outcome::Hang) {
            // What led there: the schedule so far and every CPU's events.
            let text =
                explore::format_schedule(&explore::replay_steps(roles, ex.decisions()), s.roles);
            kprintln!("    # explore: hang after schedule={text}");
            let roles_of = s.roles;
            trace::print(&trace::snapshot(REPORT_EVENTS_PER_CPU), |cpu| {
                point::role_of(cpu).and_then(|r| roles_of.get(r).copied())
            });
        }
    }
    while verdict.is_none() && !all_done() {
        let now = A::clock_ns();
        if now - last_probe >= PROBE_NS {
            last_probe = now;
            let (cursor, _) = point::progress();
            let edges = waitfor::graph::<A>(smp::nr_cpus(), cursor, point::step_cpu);
            match waitfor::find_cycle(&edges) {
                Some(c) => {
                    let m = waitfor::cycle_cpus(&c);
                    // Only a cycle through a role the schedule holds at a
                    // race point is the schedule's doing; any other is a
                    // deadlock of the kernel.
                    let forced = mode == Mode::Forced && waitfor::holds_at_point(&c);
                    if m != cycle_mask {
                        cycle_mask = m;
                        cycle_since = now;
                    } else if now - cycle_since >= CYCLE_STABLE_NS
                        && forced
                        && waitfor::held_by(&c, variant.fix_waits)
                    {
                        // The fix holds the interleaving back: release the
                        // schedule and let the iteration finish, judged.
                        // Counted once per iteration: a held CPU the host
                        // has not run since the release still shows it.
                        if !held {
                            held = true;
                            rep.held_by_fix += 1;
                        }
                        rep.fix_cycle.get_or_insert_with(|| waitfor::describe(&c));
                        rep.fix_evidence
                            .get_or_insert_with(|| evidence(s, &c, point::role_of));
                        point::abort();
                        cycle_mask = 0;
                    } else if now - cycle_since >= CYCLE_STABLE_NS {
                        rep.cycle = Some(waitfor::describe(&c));
                        rep.evidence = Some(evidence(s, &c, point::role_of));
                        verdict = Some(if forced {
                            Outcome::Impossible
                        } else {
                            // No schedule holds anyone: a real deadlock.
                            Outcome::Hang
                        });
                        break;
                    }
                }
                None => cycle_mask = 0,
            }
            if now - t0 > s.budget.iteration_timeout_ns {
                rep.hang_edges = Some(hang_edges(&edges));
                verdict = Some(Outcome::Hang);
                break;
            }
        }
        // Halt until a role reports done or the tick comes (interrupts off
        // while checking, so the report cannot slip in before the halt).
        A::local_irq_disable();
        if all_done() {
            A::local_irq_enable();
        } else {
            crate::rcu::idle_halt::<A>();
        }
    }
    if verdict.is_some() {
        // Release every CPU held at a point and let the roles finish.
        point::abort();
        let t1 = A::clock_ns();
        while !all_done() {
            if A::clock_ns() - t1 > RECOVER_NS {
                return Err(());
            }
            A::cpu_relax();
        }
    }
    trace::set_enabled(false);
    lap(rep, Phase::Roles);
    rep.iterations += 1;

    let finding = detect::bad_page_since(seq).or_else(|| R::detect(ctx));
    let finding_now = finding.is_some();
    let completed = (0..roles).all(|r| sh.completed[r].load(Ordering::Relaxed));
    if R::overlapped(ctx) {
        rep.overlap += 1;
    }
    if let Some(f) = finding {
        rep.hits += 1;
        if rep.finding.is_none() {
            rep.first_hit_ns = Some(A::clock_ns() - start);
            race_report::<A>(s, variant.name, rep.flush, mode, seed, it, &f);
            rep.finding = Some(f);
        }
    } else if !completed && verdict.is_none() && mode != Mode::Explore {
        rep.incomplete += 1;
    }
    if let (Some(ex), Some(x)) = (explorer.as_deref(), rep.explore.as_mut()) {
        x.max_decisions = x.max_decisions.max(ex.decisions().len());
        match &verdict {
            // A finding after a release counts too, as in forced mode,
            // but only a schedule that ran to its end is one to replay:
            // after a release the roles ran free, in whatever order the
            // host gave them.
            _ if finding_now => {
                let text = explore::format_schedule(
                    &explore::replay_steps(roles, ex.decisions()),
                    s.roles,
                );
                let released = if verdict.is_some() {
                    " (found after the schedule was released)"
                } else {
                    ""
                };
                if rep.hits <= EXPLORE_PRINTED_SCHEDULES {
                    kprintln!(
                        "    # explore: buggy schedule {}{released}: {text}",
                        rep.hits
                    );
                }
                if verdict.is_none() {
                    x.buggy_schedule.get_or_insert(text);
                }
            }
            Some(Outcome::Impossible | Outcome::Skip(_)) => {}
            _ => x.complete += 1,
        }
    }
    point::disarm_all();
    lap(rep, Phase::Detect);
    R::teardown(run, ctx);
    if let Some(mm) = ctx.mm.take() {
        match R::run_mm(run) {
            Some(slot) => slot.0 = Some(mm),
            None => crate::mm::memory::exit_mmap(*mm),
        }
    }
    sh.ctx.store(core::ptr::null_mut(), Ordering::Release);
    // The row's state goes before the state check: what it holds counts.
    *slot = None;
    lap(rep, Phase::Teardown);
    let check = state_check::<A>(free_before);
    lap(rep, Phase::Check);
    if let Some(err) = check {
        rep.state_error = Some(format!("after iteration {it}: {err}"));
        return Ok(false);
    }
    match verdict {
        // Explore: a refused ordering is pruned, a truncated schedule
        // counted, and the exploration goes on.
        Some(Outcome::Impossible | Outcome::Skip(_)) if mode == Mode::Explore => Ok(true),
        Some(v) => {
            rep.outcome = v;
            Ok(false)
        }
        None => Ok(true),
    }
}

/// Buggy schedules explore prints in full (the first one is also in the
/// report).
const EXPLORE_PRINTED_SCHEDULES: u64 = 3;

/// Explore mode's watch over one schedule: waits until every role is parked
/// or done, lets the explorer choose one parked role and grants it its next
/// step, until no role is parked. While a granted role runs, the wait-for
/// graph is read as in forced mode: a persistent cycle through a parked
/// role prunes the schedule (`impossible` for this ordering, counted by its
/// proof in [`ExploreSummary::pruned`]); a cycle without one, or the time
/// limit, is `hang`. Returns the verdict, if the schedule did not finish.
fn explore_watch<A: Mmu>(
    s: &RowInfo,
    fix_waits: &[WaitClass],
    ex: &mut Explorer,
    roles: usize,
    done: &dyn Fn(usize) -> bool,
    rep: &mut Report,
) -> Option<Outcome> {
    ex.begin();
    let t0 = A::clock_ns();
    let mut prev = None;
    loop {
        let settled = || (0..roles).all(|r| done(r) || point::explore_parked(r).is_some());
        let mut last_probe = A::clock_ns();
        let (mut cycle_mask, mut cycle_since) = (0u64, 0u64);
        while !settled() {
            let now = A::clock_ns();
            if now - last_probe >= PROBE_NS {
                last_probe = now;
                let edges = waitfor::graph::<A>(smp::nr_cpus(), 0, point::step_cpu);
                match waitfor::find_cycle(&edges) {
                    Some(c) if waitfor::cycle_cpus(&c) != cycle_mask => {
                        cycle_mask = waitfor::cycle_cpus(&c);
                        cycle_since = now;
                    }
                    Some(c) if now - cycle_since >= EXPLORE_CYCLE_STABLE_NS => {
                        let proof = evidence(s, &c, point::role_of);
                        if !waitfor::holds_at_point(&c) {
                            rep.cycle = Some(waitfor::describe(&c));
                            rep.evidence = Some(proof);
                            return Some(Outcome::Hang);
                        }
                        let key = if waitfor::held_by(&c, fix_waits) {
                            rep.held_by_fix += 1;
                            format!("fix:{proof}")
                        } else {
                            proof
                        };
                        if let Some(x) = rep.explore.as_mut() {
                            match x.pruned.iter_mut().find(|(k, _)| *k == key) {
                                Some((_, n)) => *n += 1,
                                None => x.pruned.push((key, 1)),
                            }
                        }
                        return Some(Outcome::Impossible);
                    }
                    Some(_) => {}
                    None => cycle_mask = 0,
                }
                if now - t0 > s.budget.iteration_timeout_ns {
                    rep.hang_edges = Some(hang_edges(&edges));
                    return Some(Outcome::Hang);
                }
            }
            // Spin: only the granted role runs, so the controller's spin
            // and that role share the host's CPUs with nothing else, and a
            // park is seen without waking a halted CPU. Without `cpu_relax`:
            // under TCG a pause instruction leaves the translated code and
            // takes QEMU's global lock, which the running role's IPIs need.
            for _ in 0..64 {
                core::hint::black_box(0);
            }
        }
        let enabled = point::explore_enabled(roles);
        if enabled.is_empty() {
            if (0..roles).all(&done) {
                return None;
            }
            // Every role left waits for a condition only another could
            // make true: the row's handshakes deadlock in this order.
            rep.hang_edges = Some("every role left waits for a condition at role:wait".into());
            return Some(Outcome::Hang);
        }
        if ex.decisions().len() >= EXPLORE_MAX_DECISIONS {
            if let Some(x) = rep.explore.as_mut() {
                x.truncated += 1;
            }
            point::abort();
            let t1 = A::clock_ns();
            while !(0..roles).all(&done) {
                if A::clock_ns() - t1 > RECOVER_NS {
                    return Some(Outcome::Hang);
                }
                A::cpu_relax();
            }
            return Some(Outcome::Skip("truncated"));
        }
        let r = ex.choose(&enabled, prev);
        prev = Some(r);
        point::explore_grant::<A>(r);
    }
}

/// Checks that an iteration left nothing behind; returns what it left.
pub fn state_check<A: Arch>(free_before: usize) -> Option<String> {
    quiesce_rcu::<A>();
    let free = page_alloc::nr_free_pages();
    let mut errs = Vec::new();
    if free != free_before {
        errs.push(format!(
            "{} frames leaked (free before {free_before}, after {free})",
            free_before as i64 - free as i64
        ));
    }
    let ptls = waitfor::ptls_held();
    if ptls != 0 {
        errs.push(format!("{ptls} PTLs still held"));
    }
    let waiting = waitfor::waiting_cpus();
    if waiting != 0 {
        errs.push(format!("CPUs {waiting:#x} still in a wait"));
    }
    let armed = point::armed_points();
    if !armed.is_empty() {
        errs.push(format!("points still armed: {armed:?}"));
    }
    for cpu in 1..smp::nr_cpus() {
        if percpu::per_cpu(cpu).current_mm.load(Ordering::Acquire) != 0 {
            errs.push(format!("cpu{cpu} still runs a task mm"));
        }
    }
    (!errs.is_empty()).then(|| errs.join("; "))
}

/// Prints the race report of a hit: the broken invariant, frame and
/// address, the run's parameters, and the last events of every CPU in time
/// order.
fn race_report<A: Mmu>(
    s: &RowInfo,
    variant: &str,
    flush: Option<FlushStrategy>,
    mode: Mode,
    seed: u64,
    it: u64,
    f: &Finding,
) {
    kprintln!("    # race: BUG: {}", f.invariant);
    kprintln!(
        "    # race: scenario={} variant={} flush={} mode={} seed={seed:#x} iteration={it} pfn={} vaddr={} seen_by={}",
        s.name,
        variant,
        flush_name::<A>(flush),
        mode_name(mode),
        f.pfn.map_or("-".into(), |p| format!("{p:#x}")),
        f.vaddr.map_or("-".into(), |v| format!("{v:#x}")),
        f.cpu.map_or("-".into(), |c| format!("cpu{c}")),
    );
    let events = trace::snapshot(REPORT_EVENTS_PER_CPU);
    kprintln!(
        "    # race: last {} events of every CPU, in time order:",
        REPORT_EVENTS_PER_CPU
    );
    let roles = s.roles;
    trace::print(&events, |cpu| {
        point::role_of(cpu).and_then(|r| roles.get(r).copied())
    });
}

/// Events per CPU in a race report.
pub const REPORT_EVENTS_PER_CPU: usize = 24;

/// `natural` or `forced`.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Natural => "natural",
        Mode::Forced => "forced",
        Mode::Explore => "explore",
    }
}

/// The wait-for edges at a hang's time limit, as its report prints them.
fn hang_edges(edges: &[waitfor::Edge]) -> String {
    if edges.is_empty() {
        return "no CPU waits for another".into();
    }
    let lines: Vec<String> = edges.iter().map(|e| format!("{e}")).collect();
    lines.join("; ")
}

/// Runs what `scenario=` (with `variant=`, `flush=`, `mode=`) selects as
/// the KTAP suite `scenario`, one case `row:variant:mode` each
/// (`row:variant@flush:mode` for a row with a flush axis, once per
/// strategy of [`RowInfo::flush`] that the architecture implements), with
/// the diagnostic `row= variant= flush= mode= outcome= iterations= hits=
/// first_hit_ns= ...`. `flush=` keeps the cases of that strategy (rows
/// without a flush axis have none).
/// Returns whether every case completed (bug, clean, impossible and skip
/// are results; hang, vacuous and a failed state check are failures).
pub fn run_selected<A: Mmu>(args: &Cmdline, ktap: &mut Run) -> bool {
    let name = args.scenario.unwrap_or("all");
    let rows = all::<A>();
    let known: Vec<&str> = rows.iter().map(|s| s.name).collect();
    let chosen: Vec<&Scenario<A>> = rows
        .iter()
        .filter(|s| name == "all" || s.name == name)
        .collect();
    if chosen.is_empty() {
        ktap.plan(1);
        ktap.result(
            false,
            "scenario",
            Some(&format!(
                "unknown scenario '{name}' (known: all, {})",
                known.join(", ")
            )),
        );
        return false;
    }
    let modes: Vec<Mode> = match args.mode {
        Some(m) => vec![m],
        None => vec![Mode::Forced, Mode::Natural],
    };
    let flush_arg = match args.flush.map(FlushStrategy::from_name) {
        None => None,
        Some(Some(f)) if A::FLUSH_STRATEGIES.contains(&f) => Some(f),
        Some(_) => {
            let have: Vec<&str> = A::FLUSH_STRATEGIES.iter().map(|f| f.name()).collect();
            ktap.plan(1);
            ktap.result(
                false,
                "scenario",
                Some(&format!(
                    "flush={}: this architecture's flush strategies are {}",
                    args.flush.unwrap_or(""),
                    have.join(", ")
                )),
            );
            return false;
        }
    };
    let mut cases: Vec<(&Scenario<A>, usize, Option<FlushStrategy>, Mode)> = Vec::new();
    for s in &chosen {
        for (i, v) in s.variants.iter().enumerate() {
            if args.variant.is_some_and(|w| w != v.name) {
                continue;
            }
            for flush in flush_axis(s) {
                if flush_arg.is_some() && flush != flush_arg {
                    continue;
                }
                for &m in &modes {
                    cases.push((s, i, flush, m));
                }
            }
        }
    }
    if cases.is_empty() {
        ktap.plan(1);
        let names: Vec<&str> = chosen
            .iter()
            .flat_map(|s| s.variants.iter().map(|v| v.name))
            .collect();
        let why = match (args.variant, args.flush) {
            (Some(v), _) if !names.contains(&v) => {
                format!("unknown variant '{v}' (known: {})", names.join(", "))
            }
            _ => format!(
                "no case runs under flush={} (rows without a flush axis run under the default only)",
                args.flush.unwrap_or("")
            ),
        };
        ktap.result(false, "scenario", Some(&why));
        return false;
    }
    ktap.plan(1);
    let mut suite = ktap.suite("scenario", cases.len());
    for (s, i, flush, m) in cases {
        let v = &s.variants[i];
        let case = match flush {
            Some(f) => format!("{}:{}@{}:{}", s.name, v.name, f.name(), mode_name(m)),
            None => format!("{}:{}:{}", s.name, v.name, mode_name(m)),
        };
        let schedule = match args.schedule.map(|t| parse_row_schedule(s, t)) {
            None => None,
            Some(Ok(steps)) => Some(steps),
            Some(Err(e)) => {
                suite.case(&case, &KtapOutcome::Fail(format!("schedule=: {e}")));
                continue;
            }
        };
        let cfg = RunConfig {
            flush,
            iterations: args.iterations.filter(|_| m != Mode::Forced),
            bound: args.bound,
            schedule,
            time_budget_ns: args.budget_ms.map(|t| t * 1_000_000),
            delays: args.delays,
            progress_ns: args.progress_s.map(|t| t * 1_000_000_000),
            stop_at_hit: args.stop_at_hit,
            inject: args.inject,
            ..RunConfig::new(m, args.seed)
        };
        let r = s.run(i, &cfg);
        print_report::<A>(s.name, v.name, m, &r);
        let outcome = match (&r.outcome, &r.state_error) {
            (_, Some(e)) => KtapOutcome::Fail(e.clone()),
            (Outcome::Skip(why), None) => KtapOutcome::Skip(why),
            (o, None) if o.is_failure() => KtapOutcome::Fail(format!(
                "{}{}",
                o.word(),
                r.hang_edges
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (wait-for edges: {e})"))
            )),
            _ => KtapOutcome::Pass,
        };
        suite.case(&case, &outcome);
    }
    ktap.end_suite(suite)
}

/// Parses a `schedule=` text for the row `s`: its roles by name, its points
/// among the mm code's, the runner's and the row's own.
fn parse_row_schedule<A: Mmu>(s: &Scenario<A>, text: &str) -> Result<Vec<Step>, String> {
    explore::parse_schedule(text, s.roles, |name| {
        point::points::by_name(name).or_else(|| {
            s.schedule
                .iter()
                .map(|st| st.point)
                .chain(s.delay_points.iter().copied())
                .chain(s.trace_points.iter().copied())
                .find(|p| p.name == name)
        })
    })
}

/// The flush strategies a row's variants run under: each of
/// [`RowInfo::flush`] that the architecture implements, or only the
/// architecture's default (`None`) for a row without a flush axis.
pub fn flush_axis<A: Mmu>(s: &Scenario<A>) -> Vec<Option<FlushStrategy>> {
    if s.flush.is_empty() {
        return vec![None];
    }
    s.flush
        .iter()
        .filter(|f| A::FLUSH_STRATEGIES.contains(f))
        .map(|&f| Some(f))
        .collect()
}

/// The strategy a run used, by name: the given one, or the
/// architecture's default.
fn flush_name<A: Mmu>(flush: Option<FlushStrategy>) -> &'static str {
    flush.unwrap_or(A::FLUSH_STRATEGIES[0]).name()
}

/// Prints a run's figures as one diagnostic line (and the cycle, if any).
pub fn print_report<A: Mmu>(row: &str, variant: &str, mode: Mode, r: &Report) {
    let secs = r.elapsed_ns.max(1) as f64 / 1e9;
    kprintln!(
        "    # row={row} variant={variant} flush={} mode={} outcome={} iterations={} hits={} overlap={} first_hit_ns={} iters_per_sec={} incomplete={} held_by_fix={} seed={:#x} elapsed_ms={} delays={} evidence={} fix_evidence={}",
        flush_name::<A>(r.flush),
        mode_name(mode),
        r.outcome.word(),
        r.iterations,
        r.hits,
        r.overlap,
        r.first_hit_ns.map_or("-".into(), |t| format!("{t}")),
        (r.iterations as f64 / secs) as u64,
        r.incomplete,
        r.held_by_fix,
        r.seed,
        r.elapsed_ns / 1_000_000,
        u8::from(r.delays),
        r.evidence.as_deref().unwrap_or("-"),
        r.fix_evidence.as_deref().unwrap_or("-")
    );
    if let Some(x) = &r.explore {
        kprintln!(
            "    # explore: row={row} variant={variant} flush={} schedules={} complete={} pruned={} buggy={} exhausted={} bound={} gave_up={} divergent={} truncated={} max_decisions={} elapsed_ms={}",
            flush_name::<A>(r.flush),
            r.iterations,
            x.complete,
            x.pruned_total(),
            r.hits,
            u8::from(x.exhausted),
            x.bound.map_or("none".into(), |b| format!("{b}")),
            x.gave_up.map_or("-".into(), |(b, n)| format!("{b}:{n}")),
            x.divergent,
            x.truncated,
            x.max_decisions,
            r.elapsed_ns / 1_000_000
        );
        for (proof, n) in &x.pruned {
            kprintln!("    # explore: pruned={n} by={proof}");
        }
        if let Some(t) = &x.buggy_schedule {
            kprintln!("    # explore: schedule={t}");
        }
    }
    if let Some(c) = &r.cycle {
        kprintln!("    # cycle: {c}");
    }
    if let Some(c) = &r.fix_cycle {
        kprintln!("    # held by the fix: {c}");
    }
    if let Some(e) = &r.hang_edges {
        kprintln!("    # hang: wait-for edges at the time limit: {e}");
    }
    // Where the time went, per iteration on average.
    let per_it = |ns: u64| ns / r.iterations.max(1) / 1000;
    let mut time = alloc::string::String::new();
    for p in Phase::ALL {
        time.push_str(&format!(
            " {}_us={}",
            p.name(),
            per_it(r.phase_ns[p as usize])
        ));
    }
    let timed: u64 = r.phase_ns.iter().sum();
    kprintln!(
        "    # time: row={row} variant={variant} flush={} per_iteration{time} other_us={}",
        flush_name::<A>(r.flush),
        per_it(r.elapsed_ns.saturating_sub(timed))
    );
}

/// CPUs a forced schedule can name (roles of one scenario).
pub const MAX_ROLES: usize = 8;
const _: () = assert!(MAX_ROLES < NR_CPUS);
