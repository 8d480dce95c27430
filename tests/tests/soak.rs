//! The soak as tests: one ignored test per soak run of `cargo xtask soak`
//! (`xtask::soak::plan`: every natural cell the table expects `clean` with
//! the rows' delays armed, every buggy or hit-rate cell with and without
//! them), so that cargo-nextest can spread the long runs over machines:
//!
//! ```text
//! cargo nextest run -p quiesce-tests --test soak --run-ignored only --partition hash:1/8
//! ```
//!
//! Names: `ARCH::ROW::VARIANT` (with `@FLUSH` for a row with a flush axis),
//! `::nodelays` for a run without the delays. Each test boots its cell
//! once and judges it as `cargo xtask soak` does (`xtask::soak::judge`): a
//! fixed cell must run its iterations without a hit and above its floor,
//! a buggy cell with delays must hit. It prints the result line the README's
//! soak table is made of.
//!
//! Sizes: `QUIESCE_SOAK_FIXED_ITERATIONS` (default 10^6),
//! `QUIESCE_SOAK_BUGGY_ITERATIONS` (default 10^5), `QUIESCE_SOAK_BUDGET_S`
//! (default 3 hours a run), `QUIESCE_SOAK_SEED` (default 1: a shard repeats
//! exactly).

use quiesce_tests::{boot, Harness};
use std::time::Duration;
use xtask::expected::Selection;
use xtask::soak::{self, Judgement, SoakResult, SoakRun};
use xtask::Arch;

/// A number from the environment, or `default`.
fn env_u64(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v}: not a number")),
        Err(_) => default,
    }
}

/// The test's name of a run.
fn name(run: &SoakRun) -> String {
    format!(
        "{}::{}::{}{}",
        run.cell.arch,
        run.cell.row.replace('-', "_"),
        run.cell.label().replace('-', "_"),
        if run.delays { "" } else { "::nodelays" }
    )
}

/// Boots the run and asserts its judgement.
fn soak_run(run: SoakRun) {
    let Some(b) = boot(
        run.cell.arch,
        4,
        &run.cmdline(60),
        Duration::from_secs(run.timeout_s()),
    ) else {
        return;
    };
    let r = SoakResult::of(&run, &b);
    let j = soak::judge(&run, &r);
    // The soak's table row (arch, row, variant, delays, iterations, hits,
    // overlap, first hit ms, iterations/s, judgement), and the seed.
    println!("soak: {} seed={}", soak::table_row(&run, &r, &j), run.seed);
    assert!(
        j == Judgement::Ok,
        "{}: {j}\nrepeat: {}\n{}",
        name(&run),
        run.repeat_command(4),
        if r.boot_ok {
            String::new()
        } else {
            b.failure_report()
        }
    );
}

/// One ignored test per soak run of both architectures.
fn main() {
    let runs = soak::plan(
        &Arch::ALL,
        &Selection::default(),
        env_u64("QUIESCE_SOAK_FIXED_ITERATIONS", soak::FIXED_ITERATIONS),
        env_u64("QUIESCE_SOAK_BUGGY_ITERATIONS", soak::BUGGY_ITERATIONS),
        env_u64("QUIESCE_SOAK_BUDGET_S", 3 * 3600),
        env_u64("QUIESCE_SOAK_SEED", 1),
    );
    let mut tests = Harness::new();
    for run in runs {
        let arch = run.cell.arch;
        tests = tests.test_on_request(
            name(&run),
            &[arch],
            "a soak run: up to hours (cargo nextest run --run-ignored only, or -- --ignored)",
            move || soak_run(run),
        );
    }
    tests.run()
}
