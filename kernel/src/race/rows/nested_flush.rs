//! `nested-flush` (catalogue row 8): two MADV_DONTNEEDs of overlapping
//! ranges; the second finds the PTE already clear, flushes nothing and
//! returns while a third CPU still holds a stale writable TLB entry for the
//! page: a store lands in the dropped page after MADV_DONTNEED returned.
//!
//! MADV_DONTNEED runs under `mmap_lock` for read, so two of them can zap
//! the same range at once. The first clears the PTE and batches the flush
//! until `tlb_finish_mmu`, after it dropped the PTL; the second finds the
//! entry empty, so its gather has nothing to flush, and it returns at once.
//! Until the first flushes, any CPU that cached the translation still
//! writes to the page that userspace was just told is gone. 99baac21e458
//! ("mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem") makes a gather
//! that sees another gather of the mm in flight (`mm_tlb_flush_nested`,
//! counted by `inc_tlb_flush_pending`) flush the whole mm at its finish.
//!
//! - Roles: `writer` (CPU 1) stores tagged sequence numbers to an anonymous
//!   page through its user mapping; `zap1` (CPU 2) MADV_DONTNEEDs both pages
//!   of the mapping; `zap2` (CPU 3) MADV_DONTNEEDs the second page, the one
//!   the writer stores to.
//! - Setup: a private anonymous two-page mapping, built per run by
//!   `prepare` (the run's [`RunMm`], its page tables kept) with its second
//!   page mapped writable; every iteration
//!   starts and ends in that state (the page a store that faulted after the
//!   zaps mapped, or one faulted in on the controller): zapping in the
//!   teardown would flush every role CPU, halted by then, whose wake-ups
//!   cost more than the iteration under TCG.
//! - Handshakes: the writer stores once (its TLB now holds the writable
//!   translation), then publishes that it runs; both zaps start then. Each
//!   zap publishes that its MADV_DONTNEED returned (`user:syscall_returned`).
//!   The writer stores once after each return (it sleeps in between,
//!   halted, woken by the zap that returned) until both returned, and
//!   after each store checks
//!   whether it was a late one: begun after a MADV_DONTNEED of the page had
//!   returned, without a page fault since its first store, and visible in
//!   the page the iteration mapped.
//! - Variants (their `Config`, a [`mmu_gather::NestedFlush`]): `buggy`
//!   (`Ignore`) and `fixed` (`ForceFull`, 99baac21e458), each run under every flush
//!   strategy of the arch (the flush axis: x86-64 `ipi`, `nmi`; s390x
//!   `ipte`, which purges every TLB at the clear, so there is no stale
//!   entry to store through). Pages are freed after the flush with interrupt
//!   flushes and at the clear with IPTE, as each arch does.
//! - Forced schedule: the writer holds before a store; `zap1` clears the
//!   PTE and holds at `gather:before_finish` (PTL released, nothing flushed
//!   yet); `zap2` zaps and returns (buggy: its gather is empty, no flush;
//!   fixed: `zap1`'s gather is in flight, so it flushes the whole mm, and
//!   the writer's CPU takes the flush while it holds with interrupts on);
//!   then the writer stores; only then `zap1` flushes. Buggy x86-64: the
//!   store goes through the stale entry: `bug`. Fixed, and s390x: the store
//!   faults and maps a new page: `clean`.
//! - Natural: random delays at `gather:before_finish` widen the first
//!   zap's window; `zap:after_pte_clear` and `madvise:after_dontneed` are
//!   traced.
//! - Overlap (the roles met inside the window): one zap cleared the page's
//!   PTE (`zap:after_pte_clear`) before the other finished its
//!   MADV_DONTNEED (`madvise:after_dontneed`), and the writer's first store
//!   after a return (done at `user:after_store`) came before the first
//!   zap's flush was done (`gather:after_flush` after its
//!   `gather:before_finish`; where it has none, its leaving
//!   `gather:before_finish`) — so the return that woke the writer was the
//!   other zap's, inside the first one's window. Buggy
//!   with interrupt flushes: the store goes through the stale TLB entry;
//!   fixed: the returning zap flushed the whole mm; IPTE: every TLB was
//!   purged at the clear.
//! - Detector: a store that landed after the zap returned — through the
//!   writer's own stale TLB entry (no page fault since its first store,
//!   while the PTE was gone), seen in the old frame right after the store.
//! - Teardown: see Setup.

use crate::{roles, schedule};
use crate::mm::arch::Mmu;
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::mmu_gather::{self, PageFree, TlbPolicy};
use crate::mm::page::{self, pfn_to_page};
use crate::mm::tlbflush::FlushStrategy;
use crate::mm::PAGE_SIZE;
use crate::percpu;
use crate::race::detect::Finding;
use crate::race::point::{self, points, race_point};
use crate::race::scenario::{Commit, CommitRole::Fix, Ctx, Row, RowInfo, RunMm, Variant};
use crate::race::user;
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

roles!(WRITER = "writer", ZAP1 = "zap1", ZAP2 = "zap2");

/// Safety net: a writer never stores more often than this in an iteration.
const MAX_STORES: u64 = 1 << 20;

/// The row.
pub struct NestedFlush;

/// What the roles and the detector share in an iteration.
#[derive(Default)]
pub struct State {
    /// The writer's first store is done: its TLB holds the translation.
    writer_runs: AtomicBool,
    /// MADV_DONTNEEDs returned.
    zaps_done: AtomicU64,
    /// The first late store's sequence number (0: none).
    late_seq: AtomicU64,
    /// The zaps returned before the late store began.
    late_after: AtomicU64,
    /// The iteration's first sequence number.
    seq_base: u64,
}

const RW: VmFlags = VmFlags {
    read: true,
    write: true,
};

impl<A: Mmu> Row<A> for NestedFlush {
    const INFO: RowInfo = RowInfo {
        catalogue: Some(8),
        seed: "beyond the seeds: catalogue row 8, from 99baac21e458",
        commits: &[Commit::new("99baac21e458", Some("mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem"), None, Fix)],
        // x86-64 IPI and NMI shootdown, s390x IPTE (CSP behaves as IPTE
        // here and is left out to keep the boot short).
        flush: &[FlushStrategy::Ipi, FlushStrategy::Nmi, FlushStrategy::Ipte],
        delay_points: &[&points::GATHER_BEFORE_FINISH],
        trace_points: &[
            &points::ZAP_AFTER_PTE_CLEAR,
            &points::GATHER_AFTER_FLUSH,
            &points::MADVISE_AFTER_DONTNEED,
        ],
        max_delay_ns: 200_000,
        schedule: schedule![
            WRITER at points::USER_BEFORE_STORE;
            ZAP1 at points::GATHER_BEFORE_FINISH;
            ZAP2 at points::ZAP_BEFORE_PTL, points::USER_SYSCALL_RETURNED;
            WRITER leave points::USER_BEFORE_STORE;
            WRITER at points::USER_AFTER_STORE;
            ZAP1 leave points::GATHER_BEFORE_FINISH;
        ],
        ..RowInfo::new("nested-flush", "two MADV_DONTNEEDs overlap; the one that finds the PTE clear returns before any flush", ROLES)
    };
    /// What a gather does when another gather of the mm is in flight.
    type Config = mmu_gather::NestedFlush;
    const VARIANTS: &'static [Variant<Self::Config>] = &[
        Variant::new("buggy", "a gather flushes only what it cleared itself", "Linux before 99baac21e458: a gather flushes only what it cleared", &[], mmu_gather::NestedFlush::Ignore),
        Variant::new("fixed", "a gather flushes the whole mm when another is in flight (99baac21e458)", "99baac21e458: a gather that sees another in flight (mm_tlb_flush_nested) flushes the whole mm", &[], mmu_gather::NestedFlush::ForceFull),
    ];
    type State = State;
    /// The mm, with its mapping and page tables.
    type Run = RunMm<A>;

    fn prepare(v: &Variant<Self::Config>) -> Result<RunMm<A>, &'static str> {
        mmu_gather::set_tlb_policy(TlbPolicy {
            page_free: PageFree::native::<A>(),
            nested: v.config,
            ..TlbPolicy::DEFAULT
        });
        // The VMA, the page tables and the writer's page, mapped writable
        // (`teardown` leaves the same state behind).
        Ok(RunMm::build(|mm| {
            memory::mmap_anon(mm, user::stale_tlb_base::<A>(), 2 * PAGE_SIZE, RW, false)
                .map_err(|_| ())?;
            writable_page(mm, page_addr::<A>()).map(|_| ()).map_err(|_| ())
        }))
    }

    fn run_mm(run: &mut RunMm<A>) -> Option<&mut RunMm<A>> {
        Some(run)
    }

    fn setup(_: &mut RunMm<A>, ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        let addr = page_addr::<A>();
        ctx.addr = addr;
        ctx.pfns = Vec::from([writable_page(ctx.mm(), addr)?]);
        ctx.state.seq_base = (ctx.iteration + 1) << 32;
        Ok(())
    }

    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool {
        let addr = ctx.addr;
        let st = &ctx.state;
        match role {
            WRITER => {
                let pfn = ctx.pfns[0];
                let mut seq = st.seq_base + 1;
                // Fills this CPU's TLB with the writable translation.
                let primed = A::probe_store(addr, seq).is_ok();
                let faults = page_faults::<A>();
                st.writer_runs.store(true, Ordering::Release);
                if !primed {
                    return false;
                }
                let mut stored = 0;
                let mut seen = 0;
                loop {
                    race_point::<A>(&points::USER_BEFORE_STORE, addr);
                    // Sleep until one more MADV_DONTNEED returned (each zap
                    // wakes us), then store once: through the stale TLB entry
                    // if no zap has flushed it.
                    user::sleep_until::<A>(|| st.zaps_done.load(Ordering::Acquire) > seen);
                    let returned = st.zaps_done.load(Ordering::Acquire);
                    seen = returned;
                    seq += 1;
                    let ok = A::probe_store(addr, seq).is_ok();
                    let no_fault = page_faults::<A>() == faults;
                    let in_old_frame = frame_word(pfn) == seq;
                    race_point::<A>(&points::USER_AFTER_STORE, addr);
                    if !ok {
                        return false;
                    }
                    stored += 1;
                    if returned > 0
                        && no_fault
                        && in_old_frame
                        && st.late_seq.load(Ordering::Relaxed) == 0
                    {
                        st.late_after.store(returned, Ordering::Relaxed);
                        st.late_seq.store(seq, Ordering::Release);
                    }
                    if returned >= 2 || stored >= MAX_STORES {
                        return returned >= 2;
                    }
                }
            }
            _ => {
                point::wait_until::<A>(|| st.writer_runs.load(Ordering::Acquire));
                let (start, len) = if role == ZAP1 {
                    (user::stale_tlb_base::<A>(), 2 * PAGE_SIZE)
                } else {
                    (addr, PAGE_SIZE)
                };
                let ok = memory::madvise_dontneed(ctx.mm(), start, len).is_ok();
                st.zaps_done.fetch_add(1, Ordering::AcqRel);
                user::wake::<A>(WRITER);
                race_point::<A>(&points::USER_SYSCALL_RETURNED, start);
                ok
            }
        }
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        let seq = ctx.state.late_seq.load(Ordering::Acquire);
        if seq == 0 {
            return None;
        }
        let pfn = ctx.pfns[0];
        let mut f = Finding::frame(
            format!(
                "a store landed after MADV_DONTNEED returned: store #{} (seq {seq:#x}) began after {} MADV_DONTNEED(s) of the page had returned and reached frame {pfn:#x}, the page they dropped, without a page fault: through the writer's stale writable TLB entry, which no returned zap had flushed",
                seq - ctx.state.seq_base,
                ctx.state.late_after.load(Ordering::Relaxed),
            ),
            pfn,
        )
        .at(ctx.addr);
        f.cpu = point::cpu_of(WRITER);
        Some(f)
    }

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        let Some(store) = ctx.first_pass(WRITER, &points::USER_AFTER_STORE) else {
            return false;
        };
        [(ZAP1, ZAP2), (ZAP2, ZAP1)].into_iter().any(|(first, other)| {
            let clear = ctx
                .passes(first, &points::ZAP_AFTER_PTE_CLEAR)
                .into_iter()
                .find(|p| p.addr == ctx.addr);
            let returned = ctx.first_pass(other, &points::MADVISE_AFTER_DONTNEED);
            // The end of the first zap's window: its flush done, or where it
            // had none to do, its leaving `gather:before_finish`.
            let finish = ctx.first_pass(first, &points::GATHER_BEFORE_FINISH);
            let flushed = finish.and_then(|f| {
                ctx.passes(first, &points::GATHER_AFTER_FLUSH)
                    .into_iter()
                    .find(|p| p.arrived > f.arrived)
                    .or(Some(f))
            });
            matches!((clear, flushed, returned), (Some(c), Some(f), Some(r)) if c.before(&r) && store.before(&f))
        })
    }

    fn teardown(_: &mut RunMm<A>, ctx: &mut Ctx<A, Self>) {
        // Every iteration starts and ends with the second page mapped writable,
        // so that the frames balance: a store that faulted after the zaps
        // mapped a new page, which the next iteration uses; without one, a
        // fault on the controller maps one (no flush needed: the PTE is
        // empty). Zapping instead would flush every role CPU, halted by now:
        // waking them costs more than the iteration itself under TCG. An mm
        // where that fails is torn down, and the next iteration finds none.
        if writable_page(ctx.mm(), page_addr::<A>()).is_err() {
            if let Some(mm) = ctx.mm.take() {
                memory::exit_mmap(*mm);
            }
        }
    }

}

/// The page the writer stores to: the second of the mapping (see
/// [`user::stale_tlb_base`]).
fn page_addr<A: Mmu>() -> u64 {
    user::stale_tlb_base::<A>() + PAGE_SIZE
}

/// Write-faults an anonymous page in at `addr` unless a writable one is
/// mapped there (on the controller, which runs no mm: the fault is
/// resolved in software, and a PTE present and writable already makes it
/// spurious). Returns the page's pfn.
fn writable_page<A: Mmu>(mm: &Mm<A>, addr: u64) -> Result<u64, String> {
    user::fault_in(mm, addr, true)
}

fn page_faults<A: Mmu>() -> u64 {
    percpu::this_cpu::<A>().page_faults.load(Ordering::Relaxed)
}

/// The word at the start of frame `pfn`, read through the kernel's map.
fn frame_word(pfn: u64) -> u64 {
    // SAFETY: RAM is mapped 1:1; a racy read of one word of a frame (it
    // may have been freed meanwhile, then it reads poison).
    unsafe { core::ptr::read_volatile(page::page_address(pfn_to_page(pfn)) as *const u64) }
}
