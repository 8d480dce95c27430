//! Host tests of the buddy allocator on the test memory: split and merge,
//! alignment, contention, speculative references, and the bad-page
//! detectors (free checks, poison, descriptor use after free).

use super::*;
use crate::mm::memmap::test_mem;
use crate::mm::page::*;
use std::collections::HashSet;

fn bytes(page: &Page) -> &'static mut [u8] {
    // SAFETY: test frames live in the leaked test buffer; the test owns the
    // page it passes.
    unsafe { core::slice::from_raw_parts_mut(page_address(page), PAGE_SIZE as usize) }
}

#[test]
fn split_and_merge_restore_the_order_10_blocks() {
    let _m = test_mem::setup();
    let before = free_blocks_per_order();
    let free = nr_free_pages();
    assert!(before[MAX_PAGE_ORDER as usize] >= 2);
    let mut pages = Vec::new();
    while let Some(p) = alloc_pages(0) {
        pages.push(p);
    }
    assert_eq!(pages.len(), free, "every free frame is allocatable");
    assert_eq!(nr_free_pages(), 0);
    assert_eq!(free_blocks_per_order(), [0; NR_PAGE_ORDERS]);
    let pfns: HashSet<u64> = pages.iter().map(|p| page_to_pfn(p)).collect();
    assert_eq!(pfns.len(), pages.len(), "a frame was handed out twice");
    // Free in an order unlike allocation, so merges happen out of order.
    pages.sort_by_key(|p| (page_to_pfn(p) * 7919) % 1031);
    for p in pages {
        free_page(p);
    }
    assert_eq!(nr_free_pages(), free);
    assert_eq!(free_blocks_per_order(), before, "blocks did not merge back");
}

#[test]
fn speculative_reference_on_a_non_compound_block() {
    let _m = test_mem::setup();
    let (free, bad) = (nr_free_pages(), nr_bad_pages());
    let page = alloc_pages(2).unwrap();
    // A pfn scanner's speculative reference on the head.
    assert!(get_page_unless_zero(page));
    __free_pages(page, 2);
    assert_eq!(
        nr_free_pages(),
        free - 1,
        "all but the head frame freed at once"
    );
    put_page(page);
    assert_eq!(nr_free_pages(), free, "the last put frees the head");
    assert_eq!(nr_bad_pages(), bad);
}

#[test]
fn blocks_are_aligned_and_clean() {
    let _m = test_mem::setup();
    let free = nr_free_pages();
    for order in 0..=MAX_PAGE_ORDER {
        let page = alloc_pages(order).unwrap();
        let pfn = page_to_pfn(page);
        assert_eq!(pfn % (1 << order), 0, "order {order} block at pfn {pfn:#x}");
        assert_eq!(page_ref_count(page), 1);
        for p in pfn..pfn + (1 << order) {
            let pg = pfn_to_page(p);
            assert_eq!(page_mapcount(pg), 0);
            assert_eq!(pg.mapping.load(Ordering::Relaxed), 0);
            assert_eq!(pg.flags(), 0, "pfn {p:#x} flags");
            if p != pfn {
                assert_eq!(page_ref_count(pg), 0);
            }
        }
        assert_eq!(nr_free_pages(), free - (1 << order));
        __free_pages(page, order);
        assert_eq!(nr_free_pages(), free);
    }
    assert!(alloc_pages(MAX_PAGE_ORDER).is_some_and(|p| {
        __free_pages(p, MAX_PAGE_ORDER);
        true
    }));
}

#[test]
fn no_double_allocation_under_contention() {
    let _m = test_mem::setup();
    let free = nr_free_pages();
    let owner: &'static [AtomicUsize] = Box::leak(
        (0..super::super::page::max_pfn())
            .map(|_| AtomicUsize::new(0))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let threads: Vec<_> = (1..=4usize)
        .map(|t| {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let mut errors = 0;
                for i in 0..3000usize {
                    let order = [0, 0, 0, 1, 2, 3][(i * 7 + t) % 6];
                    if let Some(p) = alloc_pages(order) {
                        let pfn = page_to_pfn(p);
                        for q in pfn..pfn + (1 << order) {
                            if owner[q as usize].swap(t, Ordering::SeqCst) != 0 {
                                errors += 1;
                            }
                        }
                        bytes(p)[0] = t as u8;
                        held.push((p, order));
                    }
                    if held.len() > 24 || (i % 5 == 0 && !held.is_empty()) {
                        let (p, order) = held.swap_remove((i * 13) % held.len());
                        if bytes(p)[0] != t as u8 {
                            errors += 1;
                        }
                        let pfn = page_to_pfn(p);
                        for q in pfn..pfn + (1 << order) {
                            owner[q as usize].store(0, Ordering::SeqCst);
                        }
                        __free_pages(p, order);
                    }
                }
                for (p, order) in held {
                    let pfn = page_to_pfn(p);
                    for q in pfn..pfn + (1 << order) {
                        owner[q as usize].store(0, Ordering::SeqCst);
                    }
                    __free_pages(p, order);
                }
                errors
            })
        })
        .collect();
    let errors: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(errors, 0, "frames were owned by two threads at once");
    assert_eq!(nr_free_pages(), free);
}

/// Allocates a page, lets `damage` break it, frees it, and returns the
/// report; then repairs it with `repair` and frees it for good.
fn bad_free(damage: impl Fn(&Page), repair: impl Fn(&Page)) -> BadPageReport {
    let free = nr_free_pages();
    let seq = nr_bad_pages();
    let page = alloc_pages(0).unwrap();
    damage(page);
    __free_pages(page, 0);
    assert_eq!(nr_free_pages(), free - 1, "a bad page went back on a list");
    let reports = bad_page_reports_since(seq);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].pfn, page_to_pfn(page));
    repair(page);
    free_frozen_pages(page, 0);
    assert_eq!(nr_free_pages(), free);
    reports[0].clone()
}

#[test]
fn free_checks_report_each_reason() {
    let _m = test_mem::setup();
    let r = bad_free(|p| assert!(trylock_page(p)), ClearPageLocked);
    assert_eq!(r.reason, "PAGE_FLAGS_CHECK_AT_FREE flag(s) set");
    assert_eq!(r.bad_flags, PG_locked);
    let r = bad_free(
        |p| {
            p._mapcount.fetch_add(1, Ordering::Relaxed);
        },
        |p| p._mapcount.store(-1, Ordering::Relaxed),
    );
    assert_eq!(r.reason, "nonzero mapcount");
    assert_eq!(r.mapcount, 1);
    let r = bad_free(
        |p| p.mapping.store(0x1234, Ordering::Relaxed),
        |p| p.mapping.store(0, Ordering::Relaxed),
    );
    assert_eq!(r.reason, "non-NULL mapping");
    // A non-compound order-1 block whose tail page still has a reference.
    let seq = nr_bad_pages();
    let free = nr_free_pages();
    let page = alloc_pages(1).unwrap();
    let tail = pfn_to_page(page_to_pfn(page) + 1);
    set_page_count(tail, 1);
    __free_pages(page, 1);
    let reports = bad_page_reports_since(seq);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].reason, "nonzero _refcount");
    assert_eq!(reports[0].pfn, page_to_pfn(tail));
    set_page_count(tail, 0);
    free_frozen_pages(page, 1);
    assert_eq!(nr_free_pages(), free);
    // Each flag of the list is caught; dirty is not on it.
    for flag in [PG_writeback, PG_reserved, PG_swapcache, PG_pgtable, PG_lru] {
        let r = bad_free(|p| p.set_flag(flag), |p| p.clear_flag(flag));
        assert_eq!(r.bad_flags, flag);
    }
    let seq = nr_bad_pages();
    let page = alloc_pages(0).unwrap();
    SetPageDirty(page);
    SetPageUptodate(page);
    free_page(page);
    assert_eq!(nr_bad_pages(), seq, "dirty is cleared silently at free");
    assert!(!PageDirty(page));
}

/// Takes the two halves of an order-1 block as separate pages, so that
/// freeing the first leaves it on the order-0 list, next to be handed out.
fn freed_page_next_in_line() -> (&'static Page, &'static Page) {
    let pair = alloc_pages(1).unwrap();
    split_page(pair, 1);
    let other = pfn_to_page(page_to_pfn(pair) + 1);
    free_page(pair);
    (pair, other)
}

#[test]
fn poison_catches_a_write_after_free() {
    let _m = test_mem::setup();
    let free = nr_free_pages();
    let (victim, other) = freed_page_next_in_line();
    let pfn = page_to_pfn(victim);
    assert!(page_is_poisoned(pfn));
    assert_eq!(check_poison(pfn), Ok(()));
    assert!(bytes(victim).iter().all(|&b| b == 0x6b));
    bytes(victim)[0x123] = 0;
    assert_eq!(check_poison(pfn), Err(0x123));
    let seq = nr_bad_pages();
    let page = alloc_pages(0).unwrap();
    assert_ne!(page_to_pfn(page), pfn, "the damaged frame was handed out");
    let reports = bad_page_reports_since(seq);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].pfn, pfn);
    assert_eq!(reports[0].offset, Some(0x123));
    free_page(page);
    // Reclaim the leaked frame and the other half.
    unpoison_leaked_page(victim);
    free_frozen_pages(victim, 0);
    free_page(other);
    assert_eq!(nr_free_pages(), free);
}

#[test]
fn poison_check_knob_skips_the_frame_check() {
    let _m = test_mem::setup();
    let free = nr_free_pages();
    let (victim, other) = freed_page_next_in_line();
    bytes(victim)[8] = 1;
    set_poison_check(false);
    let seq = nr_bad_pages();
    let page = alloc_pages(0).unwrap();
    set_poison_check(true);
    assert_eq!(page_to_pfn(page), page_to_pfn(victim));
    assert_eq!(nr_bad_pages(), seq);
    free_page(page);
    free_page(other);
    assert_eq!(nr_free_pages(), free);
}

#[test]
fn descriptor_use_after_free_is_caught_at_allocation() {
    let _m = test_mem::setup();
    let free = nr_free_pages();
    let (victim, other) = freed_page_next_in_line();
    // A lock_page on the freed page, as a late unlock's partner would do.
    assert!(trylock_page(victim));
    let seq = nr_bad_pages();
    let page = alloc_pages(0).unwrap();
    assert_ne!(page_to_pfn(page), page_to_pfn(victim));
    let reports = bad_page_reports_since(seq);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].reason, "PAGE_FLAGS_CHECK_AT_PREP flag(s) set");
    assert_eq!(reports[0].bad_flags, PG_locked);
    free_page(page);
    ClearPageLocked(victim);
    unpoison_leaked_page(victim);
    free_frozen_pages(victim, 0);
    free_page(other);
    assert_eq!(nr_bad_pages(), seq + 1, "the repaired page freed cleanly");
    assert_eq!(nr_free_pages(), free);
}

#[test]
fn get_page_unless_zero_fails_on_a_free_page_and_put_page_frees() {
    let _m = test_mem::setup();
    let free = nr_free_pages();
    let page = alloc_pages(0).unwrap();
    get_page(page);
    assert_eq!(page_ref_count(page), 2);
    put_page(page);
    assert_eq!(nr_free_pages(), free - 1);
    assert!(get_page_unless_zero(page));
    put_page(page);
    assert_eq!(nr_free_pages(), free - 1, "one reference is left");
    put_page(page);
    assert_eq!(nr_free_pages(), free, "put_page at zero frees");
    assert!(!get_page_unless_zero(page));
    assert_eq!(page_ref_count(page), 0);
}

#[test]
fn compound_put_page_frees_the_whole_block() {
    let _m = test_mem::setup();
    let free = nr_free_pages();
    let page = alloc_pages(3).unwrap();
    prep_compound_page(page, 3);
    assert_eq!(compound_order(page), 3);
    put_page(page);
    assert_eq!(
        nr_free_pages(),
        free,
        "put_page on the head frees all 8 frames"
    );
    assert!(!PageHead(page), "the head flag is cleared at free");
}

#[test]
fn per_cpu_counters_count_calls() {
    let _m = test_mem::setup();
    let (a0, f0) = vm_events(0);
    let p = alloc_pages(2).unwrap();
    __free_pages(p, 2);
    let (a1, f1) = vm_events(0);
    assert!(a1 > a0 && f1 > f0);
}
