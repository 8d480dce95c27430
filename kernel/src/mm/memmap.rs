//! Physical memory discovery and the boot-time set-up of the frame database and
//! the buddy allocator (Linux: the e820/SCLP memory detection feeding memblock,
//! `alloc_node_mem_map`, `memblock_free_all`).
//!
//! Design. The backend reports usable RAM as a [`MemoryMap`] in
//! [`crate::BootInfo`]: a small sorted list of page-aligned `[start, end)`
//! physical ranges, from which it has already cut everything it uses itself (see
//! the contract in [`crate::arch`]). [`init`] applies the `mem=` limit, refuses
//! to boot with less than [`MIN_USABLE_MEMORY`], carves the descriptor array
//! (64 bytes per frame from pfn 0 to `max_pfn`) out of the first range large
//! enough, marks every descriptor reserved and then hands each remaining range
//! to the allocator as maximal aligned blocks.
//!
//! Invariants:
//! - A [`MemoryMap`]'s ranges are page-aligned, non-empty, sorted, and neither
//!   overlap nor touch (touching ranges are merged).
//! - [`mem_init`] runs once; frames outside the ranges it frees (holes, the
//!   image, the descriptor array) stay `PG_reserved` for good.

use super::page::{self, Page};
use super::{page_alloc, PAGE_SHIFT, PAGE_SIZE};
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

/// Most ranges a [`MemoryMap`] holds.
pub const MEMORY_MAP_MAX: usize = 32;

/// Least usable RAM the kernel boots with.
pub const MIN_USABLE_MEMORY: u64 = 16 << 20;

/// A physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl MemRange {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Usable RAM: up to [`MEMORY_MAP_MAX`] page-aligned ranges, sorted, merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryMap {
    ranges: [MemRange; MEMORY_MAP_MAX],
    len: usize,
    dropped: u64,
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

fn align_down(a: u64) -> u64 {
    a & !(PAGE_SIZE - 1)
}

/// Rounds up to a page; saturates at the last page boundary.
fn align_up(a: u64) -> u64 {
    a.checked_add(PAGE_SIZE - 1)
        .map_or(align_down(u64::MAX), align_down)
}

impl MemoryMap {
    /// An empty map.
    pub const fn new() -> Self {
        Self {
            ranges: [MemRange { start: 0, end: 0 }; MEMORY_MAP_MAX],
            len: 0,
            dropped: 0,
        }
    }

    /// The ranges, sorted by address.
    pub fn ranges(&self) -> &[MemRange] {
        &self.ranges[..self.len]
    }

    /// Bytes of RAM that did not fit (the smallest ranges are dropped when more
    /// than [`MEMORY_MAP_MAX`] would be needed).
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// Adds usable RAM `[start, end)`, shrunk to whole pages.
    pub fn add(&mut self, start: u64, end: u64) {
        let (mut s, mut e) = (align_up(start), align_down(end));
        if s >= e {
            return;
        }
        let mut i = 0;
        while i < self.len {
            let r = self.ranges[i];
            if r.start <= e && s <= r.end {
                s = s.min(r.start);
                e = e.max(r.end);
                self.ranges.copy_within(i + 1..self.len, i);
                self.len -= 1;
            } else {
                i += 1;
            }
        }
        let new = MemRange { start: s, end: e };
        if self.len == MEMORY_MAP_MAX {
            let (smallest, r) = self
                .ranges()
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|(_, r)| r.len())
                .expect("a full map has ranges");
            if r.len() >= new.len() {
                self.dropped += new.len();
                return;
            }
            self.dropped += r.len();
            self.ranges.copy_within(smallest + 1..self.len, smallest);
            self.len -= 1;
        }
        let at = self.ranges().partition_point(|r| r.start < new.start);
        self.ranges.copy_within(at..self.len, at + 1);
        self.ranges[at] = new;
        self.len += 1;
    }

    /// Removes `[start, end)`, grown to whole pages, from the map.
    pub fn remove(&mut self, start: u64, end: u64) {
        let (s, e) = (align_down(start), align_up(end));
        if s >= e {
            return;
        }
        let old = self.clone();
        *self = Self::new();
        self.dropped = old.dropped;
        for r in old.ranges() {
            if r.end <= s || e <= r.start {
                self.add(r.start, r.end);
            } else {
                self.add(r.start, s);
                self.add(e, r.end);
            }
        }
    }

    /// Total bytes.
    pub fn total_bytes(&self) -> u64 {
        self.ranges().iter().map(MemRange::len).sum()
    }

    /// One past the highest byte, 0 for an empty map.
    pub fn max_end(&self) -> u64 {
        self.ranges().last().map_or(0, |r| r.end)
    }

    /// Whether `addr` is in the map.
    pub fn contains(&self, addr: u64) -> bool {
        self.ranges()
            .iter()
            .any(|r| r.start <= addr && addr < r.end)
    }
}

impl fmt::Display for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{:#x}-{:#x}", r.start, r.end)?;
        }
        Ok(())
    }
}

/// Why the frame allocator could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemInitError {
    /// Less usable RAM than [`MIN_USABLE_MEMORY`].
    TooLittle {
        /// Usable bytes found (after `mem=`).
        usable: u64,
    },
    /// No range can hold the descriptor array.
    NoRoomForMemMap {
        /// Bytes the array needs.
        needed: u64,
    },
    /// [`mem_init`] ran before.
    AlreadyInitialised,
}

impl fmt::Display for MemInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLittle { usable } => write!(
                f,
                "too little memory: {} KiB usable, at least {} MiB needed",
                usable >> 10,
                MIN_USABLE_MEMORY >> 20
            ),
            Self::NoRoomForMemMap { needed } => write!(
                f,
                "no RAM range can hold the frame database ({} KiB)",
                needed >> 10
            ),
            Self::AlreadyInitialised => f.write_str("the frame allocator is set up already"),
        }
    }
}

/// What [`mem_init`] set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInfo {
    /// Usable RAM, after `mem=`, before the descriptor array was carved out.
    pub usable_bytes: u64,
    /// One past the highest pfn.
    pub max_pfn: u64,
    /// Physical address of the descriptor array.
    pub memmap_phys: u64,
    /// Bytes of the descriptor array.
    pub memmap_bytes: u64,
    /// Frames handed to the allocator.
    pub free_pages: usize,
}

/// Applies the `mem=` limit (RAM at and above `limit` is ignored, as Linux's
/// `mem=`) and checks the minimum. Pure: nothing is set up.
pub fn usable_map(map: &MemoryMap, limit: Option<u64>) -> Result<MemoryMap, MemInitError> {
    let mut map = map.clone();
    if let Some(limit) = limit {
        map.remove(limit, u64::MAX);
    }
    // Free lists link pfns as u32: 16 TiB is far beyond any QEMU here.
    map.remove(u64::from(u32::MAX) << PAGE_SHIFT, u64::MAX);
    let usable = map.total_bytes();
    if usable < MIN_USABLE_MEMORY {
        return Err(MemInitError::TooLittle { usable });
    }
    Ok(map)
}

static INITIALISED: AtomicBool = AtomicBool::new(false);
static MEM_INFO: spin::Once<MemInfo> = spin::Once::new();

/// What [`mem_init`] set up, once it has run.
pub fn mem_info() -> Option<MemInfo> {
    MEM_INFO.get().copied()
}

/// Sets up the frame database and the allocator from `map` (once).
pub fn mem_init(map: &MemoryMap, limit: Option<u64>) -> Result<MemInfo, MemInitError> {
    let mut map = usable_map(map, limit)?;
    let usable_bytes = map.total_bytes();
    let max_pfn = map.max_end() >> PAGE_SHIFT;
    let memmap_bytes = align_up(max_pfn * core::mem::size_of::<Page>() as u64);
    let memmap_phys = map
        .ranges()
        .iter()
        .find(|r| r.len() >= memmap_bytes)
        .ok_or(MemInitError::NoRoomForMemMap {
            needed: memmap_bytes,
        })?
        .start;
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return Err(MemInitError::AlreadyInitialised);
    }
    map.remove(memmap_phys, memmap_phys + memmap_bytes);
    let mem_map = page::phys_to_virt(memmap_phys).cast::<Page>();
    for pfn in 0..max_pfn as usize {
        // SAFETY: `[memmap_phys, + memmap_bytes)` is usable RAM that the backend
        // gave us and that we just took out of the map, so nothing else uses
        // it; it is mapped 1:1, page-aligned (so aligned for `Page`) and large
        // enough for `max_pfn` descriptors.
        unsafe { mem_map.add(pfn).write(Page::reserved()) };
    }
    // SAFETY: the array is initialised, never freed or moved, and used only as
    // the frame database from now on; `INITIALISED` makes this the only call.
    unsafe { page::set_mem_map(mem_map, max_pfn) };
    for r in map.ranges() {
        page_alloc::free_boot_range(r.start >> PAGE_SHIFT, r.end >> PAGE_SHIFT);
    }
    Ok(*MEM_INFO.call_once(|| MemInfo {
        usable_bytes,
        max_pfn,
        memmap_phys,
        memmap_bytes,
        free_pages: page_alloc::nr_free_pages(),
    }))
}

/// Boot step of the generic kernel: registers the architecture with the
/// allocator, sets up memory from the backend's map and prints what it found.
pub fn init<A: super::arch::Mmu>(
    map: &MemoryMap,
    limit: Option<u64>,
) -> Result<MemInfo, MemInitError> {
    page_alloc::register_arch::<A>();
    crate::kprintln!("# memory_map={map}");
    let info = mem_init(map, limit)?;
    crate::kprintln!(
        "# ram_mib={} free_frames={} max_pfn={:#x} memmap_kib={}{}",
        info.usable_bytes >> 20,
        info.free_pages,
        info.max_pfn,
        info.memmap_bytes >> 10,
        if map.dropped_bytes() != 0 {
            alloc::format!(" dropped_kib={}", map.dropped_bytes() >> 10)
        } else {
            alloc::string::String::new()
        }
    );
    Ok(info)
}

/// A host buffer as physical memory, for the unit tests of the frame code.
#[cfg(test)]
pub(crate) mod test_mem {
    use super::*;
    use std::sync::{Mutex, MutexGuard, Once};

    /// "Physical" RAM of the tests: `[1 MiB, 32 MiB)`.
    pub const TEST_RAM: u64 = 32 << 20;

    /// Sets up the frame database over a leaked host buffer (once per test
    /// binary) and serialises the tests that use the global allocator.
    pub fn setup() -> MutexGuard<'static, ()> {
        static INIT: Once = Once::new();
        static LOCK: Mutex<()> = Mutex::new(());
        INIT.call_once(|| {
            let align = 4 << 20;
            let buf = Box::leak(vec![0u8; TEST_RAM as usize + align].into_boxed_slice());
            let base = (buf.as_ptr() as usize).next_multiple_of(align);
            page::PHYS_OFFSET.store(base, Ordering::Release);
            let mut map = MemoryMap::new();
            map.add(1 << 20, TEST_RAM);
            let info = mem_init(&map, None).unwrap();
            assert_eq!(info.max_pfn, TEST_RAM >> PAGE_SHIFT);
        });
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ranges: &[(u64, u64)]) -> MemoryMap {
        let mut m = MemoryMap::new();
        for &(s, e) in ranges {
            m.add(s, e);
        }
        m
    }

    fn pairs(m: &MemoryMap) -> Vec<(u64, u64)> {
        m.ranges().iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn add_aligns_sorts_and_merges() {
        let m = map(&[
            (0x5000, 0x8000),
            (0x1001, 0x3fff),
            (0x3000, 0x5000),
            (0x9000, 0x9800),
        ]);
        // 0x1001 rounds up to 0x2000, 0x3fff down to 0x3000; touching ranges merge;
        // the sub-page range vanishes.
        assert_eq!(pairs(&m), vec![(0x2000, 0x8000)]);
        assert_eq!(m.total_bytes(), 0x6000);
        assert_eq!(m.max_end(), 0x8000);
        assert!(m.contains(0x7fff) && !m.contains(0x8000));
    }

    #[test]
    fn remove_splits_and_trims() {
        let mut m = map(&[(0x10_0000, 0x100_0000)]);
        m.remove(0x40_0000, 0x40_1001);
        assert_eq!(
            pairs(&m),
            vec![(0x10_0000, 0x40_0000), (0x40_2000, 0x100_0000)]
        );
        m.remove(0, 0x20_0000);
        m.remove(0x80_0000, u64::MAX);
        assert_eq!(
            pairs(&m),
            vec![(0x20_0000, 0x40_0000), (0x40_2000, 0x80_0000)]
        );
    }

    #[test]
    fn a_full_map_drops_the_smallest_range() {
        let mut m = MemoryMap::new();
        for i in 0..MEMORY_MAP_MAX as u64 {
            m.add(i * 0x10_0000, i * 0x10_0000 + 0x2000 + i * 0x1000);
        }
        assert_eq!(m.ranges().len(), MEMORY_MAP_MAX);
        m.add(0x1000_0000, 0x1010_0000);
        assert_eq!(m.ranges().len(), MEMORY_MAP_MAX);
        assert_eq!(m.dropped_bytes(), 0x2000, "the 8 KiB range went");
        assert!(m.contains(0x1000_0000));
        m.add(0x2000_0000, 0x2000_1000);
        assert_eq!(
            m.dropped_bytes(),
            0x3000,
            "a new range smaller than all is dropped"
        );
    }

    #[test]
    fn too_little_memory_is_refused() {
        let m = map(&[(0x10_0000, 0x80_0000)]);
        assert_eq!(
            usable_map(&m, None),
            Err(MemInitError::TooLittle { usable: 0x70_0000 })
        );
        let m = map(&[(0x10_0000, 0x1000_0000)]);
        assert!(usable_map(&m, None).is_ok());
        let err = usable_map(&m, Some(8 << 20)).unwrap_err();
        assert_eq!(err, MemInitError::TooLittle { usable: 7 << 20 });
        assert!(err
            .to_string()
            .starts_with("too little memory: 7168 KiB usable"));
    }

    #[test]
    fn frame_database_covers_ram_and_reserves_the_rest() {
        let _m = test_mem::setup();
        assert_eq!(page::max_pfn(), test_mem::TEST_RAM >> PAGE_SHIFT);
        let low = page::pfn_to_page(0x10);
        assert!(page::PageReserved(low), "below 1 MiB is not RAM here");
        assert_eq!(page::page_ref_count(low), 1);
        // The descriptor array sits at the start of RAM, 512 KiB for 8192 frames,
        // and is reserved too.
        let first = page::pfn_to_page(0x100);
        assert!(page::PageReserved(first));
        assert!(!page::PageReserved(page::pfn_to_page(0x180)));
        assert_eq!(
            page_alloc::managed_pages() as u64,
            (test_mem::TEST_RAM - (1 << 20) - (512 << 10)) >> PAGE_SHIFT
        );
        assert_eq!(
            mem_init(&MemoryMap::new(), None).unwrap_err(),
            MemInitError::TooLittle { usable: 0 }
        );
    }
}
