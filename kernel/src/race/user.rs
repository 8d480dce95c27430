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
use crate::mm::arch::Mmu;
use crate::mm::PAGE_SIZE;
use crate::Arch;

/// Where a row maps its user pages when its forced schedule needs a CPU's
/// TLB entry for one of them to survive while that CPU waits (a store
/// through a stale translation after the PTE clear): `TASK_BASE` plus 45
/// pages.
///
/// QEMU's TCG TLB is direct-mapped: per vCPU and MMU mode, 64 entries or
/// more, indexed by the low bits of the virtual page number, with an
/// 8-entry victim TLB behind it. `TASK_BASE`'s page number ends in zero
/// bits, like the x86-64 local APIC page (0xfee00000) that every interrupt
/// writes its EOI to; and a timer tick taken while the CPU waits touches
/// enough pages to push an entry out of the victim TLB too. With the user
/// pages at `TASK_BASE` (and `TASK_BASE + 4 KiB`), some kernel layouts
/// lost the translation in a third of the forced iterations: the store
/// faulted instead of going through the stale entry, and the forced x86-64
/// cells of `zap-rmap-vs-mkclean` and `nested-flush` missed their hits.
/// `tests/tests/forced_repeat.rs` shows a layout that does it again.
pub fn stale_tlb_base<A: Mmu>() -> u64 {
    A::TASK_BASE + 45 * PAGE_SIZE
}

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
