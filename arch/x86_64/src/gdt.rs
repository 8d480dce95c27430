//! The global descriptor table and the per-CPU task-state segments (Linux:
//! `arch/x86/kernel/cpu/common.c`, `desc.h`).
//!
//! Design: one GDT for every CPU and every mode, statically allocated and loaded
//! by head.S (boot CPU) and the trampoline (secondary CPUs) before long mode:
//! a 64-bit kernel code segment, a flat data segment, a 32-bit code segment for
//! the way up from protected mode, then one 16-byte TSS descriptor per possible
//! CPU. Each CPU's TSS lives in its [`crate::percpu::CpuData`] and provides IST
//! stack 1, used for double faults.
//!
//! Invariants:
//! - The first four entries are constant. The TSS descriptors are written by the
//!   boot CPU in [`init`], before any secondary CPU starts; afterwards only the
//!   processor touches them (`ltr` sets the busy bit of the CPU's own entry).
//! - A CPU fills its TSS before it loads its task register, and never again.
//! - Entries are atomics, so the tables are shared without `static mut`; the
//!   layout is that of the plain `u64` array the processor reads.
//!
//! The descriptor and TSS formats are the `x86_64` crate's
//! (`DescriptorFlags`, `Descriptor::tss_segment_unchecked`,
//! `TaskStateSegment`'s field offsets); the tables stay arrays of atomics
//! here because head.S and the trampoline load the GDT by symbol before long
//! mode, and the boot CPU fills other CPUs' TSSs through shared references.

use crate::percpu;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use quiesce_kernel::NR_CPUS;
use x86_64::instructions::tables::{lgdt, load_tss};
use x86_64::structures::gdt::{Descriptor, DescriptorFlags, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::structures::DescriptorTablePointer;
use x86_64::{PrivilegeLevel, VirtAddr};

/// 64-bit kernel code segment selector.
pub const KERNEL_CS: u16 = 0x08;
/// Flat kernel data segment selector.
pub const KERNEL_DS: u16 = 0x10;
/// 32-bit flat code segment, used only on the way into long mode.
pub const BOOT_CS32: u16 = 0x18;
/// Index of the first TSS descriptor (two entries per CPU).
const FIRST_TSS: usize = 4;
/// Number of 8-byte GDT entries.
const GDT_ENTRIES: usize = FIRST_TSS + 2 * NR_CPUS;
/// The GDT limit, as `lgdt` wants it.
pub const GDT_LIMIT: usize = GDT_ENTRIES * 8 - 1;
const _: () = assert!(GDT_LIMIT <= u16::MAX as usize);

/// Double-fault IST index (1-based, as in the IDT gate).
pub const DOUBLE_FAULT_IST: u8 = 1;

/// The GDT; its symbol is referenced by head.S and trampoline.S.
#[repr(C, align(16))]
pub struct Gdt([AtomicU64; GDT_ENTRIES]);

/// Builds the constant part of the table.
const fn initial_gdt() -> Gdt {
    let mut e = [const { AtomicU64::new(0) }; GDT_ENTRIES];
    // Linux's GDT_ENTRY_KERNEL_CS, _DS and _CS32 (`cpu/common.c`), accessed bit
    // preset as there, so loading a selector never writes the table:
    // present, ring 0, code, readable, long mode (L=1, D=0), 4 KiB granularity;
    e[1] = AtomicU64::new(DescriptorFlags::KERNEL_CODE64.bits());
    // present, ring 0, data, writable, 32-bit, 4 KiB granularity, 4 GiB;
    e[2] = AtomicU64::new(DescriptorFlags::KERNEL_DATA.bits());
    // present, ring 0, code, readable, 32-bit, 4 KiB granularity, 4 GiB.
    e[3] = AtomicU64::new(DescriptorFlags::KERNEL_CODE32.bits());
    Gdt(e)
}

/// The one GDT.
pub static GDT: Gdt = initial_gdt();

/// A 64-bit task-state segment (104 bytes): the `x86_64` crate's
/// `TaskStateSegment` layout, held as 32-bit atomic words because the
/// processor's layout puts 64-bit fields at 4-byte offsets and the boot CPU
/// fills other CPUs' segments through shared references.
#[repr(C, align(16))]
pub struct Tss([AtomicU32; 26]);

// The words are the segment (the alignment may pad the type beyond them).
const _: () = assert!(size_of::<[AtomicU32; 26]>() == size_of::<TaskStateSegment>());

impl Tss {
    const SIZE: u64 = size_of::<TaskStateSegment>() as u64;
    /// The word of IST 1's low half.
    const IST_WORD: usize = offset_of!(TaskStateSegment, interrupt_stack_table) / 4;
    /// The word holding the I/O map base, in its high half.
    const IOMAP_WORD: usize = offset_of!(TaskStateSegment, iomap_base) / 4;

    /// An empty TSS; [`Tss::set_ist`] fills it before the CPU loads it.
    pub const fn new() -> Self {
        Self([const { AtomicU32::new(0) }; 26])
    }

    /// Sets IST stack `ist` (1..=7) to `top` and places the I/O bitmap beyond the
    /// limit (no port access from ring 3; the kernel has no ring 3 anyway).
    fn set_ist(&self, ist: u8, top: u64) {
        const _: () = assert!(offset_of!(TaskStateSegment, iomap_base) % 4 == 2);
        let word = Self::IST_WORD + 2 * (usize::from(ist) - 1);
        self.0[word].store(top as u32, Ordering::Relaxed);
        self.0[word + 1].store((top >> 32) as u32, Ordering::Relaxed);
        // I/O map base (the word's high half) at or beyond the limit: no bitmap.
        self.0[Self::IOMAP_WORD].store((Self::SIZE as u32) << 16, Ordering::Relaxed);
    }
}

fn tss_selector(cpu: usize) -> SegmentSelector {
    SegmentSelector::new((FIRST_TSS + 2 * cpu) as u16, PrivilegeLevel::Ring0)
}

/// Writes the TSS descriptor of every possible CPU. Boot CPU, before any other
/// CPU starts.
pub fn init() {
    for cpu in 0..NR_CPUS {
        let tss: *const TaskStateSegment = (&percpu::cpu_data(cpu).tss as *const Tss).cast();
        // Present, available 64-bit TSS (type 9), byte granularity, limit
        // 103 (the I/O map base, 0 or 104, is never beyond the segment).
        // SAFETY: `tss` points to a `Tss`, whose words have
        // `TaskStateSegment`'s size and layout (asserted above) and lives in the static per-CPU
        // data for the whole run, so the descriptor stays valid while used.
        // The crate reads its I/O map base: only the boot CPU runs now, and
        // nothing writes that TSS concurrently.
        let Descriptor::SystemSegment(low, high) =
            (unsafe { Descriptor::tss_segment_unchecked(tss) })
        else {
            unreachable!("a TSS descriptor is a system segment")
        };
        GDT.0[FIRST_TSS + 2 * cpu].store(low, Ordering::Relaxed);
        GDT.0[FIRST_TSS + 2 * cpu + 1].store(high, Ordering::Relaxed);
    }
}

/// Sets the double-fault (IST 1) stack of `cpu`, which has not loaded its task
/// register yet: the boot CPU for itself early, and for each secondary CPU
/// before starting it.
pub fn set_double_fault_stack(cpu: usize, top: u64) {
    percpu::cpu_data(cpu).tss.set_ist(DOUBLE_FAULT_IST, top);
}

/// Loads the GDT again (now from its 64-bit address) and the task register of
/// `cpu`. Each CPU calls this once for itself, after [`init`] and
/// [`set_double_fault_stack`].
pub fn load_this_cpu(cpu: usize) {
    let ptr = DescriptorTablePointer {
        limit: GDT_LIMIT as u16,
        base: VirtAddr::from_ptr(&GDT),
    };
    // SAFETY: `GDT` is a static, so it outlives every CPU; its code and data
    // entries are the ones already loaded in CS/DS/SS (head.S), so reloading the
    // table changes no live segment.
    unsafe { lgdt(&ptr) };
    // SAFETY: the selector names this CPU's own TSS descriptor, written by `init`
    // before any CPU could get here, pointing at a static TSS whose IST entry is
    // set; no other CPU loads this descriptor.
    unsafe { load_tss(tss_selector(cpu)) };
}
