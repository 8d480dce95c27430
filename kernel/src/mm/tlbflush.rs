//! TLB flushes for an mm, with a runtime choice of how remote CPUs are reached
//! (Linux: `include/asm-generic/tlb.h` callers, `flush_tlb_page`,
//! `flush_tlb_range`, `flush_tlb_mm`).
//!
//! Design. Generic code calls [`flush_tlb_page`], [`flush_tlb_range`] and
//! [`flush_tlb_mm`]; each counts the request on the calling CPU and dispatches
//! to the arch ([`Mmu::flush_tlb_page`] and friends). How the arch reaches the
//! other CPUs of the mm's cpumask is a [`FlushStrategy`]. The arch declares the
//! strategies it implements in [`Mmu::FLUSH_STRATEGIES`] (the first is its
//! default); [`set_flush_strategy`] refuses any other with an error, so generic
//! code never names an architecture. The arch reads the knob with
//! [`flush_strategy`] at each flush.
//!
//! Counters. Per CPU, relaxed atomics, for tests and diagnostics: flushes
//! issued (generic entry points), flushes received (remote requests served,
//! counted by the arch's handler), IPIs and NMIs sent for flushes, pages
//! flushed (range length; a whole-mm flush counts 0 pages) and flushes that
//! needed no remote CPU (only the caller had the mm).
//!
//! Each entry point and arch hook also records a trace event
//! ([`crate::race::trace`]; one load when tracing is off).
//!
//! Invariants: the knob is changed only between flushes (tests set it while
//! no other CPU flushes); every value it holds is one of the arch's
//! [`Mmu::FLUSH_STRATEGIES`].

use super::arch::Mmu;
use super::mm::Mm;
use super::PAGE_SIZE;
use crate::race::trace;
use crate::NR_CPUS;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// How a TLB flush reaches the other CPUs that may cache an mm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushStrategy {
    /// A fixed-vector IPI per target, acknowledged in software; a target with
    /// interrupts disabled holds the flush back (x86-64 default).
    Ipi,
    /// The same request delivered by NMI: served whatever the target's
    /// interrupt mask.
    Nmi,
    /// Broadcast invalidation by the hardware (s390x IPTE/IDTE): no
    /// interrupt at all.
    Ipte,
    /// Broadcast invalidation by a compare-and-swap-and-purge (s390x
    /// CSP/CSPG with the purge bit): the entry is swapped and every CPU's
    /// whole TLB purged as one instruction; no interrupt either.
    Csp,
}

impl FlushStrategy {
    /// The knob's name for the strategy.
    pub fn name(self) -> &'static str {
        match self {
            FlushStrategy::Ipi => "ipi",
            FlushStrategy::Nmi => "nmi",
            FlushStrategy::Ipte => "ipte",
            FlushStrategy::Csp => "csp",
        }
    }

    /// Whether the hardware purges every CPU's TLB by itself (no interrupt
    /// reaches the other CPUs, so their interrupt mask does not matter).
    pub fn is_broadcast(self) -> bool {
        matches!(self, FlushStrategy::Ipte | FlushStrategy::Csp)
    }

    /// Every strategy, in knob order.
    pub const ALL: [FlushStrategy; 4] = [
        FlushStrategy::Ipi,
        FlushStrategy::Nmi,
        FlushStrategy::Ipte,
        FlushStrategy::Csp,
    ];

    /// The strategy named `name` (the knob's spelling).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    fn to_u8(self) -> u8 {
        match self {
            FlushStrategy::Ipi => 1,
            FlushStrategy::Nmi => 2,
            FlushStrategy::Ipte => 3,
            FlushStrategy::Csp => 4,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(FlushStrategy::Ipi),
            2 => Some(FlushStrategy::Nmi),
            3 => Some(FlushStrategy::Ipte),
            4 => Some(FlushStrategy::Csp),
            _ => None,
        }
    }
}

/// The selected strategy; 0 means the arch's default.
static STRATEGY: AtomicU8 = AtomicU8::new(0);

/// The strategy flushes use now.
pub fn flush_strategy<A: Mmu>() -> FlushStrategy {
    FlushStrategy::from_u8(STRATEGY.load(Ordering::Acquire)).unwrap_or(A::FLUSH_STRATEGIES[0])
}

/// Selects `s` for later flushes; refuses a strategy the arch does not
/// implement.
pub fn set_flush_strategy<A: Mmu>(s: FlushStrategy) -> Result<(), &'static str> {
    if !A::FLUSH_STRATEGIES.contains(&s) {
        return Err("this architecture does not implement that TLB flush strategy");
    }
    STRATEGY.store(s.to_u8(), Ordering::Release);
    Ok(())
}

/// Per-CPU flush counters.
#[repr(C, align(64))]
struct Counters {
    issued: AtomicU64,
    received: AtomicU64,
    ipis_sent: AtomicU64,
    nmis_sent: AtomicU64,
    pages: AtomicU64,
    local_only: AtomicU64,
}

static COUNTERS: [Counters; NR_CPUS] = [const {
    Counters {
        issued: AtomicU64::new(0),
        received: AtomicU64::new(0),
        ipis_sent: AtomicU64::new(0),
        nmis_sent: AtomicU64::new(0),
        pages: AtomicU64::new(0),
        local_only: AtomicU64::new(0),
    }
}; NR_CPUS];

/// A snapshot of one CPU's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbFlushStats {
    /// Flushes requested through this module on the CPU.
    pub issued: u64,
    /// Remote flush requests the CPU served.
    pub received: u64,
    /// Flush IPIs the CPU sent.
    pub ipis_sent: u64,
    /// Flush NMIs the CPU sent.
    pub nmis_sent: u64,
    /// Pages the CPU's flushes covered (whole-mm flushes count 0).
    pub pages: u64,
    /// Flushes that stayed on the CPU: no other CPU had the mm.
    pub local_only: u64,
}

/// The counters of `cpu`.
pub fn tlb_flush_stats(cpu: usize) -> TlbFlushStats {
    let c = &COUNTERS[cpu];
    TlbFlushStats {
        issued: c.issued.load(Ordering::Relaxed),
        received: c.received.load(Ordering::Relaxed),
        ipis_sent: c.ipis_sent.load(Ordering::Relaxed),
        nmis_sent: c.nmis_sent.load(Ordering::Relaxed),
        pages: c.pages.load(Ordering::Relaxed),
        local_only: c.local_only.load(Ordering::Relaxed),
    }
}

/// Arch hook: `cpu` served a remote flush request.
pub fn count_received(cpu: usize) {
    COUNTERS[cpu].received.fetch_add(1, Ordering::Relaxed);
    trace::record_on(cpu, trace::Kind::FlushRecv, 0, 0);
}

/// Arch hook: `cpu` sends a flush IPI (called before the send, so the
/// trace shows it before the target serves it).
pub fn count_ipi_sent(cpu: usize) {
    COUNTERS[cpu].ipis_sent.fetch_add(1, Ordering::Relaxed);
    trace::record_on(cpu, trace::Kind::FlushIpiSent, 0, 0);
}

/// Arch hook: `cpu` sends a flush NMI (called before the send).
pub fn count_nmi_sent(cpu: usize) {
    COUNTERS[cpu].nmis_sent.fetch_add(1, Ordering::Relaxed);
    trace::record_on(cpu, trace::Kind::FlushNmiSent, 0, 0);
}

/// Arch hook: a flush on `cpu` needed no other CPU.
pub fn count_local_only(cpu: usize) {
    COUNTERS[cpu].local_only.fetch_add(1, Ordering::Relaxed);
}

fn count_issued<A: Mmu>(pages: u64) {
    let c = &COUNTERS[A::smp_processor_id()];
    c.issued.fetch_add(1, Ordering::Relaxed);
    c.pages.fetch_add(pages, Ordering::Relaxed);
}

/// Flushes `addr` of `mm` from every CPU that may cache it.
pub fn flush_tlb_page<A: Mmu>(mm: &Mm<A>, addr: u64) {
    crate::race::race_point::<A>(&crate::race::point::points::SYNC_FLUSH, addr);
    count_issued::<A>(1);
    trace::record(trace::Kind::FlushIssue, addr, addr + PAGE_SIZE);
    A::flush_tlb_page(mm, addr);
}

/// Flushes `[start, end)` of `mm` from every CPU that may cache it.
pub fn flush_tlb_range<A: Mmu>(mm: &Mm<A>, start: u64, end: u64) {
    crate::race::race_point::<A>(&crate::race::point::points::SYNC_FLUSH, start);
    count_issued::<A>(end.saturating_sub(start).div_ceil(PAGE_SIZE));
    trace::record(trace::Kind::FlushIssue, start, end);
    A::flush_tlb_range(mm, start, end);
}

/// Flushes every translation of `mm` from every CPU that may cache it.
pub fn flush_tlb_mm<A: Mmu>(mm: &Mm<A>) {
    crate::race::race_point::<A>(&crate::race::point::points::SYNC_FLUSH, 0);
    count_issued::<A>(0);
    trace::record(trace::Kind::FlushIssue, 0, u64::MAX);
    A::flush_tlb_mm(mm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::emul::Emul4k;

    #[test]
    fn knob_takes_only_the_arch_strategies() {
        // The emulated arch declares only `Ipi`.
        assert_eq!(flush_strategy::<Emul4k>(), FlushStrategy::Ipi);
        assert!(set_flush_strategy::<Emul4k>(FlushStrategy::Nmi).is_err());
        assert!(set_flush_strategy::<Emul4k>(FlushStrategy::Ipte).is_err());
        assert!(set_flush_strategy::<Emul4k>(FlushStrategy::Csp).is_err());
        assert_eq!(flush_strategy::<Emul4k>(), FlushStrategy::Ipi);
        assert_eq!(set_flush_strategy::<Emul4k>(FlushStrategy::Ipi), Ok(()));
        assert_eq!(flush_strategy::<Emul4k>(), FlushStrategy::Ipi);
    }

    #[test]
    fn strategy_encoding_round_trips() {
        for s in FlushStrategy::ALL {
            assert_eq!(FlushStrategy::from_u8(s.to_u8()), Some(s));
            assert_eq!(FlushStrategy::from_name(s.name()), Some(s));
        }
        assert_eq!(FlushStrategy::from_u8(0), None);
    }
}
