//! The mm's variant knobs, saved and restored as one value.
//!
//! Each knob stands for a difference between Linux kernels that Linux
//! makes at compile time or by architecture (when pages are freed, the
//! order `do_wp_page` unlocks in, how page-table fragments are counted,
//! which GUP-fast walk runs, ...). A row's variant sets the knobs of the
//! kernel it models; the race runner saves every knob before the variant
//! is set and restores them after the run ([`Knobs::save`],
//! [`Knobs::restore`]), so a row never puts a knob back itself.
//!
//! Invariant: knobs change only between runs (no role runs), on the
//! controller.

use super::arch::Mmu;
use super::dirty::{self, DirtyTracking, SkeyTransfer};
use super::frag::{self, FragPolicy};
use super::gup::{self, GupWalk};
use super::memory::{self, WpUnlock};
use super::mmu_gather::{self, TlbPolicy};
use super::swap_state::{self, SwapCacheOrder, SwapDirtyAops};

/// Every knob's value at one moment.
#[derive(Clone, Copy, Debug)]
#[must_use = "restore the knobs"]
pub struct Knobs {
    tlb: TlbPolicy,
    wp_unlock: WpUnlock,
    frag: FragPolicy,
    gup_walk: GupWalk,
    gup_pmd_recheck: bool,
    swap_order: SwapCacheOrder,
    swap_aops: SwapDirtyAops,
    skey_transfer: SkeyTransfer,
    dirty_tracking: DirtyTracking,
}

impl Knobs {
    /// The knobs as they are now.
    pub fn save() -> Self {
        Knobs {
            tlb: mmu_gather::tlb_policy(),
            wp_unlock: memory::wp_unlock_order(),
            frag: frag::policy(),
            gup_walk: gup::gup_walk(),
            gup_pmd_recheck: gup::gup_pmd_recheck(),
            swap_order: swap_state::order(),
            swap_aops: swap_state::swap_dirty_aops(),
            skey_transfer: dirty::skey_transfer(),
            dirty_tracking: dirty::dirty_tracking(),
        }
    }

    /// Puts every knob back to its saved value.
    pub fn restore<A: Mmu>(self) {
        mmu_gather::set_tlb_policy(self.tlb);
        memory::set_wp_unlock_order(self.wp_unlock);
        frag::set_policy(self.frag);
        gup::set_gup_walk(self.gup_walk);
        gup::set_gup_pmd_recheck(self.gup_pmd_recheck);
        swap_state::set_order(self.swap_order);
        swap_state::set_dirty_aops(self.swap_aops);
        dirty::set_skey_transfer(self.skey_transfer);
        // Saved from a running kernel: the mode was accepted once.
        dirty::set_dirty_tracking::<A>(self.dirty_tracking)
            .expect("a dirty-tracking mode this architecture accepted");
    }
}
