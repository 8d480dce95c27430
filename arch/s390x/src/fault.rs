//! DAT exceptions: decoding a program check into a page fault for the generic
//! fault handler, and the probe accessors whose faults are fixed up instead of
//! failing the run.
//!
//! Design. The program-check entry (`entry.S`) saves a [`PgmFrame`] and calls
//! [`crate::interrupt`]'s handler, which passes protection (0x04), segment and
//! page translation (0x10, 0x11) and ASCE-type / region translation
//! (0x38-0x3B) exceptions here. The translation-exception identification
//! (TEID, lowcore 0xa8) gives the page address (bits 0-51) and, for
//! translation exceptions, whether the access was a fetch or a store (bits
//! 52-53: 0b10 fetch, 0b01 store, as Linux's `teid.fsi`); a protection
//! exception is always a store and counts as DAT protection only with TEID
//! bit 61 set (otherwise it is low-address or key protection: a kernel bug).
//!
//! Where the instruction is: translation exceptions *nullify*, so the old PSW
//! points at the faulting instruction and returning re-executes it. Protection
//! exceptions *suppress*: the old PSW points after the instruction, so the
//! handler rewinds it by the instruction length (as Linux's
//! `do_protection_exception`) before retrying or matching a probe.
//!
//! A resolved fault returns to the instruction. An unresolved one at a probe
//! instruction ([`probe_load`], [`probe_store`]: tiny assembly functions whose
//! instruction and fixup addresses are known, Linux's exception table in
//! miniature) writes the fault into the probe's result and resumes at the
//! fixup; anywhere else it is fatal and reported by the caller.
//!
//! Invariants: the generic handler runs with interruptions enabled exactly
//! when the faulting context had them enabled (a CPU waiting for an
//! `mmap_lock` writer that waits for a cross-CPU call must take that call);
//! they are masked again before returning to `entry.S`.

use crate::lowcore::{PgmFrame, PSW_MASK_EXT};
use crate::{interrupt, mmu, S390x};
use quiesce_arch_s390x::pgtable::{pgm, PAGE_MASK};
use quiesce_kernel::mm::arch::FaultInfo;
use quiesce_kernel::mm::fault::{handle_mm_fault, FaultError};

/// TEID bits 52-53, the fetch/store indication (Linux `teid.fsi`).
const TEID_FSI_MASK: u64 = 0xc00;
/// The access was a store.
const TEID_FSI_STORE: u64 = 0x400;
/// TEID bit 61: a protection exception is DAT protection (the address is valid).
const TEID_B61: u64 = 0x4;

/// Whether a program-interruption code (PER and transaction bits stripped) is a
/// DAT exception this module handles.
pub fn is_dat_exception(code: u16) -> bool {
    matches!(
        code,
        pgm::PROTECTION
            | pgm::SEGMENT_TRANSLATION
            | pgm::PAGE_TRANSLATION
            | pgm::ASCE_TYPE
            | pgm::REGION_FIRST_TRANSLATION
            | pgm::REGION_SECOND_TRANSLATION
            | pgm::REGION_THIRD_TRANSLATION
    )
}

/// Why a DAT exception could not be resolved.
#[derive(Clone, Copy, Debug)]
pub enum DatFault {
    /// Protection that is not DAT protection (low-address or key protection).
    NotDatProtection,
    /// The generic fault handler refused it.
    Unresolved(FaultInfo, FaultError),
}

impl core::fmt::Display for DatFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotDatProtection => f.write_str("protection exception without TEID bit 61"),
            Self::Unresolved(info, err) => write!(
                f,
                "{err} (addr={:#x} write={} protection={})",
                info.addr, info.write, info.protection
            ),
        }
    }
}

/// Decodes a DAT exception (`code` without PER bits) from its frame.
pub fn fault_info(frame: &PgmFrame, code: u16) -> FaultInfo {
    let teid = frame.trans_exc_code;
    let protection = code == pgm::PROTECTION;
    FaultInfo {
        addr: teid & PAGE_MASK,
        write: protection || teid & TEID_FSI_MASK == TEID_FSI_STORE,
        protection,
        code: u64::from(code),
    }
}

/// Handles a DAT exception: `Ok` when the program-check handler may return
/// (the fault is resolved and the instruction is retried, or a probe's fixup
/// was applied), `Err` when it is fatal. `code` is the interruption code
/// without PER bits; the frame's PSW is rewound for protection exceptions.
pub fn do_dat_exception(frame: &mut PgmFrame, code: u16) -> Result<(), DatFault> {
    if code == pgm::PROTECTION {
        if frame.trans_exc_code & TEID_B61 == 0 {
            return Err(DatFault::NotDatProtection);
        }
        frame.psw.addr -= u64::from(frame.ilc & 0x6);
    }
    let info = fault_info(frame, code);
    if matches!(
        code,
        pgm::ASCE_TYPE
            | pgm::REGION_FIRST_TRANSLATION
            | pgm::REGION_SECOND_TRANSLATION
            | pgm::REGION_THIRD_TRANSLATION
    ) && mmu::fixup_stale_asce()
    {
        return Ok(());
    }
    let irqs_on = frame.psw.mask & PSW_MASK_EXT != 0;
    if irqs_on {
        interrupt::local_irq_enable();
    }
    let result = handle_mm_fault::<S390x>(info);
    if irqs_on {
        interrupt::local_irq_disable();
    }
    match result {
        Ok(()) => Ok(()),
        Err(err) => {
            if apply_probe_fixup(frame, info) {
                Ok(())
            } else {
                Err(DatFault::Unresolved(info, err))
            }
        }
    }
}

// ---- probes ---------------------------------------------------------------------

/// What a probe function reports; filled by the fault path on a fixup.
#[repr(C)]
struct ProbeResult {
    /// The value loaded.
    val: u64,
    /// The unresolved fault, when the probe returned 1.
    fault: Option<FaultInfo>,
}

core::arch::global_asm!(
    ".section .text.s390x_probe,\"ax\",@progbits",
    // u64 s390x_probe_load(u64 addr /* r2 */, ProbeResult *out /* r3 */):
    // 0 and out->val on success, 1 after a fixup.
    ".globl s390x_probe_load",
    ".type s390x_probe_load,@function",
    "s390x_probe_load:",
    ".globl s390x_probe_load_insn",
    "s390x_probe_load_insn:",
    "lg %r1, 0(%r2)",
    "stg %r1, 0(%r3)",
    "lghi %r2, 0",
    "br %r14",
    ".globl s390x_probe_load_fixup",
    "s390x_probe_load_fixup:",
    "lghi %r2, 1",
    "br %r14",
    // u64 s390x_probe_store(u64 addr /* r2 */, u64 val /* r3 */,
    // ProbeResult *out /* r4 */): 0 on success, 1 after a fixup.
    ".globl s390x_probe_store",
    ".type s390x_probe_store,@function",
    "s390x_probe_store:",
    ".globl s390x_probe_store_insn",
    "s390x_probe_store_insn:",
    "stg %r3, 0(%r2)",
    "lghi %r2, 0",
    "br %r14",
    ".globl s390x_probe_store_fixup",
    "s390x_probe_store_fixup:",
    "lghi %r2, 1",
    "br %r14",
    ".text",
);

unsafe extern "C" {
    // `out` is a `*mut ProbeResult` (its first field is the loaded value).
    fn s390x_probe_load(addr: u64, out: *mut u64) -> u64;
    fn s390x_probe_store(addr: u64, val: u64, out: *mut u64) -> u64;
    // Labels: only their addresses are used.
    fn s390x_probe_load_insn();
    fn s390x_probe_load_fixup();
    fn s390x_probe_store_insn();
    fn s390x_probe_store_fixup();
}

/// The exception table: probe instruction, fixup, and the register that holds
/// the probe's `ProbeResult` pointer.
fn probe_table() -> [(u64, u64, usize); 2] {
    [
        (
            s390x_probe_load_insn as *const () as u64,
            s390x_probe_load_fixup as *const () as u64,
            3,
        ),
        (
            s390x_probe_store_insn as *const () as u64,
            s390x_probe_store_fixup as *const () as u64,
            4,
        ),
    ]
}

/// If the frame's PSW is at a probe instruction, records `info` in the
/// probe's result and moves the PSW to the fixup. Returns whether it did.
fn apply_probe_fixup(frame: &mut PgmFrame, info: FaultInfo) -> bool {
    let Some(&(_, fixup, reg)) = probe_table()
        .iter()
        .find(|(insn, _, _)| *insn == frame.psw.addr)
    else {
        return false;
    };
    let out = core::ptr::with_exposed_provenance_mut::<ProbeResult>(frame.gprs[reg] as usize);
    // SAFETY: the PSW is at a probe instruction, so the probe function is
    // running and `reg` holds the `ProbeResult` pointer its Rust caller passed:
    // a live local of that caller (suspended in the probe), aligned and ours to
    // write until the probe returns.
    unsafe { (*out).fault = Some(info) };
    frame.psw.addr = fixup;
    true
}

/// Loads the u64 at `addr`; an unresolved fault is returned instead of failing
/// the run.
pub fn probe_load(addr: u64) -> Result<u64, FaultInfo> {
    let mut out = ProbeResult {
        val: 0,
        fault: None,
    };
    // SAFETY: the probe loads from `addr` through the current translation;
    // every fault on that load either gets resolved by the fault handler or is
    // fixed up (the instruction is in the exception table), so no fault can
    // fail the run, and `out` is a local the fixup may write.
    let faulted = unsafe { s390x_probe_load(addr, (&raw mut out).cast()) };
    match (faulted, out.fault) {
        (0, _) => Ok(out.val),
        (_, Some(info)) => Err(info),
        (_, None) => unreachable!("probe fixup without a fault"),
    }
}

/// Stores `val` at `addr`, like [`probe_load`].
pub fn probe_store(addr: u64, val: u64) -> Result<(), FaultInfo> {
    let mut out = ProbeResult {
        val: 0,
        fault: None,
    };
    // SAFETY: as in `probe_load`. The store may change any memory `addr`
    // translates to: that is the caller's intent (task memory in tests).
    let faulted = unsafe { s390x_probe_store(addr, val, (&raw mut out).cast()) };
    match (faulted, out.fault) {
        (0, _) => Ok(()),
        (_, Some(info)) => Err(info),
        (_, None) => unreachable!("probe fixup without a fault"),
    }
}
