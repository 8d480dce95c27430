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
//!   them under `mmap_lock` held for read;
//! - page-table pages are freed only by `free_pgtables` (under `mmap_lock` for
//!   write) or mm teardown.

use super::arch::Mmu;
use crate::percpu;
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

/// A virtual memory area: `[start, end)` of private anonymous memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Access flags.
    pub flags: VmFlags,
}

/// The VMAs of an mm, sorted by address; protected by `mmap_lock`.
#[derive(Default, Debug)]
pub struct VmaList {
    vmas: Vec<Vma>,
}

impl VmaList {
    /// The VMA containing `addr` (`find_vma` + range check).
    pub fn find(&self, addr: u64) -> Option<&Vma> {
        self.vmas.iter().find(|v| v.start <= addr && addr < v.end)
    }

    /// Whether `[start, end)` overlaps any VMA.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.vmas.iter().any(|v| v.start < end && start < v.end)
    }

    /// Inserts a VMA that overlaps none.
    pub fn insert(&mut self, vma: Vma) {
        let pos = self.vmas.partition_point(|v| v.start < vma.start);
        self.vmas.insert(pos, vma);
    }

    /// Removes `[start, end)` from the list, splitting VMAs at the edges.
    pub fn remove_range(&mut self, start: u64, end: u64) {
        let mut out = Vec::with_capacity(self.vmas.len() + 1);
        for v in self.vmas.drain(..) {
            if v.end <= start || end <= v.start {
                out.push(v);
                continue;
            }
            if v.start < start {
                out.push(Vma {
                    start: v.start,
                    end: start,
                    flags: v.flags,
                });
            }
            if end < v.end {
                out.push(Vma {
                    start: end,
                    end: v.end,
                    flags: v.flags,
                });
            }
        }
        self.vmas = out;
    }

    /// Every VMA, in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.vmas.iter()
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
    pub mmap_lock: spin::RwLock<VmaList>,
    /// Serialises populating upper-level entries (`pXd_populate`).
    pub page_table_lock: spin::Mutex<()>,
    /// Page-table bytes allocated for this mm (`pgtables_bytes`).
    pub pgtables_bytes: AtomicUsize,
    /// Resident anonymous pages (`MM_ANONPAGES`).
    pub rss_anon: AtomicUsize,
    /// The current page-table fragment block (`mm->context.pte_frag`).
    pub(crate) pte_frag: spin::Mutex<super::frag::FragCursor>,
}

impl<A: Mmu> Mm<A> {
    /// A new, empty mm (`mm_alloc`), or `None` when out of memory.
    pub fn new() -> Option<Self> {
        Some(Self {
            context: A::init_new_context()?,
            cpumask: AtomicU64::new(0),
            mmap_lock: spin::RwLock::new(VmaList::default()),
            page_table_lock: spin::Mutex::new(()),
            pgtables_bytes: AtomicUsize::new(0),
            rss_anon: AtomicUsize::new(0),
            pte_frag: spin::Mutex::new(super::frag::FragCursor::default()),
        })
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
