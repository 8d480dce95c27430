//! The rows: the race catalogue's eight (`../shared/SCENARIOS.md`) and the
//! demonstration row, one file each, each a type implementing
//! [`Row`](super::scenario::Row) (see the docs of [`crate::race`] and
//! `docs/new-row.md`).
//!
//! [`all`] is the registry, in catalogue order; a new row adds one line
//! `file::Type,` to the list below.

use super::scenario::{RunMm, Scenario};
use crate::mm::arch::Mmu;
use crate::mm::memory;
use crate::mm::mm::Mm;
use alloc::{boxed::Box, vec, vec::Vec};

/// Declares each row's module and lists the rows in [`all`].
macro_rules! registry {
    ($($(#[$doc:meta])* $module:ident::$row:ident,)*) => {
        $($(#[$doc])* pub mod $module;)*

        /// Every row, in catalogue order.
        pub fn all<A: Mmu>() -> Vec<Scenario<A>> {
            vec![$(Scenario::of::<$module::$row>()),*]
        }
    };
}

registry! {
    demo::DemoLockVsPut,
    wp_unlock::WpUnlockVsZap,
    collapse_gup::CollapseVsGupFast,
}

/// A run's mm ([`RunMm`]) for a row's `prepare`: a new address space with
/// what `populate` maps in it. Without memory for it the slot is empty, and
/// the run's first iteration fails (no mm for the run).
pub fn run_mm_with<A: Mmu, E>(populate: impl FnOnce(&Mm<A>) -> Result<(), E>) -> RunMm<A> {
    let Some(mm) = Mm::<A>::new().map(Box::new) else {
        return RunMm::default();
    };
    if populate(&mm).is_ok() {
        RunMm::new(mm)
    } else {
        memory::exit_mmap(*mm);
        RunMm::default()
    }
}
