//! The memory model: frames, page tables, address spaces and faults.
//!
//! Addresses: RAM is mapped 1:1 in the kernel's address space on both backends,
//! so a frame's physical address is also where the kernel reads and writes it.
//! Task mappings live at and above [`arch::Mmu::TASK_BASE`], clear of that map.

pub mod arch;
pub mod dirty;
#[cfg(test)]
pub mod emul;
pub mod fault;
pub mod filemap;
pub mod frag;
pub mod gup;
pub mod huge_memory;
pub mod khugepaged;
pub mod knobs;
pub mod memmap;
pub mod memory;
// `mm::mm`: the address space (`struct mm_struct`) inside the memory model.
#[allow(clippy::module_inception)]
pub mod mm;
pub mod mmu_gather;
pub mod page;
pub mod page_alloc;
pub mod pfn_scanner;
pub mod pgtable;
pub mod rmap;
pub(crate) mod selftest;
pub mod swap_state;
pub mod tlbflush;
pub mod xarray;

/// Size of a base page.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
