//! SIGP (signal processor): the one instruction through which CPUs start, stop,
//! sense and interrupt each other, and `STAP` (store CPU address).
//!
//! Design: [`sigp`] issues one order and decodes the condition code;
//! [`sigp_retry`] repeats it while the target answers busy (cc 2), which QEMU
//! does while another SIGP is in flight or an order is pending on the target.
//! Callers interpret the status word of a cc-1 answer.
//!
//! Invariant: this module is the only place that executes SIGP.

/// SIGP order codes (Linux `asm/sigp.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Order {
    /// Report the target's status (stopped, check stop, ...).
    Sense = 0x01,
    /// Make an external-call interruption pending on the target (one at a time).
    ExternalCall = 0x02,
    /// Stop the target.
    Stop = 0x05,
    /// Start the target through a restart interruption (its restart new PSW).
    Restart = 0x06,
    /// Set the target's prefix (the target must be stopped).
    SetPrefix = 0x0d,
}

/// Status bit: an external call is already pending on the target.
pub const SIGP_STATUS_EXT_CALL_PENDING: u32 = 0x0000_0080;
/// Status bit: the target is stopped.
pub const SIGP_STATUS_STOPPED: u32 = 0x0000_0040;
/// Status bit: the target is in the check-stop state.
pub const SIGP_STATUS_CHECK_STOP: u32 = 0x0000_0010;
/// Status bit: the target is in a state that does not accept the order.
pub const SIGP_STATUS_INCORRECT_STATE: u32 = 0x0000_0200;

/// The answer to a SIGP order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigpAnswer {
    /// cc 0: order accepted.
    Accepted,
    /// cc 1: status stored (the status word).
    Status(u32),
    /// cc 2: busy, try again.
    Busy,
    /// cc 3: no CPU at that address.
    NotOperational,
}

/// Issues `order` to the CPU at `cpu_addr` with `parameter` (e.g. the prefix
/// for [`Order::SetPrefix`]).
pub fn sigp(cpu_addr: u16, order: Order, parameter: u64) -> SigpAnswer {
    let cc: u32;
    let status: u64;
    // SAFETY: SIGP is privileged (we run in supervisor state) and changes only
    // the target CPU's state. The caller-visible effects are the orders'
    // (documented at each call site); the instruction itself writes only r2
    // (status, bits 32-63). R1 = r2 (even register of the pair, the parameter
    // in r3), R3 = the CPU address, the order code is the second-operand
    // address. It touches no memory of ours, but SET PREFIX and RESTART make
    // another CPU use memory we prepared, so no `nomem`: prior stores must be
    // done before the order.
    unsafe {
        core::arch::asm!(
            "sigp %r2, {addr}, 0({order})",
            "ipm {cc}",
            "srl {cc}, 28",
            addr = in(reg) u64::from(cpu_addr),
            order = in(reg_addr) order as u64,
            cc = out(reg) cc,
            inout("r2") 0u64 => status,
            in("r3") parameter,
            options(nostack),
        );
    }
    match cc {
        0 => SigpAnswer::Accepted,
        1 => SigpAnswer::Status(status as u32),
        2 => SigpAnswer::Busy,
        _ => SigpAnswer::NotOperational,
    }
}

/// [`sigp`], repeated while the answer is [`SigpAnswer::Busy`].
pub fn sigp_retry(cpu_addr: u16, order: Order, parameter: u64) -> SigpAnswer {
    loop {
        match sigp(cpu_addr, order, parameter) {
            SigpAnswer::Busy => core::hint::spin_loop(),
            answer => return answer,
        }
    }
}

/// `STAP`: the calling CPU's CPU address.
pub fn stap() -> u16 {
    let mut addr: u16 = 0;
    // SAFETY: STAP stores the 2-byte CPU address at the operand address, a
    // local `u16` we own (2-byte aligned).
    unsafe {
        core::arch::asm!(
            "stap 0({p})",
            p = in(reg_addr) &mut addr,
            options(nostack, preserves_flags),
        );
    }
    addr
}
