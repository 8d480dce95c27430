//! quiesce x86-64 backend: boots through PVH under QEMU and implements
//! [`quiesce_kernel::Arch`] for [`X86_64`].
//!
//! Design. The boot CPU enters `boot/x86_64/head.S` in 32-bit protected mode,
//! builds an identity map of the low 4 GiB, switches to long mode and calls
//! [`head64::x86_64_start_kernel`], which sets up the per-CPU data (GS base), the
//! COM1 console, the GDT with one TSS per CPU, the IDT, the local APIC, the TSC
//! clock and the CPU list, then hands over to the generic
//! [`quiesce_kernel::boot_cpu_main`]. Secondary CPUs are started by INIT-SIPI-SIPI
//! through a real-mode trampoline ([`smpboot`]) and join the generic kernel in
//! [`quiesce_kernel::smp::secondary_main`]. Interrupts and exceptions enter through
//! one assembly stub per vector that saves every register ([`idt`]); IPIs, NMIs and
//! the timer are local-APIC functions ([`apic`], [`smp`]). The memory model's
//! `Mmu` contract is implemented in [`mmu`] on top of the page-table format of
//! the backend's library crate (`quiesce_arch_x86_64::pgtable`, host-tested),
//! with TLB shootdowns in [`tlb`] and page faults and probe fixups in [`fault`].
//!
//! Invariants:
//! - Physical and virtual addresses are equal below 4 GiB on every CPU: the boot
//!   CPU builds that map once (never changed), and every task PML4 shares it
//!   ([`mmu`]); the local APIC page is mapped uncached.
//! - The GS base of every CPU that runs Rust code points at its own
//!   [`percpu::CpuData`], whose first word is the logical CPU number.
//! - The kernel runs in ring 0 only; every IDT gate is an interrupt gate, so
//!   handlers run with IF=0.
//! - Unsafe code lives in the modules that own a piece of hardware: port I/O in
//!   [`serial`], [`tsc`] (PIT), [`fw_cfg`], [`apic`] (8259 masking) and [`smp`]
//!   (isa-debug-exit); MMIO and MSRs in [`apic`]; firmware memory in [`pvh`]
//!   (`read_phys`, also used by [`acpi`]); descriptor tables in [`gdt`] and
//!   [`idt`]; `%gs` in [`percpu`]; `rdtsc` in [`tsc`]; the trampoline copy and
//!   the heap-allocated CPU stacks in [`smpboot`]; CR3 and INVLPG in [`tlb`];
//!   live PTE atomics in [`mmu`]; CR2 and the probe routines in [`fault`];
//!   `rbp` in [`unwind`].
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod acpi;
mod apic;
mod fault;
mod fw_cfg;
mod gdt;
mod head64;
mod idt;
mod mmu;
mod percpu;
mod pvh;
mod serial;
mod smp;
mod smpboot;
mod tlb;
mod tsc;
mod unwind;

use quiesce_kernel::{Arch, IrqFlags};
use x86_64::instructions::interrupts;
use x86_64::registers::rflags::{self, RFlags};

/// The x86-64 implementation of the kernel's hardware contract.
pub struct X86_64;

// SAFETY: promise 1 of `Arch`: `kernel_image` is `__kernel_start` to
// `__kernel_end` of the linker script, inside the boot PML4's 1:1 map of the
// low 4 GiB, which every task PML4 shares (`pgtable::pgd_ctor`) and which never
// changes after boot.
unsafe impl Arch for X86_64 {
    const NAME: &'static str = "x86_64";
    const HAS_NMI: bool = true;

    fn console_write(bytes: &[u8]) {
        serial::write(bytes);
    }

    #[inline]
    fn smp_processor_id() -> usize {
        percpu::smp_processor_id()
    }

    #[inline]
    fn local_irq_enable() {
        interrupts::enable();
    }

    #[inline]
    fn local_irq_disable() {
        interrupts::disable();
    }

    #[inline]
    fn irqs_disabled() -> bool {
        !interrupts::are_enabled()
    }

    #[inline]
    fn local_irq_save() -> IrqFlags {
        let flags = rflags::read_raw();
        interrupts::disable();
        IrqFlags(flags as usize)
    }

    #[inline]
    fn local_irq_restore(flags: IrqFlags) {
        if flags.0 as u64 & RFlags::INTERRUPT_FLAG.bits() != 0 {
            interrupts::enable();
        } else {
            interrupts::disable();
        }
    }

    #[inline]
    /// Linux's `copy_page_regs`: 64 bytes a turn through registers. Under
    /// QEMU TCG `rep movsq` (the `memcpy` of the default) runs about six
    /// times slower than this loop.
    unsafe fn copy_page(to: *mut u8, from: *const u8) {
        // SAFETY: the caller guarantees a page at each address, not
        // overlapping: the loop reads 4096 bytes from `from` and writes
        // 4096 bytes to `to`, in 64 turns of 64 bytes, and touches nothing
        // else (no stack).
        unsafe {
            core::arch::asm!(
                "2:",
                "mov {a}, [{src}]",
                "mov {b}, [{src} + 8]",
                "mov {c}, [{src} + 16]",
                "mov {d}, [{src} + 24]",
                "mov [{dst}], {a}",
                "mov [{dst} + 8], {b}",
                "mov [{dst} + 16], {c}",
                "mov [{dst} + 24], {d}",
                "mov {a}, [{src} + 32]",
                "mov {b}, [{src} + 40]",
                "mov {c}, [{src} + 48]",
                "mov {d}, [{src} + 56]",
                "mov [{dst} + 32], {a}",
                "mov [{dst} + 40], {b}",
                "mov [{dst} + 48], {c}",
                "mov [{dst} + 56], {d}",
                "add {src}, 64",
                "add {dst}, 64",
                "dec {n:e}",
                "jnz 2b",
                src = inout(reg) from => _,
                dst = inout(reg) to => _,
                n = inout(reg) quiesce_kernel::mm::PAGE_SIZE / 64 => _,
                a = out(reg) _,
                b = out(reg) _,
                c = out(reg) _,
                d = out(reg) _,
                options(nostack),
            );
        }
    }

    fn cpu_relax() {
        core::hint::spin_loop();
    }

    #[inline]
    fn wait_for_interrupt() {
        // `sti; hlt`: the STI shadow keeps an interrupt from arriving between the
        // two, so a pending interrupt ends the halt instead of being lost.
        interrupts::enable_and_hlt();
    }

    #[inline]
    fn clock_ns() -> u64 {
        tsc::clock_ns()
    }

    fn send_ipi(cpu: usize) {
        smp::send_call_function_ipi(cpu);
    }

    fn send_nmi(cpu: usize) {
        smp::send_nmi(cpu);
    }

    fn ipi_pending(cpu: usize) -> Option<bool> {
        // Only a CPU's own local APIC is readable (same MMIO page on every
        // CPU); another CPU's IRR is not visible from here.
        (cpu == percpu::smp_processor_id()).then(|| {
            apic::irr_pending(idt::CALL_FUNCTION_VECTOR)
                || apic::irr_pending(tlb::INVALIDATE_TLB_VECTOR)
        })
    }

    fn timer_start(period_ns: u64) {
        apic::timer_start(period_ns);
        if percpu::smp_processor_id() == 0 {
            head64::print_boot_diagnostics();
        }
    }

    fn boot_secondary(cpu: usize) -> Result<(), &'static str> {
        smpboot::boot_secondary(cpu)
    }

    fn stop_other_cpus() {
        smp::stop_other_cpus();
    }

    fn exit(success: bool) -> ! {
        smp::stop_other_cpus();
        smp::qemu_exit(success)
    }

    #[inline(always)]
    fn frame_pointer() -> usize {
        unwind::frame_pointer()
    }

    fn unwind_frame(
        fp: usize,
        read: &mut dyn FnMut(usize) -> Option<usize>,
    ) -> Option<quiesce_kernel::backtrace::StackFrame> {
        unwind::unwind_frame(fp, read)
    }

    fn kernel_image() -> core::ops::Range<usize> {
        unwind::kernel_image()
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    quiesce_kernel::panic::panic::<X86_64>(info)
}
