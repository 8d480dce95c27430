//! Address spaces (`struct mm_struct`) and running a task in one.
//!
//! An [`Mm`] owns its page tables through the arch context, a cpumask of the CPUs
//! that may hold its translations in their TLBs, the `mmap_lock` that protects
//! its VMAs, and the `page_table_lock` that serialises populating upper-level
//! entries. A CPU runs a task of the mm by loading its tables ([`use_mm`]): from
//! then on the CPU's loads and stores to task addresses translate through the
//! hardware MMU and are cached in its TLB.
//!
//! Invariants:
//! - a CPU's bit is set in `cpumask` before it loads the mm's tables, and stays
//!   set after it switches away (its TLB may still hold entries: lazy TLB, as
//!   on x86); only a full flush of that CPU could clear it, which we never do;
//! - VMAs change only under `mmap_lock` held for write; faults and GUP read
//!   them under `mmap_lock` held for read; a shared file VMA is also listed
//!   in its file's `i_mmap` (for rmap) for exactly as long as it is in the
//!   mm's list, and is unlinked before its page tables are freed;
//! - the mm is a member of every anon_vma in its `anon_vma_chain` until
//!   `exit_mmap`, so a mapped anonymous page's anon_vma lists every mm that
//!   can map it;
//! - page-table pages are freed only by `free_pgtables` (under `mmap_lock` for
//!   write) or mm teardown.

use super::arch::Mmu;
use super::filemap::RamFile;
use super::rmap::AnonVma;
use super::PAGE_SIZE;
use crate::percpu;
use crate::race::point::{points, sync_point};
use crate::race::waitfor;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// VMA flags (the subset the memory model uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmFlags {
    /// `VM_READ`.
    pub read: bool,
    /// `VM_WRITE`.
    pub write: bool,
}

impl VmFlags {
    /// Readable and writable.
    pub const RW: VmFlags = VmFlags {
        read: true,
        write: true,
    };
    /// Read-only.
    pub const RO: VmFlags = VmFlags {
        read: true,
        write: false,
    };
}

/// A virtual memory area: `[start, end)`, either private anonymous memory
/// (`file` is `None`) or a shared mapping of a file (`VM_SHARED`, `vm_file`),
/// whose page at `addr` is the file's page `pgoff + (addr - start) / PAGE_SIZE`.
#[derive(Clone, Debug)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Access flags.
    pub flags: VmFlags,
    /// The file of a shared file mapping (`vm_file`, which holds a reference).
    pub file: Option<Arc<RamFile>>,
    /// File offset of `start`, in pages (`vm_pgoff`); 0 for anonymous memory.
    pub pgoff: u64,
}

impl PartialEq for Vma {
    fn eq(&self, other: &Self) -> bool {
        self.start == other.start
            && self.end == other.end
            && self.flags == other.flags
            && self.pgoff == other.pgoff
            && same_file(&self.file, &other.file)
    }
}

impl Eq for Vma {}

fn same_file(a: &Option<Arc<RamFile>>, b: &Option<Arc<RamFile>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl Vma {
    /// A private anonymous VMA.
    pub fn anon(start: u64, end: u64, flags: VmFlags) -> Self {
        Self {
            start,
            end,
            flags,
            file: None,
            pgoff: 0,
        }
    }

    /// Whether this is a shared file mapping (`VM_SHARED` with a `vm_file`).
    pub fn is_shared_file(&self) -> bool {
        self.file.is_some()
    }

    /// The file page index mapped at `addr` (`linear_page_index`).
    pub fn linear_page_index(&self, addr: u64) -> u64 {
        self.pgoff + (addr - self.start) / PAGE_SIZE
    }

    /// The part of this VMA in `[start, end)`, which must overlap it; the file
    /// offset follows the new start.
    fn slice(&self, start: u64, end: u64) -> Vma {
        let s = start.max(self.start);
        let e = end.min(self.end);
        Vma {
            start: s,
            end: e,
            flags: self.flags,
            file: self.file.clone(),
            pgoff: if self.file.is_some() {
                self.linear_page_index(s)
            } else {
                0
            },
        }
    }

    /// Whether `next`, starting where this VMA ends, can be merged into it
    /// (`can_vma_merge_after`): same flags, same file and contiguous offsets.
    pub fn can_merge_with(&self, next: &Vma) -> bool {
        self.end == next.start
            && self.flags == next.flags
            && same_file(&self.file, &next.file)
            && (self.file.is_none() || self.linear_page_index(self.end) == next.pgoff)
    }
}

/// The VMAs of an mm, sorted by address and never overlapping; protected by
/// `mmap_lock`. Adjacent compatible VMAs are merged by [`VmaList::insert`]
/// and [`VmaList::set_flags`], as `vma_merge` does.
#[derive(Default, Debug)]
pub struct VmaList {
    vmas: Vec<Vma>,
}

impl VmaList {
    /// The VMA containing `addr` (`find_vma` + range check).
    pub fn find(&self, addr: u64) -> Option<&Vma> {
        let i = self.vmas.partition_point(|v| v.end <= addr);
        self.vmas.get(i).filter(|v| v.start <= addr)
    }

    /// Whether `[start, end)` overlaps any VMA.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.vmas.iter().any(|v| v.start < end && start < v.end)
    }

    /// Whether VMAs cover every address of `[start, end)`.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for v in self.vmas.iter().filter(|v| v.start < end && start < v.end) {
            if v.start > at {
                return false;
            }
            at = v.end;
        }
        at >= end
    }

    /// Inserts a VMA that overlaps none, merging it with compatible
    /// neighbours.
    pub fn insert(&mut self, vma: Vma) {
        assert!(
            !self.overlaps(vma.start, vma.end),
            "VmaList::insert: [{:#x}, {:#x}) overlaps",
            vma.start,
            vma.end
        );
        let pos = self.vmas.partition_point(|v| v.start < vma.start);
        self.vmas.insert(pos, vma);
        self.merge_around(pos);
    }

    /// Splits the VMA containing `addr` into `[start, addr)` and `[addr, end)`
    /// (`split_vma`); nothing if `addr` is a VMA boundary or in no VMA.
    pub fn split_at(&mut self, addr: u64) {
        let i = self.vmas.partition_point(|v| v.end <= addr);
        let Some(v) = self.vmas.get(i) else { return };
        if v.start >= addr {
            return;
        }
        let (lo, hi) = (v.slice(v.start, addr), v.slice(addr, v.end));
        self.vmas[i] = lo;
        self.vmas.insert(i + 1, hi);
    }

    /// Removes `[start, end)` from the list, splitting VMAs at the edges;
    /// returns the removed pieces.
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<Vma> {
        self.split_at(start);
        self.split_at(end);
        let first = self.vmas.partition_point(|v| v.end <= start);
        let last = self.vmas.partition_point(|v| v.start < end);
        self.vmas.drain(first..last).collect()
    }

    /// Gives every VMA in `[start, end)` the flags `flags`, splitting at the
    /// edges and merging what became compatible (`mprotect_fixup`).
    pub fn set_flags(&mut self, start: u64, end: u64, flags: VmFlags) {
        self.split_at(start);
        self.split_at(end);
        for v in self
            .vmas
            .iter_mut()
            .filter(|v| v.start < end && start < v.end)
        {
            v.flags = flags;
        }
        self.merge_all();
    }

    /// Merges every pair of adjacent compatible VMAs.
    pub fn merge_all(&mut self) {
        let mut i = 0;
        while i + 1 < self.vmas.len() {
            if self.vmas[i].can_merge_with(&self.vmas[i + 1]) {
                let next = self.vmas.remove(i + 1);
                self.vmas[i].end = next.end;
            } else {
                i += 1;
            }
        }
    }

    /// Merges the VMA at `pos` with its neighbours where compatible.
    fn merge_around(&mut self, pos: usize) {
        let mut pos = pos;
        if pos > 0 && self.vmas[pos - 1].can_merge_with(&self.vmas[pos]) {
            let v = self.vmas.remove(pos);
            pos -= 1;
            self.vmas[pos].end = v.end;
        }
        if pos + 1 < self.vmas.len() && self.vmas[pos].can_merge_with(&self.vmas[pos + 1]) {
            let next = self.vmas.remove(pos + 1);
            self.vmas[pos].end = next.end;
        }
    }

    /// Every VMA, in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.vmas.iter()
    }

    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.vmas.len()
    }

    /// Whether there is no VMA.
    pub fn is_empty(&self) -> bool {
        self.vmas.is_empty()
    }
}

/// `mmap_lock`: a reader-writer spin lock over the VMAs that records its
/// holders, and a CPU spinning on it records that it waits, for the race
/// prover ([`crate::race::waitfor`]: "the mmap_lock holders"). Taking and
/// releasing it are synchronisation events of explore mode.
pub struct MmapLock {
    lock: spin::RwLock<VmaList>,
    owners: waitfor::RwOwners,
}

/// `mmap_lock` held for read.
pub struct MmapReadGuard<'a> {
    guard: Option<spin::RwLockReadGuard<'a, VmaList>>,
    owners: &'a waitfor::RwOwners,
    cpu: usize,
}

/// `mmap_lock` held for write.
pub struct MmapWriteGuard<'a> {
    guard: Option<spin::RwLockWriteGuard<'a, VmaList>>,
    owners: &'a waitfor::RwOwners,
}

impl MmapLock {
    fn new() -> Self {
        MmapLock {
            lock: spin::RwLock::new(VmaList::default()),
            owners: waitfor::RwOwners::new(),
        }
    }

    /// Spins (interrupts as they are) until `take` gets the lock, with a
    /// wait record while it spins.
    fn take<G>(&self, write: bool, take: impl Fn() -> Option<G>) -> (G, usize) {
        let cpu = crate::race::this_cpu();
        sync_point(&points::SYNC_MMAP_LOCK, u64::from(write));
        if let Some(g) = take() {
            return (g, cpu);
        }
        let wait = waitfor::begin(cpu, self.owners.wait(write), crate::race::irqs_disabled());
        let g = loop {
            if let Some(g) = take() {
                break g;
            }
            core::hint::spin_loop();
        };
        waitfor::end(wait);
        (g, cpu)
    }

    /// Takes the lock for read (`mmap_read_lock`).
    pub fn read(&self) -> MmapReadGuard<'_> {
        let (g, cpu) = self.take(false, || self.lock.try_read());
        self.owners.reader_in(cpu);
        MmapReadGuard {
            guard: Some(g),
            owners: &self.owners,
            cpu,
        }
    }

    /// Takes the lock for write (`mmap_write_lock`).
    pub fn write(&self) -> MmapWriteGuard<'_> {
        let (g, cpu) = self.take(true, || self.lock.try_write());
        self.owners.writer_in(cpu);
        MmapWriteGuard {
            guard: Some(g),
            owners: &self.owners,
        }
    }
}

impl core::ops::Deref for MmapReadGuard<'_> {
    type Target = VmaList;
    fn deref(&self) -> &VmaList {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl core::ops::Deref for MmapWriteGuard<'_> {
    type Target = VmaList;
    fn deref(&self) -> &VmaList {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl core::ops::DerefMut for MmapWriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut VmaList {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // The holder is cleared before the lock is released.
        self.owners.reader_out(self.cpu);
        drop(self.guard.take());
        sync_point(&points::SYNC_MMAP_UNLOCK, 0);
    }
}

impl Drop for MmapWriteGuard<'_> {
    fn drop(&mut self) {
        self.owners.writer_out();
        drop(self.guard.take());
        sync_point(&points::SYNC_MMAP_UNLOCK, 1);
    }
}

/// An address space.
pub struct Mm<A: Mmu> {
    /// Arch state: the top table, on s390x the ASCE.
    pub context: A::Context,
    /// CPUs that may hold translations of this mm (bit n = CPU n; NR_CPUS = 64).
    pub cpumask: AtomicU64,
    /// `mmap_lock`: read for faults, slow GUP, MADV_DONTNEED; write for mmap,
    /// munmap, mprotect, collapse. Protects the VMAs.
    pub mmap_lock: MmapLock,
    /// Serialises populating upper-level entries (`pXd_populate`).
    pub page_table_lock: spin::Mutex<()>,
    /// Page-table bytes allocated for this mm (`pgtables_bytes`).
    pub pgtables_bytes: AtomicUsize,
    /// Resident anonymous pages (`MM_ANONPAGES`).
    pub rss_anon: AtomicUsize,
    /// Resident file pages (`MM_FILEPAGES`).
    pub rss_file: AtomicUsize,
    /// The anon_vmas this mm's anonymous pages can be found through
    /// (`anon_vma_chain`): its own first, where its new anonymous pages hang,
    /// then those inherited from its ancestors by fork. The mm is a member of
    /// each (see [`super::rmap`]).
    pub anon_vma_chain: spin::Mutex<Vec<Arc<AnonVma>>>,
    /// The address under which the mm is listed in rmap structures (its
    /// anon_vmas, the `i_mmap` of mapped files); 0 until first listed. The mm
    /// must not move while listed; `exit_mmap` unlinks it under this address.
    rmap_addr: AtomicUsize,
    /// The current page-table fragment block (`mm->context.pte_frag`).
    pub(crate) pte_frag: spin::Mutex<super::frag::FragCursor>,
    /// mmu_gathers of this mm in flight (`tlb_flush_pending`; see
    /// [`super::mmu_gather`]).
    pub tlb_flush_pending: AtomicUsize,
}

impl<A: Mmu> Mm<A> {
    /// A new, empty mm (`mm_alloc`), or `None` when out of memory.
    pub fn new() -> Option<Self> {
        Some(Self {
            context: A::init_new_context()?,
            cpumask: AtomicU64::new(0),
            mmap_lock: MmapLock::new(),
            page_table_lock: spin::Mutex::new(()),
            pgtables_bytes: AtomicUsize::new(0),
            rss_anon: AtomicUsize::new(0),
            rss_file: AtomicUsize::new(0),
            anon_vma_chain: spin::Mutex::new(Vec::new()),
            rmap_addr: AtomicUsize::new(0),
            pte_frag: spin::Mutex::new(super::frag::FragCursor::default()),
            tlb_flush_pending: AtomicUsize::new(0),
        })
    }

    /// The address rmap walks reach this mm under (see `rmap_addr`): fixed
    /// by the first call, which must come with the mm in its final place;
    /// a later call from another address is a moved mm, a bug.
    pub fn rmap_addr(&self) -> usize {
        let me = self as *const Self as usize;
        match self
            .rmap_addr
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => me,
            Err(at) => {
                assert_eq!(at, me, "an mm moved while listed in rmap structures");
                at
            }
        }
    }

    /// The address the mm was listed under, 0 if never (for `exit_mmap`, which
    /// gets the mm moved).
    pub(crate) fn listed_addr(&self) -> usize {
        self.rmap_addr.load(Ordering::Acquire)
    }

    /// The anon_vma new anonymous pages of this mm hang off: its own, created
    /// on first use (`anon_vma_prepare`) and joined by the mm.
    pub fn anon_vma(&self) -> Arc<AnonVma> {
        let mut chain = self.anon_vma_chain.lock();
        if chain.is_empty() {
            let av = Arc::new(AnonVma::new());
            av.link(self.rmap_addr());
            chain.push(av);
        }
        chain[0].clone()
    }

    /// CPUs in the cpumask, other than the calling one.
    pub fn other_cpus(&self) -> impl Iterator<Item = usize> {
        let me = A::smp_processor_id();
        let mask = self.cpumask.load(Ordering::Acquire);
        (0..64).filter(move |&c| c != me && mask & (1 << c) != 0)
    }
}

/// Runs the calling CPU in `mm`: adds it to the cpumask, records it as the
/// CPU's current mm, and loads its tables (`use_mm` / `switch_mm`).
///
/// # Safety
/// `mm` must outlive its use on this CPU: call [`unuse_mm`] before it is freed.
pub unsafe fn use_mm<A: Mmu>(mm: &Mm<A>) {
    let cpu = A::smp_processor_id();
    mm.cpumask.fetch_or(1 << cpu, Ordering::AcqRel);
    percpu::per_cpu(cpu)
        .current_mm
        .store(mm as *const Mm<A> as usize, Ordering::Release);
    // SAFETY: the caller keeps `mm` alive until `unuse_mm`.
    unsafe { A::switch_mm(mm) };
}

/// Switches the calling CPU back to the kernel's tables. The CPU stays in the
/// mm's cpumask (its TLB may still hold the mm's entries).
pub fn unuse_mm<A: Mmu>() {
    A::switch_to_kernel_mm();
    percpu::this_cpu::<A>()
        .current_mm
        .store(0, Ordering::Release);
}

/// The mm the calling CPU runs, if any.
pub fn current_mm<A: Mmu>() -> Option<&'static Mm<A>> {
    let p = percpu::this_cpu::<A>().current_mm.load(Ordering::Acquire);
    // SAFETY: `use_mm` stored a pointer to a live `Mm<A>` (its caller keeps it
    // alive until `unuse_mm` clears it), and only this CPU changes its own slot.
    (p != 0).then(|| unsafe { &*(p as *const Mm<A>) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::emul::Emul4k;
    use crate::mm::filemap::{DirtyAops, RamFile};

    const RW: VmFlags = VmFlags {
        read: true,
        write: true,
    };
    const RO: VmFlags = VmFlags {
        read: true,
        write: false,
    };
    const P: u64 = PAGE_SIZE;

    fn spans(l: &VmaList) -> Vec<(u64, u64, bool, u64)> {
        l.iter()
            .map(|v| (v.start / P, v.end / P, v.flags.write, v.pgoff))
            .collect()
    }

    #[test]
    fn adjacent_anon_vmas_merge_and_split_again() {
        let mut l = VmaList::default();
        l.insert(Vma::anon(0, 4 * P, RW));
        l.insert(Vma::anon(4 * P, 8 * P, RW));
        l.insert(Vma::anon(10 * P, 12 * P, RW));
        assert_eq!(spans(&l), [(0, 8, true, 0), (10, 12, true, 0)]);
        // Filling the hole merges all three.
        l.insert(Vma::anon(8 * P, 10 * P, RW));
        assert_eq!(spans(&l), [(0, 12, true, 0)]);
        // mprotect of the middle splits into three, back again merges.
        l.set_flags(3 * P, 5 * P, RO);
        assert_eq!(
            spans(&l),
            [(0, 3, true, 0), (3, 5, false, 0), (5, 12, true, 0)]
        );
        assert!(l.covers(0, 12 * P) && !l.covers(0, 13 * P));
        l.set_flags(3 * P, 5 * P, RW);
        assert_eq!(spans(&l), [(0, 12, true, 0)]);
        // munmap of the middle leaves two.
        let gone = l.remove_range(4 * P, 6 * P);
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].start, gone[0].end), (4 * P, 6 * P));
        assert_eq!(spans(&l), [(0, 4, true, 0), (6, 12, true, 0)]);
        assert_eq!(l.find(5 * P), None);
        assert_eq!(l.find(6 * P).map(|v| v.start), Some(6 * P));
        // Different flags never merge.
        l.insert(Vma::anon(4 * P, 6 * P, RO));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn file_vmas_split_with_offsets_and_merge_only_when_contiguous() {
        let f = Arc::new(RamFile::new::<Emul4k>(16, DirtyAops::Nobuffers));
        let g = Arc::new(RamFile::new::<Emul4k>(16, DirtyAops::Nobuffers));
        let file = |s: u64, e: u64, pgoff: u64, file: &Arc<RamFile>| Vma {
            start: s * P,
            end: e * P,
            flags: RW,
            file: Some(file.clone()),
            pgoff,
        };
        let mut l = VmaList::default();
        l.insert(file(0, 4, 2, &f));
        l.set_flags(P, 2 * P, RO);
        assert_eq!(
            spans(&l),
            [(0, 1, true, 2), (1, 2, false, 3), (2, 4, true, 4)]
        );
        l.set_flags(P, 2 * P, RW);
        assert_eq!(spans(&l), [(0, 4, true, 2)]);
        // Contiguous offsets of the same file merge; a gap in the offsets,
        // another file or anonymous memory does not.
        l.insert(file(4, 5, 6, &f));
        assert_eq!(spans(&l), [(0, 5, true, 2)]);
        l.insert(file(5, 6, 8, &f));
        l.insert(file(6, 7, 9, &g));
        l.insert(Vma::anon(7 * P, 8 * P, RW));
        assert_eq!(l.len(), 4);
        let gone = l.remove_range(P, 3 * P);
        assert_eq!(gone[0].pgoff, 3, "the removed piece keeps its offset");
        assert_eq!(l.find(3 * P).map(|v| v.pgoff), Some(5));
        assert_eq!(l.find(3 * P).unwrap().linear_page_index(4 * P), 6);
    }
}
