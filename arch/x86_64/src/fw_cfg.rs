//! QEMU's firmware configuration device, legacy I/O interface (ports 0x510
//! selector, 0x511 data; QEMU `docs/specs/fw_cfg.rst`).
//!
//! Used only to read the CPU count when no ACPI MADT is found. The legacy
//! interface is I/O ports, not MMIO (that is the DMA interface, which this
//! kernel does not use), so it uses the `x86_64` crate's `Port`, not the
//! `volatile` crate.
//!
//! Invariants: only the boot CPU uses the device, before other CPUs start, so the
//! select-then-read sequence is never interleaved.

use x86_64::instructions::port::Port;

const FW_CFG_PORT_SEL: u16 = 0x510;
const FW_CFG_PORT_DATA: u16 = 0x511;
const FW_CFG_SIGNATURE: u16 = 0x00;
const FW_CFG_NB_CPUS: u16 = 0x05;

/// Selects item `key` and reads its first `N` bytes.
fn read<const N: usize>(key: u16) -> [u8; N] {
    let mut out = [0u8; N];
    // SAFETY: 0x510/0x511 are QEMU's fw_cfg ports, used by no other code; selecting
    // an item and reading its bytes touches no memory. On a machine without
    // fw_cfg the reads return 0xff, which the signature check below rejects.
    unsafe {
        Port::<u16>::new(FW_CFG_PORT_SEL).write(key);
        let mut data = Port::<u8>::new(FW_CFG_PORT_DATA);
        for b in &mut out {
            *b = data.read();
        }
    }
    out
}

/// Number of boot CPUs QEMU was started with (`-smp N`), if fw_cfg exists.
pub fn nb_cpus() -> Option<usize> {
    if read::<4>(FW_CFG_SIGNATURE) != *b"QEMU" {
        return None;
    }
    Some(usize::from(u16::from_le_bytes(read::<2>(FW_CFG_NB_CPUS))))
}
