//! The console: SCLP (service-call logical processor) WRITE EVENT DATA with
//! ASCII console data events, as QEMU's `sclpconsole` device takes them.
//!
//! Design: the text goes into an SCCB (service-call control block) that the
//! `SERVC` instruction hands to the SCLP. Each CPU has its own 4 KiB,
//! page-aligned SCCB in `.bss` (below 2 GiB, as the SCLP requires), so CPUs
//! never share a buffer: the generic console lock orders whole lines, and a
//! panic that bypasses that lock after its timeout still cannot corrupt
//! another CPU's block. QEMU completes the call synchronously under its own
//! lock, so the SCCB is free again once `SERVC` returns. The same call, READ
//! SCP INFO on its own SCCB, gives the storage size ([`read_storage_size`]).
//!
//! No `volatile` crate here: the SCLP is no MMIO register but a service call
//! (`SERVC` hands it the SCCB's address and the block is read and written by
//! the instruction, with an `asm!` memory clobber ordering our accesses
//! around it); the SCCB is plain memory that only its CPU touches between
//! calls.
//!
//! Invariants:
//! - A CPU uses only SCCB number `cpu_nr`, marked busy for the duration of the
//!   call. If the CPU re-enters the writer (a program check while it prints),
//!   the inner call takes the shared emergency SCCB under a try-lock, or drops
//!   the text if that is busy too: losing a line beats a corrupted block.

use crate::lowcore;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use quiesce_kernel::NR_CPUS;

/// SCLP command: WRITE EVENT DATA.
const SCLP_CMDW_WRITE_EVENT_DATA: u32 = 0x0076_0005;
/// SCLP command: READ SCP INFO, forced and plain (Linux tries them in this order).
const SCLP_CMDW_READ_SCP_INFO: [u32; 2] = [0x0012_0001, 0x0002_0001];
/// SCCB response code of a completed read.
const SCLP_RC_NORMAL_READ_COMPLETION: u16 = 0x0010;
/// Event type: ASCII console data (QEMU `sclpconsole`).
const EVTYP_VT220_MSG: u8 = 0x1a;
/// SCCB header: length (2), function code (1), control mask (3), response code (2).
const SCCB_HEADER_LEN: usize = 8;
/// Event buffer header: length (2), type (1), flags (1), reserved (2).
const EVBUF_HEADER_LEN: usize = 6;
/// SCCB size: one page.
const SCCB_SIZE: usize = 4096;
/// Text bytes per call.
const MAX_TEXT: usize = SCCB_SIZE - SCCB_HEADER_LEN - EVBUF_HEADER_LEN;

/// One service-call control block.
#[repr(C, align(4096))]
struct Sccb(UnsafeCell<[u8; SCCB_SIZE]>);

/// An SCCB and the flag that says it is in use.
struct SccbSlot {
    busy: AtomicBool,
    sccb: Sccb,
}

// SAFETY: the SCCB is only accessed by the CPU that set `busy` (acquire) and
// until it clears it (release); see `with_sccb`.
unsafe impl Sync for SccbSlot {}

impl SccbSlot {
    const fn new() -> Self {
        Self {
            busy: AtomicBool::new(false),
            sccb: Sccb(UnsafeCell::new([0; SCCB_SIZE])),
        }
    }

    /// Runs `f` on the SCCB if it is free; returns whether it ran.
    fn try_with(&self, f: impl FnOnce(&mut [u8; SCCB_SIZE])) -> bool {
        if self.busy.swap(true, Ordering::Acquire) {
            return false;
        }
        // SAFETY: `busy` was false and is now ours: no other user of this slot
        // exists until we store false again below.
        f(unsafe { &mut *self.sccb.0.get() });
        self.busy.store(false, Ordering::Release);
        true
    }
}

/// Per-CPU SCCBs, indexed by logical CPU number.
static SCCBS: [SccbSlot; NR_CPUS] = [const { SccbSlot::new() }; NR_CPUS];
/// The SCCB of a CPU that re-entered the writer.
static EMERGENCY_SCCB: SccbSlot = SccbSlot::new();

/// Writes `bytes` to the console. Safe on any CPU, in any interrupt state, from
/// exception and panic context.
pub fn write(bytes: &[u8]) {
    let cpu = lowcore::cpu_nr();
    for chunk in bytes.chunks(MAX_TEXT) {
        let f = |sccb: &mut [u8; SCCB_SIZE]| write_event_data(sccb, chunk);
        if cpu < NR_CPUS && SCCBS[cpu].try_with(f) {
            continue;
        }
        for _ in 0..100_000 {
            if EMERGENCY_SCCB.try_with(f) {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

/// The SCCB of READ SCP INFO (boot CPU, once).
static INFO_SCCB: SccbSlot = SccbSlot::new();

/// Storage size in bytes from READ SCP INFO: `rnmax` storage increments of
/// `rnsize` MiB each (the 16-bit and 8-bit fields at offsets 8 and 10, or,
/// when they are 0, `rnsize2` and `rnmax2` at 100 and 104; Linux
/// `sclp_early_get_memsize`). `None` if the SCLP refuses both commands.
pub fn read_storage_size() -> Option<u64> {
    let mut size = None;
    INFO_SCCB.try_with(|sccb| {
        for command in SCLP_CMDW_READ_SCP_INFO {
            sccb.fill(0);
            sccb[0..2].copy_from_slice(&(SCCB_SIZE as u16).to_be_bytes());
            if servc(command, sccb) != 0
                || u16::from_be_bytes([sccb[6], sccb[7]]) != SCLP_RC_NORMAL_READ_COMPLETION
            {
                continue;
            }
            let be = |at: usize, len: usize| {
                sccb[at..at + len]
                    .iter()
                    .fold(0u64, |v, &b| (v << 8) | u64::from(b))
            };
            let (rnmax, rnsize) = (be(8, 2), be(10, 1));
            let rnsize = if rnsize != 0 { rnsize } else { be(100, 4) };
            let rnmax = if rnmax != 0 { rnmax } else { be(104, 8) };
            size = rnmax.checked_mul(rnsize << 20);
            break;
        }
    });
    size
}

/// Fills `sccb` with one ASCII console data event carrying `text` and issues
/// WRITE EVENT DATA.
fn write_event_data(sccb: &mut [u8; SCCB_SIZE], text: &[u8]) {
    let evbuf_len = EVBUF_HEADER_LEN + text.len();
    let total = SCCB_HEADER_LEN + evbuf_len;
    sccb[..SCCB_HEADER_LEN + EVBUF_HEADER_LEN].fill(0);
    sccb[0..2].copy_from_slice(&(total as u16).to_be_bytes());
    sccb[8..10].copy_from_slice(&(evbuf_len as u16).to_be_bytes());
    sccb[10] = EVTYP_VT220_MSG;
    sccb[SCCB_HEADER_LEN + EVBUF_HEADER_LEN..total].copy_from_slice(text);
    // Errors are not reported: the console is where they would go. The
    // response code (bytes 6..8, 0x0020 on success) is left for a debugger.
    let _ = servc(SCLP_CMDW_WRITE_EVENT_DATA, sccb);
}

/// `SERVC`: issues an SCLP command on `sccb`, retrying while the SCLP is busy.
/// Returns the condition code (0: done, 3: no SCLP).
fn servc(command: u32, sccb: &mut [u8; SCCB_SIZE]) -> u32 {
    let addr = sccb.as_mut_ptr() as u64;
    debug_assert!(addr < 1 << 31 && addr.is_multiple_of(SCCB_SIZE as u64));
    loop {
        let cc: u32;
        // SAFETY: SERVC is privileged (we run in supervisor state) and reads and
        // writes the 4 KiB SCCB at `addr`, which we hold exclusively (`try_with`)
        // and which is page-aligned and below 2 GiB (`.bss` of the image, see
        // linker.ld). QEMU completes the command before SERVC returns, so the
        // SCCB is not used after this block. Encoding: 0xb220 with R1=r2, R2=r3.
        unsafe {
            core::arch::asm!(
                ".insn rre, 0xb2200000, %r2, %r3",
                "ipm {cc}",
                "srl {cc}, 28",
                cc = out(reg) cc,
                in("r2") u64::from(command),
                in("r3") addr,
                options(nostack),
            );
        }
        if cc != 2 {
            return cc;
        }
        core::hint::spin_loop();
    }
}
