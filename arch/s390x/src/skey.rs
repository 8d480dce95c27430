//! Storage-key instructions: SSKE, ISKE and RRBE, and the `Mmu` storage-key
//! items built on them (Linux 3.8 `page_set_storage_key`,
//! `page_get_storage_key`, `page_reset_referenced`).
//!
//! Design. A storage key belongs to a 4 KiB block of real storage, so every
//! mapping of a frame, on every CPU, sets the same reference (R) and change (C)
//! bits; the key format is in [`quiesce_arch_s390x::storage_key`]. The
//! operands are real addresses (`pfn << 12`): the kernel maps RAM 1:1, and the
//! frame allocator never hands out frames 0 and 1, the only ones prefixing
//! would redirect.
//!
//! Coherence with the TLB. R and C are set when a translation is formed, not
//! on every access: a CPU that still holds a writable translation for a frame
//! stores without setting C again. Hardware keeps this right itself; QEMU
//! (TCG) sets R on every TLB fill and C on a store fill, fills for a load with
//! C clear leave the entry read-only (so the first store refills and sets C),
//! and SSKE and RRBE purge the TLB of every vCPU synchronously, except the
//! issuing vCPU's own, which takes effect at the end of its translated block
//! (PLATFORM.md). So SSKE and RRBE here are followed by a taken branch that
//! ends the block: when they return, no CPU, the caller included, holds a
//! translation formed under the old key, and the next store anywhere sets C
//! again. No PTLB is needed (Linux needs none on hardware either).
//!
//! The branch must skip an instruction: QEMU translates a branch to the very
//! next instruction (`j 0f; 0:`) as a no-op that does not end the block. With
//! such a branch the `sske_and_rrbe_reset` self-test failed: the store after
//! an SSKE that cleared C went through the CPU's old writable TLB entry and
//! left C clear (key 0x04), and the load after RRBE left R clear.
//!
//! Invariant: the kernel runs with PSW key 0, so no key value denies an access
//! (and QEMU does not emulate key-controlled or fetch protection); changing a
//! key changes only what R and C report, never whether memory can be used.
//! The key update is a read-modify-write that is not atomic across CPUs in
//! QEMU: a store on another CPU during an SSKE or RRBE can be lost, as on
//! hardware between ISKE and SSKE.

use crate::tlb::end_translated_block;
use quiesce_arch_s390x::storage_key::{self as sk, pfn_to_real};

/// `SSKE`: sets the storage key of the 4 KiB block at real address `addr` to
/// `key` (bit 0x01 ignored), then makes the calling CPU drop its translations
/// formed under the old key (see module docs).
pub fn sske(addr: u64, key: u8) {
    // SAFETY: SSKE is privileged (supervisor state) and changes only the
    // block's storage key and, in QEMU, TLB contents. With PSW key 0 no key
    // denies an access, so no memory becomes unusable (module invariant). An
    // address outside RAM would raise an addressing exception, not corrupt
    // anything. The branch over the never-executed `nopr` ends the translated
    // block, so QEMU's purge of this vCPU's TLB is done before the next
    // instruction (see module docs); it touches no register. No `nomem`:
    // accesses must not move across the key change, which decides R and C.
    unsafe {
        core::arch::asm!(
            "sske {key}, {addr}",
            end_translated_block!(),
            key = in(reg) u64::from(key),
            addr = in(reg_addr) addr,
            options(nostack, preserves_flags),
        );
    }
}

/// `ISKE`: the storage key of the 4 KiB block at real address `addr`.
pub fn iske(addr: u64) -> u8 {
    let mut reg: u64 = 0;
    // SAFETY: ISKE is privileged and only reads the key into `reg`'s low byte.
    // Not `nomem`/`pure`: the key changes with every access, so the read must
    // stay where it is relative to loads and stores.
    unsafe {
        core::arch::asm!(
            "iske {reg}, {addr}",
            reg = inout(reg) reg,
            addr = in(reg_addr) addr,
            options(nostack, preserves_flags),
        );
    }
    sk::iske_key(reg)
}

/// `RRBE`: clears the reference bit of the block at real address `addr` and
/// returns its old `(R, C)`; C is unchanged. Followed by a taken branch, like
/// [`sske`], so the next access on this CPU sets R again.
pub fn rrbe(addr: u64) -> (bool, bool) {
    let mut cc: u64;
    // SAFETY: RRBE is privileged and changes only the block's reference bit
    // (and TLB contents); IPM reads the condition code it set. The branch ends
    // the translated block (see `sske`). No `preserves_flags`: it sets the
    // condition code.
    unsafe {
        core::arch::asm!(
            "rrbe %r0, {addr}",
            "ipm {cc}",
            end_translated_block!(),
            addr = in(reg_addr) addr,
            cc = out(reg) cc,
            options(nostack),
        );
    }
    sk::rrbe_old_rc(sk::ipm_cc(cc))
}

/// `StorageKeys::set_storage_key` for `S390x`.
pub fn set_storage_key(pfn: u64, key: u8) {
    sske(pfn_to_real(pfn), key);
}

/// `StorageKeys::get_storage_key` for `S390x`.
pub fn get_storage_key(pfn: u64) -> u8 {
    iske(pfn_to_real(pfn))
}

/// `StorageKeys::reset_reference_bit` for `S390x`.
pub fn reset_reference_bit(pfn: u64) -> (bool, bool) {
    rrbe(pfn_to_real(pfn))
}
