//! The in-kernel self-test suites of the memory model, one file per KTAP
//! suite, beside the helpers they share.
//!
//! | file | suite | what it covers |
//! |---|---|---|
//! | [`page`] | `mm_page` | RAM discovery, the frame database, the buddy allocator and its detectors |
//! | [`core`] | `mm` | address spaces, real faults, COW, young/dirty bits, stale TLBs, the pfn scanner, the swap cache |
//! | [`skey`] | `skey` | s390x storage keys |
//! | [`gather`] | `gather` | the mmu_gather and its policies, RCU-deferred table freeing |
//! | [`tlb`] | `tlb` | the TLB flush API and its strategies |
//! | [`gup`] | `gup` | slow GUP, GUP-fast, the walk knob, GUP on huge leaves |
//! | [`thp`] | `thp` | huge PMD leaves, collapse, `do_wp_page` reuse |
//! | [`file`](mod@file) | `mm_file` | shared file mappings, the page cache, rmap, mkclean, writeback |
//!
//! Each suite file has its `SUITE` name and its `cases()` in order;
//! [`crate::selftest::suites`] is the one list of every suite. Every case
//! runs under [`leak_checked`] (or [`no_leak`]): the free-frame count after
//! the case (mms torn down, files dropped) must equal the count before, and
//! the bad-page reports it caused must be exactly the ones it provoked on
//! purpose. The host unit tests check the same with `assert_no_leak`.

/// The value of a `Result<T, Outcome>`, or returns the `Outcome` from the
/// case's body: a set-up step that fails ends the case with its outcome.
macro_rules! or_return {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(o) => return o,
        }
    };
}

pub(crate) mod core;
pub(crate) mod file;
pub(crate) mod gather;
pub(crate) mod gup;
pub(crate) mod page;
pub(crate) mod skey;
pub(crate) mod thp;
pub(crate) mod tlb;

use super::arch::Mmu;
use super::memory::{self, MapError};
use super::mm::{Mm, VmFlags};
use super::{memmap, page_alloc, pgtable};
use crate::diag;
use crate::ktap::Outcome;
use alloc::{boxed::Box, format, string::String};

/// The allocator's counts a leak check compares: free frames and bad-page
/// reports (Linux `bad_page()`), taken when a case starts.
pub(crate) struct LeakCheck {
    free: usize,
    bad_pages: u64,
}

impl LeakCheck {
    /// The counts now.
    pub(crate) fn start() -> Self {
        Self {
            free: page_alloc::nr_free_pages(),
            bad_pages: page_alloc::nr_bad_pages(),
        }
    }

    /// Compares the counts now with the start: `Err` names the frames
    /// leaked, or the bad-page reports when they are not `expected_bad_pages`.
    pub(crate) fn finish(&self, expected_bad_pages: u64) -> Result<(), String> {
        let free = page_alloc::nr_free_pages();
        let reports = page_alloc::nr_bad_pages() - self.bad_pages;
        if free != self.free {
            Err(format!(
                "{} frames leaked ({} free before, {free} after)",
                self.free as i64 - free as i64,
                self.free
            ))
        } else if reports != expected_bad_pages {
            Err(format!(
                "{reports} bad-page reports, expected {expected_bad_pages}"
            ))
        } else {
            Ok(())
        }
    }
}

/// Runs a case's `body`, which must provoke exactly `expected_bad_pages`
/// bad-page reports and is given the report sequence number it starts at
/// ([`page_alloc::bad_page_reports_since`]); fails a passing case that
/// leaked frames or caused other reports, and prints the free-frame counts.
pub(crate) fn leak_checked(expected_bad_pages: u64, body: impl FnOnce(u64) -> Outcome) -> Outcome {
    if memmap::mem_info().is_none() {
        return Outcome::Fail("the frame allocator is not set up".into());
    }
    let check = LeakCheck::start();
    let outcome = body(check.bad_pages);
    diag!(
        "free_frames_before={} after={}",
        check.free,
        page_alloc::nr_free_pages()
    );
    match (outcome, check.finish(expected_bad_pages)) {
        (Outcome::Pass, Err(why)) => Outcome::Fail(why),
        (o, _) => o,
    }
}

/// [`leak_checked`] for a case that provokes no bad-page report.
pub(crate) fn no_leak(body: impl FnOnce() -> Outcome) -> Outcome {
    leak_checked(0, |_| body())
}

/// Host unit tests: runs `body` on the test memory
/// ([`memmap::test_mem::setup`]) and panics if it leaked frames or caused a
/// bad-page report.
#[cfg(test)]
pub(crate) fn assert_no_leak(body: impl FnOnce()) {
    let _mem = memmap::test_mem::setup();
    let check = LeakCheck::start();
    body();
    if let Err(why) = check.finish(0) {
        panic!("{why}");
    }
}

/// A new boxed mm.
pub(crate) fn new_mm<A: Mmu>() -> Result<Box<Mm<A>>, Outcome> {
    Mm::<A>::new()
        .map(Box::new)
        .ok_or_else(|| Outcome::Fail("no memory for an mm".into()))
}

/// A new mm with the mappings `map` makes in it (the mm not yet entered on
/// any CPU); torn down again if an mmap fails.
pub(crate) fn mm_with_mappings<A: Mmu>(
    map: impl FnOnce(&Mm<A>) -> Result<(), MapError>,
) -> Result<Box<Mm<A>>, Outcome> {
    let mm = new_mm::<A>()?;
    match map(&mm) {
        Ok(()) => Ok(mm),
        Err(e) => {
            memory::exit_mmap(*mm);
            Err(Outcome::Fail(format!("mmap: {e:?}")))
        }
    }
}

/// A new mm with `len` bytes of anonymous memory mapped at `TASK_BASE`
/// (populated if asked); torn down again if the mmap fails.
pub(crate) fn mapped_mm<A: Mmu>(len: u64, populate: bool) -> Result<Box<Mm<A>>, Outcome> {
    mm_with_mappings::<A>(|mm| memory::mmap_anon(mm, A::TASK_BASE, len, VmFlags::RW, populate))
}

/// Stores through the MMU (a plain CPU store; a fault is resolved by the
/// fault handler).
///
/// # Safety
/// The calling CPU runs an mm in which `addr` lies in a writable VMA.
pub(crate) unsafe fn store(addr: u64, v: u64) {
    // SAFETY: per the contract, the store translates through the mm's tables
    // and any fault is resolved by mapping memory.
    unsafe { ::core::ptr::write_volatile(addr as *mut u64, v) }
}

/// Loads through the MMU.
///
/// # Safety
/// The calling CPU runs an mm in which `addr` lies in a readable VMA.
pub(crate) unsafe fn load(addr: u64) -> u64 {
    // SAFETY: as `store`.
    unsafe { ::core::ptr::read_volatile(addr as *const u64) }
}

/// The page faults this CPU has taken.
pub(crate) fn faults<A: Mmu>() -> u64 {
    crate::percpu::this_cpu::<A>()
        .page_faults
        .load(::core::sync::atomic::Ordering::Relaxed)
}

/// The PTE of `addr` in `mm` (which must exist).
pub(crate) fn pte_of<A: Mmu>(mm: &Mm<A>, addr: u64) -> u64 {
    let ptep = pgtable::follow_pte(mm, addr).expect("a populated page");
    // SAFETY: a live entry of `mm`.
    unsafe { pgtable::read_entry(ptep) }
}
