//! Per-CPU trace rings: what each CPU did last, with time stamps, for race
//! reports.
//!
//! Each CPU owns one ring of [`RING_LEN`] slots. Events are written by the CPU
//! they happen on: race points passed, schedule steps taken, natural delays,
//! TLB flushes issued and served, flush IPIs and NMIs sent, cross-CPU call IPIs
//! sent and taken, NMIs taken, page faults, and marks a scenario adds
//! ([`mark`]). The time stamp is [`crate::Arch::clock_ns`], consistent across
//! CPUs, so the rings merge into one time-ordered history ([`snapshot`]).
//!
//! Every event also takes a number from one global sequence counter (an
//! atomic read-modify-write, acquire and release): if an event has a
//! smaller number than another, everything its CPU did before it happened
//! before everything the other's CPU did after the other. [`passes`] reads
//! a CPU's passes through a race point with those numbers, which is how a
//! row tells whether its roles met inside the window (`Row::overlapped`).
//!
//! Cost: every hook starts with one relaxed load of the global switch
//! ([`set_enabled`]); with tracing off nothing else happens.
//!
//! Invariants:
//! - a slot is reserved by `fetch_add` on its ring's head, so an interrupt or
//!   NMI that traces on the same CPU in the middle of an event writes another
//!   slot; the slot's `meta` word is written last (release), and a reader
//!   takes only slots whose `meta` carries the sequence number it expects;
//! - rings are cleared ([`clear`]) only while tracing is off.

use super::point::RacePoint;
use crate::{kprintln, NR_CPUS};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Events kept per CPU.
pub const RING_LEN: usize = 256;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An armed race point was reached (`a` = point, `b` = address).
    Point = 1,
    /// A forced-schedule step was taken (`a` = point, `b` = step index).
    Step = 2,
    /// A natural-mode delay at a point (`a` = point, `b` = delay in ns).
    Delay = 3,
    /// A TLB flush issued (`a` = start, `b` = end; 0..u64::MAX for a whole mm).
    FlushIssue = 4,
    /// A remote TLB flush request served.
    FlushRecv = 5,
    /// A flush IPI sent (`a` = pages of the flush, unused: 0).
    FlushIpiSent = 6,
    /// A flush NMI sent.
    FlushNmiSent = 7,
    /// A cross-CPU call IPI sent (`a` = target CPU).
    IpiSend = 8,
    /// An IPI taken.
    IpiRecv = 9,
    /// An NMI taken.
    NmiRecv = 10,
    /// A page fault (`a` = address, `b` = 1 for a store).
    Fault = 11,
    /// A scenario's mark (`a` = label, `b` = value).
    Mark = 12,
    /// A role CPU goes on from an armed point after a natural delay or
    /// after following the forced schedule there (`a` = point, `b` =
    /// address).
    Leave = 13,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        use Kind::*;
        [
            Point,
            Step,
            Delay,
            FlushIssue,
            FlushRecv,
            FlushIpiSent,
            FlushNmiSent,
            IpiSend,
            IpiRecv,
            NmiRecv,
            Fault,
            Mark,
            Leave,
        ]
        .into_iter()
        .find(|k| *k as u8 == v)
    }
}

#[repr(C)]
struct Slot {
    t: AtomicU64,
    seq: AtomicU64,
    /// `kind | seq << 8`, written last; 0 while being written.
    meta: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

#[repr(C, align(64))]
struct Ring {
    head: AtomicU64,
    slots: [Slot; RING_LEN],
}

static RINGS: [Ring; NR_CPUS] = [const {
    Ring {
        head: AtomicU64::new(0),
        slots: [const {
            Slot {
                t: AtomicU64::new(0),
                seq: AtomicU64::new(0),
                meta: AtomicU64::new(0),
                a: AtomicU64::new(0),
                b: AtomicU64::new(0),
            }
        }; RING_LEN],
    }
}; NR_CPUS];

static TRACING: AtomicBool = AtomicBool::new(false);

/// The global sequence counter every event takes its number from.
static SEQ: AtomicU64 = AtomicU64::new(1);

/// Turns tracing on or off for every CPU.
pub fn set_enabled(on: bool) {
    TRACING.store(on, Ordering::SeqCst);
}

/// Whether tracing is on.
#[inline(always)]
pub fn enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Records an event on the calling CPU (or on `cpu` when the caller knows
/// it). Costs one relaxed load when tracing is off.
#[inline(always)]
pub fn record(kind: Kind, a: u64, b: u64) {
    if enabled() {
        record_slow(super::this_cpu(), kind, a, b);
    }
}

/// [`record`] for a caller that knows its CPU number.
#[inline(always)]
pub fn record_on(cpu: usize, kind: Kind, a: u64, b: u64) {
    if enabled() {
        record_slow(cpu, kind, a, b);
    }
}

#[cold]
fn record_slow(cpu: usize, kind: Kind, a: u64, b: u64) {
    let ring = &RINGS[cpu.min(NR_CPUS - 1)];
    let seq = ring.head.fetch_add(1, Ordering::Relaxed);
    let slot = &ring.slots[seq as usize % RING_LEN];
    slot.meta.store(0, Ordering::Relaxed);
    slot.t.store(super::clock_ns(), Ordering::Relaxed);
    // Acquire and release: what this CPU did before the event happened
    // before what any CPU does after an event with a larger number.
    slot.seq
        .store(SEQ.fetch_add(1, Ordering::AcqRel), Ordering::Relaxed);
    slot.a.store(a, Ordering::Relaxed);
    slot.b.store(b, Ordering::Relaxed);
    slot.meta
        .store(kind as u64 | (seq + 1) << 8, Ordering::Release);
}

/// A scenario's own event: `label` (a race point used as a name) with a value.
pub fn mark(label: &'static RacePoint, value: u64) {
    record(Kind::Mark, label as *const RacePoint as u64, value);
}

/// Empties every ring. Call only with tracing off.
pub fn clear() {
    for ring in &RINGS {
        ring.head.store(0, Ordering::Relaxed);
        for s in &ring.slots {
            s.meta.store(0, Ordering::Relaxed);
        }
    }
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// One recorded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// [`crate::Arch::clock_ns`] when it happened.
    pub t: u64,
    /// Its number from the global sequence counter (see the module docs).
    pub seq: u64,
    /// The CPU it happened on.
    pub cpu: usize,
    /// What happened.
    pub kind: Kind,
    /// First argument (see [`Kind`]).
    pub a: u64,
    /// Second argument.
    pub b: u64,
}

impl Event {
    /// The race point of a `Point`, `Step`, `Delay` or `Mark` event.
    pub fn point(&self) -> Option<&'static RacePoint> {
        match self.kind {
            Kind::Point | Kind::Step | Kind::Delay | Kind::Mark | Kind::Leave => {
                // SAFETY: these kinds store the address of a `'static
                // RacePoint` in `a` (`point::race_point`, `mark`).
                Some(unsafe { &*(self.a as *const RacePoint) })
            }
            _ => None,
        }
    }
}

/// The last `per_cpu` events of every CPU, merged in time order (ties by
/// CPU, then by order on the CPU).
pub fn snapshot(per_cpu: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for (cpu, ring) in RINGS.iter().enumerate() {
        let head = ring.head.load(Ordering::Acquire);
        let n = head.min(RING_LEN as u64).min(per_cpu as u64);
        for seq in head - n..head {
            let s = &ring.slots[seq as usize % RING_LEN];
            let meta = s.meta.load(Ordering::Acquire);
            if meta >> 8 != seq + 1 {
                continue; // being written, or overwritten since
            }
            let Some(kind) = Kind::from_u8(meta as u8) else {
                continue;
            };
            out.push(Event {
                t: s.t.load(Ordering::Relaxed),
                seq: s.seq.load(Ordering::Relaxed),
                cpu,
                kind,
                a: s.a.load(Ordering::Relaxed),
                b: s.b.load(Ordering::Relaxed),
            });
        }
    }
    // Stable: events of one CPU with equal stamps keep their order.
    out.sort_by_key(|e| (e.t, e.cpu));
    out
}

/// One pass of a CPU through an armed race point, as its trace recorded
/// it: the numbers of its arrival and of its departure from the global
/// sequence counter (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    /// The point's `addr` argument.
    pub addr: u64,
    /// The number of its `Point` event: what the CPU did before the point
    /// happened before every event with a larger number.
    pub arrived: u64,
    /// The number of its last event: its `Leave` (after a natural delay or
    /// the schedule's hold), its `Delay` of 0 ns, or its arrival when it
    /// went straight on. Every event with a smaller number happened before
    /// what the CPU did after the point.
    pub left: u64,
}

impl Pass {
    /// Whether this pass arrived before `later` left: what this pass's CPU
    /// did before its point happened before what `later`'s CPU did after
    /// its own.
    pub fn before(&self, later: &Pass) -> bool {
        self.arrived < later.left
    }
}

/// The passes of `cpu` through `p` in its ring (its last [`RING_LEN`]
/// events since the rings were cleared), in order. Call with tracing off.
pub fn passes(cpu: usize, p: &RacePoint) -> Vec<Pass> {
    let ring = &RINGS[cpu.min(NR_CPUS - 1)];
    let head = ring.head.load(Ordering::Acquire);
    let n = head.min(RING_LEN as u64);
    let pa = p as *const RacePoint as u64;
    let mut out: Vec<Pass> = Vec::new();
    for i in head - n..head {
        let s = &ring.slots[i as usize % RING_LEN];
        let meta = s.meta.load(Ordering::Acquire);
        if meta >> 8 != i + 1 || s.a.load(Ordering::Relaxed) != pa {
            continue;
        }
        let seq = s.seq.load(Ordering::Relaxed);
        match Kind::from_u8(meta as u8) {
            Some(Kind::Point) => out.push(Pass {
                addr: s.b.load(Ordering::Relaxed),
                arrived: seq,
                left: seq,
            }),
            // A delay of 0 ns is recorded too, with no `Leave` after it:
            // only the `Leave` ends a pass that waited.
            Some(Kind::Leave) => {
                if let Some(last) = out.last_mut() {
                    last.left = seq;
                }
            }
            _ => {}
        }
    }
    out
}

/// Events recorded on `cpu` so far (up to [`RING_LEN`]), in its own order.
pub fn events_of(cpu: usize) -> Vec<Event> {
    snapshot(RING_LEN)
        .into_iter()
        .filter(|e| e.cpu == cpu)
        .collect()
}

/// One event as a report line: time relative to `t0`, CPU, role and what.
pub fn describe(e: &Event, t0: u64, role: Option<&str>) -> alloc::string::String {
    use alloc::format;
    let who = match role {
        Some(r) => format!("cpu{} {r}", e.cpu),
        None => format!("cpu{}", e.cpu),
    };
    let name = e.point().map_or("", |p| p.name);
    let what = match e.kind {
        Kind::Point => format!("point {name} addr={:#x}", e.b),
        Kind::Step => format!("step {} done at {name}", e.b),
        Kind::Delay => format!("delay {} ns at {name}", e.b),
        Kind::FlushIssue if e.b == u64::MAX => "flush_tlb_mm".into(),
        Kind::FlushIssue => format!("flush_tlb {:#x}..{:#x}", e.a, e.b),
        Kind::FlushRecv => "flush request served".into(),
        Kind::FlushIpiSent => "flush IPI sent".into(),
        Kind::FlushNmiSent => "flush NMI sent".into(),
        Kind::IpiSend => format!("IPI sent to cpu{}", e.a),
        Kind::IpiRecv => "IPI taken".into(),
        Kind::NmiRecv => "NMI taken".into(),
        Kind::Fault => format!(
            "page fault at {:#x} ({})",
            e.a,
            if e.b != 0 { "store" } else { "load" }
        ),
        Kind::Mark => format!("{name} {:#x}", e.b),
        Kind::Leave => format!("leave {name}"),
    };
    format!("t=+{}ns {who}: {what}", e.t.saturating_sub(t0))
}

/// Prints `events` as KTAP diagnostics (`    # trace: ...`).
pub fn print(events: &[Event], role_of: impl Fn(usize) -> Option<&'static str>) {
    let t0 = events.first().map_or(0, |e| e.t);
    for e in events {
        kprintln!("    # trace: {}", describe(e, t0, role_of(e.cpu)));
    }
}
