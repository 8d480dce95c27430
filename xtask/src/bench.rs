//! The benchmark report of `cargo xtask bench`: every figure with its spread
//! over repeated runs, saved as JSON, rendered as a self-contained HTML page
//! with SVG plots and as a plain-text table, and compared with an earlier
//! run (`--compare OLD.json`).
//!
//! A figure is identified by (arch, group, name); its samples are the values
//! of the repeated runs, summarised as min / median / max. Whether larger is
//! better is part of the figure (throughput) or not (latency, time to first
//! hit), so a comparison can say which way a change moved it.

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// One measured quantity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// `s390x` or `x86_64`.
    pub arch: String,
    /// The plot it belongs to (`shootdown latency`, `race: time to first hit`, ...).
    pub group: String,
    /// What it is within the group (`ipi, 1 target`, `wp-unlock-vs-zap buggy-immediate`, ...).
    pub name: String,
    /// Unit (`ns`, `ms`, `pages/s`, ...).
    pub unit: String,
    /// Whether a larger value is better.
    pub higher_is_better: bool,
    /// One value per run.
    pub samples: Vec<f64>,
    /// Runs that gave no value (e.g. a race run without a hit).
    #[serde(default)]
    pub missing: usize,
}

impl Figure {
    /// A figure without samples yet.
    pub fn new(arch: &str, group: &str, name: &str, unit: &str, higher_is_better: bool) -> Self {
        Self {
            arch: arch.into(),
            group: group.into(),
            name: name.into(),
            unit: unit.into(),
            higher_is_better,
            samples: Vec::new(),
            missing: 0,
        }
    }

    /// (min, median, max), if there is a sample.
    pub fn spread(&self) -> Option<(f64, f64, f64)> {
        let mut v = self.samples.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some((v[0], median, v[n - 1]))
    }

    fn key(&self) -> (&str, &str, &str) {
        (&self.arch, &self.group, &self.name)
    }
}

/// A whole benchmark run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// When it ran (seconds since the Unix epoch).
    pub unix_time: u64,
    /// The commit it ran on, if known.
    pub commit: Option<String>,
    /// How it ran (`10 boots per architecture, 4 CPUs, TCG`).
    pub conditions: String,
    /// Every figure.
    pub figures: Vec<Figure>,
    /// Race boots that did not pass (a hang, a crash, an unexpected
    /// outcome), one line each; their samples are left out.
    #[serde(default)]
    pub failures: Vec<String>,
}

impl Report {
    /// The figure (arch, group, name), created on first use.
    pub fn figure(
        &mut self,
        arch: &str,
        group: &str,
        name: &str,
        unit: &str,
        higher_is_better: bool,
    ) -> &mut Figure {
        let i = match self
            .figures
            .iter()
            .position(|f| f.key() == (arch, group, name))
        {
            Some(i) => i,
            None => {
                self.figures
                    .push(Figure::new(arch, group, name, unit, higher_is_better));
                self.figures.len() - 1
            }
        };
        &mut self.figures[i]
    }

    /// Reads a report written by [`Report::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a benchmark report", path.display()))
    }

    /// Writes the report as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The groups in order of first appearance, per arch.
    fn groups(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for f in &self.figures {
            let k = (f.arch.clone(), f.group.clone());
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }
}

/// One figure against the same figure of an earlier run.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The figure's key.
    pub arch: String,
    /// Group.
    pub group: String,
    /// Name.
    pub name: String,
    /// Medians, old and new.
    pub old: f64,
    /// New median.
    pub new: f64,
    /// new / old.
    pub ratio: f64,
    /// Whether the change is an improvement (beyond 5 %), a regression, or neither.
    pub verdict: Change,
}

/// Which way a figure moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Better by more than 5 %.
    Better,
    /// Worse by more than 5 %.
    Worse,
    /// Within 5 %.
    Same,
}

/// Compares the medians of every figure present in both runs.
pub fn compare(old: &Report, new: &Report) -> Vec<Comparison> {
    let mut out = Vec::new();
    for f in &new.figures {
        let Some(o) = old.figures.iter().find(|o| o.key() == f.key()) else {
            continue;
        };
        let (Some((_, om, _)), Some((_, nm, _))) = (o.spread(), f.spread()) else {
            continue;
        };
        if om == 0.0 {
            continue;
        }
        let ratio = nm / om;
        let better = if f.higher_is_better {
            ratio > 1.05
        } else {
            ratio < 1.0 / 1.05
        };
        let worse = if f.higher_is_better {
            ratio < 1.0 / 1.05
        } else {
            ratio > 1.05
        };
        out.push(Comparison {
            arch: f.arch.clone(),
            group: f.group.clone(),
            name: f.name.clone(),
            old: om,
            new: nm,
            ratio,
            verdict: if better {
                Change::Better
            } else if worse {
                Change::Worse
            } else {
                Change::Same
            },
        });
    }
    out
}

/// A number with a k/M suffix and 3 significant digits.
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The plain-text table: one line per figure, min / median / max, and the
/// ratio against `cmp` where there is one.
pub fn text_table(r: &Report, cmp: &[Comparison]) -> String {
    let mut out = String::new();
    let mut arch = "";
    for f in &r.figures {
        if f.arch != arch {
            arch = &f.arch;
            let _ = writeln!(out, "{arch}:");
        }
        let label = format!("{}: {} ({})", f.group, f.name, f.unit);
        let spread = match f.spread() {
            Some((lo, mid, hi)) => {
                format!("{:>10} {:>10} {:>10}", human(lo), human(mid), human(hi))
            }
            None => format!("{:>32}", "-"),
        };
        let missing = if f.missing > 0 {
            format!(
                "  ({} of {} runs without a value)",
                f.missing,
                f.missing + f.samples.len()
            )
        } else {
            String::new()
        };
        let ratio = cmp
            .iter()
            .find(|c| (c.arch.as_str(), c.group.as_str(), c.name.as_str()) == f.key())
            .map(|c| {
                format!(
                    "  x{:.2} {}",
                    c.ratio,
                    match c.verdict {
                        Change::Better => "better",
                        Change::Worse => "WORSE",
                        Change::Same => "same",
                    }
                )
            })
            .unwrap_or_default();
        let _ = writeln!(out, "   {label:<88} {spread}{ratio}{missing}");
    }
    out
}

/// An SVG bar chart of one group: a bar at each figure's median, a whisker
/// from min to max.
pub fn group_svg(r: &Report, arch: &str, group: &str) -> Result<String> {
    let figs: Vec<(&Figure, (f64, f64, f64))> = r
        .figures
        .iter()
        .filter(|f| f.arch == arch && f.group == group)
        .filter_map(|f| f.spread().map(|s| (f, s)))
        .collect();
    let mut svg = String::new();
    if figs.is_empty() {
        return Ok(svg);
    }
    let unit = figs[0].0.unit.clone();
    let top = figs
        .iter()
        .map(|(_, (_, _, hi))| *hi)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let n = figs.len();
    let height = (80 + 34 * n as u32).max(200);
    // Room for the longest bar label (13 px sans-serif: about 7 px a
    // character), so short labels leave the width to the bars.
    let longest = figs.iter().map(|(f, _)| f.name.chars().count()).max();
    let label_area = (longest.unwrap_or(0) as u32 * 7 + 20).clamp(80, 290);
    {
        let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting {arch} {group}: {e}");
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{arch}: {group}"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0.0..top, -0.5..(n as f64 - 0.5))
            .map_err(|e| err(&e))?;
        let names: Vec<String> = figs.iter().map(|(f, _)| f.name.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(unit)
            .x_labels(6)
            .x_label_formatter(&|v| human(*v))
            .y_labels(n)
            .y_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 {
                    // The first figure on top.
                    names
                        .get(n - 1 - (i as usize).min(n - 1))
                        .cloned()
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(&e))?;
        let color = RGBColor(70, 110, 170);
        chart
            .draw_series(figs.iter().enumerate().map(|(i, (_, (_, mid, _)))| {
                let y = (n - 1 - i) as f64;
                Rectangle::new([(0.0, y - 0.32), (*mid, y + 0.32)], color.mix(0.7).filled())
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(figs.iter().enumerate().map(|(i, (_, (lo, _, hi)))| {
                let y = (n - 1 - i) as f64;
                PathElement::new(vec![(*lo, y), (*hi, y)], BLACK.stroke_width(2))
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(figs.iter().enumerate().flat_map(|(i, (_, (lo, _, hi)))| {
                let y = (n - 1 - i) as f64;
                [*lo, *hi].map(|x| {
                    PathElement::new(vec![(x, y - 0.15), (x, y + 0.15)], BLACK.stroke_width(2))
                })
            }))
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

fn esc(s: &str) -> String {
    crate::junit::escape(s)
}

/// The self-contained HTML report: conditions, one SVG plot per group and
/// architecture, and the full table (with the comparison, if any).
pub fn html(r: &Report, cmp: &[Comparison], old_label: Option<&str>) -> Result<String> {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>quiesce benchmarks</title>\n<style>body{font-family:sans-serif;margin:2em;max-width:1560px}figure{margin:0}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}.better{color:#070}.worse{color:#b00;font-weight:bold}.plots{display:flex;flex-wrap:wrap;gap:12px}</style></head><body>\n");
    let _ = writeln!(h, "<h1>quiesce benchmarks</h1>");
    let _ = writeln!(
        h,
        "<p>{} &middot; commit {} &middot; unix time {}. Bars: median; whiskers: min to max over the runs.</p>",
        esc(&r.conditions),
        esc(r.commit.as_deref().unwrap_or("unknown")),
        r.unix_time
    );
    for f in &r.failures {
        let _ = writeln!(
            h,
            "<p class=\"worse\">FAILED boot (samples left out): {}</p>",
            esc(f)
        );
    }
    if let Some(old) = old_label {
        let _ = writeln!(
            h,
            "<p>Compared with <code>{}</code>: ratio = new median / old median; better or worse beyond 5 %.</p>",
            esc(old)
        );
    }
    let mut arch = String::new();
    for (a, g) in r.groups() {
        if a != arch {
            if !arch.is_empty() {
                h.push_str("</div>\n");
            }
            let _ = writeln!(h, "<h2>{}</h2>\n<div class=\"plots\">", esc(&a));
            arch = a.clone();
        }
        let svg = group_svg(r, &a, &g)?;
        let _ = writeln!(h, "<figure>{svg}</figure>");
    }
    if !arch.is_empty() {
        h.push_str("</div>\n");
    }
    h.push_str("<h2>Table</h2>\n<table><tr><th>arch</th><th>group</th><th>figure</th><th>unit</th><th>min</th><th>median</th><th>max</th><th>runs</th>");
    if old_label.is_some() {
        h.push_str("<th>old median</th><th>ratio</th>");
    }
    h.push_str("</tr>\n");
    for f in &r.figures {
        let (lo, mid, hi) = f
            .spread()
            .map_or(("-".into(), "-".into(), "-".into()), |(a, b, c)| {
                (human(a), human(b), human(c))
            });
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{lo}</td><td>{mid}</td><td>{hi}</td><td>{}{}</td>",
            esc(&f.arch),
            esc(&f.group),
            esc(&f.name),
            esc(&f.unit),
            f.samples.len(),
            if f.missing > 0 {
                format!(" ({} without)", f.missing)
            } else {
                String::new()
            }
        );
        if old_label.is_some() {
            match cmp
                .iter()
                .find(|c| (c.arch.as_str(), c.group.as_str(), c.name.as_str()) == f.key())
            {
                Some(c) => {
                    let class = match c.verdict {
                        Change::Better => "better",
                        Change::Worse => "worse",
                        Change::Same => "",
                    };
                    let _ = write!(
                        h,
                        "<td>{}</td><td class=\"{class}\">x{:.2}</td>",
                        human(c.old),
                        c.ratio
                    );
                }
                None => h.push_str("<td>-</td><td>-</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n</body></html>\n");
    Ok(h)
}

/// Target for the time from starting QEMU to the first KTAP line (TCG).
pub const FIRST_LINE_TARGET_MS: f64 = 100.0;

/// A figure the kernels print as a diagnostic: (case, key, group, name,
/// unit, higher is better).
type Source = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
);

/// Every self-test figure the benchmark reports.
pub const SELFTEST_FIGURES: &[Source] = &[
    (
        "mm_page.alloc_throughput",
        "frame_allocs_per_sec_1cpu",
        "frame allocator",
        "1 CPU",
        "allocs/s",
        true,
    ),
    (
        "mm_page.alloc_throughput",
        "all_cpus",
        "frame allocator",
        "all CPUs",
        "allocs/s",
        true,
    ),
    (
        "mm.fault_throughput",
        "page_faults_per_sec_1cpu",
        "page faults",
        "1 CPU",
        "faults/s",
        true,
    ),
    (
        "mm.fault_throughput",
        "page_faults_per_sec_all_cpus",
        "page faults",
        "all CPUs",
        "faults/s",
        true,
    ),
    (
        "mm_file.writeback_throughput_softdirty",
        "writeback_pages_per_sec",
        "writeback",
        "soft dirty bits",
        "pages/s",
        true,
    ),
    (
        "mm_file.writeback_throughput_skey",
        "writeback_pages_per_sec",
        "writeback",
        "storage keys",
        "pages/s",
        true,
    ),
    (
        "gather.zap_throughput",
        "zap_pages_per_sec_batched",
        "zap throughput",
        "batched",
        "pages/s",
        true,
    ),
    (
        "gather.zap_throughput",
        "immediate",
        "zap throughput",
        "immediate",
        "pages/s",
        true,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_ipi_targets_1",
        "TLB shootdown latency",
        "ipi, 1 target",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_ipi_targets_2",
        "TLB shootdown latency",
        "ipi, 2 targets",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_ipi_targets_all",
        "TLB shootdown latency",
        "ipi, all",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_nmi_targets_1",
        "TLB shootdown latency",
        "nmi, 1 target",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_nmi_targets_2",
        "TLB shootdown latency",
        "nmi, 2 targets",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_nmi_targets_all",
        "TLB shootdown latency",
        "nmi, all",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_ipte_targets_1",
        "TLB shootdown latency",
        "ipte, 1 target",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_ipte_targets_2",
        "TLB shootdown latency",
        "ipte, 2 targets",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_ipte_targets_all",
        "TLB shootdown latency",
        "ipte, all",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_csp_targets_1",
        "TLB shootdown latency",
        "csp, 1 target",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_csp_targets_2",
        "TLB shootdown latency",
        "csp, 2 targets",
        "ns",
        false,
    ),
    (
        "tlb.shootdown_latency",
        "shootdown_ns_csp_targets_all",
        "TLB shootdown latency",
        "csp, all",
        "ns",
        false,
    ),
    (
        "tlb.flush_vs_irqs_off",
        "ipi_flush_wait_ns",
        "flush against a 150 ms interrupts-off section",
        "ipi",
        "ns",
        false,
    ),
    (
        "tlb.flush_vs_irqs_off",
        "nmi_flush_wait_ns",
        "flush against a 150 ms interrupts-off section",
        "nmi",
        "ns",
        false,
    ),
    (
        "gup.throughput",
        "gup_fast_pages_per_sec_1cpu",
        "GUP",
        "fast, 1 CPU",
        "pages/s",
        true,
    ),
    (
        "gup.throughput",
        "gup_slow_pages_per_sec_1cpu",
        "GUP",
        "slow, 1 CPU",
        "pages/s",
        true,
    ),
    (
        "gup.throughput",
        "gup_fast_pages_per_sec_all_cpus",
        "GUP",
        "fast, all CPUs",
        "pages/s",
        true,
    ),
    (
        "gup.throughput",
        "gup_slow_pages_per_sec_all_cpus",
        "GUP",
        "slow, all CPUs",
        "pages/s",
        true,
    ),
    (
        "race.unarmed_point_cost",
        "race_point_unarmed_ns",
        "race point cost",
        "unarmed",
        "ns",
        false,
    ),
    (
        "race.unarmed_point_cost",
        "race_point_armed_trace_ns",
        "race point cost",
        "armed for tracing",
        "ns",
        false,
    ),
];

/// What `cargo xtask bench` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Architectures.
    pub arches: Vec<crate::Arch>,
    /// Self-test boots per architecture.
    pub runs: usize,
    /// Natural-mode boots per buggy scenario cell (0: none).
    pub race_runs: usize,
    /// CPUs per boot.
    pub smp: usize,
}

/// Runs every benchmark boot and collects the figures. `say` prints a
/// line of output; the progress display shows the rest.
pub fn run(opts: &Options, progress: &mut crate::progress::Progress) -> Result<Report> {
    use crate::expected::{Expect, Mode, CELLS};
    use crate::{kbuild, Boot, BootConfig};
    use std::time::Duration;
    let mut report = Report {
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        commit: git_commit(),
        conditions: format!(
            "{} self-test boots per architecture, {} natural-mode boots per buggy cell (seeds 1..={}, each to its first hit), {} CPUs, QEMU TCG",
            opts.runs, opts.race_runs, opts.race_runs, opts.smp
        ),
        figures: Vec::new(),
        failures: Vec::new(),
    };
    let cells: Vec<_> = CELLS
        .iter()
        .filter(|c| {
            opts.arches.contains(&c.arch)
                && c.mode == Mode::Natural
                && matches!(c.expect, Expect::Bug | Expect::Report)
        })
        .collect();
    let total = opts.runs * opts.arches.len() + opts.race_runs * cells.len();
    let mut done = 0;
    for &a in &opts.arches {
        let kernel = kbuild::kernel(a, true)?;
        let arch = a.name();
        for _ in 0..opts.runs {
            progress.update(&progress.status("bench", done, total, &format!("{arch} self-tests")));
            let mut config = BootConfig::new(a, kernel.clone());
            config.smp = opts.smp;
            let boot = Boot::run(&config, |_| {})?;
            done += 1;
            if !boot.verdict().passed {
                progress.println(&boot.failure_report());
                anyhow::bail!("a {a} benchmark boot failed");
            }
            let first = boot.first_ktap_line.map_or(0.0, |d| d.as_secs_f64() * 1e3);
            report
                .figure(arch, "boot", "first KTAP line", "ms", false)
                .samples
                .push(first);
            report
                .figure(arch, "boot", "boot to exit", "ms", false)
                .samples
                .push(boot.elapsed.as_secs_f64() * 1e3);
            for (case, key, group, name, unit, hib) in SELFTEST_FIGURES {
                let v = boot
                    .ktap
                    .case(case)
                    .and_then(|r| r.diag_value(key).and_then(|v| v.parse::<f64>().ok()));
                if let Some(v) = v {
                    report.figure(arch, group, name, unit, *hib).samples.push(v);
                }
            }
        }
        for c in cells.iter().filter(|c| c.arch == a) {
            let name = format!("{} {}", c.row, c.label());
            for seed in 1..=opts.race_runs {
                progress.update(&progress.status(
                    "bench",
                    done,
                    total,
                    &format!("{arch} {name} seed {seed}"),
                ));
                let mut config = BootConfig::new(a, kernel.clone());
                config.smp = opts.smp;
                config.timeout = Duration::from_secs(400);
                config.cmdline = format!("{} seed={seed} stop_at_hit", c.kernel_args());
                let boot = Boot::run(&config, |_| {})?;
                done += 1;
                let case = c.case();
                let verdict = boot.verdict();
                let r = boot.ktap.case(&case);
                let Some(r) = r.filter(|_| verdict.passed) else {
                    progress.println(&boot.failure_report());
                    report.failures.push(format!(
                        "{arch} {name} seed {seed}: {}",
                        if verdict.passed {
                            format!("{case} did not run")
                        } else {
                            verdict.reasons.join("; ")
                        }
                    ));
                    continue;
                };
                let figure = |k: &str| r.diag_value(k).and_then(|v| v.parse::<f64>().ok());
                if let Some(v) = figure("iters_per_sec") {
                    report
                        .figure(
                            arch,
                            "race: natural iterations per second",
                            &name,
                            "iterations/s",
                            true,
                        )
                        .samples
                        .push(v);
                }
                let f = report.figure(arch, "race: natural time to first hit", &name, "ms", false);
                match figure("first_hit_ns") {
                    Some(ns) => f.samples.push(ns / 1e6),
                    None => f.missing += 1,
                }
            }
        }
    }
    progress.finish();
    Ok(report)
}

/// Whether the median time to the first KTAP line of every arch meets
/// [`FIRST_LINE_TARGET_MS`].
pub fn first_line_target_met(r: &Report) -> bool {
    r.figures
        .iter()
        .filter(|f| f.group == "boot" && f.name == "first KTAP line")
        .all(|f| {
            f.spread()
                .is_some_and(|(_, m, _)| m <= FIRST_LINE_TARGET_MS)
        })
}

/// The checked-out commit, if git can tell.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(crate::workspace_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report {
            unix_time: 1,
            commit: Some("abc".into()),
            conditions: "3 boots, 4 CPUs <TCG>".into(),
            figures: Vec::new(),
            failures: vec!["s390x x seed 1: timed out".into()],
        };
        r.figure("s390x", "shootdown latency", "ipte, 1 target", "ns", false)
            .samples = vec![3500.0, 3800.0, 7100.0];
        r.figure("s390x", "shootdown latency", "csp, 1 target", "ns", false)
            .samples = vec![3300.0, 3500.0, 3600.0];
        r.figure("s390x", "GUP", "fast, 1 CPU", "pages/s", true)
            .samples = vec![13e6, 13.5e6, 14e6, 15e6];
        let f = r.figure("x86_64", "race: time to first hit", "a & b", "ms", false);
        f.samples = vec![10.0];
        f.missing = 1;
        r
    }

    #[test]
    fn spread_is_min_median_max() {
        let r = sample();
        assert_eq!(r.figures[0].spread(), Some((3500.0, 3800.0, 7100.0)));
        assert_eq!(r.figures[2].spread(), Some((13e6, 13.75e6, 15e6)));
        assert_eq!(Figure::new("a", "b", "c", "d", true).spread(), None);
    }

    #[test]
    fn json_round_trips() {
        let r = sample();
        let path = std::env::temp_dir().join(format!("quiesce-bench-{}.json", std::process::id()));
        r.save(&path).unwrap();
        assert_eq!(Report::load(&path).unwrap(), r);
        std::fs::write(&path, "{\"not\": 1}").unwrap();
        assert!(Report::load(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn comparison_knows_which_way_is_better() {
        let old = sample();
        let mut new = sample();
        // Latency doubled (worse), throughput doubled (better), one within 5 %.
        new.figures[0].samples = vec![7600.0];
        new.figures[1].samples = vec![3550.0];
        new.figures[2].samples = vec![27.5e6];
        let c = compare(&old, &new);
        assert_eq!(c.len(), 4);
        assert_eq!(c[0].verdict, Change::Worse);
        assert!((c[0].ratio - 2.0).abs() < 1e-9);
        assert_eq!(c[1].verdict, Change::Same);
        assert_eq!(c[2].verdict, Change::Better);
        assert_eq!(c[3].verdict, Change::Same);
        let t = text_table(&new, &c);
        assert!(
            t.contains("x2.00 WORSE") && t.contains("x2.00 better"),
            "{t}"
        );
        assert!(t.contains("1 of 2 runs without a value"), "{t}");
    }

    #[test]
    fn html_is_self_contained_with_one_plot_per_group() {
        let r = sample();
        let c = compare(&r, &r);
        let page = html(&r, &c, Some("old.json")).unwrap();
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(!page.contains("src=") && !page.contains("href="));
        assert!(page.contains("a &amp; b") && page.contains("&lt;TCG&gt;"));
        assert!(page.contains("x1.00"));
        assert!(page.contains("FAILED boot (samples left out): s390x x seed 1: timed out"));
        // Each SVG names its group and draws a bar per figure.
        let svg = group_svg(&r, "s390x", "shootdown latency").unwrap();
        assert!(svg.contains("shootdown latency") && svg.contains("ipte, 1 target"));
        assert!(svg.matches("<rect").count() >= 3, "{svg}");
    }
}
