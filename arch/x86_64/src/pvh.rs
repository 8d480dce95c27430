//! The PVH boot protocol's start-of-day data (Xen `hvm_start_info`, Linux:
//! `arch/x86/platform/pvh/enlighten.c`).
//!
//! Design: head.S passes the physical address of `hvm_start_info`; [`parse`]
//! checks its magic, copies the command line into the kernel image, keeps the
//! RSDP address, checks in the memory map that the SMP trampoline's page is
//! RAM and keeps the map's RAM ranges for the frame allocator
//! ([`memory_map`]). Everything the firmware left in low memory is read once, here,
//! before the SMP trampoline reuses low memory.
//!
//! Invariants: reads happen through the identity map, on the boot CPU, while no
//! other CPU runs; nothing writes firmware memory.

use quiesce_kernel::mm::memmap::MemoryMap;

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Longest command line kept (the rest is cut off, which the generic parser then
/// sees as a different command line rather than silently ignoring a key).
const CMDLINE_MAX: usize = 4096;

/// Layout of `struct hvm_start_info` (version 0 and 1 fields).
#[repr(C)]
#[derive(Clone, Copy)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// E820 type of usable RAM.
const E820_RAM: u32 = 1;

/// What the kernel keeps from PVH.
pub struct PvhBoot {
    /// The command line, copied into the kernel image (empty when absent).
    pub cmdline: &'static str,
    /// Physical address of the ACPI RSDP, 0 when absent.
    pub rsdp: u64,
    /// Whether the memory map lists the SMP trampoline's page as RAM (true
    /// without a memory map: PVH version 0).
    pub trampoline_is_ram: bool,
    /// RAM for the frame allocator ([`memory_map`]).
    pub memory: MemoryMap,
}

struct CmdlineCopy {
    buf: [u8; CMDLINE_MAX],
    len: usize,
}

static CMDLINE: spin::Once<CmdlineCopy> = spin::Once::new();
/// `version` and `memmap_entries` of the start info, for the diagnostics.
static SEEN: spin::Once<(u32, u32)> = spin::Once::new();

/// Prints what PVH handed over.
pub fn print_diagnostics() {
    if let Some((version, entries)) = SEEN.get() {
        quiesce_kernel::kprintln!(
            "# pvh_start_info_version={version} pvh_memmap_entries={entries}"
        );
    }
}

/// Reads a `T` from firmware memory at `paddr`.
///
/// # Safety
/// `[paddr, paddr + size_of::<T>())` must be non-null ordinary memory (RAM or
/// ROM, not MMIO) below 4 GiB that nothing writes meanwhile, and every bit
/// pattern must be a valid `T`.
pub unsafe fn read_phys<T: Copy>(paddr: u64) -> T {
    // SAFETY: the identity map covers the low 4 GiB, and the caller guarantees the
    // rest; the read is unaligned-safe.
    unsafe { core::ptr::read_unaligned(paddr as usize as *const T) }
}

/// Reads the PVH start info at `paddr` and copies what the kernel needs.
pub fn parse(paddr: u64) -> PvhBoot {
    assert!(
        paddr != 0 && paddr < (1 << 32),
        "PVH: bad hvm_start_info address {paddr:#x}"
    );
    // SAFETY: the PVH loader passes the address of its `hvm_start_info` in %ebx
    // (head.S kept it); it is RAM below 4 GiB that nothing else writes, and the
    // struct is plain integers.
    let info: HvmStartInfo = unsafe { read_phys(paddr) };
    assert!(
        info.magic == XEN_HVM_START_MAGIC_VALUE,
        "PVH: bad hvm_start_info magic {:#x} at {paddr:#x}",
        info.magic
    );
    let copy = CMDLINE.call_once(|| {
        let mut copy = CmdlineCopy {
            buf: [0; CMDLINE_MAX],
            len: 0,
        };
        if info.cmdline_paddr != 0 {
            while copy.len < CMDLINE_MAX {
                // SAFETY: `cmdline_paddr` points at the NUL-terminated command line
                // the loader placed in RAM below 4 GiB; the loop stops at the NUL,
                // so it reads only bytes of that string.
                let b: u8 = unsafe { read_phys(info.cmdline_paddr + copy.len as u64) };
                if b == 0 {
                    break;
                }
                copy.buf[copy.len] = b;
                copy.len += 1;
            }
        }
        copy
    });
    let cmdline = match core::str::from_utf8(&copy.buf[..copy.len]) {
        Ok(s) => s.trim(),
        // Not text: hand over something the generic parser rejects, so the run fails.
        Err(_) => "<non-UTF-8-command-line>",
    };
    SEEN.call_once(|| (info.version, info.memmap_entries));
    let trampoline = crate::smpboot::TRAMPOLINE_BASE..crate::smpboot::TRAMPOLINE_BASE + 4096;
    let trampoline_is_ram = info.version < 1
        || info.memmap_paddr == 0
        || (0..u64::from(info.memmap_entries)).any(|i| {
            let at = info.memmap_paddr + i * core::mem::size_of::<HvmMemmapEntry>() as u64;
            // SAFETY: the loader's memory map of `memmap_entries` entries at
            // `memmap_paddr` (version 1 and later) is RAM below 4 GiB that nothing
            // writes; entries are plain integers.
            let e: HvmMemmapEntry = unsafe { read_phys(at) };
            e.kind == E820_RAM && e.addr <= trampoline.start && trampoline.end <= e.addr + e.size
        });
    PvhBoot {
        cmdline,
        rsdp: info.rsdp_paddr,
        trampoline_is_ram,
        memory: memory_map(&info),
    }
}

/// Everything below 1 MiB stays with the firmware, the boot data and the SMP
/// trampoline ([`crate::smpboot::TRAMPOLINE_BASE`]).
const LOW_MEMORY_END: u64 = 0x10_0000;
/// End of the boot identity map (head.S): RAM above it is not addressable.
const IDENTITY_MAP_END: u64 = 1 << 32;

extern "C" {
    /// First byte of the kernel image (kernel.ld).
    static __kernel_start: u8;
    /// End of the kernel image, .bss included (kernel.ld).
    static __kernel_end: u8;
}

/// The e820 RAM ranges (type 1) of the PVH memory map, without what the
/// generic kernel must not hand out (the contract of `BootInfo::memory`): the
/// first MiB (firmware data, boot data, the SMP trampoline), the kernel image
/// `[__kernel_start, __kernel_end)` (its .bss holds the boot page tables, the
/// boot stacks and the heap) and RAM above the 4 GiB identity map. PVH version
/// 0 has no memory map: the result is empty and the boot stops for lack of
/// memory.
fn memory_map(info: &HvmStartInfo) -> MemoryMap {
    let mut map = MemoryMap::new();
    if info.version < 1 || info.memmap_paddr == 0 {
        return map;
    }
    for i in 0..u64::from(info.memmap_entries) {
        let at = info.memmap_paddr + i * core::mem::size_of::<HvmMemmapEntry>() as u64;
        // SAFETY: the loader's memory map of `memmap_entries` entries at
        // `memmap_paddr` (version 1 and later) is RAM below 4 GiB that nothing
        // writes; entries are plain integers.
        let e: HvmMemmapEntry = unsafe { read_phys(at) };
        if e.kind == E820_RAM {
            map.add(e.addr, e.addr.saturating_add(e.size));
        }
    }
    map.remove(0, LOW_MEMORY_END);
    map.remove(IDENTITY_MAP_END, u64::MAX);
    let image = (&raw const __kernel_start) as u64..(&raw const __kernel_end) as u64;
    map.remove(image.start, image.end);
    map
}
