//! Generic interrupt handlers, called by the backend's interrupt entry code with
//! interrupts disabled, after the interrupt was acknowledged.

use crate::race::point::IrqContext;
use crate::{percpu, smp, Arch};
use core::sync::atomic::Ordering;

/// An IPI arrived (x86-64 fixed vector, s390x external call).
pub fn ipi_interrupt<A: Arch>() {
    crate::rcu::rcu_irq_enter::<A>();
    let _irq = IrqContext::enter(A::smp_processor_id());
    percpu::this_cpu::<A>().ipis.fetch_add(1, Ordering::Relaxed);
    crate::race::trace::record(crate::race::trace::Kind::IpiRecv, 0, 0);
    smp::run_call_queue::<A>();
    crate::rcu::rcu_ipi::<A>();
}

/// An NMI arrived. May interrupt any code, including code holding locks: it only
/// counts.
pub fn nmi_interrupt<A: Arch>() {
    crate::rcu::rcu_irq_enter::<A>();
    let _irq = IrqContext::enter(A::smp_processor_id());
    percpu::this_cpu::<A>().nmis.fetch_add(1, Ordering::Relaxed);
    crate::race::trace::record(crate::race::trace::Kind::NmiRecv, 0, 0);
}

/// A timer tick arrived. `interrupted_irqs_on`: the interrupted code ran with
/// interrupts enabled (saved RFLAGS.IF / the old PSW's external mask), so it
/// was outside every RCU-sched read-side section and this is a quiescent state.
pub fn timer_interrupt<A: Arch>(interrupted_irqs_on: bool) {
    crate::rcu::rcu_irq_enter::<A>();
    let _irq = IrqContext::enter(A::smp_processor_id());
    percpu::this_cpu::<A>()
        .ticks
        .fetch_add(1, Ordering::Relaxed);
    crate::rcu::rcu_tick::<A>(interrupted_irqs_on);
}
