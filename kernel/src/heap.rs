//! The kernel heap: a `linked_list_allocator` over a static region in `.bss`,
//! behind a spin lock, so every CPU may allocate.
//!
//! The region is part of the kernel image and therefore reachable on every CPU
//! from the first instruction (before DAT is on, on s390x) and through the
//! kernel's 1:1 map after.

use linked_list_allocator::LockedHeap;

/// Heap size. Enough for per-CPU stacks and the self-tests.
pub const HEAP_SIZE: usize = 8 << 20;

#[repr(C, align(4096))]
struct HeapArea([u8; HEAP_SIZE]);

static mut HEAP_AREA: HeapArea = HeapArea([0; HEAP_SIZE]);

// Only the bare-metal kernel allocates from it; a host program linking this
// crate (unit tests, tools) keeps its own allocator.
#[cfg_attr(target_os = "none", global_allocator)]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Hands the heap area to the allocator. Called once, on the boot CPU, before
/// anything allocates.
pub fn init() {
    static DONE: spin::Once = spin::Once::new();
    DONE.call_once(|| {
        let start = core::ptr::addr_of_mut!(HEAP_AREA).cast::<u8>();
        // SAFETY: `HEAP_AREA` is used by nothing but the allocator, and `Once`
        // makes sure it is handed over exactly once.
        unsafe { ALLOCATOR.lock().init(start, HEAP_SIZE) };
    });
}

/// Bytes in use and free, for diagnostics.
pub fn usage() -> (usize, usize) {
    let heap = ALLOCATOR.lock();
    (heap.used(), heap.free())
}
