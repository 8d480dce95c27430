//! CPUs: discovery, bring-up of secondary CPUs, IPIs and stopping.
//!
//! Design: at boot, `SIGP SENSE` over every CPU address finds the CPUs present;
//! the boot CPU (its address from `STAP`) is logical CPU 0, the others follow in
//! address order. A secondary is started the Linux way: the boot CPU allocates
//! its 8 KiB lowcore and its stacks, fills in the new PSWs (the restart new PSW
//! pointing at `s390x_secondary_entry`), the logical number and the stack tops,
//! then `SIGP SET PREFIX` (target stopped) and `SIGP RESTART`. IPIs are
//! `SIGP EXTERNAL CALL`, which the target holds pending while it has external
//! interruptions masked. Stopping is `SIGP STOP`, confirmed by `SIGP SENSE`.
//!
//! Invariants:
//! - The logical-to-address map is written once, on the boot CPU, before any
//!   secondary starts, and only read afterwards.
//! - A secondary's lowcore and stacks are written by the boot CPU only while
//!   the secondary is stopped, before `SIGP SET PREFIX`; they are never freed.

use crate::entry::{self, ASYNC_STACK_SIZE, KERNEL_STACK_SIZE, PANIC_STACK_SIZE};
use crate::lowcore::{self, Lowcore};
use crate::sigp::{self, sigp_retry, Order, SigpAnswer};
use crate::{interrupt, time, S390x};
use alloc::alloc::{alloc, alloc_zeroed, Layout};
use core::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use quiesce_kernel::NR_CPUS;

/// CPU addresses probed at boot. QEMU numbers CPUs from 0 (at most 248).
const MAX_CPU_ADDR: u16 = 255;

/// CPU address of each logical CPU.
static CPU_ADDRS: [AtomicU16; NR_CPUS] = [const { AtomicU16::new(0) }; NR_CPUS];
/// Logical CPUs mapped in `CPU_ADDRS`.
static NR_MAPPED: AtomicUsize = AtomicUsize::new(1);

/// How long `stop_other_cpus` waits for one CPU to report stopped.
const STOP_TIMEOUT_NS: u64 = 1_000_000_000;

/// Finds the CPUs present and numbers them; returns how many there are (which
/// may exceed `NR_CPUS`; only the first `NR_CPUS` are mapped). Boot CPU only.
pub fn detect() -> usize {
    let me = sigp::stap();
    CPU_ADDRS[0].store(me, Ordering::Relaxed);
    let mut present = 1;
    for addr in (0..=MAX_CPU_ADDR).filter(|&a| a != me) {
        if sigp_retry(addr, Order::Sense, 0) == SigpAnswer::NotOperational {
            continue;
        }
        if present < NR_CPUS {
            CPU_ADDRS[present].store(addr, Ordering::Relaxed);
        }
        present += 1;
    }
    NR_MAPPED.store(present.min(NR_CPUS), Ordering::Release);
    present
}

/// CPU address of logical CPU `cpu`.
fn cpu_addr(cpu: usize) -> Option<u16> {
    (cpu < NR_MAPPED.load(Ordering::Acquire)).then(|| CPU_ADDRS[cpu].load(Ordering::Relaxed))
}

/// Starts logical CPU `cpu` in `s390x_secondary_main`.
pub fn boot_secondary(cpu: usize) -> Result<(), &'static str> {
    if cpu == 0 {
        return Err("CPU 0 is the boot CPU");
    }
    let addr = cpu_addr(cpu).ok_or("no such CPU")?;
    let stacks_size = KERNEL_STACK_SIZE + ASYNC_STACK_SIZE + PANIC_STACK_SIZE;
    let stacks_layout =
        Layout::from_size_align(stacks_size, 4096).map_err(|_| "bad stack layout")?;
    // SAFETY: both layouts have a non-zero size.
    let (lc, stacks) = unsafe {
        (
            alloc_zeroed(Layout::new::<Lowcore>()).cast::<Lowcore>(),
            alloc(stacks_layout),
        )
    };
    if lc.is_null() || stacks.is_null() {
        return Err("out of memory for the lowcore or stacks");
    }
    let stacks = stacks as u64;
    let new_psws = entry::new_psws();
    // SAFETY: `lc` is a fresh, zeroed, 8 KiB-aligned allocation that only we
    // know of; the target CPU is stopped and uses it only after SET PREFIX
    // below. It is leaked on purpose: the CPU uses it until the machine ends.
    unsafe {
        (*lc).restart_psw = entry::secondary_restart_psw();
        (*lc).external_new_psw = new_psws[1];
        (*lc).svc_new_psw = new_psws[2];
        (*lc).program_new_psw = new_psws[3];
        (*lc).mcck_new_psw = new_psws[4];
        (*lc).io_new_psw = new_psws[5];
        (*lc).cpu_nr = cpu as u64;
        (*lc).cpu_addr = u64::from(addr);
        (*lc).kernel_stack = stacks + KERNEL_STACK_SIZE as u64;
        (*lc).async_stack = stacks + (KERNEL_STACK_SIZE + ASYNC_STACK_SIZE) as u64;
        (*lc).panic_stack = stacks + stacks_size as u64;
    }
    match sigp_retry(addr, Order::SetPrefix, lc as u64) {
        SigpAnswer::Accepted => {}
        SigpAnswer::Status(s) if s & sigp::SIGP_STATUS_INCORRECT_STATE != 0 => {
            return Err("SIGP SET PREFIX refused: the CPU is not stopped")
        }
        SigpAnswer::Status(_) => return Err("SIGP SET PREFIX refused"),
        _ => return Err("SIGP SET PREFIX: CPU not operational"),
    }
    match sigp_retry(addr, Order::Restart, 0) {
        SigpAnswer::Accepted => Ok(()),
        SigpAnswer::Status(_) => Err("SIGP RESTART refused"),
        _ => Err("SIGP RESTART: CPU not operational"),
    }
}

/// Entry of a secondary CPU (from `s390x_secondary_entry`, on its own stack,
/// interruptions masked).
#[unsafe(no_mangle)]
extern "C" fn s390x_secondary_main(cpu: u64) -> ! {
    lowcore::set_cpu_addr(sigp::stap());
    // From now on a restart interruption is unexpected, as on CPU 0.
    lowcore::set_restart_psw(entry::new_psws()[0]);
    // The kernel's ASCE and DAT, for this CPU and its new PSWs.
    crate::mmu::cpu_enable_dat();
    interrupt::init_cpu();
    quiesce_kernel::smp::secondary_main::<S390x>(cpu as usize)
}

/// Whether an external call is pending on `cpu`, per SIGP SENSE (status
/// bit "external call pending"; an accepted SENSE means none is, and the CPU
/// is operating). `None` if the CPU does not answer.
pub fn ext_call_pending(cpu: usize) -> Option<bool> {
    match sigp_retry(cpu_addr(cpu)?, Order::Sense, 0) {
        SigpAnswer::Accepted => Some(false),
        SigpAnswer::Status(status) => Some(status & sigp::SIGP_STATUS_EXT_CALL_PENDING != 0),
        _ => None,
    }
}

/// Sends an external call to `cpu`. One already pending counts as sent.
pub fn send_ipi(cpu: usize) {
    let addr = cpu_addr(cpu).unwrap_or_else(|| panic!("send_ipi: no CPU {cpu}"));
    match sigp_retry(addr, Order::ExternalCall, 0) {
        SigpAnswer::Accepted => {}
        SigpAnswer::Status(status) if status & sigp::SIGP_STATUS_EXT_CALL_PENDING != 0 => {}
        answer => panic!("send_ipi: SIGP EXTERNAL CALL to CPU {cpu} answered {answer:?}"),
    }
}

/// Stops every other CPU and returns once each reports stopped (or does not
/// answer within a second, which is reported).
pub fn stop_other_cpus() {
    let me = lowcore::cpu_nr();
    let others = (0..NR_MAPPED.load(Ordering::Acquire)).filter(|&c| c != me);
    for cpu in others.clone() {
        if let Some(addr) = cpu_addr(cpu) {
            sigp_retry(addr, Order::Stop, 0);
        }
    }
    for cpu in others {
        let Some(addr) = cpu_addr(cpu) else { continue };
        let start = time::clock_ns();
        loop {
            match sigp_retry(addr, Order::Sense, 0) {
                SigpAnswer::Status(s)
                    if s & (sigp::SIGP_STATUS_STOPPED | sigp::SIGP_STATUS_CHECK_STOP) != 0 =>
                {
                    break
                }
                SigpAnswer::NotOperational => break,
                _ => {}
            }
            if time::clock_ns() - start > STOP_TIMEOUT_NS {
                quiesce_kernel::kprintln_emergency!("# stop_other_cpus: CPU {cpu} did not stop");
                break;
            }
            core::hint::spin_loop();
        }
    }
}
