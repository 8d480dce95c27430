//! The benchmark report of `cargo xtask bench`: every figure with its spread
//! over repeated runs, saved as JSON, rendered as a self-contained HTML page
//! with SVG plots and as a plain-text table, and compared with an earlier
//! run (`--compare OLD.json`).
//!
//! A figure is identified by (arch, group, name); its samples are the values
//! of the repeated runs, summarised as min / median / max. Whether larger is
//! better is part of the figure (throughput) or not (latency, time to first
//! hit), so a comparison can say which way a change moved it.
//!
//! Invariants:
//! - `bench` judges what it boots: every self-test boot must pass, and every
//!   race boot must show what the expected table says for its cell
//!   ([`judge_race_boot`], the same [`crate::expected::compare`] as `run`);
//!   a boot that does not is a failure (its samples are left out) and makes
//!   `bench` exit non-zero.
//! - Timing is a figure, never a verdict: the cost of a race point, the
//!   time to the first KTAP line and the overrun of a natural run's time
//!   budget have targets ([`TARGETS`]) that the report marks met or missed;
//!   no self-test or boot test fails on them (`--fail-on-target` makes a
//!   missed target fail `bench`).
//! - A comparison marks a change only when it stands out of the spread
//!   ([`compare`]): both runs have at least [`MIN_RUNS_TO_JUDGE`] samples,
//!   their min..max ranges are apart, and the medians differ by more than
//!   5 %.

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
    /// For a point of a cost curve: its line within the group (`ipi`,
    /// `batched`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    /// For a point of a cost curve: where it lies on the curve's x axis
    /// (CPUs, pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<f64>,
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
            series: None,
            x: None,
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

    /// The figure's target, if [`TARGETS`] gives it one: the median must
    /// be at most this (at least, for a figure where larger is better).
    pub fn target(&self) -> Option<f64> {
        TARGETS
            .iter()
            .find(|(g, n, _)| (*g, *n) == (self.group.as_str(), self.name.as_str()))
            .map(|t| t.2)
    }

    /// Whether the median meets the target; `None` without a target or a
    /// sample.
    pub fn meets_target(&self) -> Option<bool> {
        let t = self.target()?;
        let (_, m, _) = self.spread()?;
        Some(if self.higher_is_better {
            m >= t
        } else {
            m <= t
        })
    }

    /// `target <= 100 ms: met` (or `MISSED`, or `no sample`), for a figure
    /// with a target.
    pub fn target_note(&self) -> Option<String> {
        let t = self.target()?;
        let cmp = if self.higher_is_better { ">=" } else { "<=" };
        let state = match self.meets_target() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "no sample",
        };
        Some(format!("target {cmp} {} {}: {state}", human(t), self.unit))
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

    /// The point at `x` of the line `series` of the cost curve `group`
    /// (named `series, x label`), created on first use.
    pub fn curve_point(&mut self, arch: &str, curve: &Curve, series: &str, x: f64) -> &mut Figure {
        let name = format!("{series}, {x} {}", curve.x_unit);
        let f = self.figure(arch, curve.group, &name, curve.unit, curve.higher_is_better);
        f.series = Some(series.into());
        f.x = Some(x);
        f
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
    /// Whether the change is an improvement, a regression, or neither
    /// (the rule is [`compare`]'s).
    pub verdict: Change,
}

/// Which way a figure moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The ranges are apart, the new one on the better side, and the
    /// medians differ by more than 5 %.
    Better,
    /// The ranges are apart, the new one on the worse side, and the medians
    /// differ by more than 5 %.
    Worse,
    /// The ranges overlap, or the medians are within 5 %.
    Same,
    /// One of the runs has fewer than [`MIN_RUNS_TO_JUDGE`] samples: its
    /// spread is unknown, so no change is marked.
    FewRuns,
}

impl Change {
    /// The word the table prints.
    pub fn word(self) -> &'static str {
        match self {
            Change::Better => "better",
            Change::Worse => "WORSE",
            Change::Same => "same",
            Change::FewRuns => "few runs",
        }
    }
}

/// Samples each run of a figure needs before [`compare`] marks a change.
pub const MIN_RUNS_TO_JUDGE: usize = 3;

/// The least change of the median that [`compare`] marks (new / old).
pub const MIN_RATIO: f64 = 1.05;

/// Which way `new` moved from `old`, spread-aware: a change is marked only
/// when both have [`MIN_RUNS_TO_JUDGE`] samples, their min..max ranges are
/// apart (the runs do not overlap at all) and the medians differ by more
/// than [`MIN_RATIO`]. Two runs whose ranges touch are the same figure
/// within its noise, however far apart their medians.
pub fn change(old: &Figure, new: &Figure) -> Change {
    if old.samples.len() < MIN_RUNS_TO_JUDGE || new.samples.len() < MIN_RUNS_TO_JUDGE {
        return Change::FewRuns;
    }
    let (Some((olo, om, ohi)), Some((nlo, nm, nhi))) = (old.spread(), new.spread()) else {
        return Change::FewRuns;
    };
    let beyond = om != 0.0 && (nm / om > MIN_RATIO || nm / om < 1.0 / MIN_RATIO);
    let (above, below) = (nlo > ohi, nhi < olo);
    match (beyond, above, below) {
        (false, _, _) | (true, false, false) => Change::Same,
        (true, up, _) if up == new.higher_is_better => Change::Better,
        _ => Change::Worse,
    }
}

/// Compares every figure present in both runs: the ratio of the medians,
/// and the change [`change`] marks.
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
        out.push(Comparison {
            arch: f.arch.clone(),
            group: f.group.clone(),
            name: f.name.clone(),
            old: om,
            new: nm,
            ratio: nm / om,
            verdict: change(o, f),
        });
    }
    out
}

/// The comparisons marked [`Change::Worse`] (what `--fail-on-regression`
/// fails on).
pub fn regressions(cmp: &[Comparison]) -> Vec<&Comparison> {
    cmp.iter().filter(|c| c.verdict == Change::Worse).collect()
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
            .map(|c| format!("  x{:.2} {}", c.ratio, c.verdict.word()))
            .unwrap_or_default();
        let target = f
            .target_note()
            .map_or(String::new(), |t| format!("  ({t})"));
        let _ = writeln!(out, "   {label:<88} {spread}{ratio}{target}{missing}");
    }
    let lines = r.curve_lines();
    if !lines.is_empty() {
        let _ = writeln!(out, "growth of the cost curves (medians):");
        for l in &lines {
            let _ = writeln!(
                out,
                "   {} {}: {}: {}",
                l.arch,
                l.group,
                l.series,
                l.growth()
            );
        }
    }
    out
}

/// The colour of architecture `arch`'s `i`-th line or bar: blues for
/// s390x, oranges for x86-64, so that the two stay apart on one axis.
fn arch_color(arch: &str, i: usize) -> RGBColor {
    const S390X: [RGBColor; 4] = [
        RGBColor(40, 90, 170),
        RGBColor(90, 160, 220),
        RGBColor(20, 60, 110),
        RGBColor(130, 110, 200),
    ];
    const X86_64: [RGBColor; 4] = [
        RGBColor(220, 110, 30),
        RGBColor(190, 50, 40),
        RGBColor(240, 170, 60),
        RGBColor(150, 80, 20),
    ];
    let palette = if arch == "s390x" { S390X } else { X86_64 };
    palette[i % palette.len()]
}

/// An SVG bar chart of one group, every architecture on one axis: a bar at
/// each figure's median (the value printed at its end), a whisker from min
/// to max, bars coloured by architecture.
pub fn group_svg(r: &Report, group: &str) -> Result<String> {
    let figs: Vec<(&Figure, (f64, f64, f64))> = r
        .figures
        .iter()
        .filter(|f| f.group == group)
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
        * 1.15;
    let n = figs.len();
    let height = (80 + 26 * n as u32).max(200);
    let names: Vec<String> = figs
        .iter()
        .map(|(f, _)| format!("{}: {}", f.arch, f.name))
        .collect();
    // Room for the longest bar label (13 px sans-serif: about 7 px a
    // character), so short labels leave the width to the bars.
    let longest = names.iter().map(|l| l.chars().count()).max();
    let label_area = (longest.unwrap_or(0) as u32 * 7 + 20).clamp(80, 330);
    {
        let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting {group}: {e}");
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(group, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0.0..top, -0.5..(n as f64 - 0.5))
            .map_err(|e| err(&e))?;
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
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(&e))?;
        let y = |i: usize| (n - 1 - i) as f64;
        chart
            .draw_series(figs.iter().enumerate().map(|(i, (f, (_, mid, _)))| {
                Rectangle::new(
                    [(0.0, y(i) - 0.32), (*mid, y(i) + 0.32)],
                    arch_color(&f.arch, 0).mix(0.75).filled(),
                )
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(figs.iter().enumerate().map(|(i, (_, (lo, _, hi)))| {
                PathElement::new(vec![(*lo, y(i)), (*hi, y(i))], BLACK.stroke_width(2))
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(figs.iter().enumerate().flat_map(|(i, (_, (lo, _, hi)))| {
                [*lo, *hi].map(|x| {
                    PathElement::new(
                        vec![(x, y(i) - 0.15), (x, y(i) + 0.15)],
                        BLACK.stroke_width(2),
                    )
                })
            }))
            .map_err(|e| err(&e))?;
        // The median as text: a bar next to a far longer one is still read.
        chart
            .draw_series(figs.iter().enumerate().map(|(i, (_, (_, mid, hi)))| {
                Text::new(
                    human(*mid),
                    (hi.max(*mid) + top * 0.01, y(i) + 0.2),
                    ("sans-serif", 11),
                )
            }))
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// One line of a cost curve: its points' medians in x order.
#[derive(Clone, Debug, PartialEq)]
pub struct CurveLine {
    /// Architecture.
    pub arch: String,
    /// The curve's group.
    pub group: String,
    /// The line within it.
    pub series: String,
    /// Unit of the values.
    pub unit: String,
    /// What x counts (from the curve's figures' names).
    pub x_unit: String,
    /// (x, median), x ascending.
    pub points: Vec<(f64, f64)>,
}

impl CurveLine {
    /// The points its growth is stated over: from the curve's
    /// `growth_from` on.
    fn growth_points(&self) -> Vec<(f64, f64)> {
        let from = CURVES
            .iter()
            .find(|c| c.group == self.group)
            .map_or(0.0, |c| c.growth_from);
        self.points
            .iter()
            .copied()
            .filter(|p| p.0 >= from)
            .collect()
    }

    /// The least-squares slope of log(value) against log(x) over the
    /// growth points: 0 flat, 1 linear in x, -1 falling as 1/x. `None` with
    /// fewer than two points.
    pub fn slope(&self) -> Option<f64> {
        let pts: Vec<(f64, f64)> = self
            .growth_points()
            .iter()
            .filter(|(x, v)| *x > 0.0 && *v > 0.0)
            .map(|(x, v)| (x.ln(), v.ln()))
            .collect();
        let n = pts.len() as f64;
        if pts.len() < 2 {
            return None;
        }
        let (mx, my) = (
            pts.iter().map(|p| p.0).sum::<f64>() / n,
            pts.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        (sxx > 0.0).then(|| sxy / sxx)
    }

    /// How the line grows, in words: its two ends, their ratio, and the
    /// log-log slope named (flat, sublinear, linear, faster than linear,
    /// falling).
    pub fn growth(&self) -> String {
        let pts = self.growth_points();
        let (Some(first), Some(last), Some(b)) = (pts.first(), pts.last(), self.slope()) else {
            return "too few points".into();
        };
        let word = match b {
            b if b.abs() < 0.2 => "flat",
            b if b <= -0.2 => "falling",
            b if b < 0.8 => "sublinear",
            b if b <= 1.2 => "linear",
            _ => "faster than linear",
        };
        format!(
            "{} {} at {} {} to {} {} at {} {}: x{:.2}, log-log slope {b:.2} ({word} in {})",
            human(first.1),
            self.unit,
            first.0,
            self.x_unit,
            human(last.1),
            self.unit,
            last.0,
            self.x_unit,
            last.1 / first.1,
            self.x_unit
        )
    }
}

impl Report {
    /// Every line of every cost curve, in order of first appearance.
    pub fn curve_lines(&self) -> Vec<CurveLine> {
        let mut out: Vec<CurveLine> = Vec::new();
        for f in &self.figures {
            let (Some(series), Some(x)) = (&f.series, f.x) else {
                continue;
            };
            let Some((_, mid, _)) = f.spread() else {
                continue;
            };
            let i = match out
                .iter()
                .position(|l| l.arch == f.arch && l.group == f.group && &l.series == series)
            {
                Some(i) => i,
                None => {
                    out.push(CurveLine {
                        arch: f.arch.clone(),
                        group: f.group.clone(),
                        series: series.clone(),
                        unit: f.unit.clone(),
                        x_unit: f.name.rsplit(' ').next().unwrap_or_default().into(),
                        points: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            out[i].points.push((x, mid));
        }
        for l in &mut out {
            l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out
    }

    /// The groups in order of first appearance, every architecture at once.
    fn group_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !out.contains(&f.group.as_str()) {
                out.push(&f.group);
            }
        }
        out
    }
}

/// An SVG line chart of one cost curve, every architecture on one axis:
/// a line per (architecture, series) through its medians, both axes
/// logarithmic (x doubles from point to point, and the values span orders
/// of magnitude).
pub fn curve_svg(r: &Report, group: &str) -> Result<String> {
    let lines: Vec<CurveLine> = r
        .curve_lines()
        .into_iter()
        .filter(|l| l.group == group && !l.points.is_empty())
        .collect();
    let mut svg = String::new();
    if lines.is_empty() {
        return Ok(svg);
    }
    let pts = || lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (y0, y1) = (y0.max(1e-9) / 1.5, y1.max(1e-9) * 1.5);
    let (x0, x1) = (x0.max(1e-9) / 1.2, x1.max(x0 * 2.0) * 1.2);
    {
        let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting {group}: {e}");
        let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(group, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(lines[0].x_unit.clone())
            .y_desc(lines[0].unit.clone())
            .x_labels(12)
            .y_labels(10)
            .light_line_style(RGBColor(238, 238, 238))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| human(*v))
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(&e))?;
        let mut per_arch: Vec<(&str, usize)> = Vec::new();
        for l in &lines {
            let i = match per_arch.iter_mut().find(|(a, _)| *a == l.arch) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    per_arch.push((&l.arch, 0));
                    0
                }
            };
            let color = arch_color(&l.arch, i);
            chart
                .draw_series(LineSeries::new(
                    l.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(format!("{} {}", l.arch, l.series))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(l.points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
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
        "<p>{} &middot; commit {} &middot; unix time {}. Bars: median (printed at its end); whiskers: min to max over the runs; colours: s390x blue, x86-64 orange. Curves: the medians, both axes logarithmic.</p>",
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
    for f in missed_targets(r) {
        let _ = writeln!(
            h,
            "<p class=\"worse\">{} {}: {}: {}</p>",
            esc(&f.arch),
            esc(&f.group),
            esc(&f.name),
            esc(&f.target_note().unwrap_or_default())
        );
    }
    if let Some(old) = old_label {
        let _ = writeln!(
            h,
            "<p>Compared with <code>{}</code>: ratio = new median / old median; marked better or worse only when both runs have {MIN_RUNS_TO_JUDGE} or more samples, their min..max ranges are apart and the medians differ by more than 5 %.</p>",
            esc(old)
        );
    }
    // One plot per group, every architecture on one axis: the difference
    // between them is what the report is read for.
    h.push_str("<h2>Plots</h2>\n<div class=\"plots\">\n");
    for g in r.group_names() {
        let is_curve = r.figures.iter().any(|f| f.group == g && f.series.is_some());
        let svg = if is_curve {
            curve_svg(r, g)?
        } else {
            group_svg(r, g)?
        };
        let _ = writeln!(h, "<figure>{svg}</figure>");
    }
    h.push_str("</div>\n");
    let lines = r.curve_lines();
    if !lines.is_empty() {
        h.push_str("<h2>Cost curves: growth</h2>\n<table><tr><th>arch</th><th>curve</th><th>line</th><th>growth (medians)</th></tr>\n");
        for l in &lines {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(&l.arch),
                esc(&l.group),
                esc(&l.series),
                esc(&l.growth())
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Table</h2>\n<table><tr><th>arch</th><th>group</th><th>figure</th><th>unit</th><th>min</th><th>median</th><th>max</th><th>runs</th><th>target</th>");
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
        let _ = write!(
            h,
            "<td>{}</td>",
            esc(&f.target_note().unwrap_or_else(|| "-".into()))
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
                        Change::Same | Change::FewRuns => "",
                    };
                    let _ = write!(
                        h,
                        "<td>{}</td><td class=\"{class}\">x{:.2} {}</td>",
                        human(c.old),
                        c.ratio,
                        esc(c.verdict.word())
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

/// Target for the first KTAP line's lead over the QEMU floor image's byte:
/// what the kernel costs before it speaks, above what QEMU costs anyway.
pub const PAST_FLOOR_TARGET_MS: f64 = 5.0;

/// Target for an unarmed race point, above an empty loop (TCG): a point
/// is one relaxed load and a not-taken branch.
pub const RACE_POINT_TARGET_NS: f64 = 20.0;

/// Target for how long a natural run goes on past its time budget
/// (`budget_ms=`): the runner checks the budget between iterations.
pub const BUDGET_OVERRUN_TARGET_MS: f64 = 500.0;

/// The natural run whose budget overrun `bench` measures: (row, variant,
/// budget in ms), run with an iteration count it cannot reach.
pub const BUDGET_RUN: (&str, &str, u64) = ("wp-unlock-vs-zap", "fixed", 1000);

/// Every figure with a target: (group, name, target). Timing is judged
/// here, never inside a self-test or a boot test.
pub const TARGETS: &[(&str, &str, f64)] = &[
    (BOOT_FIRST, FIRST_KTAP_LINE, FIRST_LINE_TARGET_MS),
    (BOOT_PAST_FLOOR, FIRST_KTAP_LINE, PAST_FLOOR_TARGET_MS),
    ("race point cost", "unarmed", RACE_POINT_TARGET_NS),
    (
        "natural run",
        "time past its budget",
        BUDGET_OVERRUN_TARGET_MS,
    ),
];

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
        "tlb.flush_vs_irqs_off",
        "ipte_flush_wait_ns",
        "flush against a 150 ms interrupts-off section",
        "ipte",
        "ns",
        false,
    ),
    (
        "tlb.flush_vs_irqs_off",
        "csp_flush_wait_ns",
        "flush against a 150 ms interrupts-off section",
        "csp",
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
    /// Boots per point of the cost curves (0: none).
    pub curve_runs: usize,
}

/// A cost curve: a group of figures, each a point (series, x).
#[derive(Clone, Copy, Debug)]
pub struct Curve {
    /// The group its points belong to.
    pub group: &'static str,
    /// The unit of its values.
    pub unit: &'static str,
    /// Whether a larger value is better.
    pub higher_is_better: bool,
    /// What its x axis counts.
    pub x_unit: &'static str,
    /// The least x its growth is stated from ([`CurveLine::growth`]).
    pub growth_from: f64,
}

/// TLB shootdown latency against the CPUs of the machine (all of them
/// attached to the mm; one CPU: the local flush alone).
pub const SHOOTDOWN_CURVE: Curve = Curve {
    group: "curve: TLB shootdown latency against CPUs",
    unit: "ns",
    higher_is_better: false,
    x_unit: "CPUs",
    // One CPU is the local flush alone: the growth of a shootdown is
    // stated over the machines that have a remote CPU to reach.
    growth_from: 2.0,
};
/// The CPU counts of [`SHOOTDOWN_CURVE`].
pub const SHOOTDOWN_CPUS: [usize; 5] = [1, 2, 4, 8, 16];
/// Zap throughput against the pages zapped at once.
pub const ZAP_CURVE: Curve = Curve {
    group: "curve: zap throughput against pages",
    unit: "pages/s",
    higher_is_better: true,
    x_unit: "pages",
    growth_from: 1.0,
};
/// GUP throughput on one CPU against the pages per call.
pub const GUP_CURVE: Curve = Curve {
    group: "curve: GUP throughput (1 CPU) against pages per call",
    unit: "pages/s",
    higher_is_better: true,
    x_unit: "pages",
    growth_from: 1.0,
};
/// The page counts of [`ZAP_CURVE`] and [`GUP_CURVE`] (the kernel's
/// `CURVE_PAGES`).
pub const CURVE_PAGES: [u32; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];
/// Every cost curve.
pub const CURVES: [Curve; 3] = [SHOOTDOWN_CURVE, ZAP_CURVE, GUP_CURVE];

/// Runs every benchmark boot and collects the figures. `say` prints a
/// line of output; the progress display shows the rest. Every race boot
/// is judged against the expected table ([`judge_race_boot`]); one that
/// fails is listed in [`Report::failures`] and gives no sample.
pub fn run(opts: &Options, progress: &mut crate::progress::Progress) -> Result<Report> {
    use crate::expected::{lookup, Expect, Mode, CELLS};
    use crate::{kbuild, Boot, BootConfig};
    use std::time::Duration;
    let (budget_row, budget_variant, budget_ms) = BUDGET_RUN;
    let mut report = Report {
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        commit: git_commit(),
        conditions: format!(
            "{} QEMU floor boots and as many listing kernel boots, {} self-test boots and {} natural runs of {budget_row} {budget_variant} with a {budget_ms} ms budget per architecture, {} boots per cost-curve point, {} natural-mode boots per buggy cell (seeds 1..={}, each to its first hit), {} CPUs (the shootdown curve: 1 to 16), QEMU TCG",
            opts.runs, opts.runs, opts.runs, opts.curve_runs, opts.race_runs, opts.race_runs, opts.smp
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
    // Explore: per row and architecture, its first clean cell, explored
    // within bound 2 (once, with race runs: it is deterministic).
    let explore_cells: Vec<_> = crate::expected::EXPLORE_CELLS
        .iter()
        .filter(|c| {
            opts.race_runs > 0 && opts.arches.contains(&c.arch) && c.expect == Expect::Clean
        })
        .fold(Vec::<&crate::expected::Cell>::new(), |mut v, c| {
            if !v.iter().any(|d| d.row == c.row && d.arch == c.arch) {
                v.push(c);
            }
            v
        });
    let total = (4 * opts.runs + opts.curve_runs * (SHOOTDOWN_CPUS.len() + 1)) * opts.arches.len()
        + opts.race_runs * cells.len()
        + explore_cells.len();
    let mut done = 0;
    for &a in &opts.arches {
        let kernel = kbuild::kernel(a, true)?;
        let arch = a.name();
        // A boot with `cmdline`; `timeout` replaces the default one.
        // A boot of `image` on `smp` CPUs with `cmdline`.
        let boot_image = |image: &Path, smp: usize, cmdline: &str| {
            let mut config = BootConfig::new(a, image.to_path_buf());
            config.smp = smp;
            config.cmdline = cmdline.into();
            config
        };
        // A kernel boot with `cmdline`; `timeout` replaces the default one.
        let boot = |cmdline: String, timeout: Option<Duration>| {
            let mut config = boot_image(&kernel, opts.smp, &cmdline);
            config.timeout = timeout.unwrap_or(config.timeout);
            Boot::run(&config, |_| {})
        };
        let floor = kbuild::floor(a)?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // The QEMU floor image against the kernel's first KTAP line, in
        // pairs of boots back to back, in turn first (a boot that follows
        // a long one starts a few ms slower on a small host). The kernel
        // boot only lists its tests (`list`): what comes before the KTAP
        // header does not depend on the command line.
        for run in 0..opts.runs {
            let mut floor_byte = None;
            let mut first = None;
            for kernel_first in [run % 2 == 1, run % 2 == 0] {
                if kernel_first {
                    progress.show("bench", done, total, &format!("{arch} first KTAP line"));
                    let b = boot("list".into(), None)?;
                    done += 1;
                    if !b.verdict().passed {
                        progress.println(&b.failure_report());
                        anyhow::bail!("a {a} benchmark boot failed");
                    }
                    first = b.first_ktap_line;
                    if let Some(d) = b.machine_set_up {
                        report
                            .figure(
                                arch,
                                BOOT_FIRST,
                                "machine set up (# quiesce line)",
                                "ms",
                                false,
                            )
                            .samples
                            .push(ms(d));
                    }
                } else {
                    progress.show("bench", done, total, &format!("{arch} QEMU floor"));
                    let f = Boot::run(&boot_image(&floor, opts.smp, ""), |_| {})?;
                    done += 1;
                    if let Some(why) = floor_problem(a, &f) {
                        anyhow::bail!("the {a} QEMU floor image failed: {why}");
                    }
                    floor_byte = f.first_output;
                    report
                        .figure(arch, BOOT_EXIT, FLOOR, "ms", false)
                        .samples
                        .push(ms(f.elapsed));
                }
            }
            let (Some(floor_byte), Some(first)) = (floor_byte, first) else {
                anyhow::bail!("a {a} boot printed nothing");
            };
            report
                .figure(arch, BOOT_FIRST, FLOOR, "ms", false)
                .samples
                .push(ms(floor_byte));
            report
                .figure(arch, BOOT_FIRST, FIRST_KTAP_LINE, "ms", false)
                .samples
                .push(ms(first));
            report
                .figure(arch, BOOT_PAST_FLOOR, FIRST_KTAP_LINE, "ms", false)
                .samples
                .push(ms(first) - ms(floor_byte));
        }
        for _ in 0..opts.runs {
            progress.show("bench", done, total, &format!("{arch} self-tests"));
            let boot = boot(String::new(), None)?;
            done += 1;
            if !boot.verdict().passed {
                progress.println(&boot.failure_report());
                anyhow::bail!("a {a} benchmark boot failed");
            }
            report
                .figure(arch, BOOT_EXIT, "self-test boot", "ms", false)
                .samples
                .push(ms(boot.elapsed));
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
        for _ in 0..opts.curve_runs {
            // A machine of each size, running only the shootdown test.
            for cpus in SHOOTDOWN_CPUS {
                progress.show(
                    "bench",
                    done,
                    total,
                    &format!("{arch} shootdown curve, {cpus} CPUs"),
                );
                let config = boot_image(&kernel, cpus, "test=tlb.shootdown_latency");
                let b = Boot::run(&config, |_| {})?;
                done += 1;
                let r = curve_boot_result(&b, "tlb.shootdown_latency")?;
                for s in ["ipi", "nmi", "ipte", "csp"] {
                    if let Some(v) = r.diag_value(&format!("shootdown_ns_{s}_targets_all")) {
                        report
                            .curve_point(arch, &SHOOTDOWN_CURVE, s, cpus as f64)
                            .samples
                            .push(v.parse()?);
                    }
                }
            }
            progress.show("bench", done, total, &format!("{arch} zap and GUP curves"));
            let b = boot(
                "test=gather.zap_throughput,gup.throughput bench.curves".into(),
                None,
            )?;
            done += 1;
            let zap = curve_boot_result(&b, "gather.zap_throughput")?;
            let gup = curve_boot_result(&b, "gup.throughput")?;
            for pages in CURVE_PAGES {
                for (r, curve, key, series) in [
                    (&zap, &ZAP_CURVE, "zap_curve_batched", "batched"),
                    (&zap, &ZAP_CURVE, "zap_curve_immediate", "immediate"),
                    (&gup, &GUP_CURVE, "gup_curve_fast", "GUP-fast"),
                    (&gup, &GUP_CURVE, "gup_curve_slow", "slow GUP"),
                ] {
                    let v = r
                        .diag_value(&format!("{key}_{pages}"))
                        .with_context(|| format!("{arch}: no {key}_{pages} figure"))?;
                    report
                        .curve_point(arch, curve, series, f64::from(pages))
                        .samples
                        .push(v.parse()?);
                }
            }
        }
        // The time budget of a natural run: how long it goes on past it.
        let budget_cell = lookup(budget_row, a, budget_variant, None, Mode::Natural)
            .filter(|c| c.expect != Expect::Skip);
        for (c, seed) in budget_cell
            .into_iter()
            .flat_map(|c| (1..=opts.runs).map(move |seed| (c, seed)))
        {
            let name = format!("{} {}", c.row, c.label());
            progress.show(
                "bench",
                done,
                total,
                &format!("{arch} {name} budget {budget_ms} ms"),
            );
            let b = boot(
                format!(
                    "{} seed={seed} iterations=100000000 budget_ms={budget_ms}",
                    c.kernel_args()
                ),
                Some(Duration::from_secs(120)),
            )?;
            done += 1;
            match judge_race_boot(c, &b.verdict(), &b.ktap) {
                Ok(r) => {
                    let f = report.figure(arch, "natural run", "time past its budget", "ms", false);
                    match r
                        .diag_value("elapsed_ms")
                        .and_then(|v| v.parse::<f64>().ok())
                    {
                        Some(ms) => f.samples.push(ms - budget_ms as f64),
                        None => f.missing += 1,
                    }
                }
                Err(why) => {
                    progress.println(&b.failure_report());
                    report
                        .failures
                        .push(format!("{arch} {name} budget seed {seed}: {why}"));
                }
            }
        }
        for c in cells.iter().filter(|c| c.arch == a) {
            let name = format!("{} {}", c.row, c.label());
            for seed in 1..=opts.race_runs {
                progress.show("bench", done, total, &format!("{arch} {name} seed {seed}"));
                let b = boot(
                    format!("{} seed={seed} stop_at_hit", c.kernel_args()),
                    Some(Duration::from_secs(400)),
                )?;
                done += 1;
                let r = match judge_race_boot(c, &b.verdict(), &b.ktap) {
                    Ok(r) => r,
                    Err(why) => {
                        progress.println(&b.failure_report());
                        report
                            .failures
                            .push(format!("{arch} {name} seed {seed}: {why}"));
                        continue;
                    }
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
                // A cell that reports its hit rate only may end clean.
                let f = report.figure(arch, "race: natural time to first hit", &name, "ms", false);
                match figure("first_hit_ns") {
                    Some(ns) => f.samples.push(ns / 1e6),
                    None => f.missing += 1,
                }
            }
        }
        for c in explore_cells.iter().filter(|c| c.arch == a) {
            let name = format!("{} {}", c.row, c.label());
            progress.show("bench", done, total, &format!("{arch} {name} explore"));
            let b = boot(
                format!("{} bound={EXPLORE_BOUND}", c.kernel_args()),
                Some(Duration::from_secs(900)),
            )?;
            done += 1;
            let x = match judge_race_boot(c, &b.verdict(), &b.ktap) {
                Ok(r) => crate::expected::Explored::parse(&r.diagnostics),
                Err(why) => {
                    progress.println(&b.failure_report());
                    report
                        .failures
                        .push(format!("{arch} {name} explore: {why}"));
                    continue;
                }
            };
            let Some(x) = x else {
                report
                    .failures
                    .push(format!("{arch} {name} explore: no summary"));
                continue;
            };
            if x.elapsed_ms > 0 {
                report
                    .figure(
                        arch,
                        "explore: schedules per second",
                        &name,
                        "schedules/s",
                        true,
                    )
                    .samples
                    .push(x.schedules as f64 * 1e3 / x.elapsed_ms as f64);
            }
            // Every schedule within bound 2 ran, or the cell gave bound 2
            // up (its limit of schedules): no time to exhaust.
            let f = report.figure(
                arch,
                "explore: time to run every schedule within bound 2",
                &name,
                "ms",
                false,
            );
            match x.bound {
                // `None`: every ordering ran, within any bound.
                Some(EXPLORE_BOUND) | None if x.exhausted && x.gave_up.is_none() => {
                    f.samples.push(x.elapsed_ms as f64)
                }
                _ => f.missing += 1,
            }
        }
    }
    progress.finish();
    Ok(report)
}

/// The passing result `case` of a cost-curve boot `b`, or why there is none.
fn curve_boot_result(b: &crate::Boot, case: &str) -> Result<crate::ktap::TestResult> {
    let v = b.verdict();
    if !v.passed {
        anyhow::bail!(
            "a {} cost-curve boot failed: {}\n{}",
            b.config.arch,
            v.reasons.join("; "),
            b.failure_report()
        );
    }
    b.ktap
        .case(case)
        .with_context(|| format!("{case} did not run"))
}

/// Why a boot of the QEMU floor image did not do what the image does (one
/// console byte `Q`, then QEMU's clean exit), if it did not.
pub fn floor_problem(arch: crate::Arch, boot: &crate::Boot) -> Option<String> {
    // s390x: the disabled wait at 0xfff; x86-64: isa-debug-exit with 0.
    let want = match arch {
        crate::Arch::S390x => 0,
        crate::Arch::X86_64 => 1,
    };
    if boot.timed_out {
        Some("it timed out".into())
    } else if boot.console != ["Q"] {
        Some(format!("its console was {:?}, not \"Q\"", boot.console))
    } else if boot.exit_code != Some(want) {
        Some(format!("QEMU exited {:?}, not {want}", boot.exit_code))
    } else {
        None
    }
}

/// Plot of the time to the first output: the QEMU floor image's byte, the
/// kernel's KTAP header and the line it prints once the machine is set up.
pub const BOOT_FIRST: &str = "boot: first output";
/// Plot of the kernel's first KTAP line less the floor's byte, per pair of
/// boots.
pub const BOOT_PAST_FLOOR: &str = "boot: first KTAP line past the QEMU floor";
/// Plot of the time from starting QEMU to its exit.
pub const BOOT_EXIT: &str = "boot: to exit";
/// The QEMU floor image (`boot/<arch>/floor.S`).
pub const FLOOR: &str = "QEMU floor (one byte, then exit)";
/// The kernel's `KTAP version 1` line.
pub const FIRST_KTAP_LINE: &str = "first KTAP line";

/// The bound the explore figures are measured within.
pub const EXPLORE_BOUND: u32 = 2;

/// The figures whose median misses its target (a target figure without
/// a sample misses it too).
pub fn missed_targets(r: &Report) -> Vec<&Figure> {
    r.figures
        .iter()
        .filter(|f| f.target().is_some() && f.meets_target() != Some(true))
        .collect()
}

/// Judges one race boot of `cell` against the expected table: the boot
/// must pass ([`Verdict`](crate::Verdict)) and the cell must show what the
/// table says ([`crate::expected::compare`], the judgement of `run`).
/// Returns the cell's KTAP result, or why the boot fails.
pub fn judge_race_boot(
    cell: &crate::expected::Cell,
    verdict: &crate::Verdict,
    doc: &crate::ktap::Document,
) -> std::result::Result<crate::ktap::TestResult, String> {
    use crate::expected::{self, Selection};
    if !verdict.passed {
        return Err(verdict.reasons.join("; "));
    }
    let observed = expected::observed(doc);
    let platform = crate::platform::Platform::of(doc);
    let lines = expected::compare(cell.arch, &platform, &Selection::cell(cell), &observed);
    if let Some(l) = lines.iter().find(|l| !l.ok) {
        let expect = l.expect.map_or("(not in the table)", |e| e.name());
        let why = l.why.as_ref().map_or(String::new(), |w| format!(" ({w})"));
        return Err(match &l.observed {
            Some(o) => format!(
                "{}: expected {expect}, observed {} in {} iterations, {} hits, overlap {}{why}",
                l.case(),
                o.outcome,
                o.iterations,
                o.hits,
                o.overlap
            ),
            None => format!("{}: expected {expect}, not run", l.case()),
        });
    }
    doc.case(&cell.case())
        .ok_or_else(|| format!("{} did not run", cell.case()))
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
    fn comparison_marks_a_change_only_when_the_ranges_are_apart() {
        let old = sample();
        let mut new = sample();
        // Latency: the new range (7600..8000) above the old (3500..7100).
        new.figures[0].samples = vec![7600.0, 7700.0, 8000.0];
        // Median x1.43, but the ranges overlap: noise.
        new.figures[1].samples = vec![3300.0, 5000.0, 9000.0];
        // Throughput: the new range above the old.
        new.figures[2].samples = vec![27e6, 27.5e6, 28e6];
        let c = compare(&old, &new);
        assert_eq!(c.len(), 4);
        assert_eq!(c[0].verdict, Change::Worse);
        assert!((c[0].ratio - 7700.0 / 3800.0).abs() < 1e-9);
        assert_eq!(c[1].verdict, Change::Same, "{:?}", c[1]);
        assert!(c[1].ratio > 1.4);
        assert_eq!(c[2].verdict, Change::Better);
        // One sample: no spread, no mark.
        assert_eq!(c[3].verdict, Change::FewRuns);
        let worse = regressions(&c);
        assert_eq!(worse.len(), 1);
        assert_eq!(worse[0].name, "ipte, 1 target");
        let t = text_table(&new, &c);
        assert!(
            t.contains("x2.03 WORSE") && t.contains("x2.00 better"),
            "{t}"
        );
        assert!(
            t.contains("x1.43 same") && t.contains("x1.00 few runs"),
            "{t}"
        );
        assert!(t.contains("1 of 2 runs without a value"), "{t}");
        // The same run against itself marks nothing.
        assert!(regressions(&compare(&new, &new)).is_empty());
    }

    #[test]
    fn a_change_needs_apart_ranges_more_than_5_percent_and_3_runs() {
        let fig = |samples: &[f64], hib: bool| Figure {
            samples: samples.to_vec(),
            ..Figure::new("x86_64", "g", "n", "ns", hib)
        };
        let old = fig(&[100.0, 101.0, 102.0], false);
        // Apart but within 5 % of the median.
        assert_eq!(
            change(&old, &fig(&[103.0, 104.0, 105.0], false)),
            Change::Same
        );
        assert_eq!(
            change(&old, &fig(&[110.0, 111.0, 112.0], false)),
            Change::Worse
        );
        assert_eq!(
            change(&old, &fig(&[80.0, 81.0, 82.0], false)),
            Change::Better
        );
        // Touching ranges are the same figure.
        assert_eq!(
            change(&old, &fig(&[102.0, 150.0, 200.0], false)),
            Change::Same
        );
        // Larger is better: the same moves, the other way round.
        let old = fig(&[100.0, 101.0, 102.0], true);
        assert_eq!(
            change(&old, &fig(&[110.0, 111.0, 112.0], true)),
            Change::Better
        );
        assert_eq!(change(&old, &fig(&[80.0, 81.0, 82.0], true)), Change::Worse);
        // Two runs are too few, on either side.
        assert_eq!(change(&old, &fig(&[300.0, 310.0], true)), Change::FewRuns);
        assert_eq!(change(&fig(&[1.0, 2.0], true), &old), Change::FewRuns);
    }

    #[test]
    fn cost_curves_are_lines_with_their_growth_stated() {
        let mut r = sample();
        // x86-64: linear in CPUs from 2 on (the 1-CPU point is left out of
        // the growth); s390x: flat.
        for (cpus, ipi, ipte) in [
            (1.0, 1.0, 5.0),
            (2.0, 100.0, 50.0),
            (4.0, 200.0, 50.0),
            (16.0, 800.0, 51.0),
        ] {
            r.curve_point("x86_64", &SHOOTDOWN_CURVE, "ipi", cpus)
                .samples = vec![ipi];
            r.curve_point("s390x", &SHOOTDOWN_CURVE, "ipte", cpus)
                .samples = vec![ipte];
        }
        assert!(r.figures.iter().any(|f| f.name == "ipi, 16 CPUs"));
        let lines = r.curve_lines();
        assert_eq!(lines.len(), 2);
        let ipi = lines.iter().find(|l| l.series == "ipi").unwrap();
        assert_eq!(ipi.points.len(), 4);
        assert!((ipi.slope().unwrap() - 1.0).abs() < 1e-9);
        assert!(
            ipi.growth().contains("(linear in CPUs)"),
            "{}",
            ipi.growth()
        );
        assert!(
            ipi.growth().starts_with("100 ns at 2 CPUs"),
            "{}",
            ipi.growth()
        );
        let ipte = lines.iter().find(|l| l.series == "ipte").unwrap();
        assert!(
            ipte.growth().contains("(flat in CPUs)"),
            "{}",
            ipte.growth()
        );
        assert!(text_table(&r, &[])
            .contains("x86_64 curve: TLB shootdown latency against CPUs: ipi: 100 ns"));
        let page = html(&r, &[], None).unwrap();
        assert!(page.contains("Cost curves: growth"));
        // A curve is plotted as lines, both architectures in one plot.
        let svg = curve_svg(&r, SHOOTDOWN_CURVE.group).unwrap();
        assert_eq!(
            svg.matches("<circle").count(),
            8,
            "a marker per point: {svg}"
        );
        assert!(
            svg.contains("x86_64 ipi") && svg.contains("s390x ipte"),
            "{svg}"
        );
        assert!(page.contains(&svg));
    }

    #[test]
    fn timing_targets_are_figures_met_or_missed() {
        let mut r = sample();
        r.figure("s390x", BOOT_FIRST, FIRST_KTAP_LINE, "ms", false)
            .samples = vec![20.0, 25.0, 103.0];
        r.figure("x86_64", BOOT_FIRST, FIRST_KTAP_LINE, "ms", false)
            .samples = vec![90.0, 120.0, 130.0];
        r.figure("s390x", BOOT_PAST_FLOOR, FIRST_KTAP_LINE, "ms", false)
            .samples = vec![1.0, 2.0, 9.0];
        r.figure("s390x", "race point cost", "unarmed", "ns", false)
            .samples = vec![1.5, 30.0, 31.0];
        r.figure("s390x", "natural run", "time past its budget", "ms", false);
        let missed: Vec<(&str, &str)> = missed_targets(&r)
            .iter()
            .map(|f| (f.arch.as_str(), f.name.as_str()))
            .collect();
        assert_eq!(
            missed,
            [
                ("x86_64", "first KTAP line"),
                ("s390x", "unarmed"),
                ("s390x", "time past its budget")
            ]
        );
        let t = text_table(&r, &[]);
        assert!(t.contains("(target <= 100 ms: met)"), "{t}");
        assert!(t.contains("(target <= 100 ms: MISSED)"), "{t}");
        assert!(t.contains("(target <= 20.00 ns: MISSED)"), "{t}");
        assert!(t.contains("(target <= 500 ms: no sample)"), "{t}");
        // A figure without a target is never missed.
        assert_eq!(r.figures[0].target(), None);
        let page = html(&r, &[], None).unwrap();
        assert!(page
            .contains("x86_64 boot: first output: first KTAP line: target &lt;= 100 ms: MISSED"));
        assert!(t.contains("(target <= 5.00 ms: met)"), "{t}");
    }

    /// A scenario boot's KTAP: one natural case of `c` with `outcome`,
    /// every iteration overlapping.
    fn race_boot(c: &crate::expected::Cell, outcome: &str) -> crate::ktap::Document {
        crate::ktap::parse(&format!(
            "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    \
# row={} variant={} mode=natural outcome={outcome} iterations=40 hits={} overlap=40 first_hit_ns=12 delays=1\n    \
ok 1 {}:{}:natural\nok 1 scenario\n",
            c.row,
            c.variant,
            u8::from(outcome == "bug"),
            c.row,
            c.label()
        ))
    }

    #[test]
    fn race_boots_are_judged_against_the_expected_table() {
        use crate::expected::{Expect, Mode, CELLS};
        let passed = crate::Verdict {
            passed: true,
            reasons: Vec::new(),
        };
        let c = CELLS
            .iter()
            .find(|c| c.mode == Mode::Natural && c.expect == Expect::Bug)
            .expect("a buggy natural cell");
        let r = judge_race_boot(c, &passed, &race_boot(c, "bug")).unwrap();
        assert_eq!(r.diag_value("first_hit_ns"), Some("12"));
        // A buggy cell that stops reproducing fails its boot.
        let why = judge_race_boot(c, &passed, &race_boot(c, "clean")).unwrap_err();
        assert!(
            why.contains(&format!(
                "{}: expected bug, observed clean in 40 iterations, 0 hits, overlap 40",
                c.case()
            )),
            "{why}"
        );
        // A boot that ran another cell, or failed, fails.
        let other = CELLS
            .iter()
            .find(|o| o.mode == Mode::Natural && o.row != c.row && o.arch == c.arch)
            .unwrap();
        let why = judge_race_boot(c, &passed, &race_boot(other, "bug")).unwrap_err();
        assert!(why.contains("expected bug, not run"), "{why}");
        let failed = crate::Verdict {
            passed: false,
            reasons: vec!["timed out after 400 s: the kernel hung".into()],
        };
        let why = judge_race_boot(c, &failed, &race_boot(c, "bug")).unwrap_err();
        assert_eq!(why, "timed out after 400 s: the kernel hung");
        // A cell that reports its hit rate only passes either way.
        let rep = CELLS
            .iter()
            .find(|c| c.mode == Mode::Natural && c.expect == Expect::Report)
            .expect("a hit-rate-only natural cell");
        for outcome in ["bug", "clean"] {
            assert!(judge_race_boot(rep, &passed, &race_boot(rep, outcome)).is_ok());
        }
        assert!(judge_race_boot(rep, &passed, &race_boot(rep, "vacuous")).is_err());
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
        // Each SVG names its group and draws a bar per figure, named with
        // its architecture (every architecture shares the group's axis).
        let svg = group_svg(&r, "shootdown latency").unwrap();
        assert!(svg.contains("shootdown latency") && svg.contains("s390x: ipte, 1 target"));
        assert!(svg.matches("<rect").count() >= 3, "{svg}");
    }
}
