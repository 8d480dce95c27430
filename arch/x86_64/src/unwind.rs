//! The frame-pointer layout of x86-64 for [`quiesce_kernel::backtrace`]
//! (Linux: `arch/x86/kernel/unwind_frame.c`).
//!
//! Design: every function is built with `-C force-frame-pointers=yes`
//! (`.cargo/config.toml`): its prologue is `push rbp; mov rbp, rsp`, so `rbp`
//! points at the caller's saved `rbp`, with the return address into the caller
//! one word above. `head.S` clears `rbp` before the first Rust function on
//! every CPU, which ends the chain. Interrupts and exceptions run on the
//! interrupted stack (only #DF has a stack of its own) and `entry_64.S` keeps
//! `rbp`, so a chain from a handler runs on through the interrupted code.
//!
//! Invariants: the image `[__kernel_start, __kernel_end)` holds every kernel
//! stack (boot stack in `.bss`, the others in the heap, also `.bss`) and is
//! identity-mapped on every CPU for good; memory is read only through the
//! walk's checked reader.

use quiesce_kernel::backtrace::StackFrame;

extern "C" {
    /// First byte of the kernel image (kernel.ld).
    static __kernel_start: u8;
    /// End of the kernel image, .bss included (kernel.ld).
    static __kernel_end: u8;
}

/// `rbp` of the function this is inlined into.
#[inline(always)]
pub fn frame_pointer() -> usize {
    let rbp: usize;
    // SAFETY: copying `rbp` into another register reads no memory and changes
    // nothing else.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags));
    }
    rbp
}

/// `rbp` -> [saved `rbp`, return address].
pub fn unwind_frame(fp: usize, read: &mut dyn FnMut(usize) -> Option<usize>) -> Option<StackFrame> {
    Some(StackFrame {
        fp: read(fp)?,
        ra: read(fp.checked_add(8)?)?,
    })
}

/// The kernel image.
pub fn kernel_image() -> core::ops::Range<usize> {
    (&raw const __kernel_start) as usize..(&raw const __kernel_end) as usize
}
