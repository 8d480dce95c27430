//! In-kernel tests of the memory model (KTAP suite `mm`), on real hardware
//! translation: tasks run with their mm's tables loaded, touch memory with plain
//! loads and stores, take real page faults, and other CPUs keep real TLB
//! entries.
//!
//! Every test checks that it leaked no frame: the free-frame count after the
//! test (mm torn down) equals the count before.

use super::{faults, load, mapped_mm, new_mm, no_leak, pte_of, store};
use crate::cmdline::Cmdline;
use crate::ktap::Outcome;
use crate::mm::arch::Mmu;
use crate::mm::memory;
use crate::mm::mm::{self as mmod, Mm, VmFlags};
use crate::mm::{frag, page, page_alloc, pfn_scanner, pgtable, PAGE_SIZE};
use crate::selftest::TestFn;
use crate::{diag, smp};
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const RW: VmFlags = VmFlags {
    read: true,
    write: true,
};

/// The suite's name.
pub(crate) const SUITE: &str = "mm";

/// The `mm` cases, in order.
pub(crate) fn cases<A: Mmu>() -> Vec<(&'static str, TestFn)> {
    crate::selftest::test_cases![
        A;
        map_fault_unmap, fault_on_every_cpu, cow_after_dup, hw_young_dirty,
        stale_tlb_after_pte_clear, upgrade_keeps_mappings, access_beyond_limit,
        pfn_scanner_beside_churn, swap_cache_add_remove, fault_throughput,
    ]
}

/// The pattern stored at `addr`.
fn pattern(addr: u64) -> u64 {
    addr ^ 0x5157_1e5c_e000_0000
}

fn map_fault_unmap<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        const PAGES: u64 = 64;
        let base = A::TASK_BASE;
        let mm = or_return!(mapped_mm::<A>(PAGES * PAGE_SIZE, false));
        // SAFETY: the mm lives until exit_mmap below, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        let f0 = faults::<A>();
        for i in 0..PAGES {
            let a = base + i * PAGE_SIZE;
            // SAFETY: `a` lies in the writable VMA of the mm this CPU runs.
            unsafe { store(a, pattern(a)) };
        }
        let f1 = faults::<A>();
        let mut bad = 0;
        for i in 0..PAGES {
            let a = base + i * PAGE_SIZE;
            // SAFETY: as above.
            if unsafe { load(a) } != pattern(a) {
                bad += 1;
            }
        }
        let f2 = faults::<A>();
        let rss = mm.rss_anon.load(Ordering::Relaxed);
        let unmapped = memory::munmap(&mm, base, PAGES * PAGE_SIZE);
        let after = A::probe_load(base);
        mmod::unuse_mm::<A>();
        let pt_bytes = mm.pgtables_bytes.load(Ordering::Relaxed);
        memory::exit_mmap(*mm);
        diag!(
            "faults_on_store={} faults_on_load={} rss={rss} pgtables_bytes={pt_bytes}",
            f1 - f0,
            f2 - f1
        );
        if f1 - f0 != PAGES {
            return Outcome::Fail(format!("{PAGES} first stores took {} faults", f1 - f0));
        }
        if f2 != f1 || bad != 0 {
            return Outcome::Fail(format!("reads took {} faults, {bad} wrong values", f2 - f1));
        }
        if rss != PAGES as usize || unmapped.is_err() {
            return Outcome::Fail(format!("rss {rss}, munmap {unmapped:?}"));
        }
        match after {
            Err(info) if !info.protection => Outcome::Pass,
            other => Outcome::Fail(format!(
                "a load after munmap gave {other:?}, not a translation fault"
            )),
        }
    })
}

static SHARED_MM: AtomicU64 = AtomicU64::new(0);
static CPU_ERRORS: AtomicU64 = AtomicU64::new(0);
static CPUS_DONE: AtomicU64 = AtomicU64::new(0);
const PAGES_PER_CPU: u64 = 16;

/// Pages each CPU faults in for the throughput figures.
const BENCH_PAGES_PER_CPU: u64 = 512;

fn fault_bench_pages<A: Mmu>(_: usize) {
    // SAFETY: the test keeps the mm alive until every CPU is done.
    let mm = unsafe { &*(SHARED_MM.load(Ordering::Acquire) as *const Mm<A>) };
    // SAFETY: as above.
    unsafe { mmod::use_mm(mm) };
    let cpu = A::smp_processor_id() as u64;
    let base = A::TASK_BASE + cpu * BENCH_PAGES_PER_CPU * PAGE_SIZE;
    for i in 0..BENCH_PAGES_PER_CPU {
        // SAFETY: in the mm's writable VMA.
        unsafe { store(base + i * PAGE_SIZE, i) };
    }
    mmod::unuse_mm::<A>();
    CPUS_DONE.fetch_add(1, Ordering::AcqRel);
}

/// Runs the fault benchmark on `cpus` CPUs (0..cpus); returns faults per second.
fn fault_rate<A: Mmu>(cpus: u64) -> Result<u64, Outcome> {
    let mm = mapped_mm::<A>(cpus * BENCH_PAGES_PER_CPU * PAGE_SIZE, false)?;
    SHARED_MM.store(&*mm as *const Mm<A> as u64, Ordering::Release);
    CPUS_DONE.store(0, Ordering::Release);
    let t0 = A::clock_ns();
    for cpu in 1..cpus as usize {
        smp::smp_call_function_single::<A>(cpu, fault_bench_pages::<A>, 0, false);
    }
    fault_bench_pages::<A>(0);
    while CPUS_DONE.load(Ordering::Acquire) < cpus {
        A::cpu_relax();
    }
    let ns = (A::clock_ns() - t0).max(1);
    let rss = mm.rss_anon.load(Ordering::Relaxed) as u64;
    memory::exit_mmap(*mm);
    if rss != cpus * BENCH_PAGES_PER_CPU {
        return Err(Outcome::Fail(format!(
            "{rss} pages resident after the benchmark"
        )));
    }
    Ok(rss * 1_000_000_000 / ns)
}

/// Page faults per second, one CPU and all CPUs (a figure for benchmarks; the
/// test asserts only that every fault was resolved).
fn fault_throughput<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let one = or_return!(fault_rate::<A>(1));
        let all = or_return!(fault_rate::<A>(smp::nr_cpus() as u64));
        diag!(
            "page_faults_per_sec_1cpu={one} page_faults_per_sec_all_cpus={all} cpus={}",
            smp::nr_cpus()
        );
        Outcome::Pass
    })
}

fn touch_own_pages<A: Mmu>(_: usize) {
    // SAFETY: the test keeps the mm alive until every CPU has called unuse_mm.
    let mm = unsafe { &*(SHARED_MM.load(Ordering::Acquire) as *const Mm<A>) };
    let cpu = A::smp_processor_id() as u64;
    // SAFETY: as above.
    unsafe { mmod::use_mm(mm) };
    let base = A::TASK_BASE + cpu * PAGES_PER_CPU * PAGE_SIZE;
    for i in 0..PAGES_PER_CPU {
        let a = base + i * PAGE_SIZE;
        // SAFETY: `a` is in the mm's writable VMA.
        unsafe { store(a, pattern(a)) };
    }
    for i in 0..PAGES_PER_CPU {
        let a = base + i * PAGE_SIZE;
        // SAFETY: as above.
        if unsafe { load(a) } != pattern(a) {
            CPU_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
    mmod::unuse_mm::<A>();
}

fn fault_on_every_cpu<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let n = smp::nr_cpus() as u64;
        let len = n * PAGES_PER_CPU * PAGE_SIZE;
        let mm = or_return!(mapped_mm::<A>(len, false));
        SHARED_MM.store(&*mm as *const Mm<A> as u64, Ordering::Release);
        CPU_ERRORS.store(0, Ordering::Release);
        smp::smp_call_function::<A>(touch_own_pages::<A>, 0, true);
        touch_own_pages::<A>(0);
        // Every CPU's pages, read back on this CPU.
        // SAFETY: the mm lives until exit_mmap below.
        unsafe { mmod::use_mm(&*mm) };
        let mut bad = 0;
        let mut a = A::TASK_BASE;
        while a < A::TASK_BASE + len {
            // SAFETY: in the VMA.
            if unsafe { load(a) } != pattern(a) {
                bad += 1;
            }
            a += PAGE_SIZE;
        }
        mmod::unuse_mm::<A>();
        let rss = mm.rss_anon.load(Ordering::Relaxed) as u64;
        let mask = mm.cpumask.load(Ordering::Relaxed);
        memory::exit_mmap(*mm);
        diag!("cpus={n} rss={rss} cpumask={mask:#x}");
        let errors = CPU_ERRORS.load(Ordering::Acquire);
        if errors != 0 || bad != 0 {
            return Outcome::Fail(format!(
                "{errors} wrong values on the faulting CPUs, {bad} on CPU 0"
            ));
        }
        if rss != n * PAGES_PER_CPU || mask != (1u64 << n) - 1 {
            return Outcome::Fail(format!("rss {rss}, cpumask {mask:#x}"));
        }
        Outcome::Pass
    })
}

/// The frame `addr` maps in `mm`, if any.
fn mapped_pfn<A: Mmu>(mm: &Mm<A>, addr: u64) -> Option<u64> {
    let ptep = pgtable::follow_pte(mm, addr)?;
    // SAFETY: a live entry of `mm`, which nothing changes during the read.
    let pte = unsafe { pgtable::read_entry(ptep) };
    A::pte_present(pte).then(|| A::pte_pfn(pte))
}

fn cow_after_dup<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let base = A::TASK_BASE;
        let parent = or_return!(mapped_mm::<A>(2 * PAGE_SIZE, true));
        // SAFETY: the mms live until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*parent) };
        // SAFETY: in the VMA.
        unsafe { store(base, 1) };
        // SAFETY: in the VMA.
        unsafe { store(base + PAGE_SIZE, 2) };
        mmod::unuse_mm::<A>();
        let Some(child) = memory::dup_mm(&parent) else {
            return Outcome::Fail("dup_mm failed".into());
        };
        let shared = mapped_pfn(&parent, base) == mapped_pfn(&child, base);
        let refs = mapped_pfn(&parent, base).map(|p| page::page_ref_count(page::pfn_to_page(p)));
        // SAFETY: as above.
        unsafe { mmod::use_mm(&*parent) };
        let f0 = faults::<A>();
        // SAFETY: in the VMA; the page is write-protected: a COW fault.
        unsafe { store(base, 10) };
        let f1 = faults::<A>();
        mmod::unuse_mm::<A>();
        let copied = mapped_pfn(&parent, base) != mapped_pfn(&child, base);
        // SAFETY: as above.
        unsafe { mmod::use_mm(&*child) };
        // SAFETY: in the VMA.
        let (c0, c1) = unsafe { (load(base), load(base + PAGE_SIZE)) };
        let child_pfn = mapped_pfn(&child, base);
        let f2 = faults::<A>();
        // The child is now the page's only user: it reuses it (wp_page_reuse).
        // SAFETY: in the VMA.
        unsafe { store(base, 20) };
        let f3 = faults::<A>();
        let reused = mapped_pfn(&child, base) == child_pfn;
        mmod::unuse_mm::<A>();
        // SAFETY: as above.
        unsafe { mmod::use_mm(&*parent) };
        // SAFETY: in the VMA.
        let p0 = unsafe { load(base) };
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*child);
        memory::exit_mmap(*parent);
        diag!(
            "shared_after_dup={shared} refcount={refs:?} cow_faults={} reuse_faults={}",
            f1 - f0,
            f3 - f2
        );
        let checks = [
            (shared, "dup_mm did not share the page"),
            (refs == Some(2), "the shared page's refcount is not 2"),
            (
                f1 - f0 == 1,
                "the parent's store did not take exactly one fault",
            ),
            (copied, "the parent's store did not copy the page"),
            (
                (c0, c1) == (1, 2),
                "the child does not see the values from before the dup",
            ),
            (
                f3 - f2 == 1 && reused,
                "the child's store did not reuse its now unshared page",
            ),
            (p0 == 10, "the parent lost its own store"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Outcome::Fail((*why).into()),
            None => Outcome::Pass,
        }
    })
}

/// The MMU sets the accessed bit on a load and the dirty bit on the first store
/// (x86-64); the PTE starts old and clean.
fn hw_young_dirty<A: Mmu>(_: &Cmdline) -> Outcome {
    if !A::HW_YOUNG_DIRTY {
        return Outcome::Skip("the MMU sets no young/dirty bits in PTEs here (reference and change bits are per frame)");
    }
    no_leak(|| {
        let addr = A::TASK_BASE;
        let mm = or_return!(mapped_mm::<A>(PAGE_SIZE, true));
        // SAFETY: the mm lives until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        // Make the PTE old and clean (break before make), and flush it.
        let ptep = pgtable::follow_pte(&*mm, addr).expect("populated");
        {
            let _ptl = memory::pte_lockptr(ptep).lock();
            // SAFETY: a live PTE of this mm, PTL held.
            let old = unsafe { A::ptep_get_and_clear(&mm, addr, ptep) };
            A::flush_tlb_page(&mm, addr);
            // SAFETY: the entry was just cleared; PTL held.
            unsafe { A::set_pte_at(&mm, addr, ptep, A::pte_mkold(A::pte_mkclean(old))) };
        }
        let start = pte_of(&mm, addr);
        // SAFETY: in the VMA.
        let _ = unsafe { load(addr) };
        let after_load = pte_of(&mm, addr);
        // SAFETY: in the VMA.
        unsafe { store(addr, 1) };
        let after_store = pte_of(&mm, addr);
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        let bits = |p: u64| (A::pte_young(p), A::pte_dirty(p));
        diag!(
            "young_dirty_start={:?} after_load={:?} after_store={:?}",
            bits(start),
            bits(after_load),
            bits(after_store)
        );
        if bits(start) != (false, false) {
            return Outcome::Fail("the PTE did not start old and clean".into());
        }
        if bits(after_load) != (true, false) {
            return Outcome::Fail(format!(
                "after a load the PTE is {:?}, not young and clean",
                bits(after_load)
            ));
        }
        if bits(after_store) != (true, true) {
            return Outcome::Fail(format!(
                "after a store the PTE is {:?}, not young and dirty",
                bits(after_store)
            ));
        }
        Outcome::Pass
    })
}

static SCAN_STOP: AtomicBool = AtomicBool::new(false);
static SCANNERS_DONE: AtomicU64 = AtomicU64::new(0);
static SCAN_TOTALS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// Page-table frames the scanners have held so far (live, for the churn loop).
static SCAN_PGTABLES_LIVE: AtomicU64 = AtomicU64::new(0);

/// On a scanner CPU: scan every frame, pass after pass, until told to stop.
fn scanner_loop<A: Mmu>(_: usize) {
    let mut total = pfn_scanner::ScanStats::default();
    while !SCAN_STOP.load(Ordering::Acquire) {
        let pass = pfn_scanner::scan_pass::<A>(0, page::max_pfn(), |_| {});
        SCAN_PGTABLES_LIVE.fetch_add(pass.pgtables, Ordering::Relaxed);
        total.add(pass);
    }
    for (slot, v) in SCAN_TOTALS
        .iter()
        .zip([total.scanned, total.referenced, total.pgtables])
    {
        slot.fetch_add(v, Ordering::Relaxed);
    }
    SCANNERS_DONE.fetch_add(1, Ordering::AcqRel);
}

/// Page-table and frame churn on this CPU: mms whose PTE tables come from
/// fragment blocks, built, touched and torn down, plus plain allocations.
fn churn<A: Mmu>(rounds: u64) -> Result<(), Outcome> {
    for _ in 0..rounds {
        let blocks = 8;
        let mm = mapped_mm::<A>(blocks * A::PMD_SIZE, false)?;
        // SAFETY: the mm lives until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        for b in 0..blocks {
            // SAFETY: in the VMA.
            unsafe { store(A::TASK_BASE + b * A::PMD_SIZE, b) };
        }
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        for order in 0..4 {
            if let Some(p) = page_alloc::alloc_pages(order) {
                page_alloc::__free_pages(p, order);
            }
        }
    }
    Ok(())
}

/// The pfn scanner takes speculative references on every other CPU while this
/// CPU allocates and frees pages and page-table fragment blocks (fragment
/// counter policy, the fixed kernel): no count is ever corrupted.
fn pfn_scanner_beside_churn<A: Mmu>(_: &Cmdline) -> Outcome {
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    no_leak(|| {
        let policy = frag::policy();
        frag::set_policy(frag::FragPolicy::FragCounter);
        let bad = page_alloc::nr_bad_pages();
        SCAN_STOP.store(false, Ordering::Release);
        SCANNERS_DONE.store(0, Ordering::Release);
        for t in &SCAN_TOTALS {
            t.store(0, Ordering::Release);
        }
        SCAN_PGTABLES_LIVE.store(0, Ordering::Release);
        smp::smp_call_function::<A>(scanner_loop::<A>, 0, false);
        // 40 rounds or 1 s, whichever comes first (on s390x under TCG each
        // storage-key reset and each IPTE stops every vCPU, so with 8 CPUs a
        // round takes about 0.4 s), and on until a scanner has held a page-table frame
        // (vCPUs time-share the host cores, so a scanner may start late),
        // for at most 10 s.
        let t0 = A::clock_ns();
        let mut rounds = 0;
        let mut result = Ok(());
        while result.is_ok() {
            let elapsed = A::clock_ns() - t0;
            let enough = (rounds >= 40 || elapsed >= 1_000_000_000)
                && SCAN_PGTABLES_LIVE.load(Ordering::Acquire) != 0;
            if enough || elapsed >= 10_000_000_000 {
                break;
            }
            result = churn::<A>(1);
            rounds += 1;
        }
        SCAN_STOP.store(true, Ordering::Release);
        while SCANNERS_DONE.load(Ordering::Acquire) < smp::nr_cpus() as u64 - 1 {
            A::cpu_relax();
        }
        frag::set_policy(policy);
        let [scanned, referenced, pgtables] =
            SCAN_TOTALS.each_ref().map(|t| t.load(Ordering::Acquire));
        let new_bad = page_alloc::nr_bad_pages() - bad;
        diag!("rounds={rounds} scanned={scanned} speculative_refs={referenced} on_page_tables={pgtables} bad_pages={new_bad}");
        if let Err(o) = result {
            return o;
        }
        if new_bad != 0 {
            return Outcome::Fail(format!("{new_bad} bad page states beside the scanner"));
        }
        if referenced == 0 || pgtables == 0 {
            return Outcome::Fail(
                "the scanner never held a page-table frame: the test proved nothing".into(),
            );
        }
        Outcome::Pass
    })
}

/// Reclaim's swap-cache path on a real anonymous page of a task: add it
/// (fixed order; `add_to_swap` marks it dirty), clean it and dirty it again
/// (tagging its entry), take it out again; then the buggy order with a
/// dirtying inside its window, which the tree reports.
fn swap_cache_add_remove<A: Mmu>(_: &Cmdline) -> Outcome {
    use crate::mm::swap_state::{self as swap, SwapCacheOrder, SwapDirtyAops};
    use crate::mm::xarray::{nr_tag_on_missing_entry, XaMark};
    no_leak(|| {
        let mm = or_return!(mapped_mm::<A>(PAGE_SIZE, true));
        let pfn = mapped_pfn(&mm, A::TASK_BASE).expect("populated");
        let p = page::pfn_to_page(pfn);
        let missing = nr_tag_on_missing_entry();
        page::lock_page(p);
        swap::set_order(SwapCacheOrder::Together);
        swap::set_dirty_aops(SwapDirtyAops::Nobuffers);
        let entry = swap::add_to_swap::<A>(p);
        let found = entry
            .and_then(swap::lookup_swap_cache)
            .is_some_and(|q| core::ptr::eq(q, p));
        let refs_in_cache = page::page_ref_count(p);
        // Dirty from add_to_swap; cleaned as pageout's
        // clear_page_dirty_for_io does, then dirtied again.
        let dirty_after_add = page::TestClearPageDirty(p);
        crate::mm::filemap::set_page_dirty(p);
        let tagged = entry.is_some_and(|e| {
            swap::swapper_space().is_some_and(|s| s.i_pages.get_mark(e, XaMark::Dirty))
        });
        swap::delete_from_swap_cache(p);
        let fixed_reports = nr_tag_on_missing_entry() - missing;
        // The order before 3.4: PG_swapcache before the insertion, and a
        // set_page_dirty in between tags an entry that is not there yet (on
        // a clean page: the one above left it dirty).
        page::ClearPageDirty(p);
        swap::set_order(SwapCacheOrder::FlagFirst);
        let entry2 = swap::get_swap_page();
        swap::add_to_swap_cache_with::<A>(p, entry2, || {
            crate::mm::filemap::set_page_dirty(p);
        });
        let buggy_reports = nr_tag_on_missing_entry() - missing - fixed_reports;
        swap::delete_from_swap_cache(p);
        swap::set_order(SwapCacheOrder::Together);
        swap::set_dirty_aops(SwapDirtyAops::NoWriteback);
        page::unlock_page(p);
        let refs_after = page::page_ref_count(p);
        memory::exit_mmap(*mm);
        diag!(
            "entry={entry:?} found={found} refcount_in_cache={refs_in_cache} refcount_after={refs_after} \
             dirty_after_add={dirty_after_add} tagged={tagged} missing_entry_reports_fixed={fixed_reports} missing_entry_reports_flag_first={buggy_reports}"
        );
        let checks = [
            (
                entry.is_some() && found,
                "the page is not in the swap cache at its entry",
            ),
            (
                refs_in_cache == 2 && refs_after == 1,
                "the swap cache did not hold exactly one reference",
            ),
            (dirty_after_add, "add_to_swap did not mark the page dirty"),
            (tagged, "set_page_dirty did not tag the swap-cache entry"),
            (
                fixed_reports == 0,
                "a tag on a missing entry with the fixed order",
            ),
            (buggy_reports == 1, "the flag-first window was not reported"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Outcome::Fail((*why).into()),
            None => Outcome::Pass,
        }
    })
}

static STALE_ADDR: AtomicU64 = AtomicU64::new(0);
static STALE_RESULT: AtomicU64 = AtomicU64::new(0);
static STALE_FAULTS: AtomicU64 = AtomicU64::new(0);

/// The value the stale-TLB probe stores in its page.
const STALE_PATTERN: u64 = 0xfeed;

/// On the observing CPU: enter the mm and read the page (fills its TLB).
fn stale_enter<A: Mmu>(_: usize) {
    // SAFETY: the probe keeps the mm alive until `stale_leave` ran.
    let mm = unsafe { &*(SHARED_MM.load(Ordering::Acquire) as *const Mm<A>) };
    // SAFETY: as above.
    unsafe { mmod::use_mm(mm) };
    // SAFETY: in the VMA.
    STALE_RESULT.store(
        unsafe { load(STALE_ADDR.load(Ordering::Acquire)) },
        Ordering::Release,
    );
}

/// On the observing CPU: read again after the PTE was cleared elsewhere.
fn stale_observe<A: Mmu>(_: usize) {
    let f0 = faults::<A>();
    // SAFETY: in the VMA (the fault handler maps a fresh page if the
    // translation is gone).
    let v = unsafe { load(STALE_ADDR.load(Ordering::Acquire)) };
    STALE_FAULTS.store(faults::<A>() - f0, Ordering::Release);
    STALE_RESULT.store(v, Ordering::Release);
}

fn stale_leave<A: Mmu>(_: usize) {
    mmod::unuse_mm::<A>();
}

/// How the stale-TLB probe clears the PTE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PteClear {
    /// [`Mmu::ptep_clear_unflushed`]: no TLB invalidation at all, the
    /// machine's own behaviour (the platform property).
    Unflushed,
    /// [`Mmu::ptep_get_and_clear`], the arch's clear as a zap does it (s390x
    /// IPTE purges every TLB; x86-64 leaves the flush to the caller).
    Arch,
}

/// What the observer CPU read of a page after another CPU cleared its PTE,
/// before any flush.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StaleTlb {
    /// The observer's read before the clear (fills its TLB).
    pub(crate) value_before: u64,
    /// Its read after the clear.
    pub(crate) value_after: u64,
    /// The page faults that read took.
    pub(crate) observer_faults: u64,
}

impl StaleTlb {
    /// The observer still translated through its TLB entry: the old value,
    /// without a fault.
    pub(crate) fn stale(&self) -> bool {
        (self.value_after, self.observer_faults) == (STALE_PATTERN, 0)
    }

    /// The observer's translation was gone: it faulted into a fresh, zeroed
    /// page.
    pub(crate) fn purged(&self) -> bool {
        (self.value_after, self.observer_faults) == (0, 1)
    }
}

/// The stale-TLB probe, shared by the `mm.stale_tlb_after_pte_clear`
/// self-test and the boot's platform probe ([`crate::platform`]): CPU 1
/// enters a one-page mm and reads the page, this CPU clears the PTE as
/// `clear` says, CPU 1 reads again; then the page is flushed and freed as a
/// zap would. `Err` when the observer read something else than the page
/// before the clear. Needs 2 CPUs; leaves no frame allocated.
pub(crate) fn probe_stale_tlb<A: Mmu>(clear: PteClear) -> Result<StaleTlb, String> {
    let addr = A::TASK_BASE;
    let mm = mapped_mm::<A>(PAGE_SIZE, true).map_err(|o| format!("{o:?}"))?;
    // SAFETY: the mm lives until exit_mmap, after every CPU left it.
    unsafe { mmod::use_mm(&*mm) };
    // SAFETY: in the VMA.
    unsafe { store(addr, STALE_PATTERN) };
    SHARED_MM.store(&*mm as *const Mm<A> as u64, Ordering::Release);
    STALE_ADDR.store(addr, Ordering::Release);
    let observer = 1;
    smp::smp_call_function_single::<A>(observer, stale_enter::<A>, 0, true);
    let value_before = STALE_RESULT.load(Ordering::Acquire);
    let ptep = pgtable::follow_pte(&*mm, addr).expect("the page was populated");
    // SAFETY: a live PTE of this mm; no other CPU changes it meanwhile; the
    // page is flushed below before it is freed.
    let old = unsafe {
        match clear {
            PteClear::Unflushed => A::ptep_clear_unflushed(&mm, addr, ptep),
            PteClear::Arch => A::ptep_get_and_clear(&mm, addr, ptep),
        }
    };
    smp::smp_call_function_single::<A>(observer, stale_observe::<A>, 0, true);
    let seen = StaleTlb {
        value_before,
        value_after: STALE_RESULT.load(Ordering::Acquire),
        observer_faults: STALE_FAULTS.load(Ordering::Acquire),
    };
    // Finish the zap properly: flush, then drop the page.
    A::flush_tlb_range(&mm, addr, addr + PAGE_SIZE);
    let page = page::pfn_to_page(A::pte_pfn(old));
    memory::page_remove_rmap(page);
    mm.rss_anon.fetch_sub(1, Ordering::Relaxed);
    page::put_page(page);
    smp::smp_call_function_single::<A>(observer, stale_leave::<A>, 0, true);
    mmod::unuse_mm::<A>();
    memory::exit_mmap(*mm);
    if value_before != STALE_PATTERN {
        return Err(format!(
            "the observer read {value_before:#x} before the clear"
        ));
    }
    Ok(seen)
}

/// After a PTE clear without a flush, another CPU keeps translating through
/// its TLB entry, or does not, and the arch's clear does what the arch says:
/// x86-64's leaves the stale entry (the flush is the caller's), s390x's
/// IPTE purges it. Where the machine keeps no stale entry at all (a
/// shadow-paging hypervisor), neither can be shown: skipped with the reason.
fn stale_tlb_after_pte_clear<A: Mmu>(_: &Cmdline) -> Outcome {
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    no_leak(|| {
        let machine = match probe_stale_tlb::<A>(PteClear::Unflushed) {
            Ok(s) => s,
            Err(why) => return Outcome::Fail(why),
        };
        let arch = match probe_stale_tlb::<A>(PteClear::Arch) {
            Ok(s) => s,
            Err(why) => return Outcome::Fail(why),
        };
        diag!(
            "unflushed_clear_value_after={:#x} unflushed_clear_observer_faults={}",
            machine.value_after,
            machine.observer_faults
        );
        diag!(
            "clear_flushes_tlb={} value_before={:#x} value_after_clear={:#x} observer_faults={}",
            A::CLEAR_FLUSHES_TLB,
            arch.value_before,
            arch.value_after,
            arch.observer_faults
        );
        if machine.purged() {
            return Outcome::Skip(crate::platform::Property::StaleTlb.lacking());
        }
        if !machine.stale() {
            return Outcome::Fail(format!(
                "after a clear without a flush the observer read {:#x} with {} faults",
                machine.value_after, machine.observer_faults
            ));
        }
        // x86-64: the observer still translates through its stale TLB
        // entry, without a fault. s390x: IPTE purged every TLB: the observer
        // faults and gets a new, zeroed page.
        let right = if A::CLEAR_FLUSHES_TLB {
            arch.purged()
        } else {
            arch.stale()
        };
        if right {
            Outcome::Pass
        } else {
            Outcome::Fail(format!(
                "clear_flushes_tlb={}: the observer read {:#x} with {} faults",
                A::CLEAR_FLUSHES_TLB,
                arch.value_after,
                arch.observer_faults
            ))
        }
    })
}

fn upgrade_keeps_mappings<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let mm = or_return!(new_mm::<A>());
        // The task base, then above a 3-level s390x mm (4 TiB) and above a
        // 4-level one (8 PiB), as far as the arch can map.
        let wanted = [A::TASK_BASE, 5 << 40, 9 << 50];
        let addrs: alloc::vec::Vec<u64> = wanted
            .into_iter()
            .filter(|&a| a + PAGE_SIZE <= A::TASK_SIZE_MAX)
            .collect();
        let mut limits = String::new();
        // SAFETY: the mm lives until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        for &a in &addrs {
            limits.push_str(&format!(" {:#x}", A::context_limit(&mm.context)));
            if let Err(e) = memory::mmap_anon(&mm, a, PAGE_SIZE, RW, false) {
                mmod::unuse_mm::<A>();
                memory::exit_mmap(*mm);
                return Outcome::Fail(format!("mmap at {a:#x}: {e:?}"));
            }
            // SAFETY: in the VMA just mapped.
            unsafe { store(a, pattern(a)) };
        }
        limits.push_str(&format!(" {:#x}", A::context_limit(&mm.context)));
        let mut lost = alloc::vec::Vec::new();
        for &a in &addrs {
            // SAFETY: in a VMA.
            if unsafe { load(a) } != pattern(a) {
                lost.push(a);
            }
        }
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        diag!("mapped={} limits{limits}", addrs.len());
        if lost.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail(format!("mappings lost after upgrades: {lost:x?}"))
        }
    })
}

fn access_beyond_limit<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let mm = or_return!(new_mm::<A>());
        let limit = A::context_limit(&mm.context);
        if limit >= A::TASK_SIZE_MAX {
            memory::exit_mmap(*mm);
            return Outcome::Skip(
                "a new mm already reaches the highest task address (no folded levels)",
            );
        }
        // SAFETY: the mm lives until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        let f0 = faults::<A>();
        let r = A::probe_load(limit + (1 << 40));
        let took = faults::<A>() - f0;
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        match r {
            Err(info) => {
                diag!("limit={limit:#x} code={:#x} faults={took}", info.code);
                Outcome::Pass
            }
            Ok(v) => Outcome::Fail(format!("a load beyond the mm's limit returned {v:#x}")),
        }
    })
}
