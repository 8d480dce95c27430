//! The rows: the race catalogue's eight (`../shared/SCENARIOS.md`) and the
//! demonstration row, one file each, each a type implementing
//! [`Row`](super::scenario::Row) (see the docs of [`crate::race`] and
//! `docs/new-row.md`).
//!
//! [`all`] is the registry, in catalogue order; a new row adds one line
//! `file::Type,` to the list below.

use super::scenario::Scenario;
use crate::mm::arch::Mmu;
use alloc::{vec, vec::Vec};

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
    gup_folding::GupFastFolding,
    zap_rmap::ZapRmapVsMkclean,
    ptfrag::PtfragRefcount,
    collapse_gup::CollapseVsGupFast,
    ptfree::PtfreeVsGupFast,
    skey_swap::SkeyDirtyVsSwapcache,
    nested_flush::NestedFlush,
}
