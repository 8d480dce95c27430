//! A pfn scanner: walks physical frames and takes speculative references, as
//! compaction's `isolate_migratepages_block` (and memory-failure, page_idle, …)
//! do, on any CPU.
//!
//! For each frame it tries `get_page_unless_zero`; on success it inspects the
//! descriptor (flags, whether it is a page table) and drops the reference with
//! `put_page`. A speculative reference is legal on any in-use frame at any time,
//! which is exactly what code that rewrites a refcount with `set_page_count`
//! forgets (seed 002): the scanner is the speculative referrer of the
//! `ptfrag-refcount` row.
//!
//! Invariant: the scanner never writes a descriptor except through the
//! reference-count API, so any corruption it reveals is someone else's.

use super::page::{self, Page};
use crate::race::point::{points, race_point};
use crate::Arch;
use core::sync::atomic::{AtomicU64, Ordering};

/// What one or more scan passes saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Frames visited.
    pub scanned: u64,
    /// Frames on which a speculative reference was taken.
    pub referenced: u64,
    /// Of those, page tables.
    pub pgtables: u64,
}

impl ScanStats {
    /// Adds another pass's counts.
    pub fn add(&mut self, o: ScanStats) {
        self.scanned += o.scanned;
        self.referenced += o.referenced;
        self.pgtables += o.pgtables;
    }
}

/// Total speculative references taken, over all CPUs.
pub static SPECULATIVE_REFS: AtomicU64 = AtomicU64::new(0);

/// One pass over `[start_pfn, end_pfn)`; `inspect` sees each frame while the
/// scanner holds its speculative reference.
pub fn scan_pass<A: Arch>(
    start_pfn: u64,
    end_pfn: u64,
    mut inspect: impl FnMut(&Page),
) -> ScanStats {
    let mut stats = ScanStats::default();
    for pfn in start_pfn..end_pfn.min(page::max_pfn()) {
        if !page::pfn_valid(pfn) {
            continue;
        }
        stats.scanned += 1;
        let p = page::pfn_to_page(pfn);
        if !page::get_page_unless_zero(p) {
            continue;
        }
        stats.referenced += 1;
        race_point::<A>(&points::PFN_SCAN_AFTER_GET, pfn);
        if page::PageTable(p) {
            stats.pgtables += 1;
        }
        inspect(p);
        page::put_page(p);
        race_point::<A>(&points::PFN_SCAN_AFTER_PUT, pfn);
    }
    SPECULATIVE_REFS.fetch_add(stats.referenced, Ordering::Relaxed);
    stats
}
