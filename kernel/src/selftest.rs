//! In-kernel self-tests of the boot foundation: CPUs, IPIs, cross-CPU calls,
//! interrupt masking, NMIs, timer ticks and the heap.
//!
//! Every test observes the hardware doing the thing: an IPI round trip is a real
//! IPI and handler, the held-back test measures a real interrupts-off section on
//! another CPU, and the tick test counts real timer interrupts on every CPU.

use crate::cmdline::Cmdline;
use crate::ktap::{Outcome, Run};
use crate::mm::selftest as mm_st;
use crate::{diag, kprintln, percpu, smp, time, Arch};
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A self-test case.
pub(crate) type TestFn = fn(&Cmdline) -> Outcome;

/// Self-test suites: each suite's name with its cases, in order.
pub(crate) type Suites = Vec<(&'static str, Vec<(&'static str, TestFn)>)>;

/// A suite's cases, in order, from the names of their functions:
/// `test_cases![A; name, other_name = function]` is
/// `vec![("name", name::<A>), ("other_name", function::<A>)]`.
macro_rules! test_cases {
    ($a:ident; $($name:ident $(= $f:ident)?),* $(,)?) => {
        alloc::vec![$((stringify!($name), $crate::selftest::test_cases!(@fn $a $name $($f)?) as $crate::selftest::TestFn)),*]
    };
    (@fn $a:ident $name:ident) => { $name::<$a> };
    (@fn $a:ident $name:ident $f:ident) => { $f::<$a> };
}
pub(crate) use test_cases;

/// The `boot` suite, in order.
fn boot_suite<A: crate::mm::arch::Mmu>() -> [(&'static str, TestFn); 10] {
    [
        ("cpus_online", cpus_online),
        ("ipi_round_trip", ipi_round_trip::<A>),
        ("call_function_wait", call_function_wait::<A>),
        ("ipi_held_by_irqs_off", ipi_held_by_irqs_off::<A>),
        ("nmi_with_irqs_off", nmi_with_irqs_off::<A>),
        ("timer_ticks", timer_ticks::<A>),
        ("heap_contention", heap_contention::<A>),
        ("requested_failure", requested_failure),
        ("requested_panic", requested_panic::<A>),
        ("requested_fault", requested_fault::<A>),
    ]
}

/// Every self-test suite with its cases, in the order they run (`list`
/// prints them, [`run_all`] runs the ones `test=` selects).
pub(crate) fn suites<A: crate::mm::arch::Mmu>() -> Suites {
    [
        ("boot", boot_suite::<A>().to_vec()),
        (mm_st::page::SUITE, mm_st::page::cases::<A>()),
        (mm_st::core::SUITE, mm_st::core::cases::<A>()),
        (mm_st::skey::SUITE, mm_st::skey::cases::<A>()),
        (mm_st::gather::SUITE, mm_st::gather::cases::<A>()),
        (mm_st::tlb::SUITE, mm_st::tlb::cases::<A>()),
        (mm_st::gup::SUITE, mm_st::gup::cases::<A>()),
        (mm_st::thp::SUITE, mm_st::thp::cases::<A>()),
        (mm_st::file::SUITE, mm_st::file::cases::<A>()),
        (
            crate::race::selftest::SUITE,
            crate::race::selftest::cases::<A>(),
        ),
    ]
    .into()
}

/// Runs the selected self-tests and prints their KTAP; returns whether all passed.
pub fn run_all<A: crate::mm::arch::Mmu>(args: &Cmdline, run: &mut Run) -> bool {
    if args.list {
        // Print what this kernel has instead of running anything.
        return crate::list::print::<A>(run);
    }
    if args.scenario.is_some() {
        // Race scenarios instead of the self-tests.
        return crate::race::scenario::run_selected::<A>(args, run);
    }
    // Every suite, in order; each keeps only the cases `test=` selects.
    let suites: Suites = suites::<A>()
        .into_iter()
        .map(|(suite, cases)| {
            let cases: Vec<_> = cases
                .into_iter()
                .filter(|(name, _)| args.selects(suite, name))
                .collect();
            (suite, cases)
        })
        .filter(|(_, cases)| !cases.is_empty())
        .collect();
    if suites.is_empty() {
        run.plan(1);
        run.result(
            false,
            "test_filter",
            Some(&format!("no test matches {:?}", args.tests)),
        );
        return false;
    }
    run.plan(suites.len());
    let mut all_ok = true;
    for (suite_name, cases) in suites {
        let mut suite = run.suite(suite_name, cases.len());
        for (name, test) in cases {
            let outcome = test(args);
            suite.case(name, &outcome);
        }
        all_ok &= run.end_suite(suite);
    }
    all_ok
}

fn fail(msg: String) -> Outcome {
    Outcome::Fail(msg)
}

fn cpus_online(_: &Cmdline) -> Outcome {
    let online = percpu::num_online_cpus();
    diag!("cpus_online={online} cpus_present={}", smp::nr_cpus());
    if online == smp::nr_cpus() {
        Outcome::Pass
    } else {
        fail(format!("{online} of {} CPUs online", smp::nr_cpus()))
    }
}

fn noop(_: usize) {}

fn ipi_round_trip<A: Arch>(_: &Cmdline) -> Outcome {
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    const ROUNDS: usize = 16;
    for cpu in 1..smp::nr_cpus() {
        let before = percpu::per_cpu(cpu).ipis.load(Ordering::Relaxed);
        let mut samples = [0u64; ROUNDS];
        for s in samples.iter_mut() {
            let t0 = A::clock_ns();
            smp::smp_call_function_single::<A>(cpu, noop, 0, true);
            *s = A::clock_ns() - t0;
        }
        let taken = percpu::per_cpu(cpu).ipis.load(Ordering::Relaxed) - before;
        samples.sort_unstable();
        diag!(
            "ipi_rtt_ns_cpu{cpu}_min={} median={} max={}",
            samples[0],
            samples[ROUNDS / 2],
            samples[ROUNDS - 1]
        );
        // Several requests may be served by one interrupt, never more interrupts
        // than requests, and at least one.
        if taken == 0 || taken > ROUNDS as u64 {
            return fail(format!("CPU {cpu} took {taken} IPIs for {ROUNDS} calls"));
        }
    }
    Outcome::Pass
}

static CALL_MASK: AtomicU64 = AtomicU64::new(0);

fn record_cpu(cpu: usize) {
    CALL_MASK.fetch_or(1 << cpu, Ordering::AcqRel);
}

fn record_self<A: Arch>(_: usize) {
    record_cpu(A::smp_processor_id());
}

fn call_function_wait<A: Arch>(_: &Cmdline) -> Outcome {
    let n = smp::nr_cpus();
    CALL_MASK.store(0, Ordering::Release);
    smp::smp_call_function::<A>(record_self::<A>, 0, true);
    let others = ((1u64 << n) - 1) & !(1u64 << A::smp_processor_id());
    let seen = CALL_MASK.load(Ordering::Acquire);
    diag!("call_function_mask={seen:#x} expected={others:#x}");
    if seen != others {
        return fail(format!(
            "smp_call_function returned with mask {seen:#x}, expected {others:#x}"
        ));
    }
    for cpu in 0..n {
        CALL_MASK.store(0, Ordering::Release);
        smp::smp_call_function_single::<A>(cpu, record_self::<A>, 0, true);
        if CALL_MASK.load(Ordering::Acquire) != 1 << cpu {
            return fail(format!(
                "smp_call_function_single({cpu}) did not run on CPU {cpu} before returning"
            ));
        }
    }
    Outcome::Pass
}

static SECTION_START_NS: AtomicU64 = AtomicU64::new(0);
static SECTION_END_NS: AtomicU64 = AtomicU64::new(0);
static SECTION_IRQS_WERE_OFF: AtomicUsize = AtomicUsize::new(0);
/// IPIs the section's CPU had taken when its section ended.
static SECTION_END_IPIS: AtomicU64 = AtomicU64::new(0);

/// Length of the interrupts-off section used by the masking tests.
const SECTION_NS: u64 = 50_000_000;

/// Runs on the target CPU: an explicit interrupts-off section of `ns`.
fn irqs_off_section<A: Arch>(ns: usize) {
    let flags = A::local_irq_save();
    SECTION_IRQS_WERE_OFF.store(A::irqs_disabled() as usize, Ordering::Release);
    SECTION_END_NS.store(0, Ordering::Release);
    SECTION_START_NS.store(A::clock_ns(), Ordering::Release);
    time::ndelay::<A>(ns as u64);
    SECTION_END_IPIS.store(
        percpu::this_cpu::<A>().ipis.load(Ordering::Relaxed),
        Ordering::Release,
    );
    SECTION_END_NS.store(A::clock_ns(), Ordering::Release);
    A::local_irq_restore(flags);
}

/// Starts an interrupts-off section of `ns` on `cpu`, in task context (its
/// idle loop, not an interrupt handler), and returns once the section has
/// begun, with its start time. One section at a time; tests of other suites
/// use it too.
pub(crate) fn start_section<A: Arch>(cpu: usize, ns: u64) -> u64 {
    SECTION_START_NS.store(0, Ordering::Release);
    smp::run_on_idle::<A>(cpu, irqs_off_section::<A>, ns as usize);
    wait_for_time::<A>(&SECTION_START_NS)
}

/// When the running section ended, if it has.
pub(crate) fn section_end() -> Option<u64> {
    Some(SECTION_END_NS.load(Ordering::Acquire)).filter(|&t| t != 0)
}

/// Waits for the running section to end; returns its end time.
pub(crate) fn wait_section_end<A: Arch>() -> u64 {
    wait_for_time::<A>(&SECTION_END_NS)
}

/// Waits until another CPU stores a time (nonzero) into `time`; returns it.
pub(crate) fn wait_for_time<A: Arch>(time: &AtomicU64) -> u64 {
    loop {
        let t = time.load(Ordering::Acquire);
        if t != 0 {
            return t;
        }
        A::cpu_relax();
    }
}

/// What became of a cross-CPU call IPI sent to a CPU in an interrupts-off
/// section.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpiHeld {
    /// Whether the target took it only after its section: the sender's wait
    /// ended after the section did, and the target took no IPI inside it.
    pub(crate) held: bool,
    /// The section's length.
    pub(crate) irqs_off_ns: u64,
    /// How long the sender waited for the call.
    pub(crate) sender_wait_ns: u64,
    /// When the sender's wait ended, relative to the section's end.
    pub(crate) released_after_section_ns: i64,
}

/// The IPI probe, shared by the `boot.ipi_held_by_irqs_off` self-test and
/// the boot's platform probe ([`crate::platform`]): the last CPU spends
/// `section_ns` with interrupts off (in task context) while this CPU makes
/// a cross-CPU call to it and waits. Held back: the target took the IPI
/// only after its section (its IPI count did not grow inside it, and grew
/// after); delivered: it took the IPI inside the section. A run in which
/// the host delayed the send past the section's end shows neither and is
/// repeated with the section doubled, `attempts` runs in all. `Err` names
/// what is inconsistent (a section with interrupts on, a call that
/// completed without the IPI, no run that showed anything). Needs 2 CPUs.
pub(crate) fn probe_ipi_held<A: Arch>(section_ns: u64, attempts: u32) -> Result<IpiHeld, String> {
    let cpu = smp::nr_cpus() - 1;
    let mut section = section_ns;
    for _ in 0..attempts {
        let start = start_section::<A>(cpu, section);
        let ipis_before = percpu::per_cpu(cpu).ipis.load(Ordering::Acquire);
        let t0 = A::clock_ns();
        smp::smp_call_function_single::<A>(cpu, noop, 0, true);
        let t1 = A::clock_ns();
        let end = wait_section_end::<A>();
        let ipis_after = percpu::per_cpu(cpu).ipis.load(Ordering::Acquire);
        let ipis_at_end = SECTION_END_IPIS.load(Ordering::Acquire);
        if SECTION_IRQS_WERE_OFF.load(Ordering::Acquire) != 1 {
            return Err(format!(
                "CPU {cpu} did not have interrupts disabled in its section"
            ));
        }
        let seen = IpiHeld {
            held: ipis_at_end == ipis_before && t1 >= end,
            irqs_off_ns: end - start,
            sender_wait_ns: t1 - t0,
            released_after_section_ns: t1 as i64 - end as i64,
        };
        if ipis_at_end > ipis_before {
            // Taken inside the section: delivered with interrupts off.
            return Ok(seen);
        }
        if t0 < end {
            // Sent inside the section, not taken there.
            if !seen.held || ipis_after == ipis_at_end {
                return Err(format!(
                    "the call to CPU {cpu} returned {} ns after its section without an IPI taken after it",
                    seen.released_after_section_ns
                ));
            }
            return Ok(seen);
        }
        section *= 2;
    }
    Err(format!(
        "in {attempts} runs the IPI was never sent before CPU {cpu}'s section ended"
    ))
}

/// An IPI to a CPU with interrupts off waits until it enables them, and the
/// sender with it. Where the machine delivers it anyway, skipped with the
/// reason.
fn ipi_held_by_irqs_off<A: Arch>(_: &Cmdline) -> Outcome {
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    let seen = match probe_ipi_held::<A>(SECTION_NS, 3) {
        Ok(s) => s,
        Err(why) => return fail(why),
    };
    diag!(
        "irqs_off_ns={} sender_wait_ns={} released_after_section_ns={}",
        seen.irqs_off_ns,
        seen.sender_wait_ns,
        seen.released_after_section_ns
    );
    if seen.held {
        Outcome::Pass
    } else {
        Outcome::Skip(crate::platform::Property::IpiHeldByIrqsOff.lacking())
    }
}

fn nmi_with_irqs_off<A: Arch>(_: &Cmdline) -> Outcome {
    if !A::HAS_NMI {
        return Outcome::Skip("no NMI on this architecture: every external interrupt is maskable");
    }
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    let cpu = smp::nr_cpus() - 1;
    let nmis = &percpu::per_cpu(cpu).nmis;
    let start = start_section::<A>(cpu, SECTION_NS);
    let before = nmis.load(Ordering::Acquire);
    let t0 = A::clock_ns();
    A::send_nmi(cpu);
    while nmis.load(Ordering::Acquire) == before {
        A::cpu_relax();
    }
    let t1 = A::clock_ns();
    let end = wait_section_end::<A>();
    diag!(
        "irqs_off_ns={} nmi_latency_ns={} taken_before_section_end_ns={}",
        end - start,
        t1 - t0,
        end as i64 - t1 as i64
    );
    if SECTION_IRQS_WERE_OFF.load(Ordering::Acquire) != 1 {
        return fail(format!(
            "CPU {cpu} did not have interrupts disabled in its section"
        ));
    }
    if t1 > end {
        return fail(format!(
            "the NMI waited {} ns, until CPU {cpu} re-enabled interrupts",
            t1 - t0
        ));
    }
    Outcome::Pass
}

fn timer_ticks<A: Arch>(_: &Cmdline) -> Outcome {
    let n = smp::nr_cpus();
    let before: Vec<u64> = (0..n)
        .map(|c| percpu::per_cpu(c).ticks.load(Ordering::Relaxed))
        .collect();
    // Five tick periods, and at least 20 ms; then, while a CPU has taken fewer
    // than two ticks, up to 50 periods in all: with more vCPUs than host cores
    // QEMU delivers timer interrupts late, and a late tick is still a tick.
    let period = time::tick_period_ns();
    let first = (20_000_000u64).div_ceil(period).max(5);
    let got = |cpu: usize, b: u64| percpu::per_cpu(cpu).ticks.load(Ordering::Relaxed) - b;
    let mut periods = first;
    time::ndelay::<A>(first * period);
    while periods < 50 && before.iter().enumerate().any(|(c, &b)| got(c, b) < 2) {
        time::ndelay::<A>(period);
        periods += 1;
    }
    let wait = periods * period;
    let mut report = alloc::string::String::new();
    let mut slow = None;
    for (cpu, &b) in before.iter().enumerate() {
        let got = got(cpu, b);
        report.push_str(&format!(" cpu{cpu}={got}"));
        if got < 2 {
            slow = Some((cpu, got));
        }
    }
    diag!("ticks_in_{}ms{report}", wait / 1_000_000);
    match slow {
        Some((cpu, got)) => fail(format!(
            "CPU {cpu} took {got} ticks in {periods} tick periods"
        )),
        None => Outcome::Pass,
    }
}

static HEAP_DONE: AtomicUsize = AtomicUsize::new(0);
static HEAP_ERRORS: AtomicUsize = AtomicUsize::new(0);

/// Allocates, fills, checks and frees blocks of varied sizes.
fn heap_stress<A: Arch>(_: usize) {
    let cpu = A::smp_processor_id();
    let tag = (cpu as u8).wrapping_mul(37).wrapping_add(1);
    let mut live: Vec<Vec<u8>> = Vec::new();
    for i in 0..2000usize {
        let len = 1 + (i * 97 + cpu * 13) % 3000;
        live.push(alloc::vec![tag; len]);
        if live.len() > 16 {
            let v = live.swap_remove((i * 7) % live.len());
            if v.iter().any(|&b| b != tag) {
                HEAP_ERRORS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for v in &live {
        if v.iter().any(|&b| b != tag) {
            HEAP_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
    HEAP_DONE.fetch_add(1, Ordering::AcqRel);
}

fn heap_contention<A: Arch>(_: &Cmdline) -> Outcome {
    let n = smp::nr_cpus();
    HEAP_DONE.store(0, Ordering::Release);
    HEAP_ERRORS.store(0, Ordering::Release);
    let t0 = A::clock_ns();
    smp::smp_call_function::<A>(heap_stress::<A>, 0, false);
    heap_stress::<A>(0);
    while HEAP_DONE.load(Ordering::Acquire) < n {
        A::cpu_relax();
    }
    let (used, free) = crate::heap::usage();
    diag!(
        "heap_stress_cpus={n} time_ms={} heap_used={used} heap_free={free}",
        (A::clock_ns() - t0) / 1_000_000
    );
    match HEAP_ERRORS.load(Ordering::Acquire) {
        0 => Outcome::Pass,
        e => fail(format!("{e} blocks were corrupted")),
    }
}

fn requested_failure(args: &Cmdline) -> Outcome {
    if args.fail {
        fail("failing as asked (selftest.fail)".into())
    } else {
        Outcome::Skip("fails only when asked (selftest.fail)")
    }
}

#[inline(never)]
fn panic_here(cpu: usize) {
    panic!("panicking as asked (selftest.panic={cpu})");
}

fn requested_panic<A: Arch>(args: &Cmdline) -> Outcome {
    let Some(cpu) = args.panic_cpu else {
        return Outcome::Skip("panics only when asked (selftest.panic=CPU)");
    };
    if cpu >= smp::nr_cpus() {
        return fail(format!("selftest.panic={cpu}: no such CPU"));
    }
    kprintln!("    # requested_panic: CPU {cpu} panics now");
    if cpu == A::smp_processor_id() {
        panic_here(cpu);
    }
    smp::smp_call_function_single::<A>(cpu, panic_here, cpu, false);
    time::ndelay::<A>(2_000_000_000);
    fail(format!("CPU {cpu} panicked but the machine still runs"))
}

/// The word at `addr`, loaded for real: `selftest.fault` passes an address
/// nothing maps, and the load is the faulting instruction.
#[inline(never)]
fn load_unmapped(addr: u64) -> u64 {
    // SAFETY: meant to fault. `addr` lies below the task range and above
    // every kernel mapping (RAM and the kernel image on both kernels), so
    // the load raises a page fault (x86-64) or a translation exception
    // (s390x) that no handler resolves and no probe fixup covers: the
    // exception handler reports it with the backtrace and stops the machine,
    // so no value is ever produced and nothing is read or written.
    unsafe { core::ptr::read_volatile(core::ptr::with_exposed_provenance::<u64>(addr as usize)) }
}

/// `selftest.fault=CPU` on that CPU: a call chain that ends in a load from
/// the page just below the task range, which no table maps in the kernel's
/// address space.
#[inline(never)]
fn fault_here(addr: usize) {
    let v = load_unmapped(addr as u64);
    // Not reached: the load never completes.
    kprintln!("    # requested_fault: the load of {addr:#x} returned {v:#x}");
}

fn requested_fault<A: crate::mm::arch::Mmu>(args: &Cmdline) -> Outcome {
    let Some(cpu) = args.fault_cpu else {
        return Outcome::Skip("faults only when asked (selftest.fault=CPU)");
    };
    if cpu >= smp::nr_cpus() {
        return fail(format!("selftest.fault={cpu}: no such CPU"));
    }
    let addr = (A::TASK_BASE - crate::mm::PAGE_SIZE) as usize;
    kprintln!("    # requested_fault: CPU {cpu} loads from {addr:#x} now");
    if cpu == A::smp_processor_id() {
        fault_here(addr);
    } else {
        smp::smp_call_function_single::<A>(cpu, fault_here, addr, false);
        time::ndelay::<A>(2_000_000_000);
    }
    fail(format!(
        "CPU {cpu} loaded from unmapped {addr:#x} but the machine still runs"
    ))
}
