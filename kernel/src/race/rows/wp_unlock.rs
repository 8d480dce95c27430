//! `wp-unlock-vs-zap` (catalogue row 1, seed 000): `do_wp_page` unlocks a
//! reused page after releasing the PTL, while MADV_DONTNEED frees it.
//!
//! Linux 5.9's 09854ba94c6a ("mm: do_wp_page() simplification") reused an
//! exclusive anonymous page as `wp_page_reuse(vmf); unlock_page(page);`:
//! `wp_page_reuse` releases the PTL, and the fault holds no reference of
//! its own, so between the two a zap on another CPU (MADV_DONTNEED, under
//! `mmap_lock` for read like the fault) can clear the PTE and drop the last
//! reference. The page is freed while still locked ("bad page state:
//! PAGE_FLAGS_CHECK_AT_FREE flag(s) set", `locked`), and the fault's
//! `unlock_page` then writes to a freed page descriptor. be068f29034f
//! ("mm: fix misplaced unlock_page in do_wp_page()") unlocks first, under the
//! PTL: the zap cannot clear the PTE before the page is unlocked.
//!
//! - Roles: `fault` (CPU 1) stores to an anonymous page whose PTE is
//!   read-only while the page has refcount 1 and mapcount 1: a real hardware
//!   write fault, resolved by `do_wp_page`'s reuse path; `zap` (CPU 2)
//!   MADV_DONTNEEDs the page.
//! - Setup: a one-page private anonymous mapping, read-only (one per run,
//!   its page tables kept across iterations); each iteration faults the page
//!   in for reading and `mprotect`s the VMA read-write: the PTE stays
//!   read-only, the page has refcount 1 and mapcount 1, and the next store
//!   takes a write fault. Teardown makes the VMA read-only again.
//! - Handshake: the zap starts once the fault has locked the page (it sees
//!   `PG_locked`) or the store is done, as a zap can only race with a fault
//!   that already found the page mapped; the window is the rest of the
//!   reuse path. Neither role spins after its operation: under QEMU TCG a
//!   spinning vCPU must be scheduled for every IPTE (all vCPUs synchronise)
//!   and every flush IPI, which on a loaded host costs a time slice each.
//! - Variants, as Linux 5.9 shipped them: `buggy-immediate` (unlock after
//!   the PTL release; pages freed at the PTE clear, as s390), `buggy-batched`
//!   (the same order; pages freed after the gather's flush, as x86), `fixed`
//!   (unlock under the PTL, be068f29034f; batched freeing, as x86) and
//!   `fixed-immediate` (the same fix with pages freed at the PTE clear: the
//!   s390 5.9 configuration, where the seed's report came from). Each pair
//!   differs in one knob. Immediate freeing is what s390 ships because its
//!   PTE clear (IPTE) has purged every TLB; run on x86-64 it frees a page
//!   before the flush, and a CPU can still store to it through its TLB — a
//!   different bug, not this row's, which the frame detector reports there
//!   (in `buggy-immediate` runs, and now and then in natural
//!   `fixed-immediate` runs: the fault's retried store through the TLB
//!   entry `wp_page_reuse` installed, after the zap freed the page).
//! - Forced schedule: the fault holds at `wp:before_unlock_page` while the
//!   zap takes the PTL, clears the PTE and finishes the MADV_DONTNEED
//!   (`madvise:after_dontneed`: the page is freed by then under either
//!   policy); then the fault unlocks. Buggy: the PTL is free, the zap frees
//!   the locked page. With batched freeing on x86-64 the gather's flush IPI
//!   reaches the fault's CPU, which holds with interrupts on (a fault taken
//!   with interrupts on runs with them on). Fixed (either freeing policy):
//!   the fault holds the PTL at that point, the zap spins on it: the fix's
//!   own wait (`fix_waits: [Ptl]`), so the runner releases the schedule and
//!   the iteration completes clean.
//! - Natural: random delays at `wp:before_unlock_page` and `zap:before_ptl`.
//! - Overlap (the roles met inside the window): the zap reached the PTL
//!   (`zap:before_ptl`) while the fault held the page locked in its reuse
//!   path — after the lock (the zap starts only then), before the fault
//!   left `wp:before_unlock_page` to unlock. Buggy: the zap then clears the
//!   PTE and frees the page, before the unlock or after it; fixed: the
//!   fault holds the PTL there, the zap waits for it.
//! - Detectors: the runner's bad-page check (the locked page freed), a write
//!   to the freed, poisoned descriptor, a store to the freed, poisoned frame
//!   (x86-64 with immediate freeing: the page is freed at the PTE clear,
//!   before the flush, and the fault's CPU may still store through its TLB
//!   entry — why x86 batches), a refcount underflow.
//! - Teardown: the page the free checks leaked (count 0, not poisoned,
//!   unlocked by the fault since) is freed for good; a freed frame a stale
//!   store modified is poisoned again; the page the fault's retried store
//!   mapped after the zap is zapped.

use crate::{roles, schedule};
use crate::mm::arch::Mmu;
use crate::mm::memory::{self, WpUnlock};
use crate::mm::mm::{Mm, VmFlags};
use crate::mm::mmu_gather::{self, PageFree, TlbPolicy};
use crate::mm::page::{pfn_to_page, PG_locked, PG_poisoned};
use crate::mm::{page_alloc, PAGE_SIZE};
use crate::percpu;
use crate::race::detect::{self, Finding};
use crate::race::point::{self, points};
use crate::race::user;
use crate::race::scenario::{
    Commit, CommitRole::Fix, CommitRole::Introduced, Ctx, Inject, Row, RowInfo, RunMm, Variant,
};
use crate::race::waitfor::WaitClass;
use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, Ordering};

roles!(FAULT = "fault", ZAP = "zap");

/// What the fault stores.
const MARK: u64 = 0x5750_5f72_6575_7365;

/// The row.
pub struct WpUnlockVsZap;

/// A variant's knobs.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Where `do_wp_page`'s reuse path unlocks the page.
    order: WpUnlock,
    /// When the zap frees the page.
    page_free: PageFree,
}

/// What the roles share in an iteration.
#[derive(Default)]
pub struct State {
    /// The fault's store is done.
    fault_done: AtomicBool,
    /// [`page_alloc::nr_bad_pages`] when the iteration was set up.
    bad_seq: u64,
}

impl<A: Mmu> Row<A> for WpUnlockVsZap {
    const INFO: RowInfo = RowInfo {
        catalogue: Some(1),
        seed: "seed 000: \"BUG: Bad page state in process dirtyc0w_child\" on s390 (Sept 2020)",
        commits: &[
            Commit::new("09854ba94c6a", Some("mm: do_wp_page() simplification"), None, Introduced),
            Commit::new("be068f29034f", Some("mm: fix misplaced unlock_page in do_wp_page()"), Some("5.9-rc7"), Fix),
        ],
        delay_points: &[&points::WP_BEFORE_UNLOCK_PAGE, &points::ZAP_BEFORE_PTL],
        trace_points: &[&points::GATHER_AFTER_FLUSH],
        schedule: schedule![
            FAULT at points::WP_BEFORE_UNLOCK_PAGE;
            ZAP at points::ZAP_BEFORE_PTL, points::ZAP_AFTER_PTE_CLEAR, points::MADVISE_AFTER_DONTNEED;
            FAULT leave points::WP_BEFORE_UNLOCK_PAGE;
        ],
        ..RowInfo::new("wp-unlock-vs-zap", "do_wp_page unlocks a reused page after the PTL release; MADV_DONTNEED frees it locked", ROLES)
    };
    type Config = Config;
    const VARIANTS: &'static [Variant<Config>] = &[
        Variant::new("buggy-immediate", "unlock_page after the PTL release (09854ba94c6a); pages freed at the PTE clear", "Linux 5.9 with 09854ba94c6a, before be068f29034f, as s390 shipped it: pages freed at the PTE clear", &[], Config { order: WpUnlock::AfterPtl, page_free: PageFree::Immediate }),
        Variant::new("buggy-batched", "unlock_page after the PTL release (09854ba94c6a); pages freed after the flush", "Linux 5.9 with 09854ba94c6a, before be068f29034f, as x86 shipped it: pages batched until after the flush", &[], Config { order: WpUnlock::AfterPtl, page_free: PageFree::Batched }),
        Variant::new("fixed", "unlock_page under the PTL (be068f29034f); pages freed after the flush", "be068f29034f (5.9-rc7) as x86 shipped it: pages batched until after the flush", &[WaitClass::Ptl], Config { order: WpUnlock::BeforePtl, page_free: PageFree::Batched }),
        Variant::new("fixed-immediate", "unlock_page under the PTL (be068f29034f); pages freed at the PTE clear", "be068f29034f (5.9-rc7) as s390 shipped it: pages freed at the PTE clear", &[WaitClass::Ptl], Config { order: WpUnlock::BeforePtl, page_free: PageFree::Immediate }),
    ];
    type State = State;
    /// The run's mm, with its VMA and page tables, lent to every
    /// iteration: building and tearing down an address space per
    /// iteration would cost several times the race itself.
    type Run = RunMm<A>;

    fn prepare(v: &Variant<Config>) -> Result<RunMm<A>, &'static str> {
        memory::set_wp_unlock_order(v.config.order);
        mmu_gather::set_tlb_policy(TlbPolicy {
            page_free: v.config.page_free,
            ..mmu_gather::tlb_policy()
        });
        // The VMA, and the page tables a first fault allocates (a zap keeps
        // them): every iteration then starts from the same frames.
        let addr = page_addr::<A>();
        Ok(RunMm::build(|mm| {
            memory::mmap_anon(mm, addr, PAGE_SIZE, VmFlags::RO, true)
                .and_then(|()| memory::madvise_dontneed(mm, addr, PAGE_SIZE))
        }))
    }

    fn run_mm(run: &mut RunMm<A>) -> Option<&mut RunMm<A>> {
        Some(run)
    }

    fn setup(_: &mut RunMm<A>, ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        let addr = page_addr::<A>();
        ctx.state.bad_seq = page_alloc::nr_bad_pages();
        ctx.addr = addr;
        ctx.pfns = Vec::from([write_protected_page(ctx.mm(), addr)?]);
        // inject=misplaced-point: the bug, with its point out of the window
        // (the runner restores the order when the run ends).
        if ctx.inject == Some(Inject::MisplacedPoint) {
            memory::set_wp_unlock_order(WpUnlock::AfterPtlPointUnderPtl);
        }
        Ok(())
    }

    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool {
        let addr = ctx.addr;
        match role {
            FAULT => {
                let reused = memory::WP_REUSED.load(Ordering::Relaxed);
                let faults = page_faults::<A>();
                // A plain store through the MMU: the write-protect fault runs
                // do_wp_page and the store is retried.
                let stored = A::probe_store(addr, MARK).is_ok();
                ctx.state.fault_done.store(true, Ordering::Release);
                // Completed: the store went through a hardware fault that
                // reused the page (no other CPU faults during a run).
                stored
                    && page_faults::<A>() > faults
                    && memory::WP_REUSED.load(Ordering::Relaxed) > reused
            }
            _ => {
                let p = pfn_to_page(ctx.pfns[0]);
                point::wait_until::<A>(|| {
                    p.test_flag(PG_locked) || ctx.state.fault_done.load(Ordering::Acquire)
                });
                // Completed: the zap dropped the PTE's reference, the page's
                // last (the fault holds none).
                memory::madvise_dontneed_counted(ctx.mm(), addr, PAGE_SIZE) == Ok(1)
            }
        }
    }

    fn detect(ctx: &Ctx<A, Self>) -> Option<Finding> {
        let pfn = ctx.pfns[0];
        detect::poisoned_descriptor_written(pfn)
            .or_else(|| detect::poisoned_frame_written(pfn))
            .or_else(|| detect::refcount_underflow(pfn))
            .map(|f| f.at(ctx.addr))
    }

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        let zap = ctx.first_pass(ZAP, &points::ZAP_BEFORE_PTL);
        let unlock = ctx.first_pass(FAULT, &points::WP_BEFORE_UNLOCK_PAGE);
        matches!((zap, unlock), (Some(zap), Some(unlock)) if zap.before(&unlock))
    }

    fn teardown(_: &mut RunMm<A>, ctx: &mut Ctx<A, Self>) {
        if let Some(&pfn) = ctx.pfns.first() {
            let p = pfn_to_page(pfn);
            let leaked = page_alloc::bad_page_reports_since(ctx.state.bad_seq)
                .iter()
                .any(|r| r.pfn == pfn);
            // Freed while locked, the page was leaked by the free checks:
            // count 0, not poisoned; the fault has unlocked it since. Free it
            // for good.
            if leaked
                && p._refcount.load(Ordering::Acquire) == 0
                && !p.test_flag(PG_poisoned)
                && !p.test_flag(PG_locked)
            {
                page_alloc::free_frozen_pages(p, 0);
            }
            // Freed at the PTE clear, before any flush (x86-64 with immediate
            // freeing), the page can still take the fault's store through a
            // stale TLB entry: put the poison back.
            if detect::poisoned_frame_written(pfn).is_some() {
                page_alloc::repoison_free_frame(pfn);
            }
        }
        // The page the fault's retried store mapped after the zap, if any;
        // the VMA and the page tables stay for the next iteration (the
        // runner takes the mm back). Unfit, it is torn down and the next
        // iteration fails.
        let kept = ctx.mm.as_deref().is_some_and(|mm| {
            memory::madvise_dontneed(mm, ctx.addr, PAGE_SIZE).is_ok()
                && memory::mprotect(mm, ctx.addr, PAGE_SIZE, VmFlags::RO).is_ok()
        });
        if !kept {
            if let Some(mm) = ctx.mm.take() {
                memory::exit_mmap(*mm);
            }
        }
    }

}

/// The address of the page.
fn page_addr<A: Mmu>() -> u64 {
    A::TASK_BASE
}

/// Faults the page at `addr` in for reading in the read-only VMA, then
/// makes the VMA writable (`mprotect` read-write: the PTE stays read-only,
/// the next store takes a write fault) — the state `mprotect(PROT_READ)`
/// and back leaves a private anonymous page in. No CPU can hold a writable
/// translation of the page, so nothing needs a flush. Returns the pfn. The
/// page has one reference and one mapping, as `do_wp_page`'s reuse
/// requires.
fn write_protected_page<A: Mmu>(mm: &Mm<A>, addr: u64) -> Result<u64, String> {
    user::fault_in(mm, addr, false)?;
    memory::mprotect(mm, addr, PAGE_SIZE, VmFlags::RW).map_err(|e| format!("mprotect: {e:?}"))?;
    let pfn = user::present_pte(mm, addr, false)?;
    user::exclusive_anon(pfn)?;
    Ok(pfn)
}

fn page_faults<A: Mmu>() -> u64 {
    percpu::this_cpu::<A>().page_faults.load(Ordering::Relaxed)
}
