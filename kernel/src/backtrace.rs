//! Backtraces of a panic or an unhandled exception: the frame-pointer chain,
//! printed as KTAP diagnostics for the host to symbolise (Linux: `dump_stack`,
//! `show_stack`, the arch's `unwind_frame`).
//!
//! Design. Both kernels keep a frame chain in every function (x86-64:
//! `-C force-frame-pointers=yes`, `rbp` points at [saved `rbp`, return
//! address]; s390x: the `backchain` target feature, `0(%r15)` holds the
//! caller's stack pointer and the caller's frame holds the saved `%r14` at
//! offset 112). The arch says where a walk starts ([`Arch::frame_pointer`],
//! or the registers of an exception) and how one frame leads to the next
//! ([`Arch::unwind_frame`]); the walk here never names an architecture. The
//! backend's exception handler calls [`show_stack`] with the faulting PC and
//! frame pointer before it panics; a panic calls [`dump_stack`] unless its CPU
//! printed an exception's backtrace already.
//!
//! The format, one line per frame, then one closing line:
//!
//! ```text
//! # backtrace: cpu=2 #0 pc=0x00000000000812a4
//! # backtrace: cpu=2 lr=0x000000000008d5c4
//! # backtrace: cpu=2 #1 ra=0x000000000007fd02
//! # backtrace: cpu=2 end (null frame pointer)
//! ```
//!
//! `pc` is where an exception hit (only as `#0`, only for exceptions); `ra`
//! is a return address, the instruction after a call, so the call itself is
//! at `ra - 1` and before. A panic's backtrace starts with `#0 ra=` (the
//! return into the panic handler). Addresses are 16 hex digits; frames are
//! numbered from 0 without gaps; the `end` line says why the walk stopped.
//! `lr`, unnumbered and only right after an exception's `#0` on an
//! architecture with a link register (s390x `%r14`), is the register's value
//! at the exception: the return address of the faulting function if that is a
//! leaf without a frame of its own (whose caller the chain then skips), else a
//! return into the faulting function itself or scratch. Only the host, with
//! the symbols, can tell: it keeps `lr` when it names a function other than
//! `#0`'s and the next frame's. `xtask::backtrace` parses these lines.
//!
//! Invariants, so the walk can never fault or loop:
//! - it reads only 8-aligned words inside [`Arch::kernel_image`], which holds
//!   every stack (boot stacks in `.bss`, the others in the heap, also `.bss`)
//!   and is mapped on every CPU at all times;
//! - every frame lies strictly above the one before (stacks grow down) and at
//!   most [`MAX_DEPTH`] lines are printed;
//! - it allocates nothing and takes no lock but the console's, through the
//!   emergency printer.
//!
//! Not crossed: an interrupt on a stack of its own (the s390x external and
//! program-check stacks end their chain with a zero back chain); on x86-64,
//! interrupts run on the interrupted stack and the chain goes on through them.

use crate::{kprintln_emergency, Arch};
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

/// Frames printed at most, `#0` included.
pub const MAX_DEPTH: usize = 32;

/// One step of a walk, as [`Arch::unwind_frame`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackFrame {
    /// The caller's frame pointer (0 at the bottom of the stack).
    pub fp: usize,
    /// The return address into the caller.
    pub ra: usize,
}

impl StackFrame {
    /// What [`Arch::unwind_frame`] returns for the outermost frame, which has
    /// no caller (s390x: a zero back chain).
    pub const BOTTOM: StackFrame = StackFrame { fp: 0, ra: 0 };
}

/// Why a walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkEnd {
    /// The chain ended with a null frame pointer: the bottom of the stack.
    Bottom,
    /// A frame pointer not aligned to a word.
    Misaligned(usize),
    /// A frame pointer outside the kernel image.
    OutsideImage(usize),
    /// A frame not above the one before (the chain would loop).
    NotAbove(usize),
    /// The arch could not read the frame (a word it needs lies outside the
    /// kernel image).
    Unreadable(usize),
    /// A return address outside the kernel image (or zero).
    BadReturnAddress(usize),
    /// [`MAX_DEPTH`] frames printed.
    DepthLimit,
}

impl core::fmt::Display for WalkEnd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Bottom => f.write_str("null frame pointer"),
            Self::Misaligned(fp) => write!(f, "misaligned frame pointer {fp:#x}"),
            Self::OutsideImage(fp) => write!(f, "frame pointer {fp:#x} outside the kernel image"),
            Self::NotAbove(fp) => write!(f, "frame pointer {fp:#x} not above the previous one"),
            Self::Unreadable(fp) => write!(f, "frame at {fp:#x} not readable"),
            Self::BadReturnAddress(ra) => write!(f, "return address {ra:#x} outside the kernel"),
            Self::DepthLimit => write!(f, "depth limit {MAX_DEPTH}"),
        }
    }
}

/// CPUs whose exception handler printed a backtrace (bit per CPU): their
/// panic does not print a second one.
static SHOWN: AtomicU64 = AtomicU64::new(0);

fn cpu_bit(cpu: usize) -> u64 {
    1u64.checked_shl(cpu as u32).unwrap_or(0)
}

/// Reads the word at `addr` if it is aligned and lies inside `image`.
fn read_word(image: &Range<usize>, addr: usize) -> Option<usize> {
    let end = addr.checked_add(core::mem::size_of::<usize>())?;
    if !addr.is_multiple_of(core::mem::align_of::<usize>()) || addr < image.start || end > image.end
    {
        return None;
    }
    // SAFETY: `addr` is word-aligned and the word lies inside `image`, which
    // the caller vouches is mapped and readable for as long as the walk runs
    // (the kernel image on the kernels, a live buffer in the host tests). The
    // word may be written concurrently (a stack is memory like any other):
    // the volatile read is Linux's READ_ONCE, and the value is only trusted
    // after the walk's checks.
    Some(unsafe { core::ptr::read_volatile(core::ptr::with_exposed_provenance::<usize>(addr)) })
}

/// Walks the chain from the frame pointer `fp`: calls `emit` with each return
/// address, at most `max` of them, and returns why it stopped. `unwind` is
/// [`Arch::unwind_frame`]; it reads memory only through the reader it is
/// given, which refuses words outside `image`.
pub fn walk(
    image: Range<usize>,
    mut fp: usize,
    max: usize,
    unwind: impl Fn(usize, &mut dyn FnMut(usize) -> Option<usize>) -> Option<StackFrame>,
    mut emit: impl FnMut(usize),
) -> WalkEnd {
    let mut read = |addr: usize| read_word(&image, addr);
    for _ in 0..max {
        if fp == 0 {
            return WalkEnd::Bottom;
        }
        if !fp.is_multiple_of(core::mem::align_of::<usize>()) {
            return WalkEnd::Misaligned(fp);
        }
        if !image.contains(&fp) {
            return WalkEnd::OutsideImage(fp);
        }
        let Some(frame) = unwind(fp, &mut read) else {
            return WalkEnd::Unreadable(fp);
        };
        if frame == StackFrame::BOTTOM {
            return WalkEnd::Bottom;
        }
        if !image.contains(&frame.ra) {
            return WalkEnd::BadReturnAddress(frame.ra);
        }
        emit(frame.ra);
        if frame.fp != 0 && frame.fp <= fp {
            return WalkEnd::NotAbove(frame.fp);
        }
        fp = frame.fp;
    }
    WalkEnd::DepthLimit
}

/// Prints the chain from `fp`, numbering its frames from `first`.
fn print_chain<A: Arch>(cpu: usize, fp: usize, first: usize) {
    let mut n = first;
    let end = walk(
        A::kernel_image(),
        fp,
        MAX_DEPTH.saturating_sub(first),
        A::unwind_frame,
        |ra| {
            kprintln_emergency!("# backtrace: cpu={cpu} #{n} ra={ra:#018x}");
            n += 1;
        },
    );
    kprintln_emergency!("# backtrace: cpu={cpu} end ({end})");
}

/// Prints the calling CPU's backtrace from the caller of `dump_stack` up
/// (Linux `dump_stack`). `#0` is the return into the caller.
#[inline(never)]
pub fn dump_stack<A: Arch>() {
    let cpu = A::smp_processor_id();
    // The frame of this very function: live until it returns.
    print_chain::<A>(cpu, A::frame_pointer(), 0);
}

/// Prints the backtrace of an exception in kernel context: `pc` as `#0`,
/// the link register `lr` where the architecture has one, then the chain
/// from the frame pointer `fp` the exception interrupted (Linux `show_stack`
/// of the exception's registers). The panic that follows on this CPU prints
/// no second backtrace.
pub fn show_stack<A: Arch>(pc: usize, lr: Option<usize>, fp: usize) {
    let cpu = A::smp_processor_id();
    SHOWN.fetch_or(cpu_bit(cpu), Ordering::AcqRel);
    kprintln_emergency!("# backtrace: cpu={cpu} #0 pc={pc:#018x}");
    if let Some(lr) = lr.filter(|lr| A::kernel_image().contains(lr)) {
        kprintln_emergency!("# backtrace: cpu={cpu} lr={lr:#018x}");
    }
    print_chain::<A>(cpu, fp, 1);
}

/// Whether an exception on `cpu` printed its backtrace already.
pub(crate) fn shown(cpu: usize) -> bool {
    SHOWN.load(Ordering::Acquire) & cpu_bit(cpu) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The x86-64 layout: `fp` points at [caller's fp, return address].
    fn x86_like(fp: usize, read: &mut dyn FnMut(usize) -> Option<usize>) -> Option<StackFrame> {
        Some(StackFrame {
            fp: read(fp)?,
            ra: read(fp + 8)?,
        })
    }

    /// The s390x back-chain layout: `0(fp)` is the caller's stack pointer,
    /// whose frame holds the return address at 112.
    fn s390x_like(fp: usize, read: &mut dyn FnMut(usize) -> Option<usize>) -> Option<StackFrame> {
        let caller = read(fp)?;
        if caller == 0 {
            return Some(StackFrame::BOTTOM);
        }
        Some(StackFrame {
            fp: caller,
            ra: read(caller + 112)?,
        })
    }

    /// A fake stack: words, addresses of words, and the range it spans.
    struct Stack(Vec<usize>);

    impl Stack {
        fn new(words: usize) -> Self {
            Stack(vec![0; words])
        }
        fn addr(&self, word: usize) -> usize {
            self.0.as_ptr() as usize + word * 8
        }
        fn range(&self) -> Range<usize> {
            self.addr(0)..self.addr(self.0.len())
        }
        fn walk(
            &self,
            fp: usize,
            unwind: impl Fn(usize, &mut dyn FnMut(usize) -> Option<usize>) -> Option<StackFrame>,
        ) -> (Vec<usize>, WalkEnd) {
            let mut ras = Vec::new();
            let end = walk(self.range(), fp, MAX_DEPTH, unwind, |ra| ras.push(ra));
            (ras, end)
        }
    }

    #[test]
    fn x86_chain_to_the_bottom() {
        let mut s = Stack::new(64);
        // Three frames at words 4, 10, 20; return addresses inside the range.
        let ra = |i: usize| s.addr(40 + i);
        let (r0, r1, r2) = (ra(0), ra(1), ra(2));
        let (f1, f2) = (s.addr(10), s.addr(20));
        s.0[4] = f1;
        s.0[5] = r0;
        s.0[10] = f2;
        s.0[11] = r1;
        s.0[20] = 0;
        s.0[21] = r2;
        let (ras, end) = s.walk(s.addr(4), x86_like);
        assert_eq!(ras, [r0, r1, r2]);
        assert_eq!(end, WalkEnd::Bottom);
    }

    #[test]
    fn s390x_back_chain() {
        let mut s = Stack::new(128);
        // Frames (stack pointers) at words 0, 30 and 60, each 30 words deep.
        let (sp0, sp1, sp2) = (s.addr(0), s.addr(30), s.addr(60));
        let (r0, r1) = (s.addr(100), s.addr(101));
        s.0[0] = sp1;
        s.0[30 + 14] = r0; // 112(sp1): the saved r14 of the function at sp0
        s.0[30] = sp2;
        s.0[60 + 14] = r1;
        s.0[60] = 0;
        let (ras, end) = s.walk(sp0, s390x_like);
        assert_eq!(ras, [r0, r1]);
        assert_eq!(end, WalkEnd::Bottom);
    }

    #[test]
    fn bad_frame_pointers_stop_the_walk() {
        let mut s = Stack::new(32);
        let inside = s.addr(30);
        // Misaligned and out-of-range starts never read.
        assert_eq!(
            s.walk(s.addr(2) + 3, x86_like),
            (vec![], WalkEnd::Misaligned(s.addr(2) + 3))
        );
        let outside = s.range().end + 64;
        assert_eq!(
            s.walk(outside, x86_like),
            (vec![], WalkEnd::OutsideImage(outside))
        );
        // A frame whose caller lies below it would loop.
        s.0[8] = s.addr(4);
        s.0[9] = inside;
        assert_eq!(
            s.walk(s.addr(8), x86_like),
            (vec![inside], WalkEnd::NotAbove(s.addr(4)))
        );
        // A frame pointer to itself, too.
        s.0[8] = s.addr(8);
        assert_eq!(s.walk(s.addr(8), x86_like).1, WalkEnd::NotAbove(s.addr(8)));
        // The last word of the range: its return address would be outside.
        let last = s.addr(31);
        assert_eq!(s.walk(last, x86_like), (vec![], WalkEnd::Unreadable(last)));
        // A return address outside the image (garbage, or a zero slot).
        s.0[8] = s.addr(12);
        s.0[9] = 0;
        assert_eq!(
            s.walk(s.addr(8), x86_like),
            (vec![], WalkEnd::BadReturnAddress(0))
        );
        // s390x: a back chain leading outside is refused before the read.
        s.0[0] = outside;
        assert_eq!(
            s.walk(s.addr(0), s390x_like).1,
            WalkEnd::Unreadable(s.addr(0))
        );
    }

    #[test]
    fn the_depth_is_bounded() {
        let mut s = Stack::new(2 * MAX_DEPTH + 8);
        for i in 0..MAX_DEPTH + 2 {
            s.0[2 * i] = s.addr(2 * i + 2);
            s.0[2 * i + 1] = s.addr(2 * i + 1);
        }
        let (ras, end) = s.walk(s.addr(0), x86_like);
        assert_eq!(ras.len(), MAX_DEPTH);
        assert_eq!(end, WalkEnd::DepthLimit);
    }
}
