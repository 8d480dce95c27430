//! The expected outcome of every race-scenario cell — one per (row, arch,
//! variant, flush strategy, mode) — and the comparison with what a boot
//! observed.
//!
//! This table is the one place the project states what each kernel variant
//! must show on each architecture. `cargo xtask run --scenario ...` (and the
//! plain `cargo xtask run`) print expected against observed and fail on any
//! mismatch; the boot-and-assert test `tests/tests/scenarios.rs` checks every
//! cell.
//!
//! The kernel reports each cell as a case `row:variant:mode` (a row with a
//! flush axis: `row:variant@flush:mode`, once per flush strategy of the
//! architecture) of the KTAP suite `scenario` with one diagnostic line
//! `row=... variant=... flush=... mode=... outcome=... iterations=...
//! hits=... first_hit_ns=... ...` ([`observed`] reads it).
//!
//! The table is declarative: one entry per variant and place — both
//! architectures, one architecture, or one flush strategy (whose
//! architecture follows from it) — with its forced and natural outcome;
//! a row that does not exist on an architecture is one line of
//! [`ROW_SKIPS`]. A row's author adds its entries, with
//! [`Expect::Report`] only where the catalogue says a cell reports its hit
//! rate only.
//!
//! A cell whose race needs a property of the machine (a stale TLB entry
//! after a PTE clear, an IPI held back by interrupts off, a storage-key
//! change bit set by a store) may state what it shows on a machine without
//! it ([`Entry::without`], only where that was measured): judging uses it
//! when the boot's platform line ([`crate::platform`]) measured the
//! property `no`, and says so (`expects impossible: this platform keeps no
//! stale TLB entry after a PTE clear`). Everything else, a boot without the
//! line included, is judged by the main expectations, the TCG facts.
//!
//! Explore mode (`mode=explore`, docs/explore.md) has a third cell per
//! entry, derived from it, never written by hand ([`EXPLORE_CELLS`]): a
//! variant that is `bug` forced or natural must show at least one buggy
//! schedule and the text that replays it; one that is `clean` or
//! `impossible` in both must show none, over every schedule (exhausted) or
//! over every schedule it ran within the preemption bound it states; a
//! forced `impossible` cell's cycle must be among the proofs schedules
//! were pruned by; a variant that reports its hit rate only reports. Explore
//! cells run only when asked for ([`Selection::mode`]).//!
//! Overlap and its floor: the kernel counts the iterations in which a
//! cell's roles met inside the race window (`overlap=`, each row's
//! definition in its module docs). A natural cell that can be `clean`
//! ([`Expect::Clean`], [`Expect::Report`]) states a floor
//! ([`Cell::floor`]): the overlap a run must reach, in overlapping
//! iterations per [`FLOOR_PER`] iterations run, measured with the row's
//! delays armed. A `clean` run below it is judged `vacuous` (a mismatch):
//! its roles rarely met inside the window, so its iterations tested little
//! ([`Cell::below_floor`]).

use crate::ktap::Document;
use crate::platform::{Platform, Property};
use crate::Arch;
use std::fmt;

/// Scenario mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Free running, optional random delays.
    Natural,
    /// A schedule over race points.
    Forced,
    /// Every ordering of the race points and synchronisation events, one
    /// schedule per iteration.
    Explore,
}

impl Mode {
    /// The kernel's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Natural => "natural",
            Mode::Forced => "forced",
            Mode::Explore => "explore",
        }
    }

    /// Parses the kernel's spelling.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "natural" => Some(Mode::Natural),
            "forced" => Some(Mode::Forced),
            "explore" => Some(Mode::Explore),
            _ => None,
        }
    }
}

/// What a cell must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A detector fires.
    Bug,
    /// Every role completes every iteration; no detector fires.
    Clean,
    /// The forced schedule is proven impossible (wait-for cycle).
    Impossible,
    /// The row or variant does not apply to the architecture.
    Skip,
    /// `bug` or `clean`: the cell reports its hit rate only.
    Report,
}

impl Expect {
    /// The outcome word.
    pub fn name(self) -> &'static str {
        match self {
            Expect::Bug => "bug",
            Expect::Clean => "clean",
            Expect::Impossible => "impossible",
            Expect::Skip => "skip",
            Expect::Report => "bug|clean",
        }
    }

    /// Whether `outcome` (the kernel's word) satisfies this expectation.
    /// `hang` and `vacuous` never do.
    pub fn accepts(self, outcome: &str) -> bool {
        match self {
            Expect::Report => outcome == "bug" || outcome == "clean",
            e => e.name() == outcome,
        }
    }
}

/// One cell of the table: a (row, arch, variant, flush strategy, mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// The row's name (`scenario=`).
    pub row: &'static str,
    /// The architecture.
    pub arch: Arch,
    /// The variant (`variant=`): the policy under test.
    pub variant: &'static str,
    /// The flush strategy (`flush=`) for a row with a flush axis; `None`
    /// for a row that runs under the architecture's default.
    pub flush: Option<&'static str>,
    /// The mode.
    pub mode: Mode,
    /// What it must show.
    pub expect: Expect,
    /// Forced cells: the wait-for cycle that must prove it, if any.
    pub proof: Option<Proof>,
    /// What it shows instead on a machine without a property its race
    /// needs, where that was measured.
    pub without: Option<Without>,
    /// Natural cells that can be `clean`: the overlap a run must reach,
    /// in overlapping iterations per [`FLOOR_PER`] iterations run.
    pub floor: Option<u64>,
}

/// The unit of a floor: overlapping iterations per this many iterations
/// run (the catalogue's natural budget, so that for most rows a floor is
/// the overlap a CI-size run must reach).
pub const FLOOR_PER: u64 = 10_000;

/// What a cell shows on a machine that lacks a property its race needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Without {
    /// The property.
    pub property: Property,
    /// The outcome then.
    pub expect: Expect,
    /// Forced cells: the proof then.
    pub proof: Option<Proof>,
}

/// The expectation a cell is judged by on one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// The outcome.
    pub expect: Expect,
    /// Its proof.
    pub proof: Option<Proof>,
    /// Why it is not the table's main expectation: `expects impossible:
    /// this platform keeps no stale TLB entry after a PTE clear`.
    pub because: Option<String>,
}

/// The proof a forced cell's wait-for cycle must give, in the kernel's
/// words (`evidence=`, `fix_evidence=`): each wait as
/// `class:waiter>holder` (`flush-ipi`, `call-ipi`, `ptl`, `rcu-gp`) and
/// each role the schedule holds as `held:role@point`, sorted, joined with
/// `+`. Any other cycle fails the cell: a deadlock of the kernel, or a fix
/// holding the schedule back by the wrong wait, is not what the catalogue
/// says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// An `impossible` cell: the cycle that proves it.
    Cycle(&'static str),
    /// A fixed cell whose fix holds the bad interleaving back in every
    /// iteration (`held_by_fix` equals the iterations): the cycle it
    /// holds it with.
    HeldByFix(&'static str),
    /// An explore cell of a forced-`impossible` variant: a cycle some
    /// schedules were pruned by (`# explore: pruned=N by=P`, with or
    /// without the `fix:` prefix of a cycle through the fix's waits): the
    /// ordering the bug needs is refused by it.
    Pruned(&'static str),
}

impl Proof {
    /// Why `o` does not give this proof, if it does not.
    pub fn unmet_by(self, o: &Observed) -> Option<String> {
        match self {
            Proof::Cycle(want) if o.evidence.as_deref() != Some(want) => Some(format!(
                "cycle {}, the table's proof is {want}",
                o.evidence.as_deref().unwrap_or("-")
            )),
            Proof::HeldByFix(want) if o.fix_evidence.as_deref() != Some(want) => Some(format!(
                "held by {}, the table's fix holds by {want}",
                o.fix_evidence.as_deref().unwrap_or("nothing")
            )),
            Proof::HeldByFix(_) if o.held_by_fix != o.iterations || o.iterations == 0 => {
                Some(format!(
                    "the fix held {} of {} iterations, the table says every one",
                    o.held_by_fix, o.iterations
                ))
            }
            // A failed case (a hang) fails for that: its prunings are moot.
            Proof::Pruned(_) if !o.case_ok => None,
            Proof::Pruned(want) => {
                let x = o.explore.as_ref()?;
                let by = |p: &str| p.strip_prefix("fix:").unwrap_or(p) == want;
                (!x.pruned.iter().any(|(p, _)| by(p))).then(|| {
                    format!(
                        "no schedule pruned by {want}, the table's cycle (pruned by: {})",
                        if x.pruned.is_empty() {
                            "none".to_string()
                        } else {
                            x.pruned
                                .iter()
                                .map(|(p, _)| p.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    )
                })
            }
            _ => None,
        }
    }
}

impl Cell {
    /// The expectation on `platform`: the alternative for a property the
    /// boot measured absent, with the reason where it differs from the
    /// main one; the main one otherwise.
    pub fn judged(&self, platform: &Platform) -> Judged {
        match self.without {
            Some(w) if w.expect == self.expect && w.proof == self.proof => Judged {
                expect: self.expect,
                proof: self.proof,
                because: None,
            },
            Some(w) if platform.lacks(w.property) => Judged {
                expect: w.expect,
                proof: w.proof,
                because: Some(format!(
                    "expects {}: {}",
                    w.expect.name(),
                    w.property.lacking()
                )),
            },
            _ => Judged {
                expect: self.expect,
                proof: self.proof,
                because: None,
            },
        }
    }

    /// The variant as the kernel's case name spells it: `variant`, or
    /// `variant@flush` for a row with a flush axis.
    pub fn label(&self) -> String {
        label(self.variant, self.flush)
    }

    /// The kernel command-line words that run exactly this cell:
    /// `scenario= variant= [flush=] mode=`.
    pub fn kernel_args(&self) -> String {
        format!(
            "scenario={} variant={}{} mode={}",
            self.row,
            self.variant,
            self.flush.map_or(String::new(), |f| format!(" flush={f}")),
            self.mode.name()
        )
    }

    /// The `cargo xtask run` options that run exactly this cell.
    pub fn run_options(&self) -> String {
        format!(
            "--arch {} --scenario {} --variant {}{} --mode {}",
            self.arch,
            self.row,
            self.variant,
            self.flush
                .map_or(String::new(), |f| format!(" --flush {f}")),
            self.mode.name()
        )
    }

    /// The KTAP case of this cell: `scenario.row:label:mode`.
    pub fn case(&self) -> String {
        format!(
            "scenario.{}:{}:{}",
            self.row,
            self.label(),
            self.mode.name()
        )
    }

    /// The overlap a natural run of `iterations` must reach: the floor
    /// scaled to the iterations run, rounded down (a run too short for
    /// one overlapping iteration at the floor's rate is not judged);
    /// `None` for a cell without a floor.
    pub fn required_overlap(&self, iterations: u64) -> Option<u64> {
        self.floor.map(|f| f * iterations / FLOOR_PER)
    }

    /// Why a run of this cell that ended `outcome` after `iterations`,
    /// `overlap` of them overlapping, is `vacuous` by the floor: a
    /// natural `clean` run with its delays armed (the floors are measured
    /// so) below [`Cell::required_overlap`].
    pub fn below_floor(
        &self,
        outcome: &str,
        iterations: u64,
        overlap: u64,
        delays: bool,
    ) -> Option<String> {
        let need = self.required_overlap(iterations)?;
        (self.mode == Mode::Natural && outcome == "clean" && delays && overlap < need).then(|| {
            format!(
                "overlap {overlap} below the floor {need} ({} per {FLOOR_PER} iterations): the roles rarely met inside the window",
                self.floor.unwrap_or(0)
            )
        })
    }
}

/// `variant` or `variant@flush`.
pub fn label(variant: &str, flush: Option<&str>) -> String {
    match flush {
        Some(f) => format!("{variant}@{f}"),
        None => variant.to_string(),
    }
}

/// Where an [`Entry`] applies.
#[derive(Clone, Copy, Debug)]
enum On {
    /// Both architectures, each under its default flush strategy (a row
    /// without a flush axis).
    Both,
    /// One architecture (a row without a flush axis).
    Arch(Arch),
    /// Under this flush strategy, on the architecture that implements it
    /// (a row with a flush axis runs each variant under every strategy of
    /// the architecture).
    Flush(&'static str),
}

/// What one variant shows, forced and natural, where it applies.
struct Entry {
    row: &'static str,
    variant: &'static str,
    on: On,
    forced: Expect,
    natural: Expect,
    /// The forced cell's proof.
    proof: Option<Proof>,
    /// Forced and natural on a machine without a property.
    without: Option<Alt>,
    /// The natural cell's floor ([`Cell::floor`]).
    floor: Option<u64>,
}

/// What one variant shows, forced and natural, on a machine without
/// `property`: an [`Entry`]'s alternative.
#[derive(Clone, Copy)]
struct Alt {
    property: Property,
    forced: Expect,
    natural: Expect,
    proof: Option<Proof>,
}

impl Alt {
    const fn new(property: Property, forced: Expect, natural: Expect) -> Self {
        Alt {
            property,
            forced,
            natural,
            proof: None,
        }
    }

    /// The forced cell is `impossible` by the cycle `evidence`.
    const fn by(self, evidence: &'static str) -> Self {
        Alt {
            proof: Some(Proof::Cycle(evidence)),
            ..self
        }
    }
}

impl Entry {
    /// The forced cell is `impossible` by the cycle `evidence`.
    const fn by(self, evidence: &'static str) -> Self {
        Entry {
            proof: Some(Proof::Cycle(evidence)),
            ..self
        }
    }

    /// The forced cell's fix holds the schedule back in every iteration,
    /// by the cycle `evidence`.
    const fn held(self, evidence: &'static str) -> Self {
        Entry {
            proof: Some(Proof::HeldByFix(evidence)),
            ..self
        }
    }

    /// What the variant shows on a machine without a property its race
    /// needs, as measured on such a machine.
    const fn without(self, alt: Alt) -> Self {
        Entry {
            without: Some(alt),
            ..self
        }
    }

    /// The natural cell's floor: at least `per_10k` of every
    /// [`FLOOR_PER`] iterations must overlap ([`Cell::floor`]).
    const fn floor(self, per_10k: u64) -> Self {
        Entry {
            floor: Some(per_10k),
            ..self
        }
    }
}

const fn e(
    row: &'static str,
    variant: &'static str,
    on: On,
    forced: Expect,
    natural: Expect,
) -> Entry {
    Entry {
        row,
        variant,
        on,
        forced,
        natural,
        proof: None,
        without: None,
        floor: None,
    }
}

/// The architecture that implements a flush strategy.
pub fn flush_arch(flush: &str) -> Option<Arch> {
    match flush {
        "ipi" | "nmi" => Some(Arch::X86_64),
        "ipte" | "csp" => Some(Arch::S390x),
        _ => None,
    }
}

use Arch::{S390x, X86_64};
use Expect::*;
use On::{Both, Flush};

// The proofs of the forced cells that end in a wait-for cycle ([`Proof`]).
/// The fix's PTL: the fault holds it at `wp:before_unlock_page` (unlocks
/// under it), the zap spins on it.
const WP_PTL: &str = "held:fault@wp:before_unlock_page+ptl:zap>fault";
/// s390x: the writer's store faults (IPTE left no stale entry) and its
/// fault spins on the PTL the zap holds at `zap:before_ptl_flush`.
const FAULT_ON_ZAP_PTL: &str = "held:zap@zap:before_ptl_flush+ptl:writer>zap";
/// The fix: mkclean's rmap walk spins on the PTL the zap holds until its
/// flush.
const MKCLEAN_ON_ZAP_PTL: &str = "held:zap@zap:before_ptl_flush+ptl:writeback>zap";
/// x86-64 flush IPIs: the collapse's flush waits for the IPI the walker,
/// interrupts off at `gup_fast:after_pmd_read`, holds back.
const COLLAPSE_FLUSH_IPI: &str = "flush-ipi:collapse>gup+held:gup@gup_fast:after_pmd_read";
/// fixed-b: the collapse's IPI sync waits for the interrupts-off walker.
const COLLAPSE_IPI_SYNC: &str = "call-ipi:collapse>gup+held:gup@gup_fast:after_pmd_read";
/// x86-64 flush IPIs: the unmap's flush waits for the IPI the walker holds
/// back, before any table is freed.
const UNMAP_FLUSH_IPI: &str = "flush-ipi:unmap>gup+held:gup@gup_fast:after_pmd_read";
/// ipi-sync: the table free waits for the IPI round the walker holds back.
const UNMAP_IPI_SYNC: &str = "call-ipi:unmap>gup+held:gup@gup_fast:after_pmd_read";
/// rcu: the table free waits for a grace period the walker holds back.
const UNMAP_RCU_GP: &str = "held:gup@gup_fast:after_pmd_read+rcu-gp:unmap>gup";

// What cells show on a machine without a property their race needs
// ([`Alt`]), each measured on such a machine: `--accel kvm` on the
// project's machines, a shadow-paging hypervisor that keeps no stale TLB
// entry (forced: every cell as stated; natural: 592 to 726 iterations
// per cell in 15 s, no hit, where TCG hits within tens of milliseconds).
/// x86-64 IPI and NMI flushes without stale TLB entries: the writer's
/// store after the zap's clear faults and spins on the zap's PTL, as on
/// s390x ([`FAULT_ON_ZAP_PTL`]); natural `clean`.
const NO_STALE_TLB_FAULTS: Alt =
    Alt::new(Property::StaleTlb, Impossible, Clean).by(FAULT_ON_ZAP_PTL);
/// Without stale TLB entries the writer's store faults into a fresh page
/// instead of landing in the dropped one: `clean`, as with IPTE.
const NO_STALE_TLB_CLEAN: Alt = Alt::new(Property::StaleTlb, Clean, Clean);

/// What every variant shows. Rows in catalogue order, the demonstration
/// row first. A cell not listed for an architecture is a row that does
/// not exist there ([`ROW_SKIPS`]).
#[rustfmt::skip]
const ENTRIES: &[Entry] = &[
    // demo-lock-vs-put (kernel/src/race/rows/demo.rs): the page's last reference
    // dropped while another CPU holds its lock. Natural buggy: the
    // demonstration's window is a few instructions wide and its hits depend
    // on how the host schedules the two vCPUs (from 0 to 2 000 in 10 000
    // iterations seen on one x86-64 seed): hit rate only.
    e("demo-lock-vs-put", "buggy", Both, Bug, Report).floor(50),
    e("demo-lock-vs-put", "fixed", Both, Clean, Clean).floor(7),
    // wp-unlock-vs-zap (kernel/src/race/rows/wp_unlock.rs), catalogue row 1:
    // do_wp_page unlocks the reused page after the PTL release while
    // MADV_DONTNEED frees it. Forced: the buggy order is a bug under either
    // page-freeing policy (with batched freeing the fault's CPU takes the
    // x86-64 flush IPI: it holds with interrupts on); the fix keeps the PTL
    // held, the zap waits for it (held_by_fix) and the run is clean (the
    // fix frees pages after the flush: freed at the clear, a page can still
    // take a store through an x86-64 TLB entry, which is not this bug).
    // Natural (delays at wp:before_unlock_page and zap:before_ptl): with
    // immediate freeing a bug on s390x, and on x86-64 too — the page is
    // freed at the PTE clear, which waits for no flush on either arch, so
    // the window is the same (x86-64 hits more often: its PTE clear is a
    // plain exchange, s390x's an IPTE). Batched freeing reports its hit
    // rate only: the free waits for the flush (on x86-64 an IPI the fault's
    // CPU takes with interrupts on), which the window rarely outlasts.
    // fixed-immediate, the fix as s390 5.9 shipped it (pages freed at the
    // PTE clear): forced, held by the PTL as `fixed`. Natural: clean on
    // s390x (IPTE purged every TLB before the free); on x86-64, which never
    // shipped immediate freeing, the page is freed before the flush and the
    // fault's retried store can land in the freed frame through the TLB
    // entry wp_page_reuse installed — not this row's bug, the one x86's
    // batching avoids, caught by the frame detector now and then (1 hit in
    // 10 000 iterations in one run, none in another): hit rate only.
    e("wp-unlock-vs-zap", "buggy-immediate", Both, Bug, Bug),
    e("wp-unlock-vs-zap", "buggy-batched", Both, Bug, Report).floor(30),
    e("wp-unlock-vs-zap", "fixed", Both, Clean, Clean).held(WP_PTL).floor(90),
    e("wp-unlock-vs-zap", "fixed-immediate", On::Arch(S390x), Clean, Clean).held(WP_PTL).floor(55),
    e("wp-unlock-vs-zap", "fixed-immediate", On::Arch(X86_64), Clean, Report).held(WP_PTL).floor(580),
    // gup-fast-folding (kernel/src/race/rows/gup_folding.rs, catalogue row 2): a
    // single-CPU, deterministic walk bug; forced (an empty schedule) and
    // natural (no delays) are the same run, every iteration. x86-64 folds
    // no level per mm: the row does not exist there.
    e("gup-fast-folding", "buggy", On::Arch(S390x), Bug, Bug),
    e("gup-fast-folding", "fixed", On::Arch(S390x), Clean, Clean).floor(2500),
    // zap-rmap-vs-mkclean (kernel/src/race/rows/zap_rmap.rs, catalogue row 3):
    // Linux 6.1 removes a dirty shared-file page's rmap before the flush
    // under the PTL; writeback's mkclean finds the page unmapped, cleans
    // and writes it while the writer still stores through its stale TLB
    // entry (lost write). IPI and NMI flushes: buggy `bug`; fixed `clean`
    // (forced: mkclean's rmap walk spins on the zap's PTL, the fix's wait,
    // held_by_fix: 5df397dec7c4 delays the dirty PTE's rmap until after the
    // flush). IPTE at the clear leaves no stale entry: natural `clean`;
    // forced `impossible` for both variants (the writer's store faults and
    // spins on the zap's PTL, a cycle through the fault, not the fix). The
    // IPTE fixed variant is s390's 6.2, which delays no rmap and forces no
    // flush under the PTL: the zap holds at zap:before_ptl_flush just
    // before its unlock, with the rmap already gone.
    e("zap-rmap-vs-mkclean", "buggy", Flush("ipi"), Bug, Bug).without(NO_STALE_TLB_FAULTS),
    e("zap-rmap-vs-mkclean", "buggy", Flush("nmi"), Bug, Bug).without(NO_STALE_TLB_FAULTS),
    e("zap-rmap-vs-mkclean", "buggy", Flush("ipte"), Impossible, Clean).by(FAULT_ON_ZAP_PTL).floor(45),
    e("zap-rmap-vs-mkclean", "fixed", Flush("ipi"), Clean, Clean).held(MKCLEAN_ON_ZAP_PTL).without(NO_STALE_TLB_FAULTS).floor(1400),
    e("zap-rmap-vs-mkclean", "fixed", Flush("nmi"), Clean, Clean).held(MKCLEAN_ON_ZAP_PTL).without(NO_STALE_TLB_FAULTS).floor(1800),
    e("zap-rmap-vs-mkclean", "fixed", Flush("ipte"), Impossible, Clean).by(FAULT_ON_ZAP_PTL).floor(60),
    // ptfrag-refcount (kernel/src/race/rows/ptfrag.rs, catalogue row 4): a pfn
    // scanner's speculative reference wiped by set_page_count when the
    // frame becomes a page-table fragment block; the block is freed while
    // its last fragment is linked. Both arches: buggy `bug`, both fixes
    // `clean`, in both modes (the fixes add no wait: forced runs the whole
    // interleaving).
    e("ptfrag-refcount", "buggy", Both, Bug, Bug),
    e("ptfrag-refcount", "fixed-a", Both, Clean, Clean).floor(120),
    e("ptfrag-refcount", "fixed-b", Both, Clean, Clean).floor(110),
    // collapse-vs-gup-fast (kernel/src/race/rows/collapse_gup.rs, catalogue row
    // 5): GUP-fast pins a small page of the old PTE table after THP
    // collapse checked for pins. IPTE/IDTE (no IPI) and NMI shootdown:
    // buggy and rcu-only `bug`, fixed-a (PMD recheck) and fixed-b (IPI
    // sync; forced: held by the fix) `clean`. Flush IPIs: the collapse's
    // flush waits for the interrupts-off walker, so every variant is
    // natural `clean` and forced `impossible`.
    e("collapse-vs-gup-fast", "buggy", Flush("ipi"), Impossible, Clean).by(COLLAPSE_FLUSH_IPI).floor(150),
    e("collapse-vs-gup-fast", "buggy", Flush("nmi"), Bug, Bug),
    e("collapse-vs-gup-fast", "buggy", Flush("ipte"), Bug, Bug),
    e("collapse-vs-gup-fast", "fixed-a", Flush("ipi"), Impossible, Clean).by(COLLAPSE_FLUSH_IPI).floor(150),
    e("collapse-vs-gup-fast", "fixed-a", Flush("nmi"), Clean, Clean).floor(150),
    e("collapse-vs-gup-fast", "fixed-a", Flush("ipte"), Clean, Clean).floor(150),
    e("collapse-vs-gup-fast", "fixed-b", Flush("ipi"), Impossible, Clean).by(COLLAPSE_FLUSH_IPI).floor(150),
    e("collapse-vs-gup-fast", "fixed-b", Flush("nmi"), Clean, Clean).held(COLLAPSE_IPI_SYNC).floor(150),
    e("collapse-vs-gup-fast", "fixed-b", Flush("ipte"), Clean, Clean).held(COLLAPSE_IPI_SYNC).floor(150),
    e("collapse-vs-gup-fast", "rcu-only", Flush("ipi"), Impossible, Clean).by(COLLAPSE_FLUSH_IPI).floor(150),
    e("collapse-vs-gup-fast", "rcu-only", Flush("nmi"), Bug, Bug),
    e("collapse-vs-gup-fast", "rcu-only", Flush("ipte"), Bug, Bug),
    // ptfree-vs-gup-fast (kernel/src/race/rows/ptfree.rs, catalogue row 6): a
    // PTE table freed by munmap while GUP-fast walks it with interrupts
    // off. IPTE and NMI shootdown send no interrupt the walker holds back,
    // so only the table policy protects: immediate `bug`, IPI sync and RCU
    // `clean` (forced: held by the fix). Flush IPIs: the unmap waits for
    // the flush IPI the walker holds back before any table is freed. The
    // catalogue names only `immediate`; with IPI sync or RCU the flush IPI
    // also blocks first, so forced is `impossible` there too (the fix's own
    // wait is never reached). Natural `clean` cells run 10 000 iterations,
    // as the catalogue's CI rule asks.
    e("ptfree-vs-gup-fast", "immediate", Flush("ipi"), Impossible, Clean).by(UNMAP_FLUSH_IPI).floor(540),
    e("ptfree-vs-gup-fast", "immediate", Flush("nmi"), Bug, Bug),
    e("ptfree-vs-gup-fast", "immediate", Flush("ipte"), Bug, Bug),
    e("ptfree-vs-gup-fast", "ipi-sync", Flush("ipi"), Impossible, Clean).by(UNMAP_FLUSH_IPI).floor(850),
    e("ptfree-vs-gup-fast", "ipi-sync", Flush("nmi"), Clean, Clean).held(UNMAP_IPI_SYNC).floor(770),
    e("ptfree-vs-gup-fast", "ipi-sync", Flush("ipte"), Clean, Clean).held(UNMAP_IPI_SYNC).floor(410),
    e("ptfree-vs-gup-fast", "rcu", Flush("ipi"), Impossible, Clean).by(UNMAP_FLUSH_IPI).floor(350),
    e("ptfree-vs-gup-fast", "rcu", Flush("nmi"), Clean, Clean).held(UNMAP_RCU_GP).floor(350),
    e("ptfree-vs-gup-fast", "rcu", Flush("ipte"), Clean, Clean).held(UNMAP_RCU_GP).floor(390),
    // skey-dirty-vs-swapcache (kernel/src/race/rows/skey_swap.rs, catalogue row
    // 7): the zap moves a storage key's change bit to a page that reclaim
    // is half-way through adding to the swap cache; the DIRTY tag lands on
    // a missing tree entry. s390x only: x86-64 has no storage keys. fixed-a
    // (the RFC) drops the change bit whenever its trylock gives up (every
    // forced iteration; 1 371 to 2 278 of 10 000 natural ones in four runs,
    // `# skey: ... dirty_dropped=`), and is `clean` in both modes for that
    // too: the row checks the swap slot, and no write is lost
    // (`lost_writes=0`), because add_to_swap has marked the page dirty
    // right after the insertion and reclaim writes it out before it lets
    // it go.
    e("skey-dirty-vs-swapcache", "buggy", On::Arch(S390x), Bug, Bug),
    e("skey-dirty-vs-swapcache", "fixed-a", On::Arch(S390x), Clean, Clean).floor(720),
    e("skey-dirty-vs-swapcache", "fixed-b", On::Arch(S390x), Clean, Clean).floor(710),
    e("skey-dirty-vs-swapcache", "fixed-c", On::Arch(S390x), Clean, Clean).floor(960),
    e("skey-dirty-vs-swapcache", "fixed-d", On::Arch(S390x), Clean, Clean).floor(830),
    // nested-flush (kernel/src/race/rows/nested_flush.rs, catalogue row 8): two
    // MADV_DONTNEEDs overlap; the one that finds the PTE clear returns
    // before the other flushed, and the writer's store through its stale
    // TLB entry lands in the dropped page. IPI and NMI flushes: buggy
    // `bug`, fixed (full flush of a nested gather) `clean`. IPTE purges at
    // the clear: both `clean`.
    e("nested-flush", "buggy", Flush("ipi"), Bug, Bug).without(NO_STALE_TLB_CLEAN),
    e("nested-flush", "buggy", Flush("nmi"), Bug, Bug).without(NO_STALE_TLB_CLEAN),
    e("nested-flush", "buggy", Flush("ipte"), Clean, Clean).floor(160),
    e("nested-flush", "fixed", Flush("ipi"), Clean, Clean).floor(200),
    e("nested-flush", "fixed", Flush("nmi"), Clean, Clean).floor(200),
    e("nested-flush", "fixed", Flush("ipte"), Clean, Clean).floor(90),
];

/// Rows that do not exist on an architecture: every variant of the row is
/// `skip` there, in both modes, with the kernel's reason.
pub const ROW_SKIPS: &[(&str, Arch, &str)] = &[
    (
        "gup-fast-folding",
        X86_64,
        "x86-64 folds no page-table level per mm",
    ),
    (
        "skey-dirty-vs-swapcache",
        X86_64,
        "x86-64 has no storage keys",
    ),
];

/// Every forced and natural cell, built from [`ENTRIES`] and
/// [`ROW_SKIPS`]: rows in table order, each row's cells in entry order,
/// then its skipped cells.
pub static CELLS: std::sync::LazyLock<Vec<Cell>> =
    std::sync::LazyLock::new(|| build_cells(&[Mode::Forced, Mode::Natural]));

/// Every explore cell, one per forced cell, in the same order, its
/// expectation derived from the entry ([`explore_expect`]).
pub static EXPLORE_CELLS: std::sync::LazyLock<Vec<Cell>> =
    std::sync::LazyLock::new(|| build_cells(&[Mode::Explore]));

/// Every cell of the table: [`CELLS`], then [`EXPLORE_CELLS`].
pub fn all_cells() -> impl Iterator<Item = &'static Cell> {
    CELLS.iter().chain(EXPLORE_CELLS.iter())
}

/// What an entry's explore cell must show, derived from its forced and
/// natural cells: `bug` if either is (some schedule is buggy); `bug|clean`
/// if either reports only; else `clean` (no buggy schedule, every
/// schedule within the bound run), and for a forced `impossible` cell
/// with some schedules pruned by its cycle.
fn explore_expect(en: &Entry) -> (Expect, Option<Proof>) {
    match (en.forced, en.natural) {
        (Skip, _) | (_, Skip) => (Skip, None),
        (Bug, _) | (_, Bug) => (Bug, None),
        (Report, _) | (_, Report) => (Report, None),
        (Impossible, _) => match en.proof {
            Some(Proof::Cycle(p)) => (Clean, Some(Proof::Pruned(p))),
            _ => (Clean, None),
        },
        (Clean, _) => (Clean, None),
    }
}

/// The rows of the table, in table order.
pub fn rows() -> Vec<&'static str> {
    let mut rows: Vec<&'static str> = Vec::new();
    for en in ENTRIES {
        if !rows.contains(&en.row) {
            rows.push(en.row);
        }
    }
    rows
}

/// The cells of `modes`, rows in table order.
fn build_cells(modes: &[Mode]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for row in rows() {
        let mut variants: Vec<&'static str> = Vec::new();
        for en in ENTRIES.iter().filter(|en| en.row == row) {
            if !variants.contains(&en.variant) {
                variants.push(en.variant);
            }
            let (arches, flush) = match en.on {
                On::Both => (Arch::ALL.to_vec(), None),
                On::Arch(a) => (vec![a], None),
                On::Flush(f) => (
                    vec![flush_arch(f).expect("a known flush strategy")],
                    Some(f),
                ),
            };
            for arch in arches {
                for &mode in modes {
                    let (expect, proof) = match mode {
                        Mode::Forced => (en.forced, en.proof),
                        Mode::Natural => (en.natural, None),
                        Mode::Explore => explore_expect(en),
                    };
                    let without = en
                        .without
                        .filter(|_| mode != Mode::Explore)
                        .map(|a| Without {
                            property: a.property,
                            expect: if mode == Mode::Forced {
                                a.forced
                            } else {
                                a.natural
                            },
                            proof: if mode == Mode::Forced { a.proof } else { None },
                        });
                    cells.push(Cell {
                        row,
                        arch,
                        variant: en.variant,
                        flush,
                        mode,
                        expect,
                        proof,
                        without,
                        floor: en.floor.filter(|_| mode == Mode::Natural),
                    });
                }
            }
        }
        for &(_, arch, _) in ROW_SKIPS.iter().filter(|(r, _, _)| *r == row) {
            for &variant in &variants {
                for &mode in modes {
                    cells.push(Cell {
                        row,
                        arch,
                        variant,
                        flush: None,
                        mode,
                        expect: Expect::Skip,
                        proof: None,
                        without: None,
                        floor: None,
                    });
                }
            }
        }
    }
    cells
}

/// The cell for (row, arch, variant, flush, mode).
pub fn lookup(
    row: &str,
    arch: Arch,
    variant: &str,
    flush: Option<&str>,
    mode: Mode,
) -> Option<&'static Cell> {
    all_cells().find(|c| {
        c.row == row && c.arch == arch && c.variant == variant && c.flush == flush && c.mode == mode
    })
}

/// One cell as a boot reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Row.
    pub row: String,
    /// Variant.
    pub variant: String,
    /// The flush strategy, for a row with a flush axis (from the case
    /// name `row:variant@flush:mode`).
    pub flush: Option<String>,
    /// Mode.
    pub mode: Mode,
    /// The outcome word (`bug`, `clean`, `impossible`, `skip`, `hang`,
    /// `vacuous`; `failed` when the case failed without one).
    pub outcome: String,
    /// Iterations run.
    pub iterations: u64,
    /// Iterations in which a detector fired.
    pub hits: u64,
    /// Iterations in which the roles met inside the race window.
    pub overlap: u64,
    /// Whether the natural-mode delays were armed (`delays=1`; a line
    /// without the key counts as armed).
    pub delays: bool,
    /// Time to the first hit.
    pub first_hit_ns: Option<u64>,
    /// Iterations the variant's fix held the schedule back.
    pub held_by_fix: u64,
    /// The proof of the cycle that ended the run (`evidence=`).
    pub evidence: Option<String>,
    /// The proof of the first cycle the fix held (`fix_evidence=`).
    pub fix_evidence: Option<String>,
    /// Whether the KTAP case passed (a failed state check fails it).
    pub case_ok: bool,
    /// The case's failure reason or skip reason, if any.
    pub note: Option<String>,
    /// Explore cells: what the exploration covered (`None` for the other
    /// modes, or an explore case that printed no `# explore: row=` line).
    pub explore: Option<Explored>,
}

/// What an explore cell covered, from its `# explore:` lines: the summary
/// (`explore: row= ... schedules= complete= pruned= buggy= exhausted=
/// bound= gave_up= divergent= truncated= max_decisions=
/// elapsed_ms=`), one
/// `explore: pruned=N by=PROOF` per proof, `explore: buggy schedule K:
/// TEXT` for the first buggy ones and `explore: schedule=TEXT`, the first
/// buggy schedule to replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explored {
    /// Schedules run (the cell's iterations).
    pub schedules: u64,
    /// Schedules that ran to their end.
    pub complete: u64,
    /// Schedules pruned by a wait-for cycle (the hardware or the fix
    /// refused the ordering).
    pub pruned_total: u64,
    /// Pruned schedules by the cycle's proof (`fix:` prefixed: a cycle
    /// through the fix's waits), as the kernel printed them.
    pub pruned: Vec<(String, u64)>,
    /// Schedules in which a detector fired (the cell's hits).
    pub buggy: u64,
    /// Every schedule within the bound ran.
    pub exhausted: bool,
    /// The highest preemption bound within which every schedule ran
    /// (`None`: every ordering ran, or an unbounded run cut short).
    pub bound: Option<u32>,
    /// A bound above the default tried and given up (too large to run
    /// every ordering), with the schedules it ran.
    pub gave_up: Option<(u32, u64)>,
    /// Schedules whose replayed prefix met other parked roles.
    pub divergent: u64,
    /// Schedules cut at the kernel's most decisions per schedule (the
    /// roles then ran free to their end): neither complete nor explored to
    /// their end.
    pub truncated: u64,
    /// The most decisions one schedule made.
    pub max_decisions: u64,
    /// The exploration's time.
    pub elapsed_ms: u64,
    /// The buggy schedules printed in full, first first.
    pub buggy_schedules: Vec<String>,
    /// The first buggy schedule, in the text form `schedule=` replays.
    pub schedule: Option<String>,
}

impl Explored {
    /// Reads a case's `explore:` diagnostics; `None` without the summary.
    pub fn parse(diagnostics: &[String]) -> Option<Explored> {
        let lines: Vec<&str> = diagnostics
            .iter()
            .filter_map(|d| d.strip_prefix("explore: "))
            .collect();
        let summary = lines.iter().find(|l| l.starts_with("row="))?;
        let num = |k: &str| {
            crate::ktap::diag_value(summary, k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut x = Explored {
            schedules: num("schedules"),
            complete: num("complete"),
            pruned_total: num("pruned"),
            buggy: num("buggy"),
            exhausted: num("exhausted") == 1,
            bound: crate::ktap::diag_value(summary, "bound").and_then(|v| v.parse().ok()),
            gave_up: crate::ktap::diag_value(summary, "gave_up")
                .and_then(|v| v.split_once(':'))
                .and_then(|(b, n)| Some((b.parse().ok()?, n.parse().ok()?))),
            divergent: num("divergent"),
            truncated: num("truncated"),
            max_decisions: num("max_decisions"),
            elapsed_ms: num("elapsed_ms"),
            ..Explored::default()
        };
        for l in &lines {
            if let (Some(n), Some(by)) = (
                l.strip_prefix("pruned=")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse().ok()),
                crate::ktap::diag_value(l, "by"),
            ) {
                x.pruned.push((by.to_string(), n));
            } else if let Some(text) = l.strip_prefix("schedule=") {
                x.schedule = Some(text.trim().to_string());
            } else if let Some((_, text)) = l
                .strip_prefix("buggy schedule ")
                .and_then(|r| r.split_once(": "))
            {
                x.buggy_schedules.push(text.trim().to_string());
            }
        }
        Some(x)
    }

    /// How far the exploration went: `all` (every schedule), `all within
    /// bound K`, or `cut short` / `cut short within bound K` (by the
    /// schedule or time limit).
    pub fn coverage(&self) -> String {
        let within = self
            .bound
            .map_or(String::new(), |b| format!(" within bound {b}"));
        if self.exhausted {
            format!("all{within}")
        } else {
            format!("cut short{within}")
        }
    }

    /// The pruned schedules grouped by the waits of their cycles (the
    /// `held:role@point` parts left out: the same refusal met at several
    /// points), largest first: `(waits, schedules, proofs)`.
    pub fn pruned_by_waits(&self) -> Vec<(String, u64, usize)> {
        let mut groups: Vec<(String, u64, usize)> = Vec::new();
        for (proof, n) in &self.pruned {
            let (fix, cycle) = match proof.strip_prefix("fix:") {
                Some(c) => ("fix:", c),
                None => ("", proof.as_str()),
            };
            let waits: Vec<&str> = cycle
                .split('+')
                .filter(|p| !p.starts_with("held:"))
                .collect();
            let key = format!("{fix}{}", waits.join("+"));
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => {
                    g.1 += n;
                    g.2 += 1;
                }
                None => groups.push((key, *n, 1)),
            }
        }
        groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        groups
    }
}

/// Why the explore cell `c` is not met by `o` beyond its outcome: the
/// exploration's figures missing, a buggy cell without a schedule to
/// replay, a clean one whose exploration was cut short.
fn explore_unmet(c: &Cell, o: &Observed) -> Option<String> {
    if c.mode != Mode::Explore || c.expect == Expect::Skip || !o.case_ok {
        return None;
    }
    let Some(x) = &o.explore else {
        return Some("no `# explore: row=` summary".into());
    };
    match c.expect {
        Expect::Bug if x.buggy == 0 => Some(format!(
            "no buggy schedule in {} schedules{}",
            x.schedules,
            x.bound.map(|b| format!(" within bound {b}")).unwrap_or_default()
        )),
        Expect::Bug if x.schedule.is_none() => {
            Some("buggy schedules, each found after its schedule was released (the roles then ran free): none to replay".into())
        }
        // Clean over every schedule, or over the schedules within the
        // bound it states (the space too large to exhaust): an unbounded
        // exploration cut short says nothing of the orderings it left.
        Expect::Clean if !x.exhausted && x.bound.is_none() => Some(format!(
            "{} unbounded schedules, not exhausted and no bound: the orderings left out are unknown",
            x.schedules
        )),
        _ => None,
    }
}

/// The cells a boot ran, from its KTAP suite `scenario`.
pub fn observed(doc: &Document) -> Vec<Observed> {
    let mut out = Vec::new();
    for (name, r) in doc.cases() {
        let Some(case) = name.strip_prefix("scenario.") else {
            continue;
        };
        let line = r.diagnostics.iter().find(|d| d.starts_with("row="));
        let value = |key: &str| line.and_then(|l| crate::ktap::diag_value(l, key));
        let mut parts = case.splitn(3, ':');
        let (row, variant, mode) = (parts.next(), parts.next(), parts.next());
        let mode = value("mode").or(mode).and_then(Mode::from_name);
        // The case name says whether the row has a flush axis.
        let (variant, flush) = match variant.map(|v| v.split_once('@')) {
            Some(Some((v, f))) => (Some(v), Some(f.to_string())),
            _ => (variant, None),
        };
        let (Some(row), Some(variant), Some(mode)) =
            (value("row").or(row), value("variant").or(variant), mode)
        else {
            continue;
        };
        let note = match &r.directive {
            Some(crate::ktap::Directive::Skip(why)) => Some(why.clone()),
            _ if !r.ok => doc.failure_reason(&name, &r),
            _ => None,
        };
        out.push(Observed {
            row: row.to_string(),
            variant: variant.to_string(),
            flush,
            mode,
            outcome: value("outcome").unwrap_or("failed").to_string(),
            iterations: value("iterations")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            hits: value("hits").and_then(|v| v.parse().ok()).unwrap_or(0),
            overlap: value("overlap").and_then(|v| v.parse().ok()).unwrap_or(0),
            delays: value("delays") != Some("0"),
            first_hit_ns: value("first_hit_ns").and_then(|v| v.parse().ok()),
            held_by_fix: value("held_by_fix")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            evidence: value("evidence").filter(|v| *v != "-").map(str::to_string),
            fix_evidence: value("fix_evidence")
                .filter(|v| *v != "-")
                .map(str::to_string),
            case_ok: r.ok,
            note,
            explore: (mode == Mode::Explore)
                .then(|| Explored::parse(&r.diagnostics))
                .flatten(),
        });
    }
    out
}

/// The race reports of a scenario boot: per case that printed one, its
/// lines (`race:`, `trace:`, `cycle:`, `held by the fix:`, `hang:`).
pub fn race_reports(doc: &Document) -> Vec<(String, Vec<String>)> {
    doc.cases()
        .into_iter()
        .filter_map(|(name, r)| {
            let lines: Vec<String> = r
                .diagnostics
                .iter()
                .filter(|d| {
                    ["race:", "trace:", "cycle:", "held by the fix:", "hang:"]
                        .iter()
                        .any(|p| d.starts_with(p))
                })
                .cloned()
                .collect();
            (!lines.is_empty()).then_some((name, lines))
        })
        .collect()
}

/// Writes each race report of a boot of `arch` to
/// `dir/<arch>.<row>.<variant>.<mode>.txt`; returns the files written.
pub fn write_race_reports(
    dir: &std::path::Path,
    arch: Arch,
    doc: &Document,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, lines) in race_reports(doc) {
        let case = name.strip_prefix("scenario.").unwrap_or(&name);
        let file = dir.join(format!("{arch}.{}.txt", case.replace(':', ".")));
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&file, text)?;
        written.push(file);
    }
    Ok(written)
}

/// Which cells a run asked for.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// `None` or `all`: every row.
    pub row: Option<String>,
    /// A variant, or every one.
    pub variant: Option<String>,
    /// A flush strategy (only cells of rows with a flush axis run under
    /// one), or every cell.
    pub flush: Option<String>,
    /// A mode, or forced and natural (explore cells run only when asked
    /// for).
    pub mode: Option<Mode>,
}

impl Selection {
    /// Whether the selection includes `c`.
    pub fn includes(&self, c: &Cell) -> bool {
        self.row.as_deref().is_none_or(|r| r == "all" || r == c.row)
            && self.variant.as_deref().is_none_or(|v| v == c.variant)
            && self.flush.as_deref().is_none_or(|f| Some(f) == c.flush)
            && self.mode.map_or(c.mode != Mode::Explore, |m| m == c.mode)
    }

    /// The cells of `row` (`all`: every row), of `variant` and under
    /// `flush` if given, in `mode` if given (else forced and natural).
    pub fn new(row: &str, variant: Option<&str>, flush: Option<&str>, mode: Option<Mode>) -> Self {
        Selection {
            row: Some(row.to_string()),
            variant: variant.map(str::to_string),
            flush: flush.map(str::to_string),
            mode,
        }
    }

    /// Exactly the cell a boot reported as `o`.
    pub fn observed(o: &Observed) -> Self {
        Self::new(&o.row, Some(&o.variant), o.flush.as_deref(), Some(o.mode))
    }

    /// Exactly the cell `c`.
    pub fn cell(c: &Cell) -> Self {
        Selection {
            row: Some(c.row.to_string()),
            variant: Some(c.variant.to_string()),
            flush: c.flush.map(str::to_string),
            mode: Some(c.mode),
        }
    }
}

/// One line of the comparison.
#[derive(Clone, Debug)]
pub struct Line {
    /// The cell's coordinates.
    pub row: String,
    /// Variant.
    pub variant: String,
    /// Flush strategy, for a row with a flush axis.
    pub flush: Option<String>,
    /// Mode.
    pub mode: Mode,
    /// The expectation, if the table has the cell.
    pub expect: Option<Expect>,
    /// What the boot showed, if it ran the cell (its outcome `vacuous`
    /// where the floor judged a `clean` run so).
    pub observed: Option<Observed>,
    /// Whether the two agree.
    pub ok: bool,
    /// Why they do not, beyond the outcome (a proof not met, an overlap
    /// below the floor).
    pub why: Option<String>,
    /// Why the expectation is not the table's main one (a property the
    /// boot measured absent).
    pub because: Option<String>,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = self.expect.map_or("(none)", Expect::name);
        if self.mode == Mode::Explore {
            return self.fmt_explore(f, exp);
        }
        let (obs, it, hits, overlap, first) = match &self.observed {
            Some(o) => (
                o.outcome.clone(),
                o.iterations.to_string(),
                o.hits.to_string(),
                o.overlap.to_string(),
                o.first_hit_ns
                    .map_or("-".into(), |t| format!("{:.3}", t as f64 / 1e6)),
            ),
            None => (
                "(not run)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ),
        };
        write!(
            f,
            "{:<23} {:<15} {:<8} {:<11} {:<11} {:>10} {:>7} {:>8} {:>13}  {}",
            self.row,
            label(&self.variant, self.flush.as_deref()),
            self.mode.name(),
            exp,
            obs,
            it,
            hits,
            overlap,
            first,
            self.verdict()
        )?;
        if let Some(because) = &self.because {
            write!(f, "  ({because})")?;
        }
        if let Some(why) = &self.why {
            write!(f, "  ({why})")?;
        }
        if let Some(note) = self.observed.as_ref().and_then(|o| o.note.as_ref()) {
            write!(f, "  ({note})")?;
        }
        Ok(())
    }
}

/// The header matching [`Line`]'s `Display` of a forced or natural cell.
pub const HEADER: &str =
    "row                     variant         mode     expected    observed    iterations    hits  overlap  first_hit_ms";

/// The header matching [`Line`]'s `Display` of an explore cell.
pub const EXPLORE_HEADER: &str =
    "row                     variant         mode     expected    observed     schedules  pruned   buggy   time_s  explored";

impl Line {
    /// The variant as the kernel's case name spells it: `variant` or
    /// `variant@flush`.
    pub fn label(&self) -> String {
        label(&self.variant, self.flush.as_deref())
    }

    /// The header of this line's columns.
    pub fn header(&self) -> &'static str {
        match self.mode {
            Mode::Explore => EXPLORE_HEADER,
            _ => HEADER,
        }
    }

    /// An explore cell: schedules, pruned and buggy schedules, the time
    /// and how far the exploration went ([`Explored::coverage`]).
    fn fmt_explore(&self, f: &mut fmt::Formatter<'_>, exp: &str) -> fmt::Result {
        let o = self.observed.as_ref();
        let x = o.and_then(|o| o.explore.as_ref());
        let fig = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "{:<23} {:<15} {:<8} {:<11} {:<11} {:>10} {:>7} {:>7} {:>8}  {:<22}  {}",
            self.row,
            label(&self.variant, self.flush.as_deref()),
            self.mode.name(),
            exp,
            o.map_or("(not run)", |o| o.outcome.as_str()),
            fig(x.map(|x| x.schedules)),
            fig(x.map(|x| x.pruned_total)),
            fig(x.map(|x| x.buggy)),
            x.map_or("-".into(), |x| format!("{:.1}", x.elapsed_ms as f64 / 1e3)),
            x.map_or("-".into(), Explored::coverage),
            self.verdict()
        )?;
        if let Some(why) = &self.why {
            write!(f, "  ({why})")?;
        }
        if let Some(note) = o.and_then(|o| o.note.as_ref()) {
            write!(f, "  ({note})")?;
        }
        Ok(())
    }

    /// The KTAP case of this line's cell: `scenario.row:label:mode`.
    pub fn case(&self) -> String {
        format!(
            "scenario.{}:{}:{}",
            self.row,
            label(&self.variant, self.flush.as_deref()),
            self.mode.name()
        )
    }

    /// The comparison's word: `ok`, `skip` (the cell agrees and does not
    /// exist on this architecture: a skip is never shown as `ok`), or
    /// `MISMATCH`.
    pub fn verdict(&self) -> &'static str {
        match (self.ok, &self.observed) {
            (false, _) => "MISMATCH",
            (true, Some(o)) if o.outcome == "skip" => "skip",
            (true, _) => "ok",
        }
    }
}

/// Compares what a boot of `arch` on `platform` (its platform line,
/// [`Platform::of`]) observed with the table, over the cells `sel` asks
/// for: every selected cell must have run and agree, with the expectation
/// for that platform ([`Cell::judged`]); every cell run must be in the
/// table.
pub fn compare(
    arch: Arch,
    platform: &Platform,
    sel: &Selection,
    observed: &[Observed],
) -> Vec<Line> {
    let mut lines = Vec::new();
    for c in all_cells().filter(|c| c.arch == arch && sel.includes(c)) {
        let o = observed.iter().find(|o| {
            o.row == c.row
                && o.variant == c.variant
                && o.flush.as_deref() == c.flush
                && o.mode == c.mode
        });
        let j = c.judged(platform);
        let why =
            o.and_then(|o| explore_unmet(c, o).or_else(|| j.proof.and_then(|p| p.unmet_by(o))));
        let ok = why.is_none() && o.is_some_and(|o| o.case_ok && j.expect.accepts(&o.outcome));
        // A clean run below the floor is judged `vacuous`, whatever the
        // kernel called it. The floors are measured under TCG: a cell
        // judged by its alternative for a machine without a property is
        // not judged by the floor.
        let vacuous = o
            .filter(|_| j.because.is_none())
            .and_then(|o| c.below_floor(&o.outcome, o.iterations, o.overlap, o.delays));
        let observed = o.cloned().map(|mut o| {
            if vacuous.is_some() {
                o.outcome = "vacuous".into();
            }
            o
        });
        lines.push(Line {
            row: c.row.into(),
            variant: c.variant.into(),
            flush: c.flush.map(str::to_string),
            mode: c.mode,
            expect: Some(j.expect),
            observed,
            ok: ok && vacuous.is_none(),
            why: why.or(vacuous),
            because: j.because,
        });
    }
    for o in observed {
        if lookup(&o.row, arch, &o.variant, o.flush.as_deref(), o.mode).is_none() {
            lines.push(Line {
                row: o.row.clone(),
                variant: o.variant.clone(),
                flush: o.flush.clone(),
                mode: o.mode,
                expect: None,
                observed: Some(o.clone()),
                ok: false,
                why: None,
                because: None,
            });
        }
    }
    lines
}

/// Whether the table has cells of `arch` that `sel` includes.
pub fn has_cells(arch: Arch, sel: &Selection) -> bool {
    all_cells().any(|c| c.arch == arch && sel.includes(c))
}

/// Compares a forced boot that ran a schedule given on its command line
/// (`schedule=`, a replay of an explored one) with the table's cells:
/// the table states what the row's own schedule shows, so a replayed cell
/// is reported, not judged: it agrees when it ran to a result (`bug`,
/// `clean`, `impossible`; `skip` where the table skips the row).
pub fn compare_replay(arch: Arch, sel: &Selection, observed: &[Observed]) -> Vec<Line> {
    compare(arch, &Platform::tcg_facts(), sel, observed)
        .into_iter()
        .map(|mut l| {
            l.ok = l.observed.as_ref().is_some_and(|o| {
                o.case_ok
                    && (["bug", "clean", "impossible"].contains(&o.outcome.as_str())
                        || (o.outcome == "skip" && l.expect == Some(Expect::Skip)))
            });
            l.why = Some("a given schedule: reported, not judged by the table".into());
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcg() -> Platform {
        Platform::tcg_facts()
    }

    /// Every cell as judged on every machine: with its main expectation,
    /// and with its alternative where it has one.
    fn judged_cells() -> Vec<Cell> {
        let mut out = Vec::new();
        for c in all_cells() {
            out.push(*c);
            if let Some(w) = c.without {
                out.push(Cell {
                    expect: w.expect,
                    proof: w.proof,
                    without: None,
                    ..*c
                });
            }
        }
        out
    }

    #[test]
    fn every_impossible_cell_has_its_proof() {
        for c in judged_cells() {
            match (c.mode, c.expect, c.proof) {
                (Mode::Forced, Expect::Impossible, Some(Proof::Cycle(_))) => {}
                (Mode::Explore, Expect::Clean, Some(Proof::Pruned(p))) => {
                    let forced = lookup(c.row, c.arch, c.variant, c.flush, Mode::Forced);
                    assert_eq!(forced.unwrap().proof, Some(Proof::Cycle(p)), "{c:?}");
                }
                (_, _, Some(Proof::Pruned(_))) => {
                    panic!("{c:?}: pruned proof not on explore clean")
                }
                (_, Expect::Impossible, _) => panic!("{c:?}: impossible without its cycle"),
                (_, _, Some(Proof::Cycle(_))) => panic!("{c:?}: a cycle for a cell not impossible"),
                (Mode::Forced, Expect::Clean, Some(Proof::HeldByFix(_))) | (_, _, None) => {}
                (_, _, Some(p)) => panic!("{c:?}: {p:?} on a cell not forced clean"),
            }
        }
    }

    #[test]
    fn every_cell_is_unique_and_rows_are_complete() {
        for (i, a) in CELLS.iter().enumerate() {
            assert!(
                CELLS[i + 1..]
                    .iter()
                    .all(|b| (a.row, a.arch, a.variant, a.flush, a.mode)
                        != (b.row, b.arch, b.variant, b.flush, b.mode)),
                "{a:?} listed twice"
            );
            // Every row has both modes of each variant, and every
            // architecture either runs the variant (under each strategy
            // its other cells use there) or skips the whole row.
            for arch in Arch::ALL {
                let here: Vec<&Cell> = CELLS
                    .iter()
                    .filter(|c| c.row == a.row && c.arch == arch)
                    .collect();
                assert!(
                    here.iter().any(|c| c.variant == a.variant),
                    "{} {} {arch}: missing",
                    a.row,
                    a.variant
                );
                let skipped = here.iter().all(|c| c.expect == Expect::Skip);
                let flushes: Vec<Option<&str>> = here.iter().map(|c| c.flush).collect();
                for flush in flushes {
                    for mode in [Mode::Forced, Mode::Natural] {
                        assert!(
                            lookup(a.row, arch, a.variant, flush, mode).is_some(),
                            "{} {} {arch} {flush:?} {}: missing",
                            a.row,
                            a.variant,
                            mode.name()
                        );
                    }
                }
                // A skip stands for a whole row, never for one variant.
                assert!(
                    skipped || here.iter().all(|c| c.expect != Expect::Skip),
                    "{} {arch}: a skip that is not the whole row",
                    a.row
                );
            }
            // A flush strategy belongs to the cell's architecture.
            if let Some(f) = a.flush {
                assert_eq!(flush_arch(f), Some(a.arch), "{a:?}");
            }
        }
    }

    fn obs(outcome: &str) -> Observed {
        Observed {
            row: "demo-lock-vs-put".into(),
            variant: "buggy".into(),
            flush: None,
            mode: Mode::Forced,
            outcome: outcome.into(),
            iterations: 3,
            hits: 3,
            overlap: 3,
            delays: false,
            first_hit_ns: Some(1),
            held_by_fix: 0,
            evidence: None,
            fix_evidence: None,
            case_ok: outcome != "hang",
            note: None,
            explore: None,
        }
    }

    #[test]
    fn a_cycle_or_a_hold_other_than_the_tables_fails_the_cell() {
        let sel = Selection::new(
            "ptfree-vs-gup-fast",
            Some("immediate"),
            Some("ipi"),
            Some(Mode::Forced),
        );
        let cell = |evidence: &str| Observed {
            row: "ptfree-vs-gup-fast".into(),
            variant: "immediate".into(),
            flush: Some("ipi".into()),
            outcome: "impossible".into(),
            iterations: 1,
            hits: 0,
            first_hit_ns: None,
            evidence: Some(evidence.into()),
            ..obs("impossible")
        };
        let right = compare(Arch::X86_64, &tcg(), &sel, &[cell(UNMAP_FLUSH_IPI)]);
        assert!(right[0].ok, "{}", right[0]);
        let ptl = "held:gup@gup_fast:after_pmd_read+ptl:unmap>gup";
        let wrong = compare(Arch::X86_64, &tcg(), &sel, &[cell(ptl)]);
        assert!(
            !wrong[0].ok && format!("{}", wrong[0]).contains(ptl),
            "{}",
            wrong[0]
        );
        // A fix that holds the schedule in some iterations only.
        let sel = Selection {
            variant: Some("rcu".into()),
            flush: Some("nmi".into()),
            ..sel
        };
        let held = |n: u64| Observed {
            row: "ptfree-vs-gup-fast".into(),
            variant: "rcu".into(),
            flush: Some("nmi".into()),
            outcome: "clean".into(),
            hits: 0,
            held_by_fix: n,
            fix_evidence: Some(UNMAP_RCU_GP.into()),
            ..obs("clean")
        };
        assert!(compare(Arch::X86_64, &tcg(), &sel, &[held(3)])[0].ok);
        assert!(!compare(Arch::X86_64, &tcg(), &sel, &[held(2)])[0].ok);
    }

    #[test]
    fn an_alternative_is_judged_only_where_the_property_was_measured_absent() {
        let sel = Selection {
            row: Some("zap-rmap-vs-mkclean".into()),
            variant: Some("buggy".into()),
            flush: Some("ipi".into()),
            mode: Some(Mode::Forced),
        };
        let cell = |outcome: &str, evidence: Option<&str>| Observed {
            row: "zap-rmap-vs-mkclean".into(),
            variant: "buggy".into(),
            flush: Some("ipi".into()),
            iterations: 1,
            hits: 0,
            evidence: evidence.map(str::to_string),
            ..obs(outcome)
        };
        let impossible = cell("impossible", Some(FAULT_ON_ZAP_PTL));
        let bug = obs("bug");
        let bug = Observed {
            row: "zap-rmap-vs-mkclean".into(),
            flush: Some("ipi".into()),
            ..bug
        };
        let line = |p: &str| Platform::from_line(p);
        let no_stale =
            line("stale_tlb_after_pte_clear=no ipi_held_by_irqs_off=yes skey_change_bit=n/a");
        // Measured absent: the alternative, with its proof and its reason.
        let l = &compare(
            Arch::X86_64,
            &no_stale,
            &sel,
            std::slice::from_ref(&impossible),
        )[0];
        assert!(l.ok, "{l}");
        assert_eq!(l.expect, Some(Impossible));
        let shown = format!("{l}");
        assert!(
            shown.contains(
                "expects impossible: this platform keeps no stale TLB entry after a PTE clear"
            ),
            "{shown}"
        );
        let other_cycle = cell("impossible", Some(UNMAP_FLUSH_IPI));
        assert!(!compare(Arch::X86_64, &no_stale, &sel, &[other_cycle])[0].ok);
        assert!(!compare(Arch::X86_64, &no_stale, &sel, std::slice::from_ref(&bug))[0].ok);
        // Present, not measured, unknown, or no line at all: the TCG facts.
        for p in [
            tcg(),
            line("stale_tlb_after_pte_clear=yes"),
            line("stale_tlb_after_pte_clear=unmeasured"),
            line("stale_tlb_after_pte_clear=error"),
            line("stale_tlb_after_pte_clear=maybe"),
            line("ipi_held_by_irqs_off=no"),
        ] {
            let l = &compare(Arch::X86_64, &p, &sel, std::slice::from_ref(&bug))[0];
            assert!(l.ok && l.because.is_none(), "{p:?}: {l}");
            assert!(!compare(Arch::X86_64, &p, &sel, std::slice::from_ref(&impossible))[0].ok);
        }
        // A cell without an alternative is judged the same everywhere.
        let demo = Selection {
            row: Some("demo-lock-vs-put".into()),
            variant: Some("buggy".into()),
            flush: None,
            mode: Some(Mode::Forced),
        };
        let l = &compare(Arch::X86_64, &no_stale, &demo, &[obs("bug")])[0];
        assert!(l.ok && l.because.is_none(), "{l}");
    }

    #[test]
    fn alternatives_are_stated_per_property_and_differ_from_the_main_expectation() {
        let differs = |c: &Cell| {
            c.without
                .is_some_and(|w| (w.expect, w.proof) != (c.expect, c.proof))
        };
        for c in CELLS.iter() {
            if let Some(w) = c.without {
                let other = lookup(
                    c.row,
                    c.arch,
                    c.variant,
                    c.flush,
                    match c.mode {
                        Mode::Forced => Mode::Natural,
                        // Explore cells state no alternative.
                        Mode::Natural | Mode::Explore => Mode::Forced,
                    },
                )
                .expect("both modes");
                assert!(
                    differs(c) || differs(other),
                    "{c:?}: an alternative that changes nothing"
                );
                assert!(
                    matches!(w.expect, Clean | Impossible),
                    "{c:?}: a machine without a property shows clean or impossible"
                );
                assert_ne!(c.expect, Skip, "{c:?}");
            }
        }
    }

    #[test]
    fn comparison_flags_mismatches_missing_and_unknown_cells() {
        let sel = Selection::new("demo-lock-vs-put", Some("buggy"), None, Some(Mode::Forced));
        let lines = compare(Arch::S390x, &tcg(), &sel, &[obs("bug")]);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ok);
        assert!(!compare(Arch::S390x, &tcg(), &sel, &[obs("clean")])[0].ok);
        assert!(!compare(Arch::S390x, &tcg(), &sel, &[obs("hang")])[0].ok);
        assert!(
            !compare(Arch::S390x, &tcg(), &sel, &[])[0].ok,
            "a cell not run"
        );
        let mut stray = obs("bug");
        stray.row = "no-such-row".into();
        let lines = compare(Arch::S390x, &tcg(), &sel, &[obs("bug"), stray]);
        assert_eq!(lines.len(), 2);
        assert!(!lines[1].ok, "a cell missing from the table");
        assert!(Expect::Report.accepts("bug") && Expect::Report.accepts("clean"));
        assert!(!Expect::Report.accepts("vacuous"));
    }

    #[test]
    fn every_natural_cell_that_can_be_clean_has_a_floor() {
        for c in all_cells() {
            let can_be_clean = matches!(c.expect, Expect::Clean | Expect::Report);
            match (c.mode, can_be_clean, c.floor) {
                (Mode::Natural, true, Some(f)) if f > 0 && f <= FLOOR_PER => {}
                (Mode::Natural, true, f) => {
                    panic!("{c:?}: a natural cell that can be clean has floor {f:?}")
                }
                (_, _, Some(_)) => {
                    panic!("{c:?}: a floor on a cell that is not a natural clean one")
                }
                _ => {}
            }
        }
    }

    #[test]
    fn a_clean_run_below_its_floor_is_judged_vacuous() {
        let c = CELLS
            .iter()
            .find(|c| c.mode == Mode::Natural && c.expect == Expect::Clean)
            .unwrap();
        let f = c.floor.unwrap();
        assert_eq!(c.required_overlap(FLOOR_PER), Some(f));
        assert_eq!(c.required_overlap(FLOOR_PER * 3), Some(3 * f));
        // Scaled to the iterations run, rounded down: too short a run is
        // not judged.
        let one = FLOOR_PER.div_ceil(f);
        assert_eq!(c.required_overlap(one), Some(1));
        assert_eq!(c.required_overlap(one - 1), Some(0));
        assert_eq!(c.required_overlap(0), Some(0));
        let sel = Selection::cell(c);
        let run = |outcome: &str, overlap: u64, delays: bool| Observed {
            row: c.row.into(),
            variant: c.variant.into(),
            flush: c.flush.map(str::to_string),
            mode: Mode::Natural,
            outcome: outcome.into(),
            iterations: FLOOR_PER,
            hits: u64::from(outcome == "bug"),
            overlap,
            delays,
            first_hit_ns: None,
            ..obs(outcome)
        };
        let at = compare(c.arch, &tcg(), &sel, &[run("clean", f, true)]);
        assert!(at[0].ok, "{}", at[0]);
        let below = compare(c.arch, &tcg(), &sel, &[run("clean", f - 1, true)]);
        let l = &below[0];
        assert!(!l.ok && l.verdict() == "MISMATCH", "{l}");
        assert_eq!(l.observed.as_ref().unwrap().outcome, "vacuous");
        let why = format!("overlap {} below the floor {f} ", f - 1);
        assert!(format!("{l}").contains(&why), "{l}");
        assert!(
            format!("{l}").contains("the roles rarely met inside the window"),
            "{l}"
        );
        // Without its delays a run is not what the floor was measured on:
        // its overlap is a figure only.
        assert!(compare(c.arch, &tcg(), &sel, &[run("clean", 0, false)])[0].ok);
        // A hit is judged as a hit, whatever the overlap.
        let bug = compare(c.arch, &tcg(), &sel, &[run("bug", 0, true)]);
        assert_eq!(bug[0].observed.as_ref().unwrap().outcome, "bug");
        assert!(!bug[0].ok);
    }

    #[test]
    fn race_reports_are_collected_and_written() {
        let doc = crate::ktap::parse(
            "KTAP version 1\n1..1\n    KTAP version 1\n    1..2\n    # race: BUG: x\n    # trace: t=+0ns cpu1 a\n    # row=r variant=v mode=forced outcome=bug\n    ok 1 r:v:forced\n    # row=r variant=w mode=forced outcome=clean\n    ok 2 r:w:forced\nok 1 scenario\n",
        );
        let reports = race_reports(&doc);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].0, "scenario.r:v:forced");
        assert_eq!(reports[0].1, ["race: BUG: x", "trace: t=+0ns cpu1 a"]);
        let dir = std::env::temp_dir().join(format!("quiesce-reports-{}", std::process::id()));
        let files = write_race_reports(&dir, Arch::S390x, &doc).unwrap();
        assert_eq!(files, [dir.join("s390x.r.v.forced.txt")]);
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert_eq!(text, "race: BUG: x\ntrace: t=+0ns cpu1 a\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn observed_reads_the_kernels_lines() {
        let text = "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: scenario\n    1..2\n    \
# race: scenario=demo-lock-vs-put variant=buggy mode=forced seed=0x1\n    \
# row=demo-lock-vs-put variant=buggy mode=forced outcome=bug iterations=3 hits=3 overlap=2 first_hit_ns=12 seed=0x1 delays=0\n    \
ok 1 demo-lock-vs-put:buggy:forced\n    \
# row=demo-lock-vs-put variant=fixed mode=natural outcome=vacuous iterations=9 hits=0 first_hit_ns=- seed=0x1\n    \
# demo-lock-vs-put:fixed:natural: vacuous\n    \
not ok 2 demo-lock-vs-put:fixed:natural\nnot ok 1 scenario\n";
        let doc = crate::ktap::parse(text);
        let o = observed(&doc);
        assert_eq!(o.len(), 2, "{doc:?}");
        assert_eq!(
            (
                o[0].outcome.as_str(),
                o[0].iterations,
                o[0].hits,
                o[0].first_hit_ns
            ),
            ("bug", 3, 3, Some(12))
        );
        assert_eq!((o[1].outcome.as_str(), o[1].case_ok), ("vacuous", false));
        assert_eq!(o[1].first_hit_ns, None);
        assert_eq!((o[0].overlap, o[0].delays), (2, false));
        assert_eq!(
            (o[1].overlap, o[1].delays),
            (0, true),
            "no keys: none, armed"
        );
    }

    #[test]
    fn every_forced_cell_has_its_explore_cell_derived_from_the_entry() {
        assert_eq!(EXPLORE_CELLS.len() * 2, CELLS.len());
        for c in CELLS.iter().filter(|c| c.mode == Mode::Forced) {
            let x = lookup(c.row, c.arch, c.variant, c.flush, Mode::Explore)
                .unwrap_or_else(|| panic!("{c:?}: no explore cell"));
            let natural = lookup(c.row, c.arch, c.variant, c.flush, Mode::Natural).unwrap();
            let want = match (c.expect, natural.expect) {
                (Expect::Skip, _) => Expect::Skip,
                (Expect::Bug, _) | (_, Expect::Bug) => Expect::Bug,
                (Expect::Report, _) | (_, Expect::Report) => Expect::Report,
                _ => Expect::Clean,
            };
            assert_eq!(x.expect, want, "{c:?}");
        }
        let cell = |row, arch, variant, flush| {
            lookup(row, arch, variant, Some(flush), Mode::Explore).unwrap()
        };
        let x = cell("ptfree-vs-gup-fast", S390x, "immediate", "ipte");
        assert_eq!((x.expect, x.proof), (Expect::Bug, None));
        let x = cell("ptfree-vs-gup-fast", X86_64, "rcu", "ipi");
        assert_eq!(
            (x.expect, x.proof),
            (Expect::Clean, Some(Proof::Pruned(UNMAP_FLUSH_IPI)))
        );
        let x = lookup(
            "wp-unlock-vs-zap",
            X86_64,
            "fixed-immediate",
            None,
            Mode::Explore,
        );
        assert_eq!(x.unwrap().expect, Expect::Report);
        let x = lookup("gup-fast-folding", X86_64, "fixed", None, Mode::Explore);
        assert_eq!(x.unwrap().expect, Expect::Skip);
    }

    #[test]
    fn explore_cells_run_only_when_asked_for() {
        let x = lookup("demo-lock-vs-put", S390x, "buggy", None, Mode::Explore).unwrap();
        assert!(!Selection::default().includes(x));
        let sel = Selection {
            mode: Some(Mode::Explore),
            ..Selection::default()
        };
        assert!(sel.includes(x));
        assert!(!sel.includes(&CELLS[0]));
        assert!(CELLS.iter().all(|c| Selection::default().includes(c)));
    }

    /// The `# explore:` lines of a buggy cell, as the kernel prints them.
    const EXPLORE_BUG: &str = "KTAP version 1\n# quiesce arch=s390x cpus=4\n1..1\n    KTAP version 1\n    # Subtest: scenario\n    1..1\n    \
# explore: buggy schedule 1: gup@role:start,unmap@role:start,gup~role:start\n    \
# explore: buggy schedule 2: unmap@role:start,gup@role:start\n    \
# row=ptfree-vs-gup-fast variant=immediate flush=ipte mode=explore outcome=bug iterations=464 hits=102 first_hit_ns=99707932 held_by_fix=0 evidence=- fix_evidence=-\n    \
# explore: row=ptfree-vs-gup-fast variant=immediate flush=ipte schedules=464 complete=264 pruned=34 buggy=102 exhausted=1 bound=none gave_up=- divergent=0 truncated=4 max_decisions=23 elapsed_ms=6628\n    \
# explore: pruned=20 by=held:unmap@gather:after_table_free+mmap-lock:gup>unmap\n    \
# explore: pruned=12 by=held:unmap@sync:free_page+mmap-lock:gup>unmap\n    \
# explore: pruned=2 by=fix:call-ipi:unmap>gup+held:gup@gup_fast:after_pmd_read\n    \
# explore: schedule=gup@role:start,unmap@role:start,gup~role:start\n    \
ok 1 ptfree-vs-gup-fast:immediate@ipte:explore\nok 1 scenario\n";

    #[test]
    fn explore_lines_are_read() {
        let o = observed(&crate::ktap::parse(EXPLORE_BUG));
        assert_eq!(o.len(), 1);
        assert_eq!(
            (o[0].mode, o[0].flush.as_deref(), o[0].iterations, o[0].hits),
            (Mode::Explore, Some("ipte"), 464, 102)
        );
        let x = o[0].explore.as_ref().unwrap();
        assert_eq!(
            (
                x.schedules,
                x.complete,
                x.pruned_total,
                x.buggy,
                x.exhausted
            ),
            (464, 264, 34, 102, true)
        );
        assert_eq!(
            (x.bound, x.gave_up, x.truncated, x.max_decisions),
            (None, None, 4, 23)
        );
        assert_eq!(x.elapsed_ms, 6628);
        assert_eq!(x.pruned.len(), 3);
        assert_eq!(
            x.pruned[0],
            (
                "held:unmap@gather:after_table_free+mmap-lock:gup>unmap".into(),
                20
            )
        );
        assert_eq!(
            x.schedule.as_deref(),
            Some("gup@role:start,unmap@role:start,gup~role:start")
        );
        assert_eq!(x.buggy_schedules.len(), 2);
        assert_eq!(x.coverage(), "all");
        assert_eq!(
            x.pruned_by_waits(),
            [
                ("mmap-lock:gup>unmap".to_string(), 32, 2),
                ("fix:call-ipi:unmap>gup".to_string(), 2, 1)
            ]
        );
        let sel = Selection::new(
            "ptfree-vs-gup-fast",
            Some("immediate"),
            Some("ipte"),
            Some(Mode::Explore),
        );
        let lines = compare(S390x, &tcg(), &sel, &o);
        assert!(lines[0].ok, "{}", lines[0]);
        assert_eq!(lines[0].header(), EXPLORE_HEADER);
        let shown = lines[0].to_string();
        assert!(
            shown.contains(" 464 ") && shown.contains(" 102 ") && shown.contains("all"),
            "{shown}"
        );
        // A forced or natural cell is none of an explore run's business.
        assert!(o[0].explore.is_some() && obs("bug").explore.is_none());
    }

    #[test]
    fn explore_cells_are_judged_by_their_figures() {
        let base = observed(&crate::ktap::parse(EXPLORE_BUG)).remove(0);
        let cell = |variant: &str, flush: &str, outcome: &str, x: Explored| Observed {
            variant: variant.into(),
            flush: Some(flush.into()),
            outcome: outcome.into(),
            hits: x.buggy,
            explore: Some(x),
            ..base.clone()
        };
        let judge =
            |arch, o: Observed| compare(arch, &tcg(), &Selection::observed(&o), &[o]).remove(0);
        let x = base.explore.clone().unwrap();
        // A buggy cell must give its schedule to replay.
        let l = judge(
            S390x,
            cell(
                "immediate",
                "ipte",
                "bug",
                Explored {
                    schedule: None,
                    ..x.clone()
                },
            ),
        );
        assert!(!l.ok && l.to_string().contains("replay"), "{l}");
        // A clean cell: no buggy schedule, every schedule within the bound.
        let clean = Explored {
            buggy: 0,
            schedule: None,
            bound: Some(2),
            ..x.clone()
        };
        let l = judge(S390x, cell("rcu", "ipte", "clean", clean.clone()));
        assert!(l.ok, "{l}");
        assert!(l.to_string().contains("all within bound 2"), "{l}");
        // Cut short within a bound it states: clean within that bound.
        let cut = Explored {
            exhausted: false,
            ..clean.clone()
        };
        let l = judge(S390x, cell("rcu", "ipte", "clean", cut.clone()));
        assert!(
            l.ok && l.to_string().contains("cut short within bound 2"),
            "{l}"
        );
        // Cut short without a bound: neither exhausted nor bounded.
        let unbounded = Explored { bound: None, ..cut };
        let l = judge(S390x, cell("rcu", "ipte", "clean", unbounded));
        assert!(
            !l.ok && l.to_string().contains("not exhausted and no bound"),
            "{l}"
        );
        assert!(!judge(S390x, cell("rcu", "ipte", "bug", x.clone())).ok);
        // A buggy cell that found no buggy schedule fails for that.
        let l = judge(S390x, cell("immediate", "ipte", "clean", clean.clone()));
        assert!(
            !l.ok && l.to_string().contains("no buggy schedule in"),
            "{l}"
        );
        // Without the summary line the cell cannot be judged.
        let l = judge(
            S390x,
            Observed {
                explore: None,
                ..cell("rcu", "ipte", "clean", clean.clone())
            },
        );
        assert!(
            !l.ok && l.to_string().contains("no `# explore: row=`"),
            "{l}"
        );
        // Forced `impossible` by a cycle: explore is clean and pruned some
        // schedules by that cycle (a `fix:` cycle counts as the same one).
        let by = |proof: &str| Explored {
            pruned: vec![(proof.to_string(), 3)],
            ..clean.clone()
        };
        assert!(judge(X86_64, cell("rcu", "ipi", "clean", by(UNMAP_FLUSH_IPI))).ok);
        let fix = format!("fix:{UNMAP_FLUSH_IPI}");
        assert!(judge(X86_64, cell("rcu", "ipi", "clean", by(&fix))).ok);
        let l = judge(X86_64, cell("rcu", "ipi", "clean", by(UNMAP_RCU_GP)));
        assert!(
            !l.ok && l.to_string().contains("no schedule pruned by"),
            "{l}"
        );
        // A given schedule is reported, not judged: any result passes, a
        // hang does not.
        let forced = |outcome: &str| Observed {
            mode: Mode::Forced,
            explore: None,
            ..cell("rcu", "ipte", outcome, clean.clone())
        };
        let sel = Selection::new(
            "ptfree-vs-gup-fast",
            Some("rcu"),
            Some("ipte"),
            Some(Mode::Forced),
        );
        for (outcome, ok) in [
            ("bug", true),
            ("impossible", true),
            ("clean", true),
            ("hang", false),
        ] {
            let o = Observed {
                case_ok: outcome != "hang",
                ..forced(outcome)
            };
            assert_eq!(compare_replay(S390x, &sel, &[o])[0].ok, ok, "{outcome}");
        }
    }
}
