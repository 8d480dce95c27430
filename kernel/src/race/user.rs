//! What a row's user program does besides loads and stores: sleep until
//! another role tells it something happened, and wake such a sleeper (a
//! futex wait and wake, done with the interrupt hardware).
//!
//! A sleeping role halts its CPU instead of spinning: under QEMU TCG a
//! spinning vCPU keeps a host core from the roles that do the work, and
//! with more roles than host cores an iteration then costs host time
//! slices instead of microseconds.
//!
//! Invariant: the condition is checked with interrupts off and the halt
//! re-enables them atomically ([`Arch::wait_for_interrupt`]), so a wake
//! sent after the check ends the halt instead of being lost.

use super::point;
use crate::Arch;

/// Halts the calling CPU until `cond` holds; any interrupt (a [`wake`],
/// a flush IPI, the tick) makes it check again. Call with interrupts on.
pub fn sleep_until<A: Arch>(cond: impl Fn() -> bool) {
    loop {
        A::local_irq_disable();
        if cond() {
            A::local_irq_enable();
            return;
        }
        A::wait_for_interrupt();
        A::local_irq_enable();
    }
}

/// Wakes the CPU of `role` if it sleeps in [`sleep_until`] (a bare IPI:
/// nothing queued).
pub fn wake<A: Arch>(role: usize) {
    if let Some(cpu) = point::cpu_of(role) {
        A::send_ipi(cpu);
    }
}
