//! Time: the TOD clock and the per-CPU tick through the clock comparator.
//!
//! Design: `clock_ns` reads the TOD clock with `STCKF` (bit 51 = 1 us, so one
//! unit is 1/4096 us) relative to the value read at boot. The TOD clock is one
//! clock for the whole machine, so readings agree across CPUs. The tick arms
//! the CPU's clock comparator (`SCKC`) one period ahead and re-arms it from the
//! external-interruption handler; a clock-comparator interruption is pending
//! while TOD > comparator, so re-arming is also the acknowledgement.
//!
//! Invariants:
//! - Every CPU's clock comparator is all ones (never fires) until its tick
//!   starts ([`init_cpu`] runs before the subclass mask is enabled).
//! - The tick state (period, next deadline) lives in the CPU's own lowcore and
//!   is touched only by that CPU, with external interruptions off.

use crate::{interrupt, lowcore};
use core::sync::atomic::{AtomicU64, Ordering};

/// TOD value at boot: `clock_ns` counts from here.
static BOOT_TOD: AtomicU64 = AtomicU64::new(0);

/// Clock comparator value that never fires.
const CKC_NEVER: u64 = u64::MAX;

/// `STCKF`: the TOD clock.
pub fn stckf() -> u64 {
    let mut tod: u64 = 0;
    // SAFETY: STCKF stores 8 bytes at the operand address, a local `u64` we own.
    unsafe {
        core::arch::asm!("stckf 0({p})", p = in(reg_addr) &mut tod, options(nostack));
    }
    tod
}

/// `SCKC`: sets the calling CPU's clock comparator.
fn set_clock_comparator(tod: u64) {
    // SAFETY: SCKC is privileged (supervisor state) and reads 8 bytes from the
    // operand address, a local `u64`. It changes only when this CPU's
    // clock-comparator interruption becomes pending.
    unsafe {
        core::arch::asm!("sckc 0({p})", p = in(reg_addr) &tod, options(nostack, preserves_flags));
    }
}

/// TOD units to nanoseconds: `tod * 1000 / 4096` without overflow.
fn tod_to_ns(tod: u64) -> u64 {
    (tod >> 9) * 125 + (((tod & 0x1ff) * 125) >> 9)
}

/// Nanoseconds to TOD units, saturating.
fn ns_to_tod(ns: u64) -> u64 {
    u64::try_from(u128::from(ns) * 512 / 125).unwrap_or(u64::MAX)
}

/// Records the boot TOD value. Called once on the boot CPU before anything
/// reads the clock.
pub fn init_boot() {
    BOOT_TOD.store(stckf(), Ordering::Relaxed);
}

/// Parks the calling CPU's clock comparator. Called before the clock-comparator
/// subclass mask is enabled.
pub fn init_cpu() {
    lowcore::set_tick(0, CKC_NEVER);
    set_clock_comparator(CKC_NEVER);
}

/// Monotonic nanoseconds since boot, consistent across CPUs.
pub fn clock_ns() -> u64 {
    tod_to_ns(stckf().wrapping_sub(BOOT_TOD.load(Ordering::Relaxed)))
}

/// Starts the calling CPU's periodic tick.
pub fn timer_start(period_ns: u64) {
    let period = ns_to_tod(period_ns).max(1);
    let flags = interrupt::local_irq_save();
    let next = stckf().wrapping_add(period);
    lowcore::set_tick(period, next);
    set_clock_comparator(next);
    interrupt::local_irq_restore(flags);
}

/// Clock-comparator interruption: arms the next tick. Returns whether this was
/// a tick (false: a stale comparator of a stopped tick).
pub fn clock_comparator_interrupt() -> bool {
    let period = lowcore::tick_period();
    if period == 0 {
        set_clock_comparator(CKC_NEVER);
        return false;
    }
    let now = stckf();
    let mut next = lowcore::next_tick().wrapping_add(period);
    if next <= now {
        // Ticks were missed (a long interrupts-off section): drop them rather
        // than take a burst.
        next = now.wrapping_add(period);
    }
    lowcore::set_tick(period, next);
    set_clock_comparator(next);
    true
}
