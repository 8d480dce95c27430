//! Time: the per-CPU tick and busy-wait delays on top of [`Arch::clock_ns`].

use crate::Arch;
use core::sync::atomic::{AtomicU64, Ordering};

/// Tick period in nanoseconds, fixed before the secondary CPUs start.
static TICK_PERIOD_NS: AtomicU64 = AtomicU64::new(10_000_000);

/// Sets the tick rate, then starts the boot CPU's tick. Secondary CPUs start
/// theirs when they come online.
pub(crate) fn set_tick_hz(hz: u32) {
    TICK_PERIOD_NS.store(1_000_000_000 / u64::from(hz.max(1)), Ordering::Release);
}

/// Starts the tick on the calling CPU.
pub(crate) fn start_this_cpu_tick<A: Arch>() {
    A::timer_start(TICK_PERIOD_NS.load(Ordering::Acquire));
}

/// Tick period in nanoseconds.
pub fn tick_period_ns() -> u64 {
    TICK_PERIOD_NS.load(Ordering::Acquire)
}

/// Busy-waits `ns` nanoseconds, leaving the interrupt state as it is.
pub fn ndelay<A: Arch>(ns: u64) {
    let start = A::clock_ns();
    while A::clock_ns().wrapping_sub(start) < ns {
        A::cpu_relax();
    }
}
