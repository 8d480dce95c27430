//! The local APIC in xAPIC mode (Linux: `arch/x86/kernel/apic/apic.c`,
//! `ipi.c`), and masking of the legacy 8259 PIC.
//!
//! Design: every CPU reaches its own local APIC through the same MMIO page at
//! 0xfee00000 (identity-mapped uncached by head.S). Each CPU enables its APIC in
//! [`setup_this_cpu`] (spurious vector, error vector, task priority 0, LINT0 and
//! the timer masked). IPIs are written to the ICR with interrupts disabled, so an
//! interrupt handler that sends an IPI cannot interleave its two ICR writes with
//! ours. The timer runs in periodic mode with divide-by-16; its rate is measured
//! once by [`crate::tsc::calibrate`] against the PIT.
//!
//! Registers are reached through `volatile::VolatilePtr` ([`apic_reg`]); the
//! 8259 PICs are I/O ports and stay on the `x86_64` crate's `Port`.
//!
//! Invariants: the APIC base is the default 0xfee00000 with xAPIC (not x2APIC)
//! mode, checked in [`setup_this_cpu`]; only this module touches the APIC page.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use volatile::VolatilePtr;
use x86_64::instructions::interrupts;
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

use crate::idt::{ERROR_APIC_VECTOR, LOCAL_TIMER_VECTOR, SPURIOUS_APIC_VECTOR};

/// Physical (= virtual) address of the local APIC page.
const APIC_DEFAULT_PHYS_BASE: u64 = 0xfee0_0000;
const MSR_IA32_APICBASE: u32 = 0x1b;
const APICBASE_ENABLE: u64 = 1 << 11;
const APICBASE_X2APIC: u64 = 1 << 10;

const APIC_ID: usize = 0x20;
const APIC_TASKPRI: usize = 0x80;
const APIC_EOI: usize = 0xb0;
const APIC_SPIV: usize = 0xf0;
const APIC_IRR: usize = 0x200;
const APIC_ESR: usize = 0x280;
const APIC_ICR: usize = 0x300;
const APIC_ICR2: usize = 0x310;
const APIC_LVTT: usize = 0x320;
const APIC_LVT0: usize = 0x350;
const APIC_LVTERR: usize = 0x370;
const APIC_TMICT: usize = 0x380;
const APIC_TMCCT: usize = 0x390;
const APIC_TDCR: usize = 0x3e0;

const APIC_SPIV_APIC_ENABLED: u32 = 1 << 8;
const APIC_LVT_MASKED: u32 = 1 << 16;
const APIC_LVT_TIMER_PERIODIC: u32 = 1 << 17;
const APIC_TDR_DIV_16: u32 = 0x3;
const APIC_ICR_BUSY: u32 = 1 << 12;
const APIC_INT_ASSERT: u32 = 1 << 14;
const APIC_INT_LEVELTRIG: u32 = 1 << 15;
const APIC_DM_FIXED: u32 = 0 << 8;
const APIC_DM_NMI: u32 = 4 << 8;
const APIC_DM_INIT: u32 = 5 << 8;
const APIC_DM_STARTUP: u32 = 6 << 8;

/// Timer counts per millisecond at divide-by-16, from calibration.
static TIMER_KHZ: AtomicU64 = AtomicU64::new(0);

/// The calling CPU's local APIC register at offset `reg` (`reg` is one of
/// the `APIC_*` offsets above: 16-byte aligned, inside the page), as a
/// volatile pointer: every access is one 32-bit MMIO load or store.
fn apic_reg(reg: usize) -> VolatilePtr<'static, u32> {
    debug_assert!(reg < 0x1000 && reg.is_multiple_of(16));
    let p = NonNull::new(core::ptr::with_exposed_provenance_mut::<u32>(
        APIC_DEFAULT_PHYS_BASE as usize + reg,
    ))
    .expect("the APIC page is not at address 0");
    // SAFETY: `reg` is a register offset inside the APIC page, which head.S
    // identity-maps uncached on every CPU; an aligned 32-bit access reaches the
    // calling CPU's own local APIC and no memory. No other code aliases the
    // page (module invariant: only this module touches it).
    unsafe { VolatilePtr::new(p) }
}

fn apic_read(reg: usize) -> u32 {
    apic_reg(reg).read()
}

fn apic_write(reg: usize, value: u32) {
    apic_reg(reg).write(value);
}

/// Masks every line of both legacy 8259 PICs (they stay in the firmware's
/// state, and LINT0 is masked too, so no ExtINT reaches any CPU).
pub fn disable_8259() {
    let mut master = Port::<u8>::new(0x21);
    let mut slave = Port::<u8>::new(0xa1);
    // SAFETY: 0x21 and 0xa1 are the data ports of the 8259 PICs; writing 0xff is
    // OCW1 "mask all lines", which touches no memory.
    unsafe {
        master.write(0xff);
        slave.write(0xff);
    }
}

/// Enables and configures the calling CPU's local APIC.
pub fn setup_this_cpu() {
    let mut msr = Msr::new(MSR_IA32_APICBASE);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; reading it has no effect.
    let base = unsafe { msr.read() };
    assert!(
        base & 0xffff_f000 == APIC_DEFAULT_PHYS_BASE && base & APICBASE_X2APIC == 0,
        "local APIC not in xAPIC mode at {APIC_DEFAULT_PHYS_BASE:#x} (IA32_APIC_BASE={base:#x})"
    );
    if base & APICBASE_ENABLE == 0 {
        // SAFETY: sets only the global enable bit, keeping the base address and
        // xAPIC mode checked above.
        unsafe { msr.write(base | APICBASE_ENABLE) };
    }
    apic_write(APIC_TASKPRI, 0);
    apic_write(APIC_LVTT, APIC_LVT_MASKED | u32::from(LOCAL_TIMER_VECTOR));
    apic_write(APIC_LVT0, APIC_LVT_MASKED);
    apic_write(APIC_LVTERR, u32::from(ERROR_APIC_VECTOR));
    apic_write(
        APIC_SPIV,
        APIC_SPIV_APIC_ENABLED | u32::from(SPURIOUS_APIC_VECTOR),
    );
    // Clear errors left from before: the ESR latches on a write.
    apic_write(APIC_ESR, 0);
    apic_write(APIC_ESR, 0);
}

/// The calling CPU's local APIC ID.
pub fn read_apic_id() -> u32 {
    apic_read(APIC_ID) >> 24
}

/// Signals the end of the interrupt being handled.
#[inline]
pub fn eoi() {
    apic_write(APIC_EOI, 0);
}

/// Latches and returns the error status.
pub fn read_esr() -> u32 {
    apic_write(APIC_ESR, 0);
    apic_read(APIC_ESR)
}

/// Writes an IPI command for `apic_id`. Waits (bounded) for a previous command to
/// leave the ICR first; the delivery-status bit says nothing about the target
/// having taken the interrupt.
fn send_ipi_raw(apic_id: u32, icr: u32) {
    interrupts::without_interrupts(|| {
        for _ in 0..1_000_000 {
            if apic_read(APIC_ICR) & APIC_ICR_BUSY == 0 {
                break;
            }
            core::hint::spin_loop();
        }
        apic_write(APIC_ICR2, apic_id << 24);
        apic_write(APIC_ICR, icr);
    });
}

/// Sends a fixed-delivery IPI of `vector` (held pending while the target has
/// IF=0).
pub fn send_ipi(apic_id: u32, vector: u8) {
    send_ipi_raw(apic_id, APIC_DM_FIXED | APIC_INT_ASSERT | u32::from(vector));
}

/// Sends an NMI (taken whatever the target's IF).
pub fn send_nmi(apic_id: u32) {
    send_ipi_raw(apic_id, APIC_DM_NMI | APIC_INT_ASSERT);
}

/// Sends INIT (level, assert): the target resets and waits for a STARTUP IPI.
pub fn send_init(apic_id: u32) {
    send_ipi_raw(apic_id, APIC_DM_INIT | APIC_INT_LEVELTRIG | APIC_INT_ASSERT);
}

/// Sends a STARTUP IPI: the target starts in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) {
    send_ipi_raw(apic_id, APIC_DM_STARTUP | u32::from(page));
}

/// Whether `vector` is pending in the calling CPU's IRR: accepted by the
/// local APIC, not yet delivered to the CPU (held back while IF=0, or by a
/// higher-priority vector in service). The IRR is eight 32-bit registers,
/// 16 bytes apart.
pub fn irr_pending(vector: u8) -> bool {
    let v = usize::from(vector);
    apic_read(APIC_IRR + (v / 32) * 0x10) & (1 << (v % 32)) != 0
}

/// Starts the timer counting down from its maximum, masked and one-shot, for
/// calibration.
pub fn timer_calibration_start() {
    apic_write(APIC_LVTT, APIC_LVT_MASKED | u32::from(LOCAL_TIMER_VECTOR));
    apic_write(APIC_TDCR, APIC_TDR_DIV_16);
    apic_write(APIC_TMICT, u32::MAX);
}

/// The timer's current count.
pub fn timer_current() -> u32 {
    apic_read(APIC_TMCCT)
}

/// Stops the timer.
pub fn timer_stop() {
    apic_write(APIC_TMICT, 0);
}

/// Records the calibrated timer rate (counts per millisecond).
pub fn set_timer_khz(khz: u64) {
    TIMER_KHZ.store(khz, Ordering::Release);
}

/// Calibrated timer rate, counts per millisecond at divide-by-16.
pub fn timer_khz() -> u64 {
    TIMER_KHZ.load(Ordering::Acquire)
}

/// Starts the calling CPU's timer in periodic mode, one interrupt on
/// LOCAL_TIMER_VECTOR every `period_ns`.
pub fn timer_start(period_ns: u64) {
    let khz = timer_khz();
    assert!(khz != 0, "APIC timer used before calibration");
    let count =
        (u128::from(period_ns) * u128::from(khz) / 1_000_000).clamp(1, u128::from(u32::MAX)) as u32;
    apic_write(APIC_TDCR, APIC_TDR_DIV_16);
    apic_write(
        APIC_LVTT,
        APIC_LVT_TIMER_PERIODIC | u32::from(LOCAL_TIMER_VECTOR),
    );
    apic_write(APIC_TMICT, count);
}
