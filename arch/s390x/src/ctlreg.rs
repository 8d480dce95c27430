//! Control registers: `LCTLG` and `STCTG` of one register of the calling CPU
//! (Linux `asm/ctlreg.h`: `local_ctl_load`, `local_ctl_store`).
//!
//! Design: the register number is a const parameter, as the instructions
//! encode it; what a new value of a register means is for the callers (CR0's
//! subclass masks in [`crate::interrupt`], CR1, the primary ASCE, in
//! [`crate::tlb`]), whose `// SAFETY:` comments argue it.

/// `LCTLG`: loads control register `CR` of the calling CPU with `value`.
///
/// # Safety
/// The new value keeps the kernel running: for CR0, only subclass masks of
/// interruptions whose handlers exist; for CR1, an ASCE as
/// [`crate::tlb::load_primary_asce`] requires.
#[inline]
pub unsafe fn local_ctl_load<const CR: u8>(value: u64) {
    // SAFETY: LCTLG is privileged (supervisor state) and reads 8 bytes from a
    // local `u64`; the new register value is the caller's contract. Memory: an
    // access after the load may translate or be interrupted differently, so no
    // `nomem` (the compiler must not move accesses across).
    unsafe {
        core::arch::asm!(
            "lctlg %c{cr}, %c{cr}, 0({p})",
            cr = const CR,
            p = in(reg_addr) &value,
            options(nostack, preserves_flags),
        );
    }
}

/// `STCTG`: the value of control register `CR` of the calling CPU.
#[inline]
pub fn local_ctl_store<const CR: u8>() -> u64 {
    let mut value: u64 = 0;
    // SAFETY: STCTG is privileged (supervisor state) and stores 8 bytes at the
    // operand address, a local `u64` we own.
    unsafe {
        core::arch::asm!(
            "stctg %c{cr}, %c{cr}, 0({p})",
            cr = const CR,
            p = in(reg_addr) &mut value,
            options(nostack, preserves_flags),
        );
    }
    value
}
