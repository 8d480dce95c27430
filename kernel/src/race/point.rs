//! Race points: named places in the mm code where a scenario can widen a
//! window (natural mode) or hold a CPU until another has gone somewhere
//! (forced mode).
//!
//! A point is a `static` [`RacePoint`] declared in [`points`] and placed in
//! the code with [`race_point`]. Unarmed, a point is one relaxed load of its
//! state and a not-taken branch (`race.unarmed_point_cost` measures it,
//! `race_point_unarmed_ns`). Armed ([`arm`]) it is traced — a role CPU's
//! arrival, and its departure when a delay or the schedule held it there
//! ([`trace::Pass`]) — and:
//! - **natural**: on a CPU that runs a role, it may busy-wait a random time
//!   before going on. The delay is a pure function of the seed, the
//!   iteration, the role, the point and how many armed points the role has
//!   passed in this iteration, so a seed repeats a run's delays exactly
//!   ([`delay_for`]);
//! - **forced**: it follows the schedule ([`set_schedule`]), a list of
//!   [`Step`]s in the global order they must happen. Each role takes its own
//!   steps in its program order. When a role reaches a point and its next
//!   step is `at` that point, it waits there until every earlier step is
//!   done, then takes the step; if its next step after that is `leave` the
//!   same point, it waits again until every step before that one is done. A
//!   point that is not the role's next step is passed freely.
//!
//! A waiting CPU spins with `cpu_relax` and never changes its interrupt
//! state: a CPU that reached the point with interrupts off holds every
//! maskable interrupt (IPIs, the tick) until it leaves. While it waits it
//! publishes a wait record for the prover ([`super::waitfor`]) and samples its
//! own interrupt hardware for pending IPIs. [`abort`] releases every waiter
//! (after a hang or a proven cycle), and from then on armed points pass.
//!
//! Invariants: points are armed, the schedule set and the roles assigned only
//! while no role runs (between iterations); the schedule cursor is advanced
//! only by the CPU taking the current step.

use super::trace::{self, Kind};
use crate::{Arch, NR_CPUS};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// A named race point.
pub struct RacePoint {
    /// `subsystem:where`, e.g. `zap:after_pte_clear`.
    pub name: &'static str,
    state: AtomicU8,
}

const OFF: u8 = 0;
const TRACE: u8 = 1;
const DELAY: u8 = 2;
const SCHEDULE: u8 = 3;
const EXPLORE: u8 = 4;

impl RacePoint {
    /// A new, unarmed point.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            state: AtomicU8::new(OFF),
        }
    }

    /// Whether the point is armed.
    pub fn armed(&self) -> bool {
        self.state.load(Ordering::Relaxed) != OFF
    }
}

impl core::fmt::Debug for RacePoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

/// The race points placed in the mm code (and the framework's test
/// points). A point only one row places, in the row's own code, is a
/// `static` [`RacePoint`] in the row's file.
pub mod points {
    use super::RacePoint;

    /// Declares each race point once: a `pub static` per point and
    /// [`ALL`], the list of every one, in declaration order (no list to
    /// keep in step by hand).
    macro_rules! race_points {
        ($($(#[$doc:meta])* $id:ident = $name:literal;)*) => {
            $($(#[$doc])* pub static $id: RacePoint = RacePoint::new($name);)*
            /// Every race point, in declaration order.
            pub static ALL: &[&RacePoint] = &[$(&$id),*];
        };
    }

    race_points! {
        /// `zap_pte_range`: a PTE was cleared (its TLB entry may still live on
        /// other CPUs), the PTL is held. `addr` = the virtual address.
        ZAP_AFTER_PTE_CLEAR = "zap:after_pte_clear";
        /// `zap_pte_range`: about to take the PTL of a PTE table.
        ZAP_BEFORE_PTL = "zap:before_ptl";
        /// `tlb_flush_mmu`: the batch's TLB flush is done, its pages not yet
        /// freed.
        GATHER_AFTER_FLUSH = "gather:after_flush";
        /// GUP-fast (`gup_fast_pmd_range`): the PMD entry was read (interrupts
        /// off), the PTE table it points to not yet. `addr` = the virtual
        /// address.
        GUP_FAST_AFTER_PMD_READ = "gup_fast:after_pmd_read";
        /// The mmu_gather's `free_tables` (right after the flush, after the IPI
        /// sync, or in the RCU callback): unhooked page tables were freed.
        /// `addr` = the physical address of the first table.
        GATHER_AFTER_TABLE_FREE = "gather:after_table_free";
        /// `free_pgtables` (`free_pte_range`): a PMD entry was cleared, its PTE
        /// table handed to the gather (not yet flushed or freed);
        /// `page_table_lock` held. `addr` = the block's virtual address.
        FREE_PGTABLES_AFTER_PMD_CLEAR = "free_pgtables:after_pmd_clear";
        /// The framework's own test points (`race` suite).
        TEST_A = "test:a";
        /// See [`TEST_A`].
        TEST_B = "test:b";
        /// See [`TEST_A`].
        TEST_C = "test:c";

        /// `do_wp_page` reuse: about to `unlock_page` the reused page (after
        /// the PTL release in the buggy order, under the PTL in the fixed one).
        /// `addr` = the faulting virtual address.
        WP_BEFORE_UNLOCK_PAGE = "wp:before_unlock_page";
        /// `madvise(MADV_DONTNEED)`: the range is zapped, flushed and its pages
        /// freed (`tlb_finish_mmu` returned); `mmap_lock` still held for read.
        MADVISE_AFTER_DONTNEED = "madvise:after_dontneed";
        /// `__add_to_swap_cache`, page locked: where the two insertion orders
        /// differ — `PG_swapcache` and `private` set, the tree slot not yet
        /// filled (`FlagFirst`), or nothing done yet (`Together`). `addr` = the
        /// swap entry.
        SWAP_ADD_WINDOW = "swap:add_window";
        /// `page_remove_rmap_nolock` (the zap), StorageKey dirty tracking: the
        /// last mapping of a page with a mapping is gone and its frame's change
        /// bit was found set (and cleared); the page is not yet dirtied. `addr`
        /// = the pfn.
        RMAP_SKEY_DIRTY = "rmap:skey_dirty";

        /// `zap_pte_range`: the PTEs of the table are cleared (a dirty file
        /// PTE's page dirtied; its rmap gone too unless the gather delays it,
        /// as 5df397dec7c4 does with batched freeing), the flush under the
        /// PTL is next where one is forced, else the unlock; the PTL is held.
        /// `addr` = the first address of the range.
        ZAP_BEFORE_PTL_FLUSH = "zap:before_ptl_flush";
        /// `tlb_finish_mmu`: the gather is about to end (the nested check, the
        /// last flush, the frees); no PTL held.
        GATHER_BEFORE_FINISH = "gather:before_finish";
        /// `writeback` (`write_one_page`): the page is locked, `folio_mkclean`
        /// is next. `addr` = the pfn.
        WRITEBACK_BEFORE_MKCLEAN = "writeback:before_mkclean";
        /// `writeback`: the frame was copied to the backing store (and
        /// `nr_written` counted), the page is still locked. `addr` = the pfn.
        WRITEBACK_AFTER_WRITE = "writeback:after_write";
        /// A row's user program: about to store to user memory. `addr` = the
        /// virtual address.
        USER_BEFORE_STORE = "user:before_store";
        /// A row's user program: its store to user memory is done.
        USER_AFTER_STORE = "user:after_store";
        /// A row's user program: a system call (e.g. MADV_DONTNEED) returned
        /// and the program published that it did.
        USER_SYSCALL_RETURNED = "user:syscall_returned";

        /// GUP-fast (`gup_fast_pte_range`): a reference was taken on the page
        /// of a PTE and the rechecks (PMD, if on, and PTE) were read; the walk
        /// has not yet acted on them. `addr` = the virtual address.
        GUP_FAST_AFTER_RECHECK = "gup_fast:after_recheck";
        /// GUP-fast (`get_user_pages_fast`): the lockless walk is over and
        /// interrupts are restored, before any fallback to slow GUP. `addr` =
        /// the start of the range.
        GUP_FAST_AFTER_WALK = "gup_fast:after_walk";
        /// `collapse_huge_page`: `mmap_lock` is held for write and the block
        /// checked, the PMD not yet cleared. `addr` = the block's virtual
        /// address.
        COLLAPSE_BEFORE_PMD_CLEAR = "khugepaged:before_pmd_clear";
        /// `pmdp_collapse_flush` (collapse, split): the PMD entry is cleared
        /// (on s390x IDTE has purged the TLBs with it), the flush of the block
        /// is next where the clear does not flush. `addr` = the block's
        /// virtual address.
        PMDP_COLLAPSE_AFTER_CLEAR = "pmdp_collapse_flush:after_clear";
        /// `collapse_huge_page`: the PMD was cleared and flushed and every
        /// small page passed the pin check (locked, PTL released), nothing
        /// copied yet. `addr` = the block's virtual address.
        COLLAPSE_AFTER_ISOLATE = "khugepaged:after_isolate";
        /// `collapse_huge_page`: the new block is installed, `mmap_lock` still
        /// held for write. `addr` = the block's virtual address.
        COLLAPSE_AFTER_INSTALL = "khugepaged:after_install";

        /// The fragment allocator (`pte_alloc_one`): a fresh block was allocated
        /// (its head has the allocator's one reference), its fragment count not
        /// yet set. `addr` = the head's pfn.
        FRAG_AFTER_BLOCK_ALLOC = "frag:after_block_alloc";
        /// The fragment allocator: the fresh block is a compound page-table
        /// block, its fragment count is set next. `addr` = the head's pfn.
        FRAG_BEFORE_BLOCK_COUNT = "frag:before_block_count";
        /// The fragment allocator: the fresh block's fragment count is set (with
        /// `set_page_count`, in the separate counter, or in the top bits, as the
        /// policy says). `addr` = the head's pfn.
        FRAG_AFTER_BLOCK_COUNT = "frag:after_block_count";
        /// The pfn scanner: `get_page_unless_zero` took a speculative reference,
        /// not yet dropped. `addr` = the pfn.
        PFN_SCAN_AFTER_GET = "pfn_scan:after_get";
        /// The pfn scanner: the speculative reference was dropped (`put_page`,
        /// which frees the frame if it was the last). `addr` = the pfn.
        PFN_SCAN_AFTER_PUT = "pfn_scan:after_put";

        /// The runner's role loop: the role is about to run its operation
        /// (explore mode parks every role here first).
        ROLE_START = "role:start";
        /// The runner's role loop: the role's operation returned.
        ROLE_END = "role:end";
        /// A role waits until another role made a condition true (a row's
        /// handshake, [`super::wait_until`]).
        ROLE_WAIT = "role:wait";

        // Synchronisation events: explore mode schedules at each (as CHESS
        // schedules at synchronisation), so a window no hand-placed point
        // marks is still explored. Placed with [`super::sync_point`].
        /// About to take a page-table lock (`spin_lock(ptl)`). `addr` = the
        /// lock's index.
        SYNC_PTL_LOCK = "sync:ptl_lock";
        /// A page-table lock was released. `addr` = the lock's index.
        SYNC_PTL_UNLOCK = "sync:ptl_unlock";
        /// About to take a page lock (`lock_page`, `trylock_page`). `addr` =
        /// the pfn.
        SYNC_PAGE_LOCK = "sync:page_lock";
        /// A page lock was released (`unlock_page`). `addr` = the pfn.
        SYNC_PAGE_UNLOCK = "sync:page_unlock";
        /// About to take a page reference (`get_page`,
        /// `get_page_unless_zero`). `addr` = the pfn.
        SYNC_PAGE_GET = "sync:page_get";
        /// About to drop a page reference (`put_page`). `addr` = the pfn.
        SYNC_PAGE_PUT = "sync:page_put";
        /// About to free a block to the allocator (`free_frozen_pages`).
        /// `addr` = the pfn.
        SYNC_FREE_PAGE = "sync:free_page";
        /// About to free unhooked page tables (`free_tables`). `addr` = the
        /// physical address of the first table.
        SYNC_FREE_TABLE = "sync:free_table";
        /// About to issue a TLB flush (`flush_tlb_*`). `addr` = the start of
        /// the range (0 for a whole mm).
        SYNC_FLUSH = "sync:flush";
        /// About to take `mmap_lock` (read or write). `addr` = 1 for write.
        SYNC_MMAP_LOCK = "sync:mmap_lock";
        /// `mmap_lock` was released. `addr` = 1 for write.
        SYNC_MMAP_UNLOCK = "sync:mmap_unlock";
    }

    /// The synchronisation events explore mode schedules at.
    pub static SYNC: &[&RacePoint] = &[
        &SYNC_PTL_LOCK,
        &SYNC_PTL_UNLOCK,
        &SYNC_PAGE_LOCK,
        &SYNC_PAGE_UNLOCK,
        &SYNC_PAGE_GET,
        &SYNC_PAGE_PUT,
        &SYNC_FREE_PAGE,
        &SYNC_FREE_TABLE,
        &SYNC_FLUSH,
        &SYNC_MMAP_LOCK,
        &SYNC_MMAP_UNLOCK,
    ];

    /// The point named `name`.
    pub fn by_name(name: &str) -> Option<&'static RacePoint> {
        ALL.iter().copied().find(|p| p.name == name)
    }
}

/// Marks a race point. `addr` is traced with it (a virtual address, a pfn,
/// or 0).
#[inline(always)]
pub fn race_point<A: Arch>(p: &'static RacePoint, addr: u64) {
    if p.state.load(Ordering::Relaxed) != OFF {
        hit::<A>(p, addr);
    }
}

/// [`race_point`] for code without an `A: Arch` (the page lock, page
/// references, the PTL): the synchronisation events of [`points::SYNC`].
#[inline(always)]
pub fn sync_point(p: &'static RacePoint, addr: u64) {
    if p.state.load(Ordering::Relaxed) != OFF {
        super::hit_point(p, addr);
    }
}

/// The arch-typed [`hit`], for [`super::init`]'s hooks.
pub(crate) fn hit_dyn<A: Arch>(p: &'static RacePoint, addr: u64) {
    hit::<A>(p, addr);
}

/// Interrupt handlers running on each CPU (nesting depth): in explore mode
/// a point reached in an interrupt handler is traced but does not park the
/// CPU: only a role's own program is scheduled.
static IRQ_DEPTH: [AtomicU8; NR_CPUS] = [const { AtomicU8::new(0) }; NR_CPUS];

/// An interrupt handler runs on `cpu` until the guard is dropped.
pub struct IrqContext(usize);

impl IrqContext {
    /// Enters interrupt context on `cpu` (the caller).
    pub fn enter(cpu: usize) -> Self {
        IRQ_DEPTH[cpu].fetch_add(1, Ordering::Relaxed);
        IrqContext(cpu)
    }
}

impl Drop for IrqContext {
    fn drop(&mut self) {
        IRQ_DEPTH[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

// ---- run configuration (changed only between iterations) ------------------------

/// No role on this CPU.
const NO_ROLE: u8 = u8::MAX;
static ROLE_OF_CPU: [AtomicU8; NR_CPUS] = [const { AtomicU8::new(NO_ROLE) }; NR_CPUS];
static CPU_OF_ROLE: [AtomicUsize; 8] = [const { AtomicUsize::new(usize::MAX) }; 8];
/// Armed points passed by each CPU in the iteration (natural delays).
static HITS: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];

/// Largest schedule: a replay of the longest explore schedule fits.
pub const MAX_STEPS: usize = 2 * super::scenario::EXPLORE_MAX_DECISIONS + 16;
static STEP_POINT: [AtomicUsize; MAX_STEPS] = [const { AtomicUsize::new(0) }; MAX_STEPS];
/// `role | leave << 7`.
static STEP_ROLE: [AtomicU8; MAX_STEPS] = [const { AtomicU8::new(0) }; MAX_STEPS];
static NR_STEPS: AtomicUsize = AtomicUsize::new(0);
static CURSOR: AtomicUsize = AtomicUsize::new(0);

/// Addresses of the schedule state a CPU held at a point reads on every
/// turn of its wait, forced or parked by explore mode
/// ([`crate::race::user::stale_tlb_base`] keeps user pages off their TLB
/// slots).
pub(crate) fn wait_state_addrs() -> [u64; 10] {
    [
        &CURSOR as *const _ as u64,
        STEP_POINT.as_ptr() as u64,
        HITS.as_ptr() as u64,
        &ABORT as *const _ as u64,
        IRQ_DEPTH.as_ptr() as u64,
        EX_ARRIVED.as_ptr() as u64,
        EX_GRANTED.as_ptr() as u64,
        EX_AT.as_ptr() as u64,
        EX_WATCH.as_ptr() as u64,
        EX_COND.as_ptr() as u64,
    ]
}
static ABORT: AtomicBool = AtomicBool::new(false);

static SEED: AtomicU64 = AtomicU64::new(0);
static ITERATION: AtomicU64 = AtomicU64::new(0);
static MAX_DELAY_NS: AtomicU64 = AtomicU64::new(0);
/// Times a waiting CPU found its interrupt state changed (must stay 0).
static IRQ_STATE_CHANGES: AtomicU64 = AtomicU64::new(0);

/// A forced schedule as a constant: one line per run of steps a role
/// takes in a row, `ROLE at POINT, POINT, ...;` (it reaches each point in
/// turn and holds there until that step is due) or `ROLE leave POINT;`
/// (it holds at the point until every earlier step is done):
///
/// ```text
/// schedule![
///     FAULT at points::WP_BEFORE_UNLOCK_PAGE;
///     ZAP at points::ZAP_BEFORE_PTL, points::ZAP_AFTER_PTE_CLEAR;
///     FAULT leave points::WP_BEFORE_UNLOCK_PAGE;
/// ]
/// ```
///
/// is `&[Step::at(FAULT, &points::WP_BEFORE_UNLOCK_PAGE), Step::at(ZAP,
/// ...), Step::at(ZAP, ...), Step::leave(FAULT, ...)]`.
#[macro_export]
macro_rules! schedule {
    ($($role:ident $how:ident $($point:path),+;)*) => {
        &[$($($crate::race::point::Step::$how($role, &$point)),+),*]
    };
}

/// Declares a row's roles once: `roles!(FAULT = "fault", ZAP = "zap");`
/// is a `const FAULT: usize = 0;` and a `const ZAP: usize = 1;` (role `i`
/// runs on CPU `i + 1`) and `const ROLES: &[&str] = &["fault", "zap"];`,
/// their names for [`RowInfo::roles`](super::scenario::RowInfo::roles),
/// in the same order.
#[macro_export]
macro_rules! roles {
    ($($role:ident = $name:literal),+ $(,)?) => {
        $crate::roles!(@number 0usize; $($role)+);
        /// The roles' names, role `i` at index `i`.
        const ROLES: &[&str] = &[$($name),+];
    };
    (@number $n:expr; $role:ident $($rest:ident)*) => {
        #[allow(dead_code)]
        const $role: usize = $n;
        $crate::roles!(@number $n + 1; $($rest)*);
    };
    (@number $n:expr;) => {};
}

/// One step of a forced schedule.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The role (index into the scenario's roles).
    pub role: usize,
    /// The point.
    pub point: &'static RacePoint,
    /// `false`: the role reaches the point; `true`: it leaves the point it
    /// reached in its previous step.
    pub leave: bool,
}

impl Step {
    /// Role `role` reaches `point`.
    pub const fn at(role: usize, point: &'static RacePoint) -> Self {
        Self {
            role,
            point,
            leave: false,
        }
    }

    /// Role `role` leaves `point`, where its previous step put it.
    pub const fn leave(role: usize, point: &'static RacePoint) -> Self {
        Self {
            role,
            point,
            leave: true,
        }
    }
}

/// Assigns roles to CPUs: role `i` runs on `cpus[i]`.
pub fn set_roles(cpus: &[usize]) {
    for r in &ROLE_OF_CPU {
        r.store(NO_ROLE, Ordering::Relaxed);
    }
    for r in &CPU_OF_ROLE {
        r.store(usize::MAX, Ordering::Relaxed);
    }
    for (role, &cpu) in cpus.iter().enumerate() {
        ROLE_OF_CPU[cpu].store(role as u8, Ordering::Relaxed);
        CPU_OF_ROLE[role].store(cpu, Ordering::Relaxed);
    }
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// The role `cpu` runs, if any.
pub fn role_of(cpu: usize) -> Option<usize> {
    match ROLE_OF_CPU[cpu].load(Ordering::Relaxed) {
        NO_ROLE => None,
        r => Some(r as usize),
    }
}

/// The CPU that runs `role`.
pub fn cpu_of(role: usize) -> Option<usize> {
    CPU_OF_ROLE
        .get(role)
        .map(|c| c.load(Ordering::Relaxed))
        .filter(|&c| c != usize::MAX)
}

/// Installs a forced schedule and resets its cursor.
pub fn set_schedule(steps: &[Step]) {
    assert!(
        steps.len() <= MAX_STEPS,
        "schedule longer than {MAX_STEPS} steps"
    );
    for (i, s) in steps.iter().enumerate() {
        STEP_POINT[i].store(s.point as *const RacePoint as usize, Ordering::Relaxed);
        STEP_ROLE[i].store(s.role as u8 | (s.leave as u8) << 7, Ordering::Relaxed);
    }
    NR_STEPS.store(steps.len(), Ordering::Relaxed);
    CURSOR.store(0, Ordering::Relaxed);
    ABORT.store(false, Ordering::Relaxed);
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Sets the natural-mode delay parameters for the next iteration.
pub fn set_natural(seed: u64, iteration: u64, max_delay_ns: u64) {
    SEED.store(seed, Ordering::Relaxed);
    ITERATION.store(iteration, Ordering::Relaxed);
    MAX_DELAY_NS.store(max_delay_ns, Ordering::Relaxed);
    for h in &HITS {
        h.store(0, Ordering::Relaxed);
    }
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// How arming a point makes it behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arming {
    /// Traced only.
    Trace,
    /// Traced, and natural-mode random delays on role CPUs.
    Delay,
    /// Traced, and the forced schedule is followed there.
    Schedule,
    /// Traced, and a role that reaches it parks there until the explore
    /// controller grants it its next step ([`explore_grant`]).
    Explore,
}

/// Arms `p`.
pub fn arm(p: &'static RacePoint, how: Arming) {
    let v = match how {
        Arming::Trace => TRACE,
        Arming::Delay => DELAY,
        Arming::Schedule => SCHEDULE,
        Arming::Explore => EXPLORE,
    };
    let mut armed = ARMED.lock();
    if !armed.iter().any(|q| core::ptr::eq(*q, p)) {
        armed.push(p);
    }
    p.state.fetch_max(v, Ordering::SeqCst);
}

/// Every point armed since the last [`disarm_all`], wherever it is
/// declared (the mm code's in [`points`], a row's in its own file).
static ARMED: spin::Mutex<Vec<&'static RacePoint>> = spin::Mutex::new(Vec::new());

/// Disarms every point and clears the schedule.
pub fn disarm_all() {
    for p in ARMED.lock().drain(..) {
        p.state.store(OFF, Ordering::SeqCst);
    }
    NR_STEPS.store(0, Ordering::SeqCst);
    CURSOR.store(0, Ordering::SeqCst);
}

/// Points armed now (for the state checks).
pub fn armed_points() -> Vec<&'static str> {
    ARMED
        .lock()
        .iter()
        .filter(|p| p.armed())
        .map(|p| p.name)
        .collect()
}

/// Releases every CPU waiting at a point; later hits pass.
pub fn abort() {
    ABORT.store(true, Ordering::SeqCst);
}

/// Whether the schedule was aborted.
pub fn aborted() -> bool {
    ABORT.load(Ordering::Acquire)
}

/// The step the schedule is at, and the number of steps.
pub fn progress() -> (usize, usize) {
    (
        CURSOR.load(Ordering::Acquire),
        NR_STEPS.load(Ordering::Acquire),
    )
}

/// The CPU that takes step `i`.
pub fn step_cpu(i: usize) -> Option<usize> {
    if i >= NR_STEPS.load(Ordering::Acquire) {
        return None;
    }
    cpu_of((STEP_ROLE[i].load(Ordering::Relaxed) & 0x7f) as usize)
}

/// A step as the schedule holds it.
pub fn step(i: usize) -> Option<Step> {
    if i >= NR_STEPS.load(Ordering::Acquire) {
        return None;
    }
    let rl = STEP_ROLE[i].load(Ordering::Relaxed);
    // SAFETY: `set_schedule` stored the address of a `'static RacePoint`.
    let point = unsafe { &*(STEP_POINT[i].load(Ordering::Relaxed) as *const RacePoint) };
    Some(Step {
        role: (rl & 0x7f) as usize,
        point,
        leave: rl & 0x80 != 0,
    })
}

/// Times a waiting CPU found its interrupt state changed while it waited.
pub fn irq_state_changes() -> u64 {
    IRQ_STATE_CHANGES.load(Ordering::Relaxed)
}

/// The natural-mode delay of the `hit`-th armed point passed by `role` in
/// `iteration` at `p`: half of the hits get none, the others a uniform delay
/// below `max_ns` (splitmix64 of the inputs).
pub fn delay_for(
    seed: u64,
    iteration: u64,
    role: usize,
    p: &RacePoint,
    hit: u64,
    max_ns: u64,
) -> u64 {
    let mut h = 0u64;
    for b in p.name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let x =
        splitmix(seed ^ splitmix(iteration ^ splitmix((role as u64) << 32 ^ hit ^ splitmix(h))));
    if x & 1 == 0 || max_ns == 0 {
        0
    } else {
        (x >> 1) % max_ns
    }
}

/// splitmix64's finaliser.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cold]
#[inline(never)]
fn hit<A: Arch>(p: &'static RacePoint, addr: u64) {
    let cpu = A::smp_processor_id();
    let pa = p as *const RacePoint as u64;
    trace::record_on(cpu, Kind::Point, pa, addr);
    let Some(role) = role_of(cpu) else {
        return;
    };
    match p.state.load(Ordering::Relaxed) {
        DELAY => {
            let n = HITS[cpu].fetch_add(1, Ordering::Relaxed);
            let ns = delay_for(
                SEED.load(Ordering::Relaxed),
                ITERATION.load(Ordering::Relaxed),
                role,
                p,
                n,
                MAX_DELAY_NS.load(Ordering::Relaxed),
            );
            trace::record_on(cpu, Kind::Delay, pa, ns);
            if ns != 0 {
                crate::time::ndelay::<A>(ns);
                trace::record_on(cpu, Kind::Leave, pa, addr);
            }
        }
        SCHEDULE => {
            follow_schedule::<A>(cpu, role, p);
            trace::record_on(cpu, Kind::Leave, pa, addr);
        }
        EXPLORE if IRQ_DEPTH[cpu].load(Ordering::Relaxed) == 0 => {
            explore_park::<A>(cpu, role, p, addr);
            trace::record_on(cpu, Kind::Leave, pa, addr);
        }
        _ => {}
    }
}

/// The first step at or after the cursor that belongs to `role`.
fn next_step_of(role: usize, from: usize) -> Option<(usize, Step)> {
    let n = NR_STEPS.load(Ordering::Acquire);
    (from..n).find_map(|i| step(i).filter(|s| s.role == role).map(|s| (i, s)))
}

fn follow_schedule<A: Arch>(cpu: usize, role: usize, p: &'static RacePoint) {
    let mut expect_leave = false;
    loop {
        if ABORT.load(Ordering::Acquire) {
            return;
        }
        let cursor = CURSOR.load(Ordering::Acquire);
        let Some((i, s)) = next_step_of(role, cursor) else {
            return;
        };
        if !core::ptr::eq(s.point, p) || s.leave != expect_leave {
            return;
        }
        if i != cursor && !wait_for_step::<A>(cpu, i, p) {
            return; // aborted
        }
        trace::record_on(cpu, Kind::Step, p as *const RacePoint as u64, i as u64);
        CURSOR.store(i + 1, Ordering::Release);
        if s.leave {
            return;
        }
        expect_leave = true;
    }
}

/// Spins at `p` until step `i` is current; false if the schedule was
/// aborted.
fn wait_for_step<A: Arch>(cpu: usize, i: usize, p: &'static RacePoint) -> bool {
    hold::<A>(cpu, i, p, || CURSOR.load(Ordering::Acquire) == i)
}

/// Holds `cpu` at `p` (interrupt state kept, wait record "step `i`"
/// published, IPIs sampled) until `go` or an abort; false if aborted.
fn hold<A: Arch>(cpu: usize, i: usize, p: &'static RacePoint, go: impl Fn() -> bool) -> bool {
    hold_as::<A>(cpu, i, p, false, go)
}

/// [`hold`]; with `halt`, a CPU that holds with interrupts on halts between
/// checks (woken by an IPI or the tick) instead of spinning, leaving the
/// host's time to the CPU that runs.
fn hold_as<A: Arch>(
    cpu: usize,
    i: usize,
    p: &'static RacePoint,
    halt: bool,
    go: impl Fn() -> bool,
) -> bool {
    let irqs_off = A::irqs_disabled();
    HELD_AT[cpu].store(p as *const RacePoint as usize, Ordering::Relaxed);
    let saved = super::waitfor::begin(cpu, super::waitfor::Wait::Step { index: i }, irqs_off);
    let mut spins = 0u32;
    let reached = loop {
        if halt && !irqs_off && spins >= HALT_AFTER_SPINS {
            A::local_irq_disable();
            let (done, aborted) = (go(), ABORT.load(Ordering::Acquire));
            if done || aborted {
                A::local_irq_enable();
                break done;
            }
            crate::rcu::idle_halt::<A>();
            continue;
        }
        if go() {
            break true;
        }
        if ABORT.load(Ordering::Acquire) {
            break false;
        }
        if spins.is_multiple_of(64) {
            super::waitfor::sample_ipi::<A>(cpu);
            if A::irqs_disabled() != irqs_off {
                IRQ_STATE_CHANGES.fetch_add(1, Ordering::Relaxed);
            }
        }
        spins = spins.wrapping_add(1);
        A::cpu_relax();
    };
    super::waitfor::end(saved);
    HELD_AT[cpu].store(0, Ordering::Relaxed);
    reached
}

/// Checks a halting [`hold_as`] spins before it halts. Explore's next
/// decision most often grants the role that just parked again (the
/// running role goes on), within microseconds of its arrival; waking a
/// halted CPU costs the host more than that. Longer spins cost more than
/// they save: the spinning CPU takes host time from the one that runs
/// (measured on zap-rmap-vs-mkclean's 120 000 decisions: 1 024 checks
/// 7.8 s, none 8.5 s, 16 384 14.8 s).
const HALT_AFTER_SPINS: u32 = 1024;

/// The point each CPU is held at (0: none).
static HELD_AT: [AtomicUsize; NR_CPUS] = [const { AtomicUsize::new(0) }; NR_CPUS];

/// The point `cpu` is held at now, by a forced schedule or by explore.
pub fn held_at(cpu: usize) -> Option<&'static RacePoint> {
    match HELD_AT[cpu].load(Ordering::Relaxed) {
        0 => None,
        // SAFETY: `hold` stores only the address of a `'static RacePoint`.
        a => Some(unsafe { &*(a as *const RacePoint) }),
    }
}

// ---- explore mode ---------------------------------------------------------------
//
// Every role parks at every armed point it reaches (`Arming::Explore`) and
// goes on only when the controller grants it a step; the controller grants
// one role at a time, so the roles' code between points runs serialised,
// in the order the controller chose. A parked role publishes the wait
// record "step 1" and the schedule's step 0 is the granted role's: the
// prover's graph then has an edge from every parked role to the running
// one, as for a forced schedule.

/// Points each role reached in the iteration.
static EX_ARRIVED: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
/// Steps the controller granted each role in the iteration.
static EX_GRANTED: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
/// The point each role is parked at (0: none).
static EX_AT: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

/// Resets the explore state for a new iteration (no role runs).
pub fn explore_reset() {
    for w in EX_ARRIVED.iter().chain(&EX_GRANTED) {
        w.store(0, Ordering::Relaxed);
    }
    for at in EX_AT.iter().chain(&EX_COND) {
        at.store(0, Ordering::Relaxed);
    }
    NR_STEPS.store(1, Ordering::Relaxed);
    STEP_POINT[0].store(
        &points::ROLE_START as *const RacePoint as usize,
        Ordering::Relaxed,
    );
    STEP_ROLE[0].store(0, Ordering::Relaxed);
    CURSOR.store(0, Ordering::Relaxed);
    ABORT.store(false, Ordering::Relaxed);
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Where `role` is parked, if it is (it reached a point and was not yet
/// granted the step on from it).
pub fn explore_parked(role: usize) -> Option<&'static RacePoint> {
    if EX_ARRIVED[role].load(Ordering::Acquire) <= EX_GRANTED[role].load(Ordering::Acquire) {
        return None;
    }
    match EX_AT[role].load(Ordering::Acquire) {
        0 => None,
        // SAFETY: `explore_park` stores only the address of a `'static
        // RacePoint`.
        a => Some(unsafe { &*(a as *const RacePoint) }),
    }
}

/// Points `role` reached in this iteration.
pub fn explore_arrivals(role: usize) -> u64 {
    EX_ARRIVED[role].load(Ordering::Acquire)
}

/// Lets the parked `role` go on to its next point (or its end). From now
/// on the prover sees every parked role wait for it.
pub fn explore_grant<A: Arch>(role: usize) {
    STEP_ROLE[0].store(role as u8, Ordering::Relaxed);
    core::sync::atomic::fence(Ordering::SeqCst);
    EX_GRANTED[role].fetch_add(1, Ordering::AcqRel);
    if let Some(cpu) = cpu_of(role) {
        A::send_ipi(cpu);
    }
}

fn explore_park<A: Arch>(cpu: usize, role: usize, p: &'static RacePoint, addr: u64) {
    let per_page = [
        &points::SYNC_PAGE_LOCK,
        &points::SYNC_PAGE_UNLOCK,
        &points::SYNC_PAGE_GET,
        &points::SYNC_PAGE_PUT,
        &points::SYNC_FREE_PAGE,
    ];
    if per_page.iter().any(|q| core::ptr::eq(*q, p)) && !explore_watched(addr) {
        return;
    }
    explore_park_until::<A>(cpu, role, p, None);
}

/// The frames whose page events (lock, reference, free) explore schedules
/// at: the frames the row's detectors watch ([`explore_watch`]). Events on
/// other frames (a collapse's 512 small pages) are traced only: each would
/// multiply the orderings without touching what the race is about.
static EX_WATCH: [AtomicU64; 8] = [const { AtomicU64::new(u64::MAX) }; 8];

/// Sets the frames of [`EX_WATCH`] for the next iteration (at most 8).
pub fn explore_watch(pfns: &[u64]) {
    for (i, w) in EX_WATCH.iter().enumerate() {
        w.store(pfns.get(i).copied().unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

fn explore_watched(pfn: u64) -> bool {
    EX_WATCH.iter().any(|w| w.load(Ordering::Relaxed) == pfn)
}

/// A condition a role parked at [`points::ROLE_WAIT`] waits for.
type Cond<'a> = &'a (dyn Fn() -> bool + Sync);

/// [`explore_park`]; with `ready`, for a role that can go on only once
/// `ready` holds: the controller reads it ([`explore_enabled`]) and grants
/// the role only then.
fn explore_park_until<A: Arch>(
    cpu: usize,
    role: usize,
    p: &'static RacePoint,
    ready: Option<Cond<'_>>,
) {
    if ABORT.load(Ordering::Acquire) {
        return;
    }
    EX_AT[role].store(p as *const RacePoint as usize, Ordering::Relaxed);
    EX_COND[role].store(
        ready.as_ref().map_or(0, |c| c as *const Cond<'_> as usize),
        Ordering::Relaxed,
    );
    // The controller spins while a granted role runs: it sees the
    // arrival without an IPI.
    let n = EX_ARRIVED[role].fetch_add(1, Ordering::AcqRel) + 1;
    hold_as::<A>(cpu, 1, p, true, || {
        EX_GRANTED[role].load(Ordering::Acquire) >= n
    });
    EX_COND[role].store(0, Ordering::Relaxed);
}

/// The condition each role parked at [`points::ROLE_WAIT`] waits for: the
/// address of a [`Cond`] on that role's stack, valid while it is parked
/// (0: none).
static EX_COND: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

/// Which parked roles can be granted a step (in role order, with where
/// they are parked): every parked role that is not waiting for a
/// condition another role must make true ([`wait_until`]). Call when every
/// role is parked or done. The controller reads each condition itself
/// (conditions read shared kernel memory only, see [`wait_until`]): no
/// parked CPU is woken for it.
pub fn explore_enabled(roles: usize) -> Vec<(usize, &'static RacePoint)> {
    let mut out = Vec::new();
    for (r, cond) in EX_COND.iter().enumerate().take(roles) {
        let Some(p) = explore_parked(r) else {
            continue;
        };
        let c = cond.load(Ordering::Acquire);
        // SAFETY: a nonzero `EX_COND[r]` is the address of a `Cond` on
        // role `r`'s stack, stored before it parked (`EX_ARRIVED`'s
        // release, read by `explore_parked`'s acquire) and cleared only
        // after it was granted a step: it is parked, its frame lives, and
        // no role runs while the controller decides. The closure is `Sync`.
        let ready = c == 0 || unsafe { (*(c as *const Cond<'_>))() };
        if ready {
            out.push((r, p));
        }
    }
    out
}

/// Whether explore mode runs now (its points are armed).
pub fn exploring() -> bool {
    points::ROLE_WAIT.state.load(Ordering::Relaxed) == EXPLORE
}

/// Waits until `cond` holds: a row's handshake (one role waits for what
/// another does). Spins, except in explore mode, where the role parks at
/// [`points::ROLE_WAIT`] and the controller grants it a step only once
/// `cond` holds (a blocked role is not a choice, as in CHESS). The
/// controller evaluates `cond` on its own CPU: it may read shared kernel
/// memory only (atomics, page flags, page tables through their kernel
/// addresses), never this CPU's state or a user address.
pub fn wait_until<A: Arch>(cond: impl Fn() -> bool + Sync) {
    let cpu = A::smp_processor_id();
    let explore = exploring() && IRQ_DEPTH[cpu].load(Ordering::Relaxed) == 0;
    match role_of(cpu) {
        Some(role) if explore => {
            trace::record_on(
                cpu,
                Kind::Point,
                &points::ROLE_WAIT as *const RacePoint as u64,
                0,
            );
            while !ABORT.load(Ordering::Acquire) {
                explore_park_until::<A>(cpu, role, &points::ROLE_WAIT, Some(&cond));
                if cond() {
                    return;
                }
            }
            while !cond() {
                A::cpu_relax();
            }
        }
        _ => {
            // A forced schedule (an explore replay) can hold it here.
            race_point::<A>(&points::ROLE_WAIT, 0);
            while !cond() {
                A::cpu_relax();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_depend_only_on_their_inputs() {
        let p = &points::TEST_A;
        let a: Vec<u64> = (0..64).map(|k| delay_for(7, 1, 0, p, k, 10_000)).collect();
        let b: Vec<u64> = (0..64).map(|k| delay_for(7, 1, 0, p, k, 10_000)).collect();
        let c: Vec<u64> = (0..64).map(|k| delay_for(8, 1, 0, p, k, 10_000)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&d| d < 10_000));
        assert!(a.contains(&0) && a.iter().any(|&d| d != 0));
    }

    #[test]
    fn point_names_are_unique() {
        for (i, p) in points::ALL.iter().enumerate() {
            assert!(points::ALL[i + 1..].iter().all(|q| q.name != p.name));
            assert!(core::ptr::eq(points::by_name(p.name).unwrap(), *p));
        }
    }
}
