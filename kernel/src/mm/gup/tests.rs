//! Host tests of GUP on the emulated arches: the fast walk's logic (both
//! walks, the recorder, back-off on a changed entry) and slow GUP.

use super::*;
use crate::mm::emul::{emul_tests, Emul2k, Emul4k};
use crate::mm::mm::{unuse_mm, use_mm, VmFlags};
use crate::mm::page_alloc;
use crate::mm::selftest::assert_no_leak;
use crate::Arch;

const RW: VmFlags = VmFlags::RW;
const P: u64 = PAGE_SIZE;

fn stats() -> GupStats {
    gup_stats(0)
}

fn pfns(pages: &[&'static Page]) -> Vec<u64> {
    pages.iter().map(|p| page::page_to_pfn(p)).collect()
}

/// An mm with `[start, start + pages * P)` mapped read-write and populated,
/// each page holding its address; attached on the (only) CPU.
fn populated<A: Mmu>(start: u64, pages: u64) -> Box<Mm<A>> {
    let mm = Box::new(Mm::<A>::new().unwrap());
    memory::mmap_anon(&mm, start, pages * P, RW, true).unwrap();
    // SAFETY: the caller detaches before `exit_mmap`.
    unsafe { use_mm(&mm) };
    for i in 0..pages {
        A::probe_store(start + i * P, start + i * P).unwrap();
    }
    mm
}

// The mm stays boxed (in place, as attached and listed) until `exit_mmap`.
#[allow(clippy::boxed_local)]
fn teardown<A: Mmu>(mm: Box<Mm<A>>) {
    unuse_mm::<A>();
    memory::exit_mmap(*mm);
}

/// A range that crosses a PMD and a PUD boundary.
fn crossing_range<A: Mmu>() -> (u64, u64) {
    (A::TASK_BASE + A::PUD_SIZE - 3 * P, 6)
}

fn fast_equals_slow_in_both_walks<A: Mmu>() {
    assert_no_leak(|| {
        let (start, n) = crossing_range::<A>();
        let mm = populated::<A>(start, n);
        let mut slow = Vec::new();
        assert_eq!(
            get_user_pages(&mm, start, n as usize, GupFlags::FOLL_GET, &mut slow),
            Ok(n as usize)
        );
        for walk in [GupWalk::Lockless, GupWalk::StackCopy] {
            set_gup_walk(walk);
            let before = stats();
            let mut fast = Vec::new();
            let mut rec = GupRecord::new();
            let got = get_user_pages_fast_traced::<A>(
                start,
                n as usize,
                GupFlags::FOLL_GET,
                &mut fast,
                Some(&mut rec),
            );
            let d = stats().since(before);
            assert_eq!(got, n as usize, "{walk:?}");
            assert_eq!(pfns(&fast), pfns(&slow), "{walk:?}: fast and slow differ");
            assert_eq!(
                (d.fast_pages, d.fallbacks, d.backoffs),
                (n, 0, 0),
                "{walk:?}"
            );
            assert_eq!(rec.walk, walk);
            assert_eq!(rec.dropped, 0);
            // Static folding only: no read beyond an entry copy, and the
            // Lockless walk reads nothing but page-table frames.
            assert_eq!(rec.stray_reads().count(), 0, "{walk:?}: {:?}", rec.reads());
            if walk == GupWalk::Lockless {
                assert!(rec.reads().iter().all(|r| addr_in_pgtable_frame(r.addr)));
            } else {
                assert!(rec.own_copy(Level::P4d).is_some());
                assert!(rec.reads().iter().any(|r| rec.is_own_copy(r)));
            }
            release_user_pages(&fast, GupFlags::FOLL_GET);
        }
        set_gup_walk(GupWalk::Lockless);
        release_user_pages(&slow, GupFlags::FOLL_GET);
        teardown(mm);
    });
}

emul_tests!(fast_equals_slow_in_both_walks);

#[test]
fn recorder_lists_each_level_then_the_rechecks() {
    assert_no_leak(|| {
        type A = Emul4k;
        let start = A::TASK_BASE + 5 * P;
        let mm = populated::<A>(start, 1);
        let pmdp = pgtable::follow_pmd(&mm, start).unwrap() as u64;
        let ptep = pgtable::follow_pte(&mm, start).unwrap() as u64;
        let pgdp = A::pgd_offset(&mm.context, start) as u64;
        let mut pages = Vec::new();
        let mut rec = GupRecord::new();
        let got = get_user_pages_fast_traced::<A>(
            start,
            1,
            GupFlags::FOLL_GET,
            &mut pages,
            Some(&mut rec),
        );
        assert_eq!(got, 1);
        let levels: Vec<Level> = rec.reads().iter().map(|r| r.level).collect();
        assert_eq!(
            levels,
            [
                Level::Pgd,
                Level::P4d,
                Level::Pud,
                Level::Pmd,
                Level::Pte,
                Level::Pmd,
                Level::Pte
            ]
        );
        let r = rec.reads();
        // p4d is folded onto the pgd: the same live entry, read twice.
        assert_eq!((r[0].addr, r[1].addr), (pgdp, pgdp));
        assert_eq!(
            (r[3].addr, r[4].addr, r[5].addr, r[6].addr),
            (pmdp, ptep, pmdp, ptep)
        );
        assert_eq!(A::pte_pfn(r[4].value), page::page_to_pfn(pages[0]));
        assert_eq!(rec.irqs_off_at_leaf, Some(A::irqs_disabled()));
        // Without the PMD recheck, one read fewer.
        set_gup_pmd_recheck(false);
        let got = get_user_pages_fast_traced::<A>(
            start,
            1,
            GupFlags::FOLL_GET,
            &mut pages,
            Some(&mut rec),
        );
        set_gup_pmd_recheck(true);
        assert_eq!(got, 1);
        assert_eq!(rec.reads().len(), 6);
        release_user_pages(&pages, GupFlags::FOLL_GET);
        teardown(mm);
    });
}

/// Write-protects the PTE of `addr` in the current mm (a hook run between
/// the try-grab and the recheck).
fn wrprotect_hook<A: Mmu>(addr: u64) {
    let mm = current_mm::<A>().unwrap();
    let ptep = pgtable::follow_pte(mm, addr).unwrap();
    // SAFETY: a live PTE of the current mm; the test is single-threaded.
    unsafe { A::ptep_set_wrprotect(mm, addr, ptep) };
}

/// Sets a bit in the PMD entry of `addr` that the emulated MMU ignores.
fn pmd_touch_hook<A: Mmu>(addr: u64) {
    let mm = current_mm::<A>().unwrap();
    let pmdp = pgtable::follow_pmd(mm, addr).unwrap();
    // A deliberate raw poke, not an entry change: no named helper on purpose.
    // SAFETY: a live PMD entry; bit 1 is no address or present bit of the
    // emulated format.
    unsafe { pmdp.write_volatile(pmdp.read_volatile() ^ 2) };
}

#[test]
fn backs_off_on_a_changed_pte_and_pmd() {
    assert_no_leak(|| {
        type A = Emul4k;
        let start = A::TASK_BASE;
        let mm = populated::<A>(start, 4);
        let page0 = page::pfn_to_page(A::pte_pfn(unsafe {
            // SAFETY: a live PTE of the mm.
            pgtable::read_entry(pgtable::follow_pte(&mm, start).unwrap())
        }));
        let ref0 = page::page_ref_count(page0);
        // The PTE changes between grab and recheck: the reference goes back,
        // the walk stops, slow GUP gets the pages.
        *GRAB_HOOK.lock() = Some(wrprotect_hook::<A>);
        let before = stats();
        let mut pages = Vec::new();
        let got = get_user_pages_fast::<A>(start, 4, GupFlags::FOLL_GET, &mut pages);
        *GRAB_HOOK.lock() = None;
        let d = stats().since(before);
        assert_eq!(got, 4);
        assert_eq!(
            (d.fast_pages, d.backoffs, d.fallbacks, d.slow_pages),
            (0, 1, 1, 4)
        );
        assert_eq!(pages[0] as *const Page, page0 as *const Page);
        assert_eq!(
            page::page_ref_count(page0),
            ref0 + 1,
            "the speculative reference leaked"
        );
        release_user_pages(&pages, GupFlags::FOLL_GET);
        // The PMD entry changes: caught by the recheck only when it is on.
        for recheck in [true, false] {
            set_gup_pmd_recheck(recheck);
            *GRAB_HOOK.lock() = Some(pmd_touch_hook::<A>);
            let before = stats();
            let mut pages = Vec::new();
            // One page: the hook flips the bit once, so the entry differs.
            let got = get_user_pages_fast::<A>(start + P, 1, GupFlags::FOLL_PIN, &mut pages);
            *GRAB_HOOK.lock() = None;
            pmd_touch_hook::<A>(start);
            let d = stats().since(before);
            assert_eq!(got, 1);
            assert_eq!(d.backoffs, u64::from(recheck), "recheck={recheck}");
            assert_eq!(d.fast_pages, u64::from(!recheck));
            unpin_user_pages(&pages);
        }
        set_gup_pmd_recheck(true);
        teardown(mm);
    });
}

#[test]
fn falls_back_for_missing_and_read_only_ptes() {
    assert_no_leak(|| {
        type A = Emul2k;
        let start = A::TASK_BASE;
        let mm = populated::<A>(start, 2);
        // Two more pages mapped but not populated.
        memory::mmap_anon(&mm, start + 2 * P, 2 * P, RW, false).unwrap();
        let before = stats();
        let mut pages = Vec::new();
        assert_eq!(
            get_user_pages_fast::<A>(start, 4, GupFlags::FOLL_GET, &mut pages),
            4
        );
        let d = stats().since(before);
        assert_eq!(
            (d.fast_pages, d.fallbacks, d.backoffs, d.slow_pages),
            (2, 1, 0, 2)
        );
        let mut slow = Vec::new();
        assert_eq!(
            get_user_pages(&mm, start, 4, GupFlags::FOLL_GET, &mut slow),
            Ok(4)
        );
        assert_eq!(pfns(&pages), pfns(&slow));
        release_user_pages(&pages, GupFlags::FOLL_GET);
        release_user_pages(&slow, GupFlags::FOLL_GET);
        // After fork every PTE is read-only: FOLL_WRITE falls back at once,
        // and slow GUP breaks COW, so the parent's pages are its own.
        unuse_mm::<A>();
        let child = memory::dup_mm(&mm).unwrap();
        // SAFETY: detached before exit_mmap.
        unsafe { use_mm(&mm) };
        let before = stats();
        let mut pinned = Vec::new();
        let flags = GupFlags::FOLL_WRITE | GupFlags::FOLL_PIN;
        assert_eq!(get_user_pages_fast::<A>(start, 2, flags, &mut pinned), 2);
        let d = stats().since(before);
        assert_eq!((d.fast_pages, d.fallbacks, d.slow_pages), (0, 1, 2));
        let mut theirs = Vec::new();
        assert_eq!(
            get_user_pages(&child, start, 2, GupFlags::FOLL_GET, &mut theirs),
            Ok(2)
        );
        for i in 0..2 {
            assert_ne!(page::page_to_pfn(pinned[i]), page::page_to_pfn(theirs[i]));
            assert!(page_maybe_dma_pinned(pinned[i]));
            assert!(!page_maybe_dma_pinned(theirs[i]));
        }
        // A second write GUP now finds writable PTEs.
        let mut again = Vec::new();
        assert_eq!(get_user_pages_fast::<A>(start, 2, flags, &mut again), 2);
        assert_eq!(pfns(&again), pfns(&pinned));
        unpin_user_pages(&again);
        unpin_user_pages(&pinned);
        release_user_pages(&theirs, GupFlags::FOLL_GET);
        teardown(mm);
        memory::exit_mmap(*child);
    });
}

#[test]
fn pins_outlive_munmap_and_unpin_frees() {
    assert_no_leak(|| {
        type A = Emul4k;
        let start = A::TASK_BASE;
        let mm = populated::<A>(start, 3);
        let mut pages = Vec::new();
        assert_eq!(
            get_user_pages_fast::<A>(start, 3, GupFlags::FOLL_PIN, &mut pages),
            3
        );
        let free = page_alloc::nr_free_pages();
        memory::munmap(&mm, start, 3 * P).unwrap();
        for (i, p) in pages.iter().enumerate() {
            assert_eq!(page::page_ref_count(p), GUP_PIN_COUNTING_BIAS);
            // SAFETY: the pinned frame is alive; RAM is mapped in the test.
            let v = unsafe { page::page_address(p).cast::<u64>().read() };
            assert_eq!(v, start + i as u64 * P);
        }
        let after_munmap = page_alloc::nr_free_pages();
        unpin_user_pages(&pages);
        assert_eq!(page_alloc::nr_free_pages(), after_munmap + 3);
        assert!(after_munmap >= free, "munmap freed tables only");
        teardown(mm);
    });
}

#[test]
fn slow_gup_reports_no_vma_and_access() {
    assert_no_leak(|| {
        type A = Emul4k;
        let start = A::TASK_BASE;
        let mm = Mm::<A>::new().unwrap();
        memory::mmap_anon(&mm, start, 2 * P, VmFlags::RO, false).unwrap();
        let mut pages = Vec::new();
        assert_eq!(
            get_user_pages(&mm, start, 1, GupFlags::FOLL_WRITE, &mut pages),
            Err(FaultError::AccessDenied)
        );
        assert_eq!(
            get_user_pages(&mm, start + 2 * P, 1, GupFlags::FOLL_GET, &mut pages),
            Err(FaultError::NoVma)
        );
        // Partial: two pages, then the hole.
        assert_eq!(
            get_user_pages(&mm, start, 3, GupFlags::FOLL_GET, &mut pages),
            Ok(2)
        );
        release_user_pages(&pages, GupFlags::FOLL_GET);
        memory::exit_mmap(mm);
    });
}

#[test]
fn grabs_count_on_the_subpage_across_demotion() {
    use crate::mm::huge_memory::{demote_huge_page, hpage_pmd_nr, hpage_pmd_order};
    assert_no_leak(|| {
        // A huge page as collapse installs it: one reference per subpage.
        let order = hpage_pmd_order::<Emul4k>();
        let head = page_alloc::alloc_pages(order).unwrap();
        page_alloc::split_page(head, order);
        page::prep_compound_page(head, order);
        let pfn = page::page_to_pfn(head);
        let tail = page::pfn_to_page(pfn + 3);
        assert!(core::ptr::eq(page::compound_head(tail), head));
        assert!(try_grab_folio(tail, GupFlags::FOLL_PIN));
        assert_eq!(page::page_ref_count(tail), 1 + GUP_PIN_COUNTING_BIAS);
        assert_eq!(page::page_ref_count(head), 1);
        assert!(page_maybe_dma_pinned(tail));
        assert!(!page_maybe_dma_pinned(head));
        // Split or zap: demoted, then the mapping's references go; the
        // pinned subpage alone survives, as an order-0 page.
        demote_huge_page::<Emul4k>(head);
        assert!(core::ptr::eq(page::compound_head(tail), tail));
        for i in 0..hpage_pmd_nr::<Emul4k>() {
            page::put_page(page::pfn_to_page(pfn + i));
        }
        assert_eq!(page::page_ref_count(tail), GUP_PIN_COUNTING_BIAS);
        assert_eq!(page::page_ref_count(head), 0);
        // The unpin releases exactly what the pin took, and frees the page.
        unpin_user_page(tail);
        assert_eq!(page::page_ref_count(tail), 0);
        // A freed page cannot be grabbed.
        assert!(!try_grab_folio(tail, GupFlags::FOLL_GET));
    });
}

/// A PTE read from a freed table holds the free-page poison: the walk
/// stops there without a reference, and the recorder flags the read.
fn poisoned_pte_is_no_page<A: Mmu>() {
    assert_no_leak(|| {
        let start = A::TASK_BASE;
        let mm = populated::<A>(start, 1);
        let ptep = pgtable::follow_pte(&*mm, start).expect("populated");
        // SAFETY: a live PTE of the attached mm; nothing else runs.
        let old = unsafe { pgtable::read_entry(ptep) };
        let head = page::pfn_to_page(A::pte_pfn(old));
        let count = page::page_ref_count(head);
        // A deliberate raw poke (the poison a freed table would hold), undone
        // below: no named helper on purpose.
        // SAFETY: as above; restored below before anything else walks it.
        unsafe { core::ptr::write_volatile(ptep, page_alloc::PAGE_POISON) };
        assert!(A::pte_present(page_alloc::PAGE_POISON));
        assert!(!page::pfn_valid(A::pte_pfn(page_alloc::PAGE_POISON)));
        let mut pages = Vec::new();
        let mut rec = GupRecord::new();
        let (n, backoffs) = lockless_pages_from_mm(
            &mm,
            start,
            start + P,
            GupFlags::FOLL_PIN,
            &mut pages,
            Some(&mut rec),
        );
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(ptep, old) };
        assert_eq!((n, backoffs), (0, 0));
        assert!(pages.is_empty());
        assert_eq!(page::page_ref_count(head), count);
        let r = rec
            .freed_table_read()
            .expect("the poisoned read is flagged");
        assert_eq!((r.level, r.value), (Level::Pte, page_alloc::PAGE_POISON));
        assert_eq!(rec.reads().iter().filter(|r| r.from_freed_table).count(), 1);
        teardown(mm);
    });
}

emul_tests!(poisoned_pte_is_no_page);
