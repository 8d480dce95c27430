//! The kernel's KTAP writer and the host's KTAP parser agree: what the kernel
//! prints for passing, failing and skipped cases, nested in suites, parses back to
//! the same results.

use quiesce_kernel::ktap::{Outcome, Run};
use std::sync::Mutex;

static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn capture(bytes: &[u8]) {
    CAPTURED.lock().unwrap().extend_from_slice(bytes);
}

#[test]
fn kernel_ktap_parses_back() {
    quiesce_kernel::console::register(capture);
    quiesce_kernel::kprintln!("KTAP version 1");
    quiesce_kernel::kprintln!("# quiesce arch=test cpus=1");
    let mut run = Run::new();
    run.plan(2);
    let mut suite = run.suite("first", 3);
    suite.case("passes", &Outcome::Pass);
    quiesce_kernel::diag!("value=42");
    suite.case("fails", &Outcome::Fail("because".into()));
    suite.case("skips", &Outcome::Skip("not here"));
    assert!(!run.end_suite(suite));
    let mut suite = run.suite("second", 1);
    suite.case("only", &Outcome::Pass);
    assert!(run.end_suite(suite));

    let text = String::from_utf8(CAPTURED.lock().unwrap().clone()).unwrap();
    let doc = xtask::ktap::parse(&text);
    assert!(doc.errors.is_empty(), "{:?}\n{text}", doc.errors);
    assert_eq!(doc.plan, Some(2));
    assert!(!doc.passed());
    let cases: Vec<(String, bool, bool)> = doc
        .cases()
        .into_iter()
        .map(|(n, r)| (n, r.ok, r.skipped()))
        .collect();
    assert_eq!(
        cases,
        [
            ("first.passes".to_string(), true, false),
            ("first.fails".to_string(), false, false),
            ("first.skips".to_string(), true, true),
            ("second.only".to_string(), true, false),
        ]
    );
    let fails = doc.case("first.fails").unwrap();
    assert_eq!(fails.diag_value("value"), Some("42"));
    assert_eq!(
        doc.failure_reason("first.fails", &fails).as_deref(),
        Some("because")
    );
    assert!(!doc.results[0].ok && doc.results[1].ok);
}

/// The kernel's platform line and the host's reading of it name the same
/// properties, with the same skip reasons; a value the kernel has not
/// measured never reads as a property the machine lacks.
#[test]
fn kernel_and_host_agree_on_the_platform_line() {
    use quiesce_kernel::platform as k;
    use xtask::platform as h;
    let keys = |k: Vec<&str>| k.join(" ");
    assert_eq!(
        keys(k::Property::ALL.iter().map(|p| p.key()).collect()),
        keys(h::Property::ALL.iter().map(|p| p.key()).collect())
    );
    for (kp, hp) in k::Property::ALL.iter().zip(h::Property::ALL) {
        assert_eq!(kp.lacking(), hp.lacking(), "{}", hp.key());
    }
    let line = h::Platform::from_line(&k::values());
    for p in h::Property::ALL {
        assert_eq!(line.value(p), Some("unmeasured"), "{}", k::values());
        assert!(!line.lacks(p));
    }
}
