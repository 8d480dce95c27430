//! KTAP version 1 output (Linux `Documentation/dev-tools/ktap.rst`).
//!
//! The top level is a plan over suites; each suite is a nested KTAP document
//! indented by four spaces, closed by the suite's own result line at the top
//! level. Diagnostics are `# key=value` lines. Only the boot CPU prints results;
//! other CPUs may print diagnostics, which the console keeps whole line by line.

use crate::kprintln;

/// Outcome of one test case.
#[derive(Debug)]
pub enum Outcome {
    /// Passed.
    Pass,
    /// Failed, with the reason printed as a diagnostic.
    Fail(alloc::string::String),
    /// Does not apply; the reason goes into the `# SKIP` directive.
    Skip(&'static str),
}

/// The top-level document: a plan over suites.
pub struct Run {
    next: usize,
}

impl Default for Run {
    fn default() -> Self {
        Self::new()
    }
}

impl Run {
    /// Starts the top level (the `KTAP version 1` line is printed at boot).
    pub const fn new() -> Self {
        Self { next: 1 }
    }

    /// Prints the top-level plan.
    pub fn plan(&mut self, suites: usize) {
        kprintln!("1..{suites}");
    }

    /// Prints a top-level result with an optional reason diagnostic.
    pub fn result(&mut self, ok: bool, name: &str, reason: Option<&str>) {
        if let Some(reason) = reason {
            kprintln!("# {name}: {reason}");
        }
        let n = self.next;
        self.next += 1;
        kprintln!("{}ok {n} {name}", if ok { "" } else { "not " });
    }

    /// Opens a suite of `cases` test cases.
    pub fn suite(&mut self, name: &'static str, cases: usize) -> Suite {
        kprintln!("    KTAP version 1");
        kprintln!("    # Subtest: {name}");
        kprintln!("    1..{cases}");
        Suite {
            name,
            next: 1,
            failed: false,
        }
    }

    /// Closes a suite with its result at the top level; returns whether it passed.
    pub fn end_suite(&mut self, suite: Suite) -> bool {
        self.result(!suite.failed, suite.name, None);
        !suite.failed
    }
}

/// A suite being printed.
pub struct Suite {
    name: &'static str,
    next: usize,
    failed: bool,
}

impl Suite {
    /// Prints one case's result.
    pub fn case(&mut self, name: &str, outcome: &Outcome) {
        let n = self.next;
        self.next += 1;
        match outcome {
            Outcome::Pass => kprintln!("    ok {n} {name}"),
            Outcome::Fail(why) => {
                kprintln!("    # {name}: {why}");
                kprintln!("    not ok {n} {name}");
                self.failed = true;
            }
            Outcome::Skip(why) => kprintln!("    ok {n} {name} # SKIP {why}"),
        }
    }
}

/// Prints a `# key=value` diagnostic inside a suite.
#[macro_export]
macro_rules! diag {
    ($($arg:tt)*) => { $crate::kprintln!("    # {}", format_args!($($arg)*)) };
}
