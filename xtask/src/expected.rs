//! The expected outcome of every race-scenario cell — one row per (row,
//! arch, variant, mode) — and the comparison with what a boot observed.
//!
//! This table is the one place the project states what each kernel variant
//! must show on each architecture. `cargo xtask run --scenario ...` (and the
//! plain `cargo xtask run`) print expected against observed and fail on any
//! mismatch; the boot-and-assert test `tests/tests/scenarios.rs` checks every
//! cell.
//!
//! The kernel reports each cell as a case `row:variant:mode` of the KTAP
//! suite `scenario` with one diagnostic line `row=... variant=... mode=...
//! outcome=... iterations=... hits=... first_hit_ns=... ...`
//! ([`observed`] reads it).
//!
//! A row's author adds its cells here, every (arch, variant, mode), with
//! [`Expect::Report`] only where the catalogue says a cell reports its hit
//! rate only.

use crate::ktap::Document;
use crate::Arch;
use std::fmt;

/// Scenario mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Free running, optional random delays.
    Natural,
    /// A schedule over race points.
    Forced,
}

impl Mode {
    /// The kernel's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Natural => "natural",
            Mode::Forced => "forced",
        }
    }

    /// Parses the kernel's spelling.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "natural" => Some(Mode::Natural),
            "forced" => Some(Mode::Forced),
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

/// One cell of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// The row's name (`scenario=`).
    pub row: &'static str,
    /// The architecture.
    pub arch: Arch,
    /// The variant (`variant=`).
    pub variant: &'static str,
    /// The mode.
    pub mode: Mode,
    /// What it must show.
    pub expect: Expect,
}

const fn cell(
    row: &'static str,
    arch: Arch,
    variant: &'static str,
    mode: Mode,
    expect: Expect,
) -> Cell {
    Cell {
        row,
        arch,
        variant,
        mode,
        expect,
    }
}

use Arch::{S390x, X86_64};
use Expect::*;
use Mode::{Forced, Natural};

/// Every cell. Rows in catalogue order; the demonstration row first.
pub const CELLS: &[Cell] = &[
    // demo-lock-vs-put (kernel/src/race/demo.rs): the page's last reference
    // dropped while another CPU holds its lock.
    cell("demo-lock-vs-put", S390x, "buggy", Forced, Bug),
    // Natural buggy: the demonstration's window is a few instructions wide
    // and its hits depend on how the host schedules the two vCPUs (from 0
    // to 2 000 in 10 000 iterations seen on one x86-64 seed): hit rate only.
    cell("demo-lock-vs-put", S390x, "buggy", Natural, Report),
    cell("demo-lock-vs-put", S390x, "fixed", Forced, Clean),
    cell("demo-lock-vs-put", S390x, "fixed", Natural, Clean),
    cell("demo-lock-vs-put", X86_64, "buggy", Forced, Bug),
    cell("demo-lock-vs-put", X86_64, "buggy", Natural, Report),
    cell("demo-lock-vs-put", X86_64, "fixed", Forced, Clean),
    cell("demo-lock-vs-put", X86_64, "fixed", Natural, Clean),
    // wp-unlock-vs-zap (kernel/src/race/wp_unlock.rs), catalogue row 1:
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
    cell("wp-unlock-vs-zap", S390x, "buggy-immediate", Forced, Bug),
    cell("wp-unlock-vs-zap", S390x, "buggy-immediate", Natural, Bug),
    cell("wp-unlock-vs-zap", S390x, "buggy-batched", Forced, Bug),
    cell("wp-unlock-vs-zap", S390x, "buggy-batched", Natural, Report),
    cell("wp-unlock-vs-zap", S390x, "fixed", Forced, Clean),
    cell("wp-unlock-vs-zap", S390x, "fixed", Natural, Clean),
    cell("wp-unlock-vs-zap", X86_64, "buggy-immediate", Forced, Bug),
    cell("wp-unlock-vs-zap", X86_64, "buggy-immediate", Natural, Bug),
    cell("wp-unlock-vs-zap", X86_64, "buggy-batched", Forced, Bug),
    cell("wp-unlock-vs-zap", X86_64, "buggy-batched", Natural, Report),
    cell("wp-unlock-vs-zap", X86_64, "fixed", Forced, Clean),
    cell("wp-unlock-vs-zap", X86_64, "fixed", Natural, Clean),
    // ptfree-vs-gup-fast (kernel/src/race/ptfree.rs, catalogue row 6): a PTE
    // table freed by munmap while GUP-fast walks it with interrupts off.
    // Variants are table freeing x flush strategy; a strategy of the other
    // arch is `skip`. Natural `clean` cells run 10 000 iterations, as the
    // catalogue's CI rule asks.
    // s390x: IPTE sends no IPI, so only the table policy protects.
    cell("ptfree-vs-gup-fast", S390x, "immediate-ipte", Forced, Bug),
    cell("ptfree-vs-gup-fast", S390x, "immediate-ipte", Natural, Bug),
    cell("ptfree-vs-gup-fast", S390x, "ipi-sync-ipte", Forced, Clean),
    cell("ptfree-vs-gup-fast", S390x, "ipi-sync-ipte", Natural, Clean),
    cell("ptfree-vs-gup-fast", S390x, "rcu-ipte", Forced, Clean),
    cell("ptfree-vs-gup-fast", S390x, "rcu-ipte", Natural, Clean),
    cell("ptfree-vs-gup-fast", S390x, "immediate-ipi", Forced, Skip),
    cell("ptfree-vs-gup-fast", S390x, "immediate-ipi", Natural, Skip),
    cell("ptfree-vs-gup-fast", S390x, "ipi-sync-ipi", Forced, Skip),
    cell("ptfree-vs-gup-fast", S390x, "ipi-sync-ipi", Natural, Skip),
    cell("ptfree-vs-gup-fast", S390x, "rcu-ipi", Forced, Skip),
    cell("ptfree-vs-gup-fast", S390x, "rcu-ipi", Natural, Skip),
    cell("ptfree-vs-gup-fast", S390x, "immediate-nmi", Forced, Skip),
    cell("ptfree-vs-gup-fast", S390x, "immediate-nmi", Natural, Skip),
    cell("ptfree-vs-gup-fast", S390x, "ipi-sync-nmi", Forced, Skip),
    cell("ptfree-vs-gup-fast", S390x, "ipi-sync-nmi", Natural, Skip),
    cell("ptfree-vs-gup-fast", S390x, "rcu-nmi", Forced, Skip),
    cell("ptfree-vs-gup-fast", S390x, "rcu-nmi", Natural, Skip),
    // x86-64 with flush IPIs: the unmap waits for the flush IPI the walker
    // holds back before any table is freed. The catalogue names only
    // `immediate`; with IPI sync or RCU the flush IPI also blocks first, so
    // forced is `impossible` there too (the fix's own wait is never reached).
    cell(
        "ptfree-vs-gup-fast",
        X86_64,
        "immediate-ipi",
        Forced,
        Impossible,
    ),
    cell(
        "ptfree-vs-gup-fast",
        X86_64,
        "immediate-ipi",
        Natural,
        Clean,
    ),
    cell(
        "ptfree-vs-gup-fast",
        X86_64,
        "ipi-sync-ipi",
        Forced,
        Impossible,
    ),
    cell("ptfree-vs-gup-fast", X86_64, "ipi-sync-ipi", Natural, Clean),
    cell("ptfree-vs-gup-fast", X86_64, "rcu-ipi", Forced, Impossible),
    cell("ptfree-vs-gup-fast", X86_64, "rcu-ipi", Natural, Clean),
    // x86-64 with NMI shootdown: like s390x.
    cell("ptfree-vs-gup-fast", X86_64, "immediate-nmi", Forced, Bug),
    cell("ptfree-vs-gup-fast", X86_64, "immediate-nmi", Natural, Bug),
    cell("ptfree-vs-gup-fast", X86_64, "ipi-sync-nmi", Forced, Clean),
    cell("ptfree-vs-gup-fast", X86_64, "ipi-sync-nmi", Natural, Clean),
    cell("ptfree-vs-gup-fast", X86_64, "rcu-nmi", Forced, Clean),
    cell("ptfree-vs-gup-fast", X86_64, "rcu-nmi", Natural, Clean),
    cell("ptfree-vs-gup-fast", X86_64, "immediate-ipte", Forced, Skip),
    cell(
        "ptfree-vs-gup-fast",
        X86_64,
        "immediate-ipte",
        Natural,
        Skip,
    ),
    cell("ptfree-vs-gup-fast", X86_64, "ipi-sync-ipte", Forced, Skip),
    cell("ptfree-vs-gup-fast", X86_64, "ipi-sync-ipte", Natural, Skip),
    cell("ptfree-vs-gup-fast", X86_64, "rcu-ipte", Forced, Skip),
    cell("ptfree-vs-gup-fast", X86_64, "rcu-ipte", Natural, Skip),
    // zap-rmap-vs-mkclean (kernel/src/race/zap_rmap.rs, catalogue row 3):
    // Linux 6.1 removes a dirty shared-file page's rmap before the flush under
    // the PTL; writeback's mkclean finds the page unmapped, cleans and writes
    // it while the writer still stores through its stale TLB entry (lost
    // write). x86-64 (IPI and NMI flushes): buggy `bug`; fixed `clean` (forced:
    // mkclean's rmap walk spins on the zap's PTL, the fix's wait, held_by_fix).
    // s390x: IPTE at the clear leaves no stale entry: natural `clean`; forced
    // `impossible` for both variants (the writer's store faults and spins on
    // the zap's PTL, a cycle through the fault, not the fix).
    cell("zap-rmap-vs-mkclean", S390x, "buggy-ipi", Forced, Skip),
    cell("zap-rmap-vs-mkclean", S390x, "buggy-ipi", Natural, Skip),
    cell("zap-rmap-vs-mkclean", S390x, "fixed-ipi", Forced, Skip),
    cell("zap-rmap-vs-mkclean", S390x, "fixed-ipi", Natural, Skip),
    cell("zap-rmap-vs-mkclean", S390x, "buggy-nmi", Forced, Skip),
    cell("zap-rmap-vs-mkclean", S390x, "buggy-nmi", Natural, Skip),
    cell("zap-rmap-vs-mkclean", S390x, "fixed-nmi", Forced, Skip),
    cell("zap-rmap-vs-mkclean", S390x, "fixed-nmi", Natural, Skip),
    cell(
        "zap-rmap-vs-mkclean",
        S390x,
        "buggy-ipte",
        Forced,
        Impossible,
    ),
    cell("zap-rmap-vs-mkclean", S390x, "buggy-ipte", Natural, Clean),
    cell(
        "zap-rmap-vs-mkclean",
        S390x,
        "fixed-ipte",
        Forced,
        Impossible,
    ),
    cell("zap-rmap-vs-mkclean", S390x, "fixed-ipte", Natural, Clean),
    cell("zap-rmap-vs-mkclean", X86_64, "buggy-ipi", Forced, Bug),
    cell("zap-rmap-vs-mkclean", X86_64, "buggy-ipi", Natural, Bug),
    cell("zap-rmap-vs-mkclean", X86_64, "fixed-ipi", Forced, Clean),
    cell("zap-rmap-vs-mkclean", X86_64, "fixed-ipi", Natural, Clean),
    cell("zap-rmap-vs-mkclean", X86_64, "buggy-nmi", Forced, Bug),
    cell("zap-rmap-vs-mkclean", X86_64, "buggy-nmi", Natural, Bug),
    cell("zap-rmap-vs-mkclean", X86_64, "fixed-nmi", Forced, Clean),
    cell("zap-rmap-vs-mkclean", X86_64, "fixed-nmi", Natural, Clean),
    cell("zap-rmap-vs-mkclean", X86_64, "buggy-ipte", Forced, Skip),
    cell("zap-rmap-vs-mkclean", X86_64, "buggy-ipte", Natural, Skip),
    cell("zap-rmap-vs-mkclean", X86_64, "fixed-ipte", Forced, Skip),
    cell("zap-rmap-vs-mkclean", X86_64, "fixed-ipte", Natural, Skip),
    // nested-flush (kernel/src/race/nested_flush.rs, catalogue row 8): two
    // MADV_DONTNEEDs overlap; the one that finds the PTE clear returns before
    // the other flushed, and the writer's store through its stale TLB entry
    // lands in the dropped page. x86-64 (IPI and NMI flushes): buggy `bug`,
    // fixed (full flush of a nested gather) `clean`. s390x: IPTE at the clear,
    // both `clean`.
    cell("nested-flush", S390x, "buggy-ipi", Forced, Skip),
    cell("nested-flush", S390x, "buggy-ipi", Natural, Skip),
    cell("nested-flush", S390x, "fixed-ipi", Forced, Skip),
    cell("nested-flush", S390x, "fixed-ipi", Natural, Skip),
    cell("nested-flush", S390x, "buggy-nmi", Forced, Skip),
    cell("nested-flush", S390x, "buggy-nmi", Natural, Skip),
    cell("nested-flush", S390x, "fixed-nmi", Forced, Skip),
    cell("nested-flush", S390x, "fixed-nmi", Natural, Skip),
    cell("nested-flush", S390x, "buggy-ipte", Forced, Clean),
    cell("nested-flush", S390x, "buggy-ipte", Natural, Clean),
    cell("nested-flush", S390x, "fixed-ipte", Forced, Clean),
    cell("nested-flush", S390x, "fixed-ipte", Natural, Clean),
    cell("nested-flush", X86_64, "buggy-ipi", Forced, Bug),
    cell("nested-flush", X86_64, "buggy-ipi", Natural, Bug),
    cell("nested-flush", X86_64, "fixed-ipi", Forced, Clean),
    cell("nested-flush", X86_64, "fixed-ipi", Natural, Clean),
    cell("nested-flush", X86_64, "buggy-nmi", Forced, Bug),
    cell("nested-flush", X86_64, "buggy-nmi", Natural, Bug),
    cell("nested-flush", X86_64, "fixed-nmi", Forced, Clean),
    cell("nested-flush", X86_64, "fixed-nmi", Natural, Clean),
    cell("nested-flush", X86_64, "buggy-ipte", Forced, Skip),
    cell("nested-flush", X86_64, "buggy-ipte", Natural, Skip),
    cell("nested-flush", X86_64, "fixed-ipte", Forced, Skip),
    cell("nested-flush", X86_64, "fixed-ipte", Natural, Skip),
    // skey-dirty-vs-swapcache (kernel/src/race/skey_swap.rs, catalogue row
    // 7): the zap moves a storage key's change bit to a page that reclaim is
    // half-way through adding to the swap cache; the DIRTY tag lands on a
    // missing tree entry. s390x only: x86-64 has no storage keys. fixed-a
    // (the RFC) is `clean` but drops dirty bits: the count is printed
    // (`# skey: ... dirty_dropped=`).
    cell("skey-dirty-vs-swapcache", S390x, "buggy", Forced, Bug),
    cell("skey-dirty-vs-swapcache", S390x, "buggy", Natural, Bug),
    cell("skey-dirty-vs-swapcache", S390x, "fixed-a", Forced, Clean),
    cell("skey-dirty-vs-swapcache", S390x, "fixed-a", Natural, Clean),
    cell("skey-dirty-vs-swapcache", S390x, "fixed-b", Forced, Clean),
    cell("skey-dirty-vs-swapcache", S390x, "fixed-b", Natural, Clean),
    cell("skey-dirty-vs-swapcache", S390x, "fixed-c", Forced, Clean),
    cell("skey-dirty-vs-swapcache", S390x, "fixed-c", Natural, Clean),
    cell("skey-dirty-vs-swapcache", S390x, "fixed-d", Forced, Clean),
    cell("skey-dirty-vs-swapcache", S390x, "fixed-d", Natural, Clean),
    cell("skey-dirty-vs-swapcache", X86_64, "buggy", Forced, Skip),
    cell("skey-dirty-vs-swapcache", X86_64, "buggy", Natural, Skip),
    cell("skey-dirty-vs-swapcache", X86_64, "fixed-a", Forced, Skip),
    cell("skey-dirty-vs-swapcache", X86_64, "fixed-a", Natural, Skip),
    cell("skey-dirty-vs-swapcache", X86_64, "fixed-b", Forced, Skip),
    cell("skey-dirty-vs-swapcache", X86_64, "fixed-b", Natural, Skip),
    cell("skey-dirty-vs-swapcache", X86_64, "fixed-c", Forced, Skip),
    cell("skey-dirty-vs-swapcache", X86_64, "fixed-c", Natural, Skip),
    cell("skey-dirty-vs-swapcache", X86_64, "fixed-d", Forced, Skip),
    cell("skey-dirty-vs-swapcache", X86_64, "fixed-d", Natural, Skip),
    // gup-fast-folding (kernel/src/race/gup_folding.rs, catalogue row 2): a
    // single-CPU, deterministic walk bug; forced (an empty schedule) and
    // natural (no delays) are the same run, every iteration. x86-64 folds
    // no level per mm: skip.
    cell("gup-fast-folding", S390x, "buggy", Forced, Bug),
    cell("gup-fast-folding", S390x, "buggy", Natural, Bug),
    cell("gup-fast-folding", S390x, "fixed", Forced, Clean),
    cell("gup-fast-folding", S390x, "fixed", Natural, Clean),
    cell("gup-fast-folding", X86_64, "buggy", Forced, Skip),
    cell("gup-fast-folding", X86_64, "buggy", Natural, Skip),
    cell("gup-fast-folding", X86_64, "fixed", Forced, Skip),
    cell("gup-fast-folding", X86_64, "fixed", Natural, Skip),
    // collapse-vs-gup-fast (kernel/src/race/collapse_gup.rs, catalogue row
    // 5): GUP-fast pins a small page of the old PTE table after THP collapse
    // checked for pins. Variants are the kernel x flush strategy; a strategy
    // of the other arch is `skip`. s390x (IDTE/CSP, no IPI) and x86-64 with
    // NMI shootdown: buggy and rcu-only `bug`, fixed-a (PMD recheck) and
    // fixed-b (IPI sync; forced: held by the fix) `clean`. x86-64 with flush
    // IPIs: the collapse's flush waits for the interrupts-off walker, so
    // every variant is natural `clean` and forced `impossible`.
    cell("collapse-vs-gup-fast", S390x, "buggy-ipte", Forced, Bug),
    cell("collapse-vs-gup-fast", S390x, "buggy-ipte", Natural, Bug),
    cell("collapse-vs-gup-fast", S390x, "fixed-a-ipte", Forced, Clean),
    cell(
        "collapse-vs-gup-fast",
        S390x,
        "fixed-a-ipte",
        Natural,
        Clean,
    ),
    cell("collapse-vs-gup-fast", S390x, "fixed-b-ipte", Forced, Clean),
    cell(
        "collapse-vs-gup-fast",
        S390x,
        "fixed-b-ipte",
        Natural,
        Clean,
    ),
    cell("collapse-vs-gup-fast", S390x, "rcu-only-ipte", Forced, Bug),
    cell("collapse-vs-gup-fast", S390x, "rcu-only-ipte", Natural, Bug),
    cell("collapse-vs-gup-fast", S390x, "buggy-ipi", Forced, Skip),
    cell("collapse-vs-gup-fast", S390x, "buggy-ipi", Natural, Skip),
    cell("collapse-vs-gup-fast", S390x, "fixed-a-ipi", Forced, Skip),
    cell("collapse-vs-gup-fast", S390x, "fixed-a-ipi", Natural, Skip),
    cell("collapse-vs-gup-fast", S390x, "fixed-b-ipi", Forced, Skip),
    cell("collapse-vs-gup-fast", S390x, "fixed-b-ipi", Natural, Skip),
    cell("collapse-vs-gup-fast", S390x, "rcu-only-ipi", Forced, Skip),
    cell("collapse-vs-gup-fast", S390x, "rcu-only-ipi", Natural, Skip),
    cell("collapse-vs-gup-fast", S390x, "buggy-nmi", Forced, Skip),
    cell("collapse-vs-gup-fast", S390x, "buggy-nmi", Natural, Skip),
    cell("collapse-vs-gup-fast", S390x, "fixed-a-nmi", Forced, Skip),
    cell("collapse-vs-gup-fast", S390x, "fixed-a-nmi", Natural, Skip),
    cell("collapse-vs-gup-fast", S390x, "fixed-b-nmi", Forced, Skip),
    cell("collapse-vs-gup-fast", S390x, "fixed-b-nmi", Natural, Skip),
    cell("collapse-vs-gup-fast", S390x, "rcu-only-nmi", Forced, Skip),
    cell("collapse-vs-gup-fast", S390x, "rcu-only-nmi", Natural, Skip),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "buggy-ipi",
        Forced,
        Impossible,
    ),
    cell("collapse-vs-gup-fast", X86_64, "buggy-ipi", Natural, Clean),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "fixed-a-ipi",
        Forced,
        Impossible,
    ),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "fixed-a-ipi",
        Natural,
        Clean,
    ),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "fixed-b-ipi",
        Forced,
        Impossible,
    ),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "fixed-b-ipi",
        Natural,
        Clean,
    ),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "rcu-only-ipi",
        Forced,
        Impossible,
    ),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "rcu-only-ipi",
        Natural,
        Clean,
    ),
    cell("collapse-vs-gup-fast", X86_64, "buggy-nmi", Forced, Bug),
    cell("collapse-vs-gup-fast", X86_64, "buggy-nmi", Natural, Bug),
    cell("collapse-vs-gup-fast", X86_64, "fixed-a-nmi", Forced, Clean),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "fixed-a-nmi",
        Natural,
        Clean,
    ),
    cell("collapse-vs-gup-fast", X86_64, "fixed-b-nmi", Forced, Clean),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "fixed-b-nmi",
        Natural,
        Clean,
    ),
    cell("collapse-vs-gup-fast", X86_64, "rcu-only-nmi", Forced, Bug),
    cell("collapse-vs-gup-fast", X86_64, "rcu-only-nmi", Natural, Bug),
    cell("collapse-vs-gup-fast", X86_64, "buggy-ipte", Forced, Skip),
    cell("collapse-vs-gup-fast", X86_64, "buggy-ipte", Natural, Skip),
    cell("collapse-vs-gup-fast", X86_64, "fixed-a-ipte", Forced, Skip),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "fixed-a-ipte",
        Natural,
        Skip,
    ),
    cell("collapse-vs-gup-fast", X86_64, "fixed-b-ipte", Forced, Skip),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "fixed-b-ipte",
        Natural,
        Skip,
    ),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "rcu-only-ipte",
        Forced,
        Skip,
    ),
    cell(
        "collapse-vs-gup-fast",
        X86_64,
        "rcu-only-ipte",
        Natural,
        Skip,
    ),
    // ptfrag-refcount (kernel/src/race/ptfrag.rs, catalogue row 4): a pfn
    // scanner's speculative reference wiped by set_page_count when the frame
    // becomes a page-table fragment block; the block is freed while its last
    // fragment is linked. Both arches: buggy `bug`, both fixes `clean`, in
    // both modes (the fixes add no wait: forced runs the whole interleaving).
    cell("ptfrag-refcount", S390x, "buggy", Forced, Bug),
    cell("ptfrag-refcount", S390x, "buggy", Natural, Bug),
    cell("ptfrag-refcount", S390x, "fixed-a", Forced, Clean),
    cell("ptfrag-refcount", S390x, "fixed-a", Natural, Clean),
    cell("ptfrag-refcount", S390x, "fixed-b", Forced, Clean),
    cell("ptfrag-refcount", S390x, "fixed-b", Natural, Clean),
    cell("ptfrag-refcount", X86_64, "buggy", Forced, Bug),
    cell("ptfrag-refcount", X86_64, "buggy", Natural, Bug),
    cell("ptfrag-refcount", X86_64, "fixed-a", Forced, Clean),
    cell("ptfrag-refcount", X86_64, "fixed-a", Natural, Clean),
    cell("ptfrag-refcount", X86_64, "fixed-b", Forced, Clean),
    cell("ptfrag-refcount", X86_64, "fixed-b", Natural, Clean),
];

/// The cell for (row, arch, variant, mode).
pub fn lookup(row: &str, arch: Arch, variant: &str, mode: Mode) -> Option<&'static Cell> {
    CELLS
        .iter()
        .find(|c| c.row == row && c.arch == arch && c.variant == variant && c.mode == mode)
}

/// One cell as a boot reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Row.
    pub row: String,
    /// Variant.
    pub variant: String,
    /// Mode.
    pub mode: Mode,
    /// The outcome word (`bug`, `clean`, `impossible`, `skip`, `hang`,
    /// `vacuous`; `failed` when the case failed without one).
    pub outcome: String,
    /// Iterations run.
    pub iterations: u64,
    /// Iterations in which a detector fired.
    pub hits: u64,
    /// Time to the first hit.
    pub first_hit_ns: Option<u64>,
    /// Whether the KTAP case passed (a failed state check fails it).
    pub case_ok: bool,
    /// The case's failure reason or skip reason, if any.
    pub note: Option<String>,
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
            mode,
            outcome: value("outcome").unwrap_or("failed").to_string(),
            iterations: value("iterations")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            hits: value("hits").and_then(|v| v.parse().ok()).unwrap_or(0),
            first_hit_ns: value("first_hit_ns").and_then(|v| v.parse().ok()),
            case_ok: r.ok,
            note,
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
    /// A mode, or both.
    pub mode: Option<Mode>,
}

impl Selection {
    /// Whether the selection includes `c`.
    pub fn includes(&self, c: &Cell) -> bool {
        self.row.as_deref().is_none_or(|r| r == "all" || r == c.row)
            && self.variant.as_deref().is_none_or(|v| v == c.variant)
            && self.mode.is_none_or(|m| m == c.mode)
    }
}

/// One line of the comparison.
#[derive(Clone, Debug)]
pub struct Line {
    /// The cell's coordinates.
    pub row: String,
    /// Variant.
    pub variant: String,
    /// Mode.
    pub mode: Mode,
    /// The expectation, if the table has the cell.
    pub expect: Option<Expect>,
    /// What the boot showed, if it ran the cell.
    pub observed: Option<Observed>,
    /// Whether the two agree.
    pub ok: bool,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = self.expect.map_or("(none)", Expect::name);
        let (obs, it, hits, first) = match &self.observed {
            Some(o) => (
                o.outcome.clone(),
                o.iterations.to_string(),
                o.hits.to_string(),
                o.first_hit_ns
                    .map_or("-".into(), |t| format!("{:.3}", t as f64 / 1e6)),
            ),
            None => ("(not run)".into(), "-".into(), "-".into(), "-".into()),
        };
        write!(
            f,
            "{:<23} {:<15} {:<8} {:<11} {:<11} {:>10} {:>7} {:>13}  {}",
            self.row,
            self.variant,
            self.mode.name(),
            exp,
            obs,
            it,
            hits,
            first,
            self.verdict()
        )?;
        if let Some(note) = self.observed.as_ref().and_then(|o| o.note.as_ref()) {
            write!(f, "  ({note})")?;
        }
        Ok(())
    }
}

/// The header matching [`Line`]'s `Display`.
pub const HEADER: &str =
    "row                     variant         mode     expected    observed    iterations    hits  first_hit_ms";

impl Line {
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

/// Compares what a boot of `arch` observed with the table, over the cells
/// `sel` asks for: every selected cell must have run and agree; every cell
/// run must be in the table.
pub fn compare(arch: Arch, sel: &Selection, observed: &[Observed]) -> Vec<Line> {
    let mut lines = Vec::new();
    for c in CELLS.iter().filter(|c| c.arch == arch && sel.includes(c)) {
        let o = observed
            .iter()
            .find(|o| o.row == c.row && o.variant == c.variant && o.mode == c.mode);
        let ok = o.is_some_and(|o| o.case_ok && c.expect.accepts(&o.outcome));
        lines.push(Line {
            row: c.row.into(),
            variant: c.variant.into(),
            mode: c.mode,
            expect: Some(c.expect),
            observed: o.cloned(),
            ok,
        });
    }
    for o in observed {
        if lookup(&o.row, arch, &o.variant, o.mode).is_none() {
            lines.push(Line {
                row: o.row.clone(),
                variant: o.variant.clone(),
                mode: o.mode,
                expect: None,
                observed: Some(o.clone()),
                ok: false,
            });
        }
    }
    lines
}

/// Whether the table has cells of `arch` that `sel` includes.
pub fn has_cells(arch: Arch, sel: &Selection) -> bool {
    CELLS.iter().any(|c| c.arch == arch && sel.includes(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_is_unique_and_rows_are_complete() {
        for (i, a) in CELLS.iter().enumerate() {
            assert!(
                CELLS[i + 1..]
                    .iter()
                    .all(|b| (a.row, a.arch, a.variant, a.mode)
                        != (b.row, b.arch, b.variant, b.mode)),
                "{a:?} listed twice"
            );
            // Every row has every (arch, mode) of each of its variants.
            for arch in Arch::ALL {
                for mode in [Mode::Forced, Mode::Natural] {
                    assert!(
                        lookup(a.row, arch, a.variant, mode).is_some(),
                        "{} {} {arch} {}: missing",
                        a.row,
                        a.variant,
                        mode.name()
                    );
                }
            }
        }
    }

    fn obs(outcome: &str) -> Observed {
        Observed {
            row: "demo-lock-vs-put".into(),
            variant: "buggy".into(),
            mode: Mode::Forced,
            outcome: outcome.into(),
            iterations: 3,
            hits: 3,
            first_hit_ns: Some(1),
            case_ok: outcome != "hang",
            note: None,
        }
    }

    #[test]
    fn comparison_flags_mismatches_missing_and_unknown_cells() {
        let sel = Selection {
            row: Some("demo-lock-vs-put".into()),
            variant: Some("buggy".into()),
            mode: Some(Mode::Forced),
        };
        let lines = compare(Arch::S390x, &sel, &[obs("bug")]);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ok);
        assert!(!compare(Arch::S390x, &sel, &[obs("clean")])[0].ok);
        assert!(!compare(Arch::S390x, &sel, &[obs("hang")])[0].ok);
        assert!(!compare(Arch::S390x, &sel, &[])[0].ok, "a cell not run");
        let mut stray = obs("bug");
        stray.row = "no-such-row".into();
        let lines = compare(Arch::S390x, &sel, &[obs("bug"), stray]);
        assert_eq!(lines.len(), 2);
        assert!(!lines[1].ok, "a cell missing from the table");
        assert!(Expect::Report.accepts("bug") && Expect::Report.accepts("clean"));
        assert!(!Expect::Report.accepts("vacuous"));
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
# row=demo-lock-vs-put variant=buggy mode=forced outcome=bug iterations=3 hits=3 first_hit_ns=12 seed=0x1\n    \
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
    }
}
