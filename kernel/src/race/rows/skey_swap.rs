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
//! - Setup: one mm per run (the run's [`RunMm`], built by `prepare`) with a
//!   one-page private anonymous VMA (its page tables kept across
//!   iterations); each iteration faults a fresh page in
//!   for writing and takes reclaim's isolation reference.
//! - Handshake: reclaim starts once the zap's store is done (C set), the zap
//!   once reclaim holds the page lock (it can only race with a reclaim that
//!   has begun) or is done.
//! - Variants (every one in StorageKey dirty tracking except fixed-c):
//!   `buggy` (3.3: flag before the slot, `__set_page_dirty_nobuffers`, no
//!   page lock); `fixed-a` (the RFC of seed 004: a bounded trylock of the
//!   page lock before `set_page_dirty`; reclaim holds the lock across the
//!   insertion, so a zap inside the window does not get it and the dirty bit
//!   is dropped — lost data of its own, counted and printed by `finish` as
//!   `# skey: ... dirty_dropped=`); `fixed-b` (aca50bd3b4c4: swap-cache
//!   pages dirty with `__set_page_dirty_no_writeback`, no tag); `fixed-c`
//!   (abf09bed3cce: software dirty bits in the PTE, changed under the PTL
//!   — the zap never consults the key); `fixed-d` (flag, `private` and slot
//!   set together under the tree lock).
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

use crate::{roles, schedule};
use crate::kprintln;
use crate::mm::arch::Mmu;
use crate::mm::dirty::{self, DirtyTracking, SkeyTransfer};
use crate::mm::memory;
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::page::{self, pfn_to_page, PG_locked};
use crate::mm::swap_state::{self, SwapCacheOrder, SwapDirtyAops};
use crate::mm::{xarray, PAGE_SIZE};
use crate::race::detect::Finding;
use crate::race::point::{self, points};
use crate::race::user;
use crate::race::scenario::{Commit, CommitRole::Fix, Ctx, Row, RowInfo, RunMm, Variant};
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

roles!(RECLAIM = "reclaim", ZAP = "zap");

/// What the zap stores.
const MARK: u64 = 0x736b_6579_5f43_6269;

/// The row.
pub struct SkeyDirtyVsSwapcache;

/// The knobs of a variant: the kernel's dirty tracking, the swap cache's
/// insertion order, `swapper_space`'s `set_page_dirty`, and how the zap
/// moves a change bit to the page.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    tracking: DirtyTracking,
    order: SwapCacheOrder,
    aops: SwapDirtyAops,
    transfer: SkeyTransfer,
}

/// Linux 3.3 on s390: the buggy kernel, and what each fix starts from.
const BUGGY: Config = Config {
    tracking: DirtyTracking::StorageKey,
    order: SwapCacheOrder::FlagFirst,
    aops: SwapDirtyAops::Nobuffers,
    transfer: SkeyTransfer::Unlocked,
};

/// What the roles and the detector share in an iteration.
#[derive(Default)]
pub struct State {
    /// The zap's store is done (C set).
    stored: AtomicBool,
    /// Reclaim is done.
    reclaim_done: AtomicBool,
    /// [`xarray::nr_tag_on_missing_entry`] at setup.
    missing_seq: u64,
    /// The zap's unmap found the page still mapped (0 or 1).
    zaps: AtomicU64,
}

/// What the run keeps: its mm, and the counts printed at its end.
pub struct Run<A: Mmu> {
    /// The mm, with its VMA and page tables.
    mm: RunMm<A>,
    /// Unmaps whose page was still mapped when the zap ran.
    zaps: u64,
    /// [`dirty::skey_stats`] at the start.
    stats: (u64, u64),
}

impl<A: Mmu> Default for Run<A> {
    fn default() -> Self {
        Run {
            mm: RunMm::default(),
            zaps: 0,
            stats: (0, 0),
        }
    }
}

impl<A: Mmu> Row<A> for SkeyDirtyVsSwapcache {
    const INFO: RowInfo = RowInfo {
        catalogue: Some(7),
        seed: "seed 004: \"[RFC PATCH] s390: mm: rmap: Transfer storage key to struct page under the page lock\" (April 2012)",
        commits: &[
            Commit::new("aca50bd3b4c4", Some("mm: fix s390 BUG by __set_page_dirty_no_writeback on swap"), Some("3.4"), Fix),
            Commit::new("abf09bed3cce", Some("s390/mm: implement software dirty bits"), Some("3.9"), Fix),
        ],
        delay_points: &[&points::SWAP_ADD_WINDOW],
        trace_points: &[&points::ZAP_AFTER_PTE_CLEAR, &points::RMAP_SKEY_DIRTY],
        max_delay_ns: 100_000,
        schedule: schedule![
            RECLAIM at points::SWAP_ADD_WINDOW;
            ZAP at points::ZAP_BEFORE_PTL, points::MADVISE_AFTER_DONTNEED;
            RECLAIM leave points::SWAP_ADD_WINDOW;
        ],
        ..RowInfo::new("skey-dirty-vs-swapcache", "the zap moves a storage key's change bit to a page half-way into the swap cache", ROLES)
    };
    type Config = Config;
    const VARIANTS: &'static [Variant<Config>] = &[
        Variant::new("buggy", "storage-key dirty bit moved without the page lock; PG_swapcache before the tree slot", "Linux 3.3 on s390 (before aca50bd3b4c4): the storage key's change bit moved to the page without the page lock, PG_swapcache set before the tree slot", &[], BUGGY),
        Variant::new("fixed-a", "the RFC: bounded trylock of the page lock before set_page_dirty, else the bit is dropped", "the RFC of seed 004 (no commit): a bounded trylock of the page lock before set_page_dirty, the dirty bit dropped without it", &[], Config { transfer: SkeyTransfer::PageLockTrylock, ..BUGGY }),
        Variant::new("fixed-b", "swap-cache pages dirtied without a tree tag (aca50bd3b4c4)", "aca50bd3b4c4 (3.4): swap-cache pages dirtied with __set_page_dirty_no_writeback, no tree tag", &[], Config { aops: SwapDirtyAops::NoWriteback, ..BUGGY }),
        Variant::new("fixed-c", "software dirty bits in the PTE, changed under the PTL (abf09bed3cce)", "abf09bed3cce (3.9): software dirty bits in the PTE, changed under the PTL", &[], Config { tracking: DirtyTracking::SoftDirty, ..BUGGY }),
        Variant::new("fixed-d", "PG_swapcache set together with the tree slot, under the tree lock", "no Linux commit: PG_swapcache set together with the tree slot, under the tree lock", &[], Config { order: SwapCacheOrder::Together, ..BUGGY }),
    ];
    type State = State;
    type Run = Run<A>;

    fn prepare(v: &Variant<Config>) -> Result<Run<A>, &'static str> {
        if A::STORAGE_KEYS.is_none() {
            return Err("no storage keys on this architecture: the dirty state lives in the PTE");
        }
        let c = v.config;
        let stats = dirty::skey_stats();
        dirty::set_dirty_tracking::<A>(c.tracking).map_err(|_| "storage keys refused")?;
        swap_state::set_order(c.order);
        swap_state::set_dirty_aops(c.aops);
        dirty::set_skey_transfer(c.transfer);
        // The VMA and its page tables, kept across iterations.
        let addr = page_addr::<A>();
        Ok(Run {
            stats,
            mm: RunMm::build(|mm| {
                memory::mmap_anon(mm, addr, PAGE_SIZE, VmFlags::RW, true)
                    .and_then(|()| memory::madvise_dontneed(mm, addr, PAGE_SIZE))
            }),
            ..Run::default()
        })
    }

    fn run_mm(run: &mut Run<A>) -> Option<&mut RunMm<A>> {
        Some(&mut run.mm)
    }

    fn finish(run: Run<A>) {
        let (found, dropped) = dirty::skey_stats();
        kprintln!(
            "    # skey: zaps={} change_bit_found={} dirty_dropped={} (dirty bits the page-lock trylock gave up on: lost data)",
            run.zaps,
            found - run.stats.0,
            dropped - run.stats.1
        );
    }

    fn setup(_: &mut Run<A>, ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        let addr = page_addr::<A>();
        ctx.state.missing_seq = xarray::nr_tag_on_missing_entry();
        ctx.addr = addr;
        let pfn = populate(ctx.mm(), addr)?;
        // Reclaim's reference (`isolate_lru_page`): the page outlives the
        // zap; `teardown` drops it.
        page::get_page(pfn_to_page(pfn));
        ctx.pfns = Vec::from([pfn]);
        Ok(())
    }

    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool {
        let p = pfn_to_page(ctx.pfns[0]);
        let st = &ctx.state;
        match role {
            RECLAIM => {
                point::wait_until::<A>(|| st.stored.load(Ordering::Acquire));
                page::lock_page(p);
                // `shrink_page_list`: add_to_swap; the page then turns out to
                // have lost its mappings, and reclaim backs out.
                let entry = swap_state::add_to_swap::<A>(p);
                if entry.is_some() {
                    swap_state::delete_from_swap_cache(p);
                }
                page::unlock_page(p);
                st.reclaim_done.store(true, Ordering::Release);
                entry.is_some()
            }
            _ => {
                let faults = page_faults::<A>();
                // A real store through the MMU: the hardware sets C.
                let stored =
                    A::probe_store(ctx.addr, MARK).is_ok() && page_faults::<A>() == faults;
                st.stored.store(true, Ordering::Release);
                point::wait_until::<A>(|| {
                    p.test_flag(PG_locked) || st.reclaim_done.load(Ordering::Acquire)
                });
                let zapped =
                    memory::madvise_dontneed_counted(ctx.mm(), ctx.addr, PAGE_SIZE) == Ok(1);
                if zapped {
                    st.zaps.fetch_add(1, Ordering::Relaxed);
                }
                stored && zapped
            }
        }
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        let n = xarray::nr_tag_on_missing_entry().checked_sub(ctx.state.missing_seq)?;
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

    fn teardown(run: &mut Run<A>, ctx: &mut Ctx<A, Self>) {
        run.zaps += ctx.state.zaps.load(Ordering::Relaxed);
        // The page, if the zap did not take it; the VMA and the page tables
        // stay for the next iteration (an mm that cannot be zapped is torn
        // down, and the next iteration finds none).
        if memory::madvise_dontneed(ctx.mm(), ctx.addr, PAGE_SIZE).is_err() {
            if let Some(mm) = ctx.mm.take() {
                memory::exit_mmap(*mm);
            }
        }
        page::put_page(pfn_to_page(ctx.pfns[0]));
    }

}

/// The address of the page.
fn page_addr<A: Mmu>() -> u64 {
    A::TASK_BASE
}

/// Faults a fresh anonymous page in for writing at `addr`; returns its pfn.
/// It has one reference and one mapping, and its PTE is writable.
fn populate<A: Mmu>(mm: &Mm<A>, addr: u64) -> Result<u64, String> {
    let pfn = user::fault_in(mm, addr, true)?;
    user::exclusive_anon(pfn)?;
    Ok(pfn)
}

fn page_faults<A: Mmu>() -> u64 {
    crate::percpu::this_cpu::<A>()
        .page_faults
        .load(Ordering::Relaxed)
}
