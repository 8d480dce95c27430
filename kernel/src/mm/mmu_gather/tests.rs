//! Host tests of the gather's batching and policies on the emulated arch.

use super::*;
use crate::mm::emul::{Emul4k, FLUSHES};
use crate::mm::frag::{self, FragPolicy};
use crate::mm::memmap::test_mem;
use crate::mm::memory;
use crate::mm::mm::{unuse_mm, use_mm, VmFlags};

const RW: VmFlags = VmFlags {
    read: true,
    write: true,
};

type E = Emul4k;

fn flushes() -> u64 {
    FLUSHES.load(Ordering::Relaxed)
}

/// Maps and touches `pages` anonymous pages at `TASK_BASE`.
fn populate(mm: &Mm<E>, pages: u64) {
    memory::mmap_anon(mm, E::TASK_BASE, pages * PAGE_SIZE, RW, false).unwrap();
    // SAFETY: unused again before the mm is torn down.
    unsafe { use_mm(mm) };
    for i in 0..pages {
        let a = E::TASK_BASE + i * PAGE_SIZE;
        E::probe_store(a, i).unwrap();
    }
    unuse_mm::<E>();
}

fn policy(page_free: PageFree, table_free: TableFree) -> TlbPolicy {
    TlbPolicy {
        page_free,
        table_free,
        ..TlbPolicy::DEFAULT
    }
}

#[test]
fn batched_zap_flushes_once_per_batch() {
    let _m = test_mem::setup();
    let n = 2 * GATHER_BATCH as u64 + 10;
    for (pf, want) in [(PageFree::Batched, 3), (PageFree::Immediate, 1)] {
        let free = page_alloc::nr_free_pages();
        let mm = Mm::<E>::new().unwrap();
        populate(&mm, n);
        let before = page_alloc::nr_free_pages();
        let f0 = flushes();
        let mut tlb = tlb_gather_mmu_policy(&mm, policy(pf, TableFree::Immediate), false);
        memory::unmap_page_range(&mut tlb, E::TASK_BASE, E::TASK_BASE + n * PAGE_SIZE);
        tlb_finish_mmu(tlb);
        assert_eq!(flushes() - f0, want, "{pf:?}: flushes for {n} pages");
        assert_eq!(page_alloc::nr_free_pages(), before + n as usize);
        memory::exit_mmap(mm);
        assert_eq!(page_alloc::nr_free_pages(), free, "{pf:?}: leaked frames");
    }
}

#[test]
fn pages_are_freed_when_the_policy_says() {
    let _m = test_mem::setup();
    for pf in [PageFree::Batched, PageFree::Immediate] {
        let mm = Mm::<E>::new().unwrap();
        populate(&mm, 8);
        let before = page_alloc::nr_free_pages();
        let mut tlb = tlb_gather_mmu_policy(&mm, policy(pf, TableFree::Immediate), false);
        memory::unmap_page_range(&mut tlb, E::TASK_BASE, E::TASK_BASE + 8 * PAGE_SIZE);
        let mid = page_alloc::nr_free_pages();
        match pf {
            PageFree::Batched => assert_eq!(mid, before, "batched: freed before the flush"),
            PageFree::Immediate => assert_eq!(mid, before + 8, "immediate: not freed at clear"),
        }
        tlb_finish_mmu(tlb);
        assert_eq!(page_alloc::nr_free_pages(), before + 8);
        memory::exit_mmap(mm);
    }
}

#[test]
fn tables_are_freed_when_the_policy_says() {
    let _m = test_mem::setup();
    let old_frag = frag::policy();
    frag::set_policy(FragPolicy::OnePerFrame);
    crate::percpu::init_boot_cpu::<E>();
    for tf in [TableFree::Immediate, TableFree::IpiSync, TableFree::Rcu] {
        let free = page_alloc::nr_free_pages();
        let mm = Mm::<E>::new().unwrap();
        populate(&mm, 1);
        let old = set_tlb_policy(policy(PageFree::Batched, tf));
        memory::munmap(&mm, E::TASK_BASE, PAGE_SIZE).unwrap();
        set_tlb_policy(old);
        let after = page_alloc::nr_free_pages();
        rcu::rcu_tick::<E>(false);
        assert_eq!(
            page_alloc::nr_free_pages(),
            after,
            "{tf:?}: a tick in an irqs-off section ended a grace period"
        );
        rcu::rcu_tick::<E>(true);
        let later = page_alloc::nr_free_pages();
        match tf {
            TableFree::Rcu => assert_eq!(later, after + 1, "rcu: table freed before the GP"),
            _ => assert_eq!(later, after, "{tf:?}: table not freed at the finish"),
        }
        memory::exit_mmap(mm);
        assert_eq!(page_alloc::nr_free_pages(), free, "{tf:?}: leaked frames");
    }
    frag::set_policy(old_frag);
}

#[test]
fn nested_gathers_force_a_full_flush_when_asked() {
    let _m = test_mem::setup();
    let mm = Mm::<E>::new().unwrap();
    for (nested, want) in [(NestedFlush::ForceFull, 1), (NestedFlush::Ignore, 0)] {
        let p = TlbPolicy {
            nested,
            ..TlbPolicy::DEFAULT
        };
        let outer = tlb_gather_mmu_policy(&mm, p, false);
        let inner = tlb_gather_mmu_policy(&mm, p, false);
        assert!(mm_tlb_flush_nested(&mm));
        // The inner gather found nothing to clear.
        assert_eq!(tlb_finish_mmu_counted(inner), want, "{nested:?}");
        tlb_finish_mmu(outer);
        assert!(!mm_tlb_flush_nested(&mm));
    }
    memory::exit_mmap(mm);
}

#[test]
fn policy_knob_round_trips_and_prints() {
    let all = [
        TlbPolicy::DEFAULT,
        TlbPolicy {
            page_free: PageFree::Immediate,
            table_free: TableFree::Rcu,
            rmap: RmapOrder::BeforeFlush,
            nested: NestedFlush::Ignore,
        },
        policy(PageFree::Batched, TableFree::IpiSync),
    ];
    for p in all {
        assert_eq!(TlbPolicy::decode(p.encode()), p);
    }
    assert_eq!(
        alloc::format!("{}", all[1]),
        "page=immediate table=rcu rmap=before-flush nested=ignore"
    );
}

#[test]
fn a_gather_dropped_unfinished_panics() {
    let _m = test_mem::setup();
    let mm = Mm::<E>::new().unwrap();
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _tlb = tlb_gather_mmu(&mm);
    }));
    let msg = dropped.expect_err("an unfinished gather was dropped quietly");
    let msg = msg.downcast_ref::<String>().map_or("", String::as_str);
    assert!(msg.contains("MmuGather dropped unfinished"), "{msg}");
    // Undo what the dropped gather left raised, so the mm tears down cleanly.
    mm.tlb_flush_pending.fetch_sub(1, Ordering::AcqRel);
    tlb_finish_mmu(tlb_gather_mmu(&mm));
    memory::exit_mmap(mm);
}
