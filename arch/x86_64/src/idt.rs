//! The interrupt descriptor table and the Rust side of interrupt entry (Linux:
//! `idt.c`, `traps.c`, `entry_64.S`).
//!
//! Design: `boot/x86_64/entry_64.S` (included here) has a 16-byte stub for every
//! one of the 256 vectors; each pushes a uniform frame and the vector and calls
//! [`do_interrupt`] with a pointer to the saved registers ([`PtRegs`]). Every gate
//! is a ring-0 interrupt gate (IF=0 in the handler); #DF runs on IST stack 1.
//!
//! [`do_interrupt`] dispatches: #PF goes to [`crate::fault::exc_page_fault`]
//! and #GP to [`crate::fault::exc_general_protection`], which resolve the fault
//! or fix up a probe; any other exception 0-31 (and an unresolved #PF or #GP)
//! prints the CPU, the vector, the error code, RIP/CS/RFLAGS/RSP, CR2 for #PF,
//! all general registers and the backtrace from RIP and RBP as `# `
//! diagnostics and panics; vector 2 (NMI)
//! goes to [`crate::smp::nmi_handler`]; the local APIC's call-function IPI, TLB
//! shootdown ([`crate::tlb`]) and timer vectors acknowledge (EOI) first and
//! then call their handlers, so a second interrupt of the same vector stays
//! pending in the IRR until the handler returns with `iretq` (IF=1 again).
//!
//! Invariants: the IDT is written once by the boot CPU ([`init`]) before any
//! secondary CPU starts and is read-only afterwards; all CPUs share it.

use crate::tlb::{self, INVALIDATE_TLB_VECTOR};
use crate::{apic, fault, percpu, smp, X86_64};
use core::sync::atomic::{AtomicU64, Ordering};
use quiesce_kernel::kprintln_emergency;
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// Non-maskable interrupt.
pub const NMI_VECTOR: u8 = 2;
/// Double fault.
const DOUBLE_FAULT_VECTOR: u8 = 8;
/// General protection fault.
const GENERAL_PROTECTION_VECTOR: u8 = 13;
/// Page fault.
const PAGE_FAULT_VECTOR: u8 = 14;
/// Local APIC timer (Linux: LOCAL_TIMER_VECTOR).
pub const LOCAL_TIMER_VECTOR: u8 = 0xec;
/// Cross-CPU function call IPI (Linux: CALL_FUNCTION_VECTOR).
pub const CALL_FUNCTION_VECTOR: u8 = 0xfb;
/// Local APIC error interrupt (Linux: ERROR_APIC_VECTOR).
pub const ERROR_APIC_VECTOR: u8 = 0xfe;
/// Local APIC spurious interrupt (Linux: SPURIOUS_APIC_VECTOR).
pub const SPURIOUS_APIC_VECTOR: u8 = 0xff;

core::arch::global_asm!(
    include_str!("../../../boot/x86_64/entry_64.S"),
    do_interrupt = sym do_interrupt,
    options(att_syntax),
);

extern "C" {
    /// First of the 256 entry stubs in entry_64.S, 16 bytes apart.
    static irq_entries: u8;
}

/// Size of one entry stub.
const STUB_SIZE: u64 = 16;

/// The registers saved on interrupt entry, lowest address first: the general
/// registers pushed by `common_interrupt`, the vector and error code pushed by
/// the stub (or the processor), and the processor's interrupt frame.
#[repr(C)]
#[allow(missing_docs)]
pub struct PtRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<PtRegs>() == 22 * 8);

/// The IDT: 256 gates of 16 bytes.
#[repr(C, align(16))]
struct Idt([AtomicU64; 512]);

static IDT: Idt = Idt([const { AtomicU64::new(0) }; 512]);

/// Fills every gate. Boot CPU, once, before interrupts or other CPUs.
pub fn init() {
    let entries = VirtAddr::from_ptr(&raw const irq_entries).as_u64();
    for vector in 0..=255u8 {
        let handler = entries + STUB_SIZE * u64::from(vector);
        let ist = if vector == DOUBLE_FAULT_VECTOR {
            crate::gdt::DOUBLE_FAULT_IST
        } else {
            0
        };
        // Present, DPL 0, 64-bit interrupt gate (type 0xe).
        let low = (handler & 0xffff)
            | (u64::from(crate::gdt::KERNEL_CS) << 16)
            | (u64::from(ist) << 32)
            | (0x8e << 40)
            | (((handler >> 16) & 0xffff) << 48);
        let high = handler >> 32;
        IDT.0[2 * usize::from(vector)].store(low, Ordering::Relaxed);
        IDT.0[2 * usize::from(vector) + 1].store(high, Ordering::Relaxed);
    }
}

/// Loads the IDT on the calling CPU.
pub fn load_this_cpu() {
    let ptr = DescriptorTablePointer {
        limit: (512 * 8 - 1) as u16,
        base: VirtAddr::from_ptr(&IDT),
    };
    // SAFETY: `IDT` is a static, filled by `init` before any CPU loads it (the
    // boot CPU calls `init` first; secondary CPUs start later), and every gate
    // points at a stub of entry_64.S that saves all registers and returns with
    // `iretq`.
    unsafe { lidt(&ptr) };
}

/// Rust entry of every interrupt and exception, called by `common_interrupt`
/// with IF=0 and a pointer to the registers saved on the stack.
extern "C" fn do_interrupt(regs: &mut PtRegs) {
    let vector = regs.vector as u8;
    match vector {
        NMI_VECTOR => smp::nmi_handler(),
        PAGE_FAULT_VECTOR => fault::exc_page_fault(regs),
        GENERAL_PROTECTION_VECTOR => fault::exc_general_protection(regs),
        0..=31 => exception(regs),
        CALL_FUNCTION_VECTOR => {
            apic::eoi();
            quiesce_kernel::irq::ipi_interrupt::<X86_64>();
        }
        INVALIDATE_TLB_VECTOR => {
            apic::eoi();
            tlb::smp_invalidate_interrupt();
        }
        LOCAL_TIMER_VECTOR => {
            apic::eoi();
            // RFLAGS.IF of the interrupted code.
            quiesce_kernel::irq::timer_interrupt::<X86_64>(regs.rflags & (1 << 9) != 0);
        }
        ERROR_APIC_VECTOR => {
            let esr = apic::read_esr();
            apic::eoi();
            kprintln_emergency!(
                "# apic_error cpu={} esr={esr:#x}",
                percpu::smp_processor_id()
            );
        }
        // Not acknowledged: the spurious vector sets no ISR bit.
        SPURIOUS_APIC_VECTOR => {}
        _ => {
            apic::eoi();
            panic!(
                "unexpected interrupt vector {vector:#x} on CPU {}",
                percpu::smp_processor_id()
            );
        }
    }
}

fn exception_name(vector: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved",
        "#MF x87 floating point",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD floating point",
        "#VE virtualisation",
        "#CP control protection",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved",
    ];
    NAMES.get(usize::from(vector)).copied().unwrap_or("?")
}

/// Reports an exception with every register and the backtrace of the
/// faulting context, then panics (which stops the machine and fails the run).
pub(crate) fn exception(regs: &PtRegs) -> ! {
    let cpu = percpu::smp_processor_id();
    let vector = regs.vector as u8;
    let name = exception_name(vector);
    kprintln_emergency!(
        "# EXCEPTION on CPU {cpu}: vector={vector} ({name}) error_code={:#x}",
        regs.error_code
    );
    kprintln_emergency!(
        "# rip={:#018x} cs={:#06x} rflags={:#010x} rsp={:#018x} ss={:#06x}",
        regs.rip,
        regs.cs,
        regs.rflags,
        regs.rsp,
        regs.ss
    );
    if vector == PAGE_FAULT_VECTOR {
        kprintln_emergency!("# cr2={:#018x}", Cr2::read_raw());
    }
    kprintln_emergency!(
        "# rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx
    );
    kprintln_emergency!(
        "# rsi={:#018x} rdi={:#018x} rbp={:#018x} r8={:#018x}",
        regs.rsi,
        regs.rdi,
        regs.rbp,
        regs.r8
    );
    kprintln_emergency!(
        "# r9={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}",
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12
    );
    kprintln_emergency!(
        "# r13={:#018x} r14={:#018x} r15={:#018x}",
        regs.r13,
        regs.r14,
        regs.r15
    );
    // The kernel runs in ring 0 only: every exception is in kernel context.
    // No link register: even a leaf function has its frame (forced frame
    // pointers), so the chain from RBP starts at the faulting function's.
    quiesce_kernel::backtrace::show_stack::<X86_64>(regs.rip as usize, None, regs.rbp as usize);
    panic!(
        "unhandled exception {name} (vector {vector}) on CPU {cpu} at rip={:#x}",
        regs.rip
    );
}
