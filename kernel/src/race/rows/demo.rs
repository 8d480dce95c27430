//! `demo-lock-vs-put`: the smallest complete row, written the way the
//! catalogue's rows are, and the framework's end-to-end check.
//!
//! The race (the core of catalogue row 1, without the page tables): role
//! `locker` locks a page it found (the page lock, as `do_wp_page` does) and
//! unlocks it later; role `putter` drops the page's last reference (as a
//! zap does). If the last reference goes while the page is locked, the free
//! checks report "bad page state" (`PG_locked` at free) and the locker's
//! unlock then writes to a page that was freed.
//!
//! - Variants: `buggy` — the locker holds no reference of its own, it
//!   relies on the putter's; `fixed` — the locker takes a reference before
//!   `lock_page` and drops it after `unlock_page` (the `get_page` fix).
//! - Handshake: the putter drops its reference only after the locker has the
//!   page locked (`State::locked`), as a zap can only find a page a fault has
//!   already found mapped; the window is the locked section.
//! - Forced schedule: the locker holds at `demo:locked` until the putter has
//!   passed `demo:after_put`. Buggy: `bug` in every iteration; fixed:
//!   `clean`.
//! - Natural: random delays at `demo:locked` and `demo:before_put` widen or
//!   close the window.
//! - Overlap (the roles met inside the window): the putter's reference
//!   was gone when the locker went on to unlock — the locker reads the
//!   page's refcount right before `unlock_page` and finds only its own
//!   references left (none in `buggy`, the one it took in `fixed`).
//! - Detector: the bad-page report (always checked by the runner).
//! - Teardown: a page leaked by the free checks (its count 0, not poisoned)
//!   is freed for good once unlocked.

use crate::{roles, schedule};
use crate::race::point::{self, race_point, RacePoint};
use crate::race::scenario::{Commit, CommitRole::Context, Ctx, Row, RowInfo, Variant};
use crate::mm::arch::Mmu;
use crate::mm::page::{self, pfn_to_page, PG_poisoned};
use crate::mm::page_alloc;
use alloc::{string::String, vec::Vec};
use core::sync::atomic::{AtomicBool, Ordering};

/// The page is locked.
static LOCKED: RacePoint = RacePoint::new("demo:locked");
/// About to drop the last reference.
static BEFORE_PUT: RacePoint = RacePoint::new("demo:before_put");
/// The reference is dropped.
static AFTER_PUT: RacePoint = RacePoint::new("demo:after_put");

roles!(LOCKER = "locker", PUTTER = "putter");

/// The row.
pub struct DemoLockVsPut;

/// What the roles share in an iteration.
#[derive(Default)]
pub struct State {
    /// The locker holds the page lock.
    locked: AtomicBool,
    /// The putter's reference was gone before the unlock.
    put_first: AtomicBool,
}

impl<A: Mmu> Row<A> for DemoLockVsPut {
    const INFO: RowInfo = RowInfo {
        seed: "none: a demonstration row, the core of catalogue row 1 (seed 000) without the page tables",
        commits: &[
            Commit::new("09854ba94c6a", Some("mm: do_wp_page() simplification"), None, Context),
            Commit::new("be068f29034f", Some("mm: fix misplaced unlock_page in do_wp_page()"), Some("5.9-rc7"), Context),
        ],
        delay_points: &[&LOCKED, &BEFORE_PUT],
        schedule: schedule![
            LOCKER at LOCKED;
            PUTTER at BEFORE_PUT, AFTER_PUT;
            LOCKER leave LOCKED;
        ],
        ..RowInfo::new("demo-lock-vs-put", "a page's last reference dropped while another CPU holds its lock", ROLES)
    };
    /// Whether the locker holds a reference of its own.
    type Config = bool;
    const VARIANTS: &'static [Variant<bool>] = &[
        Variant::new("buggy", "the locker relies on the putter's reference", "no Linux kernel: the core of 09854ba94c6a's race (a page locked by a CPU that holds no reference of its own), without the page tables", &[], false),
        Variant::new("fixed", "the locker holds its own reference across lock_page..unlock_page", "no Linux kernel: catalogue row 1's other fix in words, the locker holds its own reference (get_page) across lock_page..unlock_page", &[], true),
    ];
    type State = State;
    type Run = ();

    fn setup(_: &mut (), ctx: &mut Ctx<A, Self>) -> Result<(), String> {
        let page = page_alloc::alloc_page().ok_or_else(|| String::from("out of memory"))?;
        ctx.pfns = Vec::from([page::page_to_pfn(page)]);
        Ok(())
    }

    fn role(ctx: &Ctx<A, Self>, role: usize) -> bool {
        let pfn = ctx.pfns[0];
        let page = pfn_to_page(pfn);
        if role == LOCKER {
            if ctx.config() {
                page::get_page(page);
            }
            page::lock_page(page);
            ctx.state.locked.store(true, Ordering::Release);
            race_point::<A>(&LOCKED, pfn);
            let own = i32::from(ctx.config());
            let put_first = page::page_ref_count(page) == own;
            ctx.state.put_first.store(put_first, Ordering::Relaxed);
            page::unlock_page(page);
            if ctx.config() {
                page::put_page(page);
            }
        } else {
            point::wait_until::<A>(|| ctx.state.locked.load(Ordering::Acquire));
            race_point::<A>(&BEFORE_PUT, pfn);
            page::put_page(page);
            race_point::<A>(&AFTER_PUT, pfn);
        }
        true
    }

    fn overlapped(ctx: &Ctx<A, Self>) -> bool {
        ctx.state.put_first.load(Ordering::Relaxed)
    }

    fn teardown(_: &mut (), ctx: &mut Ctx<A, Self>) {
        let page = pfn_to_page(ctx.pfns[0]);
        // Freed normally: poisoned. Leaked by the free checks: count 0, not
        // poisoned, unlocked by now; free it for good.
        if page._refcount.load(Ordering::Acquire) == 0 && !page.test_flag(PG_poisoned) {
            page_alloc::free_frozen_pages(page, 0);
        }
    }

}
