//! Host tests of the page cache, shared file mappings, rmap and writeback,
//! through the emulated architecture's software MMU (faults go through the
//! generic handler, as on the real machines).

use super::*;
use crate::mm::arch::Mmu;
use crate::mm::emul::Emul4k as E;
use crate::mm::memory::{self, MapError};
use crate::mm::mm::{unuse_mm, use_mm, Mm, VmFlags};
use crate::mm::selftest::assert_no_leak;
use crate::mm::{pgtable, rmap, xarray};
use alloc::sync::Arc;

const RW: VmFlags = VmFlags::RW;
const RO: VmFlags = VmFlags::RO;
const P: u64 = PAGE_SIZE;

fn percpu_faults<A: Mmu>() -> u64 {
    crate::percpu::this_cpu::<A>()
        .page_faults
        .load(Ordering::Relaxed)
}

fn pte(mm: &Mm<E>, addr: u64) -> u64 {
    pgtable::follow_pte(mm, addr)
        // SAFETY: a live entry of `mm`.
        .map(|p| unsafe { pgtable::read_entry(p) })
        .unwrap_or(0)
}

fn file(pages: u64) -> Arc<RamFile> {
    Arc::new(RamFile::new::<E>(pages, DirtyAops::Nobuffers))
}

#[test]
fn shared_write_reaches_the_backing_store_after_writeback() {
    assert_no_leak(|| {
        let f = file(4);
        f.mapping.write_backing(P + 8, 0xaaaa);
        let mm = Mm::<E>::new().unwrap();
        let base = E::TASK_BASE;
        memory::mmap_file(&mm, base, 4 * P, RW, &f, 0, false, false).unwrap();
        assert_eq!(f.mapping.nr_mmaps(), 1);
        // SAFETY: unuse_mm before the mm goes.
        unsafe { use_mm(&mm) };
        // A read fault maps the cached page read-only and clean.
        assert_eq!(E::probe_load(base + P + 8), Ok(0xaaaa));
        let p1 = pte(&mm, base + P);
        assert!(E::pte_present(p1) && !E::pte_write(p1) && !E::pte_dirty(p1));
        let page = page::pfn_to_page(E::pte_pfn(p1));
        assert!(!page::PageDirty(page));
        // The store takes a write-protect fault: writable, dirty, tagged.
        let f0 = percpu_faults::<E>();
        E::probe_store(base + P + 8, 0xbbbb).unwrap();
        assert_eq!(percpu_faults::<E>() - f0, 1);
        let p2 = pte(&mm, base + P);
        assert!(E::pte_write(p2) && E::pte_dirty(p2));
        assert!(page::PageDirty(page));
        assert!(f.mapping.i_pages.get_mark(1, XaMark::Dirty));
        assert_eq!(f.mapping.read_backing(P + 8), 0xaaaa, "not written yet");
        // Writeback: mkclean, copy, clean.
        assert_eq!(filemap_write_and_wait::<E>(&f.mapping), 1);
        assert_eq!(f.mapping.read_backing(P + 8), 0xbbbb);
        assert!(!page::PageDirty(page) && !page::PageWriteback(page));
        assert!(!f.mapping.i_pages.marked(XaMark::Dirty));
        assert!(!f.mapping.i_pages.marked(XaMark::Writeback));
        let p3 = pte(&mm, base + P);
        assert!(!E::pte_write(p3) && !E::pte_dirty(p3), "mkclean");
        // The next store faults again and dirties the page again.
        let f1 = percpu_faults::<E>();
        E::probe_store(base + P + 8, 0xcccc).unwrap();
        assert_eq!(
            percpu_faults::<E>() - f1,
            1,
            "the store after mkclean faulted"
        );
        assert!(page::PageDirty(page));
        assert_eq!(filemap_write_and_wait::<E>(&f.mapping), 1);
        assert_eq!(f.mapping.read_backing(P + 8), 0xcccc);
        assert_eq!(filemap_write_and_wait::<E>(&f.mapping), 0, "nothing dirty");
        unuse_mm::<E>();
        assert_eq!(mm.rss_file.load(Ordering::Relaxed), 1);
        memory::exit_mmap(mm);
        assert_eq!(f.mapping.nr_mmaps(), 0);
        assert_eq!(f.mapping.nrpages.load(Ordering::Relaxed), 1);
        assert!(evict_page(&f.mapping, 1));
        assert_eq!(f.mapping.nrpages.load(Ordering::Relaxed), 0);
        assert_eq!(f.mapping.read_backing(P + 8), 0xcccc);
    });
}

#[test]
fn rmap_finds_every_mapping_and_mkclean_protects_them_all() {
    assert_no_leak(|| {
        let f = file(8);
        let a = Mm::<E>::new().unwrap();
        let b = Mm::<E>::new().unwrap();
        let base = E::TASK_BASE;
        // `a` maps pages 0..4 at base; `b` maps pages 2..6 at base + 16 pages.
        memory::mmap_file(&a, base, 4 * P, RW, &f, 0, false, false).unwrap();
        memory::mmap_file(&b, base + 16 * P, 4 * P, RW, &f, 2, false, false).unwrap();
        // SAFETY: unuse_mm before the mms go.
        unsafe { use_mm(&a) };
        E::probe_store(base + 2 * P, 1).unwrap();
        unuse_mm::<E>();
        // SAFETY: as above.
        unsafe { use_mm(&b) };
        assert_eq!(E::probe_load(base + 16 * P), Ok(1), "the same page");
        E::probe_store(base + 16 * P + 8, 2).unwrap();
        unuse_mm::<E>();
        let page = page::pfn_to_page(E::pte_pfn(pte(&a, base + 2 * P)));
        assert_eq!(page::page_mapcount(page), 2);
        assert_eq!(page::page_ref_count(page), 3, "cache + two PTEs");
        let mut maps = rmap::page_mappings::<E>(page);
        maps.sort();
        let mut want = [
            (a.rmap_addr(), base + 2 * P),
            (b.rmap_addr(), base + 16 * P),
        ];
        want.sort();
        assert_eq!(maps, want);
        // mkclean under the page lock: both PTEs read-only and clean.
        page::lock_page(page);
        assert!(rmap::folio_mkclean::<E>(page), "the PTEs were dirty");
        page::unlock_page(page);
        for (mm, addr) in [(&a, base + 2 * P), (&b, base + 16 * P)] {
            let e = pte(mm, addr);
            assert!(E::pte_present(e) && !E::pte_write(e) && !E::pte_dirty(e));
        }
        assert!(page::PageDirty(page), "the dirty bits reached the page");
        page::lock_page(page);
        assert!(!rmap::folio_mkclean::<E>(page), "nothing dirty any more");
        page::unlock_page(page);
        // Unmapped: mkclean returns at once.
        memory::munmap(&a, base, 4 * P).unwrap();
        memory::madvise_dontneed(&b, base + 16 * P, 4 * P).unwrap();
        assert_eq!(page::page_mapcount(page), 0);
        assert!(rmap::page_mappings::<E>(page).is_empty());
        page::lock_page(page);
        assert!(!rmap::folio_mkclean::<E>(page));
        page::unlock_page(page);
        assert_eq!(f.mapping.nr_mmaps(), 1, "b's VMA stays after MADV_DONTNEED");
        memory::exit_mmap(a);
        memory::exit_mmap(b);
        assert_eq!(filemap_write_and_wait::<E>(&f.mapping), 1);
        assert_eq!(f.mapping.read_backing(2 * P), 1);
        assert_eq!(f.mapping.read_backing(2 * P + 8), 2);
    });
}

#[test]
fn zap_of_a_dirty_pte_dirties_the_page() {
    assert_no_leak(|| {
        let f = file(2);
        let mm = Mm::<E>::new().unwrap();
        let base = E::TASK_BASE;
        memory::mmap_file(&mm, base, 2 * P, RW, &f, 0, false, false).unwrap();
        // SAFETY: unuse_mm before the mm goes.
        unsafe { use_mm(&mm) };
        E::probe_store(base, 7).unwrap();
        let page = page::pfn_to_page(E::pte_pfn(pte(&mm, base)));
        // Clean the page flag behind the PTE's back: only the PTE is dirty.
        assert!(page::TestClearPageDirty(page));
        memory::madvise_dontneed(&mm, base, 2 * P).unwrap();
        assert!(page::PageDirty(page), "the zap carried the PTE's dirty bit");
        assert_eq!(page::page_mapcount(page), 0);
        assert_eq!(mm.rss_file.load(Ordering::Relaxed), 0);
        // The data stays in the page cache.
        assert_eq!(E::probe_load(base), Ok(7));
        unuse_mm::<E>();
        memory::exit_mmap(mm);
        assert_eq!(filemap_write_and_wait::<E>(&f.mapping), 1);
        assert_eq!(f.mapping.read_backing(0), 7);
    });
}

#[test]
fn mprotect_splits_write_protects_and_merges_back() {
    assert_no_leak(|| {
        let f = file(4);
        let mm = Mm::<E>::new().unwrap();
        let base = E::TASK_BASE;
        memory::mmap_anon(&mm, base, 4 * P, RW, true).unwrap();
        memory::mmap_file(&mm, base + 4 * P, 4 * P, RW, &f, 0, false, false).unwrap();
        // SAFETY: unuse_mm before the mm goes.
        unsafe { use_mm(&mm) };
        for i in 0..8 {
            E::probe_store(base + i * P, i).unwrap();
        }
        memory::mprotect(&mm, base + 2 * P, 4 * P, RO).unwrap();
        assert_eq!(
            mm.mmap_lock.read().len(),
            4,
            "anon RW, anon RO, file RO, file RW"
        );
        assert_eq!(f.mapping.nr_mmaps(), 2);
        for i in 2..6 {
            assert!(
                !E::pte_write(pte(&mm, base + i * P)),
                "page {i} still writable"
            );
            let err = E::probe_store(base + i * P, 0).unwrap_err();
            assert!(err.protection && err.write);
            assert_eq!(E::probe_load(base + i * P), Ok(i));
        }
        assert!(E::pte_write(pte(&mm, base + P)));
        assert!(E::pte_write(pte(&mm, base + 6 * P)));
        memory::mprotect(&mm, base + 2 * P, 4 * P, RW).unwrap();
        assert_eq!(mm.mmap_lock.read().len(), 2, "merged back");
        assert_eq!(f.mapping.nr_mmaps(), 1);
        E::probe_store(base + 3 * P, 33).unwrap();
        E::probe_store(base + 5 * P, 55).unwrap();
        assert_eq!(
            memory::mprotect(&mm, base + 6 * P, 4 * P, RO),
            Err(MapError::Unmapped)
        );
        unuse_mm::<E>();
        memory::exit_mmap(mm);
        assert_eq!(filemap_write_and_wait::<E>(&f.mapping), 4);
        assert_eq!(f.mapping.read_backing(P), 55);
    });
}

#[test]
fn map_fixed_replaces_and_fork_shares_file_pages() {
    assert_no_leak(|| {
        let f = file(4);
        let parent = Mm::<E>::new().unwrap();
        let base = E::TASK_BASE;
        memory::mmap_anon(&parent, base, 8 * P, RW, true).unwrap();
        assert_eq!(parent.rss_anon.load(Ordering::Relaxed), 8);
        assert_eq!(
            memory::mmap_file(&parent, base + 2 * P, 4 * P, RW, &f, 0, false, false),
            Err(MapError::Exists)
        );
        assert_eq!(
            memory::mmap_file(&parent, base + 2 * P, 4 * P, RW, &f, 1, true, false),
            Err(MapError::BadRange),
            "beyond the end of the file"
        );
        memory::mmap_file(&parent, base + 2 * P, 4 * P, RW, &f, 0, true, true).unwrap();
        assert_eq!(parent.rss_anon.load(Ordering::Relaxed), 4);
        assert_eq!(parent.rss_file.load(Ordering::Relaxed), 4, "populated");
        assert!(
            !E::pte_write(pte(&parent, base + 2 * P)),
            "populated read-only"
        );
        // SAFETY: unuse_mm before the mms go.
        unsafe { use_mm(&parent) };
        E::probe_store(base + 2 * P, 5).unwrap();
        E::probe_store(base, 6).unwrap();
        unuse_mm::<E>();
        let anon = page::pfn_to_page(E::pte_pfn(pte(&parent, base)));
        let child = memory::dup_mm(&parent).unwrap();
        assert_eq!(f.mapping.nr_mmaps(), 2);
        assert_eq!(page::page_mapcount(anon), 2, "anon page shared by fork");
        assert_eq!(rmap::page_mappings::<E>(anon).len(), 2);
        // SAFETY: as above.
        unsafe { use_mm(&*child) };
        assert_eq!(
            E::probe_load(base + 2 * P),
            Ok(5),
            "the child sees the file"
        );
        E::probe_store(base + 3 * P, 9).unwrap();
        E::probe_store(base, 60).unwrap();
        unuse_mm::<E>();
        assert_eq!(page::page_mapcount(anon), 1, "COW broke the sharing");
        assert_eq!(rmap::page_mappings::<E>(anon).len(), 1);
        // SAFETY: as above.
        unsafe { use_mm(&parent) };
        assert_eq!(E::probe_load(base + 3 * P), Ok(9), "shared, not copied");
        assert_eq!(E::probe_load(base), Ok(6), "private, copied");
        unuse_mm::<E>();
        memory::exit_mmap(*child);
        memory::exit_mmap(parent);
        assert_eq!(f.mapping.nr_mmaps(), 0);
        assert_eq!(filemap_write_and_wait::<E>(&f.mapping), 2);
    });
}

#[test]
fn dirtying_a_page_missing_from_its_tree_is_reported() {
    assert_no_leak(|| {
        let f = file(2);
        let page = read_cache_page(&f.mapping, 1).unwrap();
        assert_eq!(f.mapping.nrpages.load(Ordering::Relaxed), 1);
        // The row-7 state: the page points to the mapping, its slot is empty.
        let slot = f.mapping.i_pages.lock().erase(1);
        assert!(slot.is_some());
        let before = xarray::nr_tag_on_missing_entry();
        assert!(set_page_dirty(page));
        assert!(xarray::nr_tag_on_missing_entry() > before, "reported");
        assert!(!f.mapping.i_pages.marked(XaMark::Dirty));
        // A no-writeback address space tags nothing, so reports nothing.
        let g = Arc::new(RamFile::new::<E>(1, DirtyAops::NoWriteback));
        let q = read_cache_page(&g.mapping, 0).unwrap();
        assert!(set_page_dirty(q));
        assert!(page::PageDirty(q) && !g.mapping.i_pages.marked(XaMark::Dirty));
        // Put the slot back and tidy up.
        assert!(f.mapping.i_pages.lock().insert(1, page).is_ok());
        page::put_page(page);
        page::put_page(q);
        drop(g);
        assert!(!evict_page(&f.mapping, 1), "dirty pages stay");
    });
}
