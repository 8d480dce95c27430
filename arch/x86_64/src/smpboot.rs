//! CPU enumeration and secondary CPU start-up (Linux: `smpboot.c`,
//! `realmode/rm/trampoline_64.S`).
//!
//! Design:
//! - [`enumerate_cpus`] lists the CPUs from the ACPI MADT (fallback: QEMU fw_cfg's
//!   CPU count with APIC IDs 0..n) and gives logical numbers: 0 is the boot CPU,
//!   the others follow in MADT order. Each CPU's APIC ID is kept in its
//!   [`percpu::CpuData`].
//! - [`boot_secondary`] copies `boot/x86_64/trampoline.S` to [`TRAMPOLINE_BASE`]
//!   (once), allocates the CPU's kernel and double-fault stacks from the heap,
//!   publishes the stack and CPU number in [`SMPBOOT_STACK`] / [`SMPBOOT_CPU`]
//!   (read by head.S) and sends INIT, then STARTUP; a second STARTUP follows only
//!   if the CPU has not shown up after [`SIPI_RETRY_NS`].
//! - The new CPU goes real mode -> protected mode (trampoline) -> long mode
//!   (head.S, the boot CPU's page tables) -> [`start_secondary`], which sets up its
//!   per-CPU data, GDT/TSS, IDT and local APIC and enters the generic kernel with
//!   interrupts disabled.
//!
//! Invariants:
//! - CPUs are started one at a time: the generic kernel waits for each to come
//!   online before starting the next, so `SMPBOOT_*` hold one CPU's values at a
//!   time.
//! - The page at [`TRAMPOLINE_BASE`] belongs to the trampoline once the boot data
//!   has been copied ([`crate::pvh::parse`]) and the MADT read.

use crate::{acpi, apic, fw_cfg, gdt, idt, percpu, tsc, X86_64};
use alloc::alloc::{alloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use quiesce_kernel::{kprintln, NR_CPUS};

/// Where the trampoline runs: a page below 1 MiB, usable RAM on a PC, unused by
/// the kernel image (at 4 MiB) and by the data PVH hands over (copied first).
pub const TRAMPOLINE_BASE: u64 = 0x8000;
/// Size of a secondary CPU's kernel stack.
const THREAD_SIZE: usize = 64 * 1024;
/// Size of every CPU's double-fault stack.
pub const DF_STACK_SIZE: usize = 16 * 1024;
/// How long to wait for a started CPU before a second STARTUP IPI.
const SIPI_RETRY_NS: u64 = 10_000_000;

/// Stack top for the CPU being started; read by head.S.
pub static SMPBOOT_STACK: AtomicU64 = AtomicU64::new(0);
/// Logical number of the CPU being started; read by head.S.
pub static SMPBOOT_CPU: AtomicU64 = AtomicU64::new(0);

/// Whether the trampoline page is RAM ([`crate::pvh::PvhBoot`]).
static TRAMPOLINE_IS_RAM: AtomicBool = AtomicBool::new(false);

/// CPUs found by [`enumerate_cpus`].
static NR_CPUS_FOUND: AtomicUsize = AtomicUsize::new(1);
/// Which source [`enumerate_cpus`] used, for the diagnostics.
static ENUM_SOURCE: spin::Once<&'static str> = spin::Once::new();

core::arch::global_asm!(
    include_str!("../../../boot/x86_64/trampoline.S"),
    code32 = const gdt::BOOT_CS32,
    gdt = sym gdt::GDT,
    gdt_limit = const gdt::GDT_LIMIT,
    options(att_syntax),
);

extern "C" {
    static trampoline_start: u8;
    static trampoline_end: u8;
}

const _: () = assert!(TRAMPOLINE_BASE.is_multiple_of(4096) && TRAMPOLINE_BASE < 0x10_0000);

/// Finds the CPUs and records their APIC IDs; returns how many there are (which
/// may exceed [`NR_CPUS`]: the generic kernel reports that). Boot CPU, once.
pub fn enumerate_cpus(rsdp_hint: u64, trampoline_is_ram: bool) -> usize {
    TRAMPOLINE_IS_RAM.store(trampoline_is_ram, Ordering::Release);
    let boot_id = apic::read_apic_id();
    let madt = acpi::find_rsdp(rsdp_hint)
        .and_then(acpi::madt_cpus)
        .filter(|m| m.count > 0);
    let (source, count) = match &madt {
        Some(m) => ("acpi_madt", m.count),
        None => match fw_cfg::nb_cpus() {
            Some(n) if n > 0 => ("fw_cfg", n),
            _ => ("none", 1),
        },
    };
    ENUM_SOURCE.call_once(|| source);
    // The boot CPU is logical CPU 0; the others follow in enumeration order.
    percpu::cpu_data(0).set_apic_id(boot_id);
    let mut next = 1;
    for i in 0..count.min(NR_CPUS) {
        let id = match &madt {
            Some(m) => m.apic_ids[i],
            None => i as u32,
        };
        if id != boot_id && next < NR_CPUS {
            percpu::cpu_data(next).set_apic_id(id);
            next += 1;
        }
    }
    NR_CPUS_FOUND.store(count, Ordering::Release);
    count
}

/// Prints how the CPUs were found.
pub fn print_enumeration() {
    let n = NR_CPUS_FOUND.load(Ordering::Acquire).min(NR_CPUS);
    let mut ids = alloc::string::String::new();
    for cpu in 0..n {
        if cpu > 0 {
            ids.push(',');
        }
        ids.push_str(&alloc::format!("{}", percpu::cpu_data(cpu).apic_id()));
    }
    let fw_cfg = fw_cfg::nb_cpus().map_or(alloc::string::String::from("none"), |n| {
        alloc::format!("{n}")
    });
    kprintln!(
        "# cpu_enumeration={} apic_ids={ids} fw_cfg_nb_cpus={fw_cfg}",
        ENUM_SOURCE.get().copied().unwrap_or("none")
    );
}

/// Copies the trampoline to its page below 1 MiB, once.
fn setup_trampoline() {
    static DONE: spin::Once = spin::Once::new();
    DONE.call_once(|| {
        let start = &raw const trampoline_start;
        let len = (&raw const trampoline_end as usize) - (start as usize);
        assert!(len <= 4096, "trampoline larger than a page");
        // SAFETY: the source is the trampoline's bytes in the kernel image's
        // .rodata; the destination page is RAM (checked against the PVH memory
        // map by the caller), identity-mapped and writable, below 1 MiB, reserved
        // for the trampoline (module invariants) and not part of any Rust object,
        // and the two do not overlap. No CPU executes it yet.
        unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_BASE as usize as *mut u8, len) };
    });
}

/// Allocates a stack of `size` bytes from the kernel heap; returns its top.
/// Stacks are never freed: a started CPU runs until the machine ends.
fn alloc_stack(size: usize) -> Result<u64, &'static str> {
    let layout = Layout::from_size_align(size, 16).map_err(|_| "bad stack layout")?;
    // SAFETY: the layout has a non-zero size.
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        return Err("out of heap memory for a CPU stack");
    }
    Ok(base as u64 + size as u64)
}

/// Starts secondary CPU `cpu` with INIT-SIPI(-SIPI).
pub fn boot_secondary(cpu: usize) -> Result<(), &'static str> {
    if cpu == 0 || cpu >= NR_CPUS_FOUND.load(Ordering::Acquire).min(NR_CPUS) {
        return Err("no such CPU");
    }
    let data = percpu::cpu_data(cpu);
    if data.started() {
        return Err("CPU already started");
    }
    if !TRAMPOLINE_IS_RAM.load(Ordering::Acquire) {
        return Err("the trampoline page is not RAM in the PVH memory map");
    }
    setup_trampoline();
    let stack_top = alloc_stack(THREAD_SIZE)?;
    let df_top = alloc_stack(DF_STACK_SIZE)?;
    gdt::set_double_fault_stack(cpu, df_top);
    SMPBOOT_CPU.store(cpu as u64, Ordering::Relaxed);
    SMPBOOT_STACK.store(stack_top, Ordering::Release);

    let apic_id = data.apic_id();
    let page = (TRAMPOLINE_BASE >> 12) as u8;
    apic::send_init(apic_id);
    apic::send_startup(apic_id, page);
    let t0 = tsc::clock_ns();
    while !data.started() {
        if tsc::clock_ns() - t0 > SIPI_RETRY_NS {
            // The first STARTUP may have been lost (real hardware wants two).
            apic::send_startup(apic_id, page);
            break;
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Rust entry of a secondary CPU, called by head.S on the stack from
/// [`SMPBOOT_STACK`], in long mode with interrupts disabled.
pub extern "C" fn start_secondary(cpu: usize) -> ! {
    percpu::setup_this_cpu(cpu);
    gdt::load_this_cpu(cpu);
    idt::load_this_cpu();
    apic::setup_this_cpu();
    percpu::cpu_data(cpu).mark_started();
    quiesce_kernel::smp::secondary_main::<X86_64>(cpu)
}
