//! Page faults and the exception table of the probes (Linux:
//! `arch/x86/mm/fault.c`, `arch/x86/mm/extable.c`, `_ASM_EXTABLE`).
//!
//! Design. [`exc_page_fault`] (vector 14) reads CR2 first, before anything
//! could fault again or take an interrupt, decodes the error code into a
//! [`FaultInfo`] and, for a task address, calls the generic
//! [`handle_mm_fault`]. Like Linux's `do_user_addr_fault`, it re-enables
//! interrupts for that call if the faulting context had them enabled (the
//! handler may break COW and flush, and a TLB shootdown must wait with
//! interrupts on); it disables them again before returning. `Ok` returns, and
//! `iretq` retries the instruction. Faults on kernel addresses (below
//! [`TASK_BASE`] or above the task range) are never resolved, and a fault with
//! a reserved bit set means a corrupted table: both go straight to the error
//! path.
//!
//! The error path looks RIP up in the exception table ([`extable`]): the two
//! probe routines below each have one faulting instruction with a known
//! address and a fixup address right after it. On a hit the handler makes the
//! routine return a fault status ([`PROBE_FAULTED`] and the error code in
//! RDX, CR2 in RAX) by resuming at the fixup; otherwise it prints the fault as
//! `# ` lines and panics through the general exception report. A probe of a
//! non-canonical address raises #GP instead of #PF; [`exc_general_protection`]
//! applies the same fixup, reporting the probed address.
//!
//! Invariants:
//! - only the probe instructions have fixups: any other unresolved fault fails
//!   the run;
//! - CR2 is read with IF=0 on entry, so a nested fault cannot clobber it first.

use crate::idt::PtRegs;
use crate::X86_64;
use core::sync::atomic::Ordering;
use quiesce_arch_x86_64::pgtable::{TASK_BASE, TASK_SIZE_MAX};
use quiesce_kernel::mm::arch::FaultInfo;
use quiesce_kernel::mm::fault::{handle_mm_fault, FaultError};
use quiesce_kernel::{kprintln_emergency, percpu, Arch};

/// Error code bit: the page was present (a protection fault).
pub const X86_PF_PROT: u64 = 1 << 0;
/// Error code bit: the access was a write.
pub const X86_PF_WRITE: u64 = 1 << 1;
/// Error code bit: the access came from ring 3 (never here).
pub const X86_PF_USER: u64 = 1 << 2;
/// Error code bit: a reserved bit was set in a paging entry.
pub const X86_PF_RSVD: u64 = 1 << 3;
/// Error code bit: an instruction fetch.
pub const X86_PF_INSTR: u64 = 1 << 4;
/// `FaultInfo::code` of a probe stopped by #GP (a non-canonical address):
/// the vector in the upper half, where no #PF error code bit lies.
pub const GP_FAULT_CODE: u64 = 13 << 32;
/// Set in a probe routine's status (RDX) when the access faulted.
const PROBE_FAULTED: u64 = 1 << 63;
/// RFLAGS.IF.
const X86_EFLAGS_IF: u64 = 1 << 9;

core::arch::global_asm!(
    r#"
    .pushsection .text.probe, "ax"
    // probe_load_asm(addr: rdi) -> (value: rax, status: rdx)
    .balign 16
    .globl x86_probe_load
x86_probe_load:
    xor edx, edx
    .globl x86_probe_load_insn
x86_probe_load_insn:
    mov rax, qword ptr [rdi]
    .globl x86_probe_load_fixup
x86_probe_load_fixup:
    ret

    // probe_store_asm(addr: rdi, value: rsi) -> (cr2: rax, status: rdx)
    .balign 16
    .globl x86_probe_store
x86_probe_store:
    xor edx, edx
    xor eax, eax
    .globl x86_probe_store_insn
x86_probe_store_insn:
    mov qword ptr [rdi], rsi
    .globl x86_probe_store_fixup
x86_probe_store_fixup:
    ret
    .popsection
    "#
);

/// What a probe routine returns in RAX:RDX (a two-word struct under the C
/// ABI).
#[repr(C)]
struct ProbeRet {
    /// The loaded value (load), or CR2 after a fault.
    rax: u64,
    /// 0, or [`PROBE_FAULTED`] | the error code.
    rdx: u64,
}

extern "C" {
    fn x86_probe_load(addr: u64) -> ProbeRet;
    fn x86_probe_store(addr: u64, val: u64) -> ProbeRet;
    static x86_probe_load_insn: u8;
    static x86_probe_load_fixup: u8;
    static x86_probe_store_insn: u8;
    static x86_probe_store_fixup: u8;
}

/// Which probe faulted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Load,
    Store,
}

/// One exception-table entry: a faulting instruction and where to resume.
struct ExceptionTableEntry {
    insn: u64,
    fixup: u64,
}

/// The exception table (Linux: `__ex_table`), built from the probe labels.
fn extable() -> [ExceptionTableEntry; 2] {
    [
        ExceptionTableEntry {
            insn: (&raw const x86_probe_load_insn) as u64,
            fixup: (&raw const x86_probe_load_fixup) as u64,
        },
        ExceptionTableEntry {
            insn: (&raw const x86_probe_store_insn) as u64,
            fixup: (&raw const x86_probe_store_fixup) as u64,
        },
    ]
}

/// The entry for `rip`, if it is a probe instruction.
fn search_exception_tables(rip: u64) -> Option<ExceptionTableEntry> {
    extable().into_iter().find(|e| e.insn == rip)
}

/// Resumes a faulted probe at its fixup, returning the fault to its caller.
/// Returns whether RIP was a probe instruction.
fn fixup_exception(regs: &mut PtRegs, addr: u64, code: u64) -> bool {
    let Some(entry) = search_exception_tables(regs.rip) else {
        return false;
    };
    regs.rip = entry.fixup;
    regs.rax = addr;
    regs.rdx = PROBE_FAULTED | code;
    true
}

/// Decodes a status from a probe routine.
fn probe_result(ret: &ProbeRet, kind: ProbeKind) -> Result<u64, FaultInfo> {
    if ret.rdx & PROBE_FAULTED == 0 {
        return Ok(ret.rax);
    }
    let code = ret.rdx & !PROBE_FAULTED;
    Err(if code >> 32 == GP_FAULT_CODE >> 32 {
        FaultInfo {
            addr: ret.rax,
            write: kind == ProbeKind::Store,
            protection: false,
            code,
        }
    } else {
        fault_info(ret.rax, code)
    })
}

/// The decoded fault.
fn fault_info(addr: u64, error_code: u64) -> FaultInfo {
    FaultInfo {
        addr,
        write: error_code & X86_PF_WRITE != 0,
        protection: error_code & X86_PF_PROT != 0,
        code: error_code,
    }
}

/// Loads the word at `addr`; an unresolved fault is returned, not fatal.
pub fn probe_load(addr: u64) -> Result<u64, FaultInfo> {
    // SAFETY: the routine loads through the current translation; a fault is
    // resolved by the fault handler or turned into a status by its fixup, and
    // it touches no other memory or register than the C ABI allows.
    let ret = unsafe { x86_probe_load(addr) };
    probe_result(&ret, ProbeKind::Load)
}

/// Stores `val` at `addr`; an unresolved fault is returned, not fatal.
pub fn probe_store(addr: u64, val: u64) -> Result<(), FaultInfo> {
    // SAFETY: as in `probe_load`; the store goes only to `addr`, which the
    // caller names on purpose (a task address, through the task's tables).
    let ret = unsafe { x86_probe_store(addr, val) };
    probe_result(&ret, ProbeKind::Store).map(|_| ())
}

/// Why a fault was not resolved.
enum Unresolved {
    Mm(FaultError),
    KernelAddress,
    ReservedBit,
}

impl core::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Mm(e) => write!(f, "{e}"),
            Self::KernelAddress => f.write_str("a kernel address outside the task range"),
            Self::ReservedBit => f.write_str("a reserved bit is set in a page-table entry"),
        }
    }
}

/// Vector 14 (`exc_page_fault`). Entered with IF=0.
pub fn exc_page_fault(regs: &mut PtRegs) {
    let addr = read_cr2();
    let error_code = regs.error_code;
    let info = fault_info(addr, error_code);
    let result = if error_code & X86_PF_RSVD != 0 {
        count_fault();
        Err(Unresolved::ReservedBit)
    } else if (TASK_BASE..TASK_SIZE_MAX).contains(&addr) {
        if regs.rflags & X86_EFLAGS_IF != 0 {
            X86_64::local_irq_enable();
        }
        let r = handle_mm_fault::<X86_64>(info).map_err(Unresolved::Mm);
        X86_64::local_irq_disable();
        r
    } else {
        count_fault();
        Err(Unresolved::KernelAddress)
    };
    let Err(why) = result else { return };
    if fixup_exception(regs, addr, error_code) {
        return;
    }
    kprintln_emergency!(
        "# page fault on CPU {}: cr2={addr:#018x} error_code={error_code:#x} ({}, {}{}{}{}) rip={:#018x}: {why}",
        X86_64::smp_processor_id(),
        if error_code & X86_PF_PROT != 0 { "protection" } else { "not present" },
        if error_code & X86_PF_WRITE != 0 { "write" } else { "read" },
        if error_code & X86_PF_USER != 0 { ", user mode" } else { "" },
        if error_code & X86_PF_INSTR != 0 { ", instruction fetch" } else { "" },
        if error_code & X86_PF_RSVD != 0 { ", reserved bit" } else { "" },
        regs.rip,
    );
    crate::idt::exception(regs)
}

/// Vector 13: a probe of a non-canonical address is fixed up; anything else is
/// reported as an exception.
pub fn exc_general_protection(regs: &mut PtRegs) {
    // The probes take their address in RDI.
    let addr = regs.rdi;
    if !fixup_exception(regs, addr, GP_FAULT_CODE | regs.error_code) {
        crate::idt::exception(regs)
    }
}

/// Counts a fault that does not reach the generic handler (which counts the
/// others), so every #PF shows in the per-CPU count.
fn count_fault() {
    percpu::this_cpu::<X86_64>()
        .page_faults
        .fetch_add(1, Ordering::Relaxed);
}

/// The faulting address of the last page fault (`read_cr2`).
fn read_cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}
