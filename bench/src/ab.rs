//! The A/B mode (`--baseline OTHER-BINARY`): the same scenarios run with
//! two `postback` binaries, alternated run by run (A B, B A, A B, …) so
//! that the shared machine's drift hits both alike, and each figure
//! reported as the median of each binary's runs, its spread, and the ratio
//! of the medians.
//!
//! It owns the comparison only: the scenarios measure, [`Report`] keeps
//! their figures.

use std::fmt::Write as _;

use crate::report::{Better, Figure, Report};

/// Every run's figures, by binary.
#[derive(Default)]
pub struct Comparison {
    /// Figures of each baseline run.
    pub baseline: Vec<Vec<Figure>>,
    /// Figures of each candidate run.
    pub candidate: Vec<Vec<Figure>>,
    /// Figures that do not depend on the binary (the ceiling), per round.
    pub shared: Vec<Vec<Figure>>,
    pub failures: Vec<String>,
}

/// Median and spread of one figure over a binary's runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Stats {
    pub fn of(mut values: Vec<f64>) -> Option<Stats> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: values[0],
            max: values[n - 1],
            runs: n,
        })
    }

    /// (max − min) / median, in per cent.
    pub fn spread_pct(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median.abs() * 100.0
        }
    }
}

fn values(runs: &[Vec<Figure>], name: &str) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| r.iter().find(|f| f.name == name).map(|f| f.value))
        .collect()
}

/// Figure names in the order they were first measured.
fn names(runs: &[&[Vec<Figure>]]) -> Vec<(&'static str, &'static str, Better)> {
    let mut out: Vec<(&'static str, &'static str, Better)> = Vec::new();
    for set in runs {
        for run in set.iter() {
            for f in run {
                if !out.iter().any(|(n, _, _)| *n == f.name) {
                    out.push((f.name, f.unit, f.better));
                }
            }
        }
    }
    out
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        crate::report::thousands(v)
    } else {
        format!("{v:.2}")
    }
}

fn cell(s: Option<Stats>) -> String {
    match s {
        Some(s) => format!(
            "{} (±{:.0} %, {} runs)",
            fmt_value(s.median),
            s.spread_pct() / 2.0,
            s.runs
        ),
        None => "—".to_owned(),
    }
}

impl Comparison {
    /// Adds one run of a binary.
    pub fn add(&mut self, candidate: bool, report: Report) {
        self.failures.extend(report.failures.iter().cloned());
        if candidate {
            self.candidate.push(report.figures);
        } else {
            self.baseline.push(report.figures);
        }
    }

    /// The Markdown table: figure, baseline, candidate, candidate/baseline.
    pub fn markdown(&self, baseline: &str, candidate: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "A/B: baseline `{baseline}`, candidate `{candidate}`, runs alternated."
        );
        let _ = writeln!(
            out,
            "Each cell: median (± half the max − min range as a % of the median, runs). \
             The ratio is candidate / baseline of the medians; for figures where lower is better it \
             is shown as baseline / candidate, so above 1 always means the candidate is better.\n"
        );
        let _ = writeln!(
            out,
            "| figure | unit | baseline | candidate | candidate vs baseline |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for (name, unit, better) in names(&[&self.baseline, &self.candidate]) {
            let a = Stats::of(values(&self.baseline, name));
            let b = Stats::of(values(&self.candidate, name));
            let ratio = match (a, b) {
                (Some(a), Some(b)) if a.median != 0.0 && b.median != 0.0 => match better {
                    Better::Higher => format!("{:.2}×", b.median / a.median),
                    Better::Lower => format!("{:.2}×", a.median / b.median),
                },
                _ => "—".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {name} | {unit} | {} | {} | {ratio} |",
                cell(a),
                cell(b)
            );
        }
        for (name, unit, _) in names(&[&self.shared]) {
            let s = Stats::of(values(&self.shared, name));
            let _ = writeln!(out, "| {name} | {unit} | {} (same run) | | |", cell(s));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples_and_spread() {
        let s = Stats::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert!((s.spread_pct() - 100.0).abs() < 1e-9);
        assert_eq!(Stats::of(vec![4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Stats::of(vec![f64::NAN]), None);
    }

    #[test]
    fn ratio_says_better_above_one_either_way() {
        let fig = |name, value, better| Figure {
            name,
            value,
            unit: "x",
            better,
        };
        let mut c = Comparison::default();
        c.baseline.push(vec![
            fig("rate", 100.0, Better::Higher),
            fig("cpu", 20.0, Better::Lower),
        ]);
        c.candidate.push(vec![
            fig("rate", 150.0, Better::Higher),
            fig("cpu", 10.0, Better::Lower),
        ]);
        let md = c.markdown("a", "b");
        assert!(
            md.contains("| rate | x | 100 (±0 %, 1 runs) | 150 (±0 %, 1 runs) | 1.50× |"),
            "{md}"
        );
        assert!(
            md.contains("| cpu | x | 20.00 (±0 %, 1 runs) | 10.00 (±0 %, 1 runs) | 2.00× |"),
            "{md}"
        );
    }
}
