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
//!   isolated (its reference taken at setup): `lock_page`, `add_to_swap`
//!   (which marks the page dirty once it is in the swap cache, as Linux 3.3
//!   does); then, if the zap has taken the page's mapping, `pageout`
//!   (the page is written to its swap slot if dirty) and `__remove_mapping`
//!   (a clean page leaves the swap cache, its slot freed, and is freed with
//!   reclaim's reference at teardown); if the page is still mapped, it goes
//!   back as when `try_to_unmap` fails on a page just referenced
//!   (`activate_locked`: `try_to_free_swap`, out of the swap cache, dirty —
//!   this model puts no swap entry in a PTE); `unlock_page`. A page
//!   `__remove_mapping` refuses (the zap still holds the PTE's reference) is
//!   taken again once the zap is done: a second pass, `pageout` and
//!   `__remove_mapping`. `zap` (CPU 2) — a real store to the page through
//!   the MMU (the hardware sets C), then MADV_DONTNEED of the page: its last
//!   mapping.
//! - Completion: `reclaim` added the page to the swap cache and took it out
//!   again; `zap` stored without a fault and its zap dropped the PTE's
//!   reference.
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
//!   insertion, so a zap inside the window does not get it and the change
//!   bit is dropped, counted and printed by `finish` as
//!   `# skey: ... dirty_dropped=`); `fixed-b` (aca50bd3b4c4: swap-cache
//!   pages dirty with `__set_page_dirty_no_writeback`, no tag); `fixed-c`
//!   (abf09bed3cce: software dirty bits in the PTE, changed under the PTL
//!   — the zap never consults the key); `fixed-d` (flag, `private` and slot
//!   set together under the tree lock).
//! - fixed-a loses no data here, and the row checks it: a change bit the
//!   zap drops inside the window records a store that `add_to_swap`'s
//!   `PG_dirty`, set right after the insertion, records too, so `pageout`
//!   writes the page, the zap's store with it, before `__remove_mapping`
//!   lets it go (`# skey: ... pageouts= lost_writes=`). The dropped bit could
//!   only lose data on a page already written to swap and stored to since:
//!   not a page on its way into the swap cache, which this window holds.
//! - Forced schedule: reclaim holds at `swap:add_window` (page locked; with
//!   the flag-first order `PG_swapcache` set and the slot empty); the zap
//!   runs its whole MADV_DONTNEED (`zap:before_ptl` to
//!   `madvise:after_dontneed`); then reclaim fills the slot, writes the page
//!   out and lets it go. No fix adds a wait (fixed-a's trylock gives up), so
//!   every fixed cell runs through.
//! - Natural: random delays at `swap:add_window`.
//! - Overlap (the roles met inside the window): the zap removed the page's
//!   last mapping while reclaim was at `swap:add_window` — reclaim arrived
//!   there before the zap went on from clearing the PTE
//!   (`zap:after_pte_clear`; the rmap removal follows), and the zap reached
//!   the page's dirty state before reclaim left to fill the slot: it found
//!   the change bit (`rmap:skey_dirty`, `set_page_dirty` next) or, where
//!   the key is never read (fixed-c), its PTE loop was over
//!   (`zap:before_ptl_flush`). Buggy: the DIRTY tag lands on the missing
//!   entry (whose report, printed under the PTL, comes after); the fixes
//!   tag nothing there or drop the bit (fixed-a).
//! - Detectors: the tree's "BUG: tag set on a missing tree entry"
//!   ([`xarray::nr_tag_on_missing_entry`], counted since setup); then a lost
//!   write: `__remove_mapping` let the page go clean while its frame held
//!   bytes its swap slot did not ([`swap_state::nr_lost_writes`], counted
//!   since setup: a written page discarded unwritten, the data of the zap's
//!   store gone with it).
//! - Teardown: the page (if the zap did not take it), a page reclaim failed
//!   to take out of the swap cache, reclaim's reference. The lost tag
//!   changed nothing in the tree.
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
    /// The zap is done.
    zap_done: AtomicBool,
    /// [`xarray::nr_tag_on_missing_entry`] at setup.
    missing_seq: u64,
    /// [`swap_state::nr_lost_writes`] at setup.
    lost_seq: u64,
    /// Dropped change bits ([`dirty::skey_stats`]) at setup.
    dropped_seq: u64,
    /// The zap's unmap found the page still mapped (0 or 1).
    zaps: AtomicU64,
    /// Reclaim wrote the page to its swap slot (0 or 1).
    pageouts: AtomicU64,
}

/// What the run keeps: its mm, and the counts printed at its end.
pub struct Run<A: Mmu> {
    /// The mm, with its VMA and page tables.
    mm: RunMm<A>,
    /// Unmaps whose page was still mapped when the zap ran.
    zaps: u64,
    /// Pages reclaim wrote to their swap slot.
    pageouts: u64,
    /// [`dirty::skey_stats`] at the start.
    stats: (u64, u64),
    /// [`swap_state::nr_lost_writes`] at the start.
    lost: u64,
}

impl<A: Mmu> Default for Run<A> {
    fn default() -> Self {
        Run {
            mm: RunMm::default(),
            zaps: 0,
            pageouts: 0,
            stats: (0, 0),
            lost: 0,
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
        trace_points: &[
            &points::ZAP_AFTER_PTE_CLEAR,
            &points::RMAP_SKEY_DIRTY,
            &points::ZAP_BEFORE_PTL_FLUSH,
        ],
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
            lost: swap_state::nr_lost_writes(),
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
            "    # skey: zaps={} change_bit_found={} dirty_dropped={} pageouts={} lost_writes={} \
             (dropped: change bits the page-lock trylock gave up on; pageouts: pages reclaim wrote to swap; \
             lost: pages reclaim let go clean with data their swap slot lacked)",
            run.zaps,
            found - run.stats.0,
            dropped - run.stats.1,
            run.pageouts,
            swap_state::nr_lost_writes() - run.lost
        );
    }

    fn setup(_: &mut Run<A>, ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        let addr = page_addr::<A>();
        ctx.state.missing_seq = xarray::nr_tag_on_missing_entry();
        ctx.state.lost_seq = swap_state::nr_lost_writes();
        ctx.state.dropped_seq = dirty::skey_stats().1;
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
                // `shrink_page_list`: add_to_swap (the page is dirty once in
                // the swap cache).
                let entry = swap_state::add_to_swap::<A>(p);
                let mut out = true;
                if entry.is_some() {
                    if page::page_mapped(p) {
                        // try_to_unmap fails on the page the zap's store
                        // just referenced: activate_locked frees its swap.
                        out = swap_state::try_to_free_swap(p);
                    } else if !Self::swap_out::<A>(p, st) {
                        // __remove_mapping refused: the zap still holds the
                        // PTE's reference. A later pass, once it is done.
                        page::unlock_page(p);
                        point::wait_until::<A>(|| st.zap_done.load(Ordering::Acquire));
                        page::lock_page(p);
                        out = Self::swap_out::<A>(p, st);
                    }
                }
                page::unlock_page(p);
                st.reclaim_done.store(true, Ordering::Release);
                entry.is_some() && out
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
                st.zap_done.store(true, Ordering::Release);
                stored && zapped
            }
        }
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        Self::tag_on_missing_entry(ctx).or_else(|| Self::lost_write(ctx))
    }

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        let window = ctx.first_pass(RECLAIM, &points::SWAP_ADD_WINDOW);
        let clear = ctx.first_pass(ZAP, &points::ZAP_AFTER_PTE_CLEAR);
        let dirty = ctx
            .first_pass(ZAP, &points::RMAP_SKEY_DIRTY)
            .or_else(|| ctx.first_pass(ZAP, &points::ZAP_BEFORE_PTL_FLUSH));
        matches!((window, clear, dirty), (Some(w), Some(c), Some(d)) if w.before(&c) && d.before(&w))
    }

    fn teardown(run: &mut Run<A>, ctx: &mut Ctx<A, Self>) {
        run.zaps += ctx.state.zaps.load(Ordering::Relaxed);
        run.pageouts += ctx.state.pageouts.load(Ordering::Relaxed);
        // The page, if the zap did not take it; the VMA and the page tables
        // stay for the next iteration (an mm that cannot be zapped is torn
        // down, and the next iteration finds none).
        if memory::madvise_dontneed(ctx.mm(), ctx.addr, PAGE_SIZE).is_err() {
            if let Some(mm) = ctx.mm.take() {
                memory::exit_mmap(*mm);
            }
        }
        let p = pfn_to_page(ctx.pfns[0]);
        // A page reclaim could not take out of the swap cache (its role
        // then failed).
        if page::PageSwapCache(p) {
            page::lock_page(p);
            swap_state::delete_from_swap_cache(p);
            page::unlock_page(p);
        }
        page::put_page(p);
    }
}

impl SkeyDirtyVsSwapcache {
    /// Reclaim on a locked, unmapped swap-cache page: `pageout` (written
    /// if dirty), then `__remove_mapping`; whether the page left the swap
    /// cache.
    fn swap_out<A: Mmu>(p: &'static page::Page, st: &State) -> bool {
        if swap_state::pageout::<A>(p) {
            st.pageouts.fetch_add(1, Ordering::Relaxed);
        }
        swap_state::remove_mapping(p)
    }

    /// The tree's report of a tag on a missing entry, since setup.
    fn tag_on_missing_entry<A: Mmu>(ctx: &Ctx<A, Self>) -> Option<Finding> {
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

    /// A page `__remove_mapping` let go clean while its frame held data its
    /// swap slot lacked, since setup.
    fn lost_write<A: Mmu>(ctx: &Ctx<A, Self>) -> Option<Finding> {
        let st = &ctx.state;
        let n = swap_state::nr_lost_writes().checked_sub(st.lost_seq)?;
        let l = swap_state::last_lost_write().filter(|_| n > 0)?;
        let slot = match l.slot_word {
            Some(w) => format!("its swap slot holds {w:#x} there"),
            None => "its swap slot was never written".into(),
        };
        let whose = if l.page_word == MARK && l.offset == 0 {
            " (the zap's store through the MMU)"
        } else {
            ""
        };
        let why = if dirty::skey_stats().1 > st.dropped_seq {
            "the change bit that store set was dropped at the last unmap (the page-lock trylock gave up while \
             reclaim held the lock), and PG_dirty did not record the store either"
        } else {
            "PG_dirty was clear and no change bit reached the page"
        };
        let mut f = Finding::frame(
            format!(
                "lost write: reclaim let the page go as clean (__remove_mapping, swap entry {}) while its frame held \
                 {:#x} at offset {:#x}{whose} and {slot}: pageout never wrote it; {why} ({n} time(s))",
                l.entry, l.page_word, l.offset
            ),
            l.pfn,
        )
        .at(ctx.addr + l.offset);
        f.cpu = point::cpu_of(RECLAIM);
        Some(f)
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
