//! `list` on the kernel command line: each architecture lists the eight
//! catalogue rows and the demonstration row, each with its seed thread, at
//! least one Linux commit and its variants (accepted or refused as the
//! expected table says), and every self-test suite; the listings of both
//! architectures join into the `cargo xtask list --json` document.

use quiesce_tests::{assert_passed, boot};
use std::time::Duration;
use xtask::catalogue::{self, Catalogue, Listing};
use xtask::expected::{self, Expect, Mode};
use xtask::Arch;

/// A list boot takes well under a second; generous for a loaded host.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The self-test suites every kernel has.
const SUITES: [&str; 10] = [
    "boot", "mm_page", "mm", "skey", "gather", "tlb", "gup", "thp", "mm_file", "race",
];

fn listing(arch: Arch) -> Option<Listing> {
    let b = boot(arch, 1, catalogue::CMDLINE, TIMEOUT)?;
    assert_passed(&b);
    Some(
        catalogue::parse_listing(arch, &catalogue::item_lines(&b.ktap))
            .unwrap_or_else(|e| panic!("{e:#}")),
    )
}

fn lists_every_row_and_suite(arch: Arch) {
    let Some(l) = listing(arch) else { return };
    let numbers: Vec<Option<u32>> = l.rows.iter().map(|r| r.catalogue).collect();
    assert_eq!(
        numbers,
        [
            None,
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            Some(6),
            Some(7),
            Some(8)
        ],
        "{arch}: the demonstration row, then catalogue rows 1 to 8"
    );
    assert_eq!(l.rows[0].name, "demo-lock-vs-put");
    for r in &l.rows {
        assert!(!r.seed.is_empty(), "{arch} {}: no seed", r.name);
        assert!(!r.commits.is_empty(), "{arch} {}: no commit", r.name);
        for c in &r.commits {
            assert!(
                c.hash.len() == 12 && c.hash.bytes().all(|b| b.is_ascii_hexdigit()),
                "{arch} {}: commit {:?}",
                r.name,
                c.hash
            );
            assert!(["fix", "introduced", "context"].contains(&c.role.as_str()));
        }
        assert!(!r.variants.is_empty(), "{arch} {}: no variant", r.name);
        assert_eq!(r.cpus as usize, r.roles.len() + 1);
        for v in &r.variants {
            assert!(!v.models.is_empty(), "{arch} {} {}", r.name, v.name);
            // The kernel refuses exactly the variants the table skips,
            // and the table has a cell for each flush strategy the kernel
            // runs the row under.
            let flushes: Vec<Option<&str>> = if r.flush.is_empty() {
                vec![None]
            } else {
                r.flush.iter().map(|f| Some(f.as_str())).collect()
            };
            for (mode, flush) in [Mode::Forced, Mode::Natural]
                .into_iter()
                .flat_map(|m| flushes.iter().map(move |f| (m, *f)))
            {
                let cell = expected::lookup(&r.name, arch, &v.name, flush, mode)
                    .unwrap_or_else(|| panic!("{arch} {} {}: not in the table", r.name, v.name));
                assert_eq!(
                    v.accepted,
                    cell.expect != Expect::Skip,
                    "{arch} {} {} {}: accepted={} reason={:?}, table {}",
                    r.name,
                    v.name,
                    mode.name(),
                    v.accepted,
                    v.reason,
                    cell.expect.name()
                );
            }
            assert_eq!(
                v.accepted,
                v.reason.is_none(),
                "{arch} {} {}",
                r.name,
                v.name
            );
        }
    }
    // Every row of the expected table is listed.
    for c in expected::CELLS.iter().filter(|c| c.arch == arch) {
        assert!(
            l.rows
                .iter()
                .any(|r| r.name == c.row && r.variants.iter().any(|v| v.name == c.variant)),
            "{arch}: {} {} is in the table but not listed",
            c.row,
            c.variant
        );
    }
    let suites: Vec<&str> = l.suites.iter().map(|s| s.suite.as_str()).collect();
    assert_eq!(suites, SUITES, "{arch}");
    assert!(l.suites.iter().all(|s| !s.cases.is_empty()), "{arch}");
    assert!(
        l.suites[0].cases.iter().any(|c| c == "cpus_online"),
        "{arch}: {:?}",
        l.suites[0]
    );
}

/// The document `cargo xtask list --json` prints, from both kernels.
fn json_of_both_kernels_has_the_nine_rows() {
    let listings: Vec<Listing> = Arch::ALL.iter().filter_map(|&a| listing(a)).collect();
    let cat = Catalogue::join(&listings);
    assert!(cat.problems.is_empty(), "{:#?}", cat.problems);
    let json: serde_json::Value = serde_json::from_str(&cat.json().unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 9, "{json:#}");
    assert_eq!(json["arches"], serde_json::json!(["s390x", "x86_64"]));
    for r in rows {
        assert!(!r["commits"].as_array().unwrap().is_empty(), "{r:#}");
        for v in r["variants"].as_array().unwrap() {
            for a in ["s390x", "x86_64"] {
                // Per flush strategy (`default` for a row without a flush
                // axis), an outcome per mode.
                let e = v["arches"][a]["expected"].as_object().unwrap();
                assert!(!e.is_empty(), "{v:#}");
                for by_mode in e.values() {
                    assert!(
                        by_mode["forced"].is_string() && by_mode["natural"].is_string(),
                        "{v:#}"
                    );
                }
            }
        }
    }
    assert_eq!(json["selftests"]["s390x"].as_array().unwrap().len(), 10);
    assert_eq!(json["selftests"]["x86_64"].as_array().unwrap().len(), 10);
}

fn main() {
    quiesce_tests::Harness::new()
        .per_arch(
            [
                "s390x_lists_every_row_and_suite",
                "x86_64_lists_every_row_and_suite",
            ],
            lists_every_row_and_suite,
        )
        .test(
            "json_of_both_kernels_has_the_nine_rows",
            &Arch::ALL,
            json_of_both_kernels_has_the_nine_rows,
        )
        .run()
}
