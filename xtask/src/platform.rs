//! The platform line of a boot: the properties of the machine that the races
//! depend on, as the kernel measured them before any result
//! (`kernel/src/platform.rs`):
//!
//! ```text
//! # platform: stale_tlb_after_pte_clear=yes ipi_held_by_irqs_off=yes skey_change_bit=n/a probe_us=412
//! ```
//!
//! The expected table ([`crate::expected`]) states, for a cell whose race
//! needs a property, what the cell shows on a machine without it; a cell is
//! judged by that alternative only where its boot measured the property
//! `no`. Anything else is judged by the TCG facts, the table's main
//! expectations: a boot that printed no platform line (a kernel older than
//! the line), a property the line does not name, and every other value
//! (`yes`, `n/a`, `unmeasured` with one CPU, `error` from a probe that saw
//! something neither answer explains, an unknown word). So neither a
//! missing line nor a garbled one can select an alternative; a probe that
//! answers `no` where the TCG facts say `yes` is caught by the boot test
//! that asserts the TCG facts ([`Property::tcg_fact`]).

use crate::ktap::Document;
use crate::Arch;
use std::fmt;

/// A property of the machine that a race may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Property {
    /// After a PTE is cleared without a TLB flush, another CPU keeps
    /// translating through its cached entry.
    StaleTlb,
    /// An IPI to a CPU with interrupts off waits until it enables them.
    IpiHeldByIrqsOff,
    /// A store sets the frame's storage-key change bit (s390x).
    SkeyChangeBit,
}

impl Property {
    /// Every property, in the order of the platform line.
    pub const ALL: [Property; 3] = [
        Property::StaleTlb,
        Property::IpiHeldByIrqsOff,
        Property::SkeyChangeBit,
    ];

    /// The key of the platform line; what a machine without the property
    /// does (the kernel's self-tests skip with the same words); what QEMU's
    /// TCG does on s390x and on x86-64, as `/work/shared/PLATFORM.md`
    /// documents it (stale TLB entries after a clear without a flush on
    /// both; fixed-vector IPIs and s390x external calls held pending while
    /// interrupts are off; a store sets C in the s390x storage key, which
    /// x86-64 does not have).
    const fn facts(self) -> (&'static str, &'static str, [&'static str; 2]) {
        match self {
            Property::StaleTlb => (
                "stale_tlb_after_pte_clear",
                "this platform keeps no stale TLB entry after a PTE clear",
                ["yes", "yes"],
            ),
            Property::IpiHeldByIrqsOff => (
                "ipi_held_by_irqs_off",
                "this platform delivers an IPI to a CPU with interrupts off",
                ["yes", "yes"],
            ),
            Property::SkeyChangeBit => (
                "skey_change_bit",
                "this platform sets no storage-key change bit on a store",
                ["yes", "n/a"],
            ),
        }
    }

    /// The key of the platform line.
    pub fn key(self) -> &'static str {
        self.facts().0
    }

    /// What a machine without the property does.
    pub fn lacking(self) -> &'static str {
        self.facts().1
    }

    /// What QEMU's TCG measures on `arch` (2 or more CPUs): the value
    /// every default-accelerator boot must print.
    pub fn tcg_fact(self, arch: Arch) -> &'static str {
        let [s390x, x86_64] = self.facts().2;
        match arch {
            Arch::S390x => s390x,
            Arch::X86_64 => x86_64,
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The prefix of the platform line's diagnostic (without `# `).
pub const PREFIX: &str = "platform:";

/// The properties one boot measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Platform {
    /// The line's words after [`PREFIX`], if the boot printed it.
    line: Option<String>,
}

impl Platform {
    /// A machine judged by the TCG facts: no platform line.
    pub fn tcg_facts() -> Self {
        Self::default()
    }

    /// The platform line of a boot's top-level diagnostics, if it printed
    /// one.
    pub fn of(doc: &Document) -> Self {
        Self {
            line: doc
                .diagnostics
                .iter()
                .find_map(|d| d.strip_prefix(PREFIX))
                .map(|l| l.trim().to_string()),
        }
    }

    /// From the words of a platform line (after [`PREFIX`]).
    pub fn from_line(line: &str) -> Self {
        Self {
            line: Some(line.trim().to_string()),
        }
    }

    /// Whether the boot printed a platform line.
    pub fn printed(&self) -> bool {
        self.line.is_some()
    }

    /// The value the boot printed for `p`, if it printed one.
    pub fn value(&self, p: Property) -> Option<&str> {
        self.line
            .as_deref()
            .and_then(|l| crate::ktap::diag_value(l, p.key()))
    }

    /// Whether the boot measured that the machine lacks `p` (the value
    /// `no`, and nothing else).
    pub fn lacks(&self, p: Property) -> bool {
        self.value(p) == Some("no")
    }

    /// The values as printed, one `key=value` per property (`-` where the
    /// line names none), or a sentence saying there is no line.
    pub fn describe(&self) -> String {
        if !self.printed() {
            return "no platform line: judged by the TCG facts".into();
        }
        Property::ALL
            .iter()
            .map(|&p| format!("{p}={}", self.value(p).unwrap_or("-")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// [`Platform::describe`], with how long the probes took where the
    /// line says it.
    pub fn describe_timed(&self) -> String {
        let us = self
            .line
            .as_deref()
            .and_then(|l| crate::ktap::diag_value(l, "probe_us"));
        match us {
            Some(us) => format!("{} (probed in {us} us)", self.describe()),
            None => self.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_measured_no_lacks_a_property() {
        let p = Platform::from_line(
            "stale_tlb_after_pte_clear=no ipi_held_by_irqs_off=yes skey_change_bit=error",
        );
        assert!(p.lacks(Property::StaleTlb));
        assert!(!p.lacks(Property::IpiHeldByIrqsOff));
        assert!(!p.lacks(Property::SkeyChangeBit), "an error is not a no");
        for other in ["unmeasured", "n/a", "No", "0", "", "maybe"] {
            let line = format!("stale_tlb_after_pte_clear={other}");
            assert!(
                !Platform::from_line(&line).lacks(Property::StaleTlb),
                "{other:?}"
            );
        }
        assert!(!Platform::tcg_facts().lacks(Property::StaleTlb));
    }

    #[test]
    fn the_line_is_read_from_the_top_level_diagnostics() {
        let doc = crate::ktap::parse(
            "KTAP version 1\n# quiesce arch=x86_64 cpus=4\n# platform: stale_tlb_after_pte_clear=no ipi_held_by_irqs_off=yes skey_change_bit=n/a probe_us=12\n1..1\nok 1 boot\n",
        );
        let p = Platform::of(&doc);
        assert!(p.printed() && p.lacks(Property::StaleTlb));
        assert_eq!(p.value(Property::SkeyChangeBit), Some("n/a"));
        assert_eq!(
            p.describe(),
            "stale_tlb_after_pte_clear=no ipi_held_by_irqs_off=yes skey_change_bit=n/a"
        );
        assert!(p.describe_timed().ends_with("n/a (probed in 12 us)"));
        // A diagnostic inside a suite is not the boot's platform line.
        let nested = crate::ktap::parse(
            "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    # platform: stale_tlb_after_pte_clear=no\n    ok 1 a\nok 1 s\n",
        );
        assert!(!Platform::of(&nested).printed());
        assert!(!Platform::of(&nested).lacks(Property::StaleTlb));
    }
}
