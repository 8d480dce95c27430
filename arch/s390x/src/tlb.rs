//! TLB and ASCE instructions: IPTE, IDTE, PTLB and the loads of control
//! register 1 (the primary ASCE).
//!
//! Design: on s390x the architecture, not software, keeps TLBs coherent. A
//! valid PTE is changed only through an instruction that invalidates it and
//! purges it from every CPU's TLB as one operation (IPTE; IDTE for a whole
//! address space; CSP(G) for a compare-and-swap with purge); no IPI is
//! involved, so a CPU with interruptions disabled does not delay it. PTLB
//! purges only the calling CPU's TLB. Linux's rule, kept here: "invalidate with
//! IPTE, then store" ([`crate::mmu`]).
//!
//! Two families of these instructions are available as flush strategies:
//! IPTE/IDTE (the default), and CSP/CSPG with purge, which Linux used for
//! PTEs and segment entries on machines without IDTE and for
//! `__tlb_flush_global`.
//!
//! QEMU (TCG) details the helpers account for (PLATFORM.md): IPTE and IDTE
//! purge the other vCPUs synchronously, but the issuing vCPU's own purge takes
//! effect at the end of its translated block, so each helper ends that block
//! with a taken branch; IPTE locates the TLB entry by the virtual address in
//! R2, which must therefore be the exact address the PTE maps; LCTLG purges the
//! loading vCPU's TLB (QEMU's TLB is not tagged by ASCE).
//!
//! Invariant: the kernel runs in primary-space mode only; control register 1
//! holds the ASCE every kernel access translates through (the kernel's own,
//! or a task mm's, which shares the kernel's 1:1 map).

use crate::ctlreg::{local_ctl_load, local_ctl_store};

/// The assembly that ends QEMU's translated block after an instruction that
/// purges TLBs: a taken branch over one never-executed `nopr`, so the issuing
/// vCPU's own purge is done before the next instruction (see module docs). A
/// branch to the very next instruction (`j 0f; 0:`) is a no-op to QEMU and does
/// not end the block (see skey.rs). It touches no register and no condition
/// code. Used as the last template string of an `asm!`.
macro_rules! end_translated_block {
    () => {
        "j 0f\n nopr %r7\n 0:"
    };
}
pub(crate) use end_translated_block;

/// IDTE R2 bit 52: clear the TLB entries formed through the ASCE in R3 (no
/// table entry is invalidated). Linux `IDTE_PTOA`.
const IDTE_PTOA: u64 = 0x800;

/// `IPTE`: invalidates the PTE at `ptep`, which maps `addr`, and purges it from
/// the TLB of every CPU. When this returns, no CPU translates `addr` through
/// the old entry any more. The entry keeps its other bits with the invalid bit
/// set; the caller then stores the value it wants.
///
/// # Safety
/// 1. `ptep` is an entry of a live page table (2 KiB aligned: the hardware takes
///    the table origin from `ptep` and the index from `addr`) and `addr` is the
///    exact virtual address that entry maps.
/// 2. The caller serialises changes of the entry (the PTL): IPTE sets the
///    invalid bit with a read-modify-write that a concurrent store would undo.
#[inline]
pub unsafe fn ipte(ptep: *mut u64, addr: u64) {
    // SAFETY: IPTE is privileged (supervisor state). Per the contract, R1 is the
    // page table (bits 0-52 of `ptep`) and R2 the address whose PTE it
    // invalidates, so it changes only that entry, which the caller owns under
    // its lock, and TLB contents. The branch ends QEMU's translated block so the
    // local purge is done before the next instruction (see module docs).
    // No `nomem`: the entry in memory changes.
    unsafe {
        core::arch::asm!(
            "ipte {pto}, {addr}",
            end_translated_block!(),
            pto = in(reg_addr) ptep as u64,
            addr = in(reg_addr) addr,
            options(nostack, preserves_flags),
        );
    }
}

/// `IDTE` with the clearing-by-ASCE option: purges every TLB entry formed
/// through `asce` from every CPU, without invalidating any table entry. Needed
/// for entries changed without IPTE (e.g. a page table unhooked by a plain
/// store of its segment entry) before the memory they named is reused.
///
/// # Safety
/// `asce` is an ASCE value (any: the instruction only purges TLB entries).
/// Unsafe because it belongs to the TLB protocol of the caller.
#[inline]
pub unsafe fn idte(asce: u64) {
    // SAFETY: IDTE is privileged; with R2 bit 52 set it only clears TLB entries
    // (of all CPUs) formed with the ASCE in R3: no storage changes. R1 (table
    // origin) is not used by that option. The branch ends the translated block
    // (see module docs).
    unsafe {
        core::arch::asm!(
            "idte %r0, {asce}, {opt}",
            end_translated_block!(),
            // Not r0: a zero register field is not "register 0" for every
            // operand of this family; keep both off r0 (Linux: "a").
            asce = in(reg_addr) asce,
            opt = in(reg_addr) IDTE_PTOA,
            options(nostack, preserves_flags),
        );
    }
}

/// `IDTE` with the invalidation-and-clearing option on one segment-table
/// entry (Linux `__pmdp_idte`): sets the invalid bit of the entry at `pmdp`,
/// which maps `addr`, and purges every TLB entry formed through it from every
/// CPU. The entry keeps its other bits; the caller then stores the value it
/// wants.
///
/// # Safety
/// 1. `pmdp` is an entry of a live segment table (16 KiB, 16 KiB aligned) and
///    `addr` an address that entry maps: the hardware takes the table origin
///    from `pmdp` and the index from `addr` (bits 33-43).
/// 2. The caller serialises changes of the entry.
#[inline]
pub unsafe fn idte_segment(pmdp: *mut u64, addr: u64) {
    let index = (addr >> 20) & 0x7ff;
    // Segment-table origin, designation type 00 (segment table).
    let sto = pmdp as u64 - index * 8;
    debug_assert!(
        sto & 0x3fff == 0,
        "IDTE: {pmdp:p} is not in a segment table"
    );
    // R2 bit 52 (IDTE_PTOA) clear and bits 53-63 (additional entries) zero:
    // invalidate exactly the one entry that `addr` indexes.
    let r2 = addr & !0xfff;
    // SAFETY: IDTE is privileged; per the contract it sets the invalid bit of
    // the caller's own entry and purges TLBs. The branch ends the translated
    // block (see module docs).
    unsafe {
        core::arch::asm!(
            "idte {sto}, %r0, {r2}",
            end_translated_block!(),
            sto = in(reg_addr) sto,
            r2 = in(reg_addr) r2,
            options(nostack, preserves_flags),
        );
    }
}

/// `CSPG` with the TLB-purge bit (Linux `cspg`): if the doubleword at `ptr`
/// equals `old`, replaces it with `new` and purges every CPU's TLB. Returns
/// whether it swapped. The compare-and-swap and the purge are one
/// instruction: when it returns true, no CPU translates through `old` any more.
///
/// # Safety
/// `ptr` is an 8-byte aligned table entry the caller may change (it holds the
/// lock that serialises changes of it).
#[inline]
pub unsafe fn cspg(ptr: *mut u64, old: u64, new: u64) -> bool {
    let seen: u64;
    // SAFETY: CSPG is privileged. R2/R3 are the even/odd pair (compare value,
    // replacement); the operand address has bit 63 set, which requests the
    // purge (the low 3 bits are not part of the address). Only the caller's
    // entry changes. The branch ends the translated block (see module docs).
    unsafe {
        core::arch::asm!(
            "cspg %r2, {a}",
            end_translated_block!(),
            inout("r2") old => seen,
            in("r3") new,
            a = in(reg_addr) ptr as u64 | 1,
            options(nostack),
        );
    }
    seen == old
}

/// `CSP` with the TLB-purge bit on a 32-bit word (Linux `csp`): like
/// [`cspg`] for a word.
///
/// # Safety
/// `ptr` is a 4-byte aligned word the caller may change.
#[inline]
pub unsafe fn csp(ptr: *mut u32, old: u32, new: u32) -> bool {
    let seen: u64;
    // SAFETY: as `cspg`, with the word compare in bits 32-63 of R2/R3.
    unsafe {
        core::arch::asm!(
            "csp %r2, {a}",
            end_translated_block!(),
            inout("r2") u64::from(old) => seen,
            in("r3") u64::from(new),
            a = in(reg_addr) ptr as u64 | 1,
            options(nostack),
        );
    }
    seen as u32 == old
}

/// Purges every CPU's whole TLB by a compare-and-swap-and-purge on a dummy
/// word (Linux `__tlb_flush_global` for machines without IDTE).
pub fn tlb_flush_global() {
    let mut dummy: u32 = 0;
    // SAFETY: a local word; comparing 0 with 0 always swaps, so the purge is
    // always done.
    let swapped = unsafe { csp(&mut dummy, 0, 0) };
    debug_assert!(swapped);
}

/// `PTLB`: purges the calling CPU's whole TLB (the only local purge s390x has);
/// the local clearing of `flush_tlb_mm` when no other CPU has the mm attached.
pub fn ptlb() {
    // SAFETY: PTLB is privileged (supervisor state) and changes only this CPU's
    // TLB: translations are redone from the tables, which is always correct.
    // The branch ends the translated block, as after IPTE (see module docs).
    unsafe {
        core::arch::asm!(
            "ptlb",
            end_translated_block!(),
            options(nostack, preserves_flags)
        );
    }
}

/// Loads the primary ASCE (control register 1) of the calling CPU.
///
/// # Safety
/// `asce` designates tables that map the kernel 1:1 (every task mm shares the
/// kernel's region-third entries), and stay alive while loaded.
#[inline]
pub unsafe fn load_primary_asce(asce: u64) {
    // SAFETY: per the contract the code, data and stacks keep translating to
    // themselves, so execution continues unchanged.
    unsafe { local_ctl_load::<1>(asce) };
}

/// The calling CPU's primary ASCE (control register 1).
pub fn primary_asce() -> u64 {
    local_ctl_store::<1>()
}
