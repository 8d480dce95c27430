//! The contract between the generic kernel and an architecture backend.
//!
//! A backend (`arch/x86_64`, `arch/s390x`) is the binary crate: it owns the entry
//! stub, the console, the interrupt and exception entry code and CPU bring-up, and
//! implements [`Arch`] for a zero-sized type. Generic code is written against
//! `A: Arch` and never names an architecture.
//!
//! Calls the backend makes into the generic kernel:
//! - [`crate::boot_cpu_main`] once, on the boot CPU, after its early set-up
//!   (console usable, exception handlers installed, interrupts disabled), with
//!   its `setup_arch`: the rest of its machine set-up, which returns the
//!   [`BootInfo`] and runs after the KTAP header;
//! - [`crate::smp::secondary_main`] on each CPU started by [`Arch::boot_secondary`],
//!   on that CPU's own stack, after its local set-up, interrupts disabled;
//! - [`crate::irq::ipi_interrupt`], [`crate::irq::nmi_interrupt`] and
//!   [`crate::irq::timer_interrupt`] from its interrupt handlers, which run with
//!   interrupts disabled and have acknowledged the interrupt already (so the next
//!   one stays pending until interrupts are enabled again);
//! - [`crate::panic::panic`] from its `#[panic_handler]`. Exception handlers print
//!   the interruption code and the registers as `# ` diagnostics, then the
//!   backtrace of the faulting context ([`crate::backtrace::show_stack`]), then
//!   `panic!`.

/// Saved interrupt state, as returned by [`Arch::local_irq_save`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "interrupt state must be restored with local_irq_restore"]
pub struct IrqFlags(pub usize);

/// What the backend's `setup_arch` hands to [`crate::boot_cpu_main`].
pub struct BootInfo {
    /// The kernel command line (`-append` on x86-64, the loader blob on s390x).
    pub cmdline: &'static str,
    /// CPUs present in the machine (`-smp N`), the boot CPU included.
    pub nr_cpus: usize,
    /// RAM the generic kernel may hand to the frame allocator.
    ///
    /// Contract: every range is ordinary RAM that the kernel reads and writes at
    /// its physical address (inside the kernel's 1:1 map of RAM on both
    /// backends), and that nothing else uses, now or later. The backend has removed
    /// everything it uses itself: the kernel image (text, data, bss with the
    /// heap, boot stacks and boot page tables), lowcores, the SMP trampoline,
    /// firmware and boot data it still reads, and the command-line area. The
    /// generic kernel takes frames from these ranges only, the frame database
    /// included, and leaves every other frame reserved
    /// ([`crate::mm::memmap`]).
    pub memory: crate::mm::memmap::MemoryMap,
}

/// The hardware operations the generic kernel needs.
///
/// All functions act on the calling CPU unless a CPU number is passed. CPU numbers
/// are logical: 0 is the boot CPU, `1..nr_cpus` the others in bring-up order.
///
/// # Safety
///
/// Almost everything here is trusted for correctness only: a wrong answer
/// makes a test fail, a lock deadlock or a report lie, but no unsafe code
/// depends on it (the interrupt state, CPU numbers used as bounds-checked
/// indices, the clock, IPIs, the console). What unsafe code does rely on, an
/// implementation promises:
///
/// 1. **The kernel image is readable.** [`Arch::kernel_image`] is a range
///    that is mapped and readable on every CPU, under every address space
///    the kernel loads, for the whole run: [`crate::backtrace`] reads any
///    aligned word inside it with a raw load.
///
/// The MMU contract, on which much more unsafe code relies, is the
/// [`crate::mm::arch::Mmu`] sub-trait's own `# Safety` list.
pub unsafe trait Arch: 'static {
    /// Architecture name as used by the host tools: `"x86_64"` or `"s390x"`.
    const NAME: &'static str;
    /// Whether [`Arch::send_nmi`] exists: an interrupt that reaches a CPU even while
    /// it has interrupts disabled.
    const HAS_NMI: bool;

    /// Writes raw bytes to the console. Must work on any CPU, with interrupts in any
    /// state, also from exception and panic context. Callers serialise.
    fn console_write(bytes: &[u8]);

    /// Logical number of the calling CPU.
    fn smp_processor_id() -> usize;

    /// Enables interrupts (IPIs, timer) on the calling CPU.
    fn local_irq_enable();
    /// Disables interrupts on the calling CPU. NMIs still arrive.
    fn local_irq_disable();
    /// Whether interrupts are disabled on the calling CPU.
    fn irqs_disabled() -> bool;
    /// Disables interrupts and returns the previous state.
    fn local_irq_save() -> IrqFlags;
    /// Restores a state returned by [`Arch::local_irq_save`].
    fn local_irq_restore(flags: IrqFlags);

    /// Copies one page, `PAGE_SIZE` bytes, from `from` to `to` (Linux
    /// `copy_page`). The default is `memcpy`; a backend whose string copy
    /// is slow overrides it (Linux x86 has `copy_page_regs` for CPUs
    /// without fast `rep movsq`).
    ///
    /// # Safety
    /// Both are valid for a page, page-aligned, and do not overlap.
    unsafe fn copy_page(to: *mut u8, from: *const u8) {
        // SAFETY: the caller's contract.
        unsafe { core::ptr::copy_nonoverlapping(from, to, crate::mm::PAGE_SIZE as usize) }
    }

    /// Spin-loop hint.
    fn cpu_relax();
    /// Enables interrupts and waits until one has been taken, then returns with
    /// interrupts enabled. Enabling and waiting are atomic: an interrupt that is
    /// pending or arrives in between ends the wait.
    fn wait_for_interrupt();

    /// Monotonic time in nanoseconds, consistent across CPUs.
    fn clock_ns() -> u64;

    /// Sends an IPI that the target takes only while it has interrupts enabled
    /// (x86-64 fixed-vector IPI, s390x SIGP external call). The target's handler
    /// calls [`crate::irq::ipi_interrupt`]. Retries internally while the hardware
    /// reports busy; an interrupt already pending on the target counts as sent.
    fn send_ipi(cpu: usize);
    /// Whether an IPI sent with [`Arch::send_ipi`] (or a TLB-flush IPI) to
    /// `cpu` is pending there, not yet taken, as its interrupt hardware says
    /// now (x86-64: the vector's bit in the local APIC's IRR; s390x: SIGP
    /// SENSE reporting an external call pending). `None` when the calling
    /// CPU cannot read it (x86-64: a local APIC is readable only by its own
    /// CPU, so only `cpu == smp_processor_id()` answers). The race prover
    /// ([`crate::race::waitfor`]) reads it; it changes nothing.
    fn ipi_pending(cpu: usize) -> Option<bool>;
    /// Sends a non-maskable interrupt; the target calls
    /// [`crate::irq::nmi_interrupt`] even with interrupts disabled.
    /// Only called when [`Arch::HAS_NMI`] is true.
    fn send_nmi(cpu: usize);

    /// Starts a periodic timer interrupt on the calling CPU; each tick calls
    /// [`crate::irq::timer_interrupt`].
    fn timer_start(period_ns: u64);

    /// Starts secondary CPU `cpu` (1..nr_cpus). Returns once the CPU has been told
    /// to start; it reports itself online through [`crate::smp::secondary_main`].
    fn boot_secondary(cpu: usize) -> Result<(), &'static str>;

    /// Stops every other CPU, whatever its interrupt state, and returns once they
    /// no longer run kernel code. Used by panic and exit.
    fn stop_other_cpus();

    /// Ends the machine: QEMU exits with success or failure. Stops the other CPUs
    /// first. Prints nothing: the final status line is the caller's.
    fn exit(success: bool) -> !;

    /// The frame pointer of the function this is inlined into: where
    /// [`crate::backtrace`] starts a walk (x86-64 `rbp`, s390x `%r15` with
    /// its back chain). Implementations are `#[inline(always)]`: the frame
    /// of a function that returned is not there any more.
    fn frame_pointer() -> usize;

    /// One step of a frame-pointer walk: from the frame at `fp` (a value of
    /// [`Arch::frame_pointer`] or of the register an exception saved), the
    /// caller's frame pointer and the return address into the caller. Reads
    /// memory only through `read`, which returns one word, or `None` where
    /// the walk may not read; `None` stops the walk.
    /// [`crate::backtrace::StackFrame::BOTTOM`] says `fp` is the outermost
    /// frame.
    fn unwind_frame(
        fp: usize,
        read: &mut dyn FnMut(usize) -> Option<usize>,
    ) -> Option<crate::backtrace::StackFrame>;

    /// The kernel image, text to the end of `.bss`: every kernel stack lies
    /// inside it, and it is mapped on every CPU at all times (promise 1). A
    /// backtrace reads nothing outside it.
    fn kernel_image() -> core::ops::Range<usize>;
}
