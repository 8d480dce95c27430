//! The boot CPU's path from the PVH entry to the generic kernel (Linux:
//! `head_64.S` and `head64.c`).
//!
//! `boot/x86_64/head.S` (included here) runs first: 32-bit entry, identity map,
//! long mode, boot stack. It calls [`x86_64_start_kernel`], which performs the
//! early set-up in dependency order (per-CPU data before anything that may print
//! or fault, the console before anything that may panic, descriptor tables before
//! anything that may fault, boot data copied before low memory is reused) and then
//! enters [`quiesce_kernel::boot_cpu_main`] with interrupts disabled. The
//! machine set-up (boot data, APIC, TSC calibration, CPU enumeration) is its
//! `setup_arch`, which runs after the KTAP header.

use crate::{apic, gdt, idt, percpu, pvh, serial, smpboot, tsc, X86_64};
use quiesce_kernel::{kprintln, BootInfo};
use x86_64::VirtAddr;

/// Size of the boot CPU's stack (in head.S's .bss).
const BOOT_STACK_SIZE: usize = 64 * 1024;

core::arch::global_asm!(
    include_str!("../../../boot/x86_64/pvh_note.S"),
    include_str!("../../../boot/x86_64/head.S"),
    code64 = const gdt::KERNEL_CS,
    code32 = const gdt::BOOT_CS32,
    data = const gdt::KERNEL_DS,
    gdt = sym gdt::GDT,
    gdt_limit = const gdt::GDT_LIMIT,
    boot_stack_size = const BOOT_STACK_SIZE,
    df_stack_size = const smpboot::DF_STACK_SIZE,
    start_kernel = sym x86_64_start_kernel,
    start_secondary = sym smpboot::start_secondary,
    smpboot_stack = sym smpboot::SMPBOOT_STACK,
    smpboot_cpu = sym smpboot::SMPBOOT_CPU,
    options(att_syntax),
);

extern "C" {
    /// End of the boot CPU's double-fault stack (head.S).
    static boot_df_stack_top: u8;
}

/// Rust entry of the boot CPU, called by head.S on the boot stack, in long mode,
/// with interrupts disabled. `start_info` is the physical address of PVH's
/// `hvm_start_info`.
extern "C" fn x86_64_start_kernel(start_info: u64) -> ! {
    percpu::setup_this_cpu(0);
    serial::init();
    // Registered here already so that an early panic is printed; the generic
    // kernel registers the same writer again.
    quiesce_kernel::console::register(<X86_64 as quiesce_kernel::Arch>::console_write);
    gdt::init();
    gdt::set_double_fault_stack(0, VirtAddr::from_ptr(&raw const boot_df_stack_top).as_u64());
    gdt::load_this_cpu(0);
    idt::init();
    idt::load_this_cpu();

    quiesce_kernel::boot_cpu_main::<X86_64>(|| {
        let boot = pvh::parse(start_info);
        apic::disable_8259();
        apic::setup_this_cpu();
        tsc::calibrate();
        let nr_cpus = smpboot::enumerate_cpus(boot.rsdp, boot.trampoline_is_ram);
        percpu::cpu_data(0).mark_started();
        BootInfo {
            cmdline: boot.cmdline,
            nr_cpus,
            memory: boot.memory,
        }
    })
}

/// Prints what the boot measured and found, as top-level KTAP diagnostics. Called
/// once, when the boot CPU starts its tick (after the `KTAP version 1` line).
pub fn print_boot_diagnostics() {
    static ONCE: spin::Once = spin::Once::new();
    ONCE.call_once(|| {
        kprintln!(
            "# tsc_khz={} tsc_source=pit_ch2 calibration_error_ppm={}",
            tsc::tsc_khz(),
            tsc::calibration_error_ppm()
        );
        kprintln!(
            "# apic_timer_khz={} apic_mode=xapic_mmio",
            apic::timer_khz()
        );
        smpboot::print_enumeration();
        pvh::print_diagnostics();
    });
}
