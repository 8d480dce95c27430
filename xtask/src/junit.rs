//! JUnit XML from the boot tests' KTAP, for CI systems
//! (`cargo xtask test --junit FILE`).
//!
//! While the tests run, every boot's raw console is kept as a file
//! `<test name>.<n>.ktap` in a directory beside the XML (the test helpers
//! write it when `QUIESCE_KTAP_DIR` is set, see [`KTAP_DIR_ENV`]). The XML
//! then has one `<testsuite>` per boot (named after the file) and one
//! `<testcase>` per KTAP result (`classname` the boot and suite, `name` the
//! case): `not ok` is a `<failure>` carrying the case's diagnostics, `# SKIP`
//! is `<skipped>`. Each boot also gets a case `status` that fails when the
//! KTAP has errors or the final status line is missing or says `fail`, so a
//! boot that crashed before its first result still shows as a failure.

use crate::ktap::{self, Directive, Document};
use crate::qemu::find_status;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// The environment variable naming the directory where the boot tests keep
/// each boot's raw console.
pub const KTAP_DIR_ENV: &str = "QUIESCE_KTAP_DIR";

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
    /// The boot's name (the KTAP file's stem).
    pub name: String,
    /// The raw console.
    pub console: String,
}

/// Renders the JUnit XML of `boots`.
pub fn render(boots: &[BootLog]) -> String {
    let mut suites = String::new();
    let (mut all_tests, mut all_failures, mut all_skipped) = (0, 0, 0);
    for b in boots {
        let doc: Document = ktap::parse(&b.console);
        let lines: Vec<String> = b.console.lines().map(str::to_string).collect();
        let (status, status_errors) = find_status(&lines);
        let mut cases = String::new();
        let (mut tests, mut failures, mut skipped) = (0, 0, 0);
        for (name, r) in doc.cases() {
            tests += 1;
            let (suite, case) = name.split_once('.').unwrap_or(("", name.as_str()));
            let classname = if suite.is_empty() {
                b.name.clone()
            } else {
                format!("{}.{suite}", b.name)
            };
            let _ = write!(
                cases,
                "    <testcase classname=\"{}\" name=\"{}\">",
                escape(&classname),
                escape(case)
            );
            match (&r.directive, r.ok) {
                (Some(Directive::Skip(why)), true) => {
                    skipped += 1;
                    let _ = write!(cases, "<skipped message=\"{}\"/>", escape(why));
                }
                (_, true) => {}
                (_, false) => {
                    failures += 1;
                    let why = doc
                        .failure_reason(&name, &r)
                        .unwrap_or_else(|| "not ok".into());
                    let _ = write!(
                        cases,
                        "<failure message=\"{}\">{}</failure>",
                        escape(&why),
                        escape(&r.diagnostics.join("\n"))
                    );
                }
            }
            cases.push_str("</testcase>\n");
        }
        // The boot as a whole: well-formed KTAP and a passing status line.
        tests += 1;
        let mut problems: Vec<String> = doc.errors.iter().map(|e| e.to_string()).collect();
        problems.extend(status_errors);
        match &status {
            None => problems.push("no final status line (crash or hang)".into()),
            Some(s) if !s.pass => problems.push(format!("status=fail ({})", s.detail)),
            Some(_) => {}
        }
        let _ = write!(
            cases,
            "    <testcase classname=\"{}\" name=\"status\">",
            escape(&b.name)
        );
        if !problems.is_empty() {
            failures += 1;
            let tail: Vec<&str> = b.console.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let _ = write!(
                cases,
                "<failure message=\"{}\">{}</failure>",
                escape(&problems.join("; ")),
                escape(&tail.join("\n"))
            );
        }
        cases.push_str("</testcase>\n");
        let _ = write!(
            suites,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\">\n{cases}  </testsuite>\n",
            escape(&b.name)
        );
        all_tests += tests;
        all_failures += failures;
        all_skipped += skipped;
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"quiesce\" tests=\"{all_tests}\" failures=\"{all_failures}\" errors=\"0\" skipped=\"{all_skipped}\">\n{suites}</testsuites>\n"
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
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            boots.push(BootLog { name, console });
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

    #[test]
    fn junit_is_valid_xml_with_one_case_per_ktap_result() {
        let xml = render(&[
            BootLog {
                name: "boot::s390x_smp2.0".into(),
                console: PASSING.into(),
            },
            BootLog {
                name: "crash.0".into(),
                console: CRASHED.into(),
            },
        ]);
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
        let xml = render(&[BootLog {
            name: "b".into(),
            console: console.into(),
        }]);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().attribute("failures"), Some("0"));
        assert!(!doc.descendants().any(|n| n.has_tag_name("failure")));
    }
}
