//! Per-CPU data of the x86-64 backend, reached through the GS base (Linux:
//! `percpu.h`, `this_cpu_read`).
//!
//! Design: one statically allocated [`CpuData`] per possible CPU. Each CPU writes
//! the address of its own entry to `IA32_GS_BASE` before it runs any other Rust
//! code, so [`smp_processor_id`] is a single `mov %gs:0`.
//!
//! Invariants:
//! - `cpu` is the first field of [`CpuData`] (checked at compile time) and is
//!   written before the GS base is pointed at the entry; it never changes after.
//! - The kernel runs in ring 0 only and never executes `swapgs`, so the GS base
//!   stays the CPU's own for the rest of the run.

use crate::gdt::Tss;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use quiesce_kernel::NR_CPUS;
use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

/// One CPU's backend data.
#[repr(C, align(64))]
pub struct CpuData {
    /// Logical CPU number; read as `%gs:0`, so it must stay the first field.
    cpu: AtomicUsize,
    /// Local APIC ID, set by CPU enumeration before the CPU is started.
    apic_id: AtomicU32,
    /// Set by the CPU itself once its GDT, IDT and local APIC are set up: from
    /// then on it takes NMIs, so [`crate::smp::stop_other_cpus`] must stop it.
    started: AtomicBool,
    /// The CPU's task-state segment, which holds its IST stacks.
    pub tss: Tss,
}

const _: () = assert!(core::mem::offset_of!(CpuData, cpu) == 0);

impl CpuData {
    const fn new() -> Self {
        Self {
            cpu: AtomicUsize::new(0),
            apic_id: AtomicU32::new(0),
            started: AtomicBool::new(false),
            tss: Tss::new(),
        }
    }

    /// Local APIC ID of this CPU.
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Acquire)
    }

    /// Records the local APIC ID (CPU enumeration, before the CPU starts).
    pub fn set_apic_id(&self, id: u32) {
        self.apic_id.store(id, Ordering::Release);
    }

    /// Whether the CPU has set itself up and takes NMIs.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Marks the CPU as set up; called by the CPU itself.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }
}

static CPU_DATA: [CpuData; NR_CPUS] = [const { CpuData::new() }; NR_CPUS];

/// The backend data of `cpu`.
pub fn cpu_data(cpu: usize) -> &'static CpuData {
    &CPU_DATA[cpu]
}

/// Points the calling CPU's GS base at the data of logical CPU `cpu`. First thing
/// every CPU does in Rust.
pub fn setup_this_cpu(cpu: usize) {
    let data = &CPU_DATA[cpu];
    data.cpu.store(cpu, Ordering::Relaxed);
    GsBase::write(VirtAddr::from_ptr(data));
}

/// Logical number of the calling CPU.
#[inline(always)]
pub fn smp_processor_id() -> usize {
    let cpu: usize;
    // SAFETY: reads one word through GS. The GS base points at this CPU's
    // `CpuData`, whose first field is the CPU number (module invariants); before
    // `setup_this_cpu` it is 0, and address 0 is mapped (identity map), so the
    // read cannot fault either way. No memory is written.
    unsafe {
        core::arch::asm!(
            "mov {}, qword ptr gs:[0]",
            out(reg) cpu,
            options(nostack, preserves_flags, readonly, pure),
        );
    }
    cpu
}
