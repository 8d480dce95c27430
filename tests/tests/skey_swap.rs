//! Catalogue row `skey-dirty-vs-swapcache`, forced mode, per architecture.
//! s390x: the buggy kernel tags a missing swap-cache tree entry in every
//! iteration, from iteration 0, with the catalogue's interleaving (reclaim
//! held with `PG_swapcache` set and the slot empty while the zap finds the
//! change bit set and dirties the page); each fix is clean, for its own
//! reason, read from the row's `# skey:` figures: fixed-a drops the change
//! bit in every iteration (the RFC's trylock never gets the page lock that
//! reclaim holds), fixed-b dirties without a tag, fixed-c never consults the
//! key, fixed-d finds the page not yet in the swap cache. In every variant
//! reclaim then writes the page to its swap slot in every iteration
//! (`add_to_swap` marked it dirty) and no write is lost: the dropped change
//! bits of fixed-a cost no data here.
//! x86-64: every cell is skipped (no storage keys).

use quiesce_tests::{assert_forced_report, assert_passed, boot, TIMEOUT};
use xtask::expected::{self, Mode};
use xtask::ktap::diag_value as value;
use xtask::ktap::TestResult;
use xtask::Arch;

const ROW: &str = "skey-dirty-vs-swapcache";
const VARIANTS: [&str; 5] = ["buggy", "fixed-a", "fixed-b", "fixed-c", "fixed-d"];

/// A number from the row's `skey:` line.
fn skey(case: &TestResult, key: &str) -> u64 {
    let line = case
        .diagnostics
        .iter()
        .find(|l| l.starts_with("skey:"))
        .unwrap_or_else(|| panic!("no skey line: {:#?}", case.diagnostics));
    value(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn forced(arch: Arch) {
    let cmdline = format!("scenario={ROW} mode=forced");
    let Some(b) = boot(arch, 4, &cmdline, TIMEOUT) else {
        return;
    };
    assert_passed(&b);
    let observed = expected::observed(&b.ktap);
    for variant in VARIANTS {
        let o = observed
            .iter()
            .find(|o| o.row == ROW && o.variant == variant && o.mode == Mode::Forced)
            .unwrap_or_else(|| panic!("{arch} {variant}: not run"));
        let case = b
            .ktap
            .case(&format!("scenario.{ROW}:{variant}:forced"))
            .unwrap();
        if arch == Arch::X86_64 {
            assert_eq!(o.outcome, "skip", "{arch} {variant}");
            assert!(
                matches!(&case.directive, Some(xtask::ktap::Directive::Skip(r)) if r.contains("no storage keys")),
                "{arch} {variant}: {case:?}"
            );
            continue;
        }
        let d = &case.diagnostics;
        let n = o.iterations;
        assert!(n >= 1, "{arch} {variant}: {o:?}");
        // Every iteration's zap took the page's last mapping; reclaim then
        // wrote the page (dirty since add_to_swap) to its swap slot, and let
        // it go with the zap's store in the slot.
        assert_eq!(skey(&case, "zaps"), n, "{arch} {variant}: {d:#?}");
        assert_eq!(
            (skey(&case, "pageouts"), skey(&case, "lost_writes")),
            (n, 0),
            "{arch} {variant}: {d:#?}"
        );
        let (found, dropped) = (
            skey(&case, "change_bit_found"),
            skey(&case, "dirty_dropped"),
        );
        match variant {
            "buggy" => {
                assert_eq!(o.outcome, "bug", "{arch} {variant}: {o:?}");
                assert_eq!(o.hits, n, "{arch} {variant}: {o:?}");
                assert_eq!((found, dropped), (n, 0), "{arch} {variant}");
                // Reclaim holds with the flag set and the slot empty; the
                // zap finds C set and finishes; only then reclaim fills
                // the slot.
                assert_forced_report(
                    &format!("{arch} {variant}"),
                    d,
                    &["race: scenario=", "mode=forced"],
                    &["race: BUG: tag set on a missing tree entry"],
                    &[
                        "reclaim: step 0 done at swap:add_window",
                        "zap: point rmap:skey_dirty",
                        "zap: step 2 done at madvise:after_dontneed",
                        "reclaim: step 3 done at swap:add_window",
                    ],
                );
            }
            _ => {
                assert_eq!(o.outcome, "clean", "{arch} {variant}: {o:?}");
                assert_eq!(o.hits, 0, "{arch} {variant}: {o:?}");
                let want = match variant {
                    // The RFC: the key was read, the trylock failed, the
                    // change bit is gone (PG_dirty from add_to_swap still
                    // had the page written).
                    "fixed-a" => (n, n),
                    // Dirtied without a tag.
                    "fixed-b" => (n, 0),
                    // fixed-c: no key consulted; fixed-d: not yet in the
                    // swap cache, so no mapping to dirty.
                    _ => (0, 0),
                };
                assert_eq!((found, dropped), want, "{arch} {variant}: {d:#?}");
            }
        }
    }
}

fn main() {
    quiesce_tests::Harness::new()
        .per_arch(["s390x_forced", "x86_64_forced_skips"], forced)
        .run()
}
