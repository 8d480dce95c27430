//! A KTAP version 1 parser (Linux `Documentation/dev-tools/ktap.rst`) for the
//! console output of a quiesce kernel.
//!
//! The console also carries lines that are not KTAP (boot messages, diagnostics
//! from other CPUs printed between results); KTAP allows such "unknown lines" and
//! the parser keeps them aside. Nesting is by indentation: a subtest is a KTAP
//! document indented four spaces more than its parent and closed by the parent's
//! result line with the same name. The parser is strict about what would make a
//! result untrustworthy: a result out of sequence, a plan that does not match the
//! results, a subtest never closed, or a document that never started. Each such
//! problem is a [`ParseError`], and a run with any of them fails.

use std::fmt;

/// The `key=value` words of a diagnostic line (`# a=1 b=x ...`, with or
/// without its `# `), split at their first `=`; words without one (`#`,
/// `race:`) are passed over. The one parser of diagnostic lines on the host:
/// the KTAP results, the expected table, the progress lines and the boot
/// tests all read values through it.
pub fn diag_values(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split_whitespace().filter_map(|w| w.split_once('='))
}

/// The value of `key` in a diagnostic line ([`diag_values`]), if it has it.
pub fn diag_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    diag_values(line).find_map(|(k, v)| (k == key).then_some(v))
}

/// The value of `key` in the first of `lines` that has it.
fn lines_value<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| diag_value(l, key))
}

/// The directive of a result line (`# SKIP reason`, `# TODO reason`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directive {
    /// The test did not apply.
    Skip(String),
    /// A known failure (`TODO` or `XFAIL`).
    Todo(String),
}

/// One result line, with the subtests it closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    /// The test number within its document.
    pub number: usize,
    /// The test name.
    pub name: String,
    /// `ok` (true) or `not ok` (false).
    pub ok: bool,
    /// The directive, if any.
    pub directive: Option<Directive>,
    /// Diagnostic lines (without `# `) printed in this test's document or
    /// directly before its result line.
    pub diagnostics: Vec<String>,
    /// The results of the subtest document this line closes.
    pub subtests: Vec<TestResult>,
}

impl TestResult {
    /// Whether this result counts as a pass: `ok` (SKIP included) for this line
    /// and every subtest.
    pub fn passed(&self) -> bool {
        self.ok && self.subtests.iter().all(TestResult::passed)
    }

    /// Whether the result carries a SKIP directive.
    pub fn skipped(&self) -> bool {
        matches!(self.directive, Some(Directive::Skip(_)))
    }

    /// Looks up `key=value` in the diagnostics (`# key=value other=...`):
    /// the first line that has the key.
    pub fn diag_value(&self, key: &str) -> Option<&str> {
        lines_value(&self.diagnostics, key)
    }

    /// Every result of this tree, depth first, named `parent.child`.
    pub fn flatten(&self, prefix: &str, out: &mut Vec<(String, TestResult)>) {
        let name = if prefix.is_empty() {
            self.name.clone()
        } else {
            format!("{prefix}.{}", self.name)
        };
        if self.subtests.is_empty() {
            out.push((name, self.clone()));
        } else {
            for sub in &self.subtests {
                sub.flatten(&name, out);
            }
        }
    }
}

/// A problem that makes the KTAP untrustworthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based console line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A parsed console log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Document {
    /// Whether the top-level `KTAP version 1` line was seen.
    pub started: bool,
    /// The top-level plan.
    pub plan: Option<usize>,
    /// Top-level results.
    pub results: Vec<TestResult>,
    /// Top-level diagnostics not attached to a result (e.g. `# quiesce arch=...`).
    pub diagnostics: Vec<String>,
    /// Lines that are not KTAP.
    pub unknown_lines: Vec<String>,
    /// Problems found.
    pub errors: Vec<ParseError>,
}

impl Document {
    /// Every leaf result, named `suite.case`.
    pub fn cases(&self) -> Vec<(String, TestResult)> {
        let mut out = Vec::new();
        for r in &self.results {
            r.flatten("", &mut out);
        }
        out
    }

    /// The leaf result named `suite.case`.
    pub fn case(&self, name: &str) -> Option<TestResult> {
        self.cases()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r)
    }

    /// Looks up `key=value` in the top-level diagnostics.
    pub fn diag_value(&self, key: &str) -> Option<&str> {
        lines_value(&self.diagnostics, key)
    }

    /// Why a failed case failed: its last diagnostic, or for a top-level result
    /// the top-level diagnostic `name: reason` printed for it.
    pub fn failure_reason(&self, name: &str, result: &TestResult) -> Option<String> {
        let short = name.rsplit('.').next().unwrap_or(name);
        let prefix = format!("{short}:");
        result
            .diagnostics
            .iter()
            .rev()
            .find(|d| d.starts_with(&prefix))
            .or(result.diagnostics.last())
            .or_else(|| {
                self.diagnostics
                    .iter()
                    .rev()
                    .find(|d| d.starts_with(&prefix))
            })
            .map(|d| d.strip_prefix(&prefix).unwrap_or(d).trim().to_string())
    }

    /// Whether every top-level result passed and nothing is wrong with the KTAP.
    pub fn passed(&self) -> bool {
        self.started
            && self.errors.is_empty()
            && !self.results.is_empty()
            && self.results.iter().all(TestResult::passed)
    }
}

/// A document being read at one indentation depth.
#[derive(Default)]
struct Level {
    name: Option<String>,
    plan: Option<usize>,
    results: Vec<TestResult>,
    diagnostics: Vec<String>,
    /// Diagnostics since the last result line, for the next result.
    pending: Vec<String>,
    start_line: usize,
}

/// Parses console output.
pub fn parse(text: &str) -> Document {
    let mut doc = Document::default();
    // levels[0] is the top level; levels[d] the open subtest at depth d.
    let mut levels: Vec<Level> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let raw = raw.trim_end_matches('\r');
        let body = raw.trim_start_matches(' ');
        let indent = raw.len() - body.len();
        let err = |doc: &mut Document, message: String| {
            doc.errors.push(ParseError {
                line: line_no,
                message,
            })
        };

        if body == "KTAP version 1" || body == "TAP version 14" {
            if indent % 4 != 0 {
                err(
                    &mut doc,
                    format!("version line indented by {indent} spaces"),
                );
                continue;
            }
            let depth = indent / 4;
            if depth == 0 {
                if doc.started {
                    err(&mut doc, "second top-level KTAP version line".into());
                    continue;
                }
                doc.started = true;
                levels.push(Level {
                    start_line: line_no,
                    ..Level::default()
                });
            } else if depth == levels.len() {
                levels.push(Level {
                    start_line: line_no,
                    ..Level::default()
                });
            } else {
                err(
                    &mut doc,
                    format!(
                        "subtest at depth {depth} opened inside depth {}",
                        levels.len().saturating_sub(1)
                    ),
                );
            }
            continue;
        }
        if levels.is_empty() {
            doc.unknown_lines.push(raw.to_string());
            continue;
        }
        if indent % 4 != 0 || indent / 4 >= levels.len() {
            // Indented lines that fit no open document: console noise.
            doc.unknown_lines.push(raw.to_string());
            continue;
        }
        let depth = indent / 4;
        if let Some(diag) = body.strip_prefix('#') {
            let diag = diag.trim_start();
            if let Some(name) = diag.strip_prefix("Subtest:") {
                if depth + 1 == levels.len() && depth > 0 && levels[depth].name.is_none() {
                    levels[depth].name = Some(name.trim().to_string());
                    continue;
                }
            }
            // Top-level diagnostics describe the run; nested ones belong to the
            // next result of their document. A diagnostic at a shallower depth
            // than the innermost open document (other CPUs print without knowing
            // the nesting) stays at the depth it was printed at.
            if depth == 0 {
                levels[0].diagnostics.push(diag.to_string());
            } else {
                levels[depth].pending.push(diag.to_string());
            }
            continue;
        }
        if let Some(n) = body.strip_prefix("1..") {
            match n.trim().parse::<usize>() {
                Ok(n) if depth + 1 == levels.len() && levels[depth].plan.is_none() => {
                    levels[depth].plan = Some(n)
                }
                Ok(_) => err(&mut doc, format!("unexpected plan line '{body}'")),
                Err(_) => err(&mut doc, format!("malformed plan line '{body}'")),
            }
            continue;
        }
        let (ok, rest) = if let Some(rest) = body.strip_prefix("ok ") {
            (true, rest)
        } else if let Some(rest) = body.strip_prefix("not ok ") {
            (false, rest)
        } else {
            doc.unknown_lines.push(raw.to_string());
            continue;
        };
        let (num, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let Ok(number) = num.parse::<usize>() else {
            err(&mut doc, format!("result without a test number: '{body}'"));
            continue;
        };
        let (name, directive) = match rest.split_once(" # ") {
            Some((name, dir)) => (name.trim(), parse_directive(dir)),
            None => (rest.trim(), None),
        };
        // A result at depth d closes any deeper open document, which must be the
        // subtest of the same name.
        let mut subtests = Vec::new();
        let mut sub_diags = Vec::new();
        while levels.len() > depth + 1 {
            let sub = levels.pop().expect("levels is longer than depth + 1");
            if levels.len() == depth + 1 {
                check_plan(&mut doc, &sub, line_no);
                if let Some(sub_name) = &sub.name {
                    if sub_name != name {
                        err(
                            &mut doc,
                            format!("subtest '{sub_name}' closed by result '{name}'"),
                        );
                    }
                }
                sub_diags = sub.diagnostics;
                sub_diags.extend(sub.pending);
                subtests = sub.results;
            } else {
                err(
                    &mut doc,
                    format!("subtest opened at line {} never closed", sub.start_line),
                );
            }
        }
        let level = &mut levels[depth];
        let expected = level.results.len() + 1;
        if number != expected {
            err(
                &mut doc,
                format!("result number {number} where {expected} was expected"),
            );
        }
        let mut diagnostics = std::mem::take(&mut level.pending);
        diagnostics.extend(sub_diags);
        level.results.push(TestResult {
            number,
            name: name.to_string(),
            ok,
            directive,
            diagnostics,
            subtests,
        });
    }
    let last = text.lines().count();
    while levels.len() > 1 {
        let sub = levels.pop().expect("levels is longer than 1");
        doc.errors.push(ParseError {
            line: last,
            message: format!("subtest opened at line {} never closed", sub.start_line),
        });
    }
    if let Some(top) = levels.pop() {
        check_plan(&mut doc, &top, last);
        doc.plan = top.plan;
        doc.results = top.results;
        doc.diagnostics = top.diagnostics;
        doc.diagnostics.extend(top.pending);
    } else {
        doc.errors.push(ParseError {
            line: last,
            message: "no KTAP version line".into(),
        });
    }
    doc
}

fn check_plan(doc: &mut Document, level: &Level, line: usize) {
    match level.plan {
        None => doc.errors.push(ParseError {
            line,
            message: format!("document opened at line {} has no plan", level.start_line),
        }),
        Some(n) if n != level.results.len() => doc.errors.push(ParseError {
            line,
            message: format!(
                "document opened at line {} planned {n} tests and reported {}",
                level.start_line,
                level.results.len()
            ),
        }),
        Some(_) => {}
    }
}

fn parse_directive(text: &str) -> Option<Directive> {
    let text = text.trim();
    let (word, reason) = text.split_once(' ').unwrap_or((text, ""));
    match word.to_ascii_uppercase().as_str() {
        "SKIP" => Some(Directive::Skip(reason.trim().to_string())),
        "TODO" | "XFAIL" => Some(Directive::Todo(reason.trim().to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
boot noise
KTAP version 1
# quiesce arch=s390x cpus=2
1..2
    KTAP version 1
    # Subtest: boot
    1..3
    ok 1 cpus_online
    # ipi_rtt_ns=100
    ok 2 ipi_round_trip
    ok 3 nmi # SKIP no NMI here
ok 1 boot
    KTAP version 1
    # Subtest: other
    1..1
    ok 1 x
ok 2 other
quiesce: status=pass (all tests passed)
";

    /// Asserts that one of the parse errors of `doc` says `part`.
    fn assert_error(doc: &Document, part: &str) {
        assert!(
            doc.errors.iter().any(|e| e.message.contains(part)),
            "no error saying {part:?} in {:?}",
            doc.errors
        );
    }

    #[test]
    fn parses_nested_suites() {
        let doc = parse(GOOD);
        assert!(doc.errors.is_empty(), "{:?}", doc.errors);
        assert!(doc.passed());
        assert_eq!(doc.plan, Some(2));
        assert_eq!(doc.results.len(), 2);
        assert_eq!(doc.results[0].subtests.len(), 3);
        let cases: Vec<String> = doc.cases().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            cases,
            [
                "boot.cpus_online",
                "boot.ipi_round_trip",
                "boot.nmi",
                "other.x"
            ]
        );
        let nmi = doc.case("boot.nmi").unwrap();
        assert_eq!(nmi.directive, Some(Directive::Skip("no NMI here".into())));
        assert_eq!(
            doc.case("boot.ipi_round_trip")
                .unwrap()
                .diag_value("ipi_rtt_ns"),
            Some("100")
        );
        assert_eq!(doc.diag_value("cpus"), Some("2"));
        assert!(doc.unknown_lines.iter().any(|l| l == "boot noise"));
    }

    #[test]
    fn diag_values_split_each_word_at_its_first_equals() {
        let line = "# race: row=demo pfn=0x1f invariant=a=b iteration=0";
        assert_eq!(
            diag_values(line).collect::<Vec<_>>(),
            [
                ("row", "demo"),
                ("pfn", "0x1f"),
                ("invariant", "a=b"),
                ("iteration", "0")
            ]
        );
        assert_eq!(diag_value(line, "pfn"), Some("0x1f"));
        assert_eq!(diag_value(line, "pf"), None);
        assert_eq!(diag_value(line, "race:"), None);
    }

    #[test]
    fn failing_case_fails_the_suite() {
        let doc = parse(&GOOD.replace("    ok 1 cpus_online", "    not ok 1 cpus_online"));
        assert!(doc.errors.is_empty());
        assert!(!doc.passed());
        assert!(!doc.case("boot.cpus_online").unwrap().ok);
    }

    #[test]
    fn truncated_output_is_an_error() {
        let cut = &GOOD[..GOOD.find("    ok 2 ipi").unwrap()];
        let doc = parse(cut);
        assert!(!doc.passed());
        assert_error(&doc, "never closed");
        assert_error(&doc, "planned 2 tests and reported 0");
    }

    #[test]
    fn missing_version_line_is_an_error() {
        let doc = parse("1..1\nok 1 x\n");
        assert!(!doc.started);
        assert!(!doc.passed());
        assert_error(&doc, "no KTAP version line");
    }

    #[test]
    fn plan_mismatch_and_numbering_are_errors() {
        let doc = parse("KTAP version 1\n1..3\nok 1 a\nok 3 b\n");
        assert_error(&doc, "result number 3 where 2");
        assert_error(&doc, "planned 3 tests and reported 2");
        assert!(!doc.passed());
    }

    #[test]
    fn malformed_lines() {
        let doc = parse("KTAP version 1\n1..x\nok one\n");
        assert_error(&doc, "malformed plan");
        assert_error(&doc, "without a test number");
        let doc = parse("KTAP version 1\nKTAP version 1\n1..0\n");
        assert_error(&doc, "second top-level");
        let doc = parse("KTAP version 1\n1..1\n        KTAP version 1\nok 1 x\n");
        assert_error(&doc, "depth 2");
        assert!(!parse("").passed());
        assert!(
            !parse("KTAP version 1\n1..0\n").passed(),
            "an empty run is not a pass"
        );
    }

    #[test]
    fn interleaved_diagnostics_and_noise_are_tolerated() {
        let text = "\
KTAP version 1
1..1
    KTAP version 1
# cpu3=online bringup_us=900
    # Subtest: boot
    1..2
    # from another CPU
random console noise
    ok 1 a
  odd indent
# top-level diagnostic between results
    ok 2 b
ok 1 boot
";
        let doc = parse(text);
        assert!(doc.errors.is_empty(), "{:?}", doc.errors);
        assert!(doc.passed());
        assert_eq!(
            doc.case("boot.a").unwrap().diagnostics,
            ["from another CPU"]
        );
        assert!(doc
            .unknown_lines
            .iter()
            .any(|l| l == "random console noise"));
        assert!(doc.unknown_lines.iter().any(|l| l == "  odd indent"));
        assert_eq!(doc.diag_value("cpu3"), Some("online"));
    }

    #[test]
    fn subtest_closed_by_wrong_name() {
        let doc =
            parse("KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: a\n    1..0\nok 1 b\n");
        assert_error(&doc, "subtest 'a' closed by result 'b'");
    }
}
