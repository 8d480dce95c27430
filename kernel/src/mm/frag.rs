//! Page-table fragments: PTE tables carved from larger blocks.
//!
//! s390x page tables are 2 KiB, so two fit in a 4 KiB frame (as s390 did up to
//! Linux 6.7); x86-64 carves its 4 KiB tables from an order-4 block (as powerpc
//! carves from its 64 KiB page). Each mm hands out fragments of its current
//! block in order (`mm->context.pte_frag`, powerpc style); a freed fragment is not
//! reused, and the block is freed once every fragment is gone.
//!
//! The block's head descriptor counts the fragments that are not yet free, and
//! *where* it counts is the runtime [`FragPolicy`]:
//! - [`FragPolicy::SetPageCount`] — on the main refcount, initialised with
//!   `set_page_count` when the block is carved (powerpc before 4.19). A
//!   speculative `get_page_unless_zero` racing with the carve is wiped out: the
//!   bug of seed 002.
//! - [`FragPolicy::FragCounter`] — a separate atomic `pt_frag_refcount` (the
//!   4.19 fix, 4231aba000f5); the main refcount keeps its single reference.
//! - [`FragPolicy::XorTopBits`] — one bit per fragment in the top bits of the
//!   refcount, flipped with atomic xor (s390 up to 6.7); speculative increments
//!   and decrements touch only the low bits.
//! - [`FragPolicy::OnePerFrame`] — no sharing: each table gets its own frame.
//!
//! Invariant: a block is freed exactly when its count of not-yet-free fragments
//! reaches zero — handed-out fragments freed, and the rest given back when the
//! mm lets go of its current block ([`pte_frag_destroy`]).

use super::arch::Mmu;
use super::mm::Mm;
use super::page::{self, Page};
use super::{page_alloc, PAGE_SIZE};
use crate::race::point::{points, race_point};
use core::sync::atomic::{AtomicI32, AtomicU8, Ordering};

/// Where a block counts its live fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FragPolicy {
    /// One table per frame, no fragments.
    OnePerFrame = 0,
    /// `set_page_count` on the main refcount (powerpc before 4.19).
    SetPageCount = 1,
    /// A separate atomic fragment counter (the 4.19 fix).
    FragCounter = 2,
    /// Atomic xor on the refcount's top bits (s390 up to 6.7).
    XorTopBits = 3,
}

impl FragPolicy {
    /// Every policy.
    pub const ALL: [FragPolicy; 4] = [
        Self::OnePerFrame,
        Self::SetPageCount,
        Self::FragCounter,
        Self::XorTopBits,
    ];

    /// The policy's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::OnePerFrame => "one-per-frame",
            Self::SetPageCount => "set-page-count",
            Self::FragCounter => "frag-counter",
            Self::XorTopBits => "xor-top-bits",
        }
    }
}

static POLICY: AtomicU8 = AtomicU8::new(FragPolicy::FragCounter as u8);

/// Selects the counting policy for blocks carved from now on. Blocks remember
/// the policy they were carved with.
pub fn set_policy(p: FragPolicy) {
    POLICY.store(p as u8, Ordering::Release);
}

/// The current policy.
pub fn policy() -> FragPolicy {
    match POLICY.load(Ordering::Acquire) {
        0 => FragPolicy::OnePerFrame,
        1 => FragPolicy::SetPageCount,
        2 => FragPolicy::FragCounter,
        _ => FragPolicy::XorTopBits,
    }
}

/// Frame order of a fragment block.
pub fn block_order<A: Mmu>() -> u32 {
    if (A::PTE_TABLE_SIZE as u64) < PAGE_SIZE {
        0
    } else {
        4
    }
}

/// Fragments per block.
pub fn frags_per_block<A: Mmu>() -> usize {
    ((PAGE_SIZE as usize) << block_order::<A>()) / A::PTE_TABLE_SIZE
}

/// The refcount bit that marks fragment `i` live under [`FragPolicy::XorTopBits`]:
/// bits 30 down to 15 (the sign bit stays clear, so the count stays positive),
/// far above anything speculative references reach.
fn top_bit(i: usize) -> i32 {
    1i32 << (30 - i as u32)
}

/// Mask of the top bits of a block with `n` fragments.
fn top_mask(n: usize) -> i32 {
    (0..n).fold(0, |m, i| m | top_bit(i))
}

/// An mm's current block: its head and the next fragment to hand out.
#[derive(Default)]
pub struct FragCursor {
    block: Option<u64>,
    next: usize,
}

/// Allocates a PTE table for `mm` (`pte_alloc_one`). Returns its address.
pub fn pte_alloc_one<A: Mmu>(mm: &Mm<A>) -> Option<u64> {
    let pol = policy();
    if pol == FragPolicy::OnePerFrame {
        let order = (A::PTE_TABLE_SIZE as u64 / PAGE_SIZE)
            .max(1)
            .trailing_zeros();
        let page = page_alloc::alloc_pages(order)?;
        let table = page::page_to_phys(page);
        super::pgtable::pagetable_ctor(table, order);
        page.private
            .store(FragPolicy::OnePerFrame as usize, Ordering::Release);
        return Some(table);
    }
    let n = frags_per_block::<A>();
    let mut cur = mm.pte_frag.lock();
    if cur.block.is_none() || cur.next == n {
        let head = page_alloc::alloc_pages(block_order::<A>())?;
        let head_pfn = page::page_to_pfn(head);
        // From here until the count is set, the head has the allocator's
        // single reference, and any CPU may take a speculative one.
        race_point::<A>(&points::FRAG_AFTER_BLOCK_ALLOC, head_pfn);
        // A compound block: whoever drops the last reference — the fragment
        // count or a speculative holder such as the pfn scanner — frees all of it.
        page::prep_compound_page(head, block_order::<A>());
        // Every frame of the block is a page-table frame and remembers the
        // policy (a table in a tail frame must not look like a one-per-frame
        // table to `__pte_free`).
        let first = page::page_to_pfn(head);
        super::pgtable::pagetable_ctor(page::page_to_phys(head), block_order::<A>());
        for pfn in first..first + (1 << block_order::<A>()) {
            page::pfn_to_page(pfn)
                .private
                .store(pol as usize, Ordering::Release);
        }
        race_point::<A>(&points::FRAG_BEFORE_BLOCK_COUNT, head_pfn);
        match pol {
            FragPolicy::SetPageCount => page::set_page_count(head, n as i32),
            FragPolicy::FragCounter => head.pt_frag_refcount.store(n as i32, Ordering::Release),
            FragPolicy::XorTopBits => {
                head._refcount.fetch_xor(top_mask(n), Ordering::AcqRel);
            }
            FragPolicy::OnePerFrame => unreachable!("handled above"),
        }
        race_point::<A>(&points::FRAG_AFTER_BLOCK_COUNT, head_pfn);
        *cur = FragCursor {
            block: Some(page::page_to_phys(head)),
            next: 0,
        };
    }
    let base = cur.block.expect("a block was just set");
    let table = base + (cur.next * A::PTE_TABLE_SIZE) as u64;
    cur.next += 1;
    Some(table)
}

/// The policy a block was carved with (kept in its head's `private`).
fn block_policy(head: &Page) -> FragPolicy {
    match head.private.load(Ordering::Acquire) {
        0 => FragPolicy::OnePerFrame,
        1 => FragPolicy::SetPageCount,
        2 => FragPolicy::FragCounter,
        _ => FragPolicy::XorTopBits,
    }
}

/// Gives back `count` not-yet-free fragments, starting at fragment `index`, of
/// the block headed by `head`; frees the block when none is left.
fn put_frags<A: Mmu>(head: &'static Page, index: usize, count: usize) {
    let order = block_order::<A>();
    let free_now = |head: &'static Page| {
        let first = page::page_to_pfn(head);
        let order = if block_policy(head) == FragPolicy::OnePerFrame {
            0
        } else {
            order
        };
        super::pgtable::pagetable_dtor(page::page_to_phys(head), order);
        for pfn in first..first + (1 << order) {
            page::pfn_to_page(pfn).private.store(0, Ordering::Release);
        }
    };
    match block_policy(head) {
        FragPolicy::SetPageCount => {
            // The fragments are the references: the last one frees the block.
            let underflow = "page-table fragment refcount underflow";
            if put_last_frags(head, &head._refcount, count, underflow) {
                free_now(head);
                page_alloc::free_frozen_pages(head, order);
            }
        }
        FragPolicy::FragCounter => {
            let underflow = "pt_frag_refcount underflow";
            if put_last_frags(head, &head.pt_frag_refcount, count, underflow) {
                free_now(head);
                page_alloc::__free_pages(head, order);
            }
        }
        FragPolicy::XorTopBits => {
            let mask = (index..index + count).fold(0, |m, i| m | top_bit(i));
            let old = head._refcount.fetch_xor(mask, Ordering::AcqRel);
            if old & mask != mask {
                page_alloc::report_bad_page(head, "page-table fragment freed twice", 0);
            } else if (old ^ mask) & top_mask(frags_per_block::<A>()) == 0 {
                free_now(head);
                page_alloc::__free_pages(head, order);
            }
        }
        FragPolicy::OnePerFrame => {
            free_now(head);
            page_alloc::__free_pages(head, 0);
        }
    }
}

/// Takes `count` fragments off `counter`, the fragment count of the block
/// headed by `head`: true when they were the last ones; reports an underflow
/// (more fragments given back than counted) as `underflow`.
fn put_last_frags(head: &Page, counter: &AtomicI32, count: usize, underflow: &'static str) -> bool {
    let old = counter.fetch_sub(count as i32, Ordering::AcqRel);
    if old < count as i32 {
        page_alloc::report_bad_page(head, underflow, 0);
    }
    old == count as i32
}

/// Frees a PTE table (`pte_free`).
pub fn pte_free<A: Mmu>(_mm: &Mm<A>, table: u64) {
    __pte_free::<A>(table);
}

/// Frees a PTE table without its mm (the deferred half of `tlb_remove_table`,
/// which may run after the mm is gone).
pub fn __pte_free<A: Mmu>(table: u64) {
    let head_frame = page::phys_to_page(table);
    if block_policy(head_frame) == FragPolicy::OnePerFrame && head_frame.test_flag(page::PG_pgtable)
    {
        put_frags::<A>(head_frame, 0, 1);
        return;
    }
    let block_bytes = (PAGE_SIZE as usize) << block_order::<A>();
    let base = table & !(block_bytes as u64 - 1);
    let index = ((table - base) as usize) / A::PTE_TABLE_SIZE;
    put_frags::<A>(page::phys_to_page(base), index, 1);
}

/// Lets go of the mm's current block (`pte_frag_destroy`): its fragments that
/// were never handed out are given back.
pub fn pte_frag_destroy<A: Mmu>(mm: &Mm<A>) {
    let mut cur = mm.pte_frag.lock();
    if let Some(base) = cur.block.take() {
        let n = frags_per_block::<A>();
        let next = cur.next;
        drop(cur);
        if next < n {
            put_frags::<A>(page::phys_to_page(base), next, n - next);
        }
    }
}
