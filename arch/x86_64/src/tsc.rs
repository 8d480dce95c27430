//! The TSC as the kernel clock, calibrated against PIT channel 2 (Linux:
//! `arch/x86/kernel/tsc.c`, `pit_calibrate_tsc`).
//!
//! Design: at boot the PIT's channel 2 (gate opened through port 0x61) counts
//! while the TSC and the local APIC timer run; samples of all three at both ends
//! of a 5 ms interval give the TSC frequency (printed as `# tsc_khz=`) and the
//! APIC timer rate. [`clock_ns`] then converts TSC cycles
//! since boot with a 32.32 fixed-point multiplier.
//!
//! Invariants: calibration runs once, on the boot CPU, before any other CPU
//! starts and before anything reads the clock (until then it reads 0). QEMU keeps
//! the TSCs of all vCPUs in step, so the clock agrees across CPUs.

use crate::apic;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

/// PIT input clock, Hz.
const PIT_TICK_RATE: u64 = 1_193_182;
/// Calibration interval: 5 ms of PIT ticks.
const CAL_PIT_TICKS: u16 = (PIT_TICK_RATE / 200) as u16;
/// Bracketed samples taken at each end of the interval.
const CAL_TRIES: usize = 8;
/// PIT command: latch channel 2's count.
const PIT_LATCH_CH2: u8 = 0x80;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
/// Calibration uncertainty, ppm.
static CAL_ERROR_PPM: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC cycle, times 2^32.
static NS_MULT: AtomicU64 = AtomicU64::new(0);
/// TSC value at calibration: the clock's zero.
static TSC_BASE: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter, ordered after earlier loads.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `lfence; rdtsc` reads the TSC into edx:eax and touches no memory;
    // both instructions exist on every x86-64 CPU and RDTSC is allowed in ring 0.
    unsafe {
        core::arch::asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

const PIT_CH2: u16 = 0x42;
const PIT_MODE: u16 = 0x43;
/// System control port B: bit 0 gates PIT channel 2, bit 1 enables the speaker,
/// bit 5 reads channel 2's output.
const PORT_B: u16 = 0x61;

fn pit_outb(port: u16, value: u8) {
    debug_assert!(matches!(port, PIT_CH2 | PIT_MODE | PORT_B));
    // SAFETY: the port is one of the PIT's or port B (checked above), which only
    // this module uses; channel 2 drives nothing but the speaker, kept off. Port
    // I/O touches no memory.
    unsafe { Port::<u8>::new(port).write(value) }
}

fn pit_inb(port: u16) -> u8 {
    debug_assert!(matches!(port, PIT_CH2 | PIT_MODE | PORT_B));
    // SAFETY: as in `pit_outb`; reading these ports has no side effect.
    unsafe { Port::<u8>::new(port).read() }
}

/// One reading of the PIT and APIC counters, bracketed by two TSC reads.
#[derive(Clone, Copy)]
struct Sample {
    /// Midpoint of the two TSC reads.
    tsc: u64,
    /// Cycles between the two TSC reads: the sample's uncertainty.
    width: u64,
    /// PIT channel 2 count (counts down).
    pit: u16,
    /// APIC timer current count (counts down).
    apic: u32,
}

/// Latches and reads PIT channel 2's count.
fn pit_read_count() -> u16 {
    pit_outb(PIT_MODE, PIT_LATCH_CH2);
    let lo = pit_inb(PIT_CH2);
    let hi = pit_inb(PIT_CH2);
    u16::from_le_bytes([lo, hi])
}

/// The tightest of a few bracketed samples: a vCPU preempted by the host in the
/// middle of one (the host may be busy) shows as a wide bracket and is dropped.
fn sample() -> Sample {
    let mut best: Option<Sample> = None;
    for _ in 0..CAL_TRIES {
        let a = rdtsc();
        let pit = pit_read_count();
        let apic = apic::timer_current();
        let b = rdtsc();
        let s = Sample {
            tsc: a + (b - a) / 2,
            width: b - a,
            pit,
            apic,
        };
        if best.is_none_or(|best| s.width < best.width) {
            best = Some(s);
        }
    }
    best.expect("CAL_TRIES > 0")
}

/// Measures the TSC and APIC timer rates against the PIT. Boot CPU, once, with
/// interrupts disabled.
///
/// PIT channel 2 counts down from 0xffff (55 ms) in mode 0; the counts of the
/// PIT and of the APIC timer are sampled together at the start and after
/// [`CAL_PIT_TICKS`], each sample bracketed by TSC reads (Linux's
/// `quick_pit_calibrate` does the same against preemption and SMIs).
pub fn calibrate() {
    // Gate high, speaker off.
    pit_outb(PORT_B, (pit_inb(PORT_B) & !0x02) | 0x01);
    // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
    pit_outb(PIT_MODE, 0xb0);
    pit_outb(PIT_CH2, 0xff);
    pit_outb(PIT_CH2, 0xff);
    apic::timer_calibration_start();

    let start = sample();
    let waited = (0..10_000_000).any(|_| start.pit.wrapping_sub(pit_read_count()) >= CAL_PIT_TICKS);
    let end = sample();
    apic::timer_stop();
    assert!(waited, "TSC calibration: PIT channel 2 does not count");

    let pit_ticks = u64::from(start.pit.wrapping_sub(end.pit));
    let cycles = end.tsc - start.tsc;
    let tsc_khz = cycles * PIT_TICK_RATE / pit_ticks / 1000;
    let apic_khz = u64::from(start.apic - end.apic) * PIT_TICK_RATE / pit_ticks / 1000;
    assert!(
        tsc_khz > 0 && apic_khz > 0,
        "TSC calibration failed: tsc_khz={tsc_khz} apic_khz={apic_khz}"
    );
    TSC_KHZ.store(tsc_khz, Ordering::Relaxed);
    // Uncertainty: both brackets, plus one PIT tick at each end.
    let err = (start.width + end.width) as u128 * 1_000_000 / cycles as u128
        + 2 * 1_000_000 / pit_ticks as u128;
    CAL_ERROR_PPM.store(err as u64, Ordering::Relaxed);
    NS_MULT.store((1_000_000u64 << 32) / tsc_khz, Ordering::Relaxed);
    apic::set_timer_khz(apic_khz);
    TSC_BASE.store(start.tsc, Ordering::Release);
}

/// Upper bound of the calibration error, parts per million.
pub fn calibration_error_ppm() -> u64 {
    CAL_ERROR_PPM.load(Ordering::Acquire)
}

/// Calibrated TSC frequency in kHz.
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Acquire)
}

/// Nanoseconds since calibration.
#[inline]
pub fn clock_ns() -> u64 {
    let cycles = rdtsc().wrapping_sub(TSC_BASE.load(Ordering::Relaxed));
    ((u128::from(cycles) * u128::from(NS_MULT.load(Ordering::Relaxed))) >> 32) as u64
}
