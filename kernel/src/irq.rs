//! Generic interrupt handlers, called by the backend's interrupt entry code with
//! interrupts disabled, after the interrupt was acknowledged.

use crate::{percpu, smp, Arch};
use core::sync::atomic::Ordering;

/// An IPI arrived (x86-64 fixed vector, s390x external call).
pub fn ipi_interrupt<A: Arch>() {
    percpu::this_cpu::<A>().ipis.fetch_add(1, Ordering::Relaxed);
    smp::run_call_queue::<A>();
}

/// An NMI arrived. May interrupt any code, including code holding locks: it only
/// counts.
pub fn nmi_interrupt<A: Arch>() {
    percpu::this_cpu::<A>().nmis.fetch_add(1, Ordering::Relaxed);
}

/// A timer tick arrived.
pub fn timer_interrupt<A: Arch>() {
    percpu::this_cpu::<A>()
        .ticks
        .fetch_add(1, Ordering::Relaxed);
}
