//! Detectors: checks that read state after (or during) an iteration and say
//! which invariant broke. They observe; they never make a race happen.
//!
//! - [`bad_page_since`]: a bad page state reported by the allocator's free
//!   checks or by the refcount helpers since a sequence number — a page freed
//!   while locked or still mapped, a refcount that would go below zero
//!   (`put_page` on a zero count), `get_page` on a freed page, a poisoned
//!   frame modified when it was handed out again;
//! - [`poisoned_frame_written`]: a free, poisoned frame whose contents
//!   changed (a store through a stale translation or a freed table);
//! - [`poisoned_descriptor_written`]: a free page whose descriptor lost its
//!   poison (`_mapcount` / `mapping`) or carries flags other than the
//!   allocator's own (`PG_poisoned`, `PG_buddy`) (a write to a freed
//!   `struct page`, e.g. an unlock);
//! - [`refcount_underflow`]: a negative `_refcount`;
//! - [`table_freed_while_linked`]: a page-table frame that is free while an
//!   entry still points at it;
//! - [`read_of_freed_table`], [`recorded_read_of_freed_table`]: a lockless
//!   walker read an entry from a frame
//!   that was free (poisoned) when it read it — the walker records each
//!   entry address it reads and checks it right after the read.
//!
//! A row combines these in its `detect` function; the runner always adds
//! [`bad_page_since`].

use crate::mm::page::{
    self, pfn_to_page, pfn_valid, PG_buddy, PG_poisoned, MAPCOUNT_POISON, MAPPING_POISON,
};
use crate::mm::page_alloc;
use alloc::{format, string::String};
use core::sync::atomic::Ordering;

/// What a detector saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The broken invariant, in words.
    pub invariant: String,
    /// The frame concerned.
    pub pfn: Option<u64>,
    /// The virtual address concerned.
    pub vaddr: Option<u64>,
    /// The CPU that saw it, if known.
    pub cpu: Option<usize>,
}

impl Finding {
    /// A finding about frame `pfn`.
    pub fn frame(invariant: String, pfn: u64) -> Self {
        Self {
            invariant,
            pfn: Some(pfn),
            vaddr: None,
            cpu: None,
        }
    }

    /// The same finding with its virtual address.
    pub fn at(mut self, vaddr: u64) -> Self {
        self.vaddr = Some(vaddr);
        self
    }
}

/// The first bad page state reported since `seq` ([`page_alloc::nr_bad_pages`]
/// before the iteration).
pub fn bad_page_since(seq: u64) -> Option<Finding> {
    page_alloc::bad_page_reports_since(seq)
        .into_iter()
        .next()
        .map(|r| Finding {
            invariant: format!(
                "bad page state at free: {}{} (flags={:#x}({}) refcount={} mapcount={})",
                r.reason,
                if r.bad_flags != 0 {
                    format!(
                        " bad_flags={:#x}({})",
                        r.bad_flags,
                        page::FlagNames(r.bad_flags)
                    )
                } else {
                    String::new()
                },
                r.flags,
                page::FlagNames(r.flags),
                r.refcount,
                r.mapcount
            ),
            pfn: Some(r.pfn),
            vaddr: None,
            cpu: Some(r.cpu),
        })
}

/// A free, poisoned frame `pfn` whose contents were modified.
pub fn poisoned_frame_written(pfn: u64) -> Option<Finding> {
    page_alloc::check_poison(pfn).err().map(|off| {
        Finding::frame(
            format!("use after free: poisoned frame modified at offset {off:#x}"),
            pfn,
        )
    })
}

/// A free page whose descriptor was written after it was freed.
pub fn poisoned_descriptor_written(pfn: u64) -> Option<Finding> {
    if !pfn_valid(pfn) {
        return None;
    }
    let p = pfn_to_page(pfn);
    if !p.test_flag(PG_poisoned) {
        return None;
    }
    // The allocator's own marks: poisoned, and the head of a free block.
    let flags = p.flags() & !(PG_poisoned | PG_buddy);
    let mapcount = p._mapcount.load(Ordering::Acquire);
    let mapping = p.mapping.load(Ordering::Acquire);
    (flags != 0 || mapcount != MAPCOUNT_POISON || mapping != MAPPING_POISON).then(|| {
        Finding::frame(
            format!(
                "use after free: freed page descriptor written (flags={flags:#x}({}) _mapcount={mapcount:#x} mapping={mapping:#x})",
                page::FlagNames(flags)
            ),
            pfn,
        )
    })
}

/// A page whose `_refcount` went below zero.
pub fn refcount_underflow(pfn: u64) -> Option<Finding> {
    if !pfn_valid(pfn) {
        return None;
    }
    let c = pfn_to_page(pfn)._refcount.load(Ordering::Acquire);
    (c < 0).then(|| Finding::frame(format!("refcount underflow: _refcount={c}"), pfn))
}

/// A page-table frame `pfn` that is free (poisoned, count 0) while `linked`
/// (an entry of a live table still points at it).
pub fn table_freed_while_linked(pfn: u64, linked: bool) -> Option<Finding> {
    (linked && page_alloc::page_is_poisoned(pfn)).then(|| {
        Finding::frame(
            "page-table frame freed while still linked from a live entry".into(),
            pfn,
        )
    })
}

/// A page-table walker read an entry at physical address `entry_pa` from a
/// frame that is free (poisoned): call right after the read, while the
/// frame's state is still the one the read saw.
pub fn read_of_freed_table(entry_pa: u64) -> Option<Finding> {
    let pfn = entry_pa >> crate::mm::PAGE_SHIFT;
    page_alloc::page_is_poisoned(pfn).then(|| {
        Finding::frame(
            format!("page-table entry read from a freed (poisoned) frame at {entry_pa:#x}"),
            pfn,
        )
    })
}

/// A lockless walker's recorded read of the `what` entry at physical address
/// `entry_pa`, judged at the time of the read to be from a freed page-table
/// frame (the frame was no longer a page table just before the read, or the
/// read returned the free-page poison): the finding, with the value read.
pub fn recorded_read_of_freed_table(entry_pa: u64, value: u64, what: &str) -> Finding {
    let pfn = entry_pa >> crate::mm::PAGE_SHIFT;
    Finding::frame(
        format!(
            "page-table entry read from a freed frame: {what} entry at {entry_pa:#x} read as {value:#x}{}",
            if value == page_alloc::PAGE_POISON {
                " (the free-page poison)"
            } else {
                " (the frame was no longer a page table)"
            }
        ),
        pfn,
    )
}
