//! `cargo xtask list`: every race row, variant and self-test, read from the
//! kernels themselves, joined with the expected table.
//!
//! A kernel booted with `list` prints one top-level KTAP diagnostic per item
//! before its one result `list` (format: the kernel's `list` module,
//! `kernel/src/list.rs`):
//!
//! ```text
//! # list: row | name=ROW | catalogue=N|- | roles=A,B | cpus=N | seed=... | about=...
//! # list: commit | row=ROW | hash=H | role=fix|introduced|context [| release=R] [| subject=S]
//! # list: variant | row=ROW | name=V | accepted=yes|no [| reason=...] | fix_waits=W,..|- | models=... | about=...
//! # list: suite | name=S | cases=N
//! # list: case | suite=S | name=C
//! # list: end | rows=N | commits=N | variants=N | suites=N | cases=N
//! ```
//!
//! Fields are separated by ` | `; in a value `\|` is a `|` and `\\` a `\`.
//! [`parse_listing`] reads one boot's lines into a [`Listing`] (checking
//! them against the `end` counts), [`Catalogue::join`] merges the listings
//! of the architectures and adds the expected outcome of every (row, arch,
//! variant, mode) from [`expected::CELLS`]; [`Catalogue::text`] and
//! [`Catalogue::json`] render it.

use crate::expected::{self, Mode};
use crate::ktap::Document;
use crate::qemu::{Boot, BootConfig};
use crate::{kbuild, Arch};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The prefix of an item line in a diagnostic (after `# `).
pub const PREFIX: &str = "list: ";

/// The kernel command line of a list boot.
pub const CMDLINE: &str = "list";

/// How long a list boot may take (it takes well under a second).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Splits an item line (without `# list: `) into its kind and its
/// `key=value` fields, undoing the escapes. `None` if a field has no `=`
/// or the line ends in a lone `\`.
pub fn split_item(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next()?),
            '|' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    // The separator is ` | `: drop the one space on each side of a `|`.
    let trim = |s: &str, first: bool, last: bool| {
        let s = if first {
            s
        } else {
            s.strip_prefix(' ').unwrap_or(s)
        };
        let s = if last {
            s
        } else {
            s.strip_suffix(' ').unwrap_or(s)
        };
        s.to_string()
    };
    let n = parts.len();
    let mut parts = parts
        .iter()
        .enumerate()
        .map(|(i, p)| trim(p, i == 0, i + 1 == n));
    let kind = parts.next()?.trim().to_string();
    let mut fields = Vec::new();
    for p in parts {
        let (k, v) = p.split_once('=')?;
        fields.push((k.to_string(), v.to_string()));
    }
    Some((kind, fields))
}

/// A Linux commit of a row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Commit {
    /// Short hash.
    pub hash: String,
    /// `fix`, `introduced` or `context`.
    pub role: String,
    /// First release, where known.
    pub release: Option<String>,
    /// Subject line, where known.
    pub subject: Option<String>,
}

/// A variant as one kernel listed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedVariant {
    /// Name (`variant=`).
    pub name: String,
    /// Whether `set_variant` accepts it on this architecture.
    pub accepted: bool,
    /// Why not.
    pub reason: Option<String>,
    /// The waits its fix adds.
    pub fix_waits: Vec<String>,
    /// The Linux kernel it models.
    pub models: String,
    /// What it does differently.
    pub about: String,
}

/// A row as one kernel listed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedRow {
    /// Name (`scenario=`).
    pub name: String,
    /// Number in the race catalogue; `None` for a demonstration row.
    pub catalogue: Option<u32>,
    /// Role names.
    pub roles: Vec<String>,
    /// CPUs a run needs.
    pub cpus: u32,
    /// The flush strategies this architecture runs the variants under
    /// (empty: the row has no flush axis and runs under the default).
    pub flush: Vec<String>,
    /// The seed thread or catalogue entry.
    pub seed: String,
    /// The race.
    pub about: String,
    /// Linux commits.
    pub commits: Vec<Commit>,
    /// Variants, in the kernel's order.
    pub variants: Vec<ListedVariant>,
}

/// A self-test suite with its cases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Suite {
    /// Suite name.
    pub suite: String,
    /// Case names, in order.
    pub cases: Vec<String>,
}

/// What one kernel listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The architecture.
    pub arch: Arch,
    /// Rows in the kernel's order.
    pub rows: Vec<ListedRow>,
    /// Self-test suites in order.
    pub suites: Vec<Suite>,
}

/// The item lines of a list boot's KTAP: its top-level diagnostics that
/// start with `list: `, without the prefix.
pub fn item_lines(doc: &Document) -> Vec<String> {
    doc.diagnostics
        .iter()
        .filter_map(|d| d.strip_prefix(PREFIX).map(str::to_string))
        .collect()
}

/// Reads one kernel's item lines (without `# list: `).
pub fn parse_listing(arch: Arch, lines: &[String]) -> Result<Listing> {
    let mut listing = Listing {
        arch,
        rows: Vec::new(),
        suites: Vec::new(),
    };
    let mut end: Option<BTreeMap<String, String>> = None;
    let (mut commits, mut variants, mut cases) = (0usize, 0usize, 0usize);
    for (i, line) in lines.iter().enumerate() {
        let (kind, fields) =
            split_item(line).with_context(|| format!("{arch}: malformed list line {line:?}"))?;
        let f: BTreeMap<String, String> = fields.into_iter().collect();
        let get = |k: &str| -> Result<String> {
            f.get(k)
                .cloned()
                .with_context(|| format!("{arch}: list line {} ({kind}) lacks {k}=", i + 1))
        };
        let opt = |k: &str| f.get(k).cloned();
        let list = |v: String| -> Vec<String> {
            if v == "-" || v.is_empty() {
                Vec::new()
            } else {
                v.split(',').map(str::to_string).collect()
            }
        };
        if end.is_some() {
            bail!("{arch}: list line after the end: {line:?}");
        }
        match kind.as_str() {
            "row" => listing.rows.push(ListedRow {
                name: get("name")?,
                catalogue: get("catalogue")?.parse().ok(),
                roles: list(get("roles")?),
                cpus: get("cpus")?.parse().context("cpus= is not a number")?,
                flush: list(opt("flush").unwrap_or_default()),
                seed: get("seed")?,
                about: get("about")?,
                commits: Vec::new(),
                variants: Vec::new(),
            }),
            "commit" | "variant" => {
                let row = get("row")?;
                let Some(r) = listing.rows.last_mut().filter(|r| r.name == row) else {
                    bail!("{arch}: {kind} of row {row} outside that row's lines");
                };
                if kind == "commit" {
                    r.commits.push(Commit {
                        hash: get("hash")?,
                        role: get("role")?,
                        release: opt("release"),
                        subject: opt("subject"),
                    });
                    commits += 1;
                } else {
                    r.variants.push(ListedVariant {
                        name: get("name")?,
                        accepted: match get("accepted")?.as_str() {
                            "yes" => true,
                            "no" => false,
                            v => bail!("{arch}: accepted={v}: expected yes or no"),
                        },
                        reason: opt("reason"),
                        fix_waits: list(get("fix_waits")?),
                        models: get("models")?,
                        about: get("about")?,
                    });
                    variants += 1;
                }
            }
            "suite" => listing.suites.push(Suite {
                suite: get("name")?,
                cases: Vec::new(),
            }),
            "case" => {
                let suite = get("suite")?;
                let Some(s) = listing.suites.last_mut().filter(|s| s.suite == suite) else {
                    bail!("{arch}: case of suite {suite} outside that suite's lines");
                };
                s.cases.push(get("name")?);
                cases += 1;
            }
            "end" => end = Some(f.clone()),
            k => bail!("{arch}: unknown list item kind {k:?}"),
        }
    }
    let Some(end) = end else {
        bail!("{arch}: the list has no end line: it was cut short");
    };
    for (key, n) in [
        ("rows", listing.rows.len()),
        ("commits", commits),
        ("variants", variants),
        ("suites", listing.suites.len()),
        ("cases", cases),
    ] {
        let said: usize = end
            .get(key)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{arch}: the end line lacks {key}="))?;
        if said != n {
            bail!("{arch}: the end line counts {said} {key}, the list has {n}");
        }
    }
    Ok(listing)
}

/// Boots `kernel` of `arch` with `list` (one CPU) and reads its listing.
/// A failed boot is an error carrying the boot's failure report.
pub fn boot_listing(arch: Arch, kernel: std::path::PathBuf) -> Result<Listing> {
    let mut config = BootConfig::new(arch, kernel);
    config.smp = 1;
    config.timeout = TIMEOUT;
    config.cmdline = CMDLINE.into();
    let boot = Boot::run(&config, |_| {})?;
    if !boot.verdict().passed {
        bail!("the {arch} list boot failed:\n{}", boot.failure_report());
    }
    parse_listing(arch, &item_lines(&boot.ktap))
}

/// Builds the kernels of `arches` and boots each with `list`.
pub fn from_kernels(arches: &[Arch]) -> Result<Catalogue> {
    let mut listings = Vec::new();
    for &arch in arches {
        let kernel = kbuild::kernel(arch, true)?;
        listings.push(boot_listing(arch, kernel)?);
    }
    Ok(Catalogue::join(&listings))
}

/// A variant on one architecture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArchCell {
    /// Whether the kernel of this architecture accepts the variant.
    pub accepted: bool,
    /// Why not.
    pub reason: Option<String>,
    /// The expected outcome per flush strategy the variant runs under on
    /// this architecture (`default` for a row without a flush axis), then
    /// per mode (`forced`, `natural`), from the expected table; `null`
    /// where the table has no cell.
    pub expected: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// Where the table states what the variant shows on a machine without
    /// a property its race needs: per flush strategy as
    /// [`ArchCell::expected`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub without: BTreeMap<String, WithoutCell>,
}

/// What a variant shows on a machine without a property its race needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WithoutCell {
    /// The property (its key on the platform line).
    pub property: String,
    /// Per mode (`forced`, `natural`), the outcome then.
    pub expected: BTreeMap<String, String>,
}

/// A variant across the architectures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Variant {
    /// Name (`variant=`).
    pub name: String,
    /// The Linux kernel it models.
    pub models: String,
    /// What it does differently.
    pub about: String,
    /// The waits its fix adds.
    pub fix_waits: Vec<String>,
    /// The modes it runs in.
    pub modes: Vec<String>,
    /// Per architecture listed.
    pub arches: BTreeMap<String, ArchCell>,
}

/// A row across the architectures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Name (`scenario=`).
    pub name: String,
    /// Number in the race catalogue; `null` for a demonstration row.
    pub catalogue: Option<u32>,
    /// The race.
    pub about: String,
    /// The seed thread or catalogue entry.
    pub seed: String,
    /// Role names.
    pub roles: Vec<String>,
    /// CPUs a run needs.
    pub cpus: u32,
    /// Linux commits.
    pub commits: Vec<Commit>,
    /// Variants.
    pub variants: Vec<Variant>,
}

/// Every row, variant and self-test of the kernels listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Catalogue {
    /// The architectures listed, in order.
    pub arches: Vec<String>,
    /// Rows, in the kernels' order.
    pub rows: Vec<Row>,
    /// Self-test suites per architecture.
    pub selftests: BTreeMap<String, Vec<Suite>>,
    /// Disagreements: between the kernels, or between a kernel and the
    /// expected table (a refused variant the table does not expect to
    /// `skip`, a cell missing from the table).
    pub problems: Vec<String>,
}

const MODES: [Mode; 2] = [Mode::Forced, Mode::Natural];

impl Catalogue {
    /// Merges the listings of several architectures (rows and variants in
    /// the first listing's order, then any only later ones have) and adds
    /// the expected cells.
    pub fn join(listings: &[Listing]) -> Catalogue {
        let mut rows: Vec<Row> = Vec::new();
        let mut problems = Vec::new();
        for l in listings {
            let arch = l.arch;
            for lr in &l.rows {
                let idx = match rows.iter().position(|r| r.name == lr.name) {
                    Some(i) => {
                        let r = &rows[i];
                        if (r.seed.as_str(), &r.commits, r.catalogue)
                            != (lr.seed.as_str(), &lr.commits, lr.catalogue)
                        {
                            problems.push(format!(
                                "{}: the {arch} kernel lists other metadata than the {} one",
                                lr.name, rows[i].name
                            ));
                        }
                        i
                    }
                    None => {
                        rows.push(Row {
                            name: lr.name.clone(),
                            catalogue: lr.catalogue,
                            about: lr.about.clone(),
                            seed: lr.seed.clone(),
                            roles: lr.roles.clone(),
                            cpus: lr.cpus,
                            commits: lr.commits.clone(),
                            variants: Vec::new(),
                        });
                        rows.len() - 1
                    }
                };
                let row = &mut rows[idx];
                for lv in &lr.variants {
                    let vi = match row.variants.iter().position(|v| v.name == lv.name) {
                        Some(i) => i,
                        None => {
                            row.variants.push(Variant {
                                name: lv.name.clone(),
                                models: lv.models.clone(),
                                about: lv.about.clone(),
                                fix_waits: lv.fix_waits.clone(),
                                modes: MODES.iter().map(|m| m.name().to_string()).collect(),
                                arches: BTreeMap::new(),
                            });
                            row.variants.len() - 1
                        }
                    };
                    let mut exp = BTreeMap::new();
                    let mut without: BTreeMap<String, WithoutCell> = BTreeMap::new();
                    let flushes: Vec<Option<&str>> = if lr.flush.is_empty() {
                        vec![None]
                    } else {
                        lr.flush.iter().map(|f| Some(f.as_str())).collect()
                    };
                    for flush in flushes {
                        let by_mode: &mut BTreeMap<String, Option<String>> = exp
                            .entry(flush.unwrap_or("default").to_string())
                            .or_default();
                        for m in MODES {
                            let cell = expected::lookup(&lr.name, arch, &lv.name, flush, m);
                            if cell.is_none() {
                                problems.push(format!(
                                    "{} {} {arch} {}: not in the expected table",
                                    lr.name,
                                    expected::label(&lv.name, flush),
                                    m.name()
                                ));
                            }
                            if let Some(c) = cell {
                                if !lv.accepted && c.expect != expected::Expect::Skip {
                                    problems.push(format!(
                                    "{} {} {arch} {}: the kernel refuses the variant, the table expects {}",
                                    lr.name,
                                    lv.name,
                                    m.name(),
                                    c.expect.name()
                                ));
                                }
                            }
                            by_mode.insert(
                                m.name().to_string(),
                                cell.map(|c| c.expect.name().to_string()),
                            );
                            if let Some(w) = cell.and_then(|c| c.without) {
                                let entry = without
                                    .entry(flush.unwrap_or("default").to_string())
                                    .or_default();
                                entry.property = w.property.key().to_string();
                                entry
                                    .expected
                                    .insert(m.name().to_string(), w.expect.name().to_string());
                            }
                        }
                    }
                    row.variants[vi].arches.insert(
                        arch.name().to_string(),
                        ArchCell {
                            accepted: lv.accepted,
                            reason: lv.reason.clone(),
                            expected: exp,
                            without,
                        },
                    );
                }
            }
        }
        // Rows of the table no kernel listed.
        for arch in listings.iter().map(|l| l.arch) {
            for c in expected::CELLS.iter().filter(|c| c.arch == arch) {
                let listed = rows.iter().any(|r| {
                    r.name == c.row
                        && r.variants.iter().any(|v| {
                            v.name == c.variant
                                && v.arches.get(arch.name()).is_some_and(|a| {
                                    a.expected.contains_key(c.flush.unwrap_or("default"))
                                })
                        })
                });
                let p = format!(
                    "{} {}: in the expected table, not listed by the {arch} kernel",
                    c.row,
                    c.label()
                );
                if !listed && !problems.contains(&p) {
                    problems.push(p);
                }
            }
        }
        Catalogue {
            arches: listings.iter().map(|l| l.arch.name().to_string()).collect(),
            rows,
            selftests: listings
                .iter()
                .map(|l| (l.arch.name().to_string(), l.suites.clone()))
                .collect(),
            problems,
        }
    }

    /// The catalogue as one pretty-printed JSON document.
    pub fn json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// The catalogue as readable text.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let variants: usize = self.rows.iter().map(|r| r.variants.len()).sum();
        let numbered = self.rows.iter().filter(|r| r.catalogue.is_some()).count();
        let _ = writeln!(
            o,
            "{} rows ({numbered} from the catalogue, {} demonstration), {variants} variants; listed by the {} kernel{}",
            self.rows.len(),
            self.rows.len() - numbered,
            self.arches.join(" and "),
            if self.arches.len() > 1 { "s" } else { "" }
        );
        for r in &self.rows {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "{}  ({})",
                r.name,
                r.catalogue
                    .map_or("demonstration row".into(), |n| format!("catalogue row {n}"))
            );
            let _ = writeln!(o, "  {}", r.about);
            let _ = writeln!(o, "  seed:     {}", r.seed);
            let _ = writeln!(o, "  roles:    {} ({} CPUs)", r.roles.join(", "), r.cpus);
            for (i, c) in r.commits.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "  {} {}  {}  [{}{}]",
                    if i == 0 { "commits: " } else { "         " },
                    c.hash,
                    c.subject.as_deref().unwrap_or("(subject not recorded)"),
                    c.role,
                    c.release
                        .as_ref()
                        .map_or(String::new(), |r| format!(", {r}"))
                );
            }
            let _ = writeln!(o, "  variants (modes: forced, natural):");
            for v in &r.variants {
                let _ = writeln!(o, "    {:<15} {}", v.name, v.about);
                let _ = writeln!(o, "    {:<15} models: {}", "", v.models);
                for (arch, cell) in &v.arches {
                    let _ = writeln!(o, "    {:<15} {arch:<7} {}", "", cell_text(cell));
                }
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "self-tests");
        // Architectures with the same suites share one listing.
        let mut groups: Vec<(Vec<&str>, &Vec<Suite>)> = Vec::new();
        for a in &self.arches {
            let Some(s) = self.selftests.get(a) else {
                continue;
            };
            match groups.iter_mut().find(|(_, g)| *g == s) {
                Some((names, _)) => names.push(a),
                None => groups.push((vec![a], s)),
            }
        }
        for (names, suites) in groups {
            let cases: usize = suites.iter().map(|s| s.cases.len()).sum();
            let _ = writeln!(
                o,
                "  {}: {} suites, {cases} cases",
                names.join(", "),
                suites.len()
            );
            for s in suites {
                let _ = writeln!(
                    o,
                    "    {} ({}): {}",
                    s.suite,
                    s.cases.len(),
                    s.cases.join(", ")
                );
            }
        }
        if !self.problems.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(o, "problems:");
            for p in &self.problems {
                let _ = writeln!(o, "  - {p}");
            }
        }
        o
    }
}

/// One architecture's line of a variant: `forced bug, natural clean`
/// (per flush strategy for a row with a flush axis: `ipi: forced
/// impossible, natural clean; nmi: ...`), or `skip: REASON` for a variant
/// the kernel refuses.
fn cell_text(c: &ArchCell) -> String {
    let mut parts = Vec::new();
    for (flush, by_mode) in &c.expected {
        let exp = |m: &str| {
            by_mode
                .get(m)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "(not in the table)".into())
        };
        let (f, n) = (exp("forced"), exp("natural"));
        if !c.accepted {
            let why = c.reason.as_deref().unwrap_or("refused");
            if f == "skip" && n == "skip" {
                return format!("skip: {why}");
            }
            return format!("refused ({why}); the table expects forced {f}, natural {n}");
        }
        let mut text = if f == n {
            format!("forced and natural {f}")
        } else {
            format!("forced {f}, natural {n}")
        };
        if let Some(w) = c.without.get(flush) {
            let alt: Vec<String> = w.expected.iter().map(|(m, e)| format!("{m} {e}")).collect();
            text.push_str(&format!(" (without {}: {})", w.property, alt.join(", ")));
        }
        parts.push(if flush == "default" {
            text
        } else {
            format!("{flush}: {text}")
        });
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    const S390X: &str = "\
row | name=demo-lock-vs-put | catalogue=- | roles=locker,putter | cpus=3 | seed=none: a demo | about=a page freed locked
commit | row=demo-lock-vs-put | hash=be068f29034f | role=context | release=5.9-rc7 | subject=mm: fix misplaced unlock_page in do_wp_page()
variant | row=demo-lock-vs-put | name=buggy | accepted=yes | fix_waits=- | models=no Linux kernel | about=no reference
variant | row=demo-lock-vs-put | name=fixed | accepted=yes | fix_waits=- | models=the get_page fix | about=own reference
row | name=nested-flush | catalogue=8 | roles=writer,zap1,zap2 | cpus=4 | flush=ipte | seed=beyond the seeds | about=two zaps
commit | row=nested-flush | hash=99baac21e458 | role=fix | subject=mm: fix MADV_[FREE\\|DONTNEED] TLB flush miss problem
variant | row=nested-flush | name=buggy | accepted=yes | fix_waits=- | models=before 99baac21e458 | about=b
variant | row=nested-flush | name=fixed | accepted=yes | fix_waits=PtlWaitedBy(2),CallIpi | models=99baac21e458 | about=f
suite | name=boot | cases=2
case | suite=boot | name=cpus_online
case | suite=boot | name=timer_ticks
end | rows=2 | commits=2 | variants=4 | suites=1 | cases=2";

    #[test]
    fn items_split_into_fields_with_escapes() {
        let (kind, f) = split_item("commit | hash=1 | subject=a \\| b \\\\ c | x=").unwrap();
        assert_eq!(kind, "commit");
        assert_eq!(
            f,
            [
                ("hash".into(), "1".into()),
                ("subject".into(), "a | b \\ c".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(split_item("end").unwrap(), ("end".into(), vec![]));
        assert!(split_item("row | noequals").is_none());
        assert!(split_item("row | a=b\\").is_none());
    }

    #[test]
    fn a_listing_parses_and_checks_its_counts() {
        let l = parse_listing(Arch::S390x, &lines(S390X)).unwrap();
        assert_eq!(l.rows.len(), 2);
        let demo = &l.rows[0];
        assert_eq!((demo.catalogue, demo.cpus), (None, 3));
        assert_eq!(demo.roles, ["locker", "putter"]);
        assert_eq!(demo.commits[0].release.as_deref(), Some("5.9-rc7"));
        let nested = &l.rows[1];
        assert_eq!(nested.catalogue, Some(8));
        assert_eq!(
            nested.commits[0].subject.as_deref(),
            Some("mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem")
        );
        assert_eq!(nested.commits[0].release, None);
        assert_eq!(nested.flush, ["ipte"]);
        assert!(demo.flush.is_empty());
        let buggy = &nested.variants[0];
        assert!(buggy.accepted && buggy.reason.is_none());
        assert!(buggy.fix_waits.is_empty());
        let refused = parse_listing(
            Arch::S390x,
            &lines(&S390X.replace(
                "name=buggy | accepted=yes",
                "name=buggy | accepted=no | reason=no storage keys",
            )),
        )
        .unwrap();
        let refused = &refused.rows[1].variants[0];
        assert!(!refused.accepted);
        assert_eq!(refused.reason.as_deref(), Some("no storage keys"));
        assert_eq!(nested.variants[1].fix_waits, ["PtlWaitedBy(2)", "CallIpi"]);
        assert_eq!(l.suites[0].cases, ["cpus_online", "timer_ticks"]);

        // Cut short, miscounted, out of place.
        let cut: Vec<String> = lines(S390X).into_iter().take(5).collect();
        assert!(parse_listing(Arch::S390x, &cut).is_err());
        let miscounted = S390X.replace("| cases=2", "| cases=3");
        assert!(parse_listing(Arch::S390x, &lines(&miscounted)).is_err());
        let stray = format!(
            "variant | row=x | name=y | accepted=yes | fix_waits=- | models=m | about=a\n{S390X}"
        );
        assert!(parse_listing(Arch::S390x, &lines(&stray)).is_err());
    }

    #[test]
    fn item_lines_come_from_the_list_result() {
        let text = format!(
            "KTAP version 1\n# quiesce arch=s390x cpus=1\n1..1\n{}\nok 1 list\nquiesce: status=pass (all tests passed)\n",
            S390X
                .lines()
                .map(|l| format!("# list: {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let doc = crate::ktap::parse(&text);
        assert!(doc.passed() && doc.errors.is_empty(), "{doc:?}");
        let items = item_lines(&doc);
        assert_eq!(items.len(), S390X.lines().count());
        assert!(parse_listing(Arch::S390x, &items).is_ok());
    }

    #[test]
    fn join_adds_expected_cells_and_json_has_every_row() {
        let s = parse_listing(Arch::S390x, &lines(S390X)).unwrap();
        let x86 = S390X.replace("flush=ipte", "flush=ipi,nmi");
        let x = parse_listing(Arch::X86_64, &lines(&x86)).unwrap();
        let cat = Catalogue::join(&[s, x]);
        assert_eq!(cat.arches, ["s390x", "x86_64"]);
        assert_eq!(cat.rows.len(), 2);
        let nested = &cat.rows[1];
        let buggy = &nested.variants[0].arches;
        assert_eq!(
            buggy["x86_64"].expected["ipi"]["forced"].as_deref(),
            Some("bug"),
            "from expected::CELLS"
        );
        assert_eq!(
            buggy["s390x"].expected["ipte"]["natural"].as_deref(),
            Some("clean")
        );
        assert_eq!(
            cat.rows[0].variants[0].arches["s390x"].expected["default"]["forced"].as_deref(),
            Some("bug"),
            "a row without a flush axis"
        );
        // The stand-in listings leave out most of the table's cells.
        assert!(cat.problems.iter().any(|p| p.contains("not listed")));
        let text = cat.text();
        assert!(
            text.contains(
                "ipi: forced and natural bug (without stale_tlb_after_pte_clear: forced clean, natural clean); nmi: forced and natural bug (without"
            ),
            "{text}"
        );
        assert!(text.contains("forced bug, natural bug|clean"), "{text}");
        assert!(
            text.contains("99baac21e458  mm: fix MADV_[FREE|DONTNEED]"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&cat.json().unwrap()).unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), 2);
        assert_eq!(json["rows"][1]["commits"][0]["hash"], "99baac21e458");
        assert_eq!(
            json["rows"][1]["variants"][1]["arches"]["s390x"]["expected"]["ipte"]["forced"],
            "clean"
        );
        assert_eq!(json["selftests"]["x86_64"][0]["suite"], "boot");
    }
}
