//! In-kernel tests of shared file mappings, the page cache, rmap, mkclean and
//! writeback (KTAP suite `mm_file`), on real hardware translation and every
//! CPU: tasks store through shared mappings with plain CPU stores, take real
//! write-protect faults, and other CPUs hold real TLB entries that mkclean
//! must shoot down (x86-64: IPIs; s390x: IPTE).
//!
//! Work on other CPUs runs from their idle loops (task context, interrupts
//! on), since faults there may flush TLBs and wait for other CPUs. Every test
//! checks that it leaked no frame: the free-frame count after the test (mms
//! torn down, files dropped) equals the count before.
//!
//! The `dirty_*` and `writeback_throughput_*` cases run in a chosen
//! dirty-tracking mode ([`crate::mm::dirty`]) and restore the previous one; the
//! StorageKey ones skip where there are no storage keys. The write-notify
//! cases force SoftDirty, so every case passes whatever `dirty=` chose.

use super::{faults, load, mm_with_mappings, new_mm, no_leak, pte_of, store};
use crate::cmdline::Cmdline;
use crate::ktap::Outcome;
use crate::mm::arch::{Mmu, PAGE_CHANGED};
use crate::mm::dirty::{self, DirtyTracking};
use crate::mm::filemap::{self, DirtyAops, RamFile};
use crate::mm::memory::{self, MapError};
use crate::mm::mm::{self as mmod, Mm, VmFlags};
use crate::mm::{page, rmap, PAGE_SIZE};
use crate::selftest::TestFn;
use crate::{diag, smp, NR_CPUS};
use alloc::sync::Arc;
use alloc::{boxed::Box, format, string::String, vec::Vec};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The suite's name.
pub(crate) const SUITE: &str = "mm_file";

const RW: VmFlags = VmFlags::RW;
const RO: VmFlags = VmFlags::RO;
const P: u64 = PAGE_SIZE;

/// The `mm_file` suite, in order.
pub(crate) fn cases<A: Mmu>() -> Vec<(&'static str, TestFn)> {
    crate::selftest::test_cases![
        A;
        vma_operations, shared_writes_every_cpu, mkclean_every_cpu, cow_after_fork_with_file,
        writeback_throughput, dirty_softdirty_keeps_every_byte = softdirty_keeps_every_byte,
        dirty_skey_keeps_every_byte = skey_keeps_every_byte,
        dirty_skey_mkclean_clears_change_bit = skey_mkclean_clears_change_bit,
        dirty_skey_last_unmap_dirties_page = skey_last_unmap_dirties_page,
        writeback_throughput_softdirty, writeback_throughput_skey,
    ]
}

fn new_file<A: Mmu>(pages: u64) -> Arc<RamFile> {
    Arc::new(RamFile::new::<A>(pages, DirtyAops::Nobuffers))
}

/// A new mm with a new `pages`-page file mapped shared and writable at
/// `TASK_BASE` (populated if asked, the mm not yet entered on any CPU).
fn file_mm<A: Mmu>(pages: u64, populate: bool) -> Result<(Box<Mm<A>>, Arc<RamFile>), Outcome> {
    let f = new_file::<A>(pages);
    let mm = mm_with_mappings::<A>(|mm| {
        memory::mmap_file(mm, A::TASK_BASE, pages * P, RW, &f, 0, false, populate)
    })?;
    Ok((mm, f))
}

/// Collects failed checks.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    fn outcome(self) -> Outcome {
        if self.0.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail(self.0.join("; "))
        }
    }
}

// ---- work on every CPU ----------------------------------------------------------

/// The mm the per-CPU work runs in.
static SHARED_MM: AtomicUsize = AtomicUsize::new(0);
/// Its base address.
static BASE: AtomicU64 = AtomicU64::new(0);
/// Pages the per-CPU work touches.
static NPAGES: AtomicU64 = AtomicU64::new(0);
/// The value stored this phase.
static PHASE_VALUE: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);
static CPU_FAULTS: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];

fn shared_mm<A: Mmu>() -> &'static Mm<A> {
    // SAFETY: the test stores a live, boxed mm before starting the work and
    // tears it down only after every CPU has finished.
    unsafe { &*(SHARED_MM.load(Ordering::Acquire) as *const Mm<A>) }
}

/// Shares `mm`, with its file mapped at `TASK_BASE`, with the work on every
/// CPU: it stores to `pages` pages, in phase `value`.
fn share<A: Mmu>(mm: &Mm<A>, pages: u64, value: u64) {
    SHARED_MM.store(mm as *const Mm<A> as usize, Ordering::Release);
    BASE.store(A::TASK_BASE, Ordering::Release);
    NPAGES.store(pages, Ordering::Release);
    PHASE_VALUE.store(value, Ordering::Release);
}

/// Runs `work(cpu)` on every CPU (the others from their idle loops) and
/// waits for all of them.
fn on_every_cpu<A: Mmu>(work: fn(usize)) {
    let n = smp::nr_cpus();
    DONE.store(0, Ordering::Release);
    for cpu in 1..n {
        smp::run_on_idle::<A>(cpu, work, cpu);
    }
    work(0);
    while DONE.load(Ordering::Acquire) < n {
        A::cpu_relax();
    }
}

/// Enters the shared mm and stores the phase value into this CPU's word of
/// every page; counts its faults.
fn enter_and_store<A: Mmu>(cpu: usize) {
    let mm = shared_mm::<A>();
    // SAFETY: the test keeps the mm alive until `leave` ran on every CPU.
    unsafe { mmod::use_mm(mm) };
    let f0 = faults::<A>();
    let (base, v) = (
        BASE.load(Ordering::Acquire),
        PHASE_VALUE.load(Ordering::Acquire),
    );
    for i in 0..NPAGES.load(Ordering::Acquire) {
        // SAFETY: in the mm's writable shared VMA.
        unsafe { store(base + i * P + cpu as u64 * 8, v + i) };
    }
    CPU_FAULTS[cpu].store(faults::<A>() - f0, Ordering::Release);
    DONE.fetch_add(1, Ordering::AcqRel);
}

fn leave<A: Mmu>(_: usize) {
    mmod::unuse_mm::<A>();
    DONE.fetch_add(1, Ordering::AcqRel);
}

// ---- the cases --------------------------------------------------------------------

/// mmap (anonymous, shared file, MAP_FIXED over both, populate), mprotect
/// (split, write-protect, merge), MADV_DONTNEED and munmap, each observed
/// through the hardware.
fn vma_operations<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let mm = or_return!(new_mm::<A>());
        let f = new_file::<A>(8);
        f.mapping.write_backing(3 * P, 0x3333);
        let base = A::TASK_BASE;
        let mut c = Checks::default();
        c.check(
            memory::mmap_anon(&mm, base, 8 * P, RW, true).is_ok(),
            "mmap anon",
        );
        c.check(
            memory::mmap_file(&mm, base + 2 * P, 4 * P, RW, &f, 2, false, false)
                == Err(MapError::Exists),
            "MAP_FIXED_NOREPLACE over a mapping",
        );
        c.check(
            memory::mmap_file(&mm, base + 2 * P, 4 * P, RW, &f, 2, true, true).is_ok(),
            "MAP_FIXED file over anon",
        );
        let (anon_rss, file_rss) = (
            mm.rss_anon.load(Ordering::Relaxed),
            mm.rss_file.load(Ordering::Relaxed),
        );
        c.check(
            (anon_rss, file_rss) == (4, 4),
            format!("rss after MAP_FIXED anon={anon_rss} file={file_rss}"),
        );
        // SAFETY: the mm lives until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        // File page 3 is mapped at base + 3 pages (pgoff 2 at base + 2).
        // SAFETY: in the file VMA.
        let v = unsafe { load(base + 3 * P) };
        c.check(v == 0x3333, format!("file read gave {v:#x}"));
        for i in 0..8 {
            // SAFETY: in a writable VMA.
            unsafe { store(base + i * P + 8, 100 + i) };
        }
        // anon [0,2) file [2,6) anon [6,8) → anon RW, anon RO, file RO,
        // anon RO, anon RW.
        let r = memory::mprotect(&mm, base + P, 6 * P, RO);
        let split = mm.mmap_lock.read().len();
        c.check(
            r.is_ok() && split == 5,
            format!("mprotect split: {r:?}, {split} VMAs"),
        );
        let mut denied = 0;
        for i in 1..7 {
            let pte = pte_of(&*mm, base + i * P);
            if A::pte_write(pte) {
                c.check(false, format!("page {i} writable after mprotect"));
            }
            if matches!(A::probe_store(base + i * P, 0), Err(info) if info.protection) {
                denied += 1;
            }
        }
        c.check(denied == 6, format!("{denied} of 6 stores denied"));
        let r = memory::mprotect(&mm, base + P, 6 * P, RW);
        let nvmas = mm.mmap_lock.read().len();
        c.check(
            r.is_ok() && nvmas == 3,
            format!("mprotect merge: {r:?}, {nvmas} VMAs"),
        );
        // SAFETY: writable again.
        unsafe { store(base + 4 * P, 44) };
        let r = memory::madvise_dontneed(&mm, base, 8 * P);
        // SAFETY: in the VMAs.
        let (a0, f4) = unsafe { (load(base + 8), load(base + 4 * P)) };
        c.check(
            r.is_ok() && a0 == 0 && f4 == 44,
            format!("MADV_DONTNEED: {r:?}, anon reads {a0}, file reads {f4}"),
        );
        let r = memory::munmap(&mm, base + 2 * P, 2 * P);
        let gone = A::probe_load(base + 2 * P);
        c.check(
            r.is_ok() && matches!(gone, Err(i) if !i.protection),
            format!("munmap: {r:?}, then a load gave {gone:?}"),
        );
        let nmaps = f.mapping.nr_mmaps();
        c.check(nmaps == 1, format!("{nmaps} i_mmap records after munmap"));
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        let wrote = filemap::filemap_write_and_wait::<A>(&f.mapping);
        diag!("vmas_after_split={split} written_back={wrote}");
        c.check(
            wrote == 4,
            format!("{wrote} pages written back, expected 4"),
        );
        c.check(
            f.mapping.read_backing(4 * P) == 44,
            "the store through the file mapping reached the backing store",
        );
        c.outcome()
    })
}

/// Every CPU stores its own word into every page of a shared file mapping;
/// one writeback pass puts every CPU's words into the backing store.
fn shared_writes_every_cpu<A: Mmu>(_: &Cmdline) -> Outcome {
    if smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    no_leak(|| {
        const PAGES: u64 = 8;
        let (mm, f) = or_return!(file_mm::<A>(PAGES, false));
        share::<A>(&mm, PAGES, 0x1000);
        on_every_cpu::<A>(enter_and_store::<A>);
        let dirty = f
            .mapping
            .i_pages
            .lock()
            .count_marked(crate::mm::xarray::XaMark::Dirty);
        let wrote = filemap::filemap_write_and_wait::<A>(&f.mapping);
        on_every_cpu::<A>(leave::<A>);
        memory::exit_mmap(*mm);
        let n = smp::nr_cpus() as u64;
        let mut wrong = 0;
        for i in 0..PAGES {
            for cpu in 0..n {
                if f.mapping.read_backing(i * P + cpu * 8) != 0x1000 + i {
                    wrong += 1;
                }
            }
        }
        diag!("cpus={n} pages={PAGES} dirty_tagged={dirty} written={wrote} wrong_words={wrong}");
        let mut c = Checks::default();
        c.check(
            dirty == PAGES as usize,
            format!("{dirty} pages tagged dirty"),
        );
        c.check(wrote == PAGES as usize, format!("{wrote} pages written"));
        c.check(
            wrong == 0,
            format!("{wrong} words missing from the backing store"),
        );
        c.outcome()
    })
}

/// Where CPU `cpu` maps the one-page file of `mkclean_every_cpu`.
fn own_mapping(cpu: usize) -> u64 {
    BASE.load(Ordering::Acquire) + 2 * cpu as u64 * P
}

/// Stores the phase value through this CPU's own mapping; counts its faults.
fn store_own<A: Mmu>(cpu: usize) {
    let f0 = faults::<A>();
    // SAFETY: the CPU runs the shared mm, whose VMA at `own_mapping` is
    // writable.
    unsafe {
        store(
            own_mapping(cpu) + cpu as u64 * 8,
            PHASE_VALUE.load(Ordering::Acquire),
        )
    };
    CPU_FAULTS[cpu].store(faults::<A>() - f0, Ordering::Release);
    DONE.fetch_add(1, Ordering::AcqRel);
}

fn enter_and_store_own<A: Mmu>(cpu: usize) {
    // SAFETY: the test keeps the mm alive until `leave` ran on every CPU.
    unsafe { mmod::use_mm(shared_mm::<A>()) };
    store_own::<A>(cpu);
}

/// One file page, mapped shared once per CPU at its own address; every CPU
/// stores through its mapping (a writable, dirty PTE and a TLB entry each).
/// CPU 0 writes the page back: mkclean must write-protect every mapping and
/// purge it from every TLB, so the next store on every CPU takes exactly one
/// fault — a CPU that kept a stale writable entry would store without one,
/// and its store would be lost by the next writeback.
fn mkclean_every_cpu<A: Mmu>(_: &Cmdline) -> Outcome {
    // Write-notify behaviour: SoftDirty, whatever `dirty=` chose.
    in_mode::<A>(DirtyTracking::SoftDirty, || {
        let n = smp::nr_cpus();
        let f = new_file::<A>(1);
        let base = A::TASK_BASE;
        BASE.store(base, Ordering::Release);
        let mm = or_return!(mm_with_mappings::<A>(|mm| {
            (0..n).try_for_each(|cpu| {
                memory::mmap_file(mm, own_mapping(cpu), P, RW, &f, 0, false, false)
            })
        }));
        SHARED_MM.store(&*mm as *const Mm<A> as usize, Ordering::Release);
        PHASE_VALUE.store(0x10, Ordering::Release);
        on_every_cpu::<A>(enter_and_store_own::<A>);
        let page = page::pfn_to_page(A::pte_pfn(pte_of(&*mm, base)));
        let mapcount = page::page_mapcount(page) as usize;
        let wrote1 = filemap::writeback::<A>(page);
        let protected = (0..n)
            .filter(|&c| {
                let pte = pte_of(&*mm, own_mapping(c));
                A::pte_present(pte) && !A::pte_write(pte) && !A::pte_dirty(pte)
            })
            .count();
        let first = f.mapping.read_backing(0);
        PHASE_VALUE.store(0x20, Ordering::Release);
        // Every CPU is still in the mm; its TLB may hold its old entry.
        on_every_cpu::<A>(store_own::<A>);
        let per_cpu: Vec<u64> = (0..n)
            .map(|c| CPU_FAULTS[c].load(Ordering::Acquire))
            .collect();
        let wrote2 = filemap::writeback::<A>(page);
        on_every_cpu::<A>(leave::<A>);
        memory::exit_mmap(*mm);
        let lost = (0..n as u64)
            .filter(|cpu| f.mapping.read_backing(cpu * 8) != 0x20)
            .count();
        let faults_str: Vec<String> = per_cpu
            .iter()
            .enumerate()
            .map(|(c, f)| format!("cpu{c}={f}"))
            .collect();
        diag!(
            "cpus={n} mapcount={mapcount} protected_by_mkclean={protected} faults_after_mkclean {}",
            faults_str.join(" ")
        );
        crate::platform::note_without(
            crate::platform::Property::StaleTlb,
            "that mkclean purged every CPU's writable TLB entry",
        );
        let mut c = Checks::default();
        c.check(mapcount == n, format!("mapcount {mapcount}, {n} mappings"));
        c.check(
            wrote1 && first == 0x10,
            format!("first writeback: wrote={wrote1}, backing {first:#x}"),
        );
        c.check(
            protected == n,
            format!("{protected} of {n} PTEs write-protected and clean"),
        );
        for (cpu, &nf) in per_cpu.iter().enumerate() {
            c.check(nf == 1, format!("CPU {cpu} took {nf} faults on its store"));
        }
        c.check(
            wrote2 && lost == 0,
            format!("second writeback: wrote={wrote2}, {lost} CPUs' stores lost"),
        );
        c.outcome()
    })
}

/// Fork of an mm with private anonymous memory and a shared file mapping:
/// anonymous pages are copied on write, file pages stay shared, and rmap
/// finds both mms until the copy.
fn cow_after_fork_with_file<A: Mmu>(_: &Cmdline) -> Outcome {
    no_leak(|| {
        let f = new_file::<A>(2);
        let base = A::TASK_BASE;
        let fbase = base + 16 * P;
        let parent = or_return!(mm_with_mappings::<A>(|mm| {
            memory::mmap_anon(mm, base, 2 * P, RW, true)?;
            memory::mmap_file(mm, fbase, 2 * P, RW, &f, 0, false, false)
        }));
        // SAFETY: the mms live until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*parent) };
        // SAFETY: in the VMAs.
        unsafe {
            store(base, 1);
            store(fbase, 2);
        }
        mmod::unuse_mm::<A>();
        let Some(child) = memory::dup_mm(&parent) else {
            memory::exit_mmap(*parent);
            return Outcome::Fail("dup_mm failed".into());
        };
        let anon = page::pfn_to_page(A::pte_pfn(pte_of(&*parent, base)));
        let shared_maps = rmap::page_mappings::<A>(anon).len();
        // SAFETY: as above.
        unsafe { mmod::use_mm(&*child) };
        // SAFETY: in the VMAs.
        let (c_anon, c_file) = unsafe { (load(base), load(fbase)) };
        let f0 = faults::<A>();
        // SAFETY: in the VMAs: a COW fault and a write-notify fault.
        unsafe {
            store(base, 10);
            store(fbase, 20);
        }
        let child_faults = faults::<A>() - f0;
        mmod::unuse_mm::<A>();
        let after_maps = rmap::page_mappings::<A>(anon).len();
        // SAFETY: as above.
        unsafe { mmod::use_mm(&*parent) };
        // SAFETY: in the VMAs.
        let (p_anon, p_file) = unsafe { (load(base), load(fbase)) };
        mmod::unuse_mm::<A>();
        let nmaps = f.mapping.nr_mmaps();
        memory::exit_mmap(*child);
        memory::exit_mmap(*parent);
        let wrote = filemap::filemap_write_and_wait::<A>(&f.mapping);
        diag!(
            "anon_mappings_after_fork={shared_maps} after_cow={after_maps} child_faults={child_faults} i_mmap={nmaps}"
        );
        let mut c = Checks::default();
        c.check(
            shared_maps == 2,
            format!("rmap found {shared_maps} mappings after fork"),
        );
        c.check(
            after_maps == 1,
            format!("rmap found {after_maps} mappings after COW"),
        );
        c.check(
            (c_anon, c_file) == (1, 2),
            "the child sees the parent's data",
        );
        c.check(
            p_anon == 1,
            format!("the parent's anon page reads {p_anon}: not copied"),
        );
        c.check(
            p_file == 20,
            format!("the parent's file page reads {p_file}: not shared"),
        );
        c.check(nmaps == 2, format!("{nmaps} i_mmap records"));
        c.check(
            wrote == 1 && f.mapping.read_backing(0) == 20,
            format!("writeback after exit: {wrote} pages"),
        );
        c.outcome()
    })
}

/// Writeback pages per second by tag (`filemap_write_and_wait`), write-notify
/// mode whatever `dirty=` chose: see [`writeback_rate`].
fn writeback_throughput<A: Mmu>(_: &Cmdline) -> Outcome {
    writeback_rate::<A>(DirtyTracking::SoftDirty, true)
}

// ---- dirty-tracking modes ------------------------------------------------------

/// Runs `body` in dirty-tracking `mode` and restores the previous mode;
/// skips where the mode is refused (StorageKey without storage keys).
fn in_mode<A: Mmu>(mode: DirtyTracking, body: impl FnOnce() -> Outcome) -> Outcome {
    let prev = dirty::dirty_tracking();
    if dirty::set_dirty_tracking::<A>(mode).is_err() {
        return Outcome::Skip("no storage keys on this architecture");
    }
    if mode == DirtyTracking::StorageKey {
        let c = crate::platform::skip_without(crate::platform::Property::SkeyChangeBit);
        if let Some(skip) = c {
            dirty::set_dirty_tracking::<A>(prev).expect("the previous mode was accepted");
            return skip;
        }
    }
    let r = no_leak(body);
    dirty::set_dirty_tracking::<A>(prev).expect("the previous mode was accepted");
    r
}

/// The word `word` of page `page` in phase `phase`: every word of the file
/// different in every phase.
fn pattern(phase: u64, page: u64, word: u64) -> u64 {
    phase << 32 | page << 16 | word
}

/// Stores this phase's pattern into this CPU's share of the words of every
/// page (word `w` belongs to CPU `w % nr_cpus`), so the CPUs together write
/// every byte.
fn fill(cpu: usize) {
    let n = smp::nr_cpus() as u64;
    let (base, phase) = (
        BASE.load(Ordering::Acquire),
        PHASE_VALUE.load(Ordering::Acquire),
    );
    for i in 0..NPAGES.load(Ordering::Acquire) {
        let mut w = cpu as u64;
        while w < P / 8 {
            // SAFETY: in the mm's writable shared VMA, which this CPU runs.
            unsafe { store(base + i * P + w * 8, pattern(phase, i, w)) };
            w += n;
        }
    }
    DONE.fetch_add(1, Ordering::AcqRel);
}

fn enter_and_fill<A: Mmu>(cpu: usize) {
    // SAFETY: the test keeps the mm alive until `leave` ran on every CPU.
    unsafe { mmod::use_mm(shared_mm::<A>()) };
    fill(cpu);
}

/// Words of the backing store of `f` (`pages` pages) that differ from
/// phase `phase`'s pattern.
fn backing_mismatches(f: &RamFile, pages: u64, phase: u64) -> u64 {
    let mut bad = 0;
    for i in 0..pages {
        for w in 0..P / 8 {
            bad += u64::from(f.mapping.read_backing(i * P + w * 8) != pattern(phase, i, w));
        }
    }
    bad
}

/// Writes back every cached page of `f` one by one (`write_one_page`, which
/// asks mkclean, hence the key in StorageKey mode, not the DIRTY tag).
fn write_each_page<A: Mmu>(f: &RamFile, pages: u64) -> u64 {
    let mut wrote = 0;
    for i in 0..pages {
        if let Some(p) = filemap::find_get_page(&f.mapping, i) {
            wrote += u64::from(filemap::writeback::<A>(p));
            page::put_page(p);
        }
    }
    wrote
}

/// Every CPU stores its share of every word of 8 shared file pages, three
/// times: after phase 1 the dirty pages are written back by tag
/// (`filemap_write_and_wait`); after phase 2 page by page (mkclean decides);
/// phase 3 is only carried by the unmap (StorageKey: `page_remove_rmap`
/// moves the change bit to the page) and a last writeback. Then every page
/// is evicted and the backing store must hold every byte of phase 3.
fn keeps_every_byte<A: Mmu>(mode: DirtyTracking) -> Outcome {
    in_mode::<A>(mode, || {
        const PAGES: u64 = 8;
        let (mm, f) = or_return!(file_mm::<A>(PAGES, false));
        share::<A>(&mm, PAGES, 1);
        on_every_cpu::<A>(enter_and_fill::<A>);
        let wrote1 = filemap::filemap_write_and_wait::<A>(&f.mapping) as u64;
        let bad1 = backing_mismatches(&f, PAGES, 1);
        PHASE_VALUE.store(2, Ordering::Release);
        on_every_cpu::<A>(fill);
        let wrote2 = write_each_page::<A>(&f, PAGES);
        let bad2 = backing_mismatches(&f, PAGES, 2);
        PHASE_VALUE.store(3, Ordering::Release);
        on_every_cpu::<A>(fill);
        on_every_cpu::<A>(leave::<A>);
        memory::exit_mmap(*mm);
        let wrote3 = filemap::filemap_write_and_wait::<A>(&f.mapping) as u64;
        let evicted = (0..PAGES)
            .filter(|&i| filemap::evict_page(&f.mapping, i))
            .count() as u64;
        let cached = f.mapping.nrpages.load(Ordering::Acquire);
        let bad3 = backing_mismatches(&f, PAGES, 3);
        diag!(
            "mode={} cpus={} written={wrote1}/{wrote2}/{wrote3} evicted={evicted} words_lost={bad1}/{bad2}/{bad3}",
            mode.name(),
            smp::nr_cpus()
        );
        let mut c = Checks::default();
        c.check(
            (wrote1, wrote2, wrote3) == (PAGES, PAGES, PAGES),
            format!("written {wrote1}/{wrote2}/{wrote3} pages, expected {PAGES} each time"),
        );
        c.check(
            evicted == PAGES && cached == 0,
            format!("{evicted} evicted, {cached} cached"),
        );
        c.check(
            (bad1, bad2, bad3) == (0, 0, 0),
            format!("words lost after each writeback: {bad1}/{bad2}/{bad3}"),
        );
        c.outcome()
    })
}

fn softdirty_keeps_every_byte<A: Mmu>(_: &Cmdline) -> Outcome {
    keeps_every_byte::<A>(DirtyTracking::SoftDirty)
}

fn skey_keeps_every_byte<A: Mmu>(_: &Cmdline) -> Outcome {
    keeps_every_byte::<A>(DirtyTracking::StorageKey)
}

/// Whether frame `pfn`'s change bit is set.
fn change_bit<A: Mmu>(pfn: u64) -> bool {
    A::STORAGE_KEYS.is_some_and(|k| k.get_storage_key(pfn) & PAGE_CHANGED != 0)
}

/// StorageKey mode: a store through a shared mapping sets C; mkclean reports
/// the page dirty, clears C and leaves the PTE writable; the next store takes
/// no fault and sets C again.
fn skey_mkclean_clears_change_bit<A: Mmu>(_: &Cmdline) -> Outcome {
    in_mode::<A>(DirtyTracking::StorageKey, || {
        let (mm, _file) = or_return!(file_mm::<A>(1, true));
        let base = A::TASK_BASE;
        let pfn = A::pte_pfn(pte_of(&*mm, base));
        let pg = page::pfn_to_page(pfn);
        let after_fill = change_bit::<A>(pfn);
        // SAFETY: the mm lives until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        // SAFETY: in the writable shared VMA.
        unsafe { store(base, 1) };
        let after_store = change_bit::<A>(pfn);
        page::lock_page(pg);
        let dirty = rmap::folio_mkclean::<A>(pg);
        page::unlock_page(pg);
        let after_mkclean = change_bit::<A>(pfn);
        let writable = A::pte_write(pte_of(&*mm, base));
        let f0 = faults::<A>();
        // SAFETY: as above.
        unsafe { store(base + 8, 2) };
        let nfaults = faults::<A>() - f0;
        let after_store2 = change_bit::<A>(pfn);
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        diag!(
            "C: after_fill={after_fill} after_store={after_store} mkclean_dirty={dirty} \
             after_mkclean={after_mkclean} pte_writable={writable} after_next_store={after_store2} faults={nfaults}"
        );
        let mut c = Checks::default();
        c.check(!after_fill, "C set after the page-cache fill");
        c.check(after_store, "C clear after a store");
        c.check(dirty, "mkclean did not report the page dirty");
        c.check(!after_mkclean, "C still set after mkclean");
        c.check(writable, "mkclean write-protected the PTE");
        c.check(nfaults == 0, format!("{nfaults} faults on the next store"));
        c.check(after_store2, "the next store did not set C");
        c.outcome()
    })
}

/// StorageKey mode: a page mapped twice is written back, then stored to
/// through a mapping (no fault, only C records it). Unmapping one mapping
/// leaves the page clean; unmapping the last one moves C to the page
/// (`PG_dirty` and the DIRTY tag) and clears C; writeback then writes it.
fn skey_last_unmap_dirties_page<A: Mmu>(_: &Cmdline) -> Outcome {
    in_mode::<A>(DirtyTracking::StorageKey, || {
        let f = new_file::<A>(1);
        let (a1, a2) = (A::TASK_BASE, A::TASK_BASE + 2 * P);
        let mm = or_return!(mm_with_mappings::<A>(|mm| {
            memory::mmap_file(mm, a1, P, RW, &f, 0, false, false)?;
            memory::mmap_file(mm, a2, P, RW, &f, 0, false, false)
        }));
        // SAFETY: the mm lives until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        // SAFETY: in the writable shared VMAs.
        unsafe {
            store(a1, 0x11);
            load(a2);
        }
        let pfn = A::pte_pfn(pte_of(&*mm, a1));
        let pg = page::pfn_to_page(pfn);
        let wrote1 = filemap::writeback::<A>(pg);
        let f0 = faults::<A>();
        // SAFETY: as above.
        unsafe { store(a1, 0x22) };
        let nfaults = faults::<A>() - f0;
        let clean_before = !page::PageDirty(pg);
        let c_before = change_bit::<A>(pfn);
        let one = memory::munmap(&mm, a2, P).is_ok();
        let clean_after_one = !page::PageDirty(pg);
        let two = memory::munmap(&mm, a1, P).is_ok();
        mmod::unuse_mm::<A>();
        let dirty_after_last = page::PageDirty(pg);
        let tagged = f
            .mapping
            .i_pages
            .lock()
            .get_mark(0, crate::mm::xarray::XaMark::Dirty);
        let c_after = change_bit::<A>(pfn);
        let wrote2 = filemap::filemap_write_and_wait::<A>(&f.mapping);
        let backing = f.mapping.read_backing(0);
        memory::exit_mmap(*mm);
        diag!(
            "faults_on_store={nfaults} clean_before_unmap={clean_before} C_before={c_before} \
             clean_after_first_unmap={clean_after_one} dirty_after_last_unmap={dirty_after_last} \
             tagged={tagged} C_after={c_after} written={wrote2} backing={backing:#x}"
        );
        let mut c = Checks::default();
        c.check(wrote1 && one && two, "first writeback or munmap failed");
        c.check(
            nfaults == 0,
            format!("{nfaults} faults on the store after writeback"),
        );
        c.check(
            clean_before && c_before,
            "before unmap: page dirty or C clear",
        );
        c.check(
            clean_after_one,
            "unmapping one of two mappings dirtied the page",
        );
        c.check(
            dirty_after_last && tagged,
            "the last unmap did not dirty and tag the page",
        );
        c.check(!c_after, "C still set after the last unmap");
        c.check(
            wrote2 == 1 && backing == 0x22,
            format!("writeback after unmap: {wrote2} pages, backing {backing:#x}"),
        );
        c.outcome()
    })
}

/// Writeback pages per second in `mode`: store to every page of a 32-page
/// shared mapping, then write the pages back — by the DIRTY tag
/// (`filemap_write_and_wait`) or each page (`write_one_page`), mkclean and copy
/// included — repeatedly for at least 20 ms, with the mm entered on every CPU
/// first, so on x86-64 each mkclean and write fault shoots down every CPU. SoftDirty: a write-protect fault per page per round and a PTE
/// flush in mkclean; StorageKey: no fault after the first round, and mkclean
/// is ISKE + SSKE.
fn writeback_rate<A: Mmu>(mode: DirtyTracking, by_tag: bool) -> Outcome {
    in_mode::<A>(mode, || {
        const PAGES: u64 = 32;
        let (mm, f) = or_return!(file_mm::<A>(PAGES, true));
        let base = A::TASK_BASE;
        // Entered on every CPU, no page stored to.
        share::<A>(&mm, 0, 0);
        on_every_cpu::<A>(enter_and_store::<A>);
        on_every_cpu::<A>(leave::<A>);
        // SAFETY: the mm lives until exit_mmap, after unuse_mm.
        unsafe { mmod::use_mm(&*mm) };
        let t0 = A::clock_ns();
        let mut written = 0u64;
        let mut rounds = 0u64;
        while A::clock_ns() - t0 < 20_000_000 || rounds < 2 {
            for i in 0..PAGES {
                // SAFETY: in the writable shared VMA.
                unsafe { store(base + i * P, rounds) };
            }
            written += if by_tag {
                filemap::filemap_write_and_wait::<A>(&f.mapping) as u64
            } else {
                write_each_page::<A>(&f, PAGES)
            };
            rounds += 1;
        }
        let ns = (A::clock_ns() - t0).max(1);
        mmod::unuse_mm::<A>();
        memory::exit_mmap(*mm);
        let last = f.mapping.read_backing((PAGES - 1) * P);
        diag!(
            "mode={} by={} writeback_pages_per_sec={} rounds={rounds} pages={written} cpus_in_mm={}",
            mode.name(),
            if by_tag { "tag" } else { "page" },
            written * 1_000_000_000 / ns,
            smp::nr_cpus()
        );
        if written != rounds * PAGES || last != rounds - 1 {
            return Outcome::Fail(format!(
                "{written} pages written in {rounds} rounds of {PAGES}; last value {last}"
            ));
        }
        Outcome::Pass
    })
}

fn writeback_throughput_softdirty<A: Mmu>(_: &Cmdline) -> Outcome {
    writeback_rate::<A>(DirtyTracking::SoftDirty, false)
}

fn writeback_throughput_skey<A: Mmu>(_: &Cmdline) -> Outcome {
    writeback_rate::<A>(DirtyTracking::StorageKey, false)
}
