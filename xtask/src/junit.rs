//! JUnit XML for CI systems (`cargo xtask test --junit FILE`): the same
//! verdicts as the test run, case by case.
//!
//! Two sources make the cases:
//!
//! - **The test binaries' results.** With `--junit` the test binaries print
//!   libtest's JSON events (`-Z unstable-options --format json`, which
//!   libtest-mimic accepts too); [`LibtestReader`] reads them, with cargo's
//!   `Running ...` lines naming the binary, and shows the usual
//!   `test NAME ... ok` lines. Every test is a case in the `<testsuite>` of
//!   its binary: a failed test (a Rust assertion, a panic) is a
//!   `<failure>` carrying its output, an ignored one is `<skipped>`.
//! - **The boots.** While the tests run, every boot's raw console is kept as
//!   `<binary>.<test>.<n>.ktap` in a directory beside the XML (the test
//!   helpers write it when `QUIESCE_KTAP_DIR` is set, see [`KTAP_DIR_ENV`]),
//!   or `<binary>.<test>.<n>.must-fail.ktap` for a boot its test requires
//!   to fail ([`ktap_file_name`]). Each boot is a `<testsuite>` named after
//!   the file. A boot that must pass has one case per KTAP result
//!   (`classname` the boot and suite, `name` the case; `not ok` is a
//!   `<failure>` with the case's diagnostics, `# SKIP` is `<skipped>`), where
//!   each scenario cell (suite `scenario`) is judged against the expected
//!   table ([`crate::expected`]): it fails when what the boot observed
//!   differs from what the table expects, whatever the KTAP line says; plus
//!   a case `status` that fails when the KTAP has errors or the final status
//!   line is missing or says `fail` (a crash before the first result still
//!   shows). A boot that must fail has one case, `fails as required`, which
//!   passes when the boot failed in any of those ways (its reasons in
//!   `<system-out>`) and fails when it passed.
//!
//! Invariant: the XML has a `<failure>` only where the run judged a failure
//! (a failed test, a failed case or status of a boot that must pass, a cell
//! that differs from the table, a boot that must fail but passed), so the XML
//! of a green run has none.

use crate::expected::{self, Selection};
use crate::ktap::{self, Directive, Document};
use crate::qemu::find_status;
use crate::Arch;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// The environment variable naming the directory where the boot tests keep
/// each boot's raw console.
pub const KTAP_DIR_ENV: &str = "QUIESCE_KTAP_DIR";

/// The mark in a kept console's file name of a boot that must fail.
const MUST_FAIL: &str = ".must-fail";

/// The arguments after `--` that make libtest and libtest-mimic print JSON
/// events.
pub const LIBTEST_JSON_ARGS: [&str; 4] = ["-Z", "unstable-options", "--format", "json"];

/// The file name of a kept console: boot `n` (counting from 0) of test
/// `test` in test binary `binary`; `must_fail` if the test requires the
/// boot to fail.
pub fn ktap_file_name(binary: &str, test: &str, n: usize, must_fail: bool) -> String {
    let mark = if must_fail { MUST_FAIL } else { "" };
    format!("{binary}.{test}.{n}{mark}.ktap")
}

/// Escapes text for XML attribute values and character data.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all (console noise).
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// One boot: its name and console.
pub struct BootLog {
    /// The boot's name (the KTAP file's stem, without the must-fail mark).
    pub name: String,
    /// The raw console.
    pub console: String,
    /// Whether the boot's test requires it to fail.
    pub must_fail: bool,
}

/// How a test of a test binary ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Passed,
    /// It failed; its output (the panic message, captured stdout).
    Failed(String),
    /// It was ignored; the reason, if it gave one.
    Ignored(Option<String>),
}

/// One test of a test binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    /// The test's name (`s390x::hang`).
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// The tests of one test binary, in the order they ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestBinary {
    /// The binary: `failures` (tests/failures.rs), `xtask (src/lib.rs)`
    /// (unit tests), `xtask (doc-tests)`.
    pub name: String,
    /// Its tests.
    pub cases: Vec<TestCase>,
}

/// One libtest JSON event (the fields quiesce reads).
#[derive(serde::Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    event: String,
    name: Option<String>,
    stdout: Option<String>,
    message: Option<String>,
    test_count: Option<u64>,
    passed: Option<u64>,
    failed: Option<u64>,
    ignored: Option<u64>,
    filtered_out: Option<u64>,
    exec_time: Option<f64>,
}

/// Reads the merged output of `cargo test -- -Z unstable-options --format
/// json`: cargo's `Running` and `Doc-tests` lines start a binary, the JSON
/// events record its tests.
#[derive(Default)]
pub struct LibtestReader {
    /// The binaries seen, in order.
    pub binaries: Vec<TestBinary>,
}

impl LibtestReader {
    /// Reads one output line; returns the lines to show for it: a JSON event
    /// as the line libtest's pretty format would print (`test NAME ... ok`,
    /// a failure followed by its output), anything else unchanged.
    pub fn line(&mut self, line: &str) -> Vec<String> {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Running ") {
            self.start(binary_name(rest));
        } else if let Some(krate) = t.strip_prefix("Doc-tests ") {
            self.start(format!("{krate} (doc-tests)"));
        }
        let Some(ev) = t
            .starts_with('{')
            .then(|| serde_json::from_str::<Event>(t).ok())
            .flatten()
        else {
            return vec![line.to_string()];
        };
        let n = |v: Option<u64>| v.unwrap_or(0);
        let name = ev.name.clone().unwrap_or_default();
        match (ev.kind.as_str(), ev.event.as_str()) {
            ("suite", "started") => vec![format!("running {} tests", n(ev.test_count))],
            ("suite", word) => vec![format!(
                "test result: {word}. {} passed; {} failed; {} ignored; {} filtered out; finished in {:.2}s",
                n(ev.passed),
                n(ev.failed),
                n(ev.ignored),
                n(ev.filtered_out),
                ev.exec_time.unwrap_or(0.0)
            )],
            ("test", "started") => Vec::new(),
            ("test", "ok") => {
                self.record(name.clone(), Outcome::Passed);
                vec![format!("test {name} ... ok")]
            }
            ("test", "failed") => {
                let out = ev.stdout.or(ev.message).unwrap_or_default();
                let mut shown = vec![format!("test {name} ... FAILED")];
                shown.extend(out.lines().map(|l| format!("    {l}")));
                self.record(name, Outcome::Failed(out));
                shown
            }
            ("test", "ignored") => {
                let shown = match &ev.message {
                    Some(why) => format!("test {name} ... ({why}) ignored"),
                    None => format!("test {name} ... ignored"),
                };
                self.record(name, Outcome::Ignored(ev.message));
                vec![shown]
            }
            ("test", "timeout") => {
                vec![format!("test {name} has been running for over 60 seconds")]
            }
            _ => vec![line.to_string()],
        }
    }

    fn start(&mut self, name: String) {
        self.binaries.push(TestBinary {
            name,
            cases: Vec::new(),
        });
    }

    fn record(&mut self, name: String, outcome: Outcome) {
        if self.binaries.is_empty() {
            self.start("(unknown binary)".into());
        }
        let binary = self.binaries.last_mut().expect("a binary was started");
        binary.cases.push(TestCase { name, outcome });
    }
}

/// The name of the binary of cargo's `Running LABEL (PATH)` line: the
/// file's stem without cargo's hash, and for unit tests the source file
/// (`xtask (src/main.rs)`: a package's lib and bin have the same stem).
fn binary_name(running: &str) -> String {
    let (label, path) = running
        .rsplit_once(" (")
        .map_or((running, running), |(l, p)| (l, p.trim_end_matches(')')));
    let stem = Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem
        .rsplit_once('-')
        .map_or(stem.clone(), |(s, _)| s.into());
    match label.strip_prefix("unittests ") {
        Some(src) => format!("{stem} ({src})"),
        None => stem,
    }
}

/// A case's verdict.
enum Verdict {
    Pass,
    Skip(String),
    Fail { message: String, text: String },
}

/// One `<testcase>`.
struct Case {
    classname: String,
    name: String,
    verdict: Verdict,
    /// `<system-out>`, if any.
    out: Option<String>,
}

impl Case {
    fn new(classname: &str, name: &str, verdict: Verdict) -> Self {
        Case {
            classname: classname.into(),
            name: name.into(),
            verdict,
            out: None,
        }
    }
}

/// One `<testsuite>`.
struct Suite {
    name: String,
    cases: Vec<Case>,
}

/// The suite of a test binary: a case per test.
fn binary_suite(b: &TestBinary) -> Suite {
    let cases = b
        .cases
        .iter()
        .map(|c| {
            let verdict = match &c.outcome {
                Outcome::Passed => Verdict::Pass,
                Outcome::Ignored(why) => Verdict::Skip(why.clone().unwrap_or("ignored".into())),
                Outcome::Failed(out) => Verdict::Fail {
                    message: out
                        .lines()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("failed")
                        .into(),
                    text: out.clone(),
                },
            };
            Case::new(&b.name, &c.name, verdict)
        })
        .collect();
    Suite {
        name: b.name.clone(),
        cases,
    }
}

/// The cells a boot ran, judged against the expected table: per KTAP case
/// name, the comparison's line (`None` when the KTAP names no architecture).
fn judged_cells(doc: &Document) -> Option<Vec<expected::Line>> {
    let arch: Arch = doc.diag_value("arch")?.parse().ok()?;
    let platform = crate::platform::Platform::of(doc);
    let mut lines = Vec::new();
    for o in expected::observed(doc) {
        let sel = Selection::observed(&o);
        lines.extend(expected::compare(
            arch,
            &platform,
            &sel,
            std::slice::from_ref(&o),
        ));
    }
    Some(lines)
}

/// The verdict of a scenario cell: the table's, not the KTAP line's.
fn cell_verdict(line: Option<&expected::Line>, diagnostics: &[String]) -> Verdict {
    let Some(l) = line else {
        return Verdict::Fail {
            message: "a scenario case that cannot be judged (no arch= in the KTAP header, or \
                      no row=/variant=/mode= for it)"
                .into(),
            text: diagnostics.join("\n"),
        };
    };
    match l.verdict() {
        "ok" => Verdict::Pass,
        "skip" => Verdict::Skip(
            l.observed
                .as_ref()
                .and_then(|o| o.note.clone())
                .unwrap_or("skip".into()),
        ),
        _ => Verdict::Fail {
            message: l
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            text: format!("{}\n{l}\n{}", expected::HEADER, diagnostics.join("\n")),
        },
    }
}

/// The suite of a boot (see the module documentation).
fn boot_suite(b: &BootLog) -> Suite {
    let doc = ktap::parse(&b.console);
    let lines: Vec<String> = b.console.lines().map(str::to_string).collect();
    let (status, status_errors) = find_status(&lines);
    let cells = judged_cells(&doc);
    let mut cases = Vec::new();
    for (name, r) in doc.cases() {
        let (suite, case) = name.split_once('.').unwrap_or(("", name.as_str()));
        let classname = if suite.is_empty() {
            b.name.clone()
        } else {
            format!("{}.{suite}", b.name)
        };
        let verdict = match (&r.directive, r.ok) {
            _ if suite == "scenario" => cell_verdict(
                cells
                    .as_ref()
                    .and_then(|c| c.iter().find(|l| l.case() == name)),
                &r.diagnostics,
            ),
            (Some(Directive::Skip(why)), true) => Verdict::Skip(why.clone()),
            (_, true) => Verdict::Pass,
            (_, false) => Verdict::Fail {
                message: doc
                    .failure_reason(&name, &r)
                    .unwrap_or_else(|| "not ok".into()),
                text: r.diagnostics.join("\n"),
            },
        };
        cases.push(Case::new(&classname, case, verdict));
    }
    // The boot as a whole: well-formed KTAP and a passing status line.
    let mut problems: Vec<String> = doc.errors.iter().map(|e| e.to_string()).collect();
    problems.extend(status_errors);
    match &status {
        None => problems.push("no final status line (crash or hang)".into()),
        Some(s) if !s.pass => problems.push(format!("status=fail ({})", s.detail)),
        Some(_) => {}
    }
    let tail: Vec<&str> = b.console.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let tail = tail.join("\n");
    let cases = if b.must_fail {
        // Every way the boot failed: the status, failed cases, cells.
        for c in &cases {
            if let Verdict::Fail { message, .. } = &c.verdict {
                problems.push(format!("{}.{}: {message}", c.classname, c.name));
            }
        }
        let mut case = if problems.is_empty() {
            Case::new(
                &b.name,
                "fails as required",
                Verdict::Fail {
                    message: "the boot passed, but its test requires it to fail".into(),
                    text: tail,
                },
            )
        } else {
            Case::new(&b.name, "fails as required", Verdict::Pass)
        };
        case.out = Some(problems.join("\n"));
        vec![case]
    } else {
        let verdict = if problems.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail {
                message: problems.join("; "),
                text: tail,
            }
        };
        cases.push(Case::new(&b.name, "status", verdict));
        cases
    };
    Suite {
        name: b.name.clone(),
        cases,
    }
}

/// Renders the JUnit XML of the test binaries' results (a binary that ran
/// no test, all filtered out, has no suite) and the boots.
pub fn render(binaries: &[TestBinary], boots: &[BootLog]) -> String {
    let suites: Vec<Suite> = binaries
        .iter()
        .filter(|b| !b.cases.is_empty())
        .map(binary_suite)
        .chain(boots.iter().map(boot_suite))
        .collect();
    let mut body = String::new();
    let (mut all_tests, mut all_failures, mut all_skipped) = (0, 0, 0);
    for s in &suites {
        let mut cases = String::new();
        let (mut failures, mut skipped) = (0, 0);
        for c in &s.cases {
            let _ = write!(
                cases,
                "    <testcase classname=\"{}\" name=\"{}\">",
                escape(&c.classname),
                escape(&c.name)
            );
            match &c.verdict {
                Verdict::Pass => {}
                Verdict::Skip(why) => {
                    skipped += 1;
                    let _ = write!(cases, "<skipped message=\"{}\"/>", escape(why));
                }
                Verdict::Fail { message, text } => {
                    failures += 1;
                    let _ = write!(
                        cases,
                        "<failure message=\"{}\">{}</failure>",
                        escape(message),
                        escape(text)
                    );
                }
            }
            if let Some(out) = &c.out {
                let _ = write!(cases, "<system-out>{}</system-out>", escape(out));
            }
            cases.push_str("</testcase>\n");
        }
        let tests = s.cases.len();
        let _ = write!(
            body,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\">\n{cases}  </testsuite>\n",
            escape(&s.name)
        );
        all_tests += tests;
        all_failures += failures;
        all_skipped += skipped;
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"quiesce\" tests=\"{all_tests}\" failures=\"{all_failures}\" errors=\"0\" skipped=\"{all_skipped}\">\n{body}</testsuites>\n"
    )
}

/// Reads every `*.ktap` file of `dir`, sorted by name.
pub fn read_dir(dir: &Path) -> Result<Vec<BootLog>> {
    let mut boots = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "ktap") {
            let console = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (name, must_fail) = match stem.strip_suffix(MUST_FAIL) {
                Some(name) => (name.to_string(), true),
                None => (stem, false),
            };
            boots.push(BootLog {
                name,
                console,
                must_fail,
            });
        }
    }
    boots.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(boots)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSING: &str = "\
KTAP version 1
# quiesce arch=s390x cpus=2
1..2
    KTAP version 1
    # Subtest: boot
    1..2
    ok 1 cpus_online
    ok 2 nmi # SKIP no NMI <here> & \"there\"
ok 1 boot
    KTAP version 1
    # Subtest: mm
    1..1
    # got=1 want=2 <&>
    not ok 1 fault_counts
not ok 2 mm
quiesce: status=fail (1 test failed)
";

    const CRASHED: &str = "KTAP version 1\n1..1\n# PANIC on CPU 1: \x07 oops\n";

    /// A scenario boot of s390x with the forced cell of
    /// `wp-unlock-vs-zap` `buggy-immediate` (the table: `bug`) observed as
    /// `outcome`; the kernel's KTAP line is `ok` either way.
    fn scenario_boot(outcome: &str) -> String {
        let hits = u64::from(outcome == "bug");
        format!(
            "KTAP version 1\n# quiesce arch=s390x cpus=4\n1..1\n    KTAP version 1\n    # Subtest: scenario\n    1..1\n    # row=wp-unlock-vs-zap variant=buggy-immediate flush=- mode=forced outcome={outcome} iterations=1 hits={hits} first_hit_ns=-\n    ok 1 wp-unlock-vs-zap:buggy-immediate:forced\nok 1 scenario\nquiesce: status=pass (all tests passed)\n"
        )
    }

    fn boot(name: &str, console: &str, must_fail: bool) -> BootLog {
        BootLog {
            name: name.into(),
            console: console.into(),
            must_fail,
        }
    }

    fn binary(name: &str, cases: &[(&str, Outcome)]) -> TestBinary {
        TestBinary {
            name: name.into(),
            cases: cases
                .iter()
                .map(|(n, o)| TestCase {
                    name: n.to_string(),
                    outcome: o.clone(),
                })
                .collect(),
        }
    }

    /// The `(classname, name)` of every case with a `<failure>`.
    fn failures(xml: &str) -> Vec<(String, String)> {
        let doc = roxmltree::Document::parse(xml).expect("well-formed XML");
        doc.descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
            .map(|c| {
                (
                    c.attribute("classname").unwrap().to_string(),
                    c.attribute("name").unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn junit_is_valid_xml_with_one_case_per_ktap_result() {
        let xml = render(
            &[],
            &[
                boot("boot::s390x_smp2.0", PASSING, false),
                boot("crash.0", CRASHED, false),
            ],
        );
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        assert_eq!(root.attribute("tests"), Some("5"));
        assert_eq!(root.attribute("failures"), Some("3"));
        assert_eq!(root.attribute("skipped"), Some("1"));
        let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
        assert_eq!(suites.len(), 2);
        let cases: Vec<_> = suites[0]
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let names: Vec<_> = cases
            .iter()
            .map(|c| {
                (
                    c.attribute("classname").unwrap(),
                    c.attribute("name").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("boot::s390x_smp2.0.boot", "cpus_online"),
                ("boot::s390x_smp2.0.boot", "nmi"),
                ("boot::s390x_smp2.0.mm", "fault_counts"),
                ("boot::s390x_smp2.0", "status"),
            ]
        );
        let skip = cases[1].first_element_child().unwrap();
        assert_eq!(skip.tag_name().name(), "skipped");
        assert_eq!(skip.attribute("message"), Some("no NMI <here> & \"there\""));
        let fail = cases[2].first_element_child().unwrap();
        assert_eq!(fail.tag_name().name(), "failure");
        assert_eq!(fail.text(), Some("got=1 want=2 <&>"));
        let status = cases[3].first_element_child().unwrap();
        assert!(status
            .attribute("message")
            .unwrap()
            .contains("1 test failed"));
        // The crashed boot: no result, no status line, a control character.
        let crash: Vec<_> = suites[1]
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(crash.len(), 1);
        let f = crash[0].first_element_child().unwrap();
        assert!(f
            .attribute("message")
            .unwrap()
            .contains("no final status line"));
        assert!(f.text().unwrap().contains("PANIC on CPU 1"));
    }

    #[test]
    fn a_passing_boot_has_no_failure() {
        let console = "KTAP version 1\n1..1\nok 1 boot\nquiesce: status=pass (all tests passed)\n";
        let xml = render(&[], &[boot("b", console, false)]);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().attribute("failures"), Some("0"));
        assert!(failures(&xml).is_empty());
    }

    /// A green run: passed and ignored tests, a binary whose tests were
    /// all filtered out, a boot that passed with its cell as the table
    /// expects, boots that must fail and did (a failed status, a crash, a
    /// cell that differs from the table): no failure, the ignored test
    /// skipped, no suite for the empty binary.
    #[test]
    fn a_green_run_has_no_failure() {
        let ignored = Outcome::Ignored(Some("not in QUIESCE_TEST_ARCHES".into()));
        let xml = render(
            &[
                binary(
                    "failures",
                    &[("s390x::hang", Outcome::Passed), ("x86_64::hang", ignored)],
                ),
                binary("boot", &[]),
            ],
            &[
                boot("scenarios.cell.0", &scenario_boot("bug"), false),
                boot("failures.s390x__hang.0", PASSING, true),
                boot("failures.crash.0", CRASHED, true),
                boot("verdicts.inject.0", &scenario_boot("clean"), true),
            ],
        );
        assert_eq!(failures(&xml), Vec::<(String, String)>::new(), "{xml}");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        // 2 tests, the cell and its status, 3 must-fail boots.
        assert_eq!(root.attribute("tests"), Some("7"), "{xml}");
        assert!(!xml.contains("testsuite name=\"boot\""), "{xml}");
        assert_eq!(root.attribute("skipped"), Some("1"), "{xml}");
        let skipped = doc
            .descendants()
            .find(|n| n.has_tag_name("skipped"))
            .unwrap();
        assert_eq!(
            skipped.parent().unwrap().attribute("name"),
            Some("x86_64::hang")
        );
        // A must-fail boot says why it failed.
        let out = doc
            .descendants()
            .filter(|n| n.has_tag_name("system-out"))
            .map(|n| n.text().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(out.contains("status=fail (1 test failed)"), "{out}");
        assert!(out.contains("MISMATCH"), "{out}");
    }

    /// A cell whose observed outcome differs from the table fails, although
    /// the kernel's KTAP line and status say ok; the table's word and the
    /// observed one are in the message.
    #[test]
    fn a_mismatching_cell_is_a_failure() {
        let xml = render(
            &[],
            &[boot("scenarios.cell.0", &scenario_boot("clean"), false)],
        );
        let case = "wp-unlock-vs-zap:buggy-immediate:forced";
        assert_eq!(
            failures(&xml),
            [("scenarios.cell.0.scenario".to_string(), case.to_string())],
            "{xml}"
        );
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let f = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        let message = f.attribute("message").unwrap();
        assert!(message.contains("bug clean"), "{message}");
        assert!(message.contains("MISMATCH"), "{message}");
    }

    /// A boot its test requires to fail that passed is a failure; so is a
    /// failed test of a binary, with its output.
    #[test]
    fn a_failed_test_and_a_boot_that_should_have_failed_are_failures() {
        let xml = render(
            &[binary(
                "boot",
                &[(
                    "s390x::smp",
                    Outcome::Failed(
                        "thread panicked at tests/tests/boot.rs:9:5:\nassertion failed: v.passed\n"
                            .into(),
                    ),
                )],
            )],
            &[boot("failures.s390x__hang.0", &scenario_boot("bug"), true)],
        );
        assert_eq!(
            failures(&xml),
            [
                ("boot".to_string(), "s390x::smp".to_string()),
                (
                    "failures.s390x__hang.0".to_string(),
                    "fails as required".to_string()
                ),
            ],
            "{xml}"
        );
        assert!(xml.contains("assertion failed: v.passed"), "{xml}");
        assert!(
            xml.contains("the boot passed, but its test requires it to fail"),
            "{xml}"
        );
    }

    /// The merged output of `cargo test` with libtest's JSON events: cargo's
    /// lines name the binaries, the events become cases and the usual lines.
    #[test]
    fn libtest_json_becomes_cases() {
        let output = r#"   Compiling quiesce-tests v0.1.0
     Running unittests src/main.rs (target/debug/deps/xtask-0123abcd)
{ "type": "suite", "event": "started", "test_count": 2 }
{ "type": "test", "event": "started", "name": "tests::a" }
{ "type": "test", "name": "tests::a", "event": "ok" }
{ "type": "test", "name": "tests::b", "event": "failed", "stdout": "thread 'tests::b' panicked:\nboom\n" }
{ "type": "suite", "event": "failed", "passed": 1, "failed": 1, "ignored": 0, "measured": 0, "filtered_out": 0, "exec_time": 0.1 }
     Running tests/failures.rs (target/debug/deps/failures-89abcdef)
{ "type": "test", "name": "x86_64::hang", "event": "ignored", "message": "not in QUIESCE_TEST_ARCHES" }
# SKIP x86_64: printed by a test
   Doc-tests xtask
{ "type": "test", "name": "src/lib.rs - f (line 3)", "event": "ok" }
"#;
        let mut r = LibtestReader::default();
        let shown: Vec<String> = output.lines().flat_map(|l| r.line(l)).collect();
        assert!(
            shown.contains(&"test tests::a ... ok".to_string()),
            "{shown:#?}"
        );
        assert!(
            shown.contains(&"test tests::b ... FAILED".to_string()),
            "{shown:#?}"
        );
        assert!(shown.contains(&"    boom".to_string()), "{shown:#?}");
        assert!(
            shown.contains(&"# SKIP x86_64: printed by a test".to_string()),
            "{shown:#?}"
        );
        assert!(
            shown.contains(
                &"test result: failed. 1 passed; 1 failed; 0 ignored; 0 filtered out; finished in 0.10s"
                    .to_string()
            ),
            "{shown:#?}"
        );
        assert!(
            !shown.iter().any(|l| l.contains("\"started\", \"name\"")),
            "{shown:#?}"
        );
        assert_eq!(
            r.binaries,
            [
                binary(
                    "xtask (src/main.rs)",
                    &[
                        ("tests::a", Outcome::Passed),
                        (
                            "tests::b",
                            Outcome::Failed("thread 'tests::b' panicked:\nboom\n".into())
                        ),
                    ]
                ),
                binary(
                    "failures",
                    &[(
                        "x86_64::hang",
                        Outcome::Ignored(Some("not in QUIESCE_TEST_ARCHES".into()))
                    )]
                ),
                binary(
                    "xtask (doc-tests)",
                    &[("src/lib.rs - f (line 3)", Outcome::Passed)]
                ),
            ]
        );
    }

    #[test]
    fn kept_consoles_say_which_boots_must_fail() {
        let dir = std::env::temp_dir().join(format!("quiesce-junit-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (n, must_fail) in [(0, false), (1, true)] {
            let name = ktap_file_name("failures", "s390x__hang", n, must_fail);
            std::fs::write(dir.join(name), CRASHED).unwrap();
        }
        let boots = read_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let got: Vec<(&str, bool)> = boots
            .iter()
            .map(|b| (b.name.as_str(), b.must_fail))
            .collect();
        assert_eq!(
            got,
            [
                ("failures.s390x__hang.0", false),
                ("failures.s390x__hang.1", true)
            ]
        );
    }
}
