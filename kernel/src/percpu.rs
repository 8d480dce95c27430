//! Per-CPU data of the generic kernel, indexed by logical CPU number.
//!
//! Each CPU writes only its own counters; any CPU may read them (relaxed atomics).
//! The call-function queue is the one field other CPUs write, under its lock.

use crate::{smp::CallRequest, Arch, NR_CPUS};
use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Per-CPU state.
pub struct PerCpu {
    /// Set by the CPU itself once it runs generic kernel code.
    pub online: AtomicBool,
    /// Timer interrupts taken.
    pub ticks: AtomicU64,
    /// IPIs taken.
    pub ipis: AtomicU64,
    /// NMIs taken.
    pub nmis: AtomicU64,
    /// Hardware page faults taken (resolved or not).
    pub page_faults: AtomicU64,
    /// The `Mm` this CPU runs (a `*const Mm<A>`), 0 for none; see `mm::use_mm`.
    pub current_mm: AtomicUsize,
    /// Cross-CPU function calls queued for this CPU.
    pub(crate) call_queue: spin::Mutex<VecDeque<CallRequest>>,
    /// Work for the CPU's idle loop, run in task context (see
    /// [`crate::smp::run_on_idle`]).
    pub(crate) idle_work: spin::Mutex<Option<(crate::smp::SmpCallFunc, usize)>>,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            online: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            ipis: AtomicU64::new(0),
            nmis: AtomicU64::new(0),
            page_faults: AtomicU64::new(0),
            current_mm: AtomicUsize::new(0),
            call_queue: spin::Mutex::new(VecDeque::new()),
            idle_work: spin::Mutex::new(None),
        }
    }
}

static CPUS: [PerCpu; NR_CPUS] = [const { PerCpu::new() }; NR_CPUS];

/// The per-CPU data of `cpu`.
pub fn per_cpu(cpu: usize) -> &'static PerCpu {
    &CPUS[cpu]
}

/// The calling CPU's data.
pub fn this_cpu<A: Arch>() -> &'static PerCpu {
    per_cpu(A::smp_processor_id())
}

/// Marks the boot CPU online.
pub(crate) fn init_boot_cpu<A: Arch>() {
    this_cpu::<A>().online.store(true, Ordering::Release);
}

/// Whether `cpu` is online.
pub fn cpu_online(cpu: usize) -> bool {
    cpu < NR_CPUS && CPUS[cpu].online.load(Ordering::Acquire)
}

/// Number of CPUs online.
pub fn num_online_cpus() -> usize {
    (0..NR_CPUS).filter(|&c| cpu_online(c)).count()
}
