//! Interruptions: the PSW interrupt masks, control register 0, the enabled and
//! disabled waits, and the Rust side of the interruption handlers.
//!
//! Design: "interrupts" in the generic kernel's sense are the external and I/O
//! interruptions, switched by the PSW system-mask bits with `STOSM`, `STNSM`
//! and `SSM` (as Linux's `arch_local_irq_*`). Which external interruptions a
//! CPU accepts at all is chosen once per CPU in control register 0 (the
//! subclass masks for external call, emergency signal and clock comparator).
//! `entry.S` saves the registers and calls the `s390x_*` handlers below:
//! external interruptions dispatch by interruption code and return; program
//! checks, machine checks and unexpected interruptions print `# ` diagnostics
//! (for a program check, the backtrace of the faulting context too) and
//! panic.
//!
//! Invariants:
//! - Handlers run with every interruption masked and never enable them, except
//!   the program-check handler while the generic fault handler runs for a
//!   context that had them enabled; the external handler therefore never nests.
//! - An external interruption that ends an enabled wait returns to the
//!   instruction after the wait with the wait bit cleared (`entry.S`), so
//!   [`wait_for_interrupt`] returns with interrupts enabled.
//! - Machine checks are enabled in kernel code (PSW bit 13, set by a PSW load
//!   at boot and in the restart PSW) and never switched by the functions here.

use crate::ctlreg::{local_ctl_load, local_ctl_store};
use crate::lowcore::{self, PgmFrame, Psw, SYSMASK_EXT, SYSMASK_IO};
use crate::{fault, time, S390x};
use quiesce_kernel::{irq, kprintln_emergency, STATUS_PREFIX};

/// Interruption kinds passed by `entry.S` to [`s390x_unexpected_handler`].
pub const INT_KIND_SVC: u64 = 0;
/// See [`INT_KIND_SVC`].
pub const INT_KIND_IO: u64 = 1;
/// See [`INT_KIND_SVC`].
pub const INT_KIND_RESTART: u64 = 2;

/// Disabled-wait address that QEMU takes for a clean shutdown (exit 0).
pub const WAIT_ADDR_SUCCESS: u64 = 0xfff;
/// Disabled-wait address of a failed run (a guest panic for QEMU).
pub const WAIT_ADDR_FAILURE: u64 = 0xdead;
/// Disabled-wait address of a CPU that took program checks in its program-check
/// handler.
pub const WAIT_ADDR_PGM_LOOP: u64 = 0xdeae;

/// External-interruption codes (Linux `EXT_IRQ_*`).
const EXT_IRQ_CLK_COMP: u16 = 0x1004;
const EXT_IRQ_CPU_TIMER: u16 = 0x1005;
const EXT_IRQ_EMERGENCY_SIG: u16 = 0x1201;
const EXT_IRQ_EXTERNAL_CALL: u16 = 0x1202;
const EXT_IRQ_SERVICE_SIG: u16 = 0x2401;

/// CR0 bit 49: emergency-signal subclass mask.
const CR0_EMERGENCY_SIGNAL_SUBMASK: u64 = 1 << (63 - 49);
/// CR0 bit 50: external-call subclass mask.
const CR0_EXTERNAL_CALL_SUBMASK: u64 = 1 << (63 - 50);
/// CR0 bit 52: clock-comparator subclass mask.
const CR0_CLOCK_COMPARATOR_SUBMASK: u64 = 1 << (63 - 52);

/// The interruption masks of the PSW that local_irq_* switch.
const IRQ_SYSMASK: u8 = SYSMASK_EXT | SYSMASK_IO;

/// Sets up the calling CPU's interruption controls: parks the clock comparator,
/// then opens the external subclasses the kernel uses. Interrupts stay disabled.
pub fn init_cpu() {
    time::init_cpu();
    let cr0 = local_ctl_store::<0>();
    // SAFETY: CR0 only gains subclass masks for interruptions whose handlers
    // exist (the new PSWs are set before any CPU runs Rust code), and the PSW
    // masks still hold them off until interrupts are enabled.
    unsafe {
        local_ctl_load::<0>(
            cr0 | CR0_EMERGENCY_SIGNAL_SUBMASK
                | CR0_EXTERNAL_CALL_SUBMASK
                | CR0_CLOCK_COMPARATOR_SUBMASK,
        );
    }
}

/// `STNSM`: clears the external and I/O mask bits of the PSW; returns the old
/// system mask (PSW bits 0-7).
fn stnsm_irqs_off() -> u8 {
    let mut old: u8 = 0;
    // SAFETY: STNSM is privileged (supervisor state), stores the old system
    // mask into a local byte and only clears PSW mask bits: at most it masks
    // interruptions.
    unsafe {
        core::arch::asm!(
            "stnsm 0({p}), {m}",
            p = in(reg_addr) &mut old,
            m = const !IRQ_SYSMASK,
            options(nostack, preserves_flags),
        );
    }
    old
}

/// `STOSM`: sets the external and I/O mask bits of the PSW; returns the old
/// system mask.
fn stosm_irqs_on() -> u8 {
    let mut old: u8 = 0;
    // SAFETY: STOSM is privileged (supervisor state), stores the old system
    // mask into a local byte and sets only the external and I/O mask bits, whose
    // new PSWs are set up before any CPU runs Rust code. A pending interruption
    // may be taken right after it, and handlers run Rust code, so the compiler
    // must assume memory changes (no `nomem`).
    unsafe {
        core::arch::asm!(
            "stosm 0({p}), {m}",
            p = in(reg_addr) &mut old,
            m = const IRQ_SYSMASK,
            options(nostack, preserves_flags),
        );
    }
    old
}

/// The current system mask (PSW bits 0-7), read with `STOSM` of nothing.
fn sysmask() -> u8 {
    let mut mask: u8 = 0;
    // SAFETY: STOSM with an empty immediate changes no PSW bit; it stores the
    // system mask into a local byte.
    unsafe {
        core::arch::asm!("stosm 0({p}), 0", p = in(reg_addr) &mut mask, options(nostack, preserves_flags));
    }
    mask
}

/// Enables external and I/O interruptions.
pub fn local_irq_enable() {
    stosm_irqs_on();
}

/// Disables external and I/O interruptions.
pub fn local_irq_disable() {
    stnsm_irqs_off();
}

/// Whether external interruptions are disabled.
pub fn irqs_disabled() -> bool {
    sysmask() & SYSMASK_EXT == 0
}

/// Disables interruptions; returns the previous system mask.
pub fn local_irq_save() -> u8 {
    stnsm_irqs_off()
}

/// Restores a system mask returned by [`local_irq_save`].
pub fn local_irq_restore(flags: u8) {
    // Only the interrupt bits are taken from `flags`, the rest of the current
    // system mask stays as it is.
    let current = sysmask();
    let sysmask = (current & !IRQ_SYSMASK) | (flags & IRQ_SYSMASK);
    // SAFETY: SSM is privileged (supervisor state; CR0's SSM-suppression bit is
    // never set) and loads the system mask from a local byte that differs from
    // the current one only in the external and I/O bits (see `stosm_irqs_on`).
    unsafe {
        core::arch::asm!("ssm 0({p})", p = in(reg_addr) &sysmask, options(nostack, preserves_flags));
    }
}

/// The current PSW mask (`EPSW`): DAT, addressing mode, key, masks.
fn current_psw_mask() -> u64 {
    let hi: u64;
    let lo: u64;
    // SAFETY: EPSW only copies PSW bits 0-31 and 32-63 into the low halves of
    // two registers.
    unsafe {
        core::arch::asm!(
            "epsw {hi}, {lo}",
            hi = out(reg) hi,
            lo = out(reg) lo,
            options(nomem, nostack, preserves_flags),
        );
    }
    ((hi & 0xffff_ffff) << 32) | (lo & 0xffff_ffff)
}

/// Enables interruptions and waits for one, atomically: loads an enabled-wait
/// PSW whose address is the instruction after the load. The external handler
/// clears the wait bit in the old PSW, so execution resumes here with
/// interruptions enabled. The wait PSW is the current one (DAT and all) plus
/// the interruption masks and the wait bit.
pub fn wait_for_interrupt() {
    let mut psw = Psw {
        mask: current_psw_mask()
            | lowcore::PSW_MASK_EXT
            | lowcore::PSW_MASK_IO
            | lowcore::PSW_MASK_WAIT,
        addr: 0,
    };
    // SAFETY: LPSWE is privileged (supervisor state) and loads the PSW from a
    // local, 8-byte aligned `Psw`, whose address field is set to the label
    // right after the LPSWE first. The loaded PSW keeps the kernel's mode and
    // key and only enables interruptions, whose handlers return to that label
    // with every register restored (entry.S). Handlers run Rust code that may
    // change memory, hence no `nomem`.
    unsafe {
        core::arch::asm!(
            "larl {tmp}, 0f",
            "stg {tmp}, 8({psw})",
            "lpswe 0({psw})",
            "0:",
            psw = in(reg_addr) &mut psw,
            tmp = out(reg) _,
            options(nostack),
        );
    }
}

/// Ends this CPU in a disabled wait at `addr`. When no CPU runs any more, QEMU
/// ends: a clean shutdown for [`WAIT_ADDR_SUCCESS`], a guest panic otherwise.
pub fn disabled_wait(addr: u64) -> ! {
    let psw = Psw {
        mask: lowcore::PSW_DISABLED_WAIT,
        addr,
    };
    // SAFETY: LPSWE loads a disabled-wait PSW from a local `Psw`: the CPU stops
    // executing for good (nothing can interrupt it), so never returning is right.
    unsafe {
        core::arch::asm!("lpswe 0({p})", p = in(reg_addr) &psw, options(noreturn, nostack));
    }
}

/// Whether the code the current external interruption interrupted ran with
/// external interrupts enabled (the old PSW's external mask bit).
fn interrupted_irqs_on() -> bool {
    lowcore::external_old_psw_mask() & lowcore::PSW_MASK_EXT != 0
}

/// External interruption (from `entry.S`): dispatch by interruption code.
#[unsafe(no_mangle)]
extern "C" fn s390x_ext_handler() {
    match lowcore::ext_int_code() {
        EXT_IRQ_EXTERNAL_CALL | EXT_IRQ_EMERGENCY_SIG => irq::ipi_interrupt::<S390x>(),
        EXT_IRQ_CLK_COMP => {
            if time::clock_comparator_interrupt() {
                irq::timer_interrupt::<S390x>(interrupted_irqs_on());
            }
        }
        EXT_IRQ_CPU_TIMER => irq::timer_interrupt::<S390x>(interrupted_irqs_on()),
        // SCLP completion; the console does not wait for it.
        EXT_IRQ_SERVICE_SIG => {}
        code => {
            let cpu = lowcore::cpu_nr();
            kprintln_emergency!(
                "# unexpected external interruption on CPU {cpu}: code={code:#06x} cpu_addr={:#x}",
                lowcore::ext_cpu_addr()
            );
            panic!("unexpected external interruption {code:#06x}");
        }
    }
}

/// Name of a program-interruption code (the low 7 bits).
fn program_check_name(code: u16) -> &'static str {
    match code & 0x7f {
        0x01 => "operation",
        0x02 => "privileged operation",
        0x03 => "execute",
        0x04 => "protection",
        0x05 => "addressing",
        0x06 => "specification",
        0x07 => "data",
        0x08 => "fixed-point overflow",
        0x09 => "fixed-point divide",
        0x10 => "segment translation",
        0x11 => "page translation",
        0x12 => "translation specification",
        0x13 => "special operation",
        0x38 => "ASCE type",
        0x39 => "region first translation",
        0x3a => "region second translation",
        0x3b => "region third translation",
        _ => "other",
    }
}

/// Prints the 16 general registers as four `# ` lines.
fn print_gprs(gprs: &[u64; 16]) {
    for row in 0..4 {
        let r = row * 4;
        kprintln_emergency!(
            "# r{}={:#018x} r{}={:#018x} r{}={:#018x} r{}={:#018x}",
            r,
            gprs[r],
            r + 1,
            gprs[r + 1],
            r + 2,
            gprs[r + 2],
            r + 3,
            gprs[r + 3]
        );
    }
}

/// Program check (from `entry.S`, with the frame it saved): DAT exceptions go
/// to [`fault::do_dat_exception`] and return when resolved; everything else is
/// reported and panics.
#[unsafe(no_mangle)]
extern "C" fn s390x_pgm_handler(frame: &mut PgmFrame) {
    // Bits 0x80 (PER event) and 0x200 (transaction abort) qualify the code.
    let code = frame.code & 0x7f;
    let dat_error = if fault::is_dat_exception(code) {
        match fault::do_dat_exception(frame, code) {
            Ok(()) => return,
            Err(err) => Some(err),
        }
    } else {
        None
    };
    let cpu = lowcore::cpu_nr();
    if frame.depth > 1 && dat_error.is_none() {
        // A program check while handling one: the panic path itself may be
        // broken. Say so in one line and end the run without it.
        kprintln_emergency!(
            "# nested program check on CPU {cpu}: code={:#06x} psw={:#018x} {:#018x}",
            frame.code,
            frame.psw.mask,
            frame.psw.addr
        );
        crate::smp::stop_other_cpus();
        kprintln_emergency!("{STATUS_PREFIX}fail (nested program check on CPU {cpu})");
        disabled_wait(WAIT_ADDR_FAILURE);
    }
    let name = program_check_name(code);
    kprintln_emergency!(
        "# program check on CPU {cpu}: code={:#06x} ({name}) ilc={}",
        frame.code,
        frame.ilc
    );
    kprintln_emergency!("# psw={:#018x} {:#018x}", frame.psw.mask, frame.psw.addr);
    kprintln_emergency!(
        "# translation_exception_address={:#018x} breaking_event_address={:#018x}",
        frame.trans_exc_code,
        frame.breaking_event_addr
    );
    if let Some(err) = &dat_error {
        kprintln_emergency!("# page fault not resolved: {err}");
    }
    print_gprs(&frame.gprs);
    // Every program check is in kernel context (no problem state here). A
    // leaf function without a frame of its own leaves its return address
    // only in %r14: passed as the link register (`crate::unwind`).
    quiesce_kernel::backtrace::show_stack::<S390x>(
        frame.psw.addr as usize,
        Some(frame.gprs[14] as usize),
        frame.gprs[15] as usize,
    );
    match dat_error {
        Some(err) => panic!(
            "unresolved page fault {:#06x} ({name}) at {:#x}: {err}",
            frame.code, frame.psw.addr
        ),
        None => panic!(
            "program check {:#06x} ({name}) at {:#x}",
            frame.code, frame.psw.addr
        ),
    }
}

/// Machine check (from `entry.S`, on the panic stack): report and panic.
#[unsafe(no_mangle)]
extern "C" fn s390x_mcck_handler() -> ! {
    let cpu = lowcore::cpu_nr();
    let (code, psw, gprs) = lowcore::machine_check();
    kprintln_emergency!("# machine check on CPU {cpu}: code={code:#018x}");
    kprintln_emergency!("# psw={:#018x} {:#018x}", psw.mask, psw.addr);
    print_gprs(&gprs);
    panic!("machine check {code:#x}");
}

/// An SVC, I/O or restart interruption (from `entry.S`, on the panic stack):
/// the kernel never asks for one. Report and panic.
#[unsafe(no_mangle)]
extern "C" fn s390x_unexpected_handler(kind: u64) -> ! {
    let kind = match kind {
        INT_KIND_SVC => lowcore::Unexpected::Svc,
        INT_KIND_IO => lowcore::Unexpected::Io,
        _ => lowcore::Unexpected::Restart,
    };
    let cpu = lowcore::cpu_nr();
    let (psw, gprs) = lowcore::unexpected_interruption(kind);
    kprintln_emergency!("# unexpected {kind:?} interruption on CPU {cpu}");
    kprintln_emergency!("# psw={:#018x} {:#018x}", psw.mask, psw.addr);
    print_gprs(&gprs);
    panic!("unexpected {kind:?} interruption");
}
