//! Host tests of the emulated arches themselves: page-table fragments in
//! every policy, the refcount policies against speculative references, and
//! faults, COW and unmap through the software MMU.

use super::*;
use crate::mm::frag::{self, FragPolicy};
use crate::mm::memmap::test_mem;
use crate::mm::memory;
use crate::mm::mm::{unuse_mm, use_mm, VmFlags};
use crate::mm::selftest::assert_no_leak;
use std::collections::HashSet;

const RW: VmFlags = VmFlags {
    read: true,
    write: true,
};

/// Maps `blocks` PMD blocks, touches one page in each (one PTE table each),
/// and returns the distinct frames holding the PTE tables.
fn touch_blocks<A: Mmu>(mm: &Mm<A>, blocks: u64) -> HashSet<u64> {
    memory::mmap_anon(mm, A::TASK_BASE, blocks * A::PMD_SIZE, RW, false).unwrap();
    // SAFETY: the test tears the mm down after unuse_mm.
    unsafe { use_mm(mm) };
    let mut frames = HashSet::new();
    for b in 0..blocks {
        let a = A::TASK_BASE + b * A::PMD_SIZE;
        A::probe_store(a, a).unwrap();
        assert_eq!(A::probe_load(a), Ok(a));
        let ptep = crate::mm::pgtable::follow_pte(mm, a).unwrap();
        frames.insert(ptep as u64 >> 12);
    }
    unuse_mm::<A>();
    frames
}

fn fragments_in_every_policy<A: Mmu>() {
    let _m = test_mem::setup();
    for pol in FragPolicy::ALL {
        frag::set_policy(pol);
        let free = page_alloc::nr_free_pages();
        let bad = page_alloc::nr_bad_pages();
        let mm = Mm::<A>::new().unwrap();
        let blocks = 40;
        let frames = touch_blocks(&mm, blocks);
        let per_frame = (PAGE_SIZE as usize / A::PTE_TABLE_SIZE).max(1) as u64;
        let expected = if pol == FragPolicy::OnePerFrame {
            blocks
        } else {
            blocks.div_ceil(per_frame)
        };
        assert_eq!(
            frames.len() as u64,
            expected,
            "{}: PTE-table frames",
            pol.name()
        );
        assert_eq!(mm.rss_anon.load(Ordering::Relaxed) as u64, blocks);
        memory::exit_mmap(mm);
        assert_eq!(
            page_alloc::nr_free_pages(),
            free,
            "{}: frames leaked",
            pol.name()
        );
        assert_eq!(
            page_alloc::nr_bad_pages(),
            bad,
            "{}: bad page state",
            pol.name()
        );
    }
    frag::set_policy(FragPolicy::FragCounter);
}

#[test]
fn fragments_4k_tables_from_order4_blocks() {
    assert_eq!(frag::frags_per_block::<Emul4k>(), 16);
    fragments_in_every_policy::<Emul4k>();
}

#[test]
fn fragments_2k_tables_two_per_frame() {
    assert_eq!(frag::frags_per_block::<Emul2k>(), 2);
    fragments_in_every_policy::<Emul2k>();
}

#[test]
fn set_page_count_policy_counts_on_the_refcount() {
    let _m = test_mem::setup();
    frag::set_policy(FragPolicy::SetPageCount);
    let mm = Mm::<Emul4k>::new().unwrap();
    let t = frag::pte_alloc_one(&mm).unwrap();
    let head = page::phys_to_page(t);
    assert_eq!(
        page::page_ref_count(head),
        16,
        "set_page_count(head, fragments)"
    );
    // A speculative reference (a pfn scanner) between carve and free is
    // counted on the same field: the fix's separate counter is unaffected.
    frag::pte_free(&mm, t);
    frag::pte_frag_destroy(&mm);
    Emul4k::destroy_context(&mm.context);
    frag::set_policy(FragPolicy::FragCounter);
    let mm = Mm::<Emul4k>::new().unwrap();
    let t = frag::pte_alloc_one(&mm).unwrap();
    let head = page::phys_to_page(t);
    assert_eq!(page::page_ref_count(head), 1);
    assert_eq!(head.pt_frag_refcount.load(Ordering::Relaxed), 16);
    frag::pte_free(&mm, t);
    frag::pte_frag_destroy(&mm);
    Emul4k::destroy_context(&mm.context);
}

#[test]
fn xor_top_bits_leave_the_low_count_to_speculative_refs() {
    assert_no_leak(|| {
        frag::set_policy(FragPolicy::XorTopBits);
        let mm = Mm::<Emul2k>::new().unwrap();
        let a = frag::pte_alloc_one(&mm).unwrap();
        let b = frag::pte_alloc_one(&mm).unwrap();
        let head = page::phys_to_page(a);
        assert_eq!(
            page::phys_to_page(b) as *const _,
            head as *const _,
            "two halves of one frame"
        );
        // A speculative reference in between touches only the low bits.
        assert!(page::get_page_unless_zero(head));
        frag::pte_free(&mm, a);
        frag::pte_free(&mm, b);
        assert_eq!(
            page::page_ref_count(head),
            1,
            "the speculative reference survives"
        );
        page::put_page(head);
        frag::pte_frag_destroy(&mm);
        Emul2k::destroy_context(&mm.context);
        frag::set_policy(FragPolicy::FragCounter);
    });
}

#[test]
fn fault_cow_and_unmap_through_the_software_mmu() {
    assert_no_leak(|| {
        let parent = Mm::<Emul4k>::new().unwrap();
        let base = Emul4k::TASK_BASE;
        memory::mmap_anon(&parent, base, 4 * PAGE_SIZE, RW, false).unwrap();
        // SAFETY: torn down after unuse_mm.
        unsafe { use_mm(&parent) };
        for i in 0..4 {
            Emul4k::probe_store(base + i * PAGE_SIZE, i).unwrap();
        }
        unuse_mm::<Emul4k>();
        let child = memory::dup_mm(&parent).unwrap();
        // SAFETY: as above.
        unsafe { use_mm(&parent) };
        Emul4k::probe_store(base, 100).unwrap();
        unuse_mm::<Emul4k>();
        // SAFETY: as above.
        unsafe { use_mm(&child) };
        assert_eq!(
            Emul4k::probe_load(base),
            Ok(0),
            "the child keeps the old value"
        );
        assert_eq!(Emul4k::probe_load(base + 3 * PAGE_SIZE), Ok(3));
        unuse_mm::<Emul4k>();
        // SAFETY: as above.
        unsafe { use_mm(&parent) };
        assert_eq!(Emul4k::probe_load(base), Ok(100));
        memory::munmap(&parent, base, 4 * PAGE_SIZE).unwrap();
        let err = Emul4k::probe_load(base).unwrap_err();
        assert!(!err.protection && !err.write);
        assert!(
            Emul4k::probe_store(base + (1 << 40), 1).is_err(),
            "no VMA there"
        );
        unuse_mm::<Emul4k>();
        memory::exit_mmap(*child);
        memory::exit_mmap(parent);
    });
}

#[test]
fn mmap_rejects_bad_ranges() {
    let _m = test_mem::setup();
    let mm = Mm::<Emul4k>::new().unwrap();
    let b = Emul4k::TASK_BASE;
    assert_eq!(
        memory::mmap_anon(&mm, b + 1, PAGE_SIZE, RW, false),
        Err(memory::MapError::BadRange)
    );
    assert_eq!(
        memory::mmap_anon(&mm, 0, PAGE_SIZE, RW, false),
        Err(memory::MapError::BadRange)
    );
    memory::mmap_anon(&mm, b, 2 * PAGE_SIZE, RW, false).unwrap();
    assert_eq!(
        memory::mmap_anon(&mm, b + PAGE_SIZE, PAGE_SIZE, RW, false),
        Err(memory::MapError::Exists)
    );
    memory::exit_mmap(mm);
}
