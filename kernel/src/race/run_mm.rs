//! An address space kept for a whole run of a row: built by the row's
//! `set_variant`, lent to each iteration's `Ctx` by `setup`, given back by
//! `teardown`, torn down by `reset`. Building and tearing down an mm with
//! its mappings per iteration can cost more than the race itself.
//!
//! Invariants: a [`RunMm`] holds at most one mm, of the kernel's one
//! architecture (`put` and `take` are called with the same `A`); while an
//! iteration has it, the slot is empty, so only that iteration owns it.

use crate::mm::arch::Mmu;
use crate::mm::memory;
use crate::mm::mm::Mm;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicUsize, Ordering};

/// The slot (`Box::into_raw` of an `Mm<A>`, 0 when empty).
pub struct RunMm(AtomicUsize);

impl RunMm {
    /// An empty slot.
    pub const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// Stores `mm`; an mm already there is torn down.
    pub fn put<A: Mmu>(&self, mm: Box<Mm<A>>) {
        let old = self.0.swap(Box::into_raw(mm) as usize, Ordering::AcqRel);
        if old != 0 {
            // SAFETY: `put` stored a `Box::into_raw` of an `Mm<A>` (the
            // kernel's one arch); swapping it out made us its only owner.
            memory::exit_mmap(*unsafe { Box::from_raw(old as *mut Mm<A>) });
        }
    }

    /// Takes the mm out, if there is one.
    pub fn take<A: Mmu>(&self) -> Option<Box<Mm<A>>> {
        let raw = self.0.swap(0, Ordering::AcqRel);
        // SAFETY: as in `put`: a `Box::into_raw` of an `Mm<A>`, now ours.
        (raw != 0).then(|| unsafe { Box::from_raw(raw as *mut Mm<A>) })
    }

    /// Tears the mm down, if there is one (no CPU may run it).
    pub fn destroy<A: Mmu>(&self) {
        if let Some(mm) = self.take::<A>() {
            memory::exit_mmap(*mm);
        }
    }
}

impl Default for RunMm {
    fn default() -> Self {
        Self::new()
    }
}
