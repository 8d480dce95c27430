//! The kernel heap: a `linked_list_allocator` over a static region in `.bss`,
//! behind a spin lock, so every CPU may allocate.
//!
//! The lock is taken with interrupts disabled (once [`init_irq`] registered
//! the arch's `local_irq_save`/`restore`): interrupt handlers allocate and
//! free too (the tick runs RCU callbacks, which free boxed table lists), and
//! one that interrupted its own CPU inside the allocator would otherwise spin
//! forever on the lock that CPU holds.
//!
//! The region is part of the kernel image and therefore reachable on every CPU
//! from the first instruction (before DAT is on, on s390x) and through the
//! kernel's 1:1 map after.

use crate::arch::IrqFlags;
use core::alloc::{GlobalAlloc, Layout};
use linked_list_allocator::LockedHeap;

/// Heap size. Enough for per-CPU stacks and the self-tests.
pub const HEAP_SIZE: usize = 8 << 20;

#[repr(C, align(4096))]
struct HeapArea([u8; HEAP_SIZE]);

static mut HEAP_AREA: HeapArea = HeapArea([0; HEAP_SIZE]);

// Only the bare-metal kernel allocates from it; a host program linking this
// crate (unit tests, tools) keeps its own allocator.
#[cfg_attr(target_os = "none", global_allocator)]
static ALLOCATOR: IrqSafeHeap = IrqSafeHeap(LockedHeap::empty());

/// The arch's `local_irq_save` and `local_irq_restore`.
type IrqSaveRestore = (fn() -> IrqFlags, fn(IrqFlags));

/// [`IrqSaveRestore`], once registered.
static IRQ: spin::Once<IrqSaveRestore> = spin::Once::new();

/// The heap, locked with interrupts disabled.
struct IrqSafeHeap(LockedHeap);

impl IrqSafeHeap {
    fn with_irqs_off<R>(f: impl FnOnce() -> R) -> R {
        match IRQ.get() {
            Some(&(save, restore)) => {
                let flags = save();
                let r = f();
                restore(flags);
                r
            }
            // Before `init_irq`: the boot CPU alone, interrupts still off.
            None => f(),
        }
    }
}

// SAFETY: forwards to `LockedHeap`'s `GlobalAlloc`, only adding an interrupt
// save/restore around each call.
unsafe impl GlobalAlloc for IrqSafeHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        Self::with_irqs_off(|| unsafe { self.0.alloc(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        Self::with_irqs_off(|| unsafe { self.0.dealloc(ptr, layout) })
    }
}

/// Registers the arch's interrupt save/restore for the heap lock. Called once
/// on the boot CPU, before other CPUs start or interrupts are enabled.
pub fn init_irq<A: crate::Arch>() {
    IRQ.call_once(|| (A::local_irq_save, A::local_irq_restore));
}

/// Hands the heap area to the allocator. Called once, on the boot CPU, before
/// anything allocates.
pub fn init() {
    static DONE: spin::Once = spin::Once::new();
    DONE.call_once(|| {
        let start = core::ptr::addr_of_mut!(HEAP_AREA).cast::<u8>();
        // SAFETY: `HEAP_AREA` is used by nothing but the allocator, and `Once`
        // makes sure it is handed over exactly once.
        unsafe { ALLOCATOR.0.lock().init(start, HEAP_SIZE) };
    });
}

/// Bytes in use and free, for diagnostics.
pub fn usage() -> (usize, usize) {
    IrqSafeHeap::with_irqs_off(|| {
        let heap = ALLOCATOR.0.lock();
        (heap.used(), heap.free())
    })
}
