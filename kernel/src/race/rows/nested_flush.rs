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
//! - Setup: a private anonymous two-page mapping, built per run (its page
//!   tables kept) with its second page mapped writable; every iteration
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
//! - Variants: `buggy` (`NestedFlush::Ignore`) and `fixed`
//!   (`NestedFlush::ForceFull`, 99baac21e458), each run under every flush
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
//!   zap's window; `zap:after_pte_clear` is traced.
//! - Detector: a store that landed after the zap returned — through the
//!   writer's own stale TLB entry (no page fault since its first store,
//!   while the PTE was gone), seen in the old frame right after the store.
//! - Teardown: see Setup.

use super::detect::Finding;
use super::point::{self, points, race_point, RacePoint, Step};
use super::run_mm::RunMm;
use super::scenario::{variant_config, Budget, Commit, CommitRole, Ctx, Scenario, Variant};
use super::user;
use crate::mm::arch::{FaultInfo, Mmu};
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::mmu_gather::{self, NestedFlush, PageFree, TlbPolicy};
use crate::mm::page::{self, pfn_to_page};
use crate::mm::tlbflush::{self, FlushStrategy};
use crate::mm::{pgtable, PAGE_SIZE};
use crate::percpu;
use alloc::{boxed::Box, format, string::String, vec, vec::Vec};
use core::sync::atomic::Ordering;

const WRITER: usize = 0;
const ZAP1: usize = 1;
const ZAP2: usize = 2;

/// `ctx.word` slots.
const WRITER_RUNS: usize = 0;
/// MADV_DONTNEEDs returned.
const ZAPS_DONE: usize = 1;
/// The first late store's sequence number (0: none).
const LATE_SEQ: usize = 2;
/// The zaps returned before the late store began.
const LATE_AFTER: usize = 3;
/// The iteration's first sequence number.
const SEQ_BASE: usize = 5;

/// Safety net: a writer never stores more often than this in an iteration.
const MAX_STORES: u64 = 1 << 20;

static DELAY_POINTS: [&RacePoint; 1] = [&points::GATHER_BEFORE_FINISH];
static TRACE_POINTS: [&RacePoint; 2] = [&points::ZAP_AFTER_PTE_CLEAR, &points::GATHER_AFTER_FLUSH];

/// The variants; [`CONFIG`] holds the knobs of each, in the same order.
/// Each runs under every flush strategy of the row ([`FLUSH`]).
static VARIANTS: [Variant; 2] = [
    Variant::new(
        "buggy",
        "a gather flushes only what it cleared itself",
        "Linux before 99baac21e458: a gather flushes only what it cleared",
        &[],
    ),
    Variant::new(
        "fixed",
        "a gather flushes the whole mm when another is in flight (99baac21e458)",
        "99baac21e458: a gather that sees another in flight (mm_tlb_flush_nested) flushes the whole mm",
        &[],
    ),
];

static CONFIG: [NestedFlush; 2] = [NestedFlush::Ignore, NestedFlush::ForceFull];

/// The flush strategies the variants run under: x86-64 IPI and NMI
/// shootdown, s390x IPTE (CSP behaves as IPTE here and is left out to keep
/// the boot short).
static FLUSH: [FlushStrategy; 3] = [FlushStrategy::Ipi, FlushStrategy::Nmi, FlushStrategy::Ipte];

fn config(v: &Variant) -> NestedFlush {
    variant_config(&VARIANTS, &CONFIG, v)
}

/// The run's mm ([`RunMm`]), with its
/// mapping and page tables: built by `set_variant`, lent to each iteration
/// by `setup`, taken back by `teardown`, torn down by `reset`.
static RUN_MM: RunMm = RunMm::new();

const RW: VmFlags = VmFlags {
    read: true,
    write: true,
};

fn set_variant<A: Mmu>(v: &Variant) -> Result<(), &'static str> {
    let nested = config(v);
    let flush = tlbflush::flush_strategy::<A>();
    mmu_gather::set_tlb_policy(TlbPolicy {
        page_free: if flush.is_broadcast() {
            PageFree::Immediate
        } else {
            PageFree::Batched
        },
        nested,
        ..TlbPolicy::DEFAULT
    });
    // The VMA, the page tables and the writer's page, mapped writable
    // (`teardown` leaves the same state behind). Without memory for them
    // `setup` finds no mm and the run fails.
    if let Some(mm) = Mm::<A>::new().map(Box::new) {
        let ok = memory::mmap_anon(&mm, user::stale_tlb_base::<A>(), 2 * PAGE_SIZE, RW, false)
            .is_ok()
            && writable_page(&mm, page_addr::<A>()).is_ok();
        if ok {
            RUN_MM.put(mm);
        } else {
            memory::exit_mmap(*mm);
        }
    }
    Ok(())
}

fn reset<A: Mmu>() {
    RUN_MM.destroy::<A>();
    mmu_gather::set_tlb_policy(TlbPolicy::DEFAULT);
}

/// The page the writer stores to: the second of the mapping (see
/// [`user::stale_tlb_base`]).
fn page_addr<A: Mmu>() -> u64 {
    user::stale_tlb_base::<A>() + PAGE_SIZE
}

/// The Linux commits of the row.
static COMMITS: [Commit; 1] = [Commit {
    hash: "99baac21e458",
    subject: Some("mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem"),
    release: None,
    role: CommitRole::Fix,
}];

/// The row.
pub fn scenario<A: Mmu>() -> Scenario<A> {
    Scenario {
        name: "nested-flush",
        about:
            "two MADV_DONTNEEDs overlap; the one that finds the PTE clear returns before any flush",
        catalogue: Some(8),
        seed: "beyond the seeds: catalogue row 8, from 99baac21e458",
        commits: &COMMITS,
        roles: &["writer", "zap1", "zap2"],
        variants: &VARIANTS,
        flush: &FLUSH,
        set_variant: set_variant::<A>,
        reset: reset::<A>,
        setup: setup::<A>,
        role: role::<A>,
        detect: detect::<A>,
        teardown: teardown::<A>,
        schedule: |_| {
            vec![
                Step::at(WRITER, &points::USER_BEFORE_STORE),
                Step::at(ZAP1, &points::GATHER_BEFORE_FINISH),
                Step::at(ZAP2, &points::ZAP_BEFORE_PTL),
                Step::at(ZAP2, &points::USER_SYSCALL_RETURNED),
                Step::leave(WRITER, &points::USER_BEFORE_STORE),
                Step::at(WRITER, &points::USER_AFTER_STORE),
                Step::leave(ZAP1, &points::GATHER_BEFORE_FINISH),
            ]
        },
        delay_points: &DELAY_POINTS,
        trace_points: &TRACE_POINTS,
        max_delay_ns: 200_000,
        budget: Budget::CATALOGUE,
    }
}

fn setup<A: Mmu>(ctx: &mut Ctx<A>) -> Result<(), String> {
    let mm = RUN_MM
        .take::<A>()
        .ok_or_else(|| String::from("no mm for the run"))?;
    let addr = page_addr::<A>();
    let r = writable_page(&mm, addr);
    ctx.mm = Some(mm);
    ctx.addr = addr;
    ctx.pfns = Vec::from([r?]);
    ctx.word[SEQ_BASE].store((ctx.iteration + 1) << 32, Ordering::Relaxed);
    Ok(())
}

/// Write-faults an anonymous page in at `addr` unless a writable one is
/// mapped there (on the controller, which runs no mm: the fault is
/// resolved in software, and a PTE present and writable already makes it
/// spurious). Returns the page's pfn.
fn writable_page<A: Mmu>(mm: &Mm<A>, addr: u64) -> Result<u64, String> {
    let info = FaultInfo {
        addr,
        write: true,
        protection: false,
        code: 0,
    };
    memory::do_user_fault(mm, info).map_err(|e| format!("fault: {e}"))?;
    let ptep = pgtable::follow_pte(mm, addr).ok_or_else(|| String::from("no PTE table"))?;
    let pte = {
        let _ptl = memory::pte_lockptr(ptep).lock();
        // SAFETY: a live PTE of this mm (no CPU runs it yet); PTL held.
        unsafe { pgtable::read_entry(ptep) }
    };
    if !A::pte_present(pte) || !A::pte_write(pte) {
        return Err(format!("PTE {pte:#x} is not present and writable"));
    }
    Ok(A::pte_pfn(pte))
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

fn role<A: Mmu>(ctx: &Ctx<A>, role: usize) -> bool {
    let addr = ctx.addr;
    let mm = ctx.mm.as_deref().expect("the iteration's mm");
    match role {
        WRITER => {
            let pfn = ctx.pfns[0];
            let mut seq = ctx.word[SEQ_BASE].load(Ordering::Relaxed) + 1;
            // Fills this CPU's TLB with the writable translation.
            let primed = A::probe_store(addr, seq).is_ok();
            let faults = page_faults::<A>();
            ctx.word[WRITER_RUNS].store(1, Ordering::Release);
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
                user::sleep_until::<A>(|| ctx.word[ZAPS_DONE].load(Ordering::Acquire) > seen);
                let returned = ctx.word[ZAPS_DONE].load(Ordering::Acquire);
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
                    && ctx.word[LATE_SEQ].load(Ordering::Relaxed) == 0
                {
                    ctx.word[LATE_AFTER].store(returned, Ordering::Relaxed);
                    ctx.word[LATE_SEQ].store(seq, Ordering::Release);
                }
                if returned >= 2 || stored >= MAX_STORES {
                    return returned >= 2;
                }
            }
        }
        _ => {
            while ctx.word[WRITER_RUNS].load(Ordering::Acquire) == 0 {
                A::cpu_relax();
            }
            let (start, len) = if role == ZAP1 {
                (user::stale_tlb_base::<A>(), 2 * PAGE_SIZE)
            } else {
                (addr, PAGE_SIZE)
            };
            let ok = memory::madvise_dontneed(mm, start, len).is_ok();
            ctx.word[ZAPS_DONE].fetch_add(1, Ordering::AcqRel);
            user::wake::<A>(WRITER);
            race_point::<A>(&points::USER_SYSCALL_RETURNED, start);
            ok
        }
    }
}

fn detect<A: Mmu>(ctx: &Ctx<A>) -> Option<Finding> {
    let seq = ctx.word[LATE_SEQ].load(Ordering::Acquire);
    if seq == 0 {
        return None;
    }
    let base = ctx.word[SEQ_BASE].load(Ordering::Relaxed);
    let pfn = ctx.pfns[0];
    let mut f = Finding::frame(
        format!(
            "a store landed after MADV_DONTNEED returned: store #{} (seq {seq:#x}) began after {} MADV_DONTNEED(s) of the page had returned and reached frame {pfn:#x}, the page they dropped, without a page fault: through the writer's stale writable TLB entry, which no returned zap had flushed",
            seq - base,
            ctx.word[LATE_AFTER].load(Ordering::Relaxed),
        ),
        pfn,
    )
    .at(ctx.addr);
    f.cpu = point::cpu_of(WRITER);
    Some(f)
}

fn teardown<A: Mmu>(ctx: &mut Ctx<A>) {
    // Every iteration starts and ends with the second page mapped writable,
    // so that the frames balance: a store that faulted after the zaps
    // mapped a new page, which the next iteration uses; without one, a
    // fault on the controller maps one (no flush needed: the PTE is
    // empty). Zapping instead would flush every role CPU, halted by now:
    // waking them costs more than the iteration itself under TCG.
    if let Some(mm) = ctx.mm.take() {
        if writable_page(&mm, page_addr::<A>()).is_ok() {
            RUN_MM.put(mm);
        } else {
            memory::exit_mmap(*mm);
        }
    }
}
