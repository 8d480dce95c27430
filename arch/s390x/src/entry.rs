//! The assembly entry code (`boot/s390x/entry.S`) and its link to Rust.
//!
//! Design: the assembly is kept to what cannot be Rust: the ELF entry (new
//! PSWs, boot stacks), the restart entry of secondary CPUs and the first-level
//! interruption handlers, which save the registers into the lowcore, switch
//! stacks and call the `s390x_*` Rust functions of [`crate::interrupt`] and
//! [`crate`]. The lowcore offsets, PSW masks and stack sizes it uses are
//! defined here from the Rust definitions, so the two cannot drift apart.
//!
//! Invariants: every handler saves all 16 general registers before touching
//! any; only the external-interruption handler (restoring them all and loading
//! the old PSW, wait bit cleared) and the program-check handler (from the
//! frame it saved, when the Rust handler resolved the fault) return.

use crate::interrupt::{INT_KIND_IO, INT_KIND_RESTART, INT_KIND_SVC, WAIT_ADDR_PGM_LOOP};
use crate::lowcore::{self, Lowcore, PgmFrame, Psw};
use core::mem::offset_of;

/// Size of each CPU's kernel stack.
pub const KERNEL_STACK_SIZE: usize = 64 << 10;
/// Size of each CPU's stack for external interruptions.
pub const ASYNC_STACK_SIZE: usize = 16 << 10;
/// Size of each CPU's stack for program checks and fatal interruptions.
pub const PANIC_STACK_SIZE: usize = 16 << 10;
/// The register save area a caller provides below the stack pointer (s390x ELF ABI).
pub const STACK_FRAME_OVERHEAD: usize = 160;
/// Nested program checks after which a CPU gives up (`entry.S`): the handler
/// itself keeps faulting.
pub const PGM_MAX_DEPTH: u64 = 4;

core::arch::global_asm!(
    ".set __LC_RESTART_PSW, {restart_psw}",
    ".set __LC_EXT_OLD_PSW, {ext_old_psw}",
    ".set __LC_EXT_OLD_PSW_BYTE1, {ext_old_psw} + 1",
    ".set __LC_SAVE_AREA_EXT, {save_ext}",
    ".set __LC_SAVE_AREA_PGM, {save_pgm}",
    ".set __LC_SAVE_AREA_MCCK, {save_mcck}",
    ".set __LC_SAVE_AREA_MISC, {save_misc}",
    ".set __LC_CPU_NR, {cpu_nr}",
    ".set __LC_KERNEL_STACK, {kernel_stack}",
    ".set __LC_ASYNC_STACK, {async_stack}",
    ".set __LC_PANIC_STACK, {panic_stack}",
    ".set __LC_PGM_DEPTH, {pgm_depth}",
    ".set __LC_PGM_OLD_PSW, {pgm_old_psw}",
    ".set __LC_PGM_ILC, {pgm_ilc}",
    ".set __LC_TRANS_EXC_CODE, {teid}",
    ".set __LC_BREAKING_EVENT_ADDR, {bea}",
    ".set __LC_RETURN_PSW, {return_psw}",
    ".set __PGM_MAX_DEPTH, {pgm_max_depth}",
    ".set __PGM_FRAME_SIZE, {pgm_frame_size}",
    ".set __PGM_FRAME_GPRS, {pgm_frame_gprs}",
    ".set __PGM_FRAME_PSW, {pgm_frame_psw}",
    ".set __PGM_FRAME_ILC, {pgm_frame_ilc}",
    ".set __PGM_FRAME_TEID, {pgm_frame_teid}",
    ".set __PGM_FRAME_BEA, {pgm_frame_bea}",
    ".set __PGM_FRAME_DEPTH, {pgm_frame_depth}",
    ".set __PSW_HANDLER, {psw_handler}",
    ".set __PSW_KERNEL, {psw_kernel}",
    ".set __PSW_DISABLED_WAIT, {psw_disabled_wait}",
    ".set __PSW_BYTE1_NOT_WAIT, {byte1_not_wait}",
    ".set __WAIT_ADDR_PGM_LOOP, {wait_pgm_loop}",
    ".set __STACK_FRAME_OVERHEAD, {frame}",
    ".set __KERNEL_STACK_SIZE, {kernel_stack_size}",
    ".set __ASYNC_STACK_SIZE, {async_stack_size}",
    ".set __PANIC_STACK_SIZE, {panic_stack_size}",
    ".set __INT_KIND_SVC, {kind_svc}",
    ".set __INT_KIND_IO, {kind_io}",
    ".set __INT_KIND_RESTART, {kind_restart}",
    include_str!("../../../boot/s390x/entry.S"),
    restart_psw = const lowcore::NEW_PSWS,
    ext_old_psw = const offset_of!(Lowcore, external_old_psw),
    save_ext = const offset_of!(Lowcore, save_area_ext),
    save_pgm = const offset_of!(Lowcore, save_area_pgm),
    save_mcck = const offset_of!(Lowcore, save_area_mcck),
    save_misc = const offset_of!(Lowcore, save_area_misc),
    cpu_nr = const offset_of!(Lowcore, cpu_nr),
    kernel_stack = const offset_of!(Lowcore, kernel_stack),
    async_stack = const offset_of!(Lowcore, async_stack),
    panic_stack = const offset_of!(Lowcore, panic_stack),
    pgm_depth = const offset_of!(Lowcore, pgm_depth),
    pgm_old_psw = const offset_of!(Lowcore, program_old_psw),
    pgm_ilc = const offset_of!(Lowcore, pgm_ilc),
    teid = const offset_of!(Lowcore, trans_exc_code),
    bea = const offset_of!(Lowcore, breaking_event_addr),
    return_psw = const offset_of!(Lowcore, return_psw),
    pgm_max_depth = const PGM_MAX_DEPTH,
    pgm_frame_size = const core::mem::size_of::<PgmFrame>(),
    pgm_frame_gprs = const offset_of!(PgmFrame, gprs),
    pgm_frame_psw = const offset_of!(PgmFrame, psw),
    pgm_frame_ilc = const offset_of!(PgmFrame, ilc),
    pgm_frame_teid = const offset_of!(PgmFrame, trans_exc_code),
    pgm_frame_bea = const offset_of!(PgmFrame, breaking_event_addr),
    pgm_frame_depth = const offset_of!(PgmFrame, depth),
    psw_handler = const lowcore::PSW_HANDLER,
    psw_kernel = const lowcore::PSW_KERNEL,
    psw_disabled_wait = const lowcore::PSW_DISABLED_WAIT,
    byte1_not_wait = const !((lowcore::PSW_MASK_WAIT >> 48) as u8),
    wait_pgm_loop = const WAIT_ADDR_PGM_LOOP,
    frame = const STACK_FRAME_OVERHEAD,
    kernel_stack_size = const KERNEL_STACK_SIZE,
    async_stack_size = const ASYNC_STACK_SIZE,
    panic_stack_size = const PANIC_STACK_SIZE,
    kind_svc = const INT_KIND_SVC,
    kind_io = const INT_KIND_IO,
    kind_restart = const INT_KIND_RESTART,
);

unsafe extern "C" {
    /// The six new PSWs of every lowcore, in lowcore order (`entry.S`).
    static s390x_new_psws: [Psw; 6];
    /// Restart entry of a secondary CPU (`entry.S`); only its address is used.
    fn s390x_secondary_entry();
}

/// The new PSWs every lowcore holds: restart, external, SVC, program, machine
/// check, I/O.
pub fn new_psws() -> [Psw; 6] {
    // SAFETY: `s390x_new_psws` is read-only data defined in `entry.S` with
    // exactly this layout (six pairs of `.quad`, 8-byte aligned).
    unsafe { s390x_new_psws }
}

/// The restart new PSW that starts a secondary CPU in `s390x_secondary_main`.
pub fn secondary_restart_psw() -> Psw {
    Psw {
        mask: lowcore::PSW_KERNEL,
        addr: s390x_secondary_entry as *const () as u64,
    }
}
