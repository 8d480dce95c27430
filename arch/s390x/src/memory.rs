//! Physical memory discovery: the RAM ranges handed to the generic kernel's
//! frame allocator (`BootInfo::memory`).
//!
//! Design: QEMU's s390x storage is one contiguous range from absolute 0; its
//! size comes from SCLP READ SCP INFO ([`sclp::read_storage_size`]). What the
//! kernel uses itself lies below the end of the image and is cut off whole:
//! CPU 0's lowcore (0..0x2000), the command line (0x8000..0x9000), the area
//! QEMU writes for Linux kernels at 0x10000, and the image from 0x20000 with
//! its .bss (heap, boot stacks, SCCBs; the secondaries' lowcores and stacks
//! come from the heap).
//!
//! Invariant: the kernel's 1:1 map covers all RAM ([`crate::mmu`]), so the
//! ranges are addressable at their physical addresses; the kernel's own page
//! tables, right after the image, are cut off too.

use crate::sclp;
use quiesce_kernel::mm::memmap::MemoryMap;

extern "C" {
    /// End of the kernel image, .bss included (linker.ld).
    static __image_end: u8;
}

/// Usable RAM: `[__image_end, storage size)`, or an empty map (the boot then
/// stops for lack of memory) if the SCLP does not report the storage size.
pub fn detect() -> MemoryMap {
    let mut map = MemoryMap::new();
    if let Some(size) = sclp::read_storage_size() {
        map.add(0, size);
        map.remove(0, (&raw const __image_end) as u64);
        // The kernel's page tables, right after the image.
        map.remove(0, crate::mmu::boot_tables_end());
    }
    map
}
