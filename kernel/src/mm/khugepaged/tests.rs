//! Host tests of collapse on the emulated arches (4K and 2K tables): every
//! byte kept, aborts on a pin, the preallocated block, unsuitable blocks,
//! and `do_wp_page` reuse or copy.

use super::*;
use crate::mm::emul::{emul_tests, Emul4k};
use crate::mm::memory;
use crate::mm::mm::{unuse_mm, use_mm, VmFlags};
use crate::mm::selftest::assert_no_leak;

fn policy(ipi_sync: bool, table_free: TableFree) -> CollapsePolicy {
    CollapsePolicy {
        ipi_sync,
        table_free,
    }
}

fn pattern(a: u64) -> u64 {
    a.rotate_left(17) ^ 0x7a11_c011_a95e
}

/// One block mapped and filled word by word through the software MMU.
fn filled<A: Mmu>() -> Mm<A> {
    let mm = Mm::<A>::new().unwrap();
    memory::mmap_anon(&mm, A::TASK_BASE, A::PMD_SIZE, VmFlags::RW, false).unwrap();
    // SAFETY: unused again before the mm is torn down.
    unsafe { use_mm(&mm) };
    for a in (A::TASK_BASE..A::TASK_BASE + A::PMD_SIZE).step_by(64) {
        A::probe_store(a, pattern(a)).unwrap();
    }
    unuse_mm::<A>();
    mm
}

fn all_intact<A: Mmu>(mm: &Mm<A>) -> bool {
    // SAFETY: unused again before the mm is torn down.
    unsafe { use_mm(mm) };
    let ok = (A::TASK_BASE..A::TASK_BASE + A::PMD_SIZE)
        .step_by(64)
        .all(|a| A::probe_load(a) == Ok(pattern(a)));
    unuse_mm::<A>();
    ok
}

/// Runs `body` on a [`filled`] block, checks that it kept every byte and
/// tears the mm down; panics on a leak.
fn on_filled_block<A: Mmu>(body: impl FnOnce(&Mm<A>)) {
    assert_no_leak(|| {
        let mm = filled::<A>();
        body(&mm);
        assert!(all_intact(&mm));
        memory::exit_mmap(mm);
    });
}

fn pfn_of<A: Mmu>(mm: &Mm<A>, a: u64) -> u64 {
    // SAFETY: a live entry of `mm`.
    A::pte_pfn(unsafe { pgtable::read_entry(pgtable::follow_pte(mm, a).unwrap()) })
}

/// Collapse maps the block through a fresh table (no PMD leaves on the
/// emulated arches), keeps every byte and frees the old frames and table.
fn collapse_keeps_every_byte<A: Mmu>() {
    on_filled_block::<A>(|mm| {
        let old_pfn = pfn_of(mm, A::TASK_BASE);
        let rep = collapse_huge_page(
            mm,
            A::TASK_BASE + 5 * PAGE_SIZE,
            &policy(true, TableFree::Immediate),
        );
        assert_eq!(rep.result, CollapseResult::Collapsed);
        assert!(rep.pmd_cleared_ns <= rep.pin_check_ns && rep.pin_check_ns <= rep.done_ns);
        let new_pfn = pfn_of(mm, A::TASK_BASE);
        assert_ne!(new_pfn, old_pfn);
        assert_eq!(
            page::page_ref_count(page::pfn_to_page(old_pfn)),
            0,
            "old frame freed"
        );
        for i in 0..hpage_pmd_nr::<A>() {
            assert_eq!(
                pfn_of(mm, A::TASK_BASE + i * PAGE_SIZE),
                new_pfn + i,
                "contiguous"
            );
        }
        let ptep = pgtable::follow_pte(mm, A::TASK_BASE).unwrap();
        assert_ne!(ptep as u64 & !(A::PTE_TABLE_SIZE as u64 - 1), rep.old_table);
        assert!(all_intact(mm));
        assert_eq!(
            mm.rss_anon.load(Ordering::Relaxed) as u64,
            hpage_pmd_nr::<A>()
        );
        // A collapsed block collapses again.
        let rep = collapse_huge_page(mm, A::TASK_BASE, &policy(false, TableFree::IpiSync));
        assert_eq!(rep.result, CollapseResult::Collapsed);
    });
}

/// A page with a pin's references aborts the collapse; the mapping is
/// back, every byte intact; after the unpin the collapse works.
fn collapse_aborts_on_pin<A: Mmu>() {
    on_filled_block::<A>(|mm| {
        let victim = A::TASK_BASE + 7 * PAGE_SIZE;
        let pinned = page::pfn_to_page(pfn_of(mm, victim));
        page::page_ref_add(pinned, GUP_PIN_COUNTING_BIAS);
        let old_pfn = pfn_of(mm, A::TASK_BASE);
        let rep = collapse_huge_page(mm, A::TASK_BASE, &policy(true, TableFree::Immediate));
        assert_eq!(
            rep.result,
            CollapseResult::Aborted(CollapseAbort::Referenced(victim, 1 + GUP_PIN_COUNTING_BIAS))
        );
        assert_eq!(pfn_of(mm, A::TASK_BASE), old_pfn, "the old mapping is back");
        assert!(!page::PageLocked(pinned));
        assert!(all_intact(mm));
        page::page_ref_sub(pinned, GUP_PIN_COUNTING_BIAS);
        let rep = collapse_huge_page(mm, A::TASK_BASE, &policy(true, TableFree::Immediate));
        assert_eq!(rep.result, CollapseResult::Collapsed);
    });
}

/// A collapse the pin check aborts leaves its block in `hpage`; the
/// next collapse maps exactly that block and empties `hpage`.
fn prealloc_block_kept_and_used<A: Mmu>() {
    on_filled_block::<A>(|mm| {
        let pinned = page::pfn_to_page(pfn_of(mm, A::TASK_BASE));
        page::page_ref_add(pinned, GUP_PIN_COUNTING_BIAS);
        let mut hpage = None;
        let p = policy(true, TableFree::Immediate);
        let rep = collapse_huge_page_prealloc(mm, A::TASK_BASE, &p, &mut hpage);
        assert!(matches!(
            rep.result,
            CollapseResult::Aborted(CollapseAbort::Referenced(..))
        ));
        let head = hpage.expect("the aborted collapse keeps its block");
        page::page_ref_sub(pinned, GUP_PIN_COUNTING_BIAS);
        let rep = collapse_huge_page_prealloc(mm, A::TASK_BASE, &p, &mut hpage);
        assert_eq!(rep.result, CollapseResult::Collapsed);
        assert!(hpage.is_none(), "the collapse used the block");
        assert_eq!(pfn_of(mm, A::TASK_BASE), page::page_to_pfn(head));
    });
}

emul_tests!(
    collapse_keeps_every_byte,
    collapse_aborts_on_pin,
    prealloc_block_kept_and_used,
);

/// A missing page, a page shared with a fork, or no suitable VMA: no
/// collapse, nothing changed.
#[test]
fn collapse_refuses_unsuitable_blocks() {
    type E = Emul4k;
    assert_no_leak(|| {
        let mm = filled::<E>();
        memory::madvise_dontneed(&mm, E::TASK_BASE + 3 * PAGE_SIZE, PAGE_SIZE).unwrap();
        let p = policy(true, TableFree::Immediate);
        assert_eq!(
            collapse_huge_page(&mm, E::TASK_BASE, &p).result,
            CollapseResult::Aborted(CollapseAbort::PteNotPresent(E::TASK_BASE + 3 * PAGE_SIZE))
        );
        // SAFETY: unused before teardown.
        unsafe { use_mm(&mm) };
        E::probe_store(E::TASK_BASE + 3 * PAGE_SIZE, 1).unwrap();
        unuse_mm::<E>();
        let child = memory::dup_mm(&mm).unwrap();
        assert_eq!(
            collapse_huge_page(&mm, E::TASK_BASE, &p).result,
            CollapseResult::Aborted(CollapseAbort::Shared(E::TASK_BASE))
        );
        memory::exit_mmap(*child);
        assert_eq!(
            collapse_huge_page(&mm, E::TASK_BASE + E::PMD_SIZE, &p).result,
            CollapseResult::Aborted(CollapseAbort::NoSuitableVma)
        );
        memory::exit_mmap(mm);
    });
}

/// do_wp_page reuses a write-protected page with one reference and one
/// mapping, in both unlock orders, and leaves it unlocked; with an extra
/// reference it copies.
#[test]
fn wp_reuse_and_copy() {
    type E = Emul4k;
    assert_no_leak(|| {
        let mm = Mm::<E>::new().unwrap();
        let a = E::TASK_BASE;
        memory::mmap_anon(&mm, a, PAGE_SIZE, VmFlags::RW, false).unwrap();
        // SAFETY: unused before teardown.
        unsafe { use_mm(&mm) };
        E::probe_store(a, 1).unwrap();
        let wrprotect = || {
            let ptep = pgtable::follow_pte(&mm, a).unwrap();
            // SAFETY: a live PTE; one CPU.
            unsafe { E::ptep_set_wrprotect(&mm, a, ptep) };
        };
        for order in [memory::WpUnlock::AfterPtl, memory::WpUnlock::BeforePtl] {
            let old = memory::set_wp_unlock_order(order);
            wrprotect();
            let pfn = pfn_of(&mm, a);
            E::probe_store(a, 2).unwrap();
            memory::set_wp_unlock_order(old);
            assert_eq!(pfn_of(&mm, a), pfn, "{order:?}: reused");
            assert!(!page::PageLocked(page::pfn_to_page(pfn)));
        }
        wrprotect();
        let pfn = pfn_of(&mm, a);
        let p = page::pfn_to_page(pfn);
        page::get_page(p);
        E::probe_store(a, 3).unwrap();
        assert_ne!(pfn_of(&mm, a), pfn, "copied with an extra reference");
        assert_eq!(E::probe_load(a), Ok(3));
        unuse_mm::<E>();
        assert!(!page::PageLocked(p));
        page::put_page(p);
        memory::exit_mmap(mm);
    });
}
