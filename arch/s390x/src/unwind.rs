//! The stack-frame layout of s390x for [`quiesce_kernel::backtrace`] (Linux:
//! `arch/s390/kernel/unwind_bc.c`, the back-chain unwinder).
//!
//! Design: LLVM's `-C force-frame-pointers=yes` alone keeps `%r11` as a frame
//! pointer equal to the stack pointer after the prologue, which says nothing
//! about the frame's size, so no walk can start from it. The kernels are
//! therefore built with the `backchain` target feature (`.cargo/config.toml`,
//! core and alloc included through build-std): a prologue is
//!
//! ```text
//! stmg  %r11,%r15,88(%r15)     # into the caller's register save area
//! lgr   %r1,%r15
//! aghi  %r15,-FRAME
//! stg   %r1,0(%r15)            # the back chain: the caller's %r15
//! ```
//!
//! so `0(%r15)` of a function is its caller's stack pointer, and the
//! function's return address, its saved `%r14`, is at offset 112 of that
//! caller's frame (the ELF ABI's register save area: `%r6` at 48, ...,
//! `%r14` at 112). A zero back chain ends the chain: `entry.S` clears
//! `0(%r15)` of the first frame on every stack it sets up (boot, secondary
//! start, external interruption, program check, fatal interruptions), so a
//! chain from an interruption handler stops at its own stack.
//!
//! A leaf function may have no frame at all (no back chain of its own): an
//! exception in it passes `%r14` as the link register to
//! [`quiesce_kernel::backtrace::show_stack`], since the chain from its `%r15`
//! starts at its caller's frame and would skip the caller.
//!
//! Invariants: the image `[__image_start, __image_end)` holds every kernel
//! stack (boot stacks in `.bss`, the others in the heap, also `.bss`) and is
//! mapped 1:1 on every CPU for good; memory is read only through the walk's
//! checked reader.

use quiesce_kernel::backtrace::StackFrame;

/// Offset of the saved `%r14` in a frame's register save area.
const SAVED_R14: usize = 112;

unsafe extern "C" {
    /// First byte of the kernel image (linker.ld).
    static __image_start: u8;
    /// End of the kernel image, .bss included (linker.ld).
    static __image_end: u8;
}

/// `%r15` of the function this is inlined into: its frame, whose back chain
/// its prologue stored.
#[inline(always)]
pub fn frame_pointer() -> usize {
    let r15: usize;
    // SAFETY: copying `%r15` into another register reads no memory and
    // changes nothing else.
    unsafe {
        core::arch::asm!("lgr {}, %r15", out(reg) r15, options(nomem, nostack, preserves_flags));
    }
    r15
}

/// `%r15` -> back chain (the caller's `%r15`) -> its saved `%r14`.
pub fn unwind_frame(fp: usize, read: &mut dyn FnMut(usize) -> Option<usize>) -> Option<StackFrame> {
    let caller = read(fp)?;
    if caller == 0 {
        return Some(StackFrame::BOTTOM);
    }
    Some(StackFrame {
        fp: caller,
        ra: read(caller.checked_add(SAVED_R14)?)?,
    })
}

/// The kernel image.
pub fn kernel_image() -> core::ops::Range<usize> {
    (&raw const __image_start) as usize..(&raw const __image_end) as usize
}
