//! The storage-key format: the bits of a frame's key and the decoding of what
//! ISKE and RRBE return (the instructions themselves are in the binary's
//! `skey` module).
//!
//! Design. z/Architecture keeps a 7-bit storage key for every 4 KiB block of
//! real storage, not per mapping: four access-control bits, a fetch-protection
//! bit, the reference bit R (set by any access) and the change bit C (set by a
//! store), in bits 56-62 of a register, so as a byte `ACC ACC ACC ACC F R C 0`.
//! Linux up to 3.8 tracked dirtiness of s390 pages with C
//! (`page_test_and_clear_dirty`); 3.9 moved to software dirty bits in the PTE
//! (abf09bed3cce). Both are what the catalogue's storage-key rows compare.
//!
//! RRBE reports the old R and C in the condition code: 0 (R=0, C=0), 1 (R=0,
//! C=1), 2 (R=1, C=0), 3 (R=1, C=1): bit 1 of the code is R and bit 0 is C.
//!
//! Invariant: the kernel runs with PSW key 0, so the access-control and
//! fetch-protection bits never deny an access; only R and C carry meaning here.

/// The key layout (`PAGE_ACC_BITS`, `PAGE_FP_BIT`, `PAGE_REFERENCED`,
/// `PAGE_CHANGED`, `KEY_MASK`, `PAGE_DEFAULT_KEY`) and the bit edits on it,
/// defined once, in the generic contract.
pub use quiesce_kernel::mm::arch::{
    key_clear_changed, key_clear_referenced, KEY_MASK, PAGE_ACC_BITS, PAGE_CHANGED,
    PAGE_DEFAULT_KEY, PAGE_FP_BIT, PAGE_REFERENCED,
};

/// The real address of the 4 KiB block of frame `pfn` (the operand of SSKE,
/// ISKE and RRBE).
pub const fn pfn_to_real(pfn: u64) -> u64 {
    pfn << crate::pgtable::PAGE_SHIFT
}

/// The key in the register ISKE wrote: bits 56-62 (bit 63 is zero, bits 0-55
/// are whatever the register held before).
pub const fn iske_key(reg: u64) -> u8 {
    (reg as u8) & KEY_MASK
}

/// The condition code in the register IPM wrote (bits 34-35, i.e. bits 28-29
/// of the low word).
pub const fn ipm_cc(reg: u64) -> u8 {
    ((reg >> 28) & 3) as u8
}

/// RRBE's condition code as the old `(R, C)`.
pub const fn rrbe_old_rc(cc: u8) -> (bool, bool) {
    (cc & 2 != 0, cc & 1 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_linux_s390() {
        assert_eq!(
            PAGE_ACC_BITS | PAGE_FP_BIT | PAGE_REFERENCED | PAGE_CHANGED,
            KEY_MASK
        );
        assert_eq!(PAGE_ACC_BITS & PAGE_FP_BIT, 0);
        assert_eq!(PAGE_DEFAULT_KEY & (PAGE_REFERENCED | PAGE_CHANGED), 0);
        assert_eq!(pfn_to_real(0x1234), 0x123_4000);
    }

    #[test]
    fn rrbe_condition_codes() {
        assert_eq!(rrbe_old_rc(0), (false, false));
        assert_eq!(rrbe_old_rc(1), (false, true));
        assert_eq!(rrbe_old_rc(2), (true, false));
        assert_eq!(rrbe_old_rc(3), (true, true));
        // The code as the key bits: cc == (R|C) >> 1.
        for key in (0..=0xffu8).map(|k| k & KEY_MASK) {
            let cc = (key & (PAGE_REFERENCED | PAGE_CHANGED)) >> 1;
            assert_eq!(
                rrbe_old_rc(cc),
                (key & PAGE_REFERENCED != 0, key & PAGE_CHANGED != 0)
            );
        }
    }

    #[test]
    fn ipm_and_iske_registers() {
        // IPM: condition code in bits 34-35, program mask in 36-39, the
        // high word untouched.
        assert_eq!(ipm_cc(0xdead_beef_0000_0000 | (2 << 28) | (0xf << 24)), 2);
        assert_eq!(ipm_cc(3 << 28), 3);
        assert_eq!(ipm_cc(0), 0);
        // ISKE: bits 0-55 are left as they were; bit 63 is zero.
        assert_eq!(iske_key(0xffff_ffff_ffff_ff06), 0x06);
        assert_eq!(iske_key(0x0000_0000_0000_00f7), 0xf6);
    }

    #[test]
    fn clearing_keeps_the_other_bits() {
        let key = PAGE_ACC_BITS | PAGE_FP_BIT | PAGE_REFERENCED | PAGE_CHANGED;
        assert_eq!(
            key_clear_changed(key),
            PAGE_ACC_BITS | PAGE_FP_BIT | PAGE_REFERENCED
        );
        assert_eq!(
            key_clear_referenced(key),
            PAGE_ACC_BITS | PAGE_FP_BIT | PAGE_CHANGED
        );
        assert_eq!(key_clear_changed(0x04), 0x04);
        assert_eq!(key_clear_changed(0x06), 0x04);
        assert_eq!(key_clear_referenced(0x06), 0x02);
    }
}
