//! The wait-for graph, read from live state, and the `impossible` prover.
//!
//! A CPU that spins for another CPU says what it waits for in its per-CPU
//! wait record ([`begin`] / [`end`]):
//! - at an armed race point, for the CPU whose schedule step is current
//!   ([`Wait::Step`]);
//! - for cross-CPU call acknowledgements from a set of CPUs
//!   ([`Wait::IpiAck`]; `smp_call_function*` with wait, which is also what
//!   `tlb_remove_table_sync_one` waits in);
//! - for TLB-flush acknowledgements ([`Wait::FlushAck`]; the x86-64
//!   shootdown by fixed-vector IPI);
//! - for a page-table lock ([`Wait::Lock`]; the lock records its owner,
//!   [`ptl_acquired`]);
//! - for an RCU grace period ([`Wait::Gp`]; `synchronize_rcu`).
//!
//! [`graph`] turns the records into edges, each confirmed from the hardware
//! or the lock and RCU state at the time of reading, never from a time-out:
//! - `Step`: the waiter → the CPU that runs the role of the current step;
//! - `IpiAck`: the waiter → each target on which an IPI is pending, as the
//!   interrupt hardware says ([`crate::Arch::ipi_pending`]: x86-64 LAPIC IRR,
//!   s390x SIGP SENSE). Where only the target itself can read it (x86-64),
//!   the target samples it while it waits at a race point ([`sample_ipi`]);
//!   a sample taken before the waiter began waiting does not count;
//! - `Lock`: the waiter → the lock's recorded owner;
//! - `Gp`: the waiter → every online CPU that has not reported a quiescent
//!   state for the running grace period ([`crate::rcu::gp_waiting_on`]).
//!
//! A cycle in that graph ([`find_cycle`]) is a deadlock no schedule can get
//! out of. Which of the waits in it hold the schedule back decides what it
//! means ([`WaitClass`], [`Edge::class`]): a cycle through a wait that the
//! variant's fix added (its IPI sync, its RCU grace period, the PTL it keeps
//! held) is the fix doing its job; any other cycle (the flush IPI of the
//! buggy kernel itself) means the bad interleaving cannot happen on this
//! hardware: the outcome `impossible`. A time-out without a cycle is `hang`.
//!
//! Invariants: a CPU writes only its own wait record; records nest (an
//! interrupt handler that waits saves and restores the interrupted record);
//! a lock's owner is set after it is taken and cleared before it is released.

use crate::NR_CPUS;
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// What a CPU waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// At a race point, for schedule step `index` to become current.
    Step {
        /// The step the waiter takes next.
        index: usize,
    },
    /// For every CPU of `mask` to take a cross-CPU call IPI and acknowledge.
    IpiAck {
        /// CPUs not acknowledged yet.
        mask: u64,
    },
    /// For every CPU of `mask` to take a TLB-flush IPI and acknowledge.
    FlushAck {
        /// CPUs not acknowledged yet.
        mask: u64,
    },
    /// For the PTL with hash index `idx`.
    Lock {
        /// Index of the lock in the PTL table.
        idx: usize,
    },
    /// For RCU grace period `gp` to end.
    Gp {
        /// The grace period's number.
        gp: u64,
    },
    /// For the page lock of the page whose descriptor is at `page`.
    PageLock {
        /// The descriptor's address.
        page: u64,
    },
    /// For a reader-writer lock whose holders `owners` records (its
    /// address), to take it for write or for read.
    RwLock {
        /// The address of the lock's [`RwOwners`].
        owners: u64,
        /// The waiter wants it for write.
        write: bool,
    },
    /// For a spin lock whose holder `owner` records (its address).
    SpinLock {
        /// The address of the lock's [`LockOwner`].
        owner: u64,
    },
}

/// Page locks each CPU holds (the descriptor's address; 0: a free slot). A CPU holds few
/// at a time; one taken when every slot is used is not recorded (a waiter
/// for it then shows no edge: at worst a `hang` instead of a cycle).
static PAGE_LOCKS: [[AtomicU64; 4]; NR_CPUS] =
    [const { [const { AtomicU64::new(0) }; 4] }; NR_CPUS];

/// `cpu` took the page lock of the page at `page`.
pub fn page_locked(page: u64, cpu: usize) {
    if let Some(slot) = PAGE_LOCKS[cpu.min(NR_CPUS - 1)]
        .iter()
        .find(|s| s.load(Ordering::Relaxed) == 0)
    {
        slot.store(page, Ordering::Release);
    }
}

/// The page lock of the page at `page` is about to be released (by
/// whichever CPU).
pub fn page_unlocked(page: u64) {
    for slots in &PAGE_LOCKS {
        for s in slots {
            let _ = s.compare_exchange(page, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// The CPU that holds the page lock of the page at `page`, as recorded.
fn page_lock_owner(page: u64) -> Option<usize> {
    PAGE_LOCKS
        .iter()
        .position(|slots| slots.iter().any(|s| s.load(Ordering::Acquire) == page))
}

/// The holders of a reader-writer lock (`mmap_lock`), for the prover.
pub struct RwOwners {
    /// The writer's CPU + 1; 0 when no CPU holds it for write.
    writer: AtomicUsize,
    /// The CPUs that hold it for read (bit per CPU).
    readers: AtomicU64,
}

impl RwOwners {
    /// No holder.
    pub const fn new() -> Self {
        RwOwners {
            writer: AtomicUsize::new(0),
            readers: AtomicU64::new(0),
        }
    }

    /// The wait for this lock (for [`begin`]).
    pub fn wait(&self, write: bool) -> Wait {
        Wait::RwLock {
            owners: self as *const RwOwners as u64,
            write,
        }
    }

    /// `cpu` took it for write.
    pub fn writer_in(&self, cpu: usize) {
        self.writer.store(cpu + 1, Ordering::Release);
    }

    /// The writer is about to release it.
    pub fn writer_out(&self) {
        self.writer.store(0, Ordering::Release);
    }

    /// `cpu` took it for read.
    pub fn reader_in(&self, cpu: usize) {
        self.readers.fetch_or(1 << cpu, Ordering::AcqRel);
    }

    /// `cpu` is about to release its read hold.
    pub fn reader_out(&self, cpu: usize) {
        self.readers.fetch_and(!(1 << cpu), Ordering::AcqRel);
    }

    /// The CPUs a waiter for write (or for read) waits for.
    fn blockers(&self, write: bool) -> u64 {
        let w = match self.writer.load(Ordering::Acquire) {
            0 => 0,
            c => 1 << (c - 1),
        };
        if write {
            w | self.readers.load(Ordering::Acquire)
        } else {
            w
        }
    }
}

/// The holder of a spin lock (the mapping tree's `xa_lock`), for the
/// prover: a CPU parked by explore mode inside the lock's critical section
/// holds back every CPU that spins on it.
pub struct LockOwner {
    /// The holder's CPU + 1; 0 when the lock is free.
    cpu: AtomicUsize,
}

impl LockOwner {
    /// No holder.
    pub const fn new() -> Self {
        LockOwner {
            cpu: AtomicUsize::new(0),
        }
    }

    /// The wait for this lock (for [`begin`]).
    pub fn wait(&self) -> Wait {
        Wait::SpinLock {
            owner: self as *const LockOwner as u64,
        }
    }

    /// `cpu` took the lock.
    pub fn set(&self, cpu: usize) {
        self.cpu.store(cpu + 1, Ordering::Release);
    }

    /// The holder is about to release the lock.
    pub fn clear(&self) {
        self.cpu.store(0, Ordering::Release);
    }

    /// The holder's CPU, if any.
    fn holder(&self) -> Option<usize> {
        self.cpu.load(Ordering::Acquire).checked_sub(1)
    }
}

impl Default for LockOwner {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for RwOwners {
    fn default() -> Self {
        Self::new()
    }
}

const NONE: u8 = 0;
const STEP: u8 = 1;
const IPI_ACK: u8 = 2;
const LOCK: u8 = 3;
const GP: u8 = 4;
const FLUSH_ACK: u8 = 5;
const RW_READ: u8 = 6;
const RW_WRITE: u8 = 7;
const PAGE_LOCK: u8 = 8;
const SPIN_LOCK: u8 = 9;

impl Wait {
    fn encode(self) -> (u8, u64) {
        match self {
            Wait::Step { index } => (STEP, index as u64),
            Wait::IpiAck { mask } => (IPI_ACK, mask),
            Wait::Lock { idx } => (LOCK, idx as u64),
            Wait::Gp { gp } => (GP, gp),
            Wait::FlushAck { mask } => (FLUSH_ACK, mask),
            Wait::RwLock { owners, write } => (if write { RW_WRITE } else { RW_READ }, owners),
            Wait::PageLock { page } => (PAGE_LOCK, page),
            Wait::SpinLock { owner } => (SPIN_LOCK, owner),
        }
    }

    fn decode(kind: u8, arg: u64) -> Option<Self> {
        match kind {
            STEP => Some(Wait::Step {
                index: arg as usize,
            }),
            IPI_ACK => Some(Wait::IpiAck { mask: arg }),
            FLUSH_ACK => Some(Wait::FlushAck { mask: arg }),
            LOCK => Some(Wait::Lock { idx: arg as usize }),
            GP => Some(Wait::Gp { gp: arg }),
            PAGE_LOCK => Some(Wait::PageLock { page: arg }),
            SPIN_LOCK => Some(Wait::SpinLock { owner: arg }),
            RW_READ | RW_WRITE => Some(Wait::RwLock {
                owners: arg,
                write: kind == RW_WRITE,
            }),
            _ => None,
        }
    }
}

#[repr(C, align(64))]
struct Record {
    kind: AtomicU8,
    irqs_off: AtomicBool,
    arg: AtomicU64,
    since: AtomicU64,
    /// 0 never sampled, 1 no IPI pending, 2 an IPI pending.
    ipi_sample: AtomicU8,
    ipi_sample_t: AtomicU64,
}

static RECORDS: [Record; NR_CPUS] = [const {
    Record {
        kind: AtomicU8::new(NONE),
        irqs_off: AtomicBool::new(false),
        arg: AtomicU64::new(0),
        since: AtomicU64::new(0),
        ipi_sample: AtomicU8::new(0),
        ipi_sample_t: AtomicU64::new(0),
    }
}; NR_CPUS];

/// The record a [`begin`] replaced, for [`end`].
#[must_use = "a wait record must be ended"]
pub struct Saved {
    cpu: usize,
    kind: u8,
    arg: u64,
    since: u64,
    irqs_off: bool,
}

/// `cpu` (the caller) starts waiting for `w`, with interrupts off or on.
pub fn begin(cpu: usize, w: Wait, irqs_off: bool) -> Saved {
    let r = &RECORDS[cpu];
    let saved = Saved {
        cpu,
        kind: r.kind.load(Ordering::Relaxed),
        arg: r.arg.load(Ordering::Relaxed),
        since: r.since.load(Ordering::Relaxed),
        irqs_off: r.irqs_off.load(Ordering::Relaxed),
    };
    let (kind, arg) = w.encode();
    r.kind.store(NONE, Ordering::Release);
    r.arg.store(arg, Ordering::Relaxed);
    r.irqs_off.store(irqs_off, Ordering::Relaxed);
    r.since.store(super::clock_ns(), Ordering::Relaxed);
    r.kind.store(kind, Ordering::Release);
    saved
}

/// Updates the mask of an [`Wait::IpiAck`] or [`Wait::FlushAck`] wait as acknowledgements arrive.
pub fn update_mask(cpu: usize, mask: u64) {
    RECORDS[cpu].arg.store(mask, Ordering::Release);
}

/// Ends the wait begun by the [`begin`] that returned `saved`.
pub fn end(saved: Saved) {
    let r = &RECORDS[saved.cpu];
    r.kind.store(NONE, Ordering::Release);
    r.arg.store(saved.arg, Ordering::Relaxed);
    r.since.store(saved.since, Ordering::Relaxed);
    r.irqs_off.store(saved.irqs_off, Ordering::Relaxed);
    r.kind.store(saved.kind, Ordering::Release);
}

/// What `cpu` waits for now, whether it has interrupts off, and since when.
pub fn waiting(cpu: usize) -> Option<(Wait, bool, u64)> {
    let r = &RECORDS[cpu];
    let kind = r.kind.load(Ordering::Acquire);
    Wait::decode(kind, r.arg.load(Ordering::Acquire)).map(|w| {
        (
            w,
            r.irqs_off.load(Ordering::Relaxed),
            r.since.load(Ordering::Relaxed),
        )
    })
}

/// CPUs that have a wait record now (for the state checks between runs).
pub fn waiting_cpus() -> u64 {
    (0..NR_CPUS)
        .filter(|&c| RECORDS[c].kind.load(Ordering::Acquire) != NONE)
        .fold(0, |m, c| m | 1 << c)
}

/// The calling CPU (`cpu`) publishes whether an IPI is pending on it, as its
/// interrupt hardware says now. Called while it waits at a race point.
pub fn sample_ipi<A: crate::Arch>(cpu: usize) {
    if let Some(pending) = A::ipi_pending(cpu) {
        let r = &RECORDS[cpu];
        r.ipi_sample.store(1 + pending as u8, Ordering::Relaxed);
        r.ipi_sample_t.store(A::clock_ns(), Ordering::Release);
    }
}

/// The latest IPI sample `cpu` published ([`sample_ipi`]): whether an IPI
/// was pending, and when it was read.
pub fn ipi_sample(cpu: usize) -> Option<(bool, u64)> {
    let r = &RECORDS[cpu];
    match r.ipi_sample.load(Ordering::Acquire) {
        0 => None,
        v => Some((v == 2, r.ipi_sample_t.load(Ordering::Acquire))),
    }
}

// ---- PTL owners ---------------------------------------------------------------

/// Number of split PTLs (`memory::pte_lockptr` hashes into this many).
pub const NR_PTL: usize = 256;

/// Owner + 1 of each PTL, 0 when free.
static PTL_OWNER: [AtomicUsize; NR_PTL] = [const { AtomicUsize::new(0) }; NR_PTL];

/// PTL `idx` was taken by `cpu`.
pub fn ptl_acquired(idx: usize, cpu: usize) {
    PTL_OWNER[idx].store(cpu + 1, Ordering::Release);
}

/// PTL `idx` is about to be released.
pub fn ptl_released(idx: usize) {
    PTL_OWNER[idx].store(0, Ordering::Release);
}

/// The CPU holding PTL `idx`, if any.
pub fn ptl_owner(idx: usize) -> Option<usize> {
    PTL_OWNER[idx].load(Ordering::Acquire).checked_sub(1)
}

/// PTLs held now (for the state checks between runs).
pub fn ptls_held() -> usize {
    PTL_OWNER
        .iter()
        .filter(|o| o.load(Ordering::Acquire) != 0)
        .count()
}

// ---- the graph ------------------------------------------------------------------

/// Why one CPU waits for another, with the live evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The waiter's schedule step comes after the other CPU's current step.
    Schedule {
        /// The waiter's step.
        waits_for_step: usize,
        /// The current step, which the other CPU must take.
        current: usize,
    },
    /// An IPI to the other CPU is pending in its interrupt hardware.
    IpiPending {
        /// The IPI is a TLB-flush request (not a cross-CPU call).
        flush: bool,
        /// Where the evidence came from.
        read_by: &'static str,
        /// The other CPU's interrupts are off (from its own wait record).
        target_irqs_off: bool,
    },
    /// The other CPU owns the PTL the waiter spins on.
    PtlOwner {
        /// The lock.
        idx: usize,
    },
    /// The grace period the waiter needs waits for the other CPU.
    RcuGp {
        /// The grace period.
        gp: u64,
    },
    /// The other CPU holds the page lock the waiter spins on.
    PageLockOwner {
        /// The page descriptor's address.
        page: u64,
    },
    /// The other CPU holds the `mmap_lock` the waiter spins on.
    MmapHolder {
        /// The waiter wants it for write.
        write: bool,
    },
    /// The other CPU holds the spin lock (its [`LockOwner`] at `owner`)
    /// the waiter spins on.
    SpinHolder {
        /// The address of the lock's [`LockOwner`].
        owner: u64,
    },
}

/// One edge: `from` waits for `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The waiting CPU.
    pub from: usize,
    /// The CPU it waits for.
    pub to: usize,
    /// Why, with the evidence.
    pub why: Why,
}

impl core::fmt::Display for Edge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "cpu{} -> cpu{}: ", self.from, self.to)?;
        match &self.why {
            Why::Schedule {
                waits_for_step,
                current,
            } => write!(
                f,
                "waits at a race point for step {waits_for_step}; step {current} is cpu{}'s",
                self.to
            ),
            Why::IpiPending {
                flush,
                read_by,
                target_irqs_off,
            } => write!(
                f,
                "waits for a {} IPI acknowledgement; the IPI is pending on cpu{} ({read_by}), its interrupts {}",
                if *flush { "TLB-flush" } else { "cross-CPU call" },
                self.to,
                if *target_irqs_off { "off" } else { "on" }
            ),
            Why::PtlOwner { idx } => write!(f, "spins on PTL {idx}, owned by cpu{}", self.to),
            Why::RcuGp { gp } => write!(
                f,
                "waits for RCU grace period {gp}, which waits for cpu{}'s quiescent state",
                self.to
            ),
            Why::PageLockOwner { page } => write!(
                f,
                "spins on the page lock of the page at {page:#x}, held by cpu{}",
                self.to
            ),
            Why::MmapHolder { write } => write!(
                f,
                "spins on mmap_lock for {}, held by cpu{}",
                if *write { "write" } else { "read" },
                self.to
            ),
            Why::SpinHolder { owner } => write!(
                f,
                "spins on the spin lock whose holder is recorded at {owner:#x}, held by cpu{}",
                self.to
            ),
        }
    }
}

/// What kind of wait an edge stands for, as a variant names the waits its
/// fix adds (`Variant::fix_waits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitClass {
    /// A cross-CPU call IPI not taken (`smp_call_function`, and with it
    /// `tlb_remove_table_sync_one`).
    CallIpi,
    /// A TLB-flush IPI not taken (x86-64 fixed-vector shootdown).
    FlushIpi,
    /// A PTL held by the other CPU.
    Ptl,
    /// A PTL held by the other CPU, spun on by the CPU of role `r` only: a
    /// fix that keeps the PTL held across its critical step holds back the
    /// role the fix is about (e.g. mkclean's rmap walk), while the same
    /// PTL spun on by another role (a fault that found no stale TLB entry
    /// to store through) is not the fix's doing. As a `fix_waits` entry;
    /// [`Edge::class`] never returns it.
    PtlWaitedBy(usize),
    /// An RCU grace period waiting for the other CPU.
    RcuGp,
    /// `mmap_lock` held by the other CPU.
    MmapLock,
    /// A page lock held by the other CPU.
    PageLock,
    /// A spin lock (the mapping tree's `xa_lock`) held by the other CPU.
    SpinLock,
}

impl WaitClass {
    /// The class's word in a cycle's evidence and the expected table.
    pub fn word(self) -> &'static str {
        match self {
            WaitClass::CallIpi => "call-ipi",
            WaitClass::FlushIpi => "flush-ipi",
            WaitClass::Ptl | WaitClass::PtlWaitedBy(_) => "ptl",
            WaitClass::RcuGp => "rcu-gp",
            WaitClass::MmapLock => "mmap-lock",
            WaitClass::PageLock => "page-lock",
            WaitClass::SpinLock => "spin-lock",
        }
    }

    /// Whether this `fix_waits` entry covers the wait of edge `e`, given
    /// the role of each CPU.
    pub fn covers(self, e: &Edge, role_of: impl Fn(usize) -> Option<usize>) -> bool {
        match (self, e.class()) {
            (WaitClass::PtlWaitedBy(r), Some(WaitClass::Ptl)) => role_of(e.from) == Some(r),
            (w, Some(c)) => w == c,
            (_, None) => false,
        }
    }
}

impl Edge {
    /// The class of the wait behind this edge; `None` for a schedule edge
    /// (a CPU held at a race point), which the forced schedule itself makes.
    pub fn class(&self) -> Option<WaitClass> {
        match self.why {
            Why::Schedule { .. } => None,
            Why::IpiPending { flush: true, .. } => Some(WaitClass::FlushIpi),
            Why::IpiPending { flush: false, .. } => Some(WaitClass::CallIpi),
            Why::PtlOwner { .. } => Some(WaitClass::Ptl),
            Why::RcuGp { .. } => Some(WaitClass::RcuGp),
            Why::MmapHolder { .. } => Some(WaitClass::MmapLock),
            Why::PageLockOwner { .. } => Some(WaitClass::PageLock),
            Why::SpinHolder { .. } => Some(WaitClass::SpinLock),
        }
    }
}

/// Whether the schedule holds some CPU of `cycle` at a race point: only
/// then is the cycle the forced schedule's doing; a cycle of kernel waits
/// alone is a deadlock of the kernel.
pub fn holds_at_point(cycle: &[Edge]) -> bool {
    cycle.iter().any(|e| matches!(e.why, Why::Schedule { .. }))
}

/// Whether every wait of `cycle` that the schedule did not make is one of
/// `fix_waits`: the cycle is the fix holding the interleaving back.
pub fn held_by(cycle: &[Edge], fix_waits: &[WaitClass]) -> bool {
    held_by_roles(cycle, fix_waits, super::point::role_of)
}

/// [`held_by`] with the roles of the CPUs given by `role_of`.
pub fn held_by_roles(
    cycle: &[Edge],
    fix_waits: &[WaitClass],
    role_of: impl Fn(usize) -> Option<usize> + Copy,
) -> bool {
    let mut waits = cycle.iter().filter(|e| e.class().is_some()).peekable();
    waits.peek().is_some() && waits.all(|e| fix_waits.iter().any(|w| w.covers(e, role_of)))
}

/// The wait-for graph as it is now. `step_cpu(i)` is the CPU that takes
/// schedule step `i`; `current_step` the step the schedule is at.
pub fn graph<A: crate::Arch>(
    nr_cpus: usize,
    current_step: usize,
    step_cpu: impl Fn(usize) -> Option<usize>,
) -> Vec<Edge> {
    let mut edges = Vec::new();
    for cpu in 0..nr_cpus.min(NR_CPUS) {
        let Some((w, _, since)) = waiting(cpu) else {
            continue;
        };
        match w {
            Wait::Step { index } => {
                if let Some(to) = step_cpu(current_step).filter(|&to| to != cpu) {
                    if index > current_step {
                        edges.push(Edge {
                            from: cpu,
                            to,
                            why: Why::Schedule {
                                waits_for_step: index,
                                current: current_step,
                            },
                        });
                    }
                }
            }
            Wait::IpiAck { mask } | Wait::FlushAck { mask } => {
                let flush = matches!(w, Wait::FlushAck { .. });
                for to in (0..nr_cpus).filter(|&t| t != cpu && mask & (1 << t) != 0) {
                    let (pending, read_by) = match A::ipi_pending(to) {
                        Some(p) => (p, "read remotely from the interrupt hardware"),
                        None => {
                            let r = &RECORDS[to];
                            let fresh = r.ipi_sample_t.load(Ordering::Acquire) > since;
                            (
                                fresh && r.ipi_sample.load(Ordering::Relaxed) == 2,
                                "read by the target from its own interrupt hardware",
                            )
                        }
                    };
                    let target_irqs_off = waiting(to).is_some_and(|(_, off, _)| off);
                    if pending && target_irqs_off {
                        edges.push(Edge {
                            from: cpu,
                            to,
                            why: Why::IpiPending {
                                flush,
                                read_by,
                                target_irqs_off,
                            },
                        });
                    }
                }
            }
            Wait::Lock { idx } => {
                if let Some(to) = ptl_owner(idx).filter(|&o| o != cpu) {
                    edges.push(Edge {
                        from: cpu,
                        to,
                        why: Why::PtlOwner { idx },
                    });
                }
            }
            Wait::Gp { gp } => {
                if let Some((running, mask)) = crate::rcu::gp_waiting_on::<A>() {
                    if running <= gp {
                        // Only a CPU that waits with interrupts off holds
                        // the grace period: one that waits with them on
                        // reports its quiescent state at its next tick.
                        let holds = |t: usize| waiting(t).is_some_and(|(_, off, _)| off);
                        for to in
                            (0..nr_cpus).filter(|&t| t != cpu && mask & (1 << t) != 0 && holds(t))
                        {
                            edges.push(Edge {
                                from: cpu,
                                to,
                                why: Why::RcuGp { gp: running },
                            });
                        }
                    }
                }
            }
            Wait::PageLock { page } => {
                if let Some(to) = page_lock_owner(page).filter(|&o| o != cpu) {
                    edges.push(Edge {
                        from: cpu,
                        to,
                        why: Why::PageLockOwner { page },
                    });
                }
            }
            Wait::RwLock { owners, write } => {
                // SAFETY: a CPU waits on a lock only while the lock (in
                // its mm) lives, and it ends its record before it leaves.
                let o = unsafe { &*(owners as *const RwOwners) };
                let mask = o.blockers(write);
                for to in (0..nr_cpus).filter(|&t| t != cpu && mask & (1 << t) != 0) {
                    edges.push(Edge {
                        from: cpu,
                        to,
                        why: Why::MmapHolder { write },
                    });
                }
            }
            Wait::SpinLock { owner } => {
                // SAFETY: a CPU waits on a lock only while the lock lives,
                // and it ends its record before it leaves.
                let o = unsafe { &*(owner as *const LockOwner) };
                if let Some(to) = o.holder().filter(|&t| t != cpu) {
                    edges.push(Edge {
                        from: cpu,
                        to,
                        why: Why::SpinHolder { owner },
                    });
                }
            }
        }
    }
    edges
}

/// A cycle in `edges`, as its edges in order, if there is one.
pub fn find_cycle(edges: &[Edge]) -> Option<Vec<Edge>> {
    // Colours: 0 unvisited, 1 on the DFS stack, 2 done.
    let mut colour = [0u8; NR_CPUS];
    let mut stack: Vec<&Edge> = Vec::new();
    fn dfs<'a>(
        n: usize,
        edges: &'a [Edge],
        colour: &mut [u8; NR_CPUS],
        stack: &mut Vec<&'a Edge>,
    ) -> Option<Vec<Edge>> {
        colour[n] = 1;
        for e in edges.iter().filter(|e| e.from == n) {
            if colour[e.to] == 1 {
                // The cycle: from the edge leaving `e.to` on the stack to `e`.
                let start = stack.iter().position(|s| s.from == e.to).unwrap_or(0);
                let mut cycle: Vec<Edge> = stack[start..].iter().map(|&s| s.clone()).collect();
                cycle.push(e.clone());
                return Some(cycle);
            }
            if colour[e.to] == 0 {
                stack.push(e);
                if let Some(c) = dfs(e.to, edges, colour, stack) {
                    return Some(c);
                }
                stack.pop();
            }
        }
        colour[n] = 2;
        None
    }
    for n in 0..NR_CPUS {
        if colour[n] == 0 && edges.iter().any(|e| e.from == n) {
            if let Some(c) = dfs(n, edges, &mut colour, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// The CPUs of a cycle, as a bit mask (to see that the same cycle persists).
pub fn cycle_cpus(cycle: &[Edge]) -> u64 {
    cycle.iter().fold(0, |m, e| m | 1 << e.from)
}

/// A cycle as one line.
pub fn describe(cycle: &[Edge]) -> String {
    let parts: Vec<String> = cycle.iter().map(|e| format!("{e}")).collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(from: usize, to: usize) -> Edge {
        Edge {
            from,
            to,
            why: Why::PtlOwner { idx: 0 },
        }
    }

    #[test]
    fn finds_a_cycle_and_only_a_cycle() {
        assert_eq!(find_cycle(&[e(1, 2), e(2, 3)]), None);
        assert_eq!(find_cycle(&[]), None);
        let c = find_cycle(&[e(0, 1), e(1, 2), e(2, 1)]).unwrap();
        assert_eq!(cycle_cpus(&c), 0b110);
        assert_eq!(c.len(), 2);
        let c = find_cycle(&[e(3, 1), e(1, 2), e(2, 3), e(2, 4)]).unwrap();
        assert_eq!(cycle_cpus(&c), 0b1110);
    }

    #[test]
    fn a_cycle_is_held_by_the_fix_only_through_its_waits() {
        let sched = Edge {
            from: 1,
            to: 2,
            why: Why::Schedule {
                waits_for_step: 3,
                current: 1,
            },
        };
        let ipi = |flush| Edge {
            from: 2,
            to: 1,
            why: Why::IpiPending {
                flush,
                read_by: "test",
                target_irqs_off: true,
            },
        };
        let sync = [sched.clone(), ipi(false)];
        let flush = [sched.clone(), ipi(true)];
        assert!(held_by(&sync, &[WaitClass::CallIpi]));
        assert!(!held_by(&flush, &[WaitClass::CallIpi]));
        assert!(!held_by(&sync, &[]));
        assert!(!held_by(&[sched], &[WaitClass::CallIpi]));
    }

    #[test]
    fn a_ptl_wait_is_the_fix_s_only_for_the_role_it_names() {
        // cpu1 (role 0, the zap) holds at a point for cpu2's step; cpu2
        // spins on the PTL cpu1 holds.
        let cycle = [
            Edge {
                from: 1,
                to: 2,
                why: Why::Schedule {
                    waits_for_step: 5,
                    current: 4,
                },
            },
            e(2, 1),
        ];
        let role_of = |cpu: usize| cpu.checked_sub(1);
        assert!(held_by_roles(&cycle, &[WaitClass::Ptl], role_of));
        assert!(held_by_roles(&cycle, &[WaitClass::PtlWaitedBy(1)], role_of));
        assert!(!held_by_roles(
            &cycle,
            &[WaitClass::PtlWaitedBy(2)],
            role_of
        ));
        assert!(!held_by_roles(&cycle, &[WaitClass::RcuGp], role_of));
        assert!(!held_by_roles(
            &cycle[..1],
            &[WaitClass::PtlWaitedBy(1)],
            role_of
        ));
    }

    #[test]
    fn records_nest() {
        let outer = begin(5, Wait::Lock { idx: 3 }, false);
        let inner = begin(5, Wait::IpiAck { mask: 2 }, true);
        assert_eq!(waiting(5).map(|w| w.0), Some(Wait::IpiAck { mask: 2 }));
        end(inner);
        assert_eq!(
            waiting(5).map(|w| (w.0, w.1)),
            Some((Wait::Lock { idx: 3 }, false))
        );
        end(outer);
        assert_eq!(waiting(5), None);
    }
}
