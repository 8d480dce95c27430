//! The `mm_page` self-test suite: RAM discovery, the frame database and the
//! buddy allocator with its detectors, on the real machine and all its CPUs.
//!
//! Every case runs under [`leak_checked`]: the number of free frames must be
//! the same after the case as before it, and the bad-page reports it caused must
//! be exactly the ones it provoked on purpose. Cases that provoke a report (a
//! locked page freed, a write to a freed frame) then repair the page, as the
//! caller that decides would, and free it for good, so nothing stays leaked.

use super::leak_checked;
use crate::cmdline::Cmdline;
use crate::ktap::Outcome;
use crate::mm::page::{self, Page};
use crate::mm::page_alloc::{self, BadPageReport, MAX_PAGE_ORDER};
use crate::mm::{memmap, PAGE_SIZE};
use crate::selftest::TestFn;
use crate::{diag, smp, Arch};
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The suite's name.
pub(crate) const SUITE: &str = "mm_page";

/// The `mm_page` cases, in order.
pub(crate) fn cases<A: Arch>() -> Vec<(&'static str, TestFn)> {
    alloc::vec![
        ("memory_discovered", memory_discovered as TestFn),
        ("alloc_free_every_order", alloc_free_every_order),
        ("split_merge", split_merge),
        ("alloc_contention", alloc_contention::<A>),
        ("bad_page_locked", bad_page_locked),
        ("bad_page_mapcount", bad_page_mapcount),
        ("poison_use_after_free", poison_use_after_free),
        ("get_page_unless_zero_freed", get_page_unless_zero_freed),
        ("alloc_throughput", alloc_throughput::<A>),
    ]
}

fn fail(msg: String) -> Outcome {
    Outcome::Fail(msg)
}

fn memory_discovered(_: &Cmdline) -> Outcome {
    leak_checked(0, |_| {
        let info = memmap::mem_info().expect("checked by leak_checked");
        let free = page_alloc::nr_free_pages();
        let blocks = page_alloc::free_blocks_per_order();
        diag!(
            "ram_mib={} free_frames={free} managed_frames={} max_pfn={:#x} memmap_kib={}",
            info.usable_bytes >> 20,
            page_alloc::managed_pages(),
            info.max_pfn,
            info.memmap_bytes >> 10
        );
        diag!("buddyinfo={blocks:?}");
        if info.usable_bytes < memmap::MIN_USABLE_MEMORY {
            return fail(format!("only {} bytes usable", info.usable_bytes));
        }
        let in_blocks: usize = blocks.iter().enumerate().map(|(o, n)| n << o).sum();
        if in_blocks != free {
            return fail(format!(
                "free lists hold {in_blocks} frames, nr_free_pages says {free}"
            ));
        }
        if page_alloc::managed_pages() as u64 * PAGE_SIZE + info.memmap_bytes != info.usable_bytes {
            return fail(format!(
                "{} frames managed + {} bytes of descriptors != {} usable bytes",
                page_alloc::managed_pages(),
                info.memmap_bytes,
                info.usable_bytes
            ));
        }
        // What the kernel itself uses must be reserved: its image (a static
        // and this stack frame, both in the image on both backends) and the
        // descriptor array.
        static IN_IMAGE: AtomicU64 = AtomicU64::new(0);
        let on_stack = 0u64;
        for (what, addr) in [
            (
                "a static of the image",
                &IN_IMAGE as *const AtomicU64 as u64,
            ),
            ("the boot stack", &on_stack as *const u64 as u64),
            ("the frame database", info.memmap_phys),
            (
                "the frame database's end",
                info.memmap_phys + info.memmap_bytes - 1,
            ),
        ] {
            let page = page::phys_to_page(addr);
            if !page::PageReserved(page) || page::page_ref_count(page) != 1 {
                return fail(format!(
                    "{what} at {addr:#x} is not a reserved frame (flags {:#x}, refcount {})",
                    page.flags(),
                    page::page_ref_count(page)
                ));
            }
        }
        Outcome::Pass
    })
}

fn alloc_free_every_order(_: &Cmdline) -> Outcome {
    leak_checked(0, |_| {
        for order in 0..=MAX_PAGE_ORDER {
            let free = page_alloc::nr_free_pages();
            let Some(page) = page_alloc::alloc_pages(order) else {
                return fail(format!("no order-{order} block"));
            };
            let pfn = page::page_to_pfn(page);
            if !pfn.is_multiple_of(1 << order) {
                return fail(format!("order-{order} block at unaligned pfn {pfn:#x}"));
            }
            if page::page_ref_count(page) != 1
                || page::page_mapcount(page) != 0
                || page.flags() != 0
            {
                return fail(format!("order-{order} block at pfn {pfn:#x} is not clean"));
            }
            if page_alloc::nr_free_pages() != free - (1 << order) {
                return fail(format!(
                    "order-{order} allocation took the wrong frame count"
                ));
            }
            // Every byte of the block is usable memory.
            let words = (PAGE_SIZE as usize / 8) << order;
            let base = page::page_address(page).cast::<u64>();
            for i in (0..words).step_by(61) {
                // SAFETY: the block is ours, `words` 8-byte words long, mapped 1:1.
                unsafe { base.add(i).write_volatile(i as u64 ^ pfn) };
            }
            for i in (0..words).step_by(61) {
                // SAFETY: as above.
                if unsafe { base.add(i).read_volatile() } != i as u64 ^ pfn {
                    return fail(format!("order-{order} block at {pfn:#x} lost a write"));
                }
            }
            page_alloc::__free_pages(page, order);
        }
        Outcome::Pass
    })
}

fn split_merge(_: &Cmdline) -> Outcome {
    leak_checked(0, |_| {
        let before = page_alloc::free_blocks_per_order();
        // All of a few order-10 blocks' worth as single frames, then back.
        let want = 4 << MAX_PAGE_ORDER;
        let mut pages: Vec<&'static Page> = Vec::with_capacity(want);
        while pages.len() < want {
            match page_alloc::alloc_pages(0) {
                Some(p) => pages.push(p),
                None => break,
            }
        }
        let got = pages.len();
        // Free in a scrambled order so merges happen out of address order.
        pages.sort_unstable_by_key(|p| (page::page_to_pfn(p) * 7919) % 1031);
        for p in pages {
            page_alloc::free_page(p);
        }
        let after = page_alloc::free_blocks_per_order();
        diag!("split_merge_frames={got}");
        if got < want.min(page_alloc::managed_pages() / 2) {
            return fail(format!("only {got} single frames could be allocated"));
        }
        if after != before {
            return fail(format!(
                "free blocks per order {before:?} before, {after:?} after: blocks did not merge back"
            ));
        }
        Outcome::Pass
    })
}

// ---- contention ------------------------------------------------------------

static CONTENTION_DONE: AtomicUsize = AtomicUsize::new(0);
static CONTENTION_ERRORS: AtomicUsize = AtomicUsize::new(0);
static CONTENTION_ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// One bit per frame: set while some CPU holds it.
static OWNED: spin::Once<Vec<AtomicU64>> = spin::Once::new();

fn owned() -> &'static [AtomicU64] {
    OWNED.call_once(|| {
        (0..page::max_pfn().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect()
    })
}

/// Marks a block held (`hold`) or released; counts a frame already in the
/// wanted state (held twice, or released twice) as an error.
fn mark(pfn: u64, order: u32, hold: bool) {
    let bits = owned();
    for p in pfn..pfn + (1 << order) {
        let (word, bit) = ((p / 64) as usize, 1u64 << (p % 64));
        let old = if hold {
            bits[word].fetch_or(bit, Ordering::AcqRel)
        } else {
            bits[word].fetch_and(!bit, Ordering::AcqRel)
        };
        if (old & bit != 0) == hold {
            CONTENTION_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Allocates and frees blocks of mixed orders, holding up to 32 at a time, each
/// tagged with the CPU's number; checks every tag before freeing.
fn contention_worker<A: Arch>(_: usize) {
    let cpu = A::smp_processor_id() as u64;
    let mut held: Vec<(&'static Page, u32, u64)> = Vec::with_capacity(33);
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (cpu << 17);
    for i in 0..1500u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let order = [0, 0, 0, 0, 1, 1, 2, 3][(x % 8) as usize];
        if let Some(page) = page_alloc::alloc_pages(order) {
            let pfn = page::page_to_pfn(page);
            mark(pfn, order, true);
            let tag = (cpu << 48) | i;
            // SAFETY: the block is ours; its first word is in bounds and aligned.
            unsafe { page::page_address(page).cast::<u64>().write_volatile(tag) };
            held.push((page, order, tag));
            CONTENTION_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        if held.len() > 32 || (x >> 8).is_multiple_of(3) {
            if held.is_empty() {
                continue;
            }
            let (page, order, tag) = held.swap_remove(((x >> 16) as usize) % held.len());
            release(page, order, tag);
        }
    }
    for (page, order, tag) in held {
        release(page, order, tag);
    }
    CONTENTION_DONE.fetch_add(1, Ordering::AcqRel);
}

fn release(page: &'static Page, order: u32, tag: u64) {
    // SAFETY: the block is still ours; the first word is in bounds and aligned.
    let seen = unsafe { page::page_address(page).cast::<u64>().read_volatile() };
    if seen != tag {
        CONTENTION_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    mark(page::page_to_pfn(page), order, false);
    page_alloc::__free_pages(page, order);
}

fn alloc_contention<A: Arch>(_: &Cmdline) -> Outcome {
    leak_checked(0, |_| {
        let n = smp::nr_cpus();
        owned();
        CONTENTION_DONE.store(0, Ordering::Release);
        CONTENTION_ERRORS.store(0, Ordering::Release);
        CONTENTION_ALLOCS.store(0, Ordering::Release);
        let events: Vec<(u64, u64)> = (0..n).map(page_alloc::vm_events).collect();
        let t0 = A::clock_ns();
        smp::smp_call_function::<A>(contention_worker::<A>, 0, false);
        contention_worker::<A>(0);
        while CONTENTION_DONE.load(Ordering::Acquire) < n {
            A::cpu_relax();
        }
        let ms = (A::clock_ns() - t0) / 1_000_000;
        let per_cpu: Vec<u64> = (0..n)
            .map(|c| page_alloc::vm_events(c).0 - events[c].0)
            .collect();
        diag!(
            "contention_cpus={n} allocs={} time_ms={ms} pgalloc_per_cpu={per_cpu:?}",
            CONTENTION_ALLOCS.load(Ordering::Acquire)
        );
        if let Some(cpu) = per_cpu.iter().position(|&a| a == 0) {
            return fail(format!("CPU {cpu} counted no allocations"));
        }
        match CONTENTION_ERRORS.load(Ordering::Acquire) {
            0 => Outcome::Pass,
            e => fail(format!(
                "{e} frames were held by two CPUs at once or lost their tag"
            )),
        }
    })
}

// ---- detectors ---------------------------------------------------------------

/// The one report made since `seq`, or a failure saying what was seen.
fn one_report(seq: u64, pfn: u64) -> Result<BadPageReport, Outcome> {
    let reports = page_alloc::bad_page_reports_since(seq);
    match reports.as_slice() {
        [r] if r.pfn == pfn => Ok(r.clone()),
        _ => Err(fail(format!(
            "expected one bad-page report for pfn {pfn:#x}, got {reports:?}"
        ))),
    }
}

fn bad_page_locked(_: &Cmdline) -> Outcome {
    leak_checked(1, |seq| {
        let free = page_alloc::nr_free_pages();
        let Some(page) = page_alloc::alloc_page() else {
            return fail("out of memory".into());
        };
        let pfn = page::page_to_pfn(page);
        page::lock_page(page);
        // The last reference goes while the page is still locked (scenario
        // wp-unlock-vs-zap's bug).
        page::put_page(page);
        let r = or_return!(one_report(seq, pfn));
        diag!(
            "reported pfn={:#x} reason=\"{}\" bad_flags={:#x}",
            r.pfn,
            r.reason,
            r.bad_flags
        );
        let leaked = page_alloc::nr_free_pages() == free - 1;
        // Repair and free for good, as the caller that owns the page would.
        page::unlock_page(page);
        page_alloc::free_frozen_pages(page, 0);
        if r.reason != "PAGE_FLAGS_CHECK_AT_FREE flag(s) set" || r.bad_flags != page::PG_locked {
            return fail(format!("wrong report {r:?}"));
        }
        if !leaked {
            return fail("the bad page went back on a free list".into());
        }
        Outcome::Pass
    })
}

fn bad_page_mapcount(_: &Cmdline) -> Outcome {
    leak_checked(1, |seq| {
        let free = page_alloc::nr_free_pages();
        let Some(page) = page_alloc::alloc_page() else {
            return fail("out of memory".into());
        };
        let pfn = page::page_to_pfn(page);
        // A PTE still maps the page when its last reference goes.
        page._mapcount.fetch_add(1, Ordering::AcqRel);
        page::put_page(page);
        let r = or_return!(one_report(seq, pfn));
        diag!(
            "reported pfn={:#x} reason=\"{}\" mapcount={}",
            r.pfn,
            r.reason,
            r.mapcount
        );
        let leaked = page_alloc::nr_free_pages() == free - 1;
        page._mapcount.fetch_sub(1, Ordering::AcqRel);
        page_alloc::free_frozen_pages(page, 0);
        if r.reason != "nonzero mapcount" || r.mapcount != 1 {
            return fail(format!("wrong report {r:?}"));
        }
        if !leaked {
            return fail("the bad page went back on a free list".into());
        }
        Outcome::Pass
    })
}

fn poison_use_after_free(_: &Cmdline) -> Outcome {
    leak_checked(1, |seq| {
        // The two halves of an order-1 block as single pages: the first, freed
        // while its buddy is held, is next in line on the order-0 free list.
        let Some(pair) = page_alloc::alloc_pages(1) else {
            return fail("out of memory".into());
        };
        page_alloc::split_page(pair, 1);
        let victim = pair;
        let pfn = page::page_to_pfn(victim);
        let other = page::pfn_to_page(pfn + 1);
        page_alloc::free_page(victim);
        let was_poisoned =
            page_alloc::page_is_poisoned(pfn) && page_alloc::check_poison(pfn).is_ok();
        const OFFSET: usize = 0x321;
        // SAFETY: a deliberate write after free; the frame is RAM, mapped 1:1,
        // and nothing else uses it while it sits on the free list.
        unsafe { page::page_address(victim).add(OFFSET).write_volatile(0) };
        let seen = page_alloc::check_poison(pfn);
        let next = page_alloc::alloc_page();
        let report = one_report(seq, pfn);
        // Clean up whatever happened: the replacement page, the leaked victim
        // (its refcount is 0, it is off the lists) and the other half.
        let handed_out = next.map(page::page_to_pfn);
        if let Some(p) = next {
            page_alloc::free_page(p);
        }
        if handed_out != Some(pfn) {
            page_alloc::unpoison_leaked_page(victim);
            page_alloc::free_frozen_pages(victim, 0);
        }
        page_alloc::free_page(other);
        if !was_poisoned {
            return fail(format!("freed frame {pfn:#x} was not poisoned"));
        }
        if seen != Err(OFFSET) {
            return fail(format!(
                "check_poison saw {seen:?}, expected Err({OFFSET:#x})"
            ));
        }
        if handed_out == Some(pfn) {
            return fail(format!("the modified frame {pfn:#x} was handed out again"));
        }
        match report {
            Ok(r) if r.offset == Some(OFFSET) => {
                diag!("reported pfn={:#x} offset={:#x}", r.pfn, OFFSET);
                Outcome::Pass
            }
            Ok(r) => fail(format!("wrong report {r:?}")),
            Err(o) => o,
        }
    })
}

fn get_page_unless_zero_freed(_: &Cmdline) -> Outcome {
    leak_checked(0, |_| {
        let free = page_alloc::nr_free_pages();
        let Some(page) = page_alloc::alloc_page() else {
            return fail("out of memory".into());
        };
        if !page::get_page_unless_zero(page) || page::page_ref_count(page) != 2 {
            return fail("get_page_unless_zero failed on a live page".into());
        }
        page::put_page(page);
        page::put_page(page);
        if page_alloc::nr_free_pages() != free {
            return fail("put_page of the last reference did not free the page".into());
        }
        if page::get_page_unless_zero(page) {
            page::put_page(page);
            return fail("get_page_unless_zero took a reference on a freed page".into());
        }
        if page::page_ref_count(page) != 0 {
            return fail(format!(
                "a freed page has refcount {}",
                page::page_ref_count(page)
            ));
        }
        Outcome::Pass
    })
}

// ---- benchmark ---------------------------------------------------------------

/// Length of each timed window.
const BENCH_NS: u64 = 20_000_000;

static BENCH_OPS: AtomicU64 = AtomicU64::new(0);
static BENCH_DONE: AtomicUsize = AtomicUsize::new(0);
static BENCH_END_NS: AtomicU64 = AtomicU64::new(0);

/// Allocates and frees single frames until the shared end time.
fn bench_worker<A: Arch>(_: usize) {
    let end = BENCH_END_NS.load(Ordering::Acquire);
    let mut ops = 0u64;
    while A::clock_ns() < end {
        for _ in 0..16 {
            if let Some(p) = page_alloc::alloc_page() {
                page_alloc::free_page(p);
                ops += 1;
            }
        }
    }
    BENCH_OPS.fetch_add(ops, Ordering::AcqRel);
    BENCH_DONE.fetch_add(1, Ordering::AcqRel);
}

/// Allocations per second on this CPU alone, or on all CPUs at once.
fn bench_rate<A: Arch>(all: bool) -> u64 {
    BENCH_OPS.store(0, Ordering::Release);
    BENCH_DONE.store(0, Ordering::Release);
    let start = A::clock_ns();
    BENCH_END_NS.store(start + BENCH_NS, Ordering::Release);
    let cpus = if all { smp::nr_cpus() } else { 1 };
    if all {
        smp::smp_call_function::<A>(bench_worker::<A>, 0, false);
    }
    bench_worker::<A>(0);
    while BENCH_DONE.load(Ordering::Acquire) < cpus {
        A::cpu_relax();
    }
    let ns = A::clock_ns() - start;
    BENCH_OPS.load(Ordering::Acquire) * 1_000_000_000 / ns.max(1)
}

fn alloc_throughput<A: Arch>(_: &Cmdline) -> Outcome {
    leak_checked(0, |_| {
        let one = bench_rate::<A>(false);
        let all = bench_rate::<A>(true);
        page_alloc::set_poison_check(false);
        let one_nocheck = bench_rate::<A>(false);
        page_alloc::set_poison_check(true);
        diag!(
            "frame_allocs_per_sec_1cpu={one} all_cpus={all} cpus={} 1cpu_no_poison_check={one_nocheck}",
            smp::nr_cpus()
        );
        if one == 0 || all == 0 || one_nocheck == 0 {
            return fail("no allocation completed in a 20 ms window".into());
        }
        Outcome::Pass
    })
}
