//! TLB flushes and the IPI shootdown (Linux: `arch/x86/mm/tlb.c`,
//! `asm/tlbflush.h`; the per-sender mailboxes follow the pre-2.6.29
//! `flush_tlb_others` with its `INVALIDATE_TLB_VECTOR`).
//!
//! Design. INVLPG and a CR3 reload act on the calling CPU's TLB only (no PCID,
//! no global pages, no INVLPGB: PLATFORM.md). A flush for an mm
//! ([`flush_tlb_mm_range`]) therefore flushes locally and sends a fixed-vector
//! IPI, [`INVALIDATE_TLB_VECTOR`], to every other CPU in the mm's cpumask, then
//! waits until each has acknowledged. Each CPU owns one mailbox
//! ([`FlushInfo`]) for the flushes it starts: the range, and a mask of the
//! targets that have not acknowledged yet. A target's handler
//! ([`smp_invalidate_interrupt`]) scans every mailbox for its bit, flushes the
//! range it finds, and clears its bit: that clear is the acknowledgement (the
//! ICR delivery-status bit is not one). Several CPUs can shoot down at the
//! same time, also at each other: each waits with interrupts enabled and
//! serves the others' IPIs meanwhile.
//!
//! NMI shootdown ([`FlushStrategy::Nmi`], the runtime knob of
//! `quiesce_kernel::mm::tlbflush`): the same mailbox, flagged `nmi`, is
//! delivered by NMI instead; [`nmi_flush_tlb`], called from the NMI handler
//! after it has ruled out a stop request, serves the flagged mailboxes only,
//! and the IPI handler serves only the unflagged ones, so no request is served
//! by both. A target with IF=0 serves an NMI request at once.
//!
//! Because the IPI is a fixed one, a target with IF=0 takes it only when it
//! enables interrupts again, and the sender waits that long: the property
//! GUP-fast relies on. Ranges of more than [`TLB_SINGLE_PAGE_FLUSH_CEILING`]
//! pages are flushed with a CR3 reload instead of INVLPG per page, as Linux
//! does.
//!
//! Invariants:
//! - a mailbox is written only by its owner, only while its pending mask is 0,
//!   and the range is published before the mask (release/acquire);
//! - the handler acknowledges (EOIs) the IPI before it scans, so a request
//!   posted during the scan raises a new interrupt instead of being lost;
//! - a CPU waits for acknowledgements only with interrupts enabled (asserted),
//!   so two CPUs flushing each other cannot deadlock; a flush with no other CPU
//!   in the mask never waits and may run with interrupts disabled;
//! - a target flushes whatever mm it runs at the time: a CPU that has switched
//!   away has reloaded CR3, which flushed everything, so the extra flush is
//!   harmless.

use crate::{apic, percpu, X86_64};
use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use quiesce_arch_x86_64::pgtable::{PAGE_SIZE, PTE_PFN_MASK};
use quiesce_kernel::mm::mm::Mm;
use quiesce_kernel::mm::tlbflush::{self, FlushStrategy};
use quiesce_kernel::race::waitfor;
use quiesce_kernel::{kprintln_emergency, Arch, NR_CPUS};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::{PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

/// The shootdown IPI's vector (Linux 2.6: INVALIDATE_TLB_VECTOR_START).
pub const INVALIDATE_TLB_VECTOR: u8 = 0xf0;
/// `end` of a flush that covers the whole address space (Linux TLB_FLUSH_ALL).
pub const TLB_FLUSH_ALL: u64 = u64::MAX;
/// Ranges of more pages than this are flushed with a CR3 reload (Linux's
/// default `tlb_single_page_flush_ceiling`).
pub const TLB_SINGLE_PAGE_FLUSH_CEILING: u64 = 33;
/// After this long without every acknowledgement, the sender says so once.
const SHOOTDOWN_WARN_NS: u64 = 5_000_000_000;

/// One CPU's outgoing flush request.
#[repr(C, align(64))]
struct FlushInfo {
    start: AtomicU64,
    end: AtomicU64,
    /// Targets that have not acknowledged yet (bit n = CPU n).
    pending: AtomicU64,
    /// The request is delivered by NMI (served by [`nmi_flush_tlb`] only).
    nmi: AtomicBool,
}

static FLUSH_INFO: [FlushInfo; NR_CPUS] = [const {
    FlushInfo {
        start: AtomicU64::new(0),
        end: AtomicU64::new(0),
        pending: AtomicU64::new(0),
        nmi: AtomicBool::new(false),
    }
}; NR_CPUS];

/// Local flushes (INVLPG runs or CR3 reloads) per CPU, for diagnostics; the
/// shootdown counters themselves are the generic ones of
/// `quiesce_kernel::mm::tlbflush`.
static LOCAL_FLUSHES: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];

/// Physical address of the PML4 the calling CPU translates through
/// (`native_read_cr3_pa`).
pub fn read_cr3_pa() -> u64 {
    let (pml4, _flags) = Cr3::read_raw();
    const _: () = assert!(PTE_PFN_MASK == 0x000f_ffff_ffff_f000);
    pml4.start_address().as_u64()
}

/// Loads CR3 with the PML4 at `pgd` (`native_write_cr3`); flushes the calling
/// CPU's whole TLB (no global pages, no PCID).
///
/// # Safety
/// `pgd` is a live PML4 that maps the kernel (its code, stacks, data and the
/// local APIC) as the kernel's own PML4 does, and stays alive while loaded.
pub unsafe fn write_cr3(pgd: u64) {
    debug_assert!(pgd & !PTE_PFN_MASK == 0, "a PML4 is page-aligned");
    let pml4 = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(pgd));
    // SAFETY: the caller guarantees the kernel stays mapped identically, so
    // execution continues at the next instruction; the crate's `mov cr3` is a
    // compiler barrier (no `nomem`), keeping page-table stores before it.
    unsafe { Cr3::write(pml4, Cr3Flags::empty()) };
}

/// Flushes the calling CPU's TLB entry for `addr` (`native_flush_tlb_one_user`:
/// INVLPG).
#[inline]
pub fn native_flush_tlb_one_user(addr: u64) {
    // The crate's INVLPG has no `nomem`: the compiler does not move
    // page-table stores across it. A non-canonical address has no
    // translation to drop (INVLPG is a no-op there): nothing to do.
    if let Ok(addr) = VirtAddr::try_new(addr) {
        x86_64::instructions::tlb::flush(addr);
    }
}

/// Flushes the calling CPU's whole TLB by reloading CR3
/// (`native_flush_tlb_local`).
pub fn native_flush_tlb_local() {
    // SAFETY: reloads the PML4 that is loaded already: the same translation.
    unsafe { write_cr3(read_cr3_pa()) };
}

/// Flushes `[start, end)` from the calling CPU's TLB (`flush_tlb_func`):
/// INVLPG per page up to the ceiling, a CR3 reload beyond it.
fn flush_tlb_func(start: u64, end: u64) {
    LOCAL_FLUSHES[percpu::smp_processor_id()].fetch_add(1, Ordering::Relaxed);
    if end == TLB_FLUSH_ALL || end.saturating_sub(start) / PAGE_SIZE > TLB_SINGLE_PAGE_FLUSH_CEILING
    {
        native_flush_tlb_local();
        return;
    }
    let mut addr = start & !(PAGE_SIZE - 1);
    while addr < end {
        native_flush_tlb_one_user(addr);
        addr += PAGE_SIZE;
    }
}

/// Flushes `[start, end)` of `mm` from every CPU that may cache it
/// (`flush_tlb_mm_range`): locally, and by shootdown IPI on every other CPU in
/// the mm's cpumask, returning once all have acknowledged. `end` may be
/// [`TLB_FLUSH_ALL`].
///
/// With the IPI strategy it must be called with interrupts enabled whenever
/// another CPU is in the cpumask (the wait would otherwise deadlock against a
/// CPU flushing us); NMI requests are served whatever IF is.
pub fn flush_tlb_mm_range(mm: &Mm<X86_64>, start: u64, end: u64) {
    let me = percpu::smp_processor_id();
    // The PTE change that made this flush necessary (a locked exchange or a
    // plain store) must be visible before the cpumask is read: a CPU that
    // joins the mask later loads CR3 afterwards and cannot see the old entry.
    fence(Ordering::SeqCst);
    let targets = mm.other_cpus().fold(0u64, |m, c| m | 1 << c);
    if targets == 0 {
        tlbflush::count_local_only(me);
        flush_tlb_func(start, end);
        return;
    }
    let via_nmi = tlbflush::flush_strategy::<X86_64>() == FlushStrategy::Nmi;
    assert!(
        via_nmi || !X86_64::irqs_disabled(),
        "TLB shootdown from CPU {me} with interrupts disabled (deadlock risk)"
    );
    let info = &FLUSH_INFO[me];
    assert_eq!(
        info.pending.load(Ordering::Acquire),
        0,
        "nested TLB shootdown on CPU {me}"
    );
    info.start.store(start, Ordering::Relaxed);
    info.end.store(end, Ordering::Relaxed);
    info.nmi.store(via_nmi, Ordering::Relaxed);
    info.pending.store(targets, Ordering::Release);
    for cpu in (0..NR_CPUS).filter(|c| targets & (1 << c) != 0) {
        let apic_id = percpu::cpu_data(cpu).apic_id();
        // Counted (and traced) before the send: the target may serve the
        // request before this CPU runs its next instruction, and the trace
        // must show the send first.
        if via_nmi {
            tlbflush::count_nmi_sent(me);
            apic::send_nmi(apic_id);
        } else {
            tlbflush::count_ipi_sent(me);
            apic::send_ipi(apic_id, INVALIDATE_TLB_VECTOR);
        }
    }
    // Our own flush overlaps the targets' handlers.
    flush_tlb_func(start, end);
    let t0 = X86_64::clock_ns();
    let mut warned = false;
    // Published for the race prover: this CPU waits for these targets.
    let wait = waitfor::begin(
        me,
        waitfor::Wait::FlushAck { mask: targets },
        X86_64::irqs_disabled(),
    );
    loop {
        let left = info.pending.load(Ordering::Acquire);
        if left == 0 {
            break;
        }
        waitfor::update_mask(me, left);
        if !warned && X86_64::clock_ns() - t0 > SHOOTDOWN_WARN_NS {
            kprintln_emergency!(
                "# tlb: CPU {me} still waits for shootdown acks from cpumask {left:#x}"
            );
            for cpu in (0..NR_CPUS).filter(|c| left & (1 << c) != 0) {
                let st = tlbflush::tlb_flush_stats(cpu);
                kprintln_emergency!(
                    "# tlb: cpu{cpu} ipis_sent={} nmis_sent={} received={} local_flushes={}",
                    st.ipis_sent,
                    st.nmis_sent,
                    st.received,
                    LOCAL_FLUSHES[cpu].load(Ordering::Relaxed)
                );
            }
            warned = true;
        }
        core::hint::spin_loop();
    }
    waitfor::end(wait);
}

/// Flushes one page of `mm` everywhere (`flush_tlb_page`).
pub fn flush_tlb_page(mm: &Mm<X86_64>, addr: u64) {
    flush_tlb_mm_range(mm, addr, addr + PAGE_SIZE);
}

/// Flushes all of `mm` everywhere (`flush_tlb_mm`): a CR3 reload here and on
/// every other CPU of the cpumask.
pub fn flush_tlb_mm(mm: &Mm<X86_64>) {
    flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL);
}

/// [`INVALIDATE_TLB_VECTOR`]: serves every posted IPI request that names this
/// CPU. Called with IF=0, after the EOI.
pub fn smp_invalidate_interrupt() {
    serve_requests(false);
}

/// From the NMI handler, once it has ruled out a stop request: serves every
/// posted NMI request that names this CPU. Returns whether it served one.
pub fn nmi_flush_tlb() -> bool {
    serve_requests(true)
}

/// Serves the requests naming this CPU whose delivery is `via_nmi`.
fn serve_requests(via_nmi: bool) -> bool {
    let mut served = false;
    let me = percpu::smp_processor_id();
    let bit = 1u64 << me;
    for (sender, info) in FLUSH_INFO.iter().enumerate() {
        if sender == me || info.pending.load(Ordering::Acquire) & bit == 0 {
            continue;
        }
        // Read after `pending` (acquire): the owner wrote it before.
        if info.nmi.load(Ordering::Relaxed) != via_nmi {
            continue;
        }
        let start = info.start.load(Ordering::Relaxed);
        let end = info.end.load(Ordering::Relaxed);
        flush_tlb_func(start, end);
        tlbflush::count_received(me);
        served = true;
        // The acknowledgement: after the flush, release so the sender sees it
        // done.
        info.pending.fetch_and(!bit, Ordering::Release);
    }
    served
}
