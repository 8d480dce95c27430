//! RCU-sched: just enough read-copy-update for deferred page-table freeing
//! (MMU_GATHER_RCU_TABLE_FREE).
//!
//! Read side: any section with interrupts disabled (GUP-fast walks page tables
//! that way). There is no `rcu_read_lock`: disabling interrupts is the marker.
//!
//! Quiescent states (QS) are reported by each CPU for itself:
//! - from the timer tick, when the tick interrupted code running with
//!   interrupts enabled (such code is outside every read-side section);
//! - from the idle loop, which runs in task context with interrupts enabled;
//! - from [`synchronize_rcu`] on the calling CPU, as it blocks.
//!
//! One state is read from another CPU: a CPU halted in [`idle_halt`] (with
//! interrupts enabled) is in an extended quiescent state (Linux's dyntick
//! idle, `ct_idle_enter`), and a grace period does not wait for it. Its
//! per-CPU counter ([`EQS`]) is odd from just before the halt until the CPU
//! wakes or takes an interrupt ([`rcu_irq_enter`]); a grace period that
//! sees it odd after it began counts the CPU as reported: the CPU was
//! outside every read-side section at some time after the start, so every
//! reader it had before the start is done. Both sides order their accesses
//! with sequentially consistent operations (Linux's full barriers).
//!
//! Grace periods are numbered. `started` is the number of the newest grace
//! period begun, `completed` the newest ended (`completed <= started <=
//! completed + 1`). Grace period `n` ends once every online CPU has reported a
//! QS while `started == n`, that is, after `n` began. A CPU's report records
//! the `started` value it saw, under [`STATE`]'s lock, so a report taken before
//! a grace period began never counts for it.
//!
//! Callbacks ([`call_rcu`]) are queued on the calling CPU with the number of the
//! grace period that must end before they may run: the next one to start, so
//! that it begins after the call. They run from that CPU's tick or idle loop,
//! with interrupts disabled (from the tick) or enabled (from idle), outside
//! every lock of this module.
//!
//! Invariants: `completed <= started <= completed + 1`; a grace period is
//! started only when one is needed (`need > completed`); every lock of this
//! module is taken with interrupts disabled, since the tick takes them too.

use crate::{percpu, Arch, NR_CPUS};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// An RCU callback: a function and its argument.
pub type RcuCallback = fn(usize);

/// Global grace-period state.
struct GpState {
    /// Newest grace period begun.
    started: u64,
    /// Newest grace period ended.
    completed: u64,
    /// Newest grace period someone waits for.
    need: u64,
    /// Per CPU: the value of `started` at its latest QS report.
    qs: [u64; NR_CPUS],
}

static STATE: spin::Mutex<GpState> = spin::Mutex::new(GpState {
    started: 0,
    completed: 0,
    need: 0,
    qs: [0; NR_CPUS],
});

/// Per CPU: the extended-quiescent-state counter, odd while the CPU halts
/// in [`idle_halt`] (Linux `context_tracking.state`'s dynticks counter).
static EQS: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];

/// Whether `cpu` is in an extended quiescent state now.
fn in_eqs(cpu: usize) -> bool {
    EQS[cpu].load(Ordering::SeqCst) & 1 == 1
}

/// Leaves the extended quiescent state of `cpu`, if it is in one. An
/// interrupt (an NMI too) may do it first: only one of them counts.
fn eqs_exit(cpu: usize) {
    let v = EQS[cpu].load(Ordering::SeqCst);
    if v & 1 == 1 {
        let _ = EQS[cpu].compare_exchange(v, v + 1, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Interrupt entry's part (Linux `ct_irq_enter`): a handler may read
/// RCU-protected data (it runs with interrupts off), so a CPU woken from
/// [`idle_halt`] by an interrupt leaves its extended quiescent state first.
pub fn rcu_irq_enter<A: Arch>() {
    eqs_exit(A::smp_processor_id());
}

/// Halts the calling CPU until an interrupt ([`Arch::wait_for_interrupt`],
/// which enables interrupts), in an extended quiescent state: a grace period
/// does not wait for it to wake. Reports a QS and runs the ready callbacks
/// first, so that a grace period this CPU was the last to hold up ends now.
/// The caller is outside every read-side section but for having disabled
/// interrupts to check whether to halt (the halt enables them). Returns
/// with interrupts enabled, as [`Arch::wait_for_interrupt`].
pub fn idle_halt<A: Arch>() {
    let cpu = A::smp_processor_id();
    rcu_qs::<A>();
    rcu_do_batch::<A>();
    A::local_irq_disable();
    EQS[cpu].fetch_add(1, Ordering::SeqCst);
    A::wait_for_interrupt();
    eqs_exit(cpu);
}

/// A lock-free copy of `completed`, for waiters and quick checks.
static COMPLETED: AtomicU64 = AtomicU64::new(0);

/// Per CPU: queued callbacks with the grace period each waits for.
static CALLBACKS: [spin::Mutex<Vec<(u64, RcuCallback, usize)>>; NR_CPUS] =
    [const { spin::Mutex::new(Vec::new()) }; NR_CPUS];

/// Per CPU: quiescent states reported (diagnostics).
static QS_REPORTS: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];

/// Addresses of the grace-period state every tick touches (see
/// [`crate::race::user::stale_tlb_base`]).
pub(crate) fn tick_state_addrs() -> [u64; 2] {
    [&STATE as *const _ as u64, QS_REPORTS.as_ptr() as u64]
}

/// Ends the current grace period if every online CPU has reported since it
/// began, and starts the next one if someone needs it. Lock held.
fn advance(s: &mut GpState) {
    loop {
        if s.started > s.completed {
            let n = s.started;
            let all = (0..NR_CPUS)
                .filter(|&c| percpu::cpu_online(c))
                .all(|c| s.qs[c] >= n || in_eqs(c));
            if !all {
                return;
            }
            s.completed = n;
            COMPLETED.store(n, Ordering::Release);
        }
        if s.need > s.completed {
            s.started = s.completed + 1;
            // Loop: on one CPU the new period may end at the next report only;
            // the check above fails at once since no CPU reported for it yet.
            continue;
        }
        return;
    }
}

/// Asks for a grace period that begins after this call; returns its number.
fn request_gp() -> u64 {
    let mut s = STATE.lock();
    // If one is running, it may have begun before the call: wait for the next.
    let n = s.started + 1;
    s.need = s.need.max(n);
    advance(&mut s);
    n
}

/// Reports a quiescent state of the calling CPU (`rcu_qs`). The caller
/// guarantees the CPU is outside every read-side section.
pub fn rcu_qs<A: Arch>() {
    let cpu = A::smp_processor_id();
    QS_REPORTS[cpu].fetch_add(1, Ordering::Relaxed);
    let flags = A::local_irq_save();
    {
        let mut s = STATE.lock();
        s.qs[cpu] = s.started;
        advance(&mut s);
    }
    A::local_irq_restore(flags);
}

/// Runs the calling CPU's callbacks whose grace period has ended
/// (`rcu_do_batch`).
pub fn rcu_do_batch<A: Arch>() {
    let cpu = A::smp_processor_id();
    let done = COMPLETED.load(Ordering::Acquire);
    let flags = A::local_irq_save();
    let ready: Vec<(u64, RcuCallback, usize)> = {
        let mut q = CALLBACKS[cpu].lock();
        if q.iter().all(|&(n, _, _)| n > done) {
            Vec::new()
        } else {
            let (ready, wait) = q.drain(..).partition(|&(n, _, _)| n <= done);
            *q = wait;
            ready
        }
    };
    A::local_irq_restore(flags);
    for (_, func, arg) in ready {
        func(arg);
    }
}

/// The timer tick's part (`rcu_sched_clock_irq`): a QS if the tick
/// interrupted code with interrupts enabled, then the ready callbacks.
pub fn rcu_tick<A: Arch>(interrupted_irqs_on: bool) {
    if interrupted_irqs_on {
        rcu_qs::<A>();
    }
    rcu_do_batch::<A>();
}

/// The idle loop's part: idle is a quiescent state; then the ready callbacks.
pub fn rcu_idle<A: Arch>() {
    rcu_qs::<A>();
    rcu_do_batch::<A>();
}

/// Queues `func(arg)` to run on the calling CPU after a full grace period
/// (`call_rcu`).
pub fn call_rcu<A: Arch>(func: RcuCallback, arg: usize) {
    let cpu = A::smp_processor_id();
    let flags = A::local_irq_save();
    let n = request_gp();
    CALLBACKS[cpu].lock().push((n, func, arg));
    A::local_irq_restore(flags);
}

/// Waits for a full grace period (`synchronize_rcu`). Must be called with
/// interrupts enabled, outside every read-side section: the calling CPU reports
/// its own quiescent state as it blocks.
pub fn synchronize_rcu<A: Arch>() {
    wait_for_gp::<A>("synchronize_rcu", |_| {});
}

/// Requests a grace period and waits until it completes, reporting this
/// CPU's quiescent states and running its callbacks meanwhile, and calling
/// `each_turn(cpu)` on every turn of the wait. `what` names the caller in
/// the assertion that interrupts are on.
fn wait_for_gp<A: Arch>(what: &str, mut each_turn: impl FnMut(usize)) {
    assert!(
        !A::irqs_disabled(),
        "{what} with interrupts disabled (inside a read-side section)"
    );
    let flags = A::local_irq_save();
    let n = request_gp();
    A::local_irq_restore(flags);
    if gp_completed(n) {
        return;
    }
    // Published for the race prover: this CPU waits for grace period `n`.
    let cpu = A::smp_processor_id();
    let wait = crate::race::waitfor::begin(cpu, crate::race::waitfor::Wait::Gp { gp: n }, false);
    while !gp_completed(n) {
        rcu_qs::<A>();
        each_turn(cpu);
        rcu_do_batch::<A>();
        A::cpu_relax();
    }
    crate::race::waitfor::end(wait);
}

/// The newest grace period a [`synchronize_rcu_expedited`] hurries.
static EXPEDITED: AtomicU64 = AtomicU64::new(0);

/// The IPI handler's part: while an expedited grace period runs, taking an
/// IPI is a quiescent state. A CPU takes a (maskable) IPI only with
/// interrupts enabled, so the interrupted code was outside every read-side
/// section. No allocation, no wait: safe in any interrupt.
pub fn rcu_ipi<A: Arch>() {
    if EXPEDITED.load(Ordering::Acquire) > COMPLETED.load(Ordering::Acquire) {
        rcu_qs::<A>();
    }
}

/// Waits for a full grace period, nudging each CPU the running period
/// still waits for with a bare IPI (`synchronize_rcu_expedited`); the IPI
/// handler reports the quiescent state ([`rcu_ipi`]). Nothing waits for the
/// IPIs: a CPU with interrupts off (GUP-fast) reports only once it enables
/// them, and the wait is published as an ordinary grace-period wait.
pub fn synchronize_rcu_expedited<A: Arch>() {
    // Each grace period up to the one waited for starts only when the one
    // before ended: nudge the CPUs it waits for once per period.
    let mut nudged = 0;
    wait_for_gp::<A>("synchronize_rcu_expedited", |cpu| {
        if let Some((running, mask)) = gp_waiting_on::<A>() {
            if running != nudged {
                nudged = running;
                EXPEDITED.fetch_max(running, Ordering::AcqRel);
                for c in (0..NR_CPUS).filter(|&c| c != cpu && mask & (1 << c) != 0) {
                    A::send_ipi(c);
                }
            }
        }
    });
}

/// [`rcu_barrier_this_cpu`] with expedited grace periods.
pub fn rcu_barrier_this_cpu_expedited<A: Arch>() {
    barrier_this_cpu::<A>(synchronize_rcu_expedited::<A>);
}

/// The running grace period and the online CPUs it still waits for (no
/// quiescent state reported since it began), or `None` when none runs.
pub fn gp_waiting_on<A: Arch>() -> Option<(u64, u64)> {
    let flags = A::local_irq_save();
    let r = {
        let s = STATE.lock();
        (s.started > s.completed).then(|| {
            let mask = (0..NR_CPUS)
                .filter(|&c| percpu::cpu_online(c) && s.qs[c] < s.started)
                .fold(0u64, |m, c| m | 1 << c);
            (s.started, mask)
        })
    };
    A::local_irq_restore(flags);
    r
}

/// Whether grace period `n` has ended.
pub fn gp_completed(n: u64) -> bool {
    COMPLETED.load(Ordering::Acquire) >= n
}

/// Number of grace periods ended so far.
pub fn completed_gps() -> u64 {
    COMPLETED.load(Ordering::Acquire)
}

/// Quiescent states `cpu` reported so far.
pub fn qs_reports(cpu: usize) -> u64 {
    QS_REPORTS[cpu].load(Ordering::Relaxed)
}

/// Callbacks queued on `cpu` and not run yet.
pub fn pending_callbacks<A: Arch>(cpu: usize) -> usize {
    let flags = A::local_irq_save();
    let n = CALLBACKS[cpu].lock().len();
    A::local_irq_restore(flags);
    n
}

/// Waits until every callback queued on the calling CPU has run (`rcu_barrier`
/// for one CPU). Interrupts must be enabled.
pub fn rcu_barrier_this_cpu<A: Arch>() {
    barrier_this_cpu::<A>(synchronize_rcu::<A>);
}

/// Waits for grace periods with `synchronize` and runs the callbacks they
/// made ready, until none is queued on the calling CPU.
fn barrier_this_cpu<A: Arch>(synchronize: fn()) {
    let cpu = A::smp_processor_id();
    while pending_callbacks::<A>(cpu) > 0 {
        synchronize();
        rcu_do_batch::<A>();
    }
}

/// Set by a test callback; see the unit tests.
#[cfg(test)]
static TEST_RAN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::emul::Emul4k as Emul4;

    #[test]
    fn callback_runs_only_after_a_grace_period() {
        // Serialised with the other tests that use the global RCU state.
        let _m = crate::mm::memmap::test_mem::setup();
        // The emulated machine has one CPU, online as the boot CPU.
        crate::percpu::init_boot_cpu::<Emul4>();
        let start = completed_gps();
        call_rcu::<Emul4>(|_| TEST_RAN.store(true, Ordering::Release), 0);
        rcu_do_batch::<Emul4>();
        assert!(!TEST_RAN.load(Ordering::Acquire), "ran before any QS");
        rcu_tick::<Emul4>(false);
        assert!(
            !TEST_RAN.load(Ordering::Acquire),
            "a tick from an irqs-off section is not a QS"
        );
        rcu_tick::<Emul4>(true);
        assert!(TEST_RAN.load(Ordering::Acquire));
        assert!(completed_gps() > start);
        synchronize_rcu::<Emul4>();
    }
}
