//! The plain `cargo xtask run`, the quick tour (`xtask::tour`), as a user
//! runs it: it passes, names every row of the catalogue, and prints each
//! cell's line while it runs, not at the end. The output is read line by
//! line as the driver writes it; a cell line counts as live when the
//! driver was still running at the moment it was read.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use xtask::Arch;

fn the_quick_tour_passes_and_talks_while_it_runs() {
    let arches: Vec<Arch> = Arch::ALL
        .into_iter()
        .filter(|&a| quiesce_tests::enabled(a))
        .collect();
    for a in Arch::ALL.iter().filter(|a| !arches.contains(a)) {
        println!("# SKIP {a}: not in QUIESCE_TEST_ARCHES (the tour runs without it)");
    }
    // The kernels are built (or checked, with QUIESCE_KERNELS) first, so
    // the driver's own build is a no-op.
    for &a in &arches {
        quiesce_tests::kernel(a);
    }
    let _cpus = quiesce_tests::HostCpus::take(4);
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(xtask::workspace_root()).args([
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--",
        "run",
    ]);
    if arches.len() == 1 {
        cmd.args(["--arch", arches[0].name()]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cargo xtask run");
    let out = child.stdout.take().expect("piped");
    let mut lines = Vec::new();
    let mut live_cell_lines = 0usize;
    let mut cell_lines = 0usize;
    let mut first_cell_live = false;
    for line in BufReader::new(out).lines() {
        let line = line.expect("read the driver's output");
        println!("{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() > 3 && matches!(words.last(), Some(&"ok" | &"MISMATCH")) {
            cell_lines += 1;
            let live = child.try_wait().expect("poll the driver").is_none();
            if cell_lines == 1 {
                first_cell_live = live;
            }
            live_cell_lines += usize::from(live);
        }
        lines.push(line);
    }
    let status = child.wait().expect("wait for the driver");
    let text = lines.join("\n");
    assert!(status.success(), "cargo xtask run failed ({status})");
    for row in xtask::expected::rows() {
        assert!(text.contains(row), "row {row} missing from the tour");
    }
    // The properties each architecture's boots measured, shown once.
    assert_eq!(
        text.matches("   platform: stale_tlb_after_pte_clear=yes ipi_held_by_irqs_off=yes")
            .count(),
        arches.len(),
        "{text}"
    );
    let cells = xtask::expected::CELLS
        .iter()
        .filter(|c| arches.contains(&c.arch))
        .count();
    assert!(
        text.contains(&format!(
            "summary: {cells} of {cells} cells as expected, 0 boots failed"
        )),
        "no passing summary line"
    );
    // Every cell that exists on an architecture has its own line (the
    // others are grouped into `skip` lines per row), and they came while
    // the driver ran: all but the last boot's lines (which the driver may
    // print just before it exits) were read while it was still running.
    assert!(
        cell_lines > cells / 3,
        "{cell_lines} cell lines for {cells} cells"
    );
    assert!(
        first_cell_live && live_cell_lines + 3 >= cell_lines,
        "{live_cell_lines} of {cell_lines} cell lines were read while the driver ran (the first one: {first_cell_live})"
    );
}

/// The tour runs the architectures of `QUIESCE_TEST_ARCHES`; with none of
/// them it cannot run.
fn main() {
    let none = !Arch::ALL.into_iter().any(quiesce_tests::enabled);
    quiesce_tests::Harness::new()
        .test_unless(
            "the_quick_tour_passes_and_talks_while_it_runs",
            none.then(|| "no architecture in QUIESCE_TEST_ARCHES".to_string()),
            the_quick_tour_passes_and_talks_while_it_runs,
        )
        .run()
}
