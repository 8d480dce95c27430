//! Just enough ACPI to enumerate CPUs: find the RSDP, walk the RSDT/XSDT to the
//! MADT and list the enabled local APICs (Linux: `drivers/acpi/tables.c`,
//! `arch/x86/kernel/acpi/boot.c`).
//!
//! Design: every table is checksum-verified before it is used; all reads go
//! through [`read_phys`] on the identity map. No heap: results go into a
//! fixed array, because enumeration runs before the generic kernel sets up the
//! heap.
//!
//! Invariants: the firmware's tables are in RAM below 4 GiB and never change
//! (checked where possible: addresses, lengths, checksums).

use crate::pvh::read_phys;
use quiesce_kernel::NR_CPUS;

const ACPI_HEADER_LEN: u64 = 36;
const MADT_TYPE_LOCAL_APIC: u8 = 0;
const MADT_TYPE_LOCAL_X2APIC: u8 = 9;
const MADT_ENABLED: u32 = 1;
/// Largest table accepted (sanity bound on firmware-supplied lengths).
const MAX_TABLE_LEN: u64 = 1 << 20;

/// Reads `N` bytes of firmware memory.
fn read_bytes<const N: usize>(paddr: u64) -> [u8; N] {
    assert!(
        paddr != 0 && paddr + N as u64 <= 1 << 32,
        "ACPI: table address {paddr:#x} out of reach"
    );
    // SAFETY: the address is non-null and below 4 GiB (checked above); callers
    // pass addresses inside the BIOS ROM area or inside ACPI tables whose length
    // and checksum they have checked, which are RAM/ROM that nothing writes. Any
    // byte pattern is a valid `[u8; N]`.
    unsafe { read_phys(paddr) }
}

fn read_u8(paddr: u64) -> u8 {
    read_bytes::<1>(paddr)[0]
}

fn read_u32(paddr: u64) -> u32 {
    u32::from_le_bytes(read_bytes(paddr))
}

fn read_u64(paddr: u64) -> u64 {
    u64::from_le_bytes(read_bytes(paddr))
}

/// Whether the `len` bytes at `paddr` sum to 0 (mod 256).
fn checksum_ok(paddr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(read_u8(paddr + i))) == 0
}

fn rsdp_valid(paddr: u64) -> bool {
    read_bytes::<8>(paddr) == *b"RSD PTR " && checksum_ok(paddr, 20)
}

/// Finds the RSDP: the PVH loader's pointer if valid, else the BIOS search (first
/// KiB of the EBDA, then 0xe0000..0x100000 on 16-byte boundaries).
pub fn find_rsdp(hint: u64) -> Option<u64> {
    if hint != 0 && hint < 1 << 32 && rsdp_valid(hint) {
        return Some(hint);
    }
    let ebda = u64::from(u16::from_le_bytes(read_bytes(0x40e))) << 4;
    let ebda_range = if (0x80000..0xa0000).contains(&ebda) {
        ebda..ebda + 1024
    } else {
        0..0
    };
    ebda_range
        .chain(0xe0000..0x100000)
        .step_by(16)
        .find(|&p| rsdp_valid(p))
}

/// Returns the address of the table with `signature`, checksum-verified.
fn find_table(rsdp: u64, signature: &[u8; 4]) -> Option<u64> {
    let revision = read_u8(rsdp + 15);
    let (root, entry_size) = if revision >= 2 && read_u64(rsdp + 24) != 0 {
        (read_u64(rsdp + 24), 8)
    } else {
        (u64::from(read_u32(rsdp + 16)), 4)
    };
    let root_len = u64::from(read_u32(root + 4));
    if !(ACPI_HEADER_LEN..=MAX_TABLE_LEN).contains(&root_len) || !checksum_ok(root, root_len) {
        return None;
    }
    (0..(root_len - ACPI_HEADER_LEN) / entry_size)
        .map(|i| {
            let at = root + ACPI_HEADER_LEN + i * entry_size;
            if entry_size == 8 {
                read_u64(at)
            } else {
                u64::from(read_u32(at))
            }
        })
        .filter(|&t| t != 0 && t < 1 << 32)
        .find(|&t| {
            let len = u64::from(read_u32(t + 4));
            read_bytes::<4>(t) == *signature
                && (ACPI_HEADER_LEN..=MAX_TABLE_LEN).contains(&len)
                && checksum_ok(t, len)
        })
}

/// Local APIC IDs of the enabled processors in the MADT, in table order.
pub struct MadtCpus {
    /// The first [`NR_CPUS`] IDs.
    pub apic_ids: [u32; NR_CPUS],
    /// Number of enabled processors (may exceed [`NR_CPUS`]).
    pub count: usize,
}

/// Lists the enabled processors of the MADT ("APIC" table).
pub fn madt_cpus(rsdp: u64) -> Option<MadtCpus> {
    let madt = find_table(rsdp, b"APIC")?;
    let len = u64::from(read_u32(madt + 4));
    let mut cpus = MadtCpus {
        apic_ids: [0; NR_CPUS],
        count: 0,
    };
    // Entries follow the header and the local APIC address and flags words.
    let mut at = madt + ACPI_HEADER_LEN + 8;
    while at + 2 <= madt + len {
        let (kind, entry_len) = (read_u8(at), u64::from(read_u8(at + 1)));
        if entry_len < 2 || at + entry_len > madt + len {
            break;
        }
        let found = match kind {
            MADT_TYPE_LOCAL_APIC if entry_len >= 8 => {
                Some((u32::from(read_u8(at + 3)), read_u32(at + 4)))
            }
            MADT_TYPE_LOCAL_X2APIC if entry_len >= 16 => Some((read_u32(at + 4), read_u32(at + 8))),
            _ => None,
        };
        if let Some((apic_id, flags)) = found {
            if flags & MADT_ENABLED != 0 {
                if cpus.count < NR_CPUS {
                    cpus.apic_ids[cpus.count] = apic_id;
                }
                cpus.count += 1;
            }
        }
        at += entry_len;
    }
    Some(cpus)
}
