//! `list` on the command line: the kernel prints what it has instead of
//! running it. The kernel is the source of truth for its rows, their
//! variants and its self-tests; `cargo xtask list` boots each architecture
//! with `list` and reads these lines.
//!
//! # Output
//! A KTAP document with one top-level result, `list`, preceded by one
//! diagnostic line per item:
//!
//! ```text
//! 1..1
//! # list: row | name=wp-unlock-vs-zap | catalogue=1 | roles=fault,zap | cpus=3 | seed=seed 000: ... | about=...
//! # list: commit | row=wp-unlock-vs-zap | hash=be068f29034f | role=fix | release=5.9-rc7 | subject=mm: fix misplaced unlock_page in do_wp_page()
//! # list: variant | row=wp-unlock-vs-zap | name=fixed | accepted=yes | fix_waits=Ptl | models=be068f29034f (5.9-rc7), ... | about=...
//! # list: variant | row=gup-fast-folding | name=buggy | accepted=no | reason=no per-mm folding: ... | models=... | about=...
//! # list: suite | name=boot | cases=9
//! # list: case | suite=boot | name=cpus_online
//! # list: end | rows=9 | commits=14 | variants=48 | suites=10 | cases=88
//! ok 1 list
//! ```
//!
//! - After `# list: ` comes the item's kind, then its fields, separated by
//!   ` | `. Each field is `key=value`; the value runs to the next separator
//!   and may contain spaces. In a value, `\` is written `\\` and `|` is
//!   written `\|`, so an unescaped `|` always separates fields. No line
//!   holds a tab or a line break.
//! - Kinds, in this order: each `row` (in [`crate::race::scenario::all`]
//!   order) followed by its `commit`s and `variant`s; then each `suite`
//!   followed by its `case`s; then one `end` with the counts, so a reader
//!   can tell a complete list from a cut one.
//! - `row`: `name`, `catalogue` (the row's number in the race catalogue, `-`
//!   for a demonstration row), `roles` (comma-separated), `cpus` (the CPUs
//!   a run needs: one per role and the controller), `flush` (the flush
//!   strategies this architecture runs the row's variants under,
//!   comma-separated, `-` for a row without a flush axis: it runs under the
//!   architecture's default), `seed` (the mailing-list thread or catalogue
//!   entry), `about`.
//! - `commit`: `row`, `hash`, `role` (`fix`, `introduced`, `context`),
//!   `release` and `subject` where known (left out otherwise).
//! - `variant`: `row`, `name`, `accepted` (`yes`: the row's `prepare`
//!   accepts it on this architecture; `no`: it refuses, and `reason` says
//!   why: a run of it is `skip`), `fix_waits` (the waits its fix adds,
//!   comma-separated, `-` for none), `models` (the Linux kernel it models),
//!   `about`.
//! - `suite`: `name`, `cases` (how many); `case`: `suite`, `name`.
//!
//! Each variant is set and reset once (as a run would, without
//! iterations), and the state check of the race runner must pass after it:
//! a variant whose knobs leak frames fails the list. The result is `not ok`
//! with the reason as its last diagnostic if anything went wrong.

use crate::kprintln;
use crate::ktap::Run;
use crate::mm::arch::Mmu;
use crate::mm::page_alloc;
use crate::race::scenario;
use alloc::{format, string::String, vec::Vec};

/// The prefix of every item line (after the KTAP `# `).
pub const PREFIX: &str = "list: ";

/// Escapes a field value: `\` as `\\`, `|` as `\|`; tabs and line breaks
/// become spaces.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\t' | '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// One item line: `kind | key=value | ...` (without the `# ` and the
/// prefix).
pub fn item(kind: &str, fields: &[(&str, &str)]) -> String {
    let mut line = String::from(kind);
    for (key, value) in fields {
        line.push_str(" | ");
        line.push_str(key);
        line.push('=');
        line.push_str(&escape(value));
    }
    line
}

fn print_item(kind: &str, fields: &[(&str, &str)]) {
    kprintln!("# {PREFIX}{}", item(kind, fields));
}

/// Prints the list as the KTAP result `list`; returns whether it passed.
pub fn print<A: Mmu>(run: &mut Run) -> bool {
    run.plan(1);
    let mut errors: Vec<String> = Vec::new();
    let rows = scenario::all::<A>();
    let (mut commits, mut variants) = (0usize, 0usize);
    for s in &rows {
        let catalogue = s.catalogue.map_or(String::from("-"), |n| format!("{n}"));
        let cpus = format!("{}", s.roles.len() + 1);
        let flush: Vec<&str> = scenario::flush_axis(s)
            .into_iter()
            .flatten()
            .map(|f| f.name())
            .collect();
        let flush = if flush.is_empty() {
            String::from("-")
        } else {
            flush.join(",")
        };
        print_item(
            "row",
            &[
                ("name", s.name),
                ("catalogue", &catalogue),
                ("roles", &s.roles.join(",")),
                ("cpus", &cpus),
                ("flush", &flush),
                ("seed", s.seed),
                ("about", s.about),
            ],
        );
        for c in s.commits {
            let mut fields =
                Vec::from([("row", s.name), ("hash", c.hash), ("role", c.role.word())]);
            if let Some(r) = c.release {
                fields.push(("release", r));
            }
            if let Some(subject) = c.subject {
                fields.push(("subject", subject));
            }
            print_item("commit", &fields);
            commits += 1;
        }
        for (i, v) in s.variants.iter().enumerate() {
            let free_before = page_alloc::nr_free_pages();
            let verdict = s.accepts(i);
            if let Some(err) = scenario::state_check::<A>(free_before) {
                errors.push(format!(
                    "{}:{}: setting and resetting the variant left: {err}",
                    s.name, v.name
                ));
            }
            let waits: Vec<String> = v.fix_waits.iter().map(|w| format!("{w:?}")).collect();
            let waits = if waits.is_empty() {
                String::from("-")
            } else {
                waits.join(",")
            };
            let mut fields = Vec::from([("row", s.name), ("name", v.name)]);
            match verdict {
                Ok(()) => fields.push(("accepted", "yes")),
                Err(why) => {
                    fields.push(("accepted", "no"));
                    fields.push(("reason", why));
                }
            }
            fields.extend([
                ("fix_waits", waits.as_str()),
                ("models", v.models),
                ("about", v.about),
            ]);
            print_item("variant", &fields);
            variants += 1;
        }
    }
    let suites = crate::selftest::suites::<A>();
    let mut cases = 0usize;
    for (suite, list) in &suites {
        print_item(
            "suite",
            &[("name", suite), ("cases", &format!("{}", list.len()))],
        );
        for (case, _) in list {
            print_item("case", &[("suite", suite), ("name", case)]);
            cases += 1;
        }
    }
    print_item(
        "end",
        &[
            ("rows", &format!("{}", rows.len())),
            ("commits", &format!("{commits}")),
            ("variants", &format!("{variants}")),
            ("suites", &format!("{}", suites.len())),
            ("cases", &format!("{cases}")),
        ],
    );
    let ok = errors.is_empty();
    let reason = errors.join("; ");
    run.result(ok, "list", (!ok).then_some(reason.as_str()));
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        assert_eq!(escape("a|b\\c\td"), "a\\|b\\\\c d");
        assert_eq!(
            item(
                "commit",
                &[
                    ("hash", "99baac21e458"),
                    ("subject", "MADV_[FREE|DONTNEED]")
                ]
            ),
            "commit | hash=99baac21e458 | subject=MADV_[FREE\\|DONTNEED]"
        );
        assert_eq!(item("end", &[]), "end");
    }
}
