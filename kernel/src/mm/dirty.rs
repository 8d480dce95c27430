//! Where the dirty state of a shared file page lives: the dirty-tracking mode,
//! a runtime knob (`set_dirty_tracking`, or `dirty=softdirty|skey` on the
//! kernel command line). Generic code asks this module, never the architecture.
//!
//! Modes:
//! - [`DirtyTracking::SoftDirty`] (Linux 3.9+ on s390, and every other arch;
//!   the default): write-notify. A clean shared file page is mapped read-only;
//!   the first store takes a write-protect fault that makes the PTE writable
//!   and dirty and calls `set_page_dirty`; `folio_mkclean` write-protects and
//!   cleans every PTE, so the next store faults again. A zap carries a dirty
//!   PTE's bit to the page.
//! - [`DirtyTracking::StorageKey`] (s390 before 3.9, abf09bed3cce), only
//!   where [`Mmu::STORAGE_KEYS`]: the frame's change bit (C) is the dirty
//!   state. A write fault maps the page writable (and dirties it, as 3.8's
//!   `__do_fault`), and that PTE stays writable: there is no write-notify
//!   tracking in the PTE, a store sets C in hardware, and PTE dirty bits are
//!   ignored (3.8's s390 `pte_dirty` was constant 0). The key is consulted at
//!   three places, in Linux 3.8's order:
//!   - `page_remove_rmap`: when the last mapping of a page-cache page is
//!     gone, `page_test_and_clear_dirty` moves C to the page
//!     (`set_page_dirty`);
//!   - `folio_mkclean` (3.8 `page_mkclean`): a mapped page whose C is set is
//!     dirty; C is cleared there, so `clear_page_dirty_for_io` decides from
//!     `PG_dirty` plus the key;
//!   - after a page-cache fill: the kernel's copy into the frame set C, so
//!     the key is reset to `PAGE_DEFAULT_KEY` before the page is uptodate
//!     (3.8 `SetPageUptodate` on s390).
//!
//! How `page_remove_rmap` moves C to the page when the zap
//! (`zap_pte_range`, which holds the PTL but neither the page lock nor a
//! pin on a swap-cache page's mapping) removes the last mapping is a second
//! knob, [`SkeyTransfer`] (catalogue row 7, `skey-dirty-vs-swapcache`):
//! - [`SkeyTransfer::Unlocked`] (Linux 3.3): `set_page_dirty` straight away.
//!   For a page that reclaim is half-way through adding to the swap cache
//!   (`PG_swapcache` set, tree slot not yet filled) that tags a missing entry
//!   of `swapper_space`;
//! - [`SkeyTransfer::PageLockTrylock`] (the RFC of seed 004,
//!   `page_remove_rmap_nolock`): a bounded trylock of the page lock first
//!   (the PTL is held: no sleeping, and reclaim may hold the page lock while
//!   it waits for this PTL). Had: `set_page_dirty` under the page lock,
//!   which reclaim holds across the swap-cache insertion. Not had: a file
//!   page is dirtied anyway (the open file pins its mapping); a swap-cache
//!   page's change bit is dropped, counted in [`skey_stats`]. The store it
//!   recorded is lost unless something else has the page written: for a
//!   page reclaim is adding to the swap cache, `add_to_swap`'s `PG_dirty`
//!   does (row 7 checks the swap slot).
//!
//! Invariants:
//! - StorageKey is never selected on an arch without keys: the setter refuses
//!   it with an error, there is no fallback;
//! - in StorageKey mode a store through a mapping is either in the frame
//!   before C is cleared (so the copy of the writeback that cleared it holds
//!   it) or sets C again after the clear (SSKE purges every CPU's TLB), so it
//!   reaches the page at the latest when the last mapping goes;
//! - the mode changes only while no shared file page is mapped (the tests
//!   switch between their mms): the PTEs of one mode mean nothing to the
//!   other.

use super::arch::{Mmu, StorageKeyOps, PAGE_DEFAULT_KEY};
use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// How the dirty state of shared file pages is tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyTracking {
    /// Write-notify with dirty bits in the PTE (Linux 3.9+ s390, every arch).
    SoftDirty,
    /// The storage key's change bit (s390 before Linux 3.9).
    StorageKey,
}

impl DirtyTracking {
    /// The command-line spelling (`dirty=`).
    pub fn name(self) -> &'static str {
        match self {
            Self::SoftDirty => "softdirty",
            Self::StorageKey => "skey",
        }
    }

    /// Parses the command-line spelling.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "softdirty" => Some(Self::SoftDirty),
            "skey" => Some(Self::StorageKey),
            _ => None,
        }
    }
}

/// Why a mode was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyTrackingError {
    /// StorageKey asked for on an architecture without storage keys.
    NoStorageKeys(&'static str),
}

impl fmt::Display for DirtyTrackingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStorageKeys(arch) => write!(
                f,
                "dirty tracking 'skey' needs storage keys, and {arch} has none"
            ),
        }
    }
}

const SOFT_DIRTY: u8 = 0;
const STORAGE_KEY: u8 = 1;

static MODE: AtomicU8 = AtomicU8::new(SOFT_DIRTY);
/// Set once, by the first selection of StorageKey (the kernel runs one arch).
static KEY_OPS: spin::Once<StorageKeyOps> = spin::Once::new();

/// Selects the dirty-tracking mode; StorageKey only where `A` has storage
/// keys, otherwise an error and the mode is unchanged.
pub fn set_dirty_tracking<A: Mmu>(mode: DirtyTracking) -> Result<(), DirtyTrackingError> {
    match mode {
        DirtyTracking::SoftDirty => MODE.store(SOFT_DIRTY, Ordering::Release),
        DirtyTracking::StorageKey => {
            let Some(keys) = A::STORAGE_KEYS else {
                return Err(DirtyTrackingError::NoStorageKeys(A::NAME));
            };
            KEY_OPS.call_once(|| keys);
            MODE.store(STORAGE_KEY, Ordering::Release);
        }
    }
    Ok(())
}

/// The current dirty-tracking mode.
pub fn dirty_tracking() -> DirtyTracking {
    if MODE.load(Ordering::Acquire) == STORAGE_KEY {
        DirtyTracking::StorageKey
    } else {
        DirtyTracking::SoftDirty
    }
}

/// The key operations, when the storage key holds the dirty state.
fn key_ops() -> Option<&'static StorageKeyOps> {
    (dirty_tracking() == DirtyTracking::StorageKey)
        .then(|| KEY_OPS.get())
        .flatten()
}

/// Whether the PTE tracks dirtiness (write-notify, PTE dirty bits): true in
/// SoftDirty mode.
pub fn pte_tracks_dirty() -> bool {
    dirty_tracking() == DirtyTracking::SoftDirty
}

/// In StorageKey mode, Linux 3.8 `page_test_and_clear_dirty(pfn)`: whether
/// frame `pfn`'s change bit was set, clearing it. False in SoftDirty mode.
pub fn page_test_and_clear_dirty(pfn: u64) -> bool {
    key_ops().is_some_and(|k| k.page_test_and_clear_dirty(pfn))
}

/// In StorageKey mode, resets frame `pfn`'s key after the kernel filled the
/// frame (3.8 `SetPageUptodate` on s390: `page_set_storage_key(...,
/// PAGE_DEFAULT_KEY)`), so the fill does not count as a store through a
/// mapping. Nothing in SoftDirty mode.
pub fn page_reset_key_after_fill(pfn: u64) {
    if let Some(k) = key_ops() {
        k.set_storage_key(pfn, PAGE_DEFAULT_KEY);
    }
}

/// How the zap moves a set change bit to the page (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkeyTransfer {
    /// `set_page_dirty` without the page lock (Linux 3.3).
    Unlocked,
    /// A bounded trylock of the page lock first; a swap-cache page whose
    /// lock is not had loses its dirty bit (the RFC of seed 004).
    PageLockTrylock,
}

/// Trylocks of the page lock before [`SkeyTransfer::PageLockTrylock`] gives
/// up (the RFC spins until `need_resched()`; a fixed bound here, some tens
/// of microseconds under TCG).
pub const SKEY_TRYLOCK_SPINS: u32 = 2_000;

static TRANSFER: AtomicU8 = AtomicU8::new(SkeyTransfer::Unlocked as u8);
static NR_KEY_DIRTY: AtomicU64 = AtomicU64::new(0);
static NR_KEY_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Selects how the zap moves C to the page; returns the previous choice.
pub fn set_skey_transfer(t: SkeyTransfer) -> SkeyTransfer {
    let old = skey_transfer();
    TRANSFER.store(t as u8, Ordering::Release);
    old
}

/// How the zap moves C to the page.
pub fn skey_transfer() -> SkeyTransfer {
    if TRANSFER.load(Ordering::Acquire) == SkeyTransfer::PageLockTrylock as u8 {
        SkeyTransfer::PageLockTrylock
    } else {
        SkeyTransfer::Unlocked
    }
}

/// Since boot: `(unmaps that found C set on a page with a mapping, of those
/// the dirty bits dropped because the page lock was not had)`.
pub fn skey_stats() -> (u64, u64) {
    (
        NR_KEY_DIRTY.load(Ordering::Acquire),
        NR_KEY_DROPPED.load(Ordering::Acquire),
    )
}

/// Counts a change bit found set at the last unmap.
pub(crate) fn count_key_dirty() {
    NR_KEY_DIRTY.fetch_add(1, Ordering::AcqRel);
}

/// Counts a change bit dropped (the page lock was not had).
pub(crate) fn count_key_dropped() {
    NR_KEY_DROPPED.fetch_add(1, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::emul::{Emul2k, Emul4k};

    #[test]
    fn storage_key_refused_without_keys() {
        let e = set_dirty_tracking::<Emul4k>(DirtyTracking::StorageKey).unwrap_err();
        assert!(matches!(e, DirtyTrackingError::NoStorageKeys(_)));
        assert!(alloc::format!("{e}").contains("needs storage keys"));
        assert!(set_dirty_tracking::<Emul2k>(DirtyTracking::StorageKey).is_err());
        assert_eq!(dirty_tracking(), DirtyTracking::SoftDirty);
        assert!(!page_test_and_clear_dirty(0));
        assert!(set_dirty_tracking::<Emul4k>(DirtyTracking::SoftDirty).is_ok());
        assert_eq!(dirty_tracking(), DirtyTracking::SoftDirty);
    }

    #[test]
    fn skey_transfer_knob_round_trips() {
        let old = set_skey_transfer(SkeyTransfer::PageLockTrylock);
        assert_eq!(skey_transfer(), SkeyTransfer::PageLockTrylock);
        assert_eq!(
            set_skey_transfer(SkeyTransfer::Unlocked),
            SkeyTransfer::PageLockTrylock
        );
        assert_eq!(skey_transfer(), SkeyTransfer::Unlocked);
        set_skey_transfer(old);
    }

    #[test]
    fn names_round_trip() {
        for m in [DirtyTracking::SoftDirty, DirtyTracking::StorageKey] {
            assert_eq!(DirtyTracking::from_name(m.name()), Some(m));
        }
        assert_eq!(DirtyTracking::from_name("pte"), None);
    }
}
