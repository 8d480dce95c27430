//! The `race` suite: the scenario machinery proven on real hardware paths.
//!
//! Every case runs real roles on real CPUs through [`scenario::run`] (or the
//! race points directly) and checks what the hardware and the kernel state
//! show: the order of the trace rings, a real IPI held in a real interrupt
//! controller by a CPU waiting at a point with interrupts off, real
//! deadlocks through an IPI, a PTL and an RCU grace period found by the
//! prover, a hang without a cycle, a real bad free caught by the detector.

use super::detect::Finding;
use super::point::{self, points, race_point, Arming, RacePoint, Step};
use super::scenario::{self, Budget, Ctx, Outcome as RaceOutcome, Row, RowInfo, Variant};
use super::trace::{self, Kind};
use super::waitfor::{self, WaitClass};
use crate::cmdline::{Cmdline, Mode};
use crate::ktap::Outcome;
use crate::mm::arch::Mmu;
use crate::mm::mm::VmFlags;
use crate::mm::selftest::{leak_checked, no_leak};
use crate::mm::{memory, page_alloc, pgtable, tlbflush, PAGE_SIZE};
use crate::schedule;
use crate::{diag, percpu, smp, time};
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The suite's name.
pub(crate) const SUITE: &str = "race";

/// The cases, in order.
pub(crate) fn cases<A: Mmu>() -> Vec<(&'static str, crate::selftest::TestFn)> {
    crate::selftest::test_cases![
        A;
        unarmed_point_cost, forced_schedule_followed, waiter_keeps_irqs_off,
        natural_seed_repeats, trace_merge_in_time_order, impossible_ipi_cycle,
        impossible_ptl_cycle, impossible_rcu_cycle, hang_without_cycle, detector_race_report,
        state_check_catches_leak,
    ]
}

fn fail(msg: String) -> Outcome {
    Outcome::Fail(msg)
}

static ONE_VARIANT: [Variant; 1] = [Variant::new(
    "test",
    "the framework's own test",
    "no Linux kernel: the framework's own test",
    &[],
    (),
)];

/// Variants whose "fix" adds the cross-CPU call wait, and one whose fix
/// adds a different wait (the PTL).
static FIX_VARIANTS: [Variant; 2] = [
    Variant::new(
        "fix-call",
        "a fix that waits for a cross-CPU call",
        "no Linux kernel: a fix that waits for a cross-CPU call",
        &[WaitClass::CallIpi],
        (),
    ),
    Variant::new(
        "fix-ptl",
        "a fix that holds a PTL",
        "no Linux kernel: a fix that holds a PTL",
        &[WaitClass::Ptl],
        (),
    ),
];

const A_ROLE: usize = 0;
const B_ROLE: usize = 1;

static TWO_ROLES: [&str; 2] = ["A", "B"];
static ONE_ROLE: [&str; 1] = ["A"];

/// What a test row's roles share: A is at its point (`ready`), and the
/// words the roles report to the test.
#[derive(Default)]
struct Words {
    ready: AtomicBool,
    w: [AtomicU64; 6],
}

/// A framework test row: what it varies (roles, code, schedule, an mm)
/// over [`T`], which makes it a [`Row`] with short budgets.
trait TestRow<A: Mmu>: Sized + 'static {
    const NAME: &'static str;
    const ROLES: &'static [&'static str] = &TWO_ROLES;
    const VARIANTS: &'static [Variant] = &ONE_VARIANT;
    /// An iteration over this long is a hang.
    const TIMEOUT_NS: u64 = 2_000_000_000;
    const DELAY_POINTS: &'static [&'static RacePoint] = &[];
    /// The iteration's mm maps one anonymous page at `ctx.addr`.
    const MM: bool = false;
    fn role(ctx: &Ctx<A, T<Self>>, role: usize) -> bool;
    /// After the mm (if any) is set up.
    fn setup(_ctx: &mut Ctx<A, T<Self>>) -> Result<(), String> {
        Ok(())
    }
    fn detect(_ctx: &Ctx<A, T<Self>>) -> Option<Finding> {
        None
    }
    /// Default: B reached test:b before A left test:a.
    fn overlapped(ctx: &Ctx<A, T<Self>>) -> bool {
        let b = ctx.first_pass(B_ROLE, &points::TEST_B);
        let a = ctx.first_pass(A_ROLE, &points::TEST_A);
        matches!((b, a), (Some(b), Some(a)) if b.before(&a))
    }
    /// Default: A holds at test:a until B has reached test:b.
    const SCHEDULE: &'static [Step] = schedule![
        A_ROLE at points::TEST_A;
        B_ROLE at points::TEST_B;
        A_ROLE leave points::TEST_A;
    ];
}

/// The row of a [`TestRow`].
struct T<X>(core::marker::PhantomData<X>);

impl<A: Mmu, X: TestRow<A>> Row<A> for T<X> {
    const INFO: RowInfo = RowInfo {
        seed: "none: the framework's own test row",
        schedule: X::SCHEDULE,
        delay_points: X::DELAY_POINTS,
        max_delay_ns: NATURAL_MAX_NS,
        budget: Budget {
            forced_iterations: 1,
            natural_iterations: 1,
            natural_time_ns: 5_000_000_000,
            iteration_timeout_ns: X::TIMEOUT_NS,
        },
        ..RowInfo::new(X::NAME, "framework test", X::ROLES)
    };
    type Config = ();
    const VARIANTS: &'static [Variant] = X::VARIANTS;
    type State = Words;
    type Run = ();

    fn setup(_: &mut (), ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        if X::MM {
            let mm = crate::mm::selftest::new_mm::<A>()
                .map_err(|_| String::from("no memory for an mm"))?;
            memory::mmap_anon(&mm, A::TASK_BASE, PAGE_SIZE, VmFlags::RW, false)
                .map_err(|e| format!("mmap: {e:?}"))?;
            ctx.addr = A::TASK_BASE;
            ctx.mm = Some(mm);
        }
        X::setup(ctx)
    }

    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool {
        X::role(ctx, role)
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        X::detect(ctx)
    }

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        X::overlapped(ctx)
    }
}

/// Runs the test row `X` in `variant` and `mode`.
fn run_test<A: Mmu, X: TestRow<A>>(
    variant: &'static Variant,
    mode: Mode,
    seed: u64,
    iterations: Option<u64>,
) -> scenario::Report {
    scenario::run::<A, T<X>>(variant, mode, seed, iterations)
}

/// A until-B handshake: A says it is at (or about to reach) its point;
/// B waits for that.
fn a_ready(w: &Words) {
    w.ready.store(true, Ordering::Release);
}

fn wait_a_ready<A: Mmu>(w: &Words) {
    while !w.ready.load(Ordering::Acquire) {
        A::cpu_relax();
    }
}

fn needs(cpus: usize) -> Option<Outcome> {
    (smp::nr_cpus() < cpus).then_some(Outcome::Skip(if cpus == 2 {
        "needs 2 or more CPUs"
    } else {
        "needs 3 or more CPUs (a controller and two roles)"
    }))
}

/// Runs `test` where the machine has `cpus` CPUs (a controller and the
/// roles), checking that it leaks no frame; `skip` on a smaller machine.
fn on_cpus(cpus: usize, test: impl FnOnce() -> Outcome) -> Outcome {
    match needs(cpus) {
        Some(skip) => skip,
        None => no_leak(test),
    }
}

fn other_cpu(role: usize) -> usize {
    point::cpu_of(role).expect("role has a CPU")
}

// ---- cost -------------------------------------------------------------------------

/// Measures an unarmed race point (above an empty loop) and one armed for
/// tracing, printed as `race_point_unarmed_ns` and
/// `race_point_armed_trace_ns`. The cost is a `cargo xtask bench` figure with
/// a target, never a failure here: the case fails only if an armed point
/// does not trace every pass.
fn unarmed_point_cost<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        const N: u64 = 1_000_000;
        let p: &'static RacePoint = &points::TEST_C;
        if p.armed() {
            return fail("test:c is armed before the test".into());
        }
        let flags = A::local_irq_save();
        let t0 = A::clock_ns();
        for i in 0..N {
            core::hint::black_box(i);
        }
        let base = A::clock_ns() - t0;
        let t1 = A::clock_ns();
        for i in 0..N {
            race_point::<A>(p, core::hint::black_box(i));
        }
        let unarmed = A::clock_ns() - t1;
        // Armed for tracing only, tracing on: the slow path.
        point::arm(p, Arming::Trace);
        trace::set_enabled(true);
        const M: u64 = 10_000;
        let t2 = A::clock_ns();
        for i in 0..M {
            race_point::<A>(p, core::hint::black_box(i));
        }
        let armed = A::clock_ns() - t2;
        trace::set_enabled(false);
        point::disarm_all();
        A::local_irq_restore(flags);
        let traced = trace::events_of(A::smp_processor_id())
            .iter()
            .filter(|e| e.kind == Kind::Point && e.point().is_some_and(|q| core::ptr::eq(q, p)))
            .count();
        trace::clear();
        let per_milli = unarmed.saturating_sub(base) * 1000 / N;
        diag!(
            "race_point_unarmed_ns={}.{:03} loop_ns={}.{:03} race_point_armed_trace_ns={}",
            per_milli / 1000,
            per_milli % 1000,
            base * 1000 / N / 1000,
            base * 1000 / N % 1000,
            armed / M
        );
        if traced != trace::RING_LEN {
            return fail(format!(
                "an armed point left {traced} events in a ring of {}",
                trace::RING_LEN
            ));
        }
        Outcome::Pass
    })
}

// ---- forced schedule ----------------------------------------------------------------

/// Each role passes test:a then test:b; A would naturally be first (B
/// starts 2 ms late, and in natural mode only once A has passed both), the
/// schedule makes B reach both before A leaves a.
struct Sched;

impl<A: Mmu> TestRow<A> for Sched {
    const NAME: &'static str = "sched";
    fn role(ctx: &Ctx<A, T<Self>>, role: usize) -> bool {
        if role == B_ROLE {
            time::ndelay::<A>(2_000_000);
            if ctx.mode == Mode::Natural {
                wait_a_ready::<A>(&ctx.state);
            }
        }
        race_point::<A>(&points::TEST_A, role as u64);
        race_point::<A>(&points::TEST_B, role as u64);
        if role == A_ROLE {
            a_ready(&ctx.state);
        }
        true
    }
    const SCHEDULE: &'static [Step] = schedule![
        A_ROLE at points::TEST_A;
        B_ROLE at points::TEST_A, points::TEST_B;
        A_ROLE leave points::TEST_A;
        A_ROLE at points::TEST_B;
    ];
}

fn forced_schedule_followed<A: Mmu>(_: &Cmdline) -> Outcome {
    on_cpus(3, || {
        let r = run_test::<A, Sched>(&ONE_VARIANT[0], Mode::Forced, 1, None);
        let steps = <Sched as TestRow<A>>::SCHEDULE;
        let events = trace::snapshot(trace::RING_LEN);
        let taken: Vec<(usize, u64)> = events
            .iter()
            .filter(|e| e.kind == Kind::Step)
            .map(|e| (e.cpu, e.b))
            .collect();
        let want: Vec<(usize, u64)> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.role + 1, i as u64))
            .collect();
        let hits: Vec<String> = events
            .iter()
            .filter(|e| e.kind == Kind::Point)
            .map(|e| format!("cpu{}:{}", e.cpu, e.point().map_or("?", |p| p.name)))
            .collect();
        diag!(
            "steps_taken={taken:?} points_in_time_order={}",
            hits.join(",")
        );
        if r.outcome != RaceOutcome::Clean || r.failed() {
            return fail(format!("outcome {:?} ({:?})", r.outcome, r.state_error));
        }
        if taken != want {
            return fail(format!("steps taken {taken:?}, schedule {want:?}"));
        }
        // The roles met inside A's hold at test:a (B reached test:b before
        // A left), as the passes' sequence numbers show; left to themselves
        // (natural, B waiting for A) they never do.
        let apart = run_test::<A, Sched>(&ONE_VARIANT[0], Mode::Natural, 1, Some(3));
        diag!(
            "overlap_forced={} of {} overlap_natural_apart={} of {}",
            r.overlap,
            r.iterations,
            apart.overlap,
            apart.iterations
        );
        if r.overlap != r.iterations || apart.overlap != 0 || apart.iterations != 3 {
            return fail(format!(
                "overlap {} of {} forced (all expected), {} of {} apart (none expected)",
                r.overlap, r.iterations, apart.overlap, apart.iterations
            ));
        }
        // B's arrival at test:b precedes A's leaving test:a in wall time too.
        let t_of = |cpu: usize, idx: u64| {
            events
                .iter()
                .find(|e| e.kind == Kind::Step && e.cpu == cpu && e.b == idx)
                .map(|e| e.t)
        };
        match (t_of(2, 2), t_of(1, 3)) {
            (Some(b), Some(a)) if b <= a => Outcome::Pass,
            other => fail(format!("step times {other:?}")),
        }
    })
}

// ---- interrupts off while waiting -----------------------------------------------------

fn noop(_: usize) {}

/// A: interrupts off, holds at test:a. B: once A is there, sends A an IPI,
/// watches A not take it for 20 ms, reads the IPI pending from the hardware,
/// then releases A at test:b.
struct Irqs;

/// What the irqs row's roles saw, copied out by its detector.
static IRQS_SEEN: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

impl<A: Mmu> TestRow<A> for Irqs {
    const NAME: &'static str = "irqs";
    fn detect(ctx: &Ctx<A, T<Self>>) -> Option<Finding> {
        for (seen, w) in IRQS_SEEN.iter().zip(&ctx.state.w) {
            seen.store(w.load(Ordering::Acquire), Ordering::Relaxed);
        }
        None
    }
    fn role(ctx: &Ctx<A, T<Self>>, role: usize) -> bool {
        let w = &ctx.state;
        if role == A_ROLE {
            let flags = A::local_irq_save();
            a_ready(w);
            race_point::<A>(&points::TEST_A, 0);
            w.w[4].store(A::irqs_disabled() as u64, Ordering::Release);
            w.w[5].store(
                percpu::this_cpu::<A>().ipis.load(Ordering::Acquire),
                Ordering::Release,
            );
            A::local_irq_restore(flags);
            return true;
        }
        let a = other_cpu(A_ROLE);
        wait_a_ready::<A>(w);
        // A is at the point or about to be; give it time to start waiting.
        time::ndelay::<A>(1_000_000);
        let ipis = &percpu::per_cpu(a).ipis;
        let before = ipis.load(Ordering::Acquire);
        let sent_at = A::clock_ns();
        smp::smp_call_function_single::<A>(a, noop, 0, false);
        time::ndelay::<A>(20_000_000);
        let during = ipis.load(Ordering::Acquire);
        // The hardware's view: remotely where it can be read, else A's own
        // sample taken after the IPI was sent.
        let pending = match A::ipi_pending(a) {
            Some(p) => p,
            None => waitfor::ipi_sample(a).is_some_and(|(p, t)| p && t > sent_at),
        };
        w.w[1].store(before, Ordering::Release);
        w.w[2].store(during, Ordering::Release);
        w.w[3].store(pending as u64, Ordering::Release);
        race_point::<A>(&points::TEST_B, 0);
        true
    }
}

fn waiter_keeps_irqs_off<A: Mmu>(_: &Cmdline) -> Outcome {
    if let Some(skip) = crate::platform::skip_without(crate::platform::Property::IpiHeldByIrqsOff) {
        return skip;
    }
    on_cpus(3, || {
        let changes = point::irq_state_changes();
        let r = run_test::<A, Irqs>(&ONE_VARIANT[0], Mode::Forced, 1, None);
        let w: Vec<u64> = IRQS_SEEN
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        let a = 1;
        let after = percpu::per_cpu(a).ipis.load(Ordering::Acquire);
        diag!(
            "ipis_before={} ipis_after_20ms_wait={} ipi_pending_in_hw={} irqs_off_at_leave={} ipis_at_leave={} ipis_later={after}",
            w[1], w[2], w[3], w[4], w[5]
        );
        if r.outcome != RaceOutcome::Clean || r.failed() {
            return fail(format!("outcome {:?} ({:?})", r.outcome, r.state_error));
        }
        if w[2] != w[1] || w[5] != w[1] {
            return fail(format!(
                "cpu{a} took an IPI while it waited with interrupts off ({} -> {} -> {})",
                w[1], w[2], w[5]
            ));
        }
        if w[3] != 1 {
            return fail("the interrupt hardware did not show the IPI pending".into());
        }
        if w[4] != 1 || point::irq_state_changes() != changes {
            return fail("interrupts were enabled while the CPU waited at the point".into());
        }
        if after <= w[5] {
            return fail("the held IPI was never taken after the point".into());
        }
        Outcome::Pass
    })
}

// ---- natural mode ---------------------------------------------------------------------

const NATURAL_HITS: u64 = 32;
const NATURAL_MAX_NS: u64 = 5_000;
struct Natural;

impl<A: Mmu> TestRow<A> for Natural {
    const NAME: &'static str = "natural";
    const ROLES: &'static [&'static str] = &ONE_ROLE;
    const DELAY_POINTS: &'static [&'static RacePoint] = &[&points::TEST_A];
    fn role(_: &Ctx<A, T<Self>>, _: usize) -> bool {
        for i in 0..NATURAL_HITS {
            race_point::<A>(&points::TEST_A, i);
        }
        true
    }
    const SCHEDULE: &'static [Step] = &[];
}

/// The delays of the last iteration, from CPU 1's trace ring.
fn natural_delays<A: Mmu>(seed: u64) -> Result<Vec<u64>, Outcome> {
    let r = run_test::<A, Natural>(&ONE_VARIANT[0], Mode::Natural, seed, Some(2));
    if r.outcome != RaceOutcome::Clean || r.failed() || r.iterations != 2 {
        return Err(fail(format!(
            "natural run: {:?} after {} iterations ({:?})",
            r.outcome, r.iterations, r.state_error
        )));
    }
    Ok(trace::events_of(1)
        .iter()
        .filter(|e| e.kind == Kind::Delay)
        .map(|e| e.b)
        .collect())
}

fn natural_seed_repeats<A: Mmu>(_: &Cmdline) -> Outcome {
    on_cpus(2, || {
        const SEED: u64 = 0x1234_5678;
        let first = match natural_delays::<A>(SEED) {
            Ok(d) => d,
            Err(o) => return o,
        };
        // The rings now hold the second run's last iteration: the delays as
        // taken, with time stamps.
        let again = match natural_delays::<A>(SEED) {
            Ok(d) => d,
            Err(o) => return o,
        };
        let events = trace::events_of(1);
        let passes = trace::passes(1, &points::TEST_A);
        let other = match natural_delays::<A>(SEED + 1) {
            Ok(d) => d,
            Err(o) => return o,
        };
        let expect: Vec<u64> = (0..NATURAL_HITS)
            .map(|k| point::delay_for(SEED, 1, 0, &points::TEST_A, k, NATURAL_MAX_NS))
            .collect();
        let total: u64 = first.iter().sum();
        diag!(
            "seed={SEED:#x} delays={} total_delay_ns={total} first={:?}",
            first.len(),
            &first[..4.min(first.len())]
        );
        if first != expect {
            return fail(format!(
                "delays {first:?} differ from the seed's {expect:?}"
            ));
        }
        if again != first {
            return fail("the same seed gave other delays".into());
        }
        if other == first {
            return fail("another seed gave the same delays".into());
        }
        // One pass per hit, in order; a pass left after its arrival exactly
        // when it was delayed.
        let shape: Vec<(u64, bool)> = passes
            .iter()
            .map(|p| (p.addr, p.left > p.arrived))
            .collect();
        let want: Vec<(u64, bool)> = (0..NATURAL_HITS)
            .zip(again.iter().map(|&d| d != 0))
            .collect();
        if shape != want || passes.windows(2).any(|w| w[0].left >= w[1].arrived) {
            return fail(format!(
                "passes (addr, delayed) {shape:?}, the delays say {want:?}"
            ));
        }
        // Each delay was really waited: the next point came at least that late.
        let delays: Vec<&trace::Event> = events.iter().filter(|e| e.kind == Kind::Delay).collect();
        for w in delays.windows(2) {
            if w[1].t - w[0].t < w[0].b {
                return fail(format!(
                    "a delay of {} ns lasted {} ns",
                    w[0].b,
                    w[1].t - w[0].t
                ));
            }
        }
        Outcome::Pass
    })
}

// ---- trace rings ------------------------------------------------------------------------

/// A stores to its page (a fault), then holds at test:a with interrupts on.
/// B reaches test:b, zaps the page (MADV_DONTNEED: PTE clear, then the
/// gather's flush), and only after the flush A goes on.
struct TraceRow;

impl<A: Mmu> TestRow<A> for TraceRow {
    const NAME: &'static str = "trace";
    const MM: bool = true;
    fn role(ctx: &Ctx<A, T<Self>>, role: usize) -> bool {
        if role == A_ROLE {
            // SAFETY: the CPU runs the iteration's mm (the runner's `use_mm`),
            // where `ctx.addr` is a writable anonymous page.
            unsafe { core::ptr::write_volatile(ctx.addr as *mut u64, 0x7ace) };
            trace::mark(&points::TEST_C, 0x7ace);
            race_point::<A>(&points::TEST_A, ctx.addr);
            return true;
        }
        race_point::<A>(&points::TEST_B, ctx.addr);
        memory::madvise_dontneed(ctx.mm(), ctx.addr, PAGE_SIZE).is_ok()
    }

    const SCHEDULE: &'static [Step] = schedule![
        A_ROLE at points::TEST_A;
        B_ROLE at points::TEST_B, points::ZAP_AFTER_PTE_CLEAR, points::GATHER_AFTER_FLUSH;
        A_ROLE leave points::TEST_A;
    ];
}

fn trace_merge_in_time_order<A: Mmu>(_: &Cmdline) -> Outcome {
    on_cpus(3, || {
        let r = run_test::<A, TraceRow>(&ONE_VARIANT[0], Mode::Forced, 1, None);
        if r.outcome != RaceOutcome::Clean || r.failed() {
            return fail(format!("outcome {:?} ({:?})", r.outcome, r.state_error));
        }
        let events = trace::snapshot(trace::RING_LEN);
        trace::print(&events, |cpu| match cpu {
            1 => Some("A"),
            2 => Some("B"),
            _ => None,
        });
        if events.windows(2).any(|w| w[0].t > w[1].t) {
            return fail("merged events are not in time order".into());
        }
        let find = |cpu: usize, k: Kind| events.iter().find(|e| e.cpu == cpu && e.kind == k);
        let (Some(fault), Some(mark), Some(flush)) = (
            find(1, Kind::Fault),
            find(1, Kind::Mark),
            find(2, Kind::FlushIssue),
        ) else {
            return fail("a fault on A, its mark and a flush on B must be in the rings".into());
        };
        let leave = events
            .iter()
            .find(|e| e.kind == Kind::Step && e.cpu == 1 && e.b == 4);
        let Some(leave) = leave else {
            return fail("A's leaving step is not in the ring".into());
        };
        if !(fault.t <= mark.t && mark.t <= flush.t && flush.t <= leave.t) {
            return fail("fault, mark, B's flush and A's leaving are out of order".into());
        }
        // Who else saw the flush depends on the hardware: an IPI shootdown
        // reaches A (interrupts on at its point) before it leaves; a
        // broadcast invalidation sends nothing.
        let strategy = tlbflush::flush_strategy::<A>();
        let recv = find(1, Kind::FlushRecv);
        let sent = find(2, Kind::FlushIpiSent).or(find(2, Kind::FlushNmiSent));
        diag!(
            "events={} flush_strategy={} flush_ipi_sent={} flush_served_by_A={}",
            events.len(),
            strategy.name(),
            sent.is_some(),
            recv.is_some()
        );
        match (strategy.is_broadcast(), sent, recv) {
            (true, None, None) => Outcome::Pass,
            (false, Some(s), Some(rv)) if s.t <= rv.t && rv.t <= leave.t => Outcome::Pass,
            (_, sent, recv) => fail(format!(
                "flush events do not match the {} strategy: IPI sent at {:?}, served by A at {:?}, A left at {}",
                strategy.name(),
                sent.map(|e| e.t),
                recv.map(|e| e.t),
                leave.t
            )),
        }
    })
}

// ---- the prover ---------------------------------------------------------------------------

fn check_impossible(r: &scenario::Report, evidence: &str) -> Outcome {
    let cycle = r.cycle.clone().unwrap_or_default();
    diag!("outcome={} cycle=\"{cycle}\"", r.outcome.word());
    if r.failed() {
        return fail(format!("run failed: {:?} {:?}", r.outcome, r.state_error));
    }
    if r.outcome != RaceOutcome::Impossible {
        return fail(format!("outcome {:?}, expected impossible", r.outcome));
    }
    if !cycle.contains(evidence) || !cycle.contains("waits at a race point") {
        return fail(format!("the cycle lacks '{evidence}': {cycle}"));
    }
    Outcome::Pass
}

/// A: interrupts off at test:a until B reaches test:b; B first waits for a
/// cross-CPU call on A.
struct IpiCycle;

impl<A: Mmu> TestRow<A> for IpiCycle {
    const NAME: &'static str = "ipi-cycle";
    fn role(ctx: &Ctx<A, T<Self>>, role: usize) -> bool {
        if role == A_ROLE {
            return hold_irqs_off::<A>(&ctx.state);
        }
        wait_a_ready::<A>(&ctx.state);
        smp::smp_call_function_single::<A>(other_cpu(A_ROLE), noop, 0, true);
        race_point::<A>(&points::TEST_B, 0);
        true
    }
}

/// Role A of the cycle rows: interrupts off at test:a.
fn hold_irqs_off<A: Mmu>(w: &Words) -> bool {
    let flags = A::local_irq_save();
    a_ready(w);
    race_point::<A>(&points::TEST_A, 0);
    A::local_irq_restore(flags);
    true
}

fn impossible_ipi_cycle<A: Mmu>(_: &Cmdline) -> Outcome {
    on_cpus(3, || {
        let r = run_test::<A, IpiCycle>(&ONE_VARIANT[0], Mode::Forced, 1, None);
        let o = check_impossible(&r, "the IPI is pending on cpu1");
        if !matches!(o, Outcome::Pass) {
            return o;
        }
        // A fix that adds some other wait does not explain the cycle.
        let r = run_test::<A, IpiCycle>(&FIX_VARIANTS[1], Mode::Forced, 1, None);
        let o = check_impossible(&r, "the IPI is pending on cpu1");
        if !matches!(o, Outcome::Pass) {
            return o;
        }
        // A fix whose own wait is the call: the fix holds the schedule
        // back; released, every iteration completes and nothing fires.
        let r = run_test::<A, IpiCycle>(&FIX_VARIANTS[0], Mode::Forced, 1, None);
        let fix_cycle = r.fix_cycle.clone().unwrap_or_default();
        diag!(
            "fix-call: outcome={} held_by_fix={} iterations={} cycle=\"{fix_cycle}\"",
            r.outcome.word(),
            r.held_by_fix,
            r.iterations
        );
        if r.failed() || r.outcome != RaceOutcome::Clean {
            return fail(format!("fix-call: outcome {:?}, expected clean", r.outcome));
        }
        if r.held_by_fix != r.iterations || r.iterations == 0 {
            return fail(format!(
                "fix-call: held by the fix in {} of {} iterations",
                r.held_by_fix, r.iterations
            ));
        }
        if !fix_cycle.contains("cross-CPU call IPI") {
            return fail(format!(
                "fix-call: the cycle lacks the call IPI: {fix_cycle}"
            ));
        }
        Outcome::Pass
    })
}

/// A holds the PTL of its page's table at test:a; B zaps the page
/// (MADV_DONTNEED), which needs that PTL, before test:b.
struct PtlCycle;

impl<A: Mmu> TestRow<A> for PtlCycle {
    const NAME: &'static str = "ptl-cycle";
    const MM: bool = true;
    fn setup(ctx: &mut Ctx<A, T<Self>>) -> Result<(), String> {
        // The page's PTE table, populated from the controller.
        crate::mm::pgtable::pte_alloc_walk(ctx.mm(), ctx.addr)
            .map(|_| ())
            .ok_or_else(|| String::from("no memory for a table"))
    }
    fn role(ctx: &Ctx<A, T<Self>>, role: usize) -> bool {
        let mm = ctx.mm();
        if role == A_ROLE {
            let Some(ptep) = pgtable::follow_pte(mm, ctx.addr) else {
                return false;
            };
            let ptl = memory::pte_lockptr(ptep).lock();
            a_ready(&ctx.state);
            race_point::<A>(&points::TEST_A, ctx.addr);
            drop(ptl);
            return true;
        }
        wait_a_ready::<A>(&ctx.state);
        let ok = memory::madvise_dontneed(mm, ctx.addr, PAGE_SIZE).is_ok();
        race_point::<A>(&points::TEST_B, ctx.addr);
        ok
    }
}

fn impossible_ptl_cycle<A: Mmu>(_: &Cmdline) -> Outcome {
    on_cpus(3, || {
        let r = run_test::<A, PtlCycle>(&ONE_VARIANT[0], Mode::Forced, 1, None);
        check_impossible(&r, "spins on PTL")
    })
}

/// A: interrupts off at test:a; B waits for an RCU grace period first.
struct RcuCycle;

impl<A: Mmu> TestRow<A> for RcuCycle {
    const NAME: &'static str = "rcu-cycle";
    fn role(ctx: &Ctx<A, T<Self>>, role: usize) -> bool {
        if role == A_ROLE {
            return hold_irqs_off::<A>(&ctx.state);
        }
        wait_a_ready::<A>(&ctx.state);
        crate::rcu::synchronize_rcu::<A>();
        race_point::<A>(&points::TEST_B, 0);
        true
    }
}

fn impossible_rcu_cycle<A: Mmu>(_: &Cmdline) -> Outcome {
    on_cpus(3, || {
        let r = run_test::<A, RcuCycle>(&ONE_VARIANT[0], Mode::Forced, 1, None);
        check_impossible(&r, "waits for RCU grace period")
    })
}

/// A: interrupts off at test:a until B reaches test:b. B sends A an IPI
/// without waiting for it and never goes to test:b: A waits for ever, but
/// nobody waits for A — no cycle, a hang.
struct Hang;

impl<A: Mmu> TestRow<A> for Hang {
    const NAME: &'static str = "hang";
    const TIMEOUT_NS: u64 = 300_000_000;
    fn role(ctx: &Ctx<A, T<Self>>, role: usize) -> bool {
        if role == A_ROLE {
            return hold_irqs_off::<A>(&ctx.state);
        }
        wait_a_ready::<A>(&ctx.state);
        smp::smp_call_function_single::<A>(other_cpu(A_ROLE), noop, 0, false);
        true
    }
}

fn hang_without_cycle<A: Mmu>(_: &Cmdline) -> Outcome {
    on_cpus(3, || {
        let t0 = A::clock_ns();
        let r = run_test::<A, Hang>(&ONE_VARIANT[0], Mode::Forced, 1, None);
        let ms = (A::clock_ns() - t0) / 1_000_000;
        let edges = r.hang_edges.clone().unwrap_or_default();
        diag!(
            "outcome={} after_ms={ms} edges=\"{edges}\"",
            r.outcome.word()
        );
        if r.outcome != RaceOutcome::Hang || r.cycle.is_some() {
            return fail(format!(
                "outcome {:?} cycle {:?}, expected hang",
                r.outcome, r.cycle
            ));
        }
        if r.state_error.is_some() {
            return fail(format!("state after the hang: {:?}", r.state_error));
        }
        if !edges.contains("cpu1 -> cpu2") || edges.contains("cpu2 -> cpu1") {
            return fail(format!("wait-for edges {edges}"));
        }
        if ms < 300 {
            return fail(format!("declared a hang after {ms} ms, budget 300"));
        }
        Outcome::Pass
    })
}

// ---- detector and report --------------------------------------------------------------------

fn detector_race_report<A: Mmu>(_: &Cmdline) -> Outcome {
    if let Some(o) = needs(3) {
        return o;
    }
    leak_checked(1, |_| {
        type Demo = super::rows::demo::DemoLockVsPut;
        let name = <Demo as Row<A>>::INFO.name;
        let [buggy, fixed] = [0, 1].map(|i| &<Demo as Row<A>>::VARIANTS[i]);
        let bad_before = page_alloc::nr_bad_pages();
        let r = scenario::run::<A, Demo>(buggy, Mode::Forced, 7, Some(1));
        scenario::print_report::<A>(name, buggy.name, Mode::Forced, &r);
        let Some(f) = r.finding.clone() else {
            return fail(format!("buggy forced: {:?}, no finding", r.outcome));
        };
        let events = trace::snapshot(trace::RING_LEN);
        let steps = events.iter().filter(|e| e.kind == Kind::Step).count();
        diag!(
            "invariant=\"{}\" pfn={:#x} steps_in_report={steps} bad_pages={}",
            f.invariant,
            f.pfn.unwrap_or(0),
            page_alloc::nr_bad_pages() - bad_before
        );
        if r.outcome != RaceOutcome::Bug || r.hits != 1 || r.failed() {
            return fail(format!(
                "buggy forced: {:?} hits {} ({:?})",
                r.outcome, r.hits, r.state_error
            ));
        }
        if !f.invariant.contains("bad_flags=0x1(locked)") || f.pfn.is_none() {
            return fail(format!("finding {f:?}"));
        }
        if steps != 4 {
            return fail(format!("{steps} schedule steps in the rings, expected 4"));
        }
        let r = scenario::run::<A, Demo>(fixed, Mode::Forced, 7, Some(1));
        scenario::print_report::<A>(name, fixed.name, Mode::Forced, &r);
        if r.outcome != RaceOutcome::Clean || r.failed() {
            return fail(format!(
                "fixed forced: {:?} ({:?})",
                r.outcome, r.state_error
            ));
        }
        let r = scenario::run::<A, Demo>(fixed, Mode::Natural, 7, Some(200));
        scenario::print_report::<A>(name, fixed.name, Mode::Natural, &r);
        if r.outcome != RaceOutcome::Clean || r.failed() || r.iterations != 200 {
            return fail(format!(
                "fixed natural: {:?} ({:?})",
                r.outcome, r.state_error
            ));
        }
        Outcome::Pass
    })
}

/// A row whose teardown forgets a frame: the state check must say so.
fn state_check_catches_leak<A: Mmu>(_: &Cmdline) -> Outcome {
    on_cpus(2, || {
        static LEAKED: AtomicU64 = AtomicU64::new(0);
        struct Leak;
        impl<A: Mmu> TestRow<A> for Leak {
            const NAME: &'static str = "leak";
            const ROLES: &'static [&'static str] = &ONE_ROLE;
            fn setup(ctx: &mut Ctx<A, T<Self>>) -> Result<(), String> {
                let p = page_alloc::alloc_page().ok_or_else(|| String::from("out of memory"))?;
                ctx.pfns.push(crate::mm::page::page_to_pfn(p));
                LEAKED.store(ctx.pfns[0], Ordering::Release);
                Ok(())
            }
            fn role(_: &Ctx<A, T<Self>>, _: usize) -> bool {
                true
            }
            const SCHEDULE: &'static [Step] = &[];
        }
        let r = run_test::<A, Leak>(&ONE_VARIANT[0], Mode::Natural, 1, Some(3));
        // Give the frame back ourselves.
        crate::mm::page::put_page(crate::mm::page::pfn_to_page(LEAKED.load(Ordering::Acquire)));
        let err = r.state_error.clone().unwrap_or_default();
        diag!("state_error=\"{err}\" iterations={}", r.iterations);
        if !err.contains("1 frames leaked") || r.iterations != 1 {
            return fail(format!("the leak was not caught: {r:?}"));
        }
        Outcome::Pass
    })
}
