//! The mapping tree (Linux `struct xarray`, formerly the radix tree): an
//! index → entry map with per-entry marks, one per `address_space` (the page
//! cache's `i_pages`, and later the swap cache's).
//!
//! Design. Entries live in an ordered map (a B-tree stands in for the radix
//! nodes: the same operations, the same locking, ordered iteration); each entry
//! carries its marks as a bit set, and the tree keeps a count per mark so
//! `mapping_tagged` is O(1). The tree is generic over the entry type, so the
//! page cache stores `&'static Page` and a swap cache can store the same (or
//! shadow entries) without another tree type.
//!
//! Locking, as Linux's `xa_lock_irqsave`: every access goes through
//! [`XArray::lock`], which disables interrupts on the calling CPU, then takes
//! the tree's spin lock (`tree_lock`, Linux `i_pages.xa_lock`); the guard
//! releases the lock, then restores the interrupt state. The tree records the
//! arch's interrupt functions when it is created ([`XArray::new`]), so holders
//! need not name the architecture.
//!
//! The row-7 detector. Linux's `__xa_set_mark` on an index with no entry does
//! nothing, silently: a dirty tag set on a page that is half-way into the swap
//! cache (flag set, slot not yet filled) is simply lost. Here a mark set or
//! cleared on a missing entry prints `# BUG: tag set on a missing tree entry
//! index=... tag=...` (or `tag cleared`; the first ten, then every
//! 1000th), counts it in [`nr_tag_on_missing_entry`] and otherwise changes
//! nothing (observe only).
//!
//! Invariants:
//! - `marked[m]` equals the number of entries with mark `m`;
//! - a mark exists only on a present entry: erasing an entry drops its marks.

use crate::race::waitfor::{self, LockOwner};
use crate::{kprintln, Arch, IrqFlags};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// The marks an entry can carry (Linux `PAGECACHE_TAG_*`, `XA_MARK_0..2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XaMark {
    /// `PAGECACHE_TAG_DIRTY`: the page is dirty (set by `set_page_dirty`).
    Dirty = 0,
    /// `PAGECACHE_TAG_WRITEBACK`: the page is under writeback.
    Writeback = 1,
    /// `PAGECACHE_TAG_TOWRITE`: selected for a data-integrity writeback pass.
    Towrite = 2,
}

/// Number of marks.
pub const XA_MAX_MARKS: usize = 3;

impl XaMark {
    /// Every mark.
    pub const ALL: [XaMark; XA_MAX_MARKS] = [XaMark::Dirty, XaMark::Writeback, XaMark::Towrite];

    /// Linux's name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            XaMark::Dirty => "DIRTY",
            XaMark::Writeback => "WRITEBACK",
            XaMark::Towrite => "TOWRITE",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Marks set or cleared on a missing entry since boot (the row-7 detector).
static TAG_ON_MISSING: AtomicU64 = AtomicU64::new(0);

/// The index of the last mark set or cleared on a missing entry.
static LAST_MISSING_INDEX: AtomicU64 = AtomicU64::new(0);

/// How often a mark was set or cleared on an index with no entry.
pub fn nr_tag_on_missing_entry() -> u64 {
    TAG_ON_MISSING.load(Ordering::Acquire)
}

/// The index of the last mark set or cleared on a missing entry (0 if
/// none was).
pub fn last_tag_on_missing_entry() -> u64 {
    LAST_MISSING_INDEX.load(Ordering::Acquire)
}

#[derive(Clone, Copy)]
struct Slot<T> {
    entry: T,
    marks: u8,
}

struct Tree<T> {
    slots: BTreeMap<u64, Slot<T>>,
    marked: [usize; XA_MAX_MARKS],
}

/// An index → entry tree with marks (see the module docs).
pub struct XArray<T: Copy> {
    tree: spin::Mutex<Tree<T>>,
    /// Who holds `tree`'s lock, for the wait-for prover.
    owner: LockOwner,
    irq_save: fn() -> IrqFlags,
    irq_restore: fn(IrqFlags),
}

impl<T: Copy> XArray<T> {
    /// An empty tree whose lock masks interrupts with `A`'s functions.
    pub fn new<A: Arch>() -> Self {
        Self {
            tree: spin::Mutex::new(Tree {
                slots: BTreeMap::new(),
                marked: [0; XA_MAX_MARKS],
            }),
            owner: LockOwner::new(),
            irq_save: A::local_irq_save,
            irq_restore: A::local_irq_restore,
        }
    }

    /// Takes the tree lock with interrupts off (`xa_lock_irqsave`).
    /// A CPU that finds it taken records the wait for the prover (a holder
    /// parked inside the critical section holds it back).
    pub fn lock(&self) -> XaGuard<'_, T> {
        let flags = (self.irq_save)();
        let cpu = crate::race::this_cpu();
        let tree = self.tree.try_lock().unwrap_or_else(|| {
            let wait = waitfor::begin(cpu, self.owner.wait(), true);
            let tree = loop {
                if let Some(t) = self.tree.try_lock() {
                    break t;
                }
                core::hint::spin_loop();
            };
            waitfor::end(wait);
            tree
        });
        self.owner.set(cpu);
        XaGuard {
            tree: Some(tree),
            owner: &self.owner,
            flags,
            irq_restore: self.irq_restore,
        }
    }

    /// The entry at `index` (`xa_load`).
    pub fn load(&self, index: u64) -> Option<T> {
        self.lock().load(index)
    }

    /// Whether any entry carries `mark` (`mapping_tagged`).
    pub fn marked(&self, mark: XaMark) -> bool {
        self.lock().count_marked(mark) != 0
    }

    /// Whether the entry at `index` carries `mark` (`xa_get_mark`).
    pub fn get_mark(&self, index: u64, mark: XaMark) -> bool {
        self.lock().get_mark(index, mark)
    }

    /// Sets `mark` on the entry at `index` (`xa_set_mark`).
    pub fn set_mark(&self, index: u64, mark: XaMark) {
        self.lock().set_mark(index, mark)
    }

    /// Clears `mark` on the entry at `index` (`xa_clear_mark`).
    pub fn clear_mark(&self, index: u64, mark: XaMark) {
        self.lock().clear_mark(index, mark)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the tree holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tree, locked with interrupts off. Dropping it unlocks, then restores
/// the interrupt state.
pub struct XaGuard<'a, T: Copy> {
    tree: Option<spin::MutexGuard<'a, Tree<T>>>,
    owner: &'a LockOwner,
    flags: IrqFlags,
    irq_restore: fn(IrqFlags),
}

impl<T: Copy> Drop for XaGuard<'_, T> {
    fn drop(&mut self) {
        self.owner.clear();
        drop(self.tree.take());
        (self.irq_restore)(self.flags);
    }
}

impl<T: Copy> XaGuard<'_, T> {
    fn tree(&mut self) -> &mut Tree<T> {
        self.tree
            .as_mut()
            .expect("the guard holds the lock until dropped")
    }

    /// The entry at `index`.
    pub fn load(&mut self, index: u64) -> Option<T> {
        self.tree().slots.get(&index).map(|s| s.entry)
    }

    /// Stores `entry` at `index` unless an entry is there already
    /// (`__xa_insert`); returns the present entry as the error.
    pub fn insert(&mut self, index: u64, entry: T) -> Result<(), T> {
        match self.tree().slots.get(&index) {
            Some(s) => Err(s.entry),
            None => {
                self.tree().slots.insert(index, Slot { entry, marks: 0 });
                Ok(())
            }
        }
    }

    /// Removes the entry at `index` with its marks (`__xa_erase`).
    pub fn erase(&mut self, index: u64) -> Option<T> {
        let tree = self.tree();
        let slot = tree.slots.remove(&index)?;
        for m in XaMark::ALL {
            if slot.marks & m.bit() != 0 {
                tree.marked[m as usize] -= 1;
            }
        }
        Some(slot.entry)
    }

    /// Sets `mark` on the entry at `index` (`__xa_set_mark`); on a missing
    /// entry, reports it (the row-7 detector) and changes nothing.
    pub fn set_mark(&mut self, index: u64, mark: XaMark) {
        let tree = self.tree();
        match tree.slots.get_mut(&index) {
            Some(s) => {
                if s.marks & mark.bit() == 0 {
                    s.marks |= mark.bit();
                    tree.marked[mark as usize] += 1;
                }
            }
            None => report_missing("set", index, mark),
        }
    }

    /// Clears `mark` on the entry at `index` (`__xa_clear_mark`); on a missing
    /// entry, reports it and changes nothing.
    pub fn clear_mark(&mut self, index: u64, mark: XaMark) {
        let tree = self.tree();
        match tree.slots.get_mut(&index) {
            Some(s) => {
                if s.marks & mark.bit() != 0 {
                    s.marks &= !mark.bit();
                    tree.marked[mark as usize] -= 1;
                }
            }
            None => report_missing("cleared", index, mark),
        }
    }

    /// Whether the entry at `index` carries `mark` (false if there is none).
    pub fn get_mark(&mut self, index: u64, mark: XaMark) -> bool {
        self.tree()
            .slots
            .get(&index)
            .is_some_and(|s| s.marks & mark.bit() != 0)
    }

    /// Entries carrying `mark`.
    pub fn count_marked(&mut self, mark: XaMark) -> usize {
        self.tree().marked[mark as usize]
    }

    /// Up to `max` entries carrying `mark` with index at or above `start`, in
    /// index order (`find_get_entries_tag`).
    pub fn find_marked(&mut self, start: u64, mark: XaMark, max: usize) -> Vec<(u64, T)> {
        self.tree()
            .slots
            .range(start..)
            .filter(|(_, s)| s.marks & mark.bit() != 0)
            .take(max)
            .map(|(&i, s)| (i, s.entry))
            .collect()
    }

    /// Up to `max` entries with index at or above `start`, in index order.
    pub fn find(&mut self, start: u64, max: usize) -> Vec<(u64, T)> {
        self.tree()
            .slots
            .range(start..)
            .take(max)
            .map(|(&i, s)| (i, s.entry))
            .collect()
    }

    /// Number of entries.
    pub fn len(&mut self) -> usize {
        self.tree().slots.len()
    }

    /// Whether the tree holds no entry.
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }
}

fn report_missing(what: &str, index: u64, mark: XaMark) {
    LAST_MISSING_INDEX.store(index, Ordering::Release);
    let n = TAG_ON_MISSING.fetch_add(1, Ordering::AcqRel) + 1;
    // Rate-limited, as `printk_ratelimited`: a natural run can hit thousands
    // of times; the counter has every report.
    if n <= MISSING_REPORTS_PRINTED || n.is_multiple_of(1000) {
        kprintln!(
            "# BUG: tag {what} on a missing tree entry index={index} tag={} (report {n}{})",
            mark.name(),
            if n == MISSING_REPORTS_PRINTED {
                "; from now on every 1000th is printed"
            } else {
                ""
            }
        );
    }
}

/// Reports of [`report_missing`] printed in full before the rate limit.
const MISSING_REPORTS_PRINTED: u64 = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::emul::Emul4k;

    #[test]
    fn insert_mark_erase_keep_counts() {
        let xa = XArray::<u32>::new::<Emul4k>();
        let mut g = xa.lock();
        assert_eq!(g.insert(3, 30), Ok(()));
        assert_eq!(g.insert(3, 31), Err(30));
        g.insert(7, 70).unwrap();
        g.set_mark(3, XaMark::Dirty);
        g.set_mark(3, XaMark::Dirty);
        g.set_mark(7, XaMark::Dirty);
        g.set_mark(7, XaMark::Towrite);
        assert_eq!(g.count_marked(XaMark::Dirty), 2);
        assert_eq!(g.find_marked(0, XaMark::Dirty, 10), [(3, 30), (7, 70)]);
        assert_eq!(g.find_marked(4, XaMark::Dirty, 10), [(7, 70)]);
        g.clear_mark(3, XaMark::Dirty);
        assert!(!g.get_mark(3, XaMark::Dirty));
        assert_eq!(g.erase(7), Some(70));
        assert_eq!(g.count_marked(XaMark::Dirty), 0);
        assert_eq!(g.count_marked(XaMark::Towrite), 0);
        assert_eq!(g.len(), 1);
        drop(g);
        assert_eq!(xa.load(3), Some(30));
        assert!(!xa.marked(XaMark::Dirty));
    }

    #[test]
    fn mark_on_a_missing_entry_is_reported_not_applied() {
        let xa = XArray::<u32>::new::<Emul4k>();
        let before = nr_tag_on_missing_entry();
        xa.set_mark(5, XaMark::Dirty);
        xa.clear_mark(6, XaMark::Writeback);
        assert!(nr_tag_on_missing_entry() >= before + 2);
        assert!(!xa.marked(XaMark::Dirty));
        assert!(xa.is_empty());
        // A later insert at that index starts without the lost mark.
        xa.lock().insert(5, 1).unwrap();
        assert!(!xa.get_mark(5, XaMark::Dirty));
    }
}
