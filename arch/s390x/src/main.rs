//! quiesce on s390x: the backend binary for `qemu-system-s390x -M s390-ccw-virtio`.
//!
//! Design: QEMU loads the ELF and starts CPU 0 at `_start` (`boot/s390x/entry.S`)
//! in 64-bit mode, DAT off, interruptions masked, prefix 0. The entry code sets
//! the new PSWs and the boot stacks in CPU 0's lowcore (absolute 0) and calls
//! [`s390x_boot_main`], which reads the command line, sets up the CPU's
//! interruption controls, finds the CPUs and hands over to the generic kernel.
//! [`S390x`] implements the generic kernel's [`Arch`] on top of the modules:
//!
//! | module | owns |
//! |---|---|
//! | [`lowcore`] | the per-CPU prefix area and the PSW layout |
//! | [`mmu`] | the kernel's 1:1 map with DAT on, task address spaces (`Mmu`) |
//! | [`tlb`] | IPTE, IDTE, PTLB, control register 1 |
//! | [`ctlreg`] | loads and stores of the control registers |
//! | [`fault`] | DAT exceptions to page faults, probe fixups |
//! | [`entry`] | the assembly entry code and its constants |
//! | [`interrupt`] | PSW masks, CR0, waits, interruption handlers |
//! | [`sclp`] | the console, the storage size |
//! | [`memory`] | the RAM ranges for the frame allocator |
//! | [`sigp`] | SIGP and STAP |
//! | [`skey`] | storage keys: SSKE, ISKE, RRBE |
//! | [`smp`] | CPU discovery, bring-up, IPIs, stopping |
//! | [`time`] | TOD clock and clock-comparator tick |
//! | [`unwind`] | the back-chain frame layout for backtraces |
//!
//! Invariants: every CPU turns DAT on first thing ([`mmu::cpu_enable_dat`])
//! and runs translated from then on, through the kernel's 1:1 map of RAM (or a
//! task mm that shares it), so kernel addresses are real addresses; the
//! kernel image lies at 0x20000 and up (`linker.ld`), clear of CPU 0's lowcore
//! and of the command line at 0x8000..0x9000, which QEMU's loader device fills
//! before CPU 0 starts.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod ctlreg;
mod entry;
mod fault;
mod interrupt;
mod lowcore;
mod memory;
mod mmu;
mod sclp;
mod sigp;
mod skey;
mod smp;
mod time;
mod tlb;
mod unwind;

use quiesce_kernel::{Arch, BootInfo, IrqFlags};

/// Physical address of the kernel command line (host interface, see xtask).
const CMDLINE_ADDR: usize = 0x8000;
/// Size of the command-line area, the terminating NUL included.
const CMDLINE_SIZE: usize = 4096;

/// The s390x backend.
pub struct S390x;

// SAFETY: promise 1 of `Arch`: `kernel_image` is `__image_start` to
// `__image_end` of the linker script, inside the kernel's 1:1 map of RAM
// (`mmu::init_kernel_map`), whose segment tables every task mm shares and
// which never changes after boot (before DAT is on, real = virtual).
unsafe impl Arch for S390x {
    const NAME: &'static str = "s390x";
    const HAS_NMI: bool = false;

    fn console_write(bytes: &[u8]) {
        sclp::write(bytes);
    }

    fn smp_processor_id() -> usize {
        lowcore::cpu_nr()
    }

    fn local_irq_enable() {
        interrupt::local_irq_enable();
    }

    fn local_irq_disable() {
        interrupt::local_irq_disable();
    }

    fn irqs_disabled() -> bool {
        interrupt::irqs_disabled()
    }

    fn local_irq_save() -> IrqFlags {
        IrqFlags(usize::from(interrupt::local_irq_save()))
    }

    fn local_irq_restore(flags: IrqFlags) {
        interrupt::local_irq_restore(flags.0 as u8);
    }

    fn cpu_relax() {
        core::hint::spin_loop();
    }

    fn wait_for_interrupt() {
        interrupt::wait_for_interrupt();
    }

    fn clock_ns() -> u64 {
        time::clock_ns()
    }

    fn send_ipi(cpu: usize) {
        smp::send_ipi(cpu);
    }

    fn ipi_pending(cpu: usize) -> Option<bool> {
        smp::ext_call_pending(cpu)
    }

    fn send_nmi(cpu: usize) {
        panic!("send_nmi({cpu}): s390x has no NMI (HAS_NMI is false)");
    }

    fn timer_start(period_ns: u64) {
        time::timer_start(period_ns);
    }

    fn boot_secondary(cpu: usize) -> Result<(), &'static str> {
        smp::boot_secondary(cpu)
    }

    fn stop_other_cpus() {
        smp::stop_other_cpus();
    }

    fn exit(success: bool) -> ! {
        interrupt::local_irq_disable();
        // Others first: a CPU that stopped after our disabled wait would end
        // QEMU as a clean shutdown, whatever our wait address.
        smp::stop_other_cpus();
        let addr = if success {
            interrupt::WAIT_ADDR_SUCCESS
        } else {
            interrupt::WAIT_ADDR_FAILURE
        };
        interrupt::disabled_wait(addr)
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

/// The command line: the NUL-terminated text at [`CMDLINE_ADDR`]. A line that
/// is not terminated or not UTF-8 becomes a key the parser rejects, so the run
/// fails visibly.
fn cmdline() -> &'static str {
    // SAFETY: 0x8000..0x9000 is memory (the machine has far more), reserved for
    // the command line by linker.ld, written only by QEMU before CPU 0 starts
    // and never written by the kernel, so a shared 'static view is sound.
    let area: &'static [u8] = unsafe {
        core::slice::from_raw_parts(
            core::ptr::with_exposed_provenance(CMDLINE_ADDR),
            CMDLINE_SIZE,
        )
    };
    let Some(len) = area.iter().position(|&b| b == 0) else {
        return "cmdline.error=not_nul_terminated";
    };
    core::str::from_utf8(&area[..len]).unwrap_or("cmdline.error=not_utf8")
}

/// Boot CPU entry from `_start`, on the boot stack, interruptions masked.
#[unsafe(no_mangle)]
extern "C" fn s390x_boot_main() -> ! {
    // Early, so that a program check before the generic kernel starts is seen.
    quiesce_kernel::console::register(S390x::console_write);
    lowcore::set_cpu_addr(sigp::stap());
    time::init_boot();
    interrupt::init_cpu();
    quiesce_kernel::boot_cpu_main::<S390x>(|| {
        // DAT on from here, before anything takes RAM beyond the image.
        mmu::init_kernel_map();
        let nr_cpus = smp::detect();
        BootInfo {
            cmdline: cmdline(),
            nr_cpus,
            memory: memory::detect(),
        }
    })
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    quiesce_kernel::panic::panic::<S390x>(info)
}
