//! The lowcore: each CPU's 8 KiB prefix area, and the PSW.
//!
//! Design: the hardware stores interruption codes and old PSWs into the first
//! 512 bytes of the lowcore and loads new PSWs from there; the kernel keeps its
//! own per-CPU fields right after (register save areas, the logical CPU number,
//! stack tops, tick state), as Linux does, so that the entry code reaches them
//! with base register 0 and `smp_processor_id` is one load. [`Lowcore`] spells out
//! the layout; `entry.rs` hands the offsets to the assembly.
//!
//! Invariants:
//! - A CPU reaches its own lowcore only through real addresses `0..0x2000`,
//!   which prefixing maps to its prefix area ([`own`] and the accessors here).
//!   It never uses the absolute address of its own lowcore: reverse prefixing
//!   maps that to absolute 0, CPU 0's lowcore.
//! - Another CPU's lowcore is reached through its absolute address, and only
//!   while that CPU is stopped, to set it up before `SIGP SET PREFIX`.
//! - CPU 0's lowcore is absolute 0 (prefix 0); secondaries' lowcores are
//!   8 KiB-aligned heap blocks that live for the rest of the run.
//! - The fields from 0x200 on are written only by the owning CPU once it runs.

use core::mem::offset_of;
use core::ptr::NonNull;
use volatile::VolatilePtr;

/// A z/Architecture program status word (16 bytes).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Psw {
    /// Mask: interruption masks, key, wait, addressing mode, condition code.
    pub mask: u64,
    /// Instruction address.
    pub addr: u64,
}

/// PSW mask bit 5: dynamic address translation (DAT) on.
pub const PSW_MASK_DAT: u64 = 1 << (63 - 5);
/// PSW mask bit 6: I/O interruptions enabled.
pub const PSW_MASK_IO: u64 = 1 << (63 - 6);
/// PSW mask bit 7: external interruptions enabled.
pub const PSW_MASK_EXT: u64 = 1 << (63 - 7);
/// PSW mask bit 13: machine checks enabled.
pub const PSW_MASK_MCHECK: u64 = 1 << (63 - 13);
/// PSW mask bit 14: wait state.
pub const PSW_MASK_WAIT: u64 = 1 << (63 - 14);
/// PSW mask bits 31 and 32: 64-bit addressing mode.
pub const PSW_MASK_64: u64 = (1 << (63 - 31)) | (1 << (63 - 32));

/// Interruption handlers run with every interruption masked, 64-bit mode. DAT
/// is added once the CPU has loaded the kernel's ASCE ([`set_new_psws_dat`]).
pub const PSW_HANDLER: u64 = PSW_MASK_64;
/// Kernel code runs with machine checks enabled; external and I/O interruptions
/// are switched by `STOSM`/`STNSM`/`SSM` ([`crate::interrupt`]). This is the
/// mask a CPU starts with (boot entry, restart of a secondary), DAT off; the
/// CPU turns DAT on itself ([`crate::mmu::cpu_enable_dat`]).
pub const PSW_KERNEL: u64 = PSW_MASK_64 | PSW_MASK_MCHECK;
/// A disabled wait: the CPU stops for good; QEMU ends when no CPU runs.
pub const PSW_DISABLED_WAIT: u64 = PSW_MASK_64 | PSW_MASK_WAIT;

/// System-mask byte (PSW bits 0-7) bit of [`PSW_MASK_DAT`].
pub const SYSMASK_DAT: u8 = (PSW_MASK_DAT >> 56) as u8;
/// System-mask byte (PSW bits 0-7) bit of [`PSW_MASK_IO`].
pub const SYSMASK_IO: u8 = (PSW_MASK_IO >> 56) as u8;
/// System-mask byte (PSW bits 0-7) bit of [`PSW_MASK_EXT`].
pub const SYSMASK_EXT: u8 = (PSW_MASK_EXT >> 56) as u8;

/// The lowcore layout. Offsets below 0x200 are architected; the rest is ours.
#[repr(C, align(8192))]
pub struct Lowcore {
    _reserved_000: [u8; 0x80],
    /// 0x080: external-interruption parameter.
    pub ext_params: u32,
    /// 0x084: CPU address of the CPU that sent an external call or emergency signal.
    pub ext_cpu_addr: u16,
    /// 0x086: external-interruption code.
    pub ext_int_code: u16,
    /// 0x088: SVC instruction length code.
    pub svc_ilc: u16,
    /// 0x08a: SVC interruption code.
    pub svc_code: u16,
    /// 0x08c: program-interruption instruction length code.
    pub pgm_ilc: u16,
    /// 0x08e: program-interruption code.
    pub pgm_code: u16,
    _reserved_090: [u8; 0x18],
    /// 0x0a8: translation-exception identification (the failing address).
    pub trans_exc_code: u64,
    _reserved_0b0: [u8; 0x38],
    /// 0x0e8: machine-check interruption code.
    pub mcck_interruption_code: u64,
    _reserved_0f0: [u8; 0x20],
    /// 0x110: breaking-event address of the last program interruption.
    pub breaking_event_addr: u64,
    _reserved_118: [u8; 0x8],
    /// 0x120: restart old PSW.
    pub restart_old_psw: Psw,
    /// 0x130: external old PSW.
    pub external_old_psw: Psw,
    /// 0x140: SVC old PSW.
    pub svc_old_psw: Psw,
    /// 0x150: program old PSW.
    pub program_old_psw: Psw,
    /// 0x160: machine-check old PSW.
    pub mcck_old_psw: Psw,
    /// 0x170: I/O old PSW.
    pub io_old_psw: Psw,
    _reserved_180: [u8; 0x20],
    /// 0x1a0: restart new PSW (the entry of a CPU started by `SIGP RESTART`).
    pub restart_psw: Psw,
    /// 0x1b0: external new PSW.
    pub external_new_psw: Psw,
    /// 0x1c0: SVC new PSW.
    pub svc_new_psw: Psw,
    /// 0x1d0: program new PSW.
    pub program_new_psw: Psw,
    /// 0x1e0: machine-check new PSW.
    pub mcck_new_psw: Psw,
    /// 0x1f0: I/O new PSW.
    pub io_new_psw: Psw,
    /// 0x200: general registers of the context an external interruption interrupted.
    pub save_area_ext: [u64; 16],
    /// 0x280: general registers at the last program check.
    pub save_area_pgm: [u64; 16],
    /// 0x300: general registers at the last machine check.
    pub save_area_mcck: [u64; 16],
    /// 0x380: general registers at an unexpected SVC, I/O or restart interruption.
    pub save_area_misc: [u64; 16],
    /// 0x400: logical CPU number (Linux: `lowcore.cpu_nr`).
    pub cpu_nr: u64,
    /// 0x408: top of the CPU's kernel stack.
    pub kernel_stack: u64,
    /// 0x410: top of the stack external interruptions run on.
    pub async_stack: u64,
    /// 0x418: top of the stack program checks and fatal interruptions run on.
    pub panic_stack: u64,
    /// 0x420: program checks being handled (nesting depth).
    pub pgm_depth: u64,
    /// 0x428: the CPU's own CPU address (`STAP`).
    pub cpu_addr: u64,
    /// 0x430: tick period in TOD-clock units, 0 while the tick is off.
    pub tick_period: u64,
    /// 0x438: TOD-clock value of the next tick (the armed clock comparator).
    pub next_tick: u64,
    /// 0x440: the PSW a returning program-check handler loads (`entry.S`),
    /// written with every interruption masked right before the `LPSWE`.
    pub return_psw: Psw,
    _reserved_450: [u8; 0x2000 - 0x450],
}

const _: () = {
    assert!(core::mem::size_of::<Lowcore>() == 0x2000);
    assert!(offset_of!(Lowcore, ext_int_code) == 0x86);
    assert!(offset_of!(Lowcore, pgm_code) == 0x8e);
    assert!(offset_of!(Lowcore, trans_exc_code) == 0xa8);
    assert!(offset_of!(Lowcore, mcck_interruption_code) == 0xe8);
    assert!(offset_of!(Lowcore, breaking_event_addr) == 0x110);
    assert!(offset_of!(Lowcore, restart_old_psw) == 0x120);
    assert!(offset_of!(Lowcore, external_old_psw) == 0x130);
    assert!(offset_of!(Lowcore, program_old_psw) == 0x150);
    assert!(offset_of!(Lowcore, io_old_psw) == 0x170);
    assert!(offset_of!(Lowcore, restart_psw) == 0x1a0);
    assert!(offset_of!(Lowcore, io_new_psw) == 0x1f0);
    assert!(offset_of!(Lowcore, save_area_ext) == 0x200);
    assert!(offset_of!(Lowcore, cpu_nr) == 0x400);
    assert!(offset_of!(Lowcore, return_psw) == 0x440);
    // The store-status area (0x1200 on) stays free for the hardware.
    assert!(offset_of!(Lowcore, return_psw) + 16 <= 0x1200);
};

/// Offset of the new PSWs, six in a row from `restart_psw` to `io_new_psw`.
pub const NEW_PSWS: usize = offset_of!(Lowcore, restart_psw);

/// The calling CPU's lowcore field at `offset`, as a volatile pointer: the
/// hardware stores interruption codes and old PSWs there behind the
/// compiler's back (the `volatile` crate's use case, as for MMIO).
///
/// The address is a real address below 8 KiB, never null: prefixing makes it
/// the calling CPU's own field (see the module invariants).
///
/// # Safety
/// `offset` must be `offset_of!(Lowcore, f)` for a field `f` of type `T`.
unsafe fn own<'a, T: Copy>(offset: usize) -> VolatilePtr<'a, T> {
    debug_assert!(offset != 0 && offset + core::mem::size_of::<T>() <= 0x2000);
    let p = NonNull::new(core::ptr::with_exposed_provenance_mut::<T>(offset))
        .expect("lowcore fields are not at address 0");
    // SAFETY: the caller names a field of type `T`; real addresses below 8 KiB
    // always address the calling CPU's lowcore, which exists from reset on, and
    // fields are naturally aligned by `repr(C)`. Only this CPU (and its
    // hardware) accesses its own lowcore fields through these addresses.
    unsafe { VolatilePtr::new(p) }
}

/// Reads the calling CPU's lowcore field at `offset`.
///
/// # Safety
/// `offset` must be `offset_of!(Lowcore, f)` for a field `f` of type `T`.
unsafe fn read_own<T: Copy>(offset: usize) -> T {
    // SAFETY: forwarded to the caller.
    unsafe { own::<T>(offset) }.read()
}

/// Writes the calling CPU's lowcore field at `offset`.
///
/// # Safety
/// `offset` must be `offset_of!(Lowcore, f)` for a field `f` of type `T` that
/// the hardware does not use as a new PSW while the write could matter.
unsafe fn write_own<T: Copy>(offset: usize, value: T) {
    // SAFETY: forwarded to the caller, who keeps the write off live new PSWs.
    unsafe { own::<T>(offset) }.write(value);
}

/// Logical number of the calling CPU: one load from the lowcore.
#[inline(always)]
pub fn cpu_nr() -> usize {
    let nr: u64;
    // SAFETY: a load from the calling CPU's lowcore (base register 0, real
    // address 0x400), which the entry code or `smp::boot_secondary` filled in
    // before this CPU ran Rust code. The value never changes while the CPU runs.
    unsafe {
        core::arch::asm!(
            "lg {nr}, {off}",
            nr = out(reg) nr,
            off = const offset_of!(Lowcore, cpu_nr),
            options(nostack, preserves_flags, readonly, pure),
        );
    }
    nr as usize
}

/// What the hardware stored for the last external interruption.
pub fn ext_int_code() -> u16 {
    // SAFETY: `ext_int_code` is a `u16` field.
    unsafe { read_own(offset_of!(Lowcore, ext_int_code)) }
}

/// The PSW mask of the code the last external interruption interrupted.
pub fn external_old_psw_mask() -> u64 {
    // SAFETY: the PSW mask is the first `u64` of the `external_old_psw` field.
    unsafe { read_own(offset_of!(Lowcore, external_old_psw)) }
}

/// The CPU address stored with the last external call or emergency signal.
pub fn ext_cpu_addr() -> u16 {
    // SAFETY: `ext_cpu_addr` is a `u16` field.
    unsafe { read_own(offset_of!(Lowcore, ext_cpu_addr)) }
}

/// What the program-check entry code saved on the stack for the Rust handler:
/// the registers and the lowcore fields of the interruption, copied before
/// anything can overwrite them (the handler may enable interruptions, and a
/// program check in an interruption handler then nests).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PgmFrame {
    /// General registers at the interruption; restored on return.
    pub gprs: [u64; 16],
    /// Program old PSW; loaded on return (the handler may move its address).
    pub psw: Psw,
    /// Instruction length code (bytes, the halfword at 0x8c).
    pub ilc: u16,
    /// Program-interruption code (the halfword at 0x8e).
    pub code: u16,
    _pad: u32,
    /// Translation-exception identification (0xa8).
    pub trans_exc_code: u64,
    /// Breaking-event address (0x110).
    pub breaking_event_addr: u64,
    /// Program checks being handled on this CPU, this one included.
    pub depth: u64,
}

const _: () = {
    assert!(offset_of!(PgmFrame, psw) == 128);
    assert!(offset_of!(PgmFrame, ilc) == 144);
    assert!(offset_of!(PgmFrame, code) == 146);
    assert!(core::mem::size_of::<PgmFrame>().is_multiple_of(8));
};

/// Machine-check interruption code, old PSW and registers of the calling CPU.
pub fn machine_check() -> (u64, Psw, [u64; 16]) {
    // SAFETY: each offset names a field of the read type.
    unsafe {
        (
            read_own(offset_of!(Lowcore, mcck_interruption_code)),
            read_own(offset_of!(Lowcore, mcck_old_psw)),
            read_own(offset_of!(Lowcore, save_area_mcck)),
        )
    }
}

/// An interruption the kernel never asks for; its handler only reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unexpected {
    /// A supervisor call.
    Svc,
    /// An I/O interruption.
    Io,
    /// A restart interruption (`SIGP RESTART` to a running CPU, or the operator).
    Restart,
}

/// Old PSW of an unexpected interruption, with the registers the entry code saved.
pub fn unexpected_interruption(kind: Unexpected) -> (Psw, [u64; 16]) {
    let old_psw = match kind {
        Unexpected::Svc => offset_of!(Lowcore, svc_old_psw),
        Unexpected::Io => offset_of!(Lowcore, io_old_psw),
        Unexpected::Restart => offset_of!(Lowcore, restart_old_psw),
    };
    // SAFETY: `old_psw` is a `Psw` field; the save area is a `[u64; 16]` field.
    unsafe {
        (
            read_own(old_psw),
            read_own(offset_of!(Lowcore, save_area_misc)),
        )
    }
}

/// The calling CPU's tick period in TOD units (0: tick off).
pub fn tick_period() -> u64 {
    // SAFETY: `tick_period` is a `u64` field.
    unsafe { read_own(offset_of!(Lowcore, tick_period)) }
}

/// The calling CPU's next tick, in TOD units.
pub fn next_tick() -> u64 {
    // SAFETY: `next_tick` is a `u64` field.
    unsafe { read_own(offset_of!(Lowcore, next_tick)) }
}

/// Sets the calling CPU's tick state.
pub fn set_tick(period: u64, next: u64) {
    // SAFETY: `tick_period` and `next_tick` are `u64` fields of ours, not PSWs.
    unsafe {
        write_own(offset_of!(Lowcore, tick_period), period);
        write_own(offset_of!(Lowcore, next_tick), next);
    }
}

/// Records the calling CPU's own CPU address.
pub fn set_cpu_addr(addr: u16) {
    // SAFETY: `cpu_addr` is a `u64` field of ours.
    unsafe { write_own(offset_of!(Lowcore, cpu_addr), u64::from(addr)) }
}

/// Adds DAT to the calling CPU's six new PSWs, so that interruption handlers
/// translate through the loaded ASCE like the code they interrupt.
///
/// # Safety
/// The CPU has loaded an ASCE that maps the kernel 1:1 and keeps one loaded
/// from now on.
pub unsafe fn set_new_psws_dat() {
    for i in 0..6 {
        let off = NEW_PSWS + i * core::mem::size_of::<Psw>();
        // SAFETY: the six new PSWs are consecutive `Psw` fields from
        // `NEW_PSWS`. Only the mask changes, to a value that works as well as
        // the old one (the caller's contract), so an interruption taken
        // between the two halves of a store is still handled.
        unsafe {
            let psw: Psw = read_own(off);
            write_own(
                off,
                Psw {
                    mask: psw.mask | PSW_MASK_DAT,
                    addr: psw.addr,
                },
            );
        }
    }
}

/// Points the calling CPU's restart new PSW at `psw`.
pub fn set_restart_psw(psw: Psw) {
    // SAFETY: `restart_psw` is a `Psw` field. A restart interruption only comes
    // from `SIGP RESTART`, which nothing sends to a running CPU.
    unsafe { write_own(offset_of!(Lowcore, restart_psw), psw) }
}
