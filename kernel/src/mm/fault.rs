//! Hardware page faults: the generic handler the backends call.
//!
//! The backend decodes the fault ([`FaultInfo`]) and calls [`handle_mm_fault`]
//! with interrupts in the state the fault left them. Anonymous memory is paged in
//! on demand and copy-on-write faults break sharing. A fault that cannot be
//! resolved is returned as an error: the backend then applies a probe fixup
//! ([`super::arch::Mmu::probe_load`]) or reports the fault and panics, failing
//! the run.

use super::arch::{FaultInfo, Mmu};
use crate::percpu;
use core::sync::atomic::Ordering;

/// Why a fault could not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// The CPU runs no task mm.
    NoMm,
    /// No VMA covers the address.
    NoVma,
    /// The VMA forbids the access.
    AccessDenied,
    /// No memory for a page or a table.
    OutOfMemory,
}

impl core::fmt::Display for FaultError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NoMm => "no task mm on this CPU",
            Self::NoVma => "no VMA covers the address",
            Self::AccessDenied => "the VMA forbids the access",
            Self::OutOfMemory => "out of memory",
        })
    }
}

/// Handles a hardware page fault on the calling CPU. Counts it; returns `Ok`
/// when the access can be retried.
pub fn handle_mm_fault<A: Mmu>(info: FaultInfo) -> Result<(), FaultError> {
    percpu::this_cpu::<A>()
        .page_faults
        .fetch_add(1, Ordering::Relaxed);
    crate::race::trace::record(
        crate::race::trace::Kind::Fault,
        info.addr,
        info.write as u64,
    );
    let Some(mm) = super::mm::current_mm::<A>() else {
        return Err(FaultError::NoMm);
    };
    super::memory::do_user_fault(mm, info)
}
