//! Cross-CPU signalling: call-function IPIs, NMIs, stopping the other CPUs and
//! ending the machine (Linux: `arch/x86/kernel/smp.c`, `native_stop_other_cpus`).
//!
//! Design: [`stop_other_cpus`] sets a stop request, sends an NMI to every other
//! started CPU and waits (bounded) for each to acknowledge; [`nmi_handler`] sees
//! the request, acknowledges and halts with interrupts off for good, since NMIs
//! stay blocked until an `iretq` that never comes. An NMI reaches a CPU whatever
//! its IF, so a CPU spinning with interrupts off or parked by a second panic is
//! stopped too. Without a stop request an NMI just calls the generic handler.
//!
//! Invariants: only one CPU ever stops the others (the first to ask owns the
//! machine); a later caller on another CPU parks and waits for its NMI, a later
//! call on the owning CPU (panic, then exit) returns at once.

use crate::{apic, idt::CALL_FUNCTION_VECTOR, percpu, tsc, X86_64};
use core::sync::atomic::{AtomicUsize, Ordering};
use quiesce_kernel::{kprintln_emergency, NR_CPUS};
use x86_64::instructions::{hlt, interrupts, port::Port};

/// I/O port of QEMU's isa-debug-exit device.
const QEMU_EXIT_PORT: u16 = 0xf4;
/// Values written to it: QEMU exits with `(v << 1) | 1` (33 and 35).
const QEMU_EXIT_SUCCESS: u32 = 0x10;
const QEMU_EXIT_FAILURE: u32 = 0x11;
/// How long [`stop_other_cpus`] waits for acknowledgements.
const STOP_TIMEOUT_NS: u64 = 1_000_000_000;

/// The CPU stopping the others, or `usize::MAX`.
static STOPPER: AtomicUsize = AtomicUsize::new(usize::MAX);
/// CPUs that have acknowledged the stop request.
static STOPPED: AtomicUsize = AtomicUsize::new(0);

/// Sends the call-function IPI to `cpu`.
pub fn send_call_function_ipi(cpu: usize) {
    apic::send_ipi(percpu::cpu_data(cpu).apic_id(), CALL_FUNCTION_VECTOR);
}

/// Sends an NMI to `cpu`.
pub fn send_nmi(cpu: usize) {
    apic::send_nmi(percpu::cpu_data(cpu).apic_id());
}

/// Halts the calling CPU for good. NMIs still wake it; its NMI handler then
/// acknowledges a stop request and halts again.
fn halt_forever() -> ! {
    loop {
        interrupts::disable();
        hlt();
    }
}

/// Vector 2. Runs with NMIs blocked until it returns.
pub fn nmi_handler() {
    let stopper = STOPPER.load(Ordering::Acquire);
    // The stopping CPU itself keeps running (a self-test NMI may still reach it).
    if stopper != usize::MAX && stopper != percpu::smp_processor_id() {
        STOPPED.fetch_add(1, Ordering::AcqRel);
        halt_forever();
    }
    // Not a stop request: serve any NMI TLB shootdown naming this CPU. An NMI
    // that carried a flush may also stand for a self-test NMI (NMIs merge),
    // so the generic handler runs either way.
    crate::tlb::nmi_flush_tlb();
    quiesce_kernel::irq::nmi_interrupt::<X86_64>();
}

/// Stops every other started CPU; returns once all have acknowledged or the
/// timeout has passed (reported as a diagnostic).
pub fn stop_other_cpus() {
    let me = percpu::smp_processor_id();
    if let Err(owner) =
        STOPPER.compare_exchange(usize::MAX, me, Ordering::AcqRel, Ordering::Acquire)
    {
        if owner == me {
            return;
        }
        // Another CPU owns the machine and stops us with an NMI.
        halt_forever();
    }
    let mut expected = 0;
    for cpu in (0..NR_CPUS).filter(|&c| c != me && percpu::cpu_data(c).started()) {
        send_nmi(cpu);
        expected += 1;
    }
    let t0 = tsc::clock_ns();
    while STOPPED.load(Ordering::Acquire) < expected {
        if tsc::clock_ns() - t0 > STOP_TIMEOUT_NS {
            kprintln_emergency!(
                "# stop_other_cpus: only {} of {expected} CPUs stopped",
                STOPPED.load(Ordering::Acquire)
            );
            return;
        }
        core::hint::spin_loop();
    }
}

/// Ends QEMU through isa-debug-exit. The caller has stopped the other CPUs.
pub fn qemu_exit(success: bool) -> ! {
    let value = if success {
        QEMU_EXIT_SUCCESS
    } else {
        QEMU_EXIT_FAILURE
    };
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit device (a fixed part of how this
    // kernel is run); the write ends the machine and touches no memory.
    unsafe { Port::<u32>::new(QEMU_EXIT_PORT).write(value) };
    // Without the device the write does nothing: stay halted.
    halt_forever()
}
