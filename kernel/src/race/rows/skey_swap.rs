//! `skey-dirty-vs-swapcache` (catalogue row 7, seed 004): with storage-key
//! dirty tracking, the zap of an anonymous page's last mapping moves the
//! frame's change bit to the page with `set_page_dirty`, while reclaim on
//! another CPU is half-way through adding the page to the swap cache.
//!
//! Linux up to 3.8 kept the dirty state of an s390 page in its storage key
//! (C, set by the hardware on every store through any mapping). When the last
//! PTE of a page with a mapping goes (a page-cache page, or an anonymous page
//! in the swap cache: "there might be another pte slot containing the swap
//! entry"), `page_remove_rmap` reads and clears C and calls `set_page_dirty`,
//! under the PTL but without the page lock. For a swap-cache page that
//! dispatches to `swapper_space`'s `__set_page_dirty_nobuffers`, which tags the
//! page's tree slot DIRTY. Before 3.4 `__add_to_swap_cache` set
//! `PG_swapcache` and `private` before it filled the slot, so a zap on
//! another CPU in between tags a missing entry (seed 004's "kernel BUG at
//! radix_tree_tag_set", from `page_remove_rmap` in `zap_pte_range`).
//!
//! - Roles: `reclaim` (CPU 1) — `shrink_page_list`'s swap step on the page it
//!   isolated (its reference taken at setup): `lock_page`, `add_to_swap`,
//!   then it backs out (`delete_from_swap_cache`, as `try_to_free_swap`
//!   does for a page that lost its mappings), `unlock_page`. `zap` (CPU 2) —
//!   a real store to the page through the MMU (the hardware sets C), then
//!   MADV_DONTNEED of the page: its last mapping.
//! - Completion: `reclaim` added the page to the swap cache; `zap` stored
//!   without a fault and its zap dropped the PTE's reference.
//! - Setup: one mm per run with a one-page private anonymous VMA (its page
//!   tables kept across iterations); each iteration faults a fresh page in
//!   for writing and takes reclaim's isolation reference.
//! - Handshake: reclaim starts once the zap's store is done (C set), the zap
//!   once reclaim holds the page lock (it can only race with a reclaim that
//!   has begun) or is done.
//! - Variants (every one in StorageKey dirty tracking except fixed-c):
//!   `buggy` (3.3: flag before the slot, `__set_page_dirty_nobuffers`, no
//!   page lock); `fixed-a` (the RFC of seed 004: a bounded trylock of the
//!   page lock before `set_page_dirty`; reclaim holds the lock across the
//!   insertion, so a zap inside the window does not get it and the dirty bit
//!   is dropped — lost data of its own, counted and printed as `# skey: ...
//!   dropped=`); `fixed-b` (aca50bd3b4c4: swap-cache pages dirty with
//!   `__set_page_dirty_no_writeback`, no tag); `fixed-c` (abf09bed3cce:
//!   software dirty bits in the PTE, changed under the PTL — the zap never
//!   consults the key); `fixed-d` (flag, `private` and slot set together
//!   under the tree lock).
//! - Forced schedule: reclaim holds at `swap:add_window` (page locked; with
//!   the flag-first order `PG_swapcache` set and the slot empty); the zap
//!   runs its whole MADV_DONTNEED (`zap:before_ptl` to
//!   `madvise:after_dontneed`); then reclaim fills the slot. No fix adds a
//!   wait (fixed-a's trylock gives up), so every fixed cell runs through.
//! - Natural: random delays at `swap:add_window`.
//! - Detector: the tree's "BUG: tag set on a missing tree entry"
//!   ([`xarray::nr_tag_on_missing_entry`], counted since setup).
//! - Teardown: the page (if the zap did not take it), reclaim's reference.
//!   Nothing to repair: the lost tag changed nothing in the tree.
//! - x86-64: `skip`, no storage keys.

use super::detect::Finding;
use super::point::{self, points, RacePoint, Step};
use super::run_mm::RunMm;
use super::scenario::{Budget, Commit, CommitRole, Ctx, Scenario, Variant};
use crate::kprintln;
use crate::mm::arch::{FaultInfo, Mmu};
use crate::mm::dirty::{self, DirtyTracking, SkeyTransfer};
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::page::{self, pfn_to_page, PG_locked};
use crate::mm::swap_state::{self, SwapCacheOrder, SwapDirtyAops};
use crate::mm::{pgtable, xarray, PAGE_SIZE};
use alloc::{boxed::Box, format, string::String, vec, vec::Vec};
use core::sync::atomic::{AtomicU64, Ordering};

const RECLAIM: usize = 0;
const ZAP: usize = 1;

/// `ctx.word` slots.
const STORED: usize = 0;
const RECLAIM_DONE: usize = 1;
/// [`xarray::nr_tag_on_missing_entry`] at setup.
const MISSING_SEQ: usize = 2;
/// 1 when setup took reclaim's reference to the page.
const ISOLATED: usize = 3;

/// What the zap stores.
const MARK: u64 = 0x736b_6579_5f43_6269;

static DELAY_POINTS: [&RacePoint; 1] = [&points::SWAP_ADD_WINDOW];
static TRACE_POINTS: [&RacePoint; 2] = [&points::ZAP_AFTER_PTE_CLEAR, &points::RMAP_SKEY_DIRTY];

static VARIANTS: [Variant; 5] = [
    Variant {
        name: "buggy",
        about: "storage-key dirty bit moved without the page lock; PG_swapcache before the tree slot",
        models: "Linux 3.3 on s390 (before aca50bd3b4c4): the storage key's change bit moved to the page without the page lock, PG_swapcache set before the tree slot",
        fix_waits: &[],
    },
    Variant {
        name: "fixed-a",
        about: "the RFC: bounded trylock of the page lock before set_page_dirty, else the bit is dropped",
        models: "the RFC of seed 004 (no commit): a bounded trylock of the page lock before set_page_dirty, the dirty bit dropped without it",
        fix_waits: &[],
    },
    Variant {
        name: "fixed-b",
        about: "swap-cache pages dirtied without a tree tag (aca50bd3b4c4)",
        models: "aca50bd3b4c4 (3.4): swap-cache pages dirtied with __set_page_dirty_no_writeback, no tree tag",
        fix_waits: &[],
    },
    Variant {
        name: "fixed-c",
        about: "software dirty bits in the PTE, changed under the PTL (abf09bed3cce)",
        models: "abf09bed3cce (3.9): software dirty bits in the PTE, changed under the PTL",
        fix_waits: &[],
    },
    Variant {
        name: "fixed-d",
        about: "PG_swapcache set together with the tree slot, under the tree lock",
        models: "no Linux commit: PG_swapcache set together with the tree slot, under the tree lock",
        fix_waits: &[],
    },
];

/// The knobs of a variant.
fn config(v: &Variant) -> (DirtyTracking, SwapCacheOrder, SwapDirtyAops, SkeyTransfer) {
    use DirtyTracking::*;
    use SwapCacheOrder::*;
    use SwapDirtyAops::*;
    match v.name {
        "fixed-a" => (
            StorageKey,
            FlagFirst,
            Nobuffers,
            SkeyTransfer::PageLockTrylock,
        ),
        "fixed-b" => (StorageKey, FlagFirst, NoWriteback, SkeyTransfer::Unlocked),
        "fixed-c" => (SoftDirty, FlagFirst, Nobuffers, SkeyTransfer::Unlocked),
        "fixed-d" => (StorageKey, Together, Nobuffers, SkeyTransfer::Unlocked),
        _ => (StorageKey, FlagFirst, Nobuffers, SkeyTransfer::Unlocked),
    }
}

/// What the run changed, put back by `reset`: the knobs, and the key
/// statistics at the start.
struct Saved {
    tracking: DirtyTracking,
    order: SwapCacheOrder,
    aops: SwapDirtyAops,
    transfer: SkeyTransfer,
    stats: (u64, u64),
}

static SAVED: spin::Mutex<Option<Saved>> = spin::Mutex::new(None);

/// The run's mm ([`RunMm`]), lent to each
/// iteration as in `wp_unlock`.
static RUN_MM: RunMm = RunMm::new();

/// Unmaps in the run whose page was still mapped when the zap ran.
static ZAPS: AtomicU64 = AtomicU64::new(0);

fn set_variant<A: Mmu>(v: &Variant) -> Result<(), &'static str> {
    if A::STORAGE_KEYS.is_none() {
        return Err("no storage keys on this architecture: the dirty state lives in the PTE");
    }
    let (tracking, order, aops, transfer) = config(v);
    let saved = Saved {
        tracking: dirty::dirty_tracking(),
        order: swap_state::order(),
        aops: swap_state::swap_dirty_aops(),
        transfer: dirty::skey_transfer(),
        stats: dirty::skey_stats(),
    };
    SAVED.lock().get_or_insert(saved);
    dirty::set_dirty_tracking::<A>(tracking).map_err(|_| "storage keys refused")?;
    swap_state::set_order(order);
    swap_state::set_dirty_aops(aops);
    dirty::set_skey_transfer(transfer);
    ZAPS.store(0, Ordering::Relaxed);
    if let Some(mm) = Mm::<A>::new().map(Box::new) {
        let addr = page_addr::<A>();
        let populated = memory::mmap_anon(&mm, addr, PAGE_SIZE, VmFlags::RW, true)
            .and_then(|()| memory::madvise_dontneed(&mm, addr, PAGE_SIZE));
        if populated.is_ok() {
            RUN_MM.put(mm);
        } else {
            memory::exit_mmap(*mm);
        }
    }
    Ok(())
}

fn reset<A: Mmu>() {
    RUN_MM.destroy::<A>();
    if let Some(s) = SAVED.lock().take() {
        let (found, dropped) = dirty::skey_stats();
        kprintln!(
            "    # skey: zaps={} change_bit_found={} dirty_dropped={} (dirty bits the page-lock trylock gave up on: lost data)",
            ZAPS.swap(0, Ordering::Relaxed),
            found - s.stats.0,
            dropped - s.stats.1
        );
        // SoftDirty never fails; StorageKey was accepted before.
        let _ = dirty::set_dirty_tracking::<A>(s.tracking);
        swap_state::set_order(s.order);
        swap_state::set_dirty_aops(s.aops);
        dirty::set_skey_transfer(s.transfer);
    }
}

/// The address of the page.
fn page_addr<A: Mmu>() -> u64 {
    A::TASK_BASE
}

/// The Linux commits of the row.
static COMMITS: [Commit; 2] = [
    Commit {
        hash: "aca50bd3b4c4",
        subject: Some("mm: fix s390 BUG by __set_page_dirty_no_writeback on swap"),
        release: Some("3.4"),
        role: CommitRole::Fix,
    },
    Commit {
        hash: "abf09bed3cce",
        subject: Some("s390/mm: implement software dirty bits"),
        release: Some("3.9"),
        role: CommitRole::Fix,
    },
];

/// The row.
pub fn scenario<A: Mmu>() -> Scenario<A> {
    Scenario {
        name: "skey-dirty-vs-swapcache",
        about: "the zap moves a storage key's change bit to a page half-way into the swap cache",
        catalogue: Some(7),
        seed: "seed 004: \"[RFC PATCH] s390: mm: rmap: Transfer storage key to struct page under the page lock\" (April 2012)",
        commits: &COMMITS,
        roles: &["reclaim", "zap"],
        variants: &VARIANTS,
        flush: &[],
        set_variant: set_variant::<A>,
        reset: reset::<A>,
        setup: setup::<A>,
        role: role::<A>,
        detect: detect::<A>,
        teardown: teardown::<A>,
        schedule: |_| {
            vec![
                Step::at(RECLAIM, &points::SWAP_ADD_WINDOW),
                Step::at(ZAP, &points::ZAP_BEFORE_PTL),
                Step::at(ZAP, &points::MADVISE_AFTER_DONTNEED),
                Step::leave(RECLAIM, &points::SWAP_ADD_WINDOW),
            ]
        },
        delay_points: &DELAY_POINTS,
        trace_points: &TRACE_POINTS,
        max_delay_ns: 100_000,
        budget: Budget::CATALOGUE,
    }
}

fn setup<A: Mmu>(ctx: &mut Ctx<A>) -> Result<(), String> {
    let mm = RUN_MM
        .take::<A>()
        .ok_or_else(|| String::from("no mm for the run"))?;
    let addr = page_addr::<A>();
    ctx.word[MISSING_SEQ].store(xarray::nr_tag_on_missing_entry(), Ordering::Relaxed);
    let r = populate(&mm, addr);
    ctx.mm = Some(mm);
    ctx.addr = addr;
    let pfn = r?;
    // Reclaim's reference (`isolate_lru_page`): the page outlives the zap.
    page::get_page(pfn_to_page(pfn));
    ctx.word[ISOLATED].store(1, Ordering::Relaxed);
    ctx.pfns = Vec::from([pfn]);
    Ok(())
}

/// Faults a fresh anonymous page in for writing at `addr`; returns its pfn.
/// It has one reference and one mapping, and its PTE is writable.
fn populate<A: Mmu>(mm: &Mm<A>, addr: u64) -> Result<u64, String> {
    let info = FaultInfo {
        addr,
        write: true,
        protection: false,
        code: 0,
    };
    memory::do_user_fault(mm, info).map_err(|e| format!("populate: {e}"))?;
    let ptep = pgtable::follow_pte(mm, addr).ok_or_else(|| String::from("no PTE table"))?;
    let pte = {
        let _ptl = memory::pte_lockptr(ptep).lock();
        // SAFETY: a live PTE of this mm (no CPU runs it yet); PTL held.
        unsafe { pgtable::read_entry(ptep) }
    };
    if !A::pte_present(pte) || !A::pte_write(pte) {
        return Err(format!("PTE {pte:#x} is not present and writable"));
    }
    let pfn = A::pte_pfn(pte);
    let p = pfn_to_page(pfn);
    let (refs, maps) = (page::page_ref_count(p), page::page_mapcount(p));
    if !page::PageAnon(p) || refs != 1 || maps != 1 {
        return Err(format!(
            "page {pfn:#x}: anon={} refcount={refs} mapcount={maps}, want an exclusive anonymous page",
            page::PageAnon(p)
        ));
    }
    Ok(pfn)
}

fn role<A: Mmu>(ctx: &Ctx<A>, role: usize) -> bool {
    let p = pfn_to_page(ctx.pfns[0]);
    match role {
        RECLAIM => {
            while ctx.word[STORED].load(Ordering::Acquire) == 0 {
                A::cpu_relax();
            }
            page::lock_page(p);
            // `shrink_page_list`: add_to_swap; the page then turns out to
            // have lost its mappings, and reclaim backs out.
            let entry = swap_state::add_to_swap::<A>(p);
            if entry.is_some() {
                swap_state::delete_from_swap_cache(p);
            }
            page::unlock_page(p);
            ctx.word[RECLAIM_DONE].store(1, Ordering::Release);
            entry.is_some()
        }
        _ => {
            let faults = page_faults::<A>();
            // A real store through the MMU: the hardware sets C.
            let stored = A::probe_store(ctx.addr, MARK).is_ok() && page_faults::<A>() == faults;
            ctx.word[STORED].store(1, Ordering::Release);
            while !p.test_flag(PG_locked) && ctx.word[RECLAIM_DONE].load(Ordering::Acquire) == 0 {
                A::cpu_relax();
            }
            let mm = ctx.mm.as_deref().expect("the iteration's mm");
            let zapped = memory::madvise_dontneed_counted(mm, ctx.addr, PAGE_SIZE) == Ok(1);
            if zapped {
                ZAPS.fetch_add(1, Ordering::Relaxed);
            }
            stored && zapped
        }
    }
}

fn page_faults<A: Mmu>() -> u64 {
    crate::percpu::this_cpu::<A>()
        .page_faults
        .load(Ordering::Relaxed)
}

fn detect<A: Mmu>(ctx: &Ctx<A>) -> Option<Finding> {
    let since = ctx.word[MISSING_SEQ].load(Ordering::Relaxed);
    let n = xarray::nr_tag_on_missing_entry().checked_sub(since)?;
    if n == 0 {
        return None;
    }
    let mut f = Finding::frame(
        format!(
            "tag set on a missing tree entry: swapper_space index {} (the page's swap entry), tag DIRTY; \
             set_page_dirty from the storage key's change bit at the last unmap, while the page had PG_swapcache \
             but no tree slot ({n} time(s))",
            xarray::last_tag_on_missing_entry()
        ),
        ctx.pfns[0],
    )
    .at(ctx.addr);
    f.cpu = point::cpu_of(ZAP);
    Some(f)
}

fn teardown<A: Mmu>(ctx: &mut Ctx<A>) {
    if let Some(mm) = ctx.mm.take() {
        // The page, if the zap did not take it; the VMA and the page tables
        // stay for the next iteration.
        if memory::madvise_dontneed(&mm, ctx.addr, PAGE_SIZE).is_ok() {
            RUN_MM.put(mm);
        } else {
            memory::exit_mmap(*mm);
        }
    }
    if ctx.word[ISOLATED].swap(0, Ordering::Relaxed) != 0 {
        page::put_page(pfn_to_page(ctx.pfns[0]));
    }
}
