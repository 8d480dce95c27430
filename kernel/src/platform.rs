//! The platform properties the races depend on, measured at every boot.
//!
//! Some rows' races need the machine to behave as QEMU's TCG does, and a
//! hypervisor may legitimately differ (a shadow-paging KVM keeps no stale
//! TLB entry across a PTE clear, so a store through one cannot happen
//! there). Before any self-test or scenario the kernel measures each
//! property with the real mechanism, the same probe the property's
//! self-test runs, and prints one top-level KTAP diagnostic:
//!
//! ```text
//! # platform: stale_tlb_after_pte_clear=yes ipi_held_by_irqs_off=yes skey_change_bit=n/a probe_us=14554
//! ```
//!
//! | property | probe | the races that need it |
//! |---|---|---|
//! | `stale_tlb_after_pte_clear` | a PTE cleared with no TLB invalidation ([`Mmu::ptep_clear_unflushed`]); does another CPU still read the page without a fault? (`mm::selftest::core::probe_stale_tlb`) | stores through a stale TLB entry |
//! | `ipi_held_by_irqs_off` | a cross-CPU call to a CPU in an interrupts-off section; taken only after it? (`selftest::probe_ipi_held`) | flushes and IPI syncs held back by GUP-fast |
//! | `skey_change_bit` | SSKE, a load, a store through a task mapping; did the store set C? (`mm::selftest::skey::probe_access_keys`) | dirty state kept in the storage key |
//!
//! Each value is `yes`, `no`, `n/a` (the architecture has no such thing:
//! storage keys on x86-64), `unmeasured` (the probe needs 2 CPUs) or
//! `error` (the probe saw something neither answer explains; its reason is
//! printed as `# platform error: ...`). The host judges a scenario cell by
//! the expected table's alternative for a property only where the boot
//! measured it `no` (`xtask/src/expected.rs`); a self-test whose claim
//! needs a property the platform lacks is skipped with the reason
//! ([`Property::lacking`]).
//!
//! Invariants: every property is measured once, on the boot CPU, after
//! every CPU is online and before anything else runs; the values never
//! change after; a probe leaves no frame allocated, no knob changed and no
//! CPU in a section.

use crate::mm::arch::Mmu;
use crate::mm::selftest::{core as mm_core, skey};
use crate::{kprintln, smp};
use core::sync::atomic::{AtomicU8, Ordering};

/// A property of the machine that a race may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// After a PTE is cleared without a TLB flush, another CPU keeps
    /// translating through its cached entry.
    StaleTlb,
    /// An IPI to a CPU with interrupts off waits until it enables them.
    IpiHeldByIrqsOff,
    /// A store sets the frame's storage-key change bit.
    SkeyChangeBit,
}

impl Property {
    /// Every property, in the order of the platform line.
    pub const ALL: [Property; 3] = [
        Property::StaleTlb,
        Property::IpiHeldByIrqsOff,
        Property::SkeyChangeBit,
    ];

    /// The key of the platform line.
    pub fn key(self) -> &'static str {
        match self {
            Property::StaleTlb => "stale_tlb_after_pte_clear",
            Property::IpiHeldByIrqsOff => "ipi_held_by_irqs_off",
            Property::SkeyChangeBit => "skey_change_bit",
        }
    }

    /// What a platform without the property does: the skip reason of a
    /// self-test that needs it.
    pub fn lacking(self) -> &'static str {
        match self {
            Property::StaleTlb => "this platform keeps no stale TLB entry after a PTE clear",
            Property::IpiHeldByIrqsOff => {
                "this platform delivers an IPI to a CPU with interrupts off"
            }
            Property::SkeyChangeBit => "this platform sets no storage-key change bit on a store",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the boot measured of a property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measured {
    /// Not measured (the probe needs 2 CPUs), or not yet.
    Unmeasured,
    /// The machine has it.
    Yes,
    /// The machine lacks it.
    No,
    /// The architecture has no such thing.
    NotApplicable,
    /// The probe saw something neither answer explains.
    Error,
}

impl Measured {
    /// The word of the platform line.
    pub fn name(self) -> &'static str {
        match self {
            Measured::Unmeasured => "unmeasured",
            Measured::Yes => "yes",
            Measured::No => "no",
            Measured::NotApplicable => "n/a",
            Measured::Error => "error",
        }
    }

    fn of(yes: bool) -> Self {
        if yes {
            Measured::Yes
        } else {
            Measured::No
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Measured::Yes,
            2 => Measured::No,
            3 => Measured::NotApplicable,
            4 => Measured::Error,
            _ => Measured::Unmeasured,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Measured::Unmeasured => 0,
            Measured::Yes => 1,
            Measured::No => 2,
            Measured::NotApplicable => 3,
            Measured::Error => 4,
        }
    }
}

/// The measured values, by [`Property::index`].
static MEASURED: [AtomicU8; 3] = [const { AtomicU8::new(0) }; 3];

/// What the boot measured of `p`.
pub fn get(p: Property) -> Measured {
    Measured::from_u8(MEASURED[p.index()].load(Ordering::Acquire))
}

/// Whether the boot measured that the machine lacks `p`.
pub fn lacks(p: Property) -> bool {
    get(p) == Measured::No
}

/// The skip of a self-test whose claim needs `p`, where the boot measured
/// that the machine lacks it: `if let Some(skip) = skip_without(p) {
/// return skip; }`.
pub fn skip_without(p: Property) -> Option<crate::ktap::Outcome> {
    lacks(p).then(|| crate::ktap::Outcome::Skip(p.lacking()))
}

/// For a self-test with several claims, one of which needs `p`: where the
/// boot measured that the machine lacks it, a diagnostic says that `claim`
/// is not shown (the case still checks the others).
pub fn note_without(p: Property, claim: &str) {
    if lacks(p) {
        crate::diag!("{}=no: {claim} is not shown: {}", p.key(), p.lacking());
    }
}

/// The interrupts-off section of the boot's IPI probe; doubled while the
/// host delays the send past it.
const IPI_SECTION_NS: u64 = 2_000_000;
/// Runs of the boot's IPI probe at most.
const IPI_ATTEMPTS: u32 = 4;

/// Measures every property and prints the platform line. Called once on the
/// boot CPU, every CPU online, interrupts on.
pub fn probe<A: Mmu>() {
    let t0 = A::clock_ns();
    let two_cpus = smp::nr_cpus() >= 2;
    for p in Property::ALL {
        let m = match measure::<A>(p, two_cpus) {
            Ok(m) => m,
            Err(why) => {
                kprintln!("# platform error: {}: {why}", p.key());
                Measured::Error
            }
        };
        MEASURED[p.index()].store(m.to_u8(), Ordering::Release);
    }
    kprintln!(
        "# platform:{} probe_us={}",
        values(),
        (A::clock_ns() - t0) / 1000
    );
}

/// The measured values as the platform line prints them: ` key=value` per
/// property.
pub fn values() -> alloc::string::String {
    let mut line = alloc::string::String::new();
    for p in Property::ALL {
        line.push_str(&alloc::format!(" {}={}", p.key(), get(p).name()));
    }
    line
}

fn measure<A: Mmu>(p: Property, two_cpus: bool) -> Result<Measured, alloc::string::String> {
    Ok(match p {
        Property::StaleTlb if !two_cpus => Measured::Unmeasured,
        Property::StaleTlb => {
            let s = mm_core::probe_stale_tlb::<A>(mm_core::PteClear::Unflushed)?;
            if !s.stale() && !s.purged() {
                return Err(alloc::format!(
                    "the observer read {:#x} with {} faults",
                    s.value_after,
                    s.observer_faults
                ));
            }
            Measured::of(s.stale())
        }
        Property::IpiHeldByIrqsOff if !two_cpus => Measured::Unmeasured,
        Property::IpiHeldByIrqsOff => {
            Measured::of(crate::selftest::probe_ipi_held::<A>(IPI_SECTION_NS, IPI_ATTEMPTS)?.held)
        }
        Property::SkeyChangeBit => match A::STORAGE_KEYS {
            None => Measured::NotApplicable,
            Some(k) => Measured::of(
                skey::probe_access_keys::<A>(k)
                    .map_err(|o| alloc::format!("{o:?}"))?
                    .store_set_c(),
            ),
        },
    })
}
