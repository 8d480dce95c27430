//! CPU bring-up and cross-CPU function calls.
//!
//! `smp_call_function_single` queues a request on the target's per-CPU queue and
//! sends an IPI; the target's IPI handler runs every queued request with interrupts
//! disabled and marks each done. A caller that waits must have interrupts enabled:
//! two CPUs waiting on each other with interrupts off would deadlock, which is the
//! very wait-for cycle the x86 TLB shootdown relies on, and a bug anywhere else.

use crate::{kprintln, percpu, time, Arch};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A function run on another CPU: called with the argument given to the call.
pub type SmpCallFunc = fn(usize);

/// One queued call.
pub(crate) struct CallRequest {
    func: SmpCallFunc,
    arg: usize,
    done: Arc<AtomicBool>,
}

/// Number of CPUs the machine has, as brought up.
static NR_CPUS_PRESENT: AtomicUsize = AtomicUsize::new(1);

/// Number of CPUs present in the machine.
pub fn nr_cpus() -> usize {
    NR_CPUS_PRESENT.load(Ordering::Acquire)
}

/// How long a secondary CPU may take to come online.
const BRINGUP_TIMEOUT_NS: u64 = 2_000_000_000;

/// Starts every secondary CPU and waits until each is online. Panics (failing the
/// run) if one does not come up.
pub(crate) fn bring_up_cpus<A: Arch>(nr_cpus: usize) {
    NR_CPUS_PRESENT.store(nr_cpus, Ordering::Release);
    for cpu in 1..nr_cpus {
        let start = A::clock_ns();
        if let Err(err) = A::boot_secondary(cpu) {
            panic!("CPU {cpu} could not be started: {err}");
        }
        while !percpu::cpu_online(cpu) {
            if A::clock_ns() - start > BRINGUP_TIMEOUT_NS {
                panic!("CPU {cpu} did not come online within 2 s");
            }
            A::cpu_relax();
        }
        kprintln!(
            "# cpu{cpu}=online bringup_us={}",
            (A::clock_ns() - start) / 1000
        );
    }
}

/// Entry of the generic kernel on a secondary CPU, called by the backend on the
/// CPU's own stack with interrupts disabled. Marks the CPU online, starts its
/// tick and idles, serving IPIs, until the machine ends.
pub fn secondary_main<A: Arch>(cpu: usize) -> ! {
    debug_assert_eq!(cpu, A::smp_processor_id());
    percpu::per_cpu(cpu).online.store(true, Ordering::Release);
    time::start_this_cpu_tick::<A>();
    A::local_irq_enable();
    loop {
        // Halted in an extended quiescent state: no grace period waits for
        // an idle CPU.
        crate::rcu::idle_halt::<A>();
        crate::rcu::rcu_idle::<A>();
        let work = percpu::per_cpu(cpu).idle_work.lock().take();
        if let Some((func, arg)) = work {
            func(arg);
        }
    }
}

/// Has secondary CPU `cpu` run `func(arg)` from its idle loop, in task context
/// with interrupts enabled, rather than in the IPI handler. For work that must
/// control the CPU's interrupt state itself. Returns once the work is queued.
pub fn run_on_idle<A: Arch>(cpu: usize, func: SmpCallFunc, arg: usize) {
    assert!(
        cpu != 0 && cpu < nr_cpus(),
        "run_on_idle: CPU {cpu} has no idle loop"
    );
    let flags = A::local_irq_save();
    let old = percpu::per_cpu(cpu).idle_work.lock().replace((func, arg));
    A::local_irq_restore(flags);
    assert!(
        old.is_none(),
        "run_on_idle: CPU {cpu} still has idle work queued"
    );
    // The IPI wakes the idle loop, which then finds the work.
    smp_call_function_single::<A>(cpu, |_| {}, 0, false);
}

/// Runs `func(arg)` on `cpu` and, if `wait`, returns only once it has finished.
/// On the calling CPU itself the function runs directly, with interrupts disabled,
/// as it would in the IPI handler.
pub fn smp_call_function_single<A: Arch>(cpu: usize, func: SmpCallFunc, arg: usize, wait: bool) {
    let done = queue_call::<A>(cpu, func, arg);
    if wait {
        wait_done::<A>(&done, 1 << cpu);
    }
}

/// Runs `func(arg)` on every other online CPU; if `wait`, returns once all have
/// finished.
pub fn smp_call_function<A: Arch>(func: SmpCallFunc, arg: usize, wait: bool) {
    let me = A::smp_processor_id();
    let mut pending = alloc::vec::Vec::new();
    for cpu in (0..nr_cpus()).filter(|&c| c != me && percpu::cpu_online(c)) {
        pending.push((cpu, queue_call::<A>(cpu, func, arg)));
    }
    if wait {
        for (cpu, done) in &pending {
            wait_done::<A>(done, 1 << cpu);
        }
    }
}

fn queue_call<A: Arch>(cpu: usize, func: SmpCallFunc, arg: usize) -> Arc<AtomicBool> {
    assert!(
        percpu::cpu_online(cpu),
        "smp_call_function to offline CPU {cpu}"
    );
    let done = Arc::new(AtomicBool::new(false));
    if cpu == A::smp_processor_id() {
        let flags = A::local_irq_save();
        func(arg);
        A::local_irq_restore(flags);
        done.store(true, Ordering::Release);
        return done;
    }
    let req = CallRequest {
        func,
        arg,
        done: done.clone(),
    };
    // The queue lock is also taken by the target's IPI handler: keep interrupts
    // off while holding it, or a self-IPI could deadlock.
    let flags = A::local_irq_save();
    percpu::per_cpu(cpu).call_queue.lock().push_back(req);
    A::local_irq_restore(flags);
    crate::race::trace::record(crate::race::trace::Kind::IpiSend, cpu as u64, 0);
    A::send_ipi(cpu);
    done
}

/// Waits for a queued call on the CPUs of `mask` to finish, published as a
/// wait record for the race prover.
fn wait_done<A: Arch>(done: &AtomicBool, mask: u64) {
    assert!(
        !A::irqs_disabled(),
        "smp_call_function waiting with interrupts disabled (deadlock risk)"
    );
    if done.load(Ordering::Acquire) {
        return;
    }
    let me = A::smp_processor_id();
    let wait = crate::race::waitfor::begin(me, crate::race::waitfor::Wait::IpiAck { mask }, false);
    while !done.load(Ordering::Acquire) {
        A::cpu_relax();
    }
    crate::race::waitfor::end(wait);
}

/// Runs the calling CPU's queued calls. Called from the IPI handler.
pub(crate) fn run_call_queue<A: Arch>() {
    let cpu = percpu::this_cpu::<A>();
    loop {
        let req = cpu.call_queue.lock().pop_front();
        let Some(req) = req else { break };
        (req.func)(req.arg);
        req.done.store(true, Ordering::Release);
    }
}
