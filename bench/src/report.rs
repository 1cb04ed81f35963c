//! The final Markdown report: the machine, the command, the settings, one
//! table of figures against their targets, and the details behind them.

use std::fmt::Write as _;

use crate::harness::Machine;

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One measured number, kept as a number so that runs can be compared
/// (the A/B mode takes medians and ratios of these).
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub better: Better,
}

pub struct Row {
    figure: String,
    value: String,
    target: String,
    met: Option<bool>,
}

/// Everything the scenarios found.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    details: Vec<String>,
    pub failures: Vec<String>,
    /// Drain rate on an empty table, for the backlog comparison.
    pub empty_drain_rate: Option<f64>,
    /// Peak RSS (VmHWM, KiB) of every `serve` run, by scenario.
    pub serve_peaks: Vec<(String, u64)>,
    /// The numbers behind the rows, for A/B comparison and the ceiling.
    pub figures: Vec<Figure>,
}

/// What the header of the report says.
pub struct Header {
    pub command: String,
    pub quick: bool,
    pub machine: Machine,
    pub durability: String,
    pub settings: String,
    pub interrupted: bool,
}

impl Report {
    pub fn row(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            value: value.into(),
            target: target.into(),
            met,
        });
    }

    /// Records a measured number (see [`Figure`]).
    pub fn figure(&mut self, name: &'static str, value: f64, unit: &'static str, better: Better) {
        self.figures.push(Figure {
            name,
            value,
            unit,
            better,
        });
    }

    /// The value of figure `name`, if it was measured.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }

    /// Rows that put the figures against the bare HTTP ceiling measured in
    /// the same run (when both were measured).
    pub fn against_ceiling(&mut self) {
        use crate::figures as f;
        let (Some(ceiling), Some(ceiling_p50)) =
            (self.value(f::CEILING_RATE), self.value(f::CEILING_P50))
        else {
            return;
        };
        if let Some(drain) = self.value(f::DRAIN_RATE) {
            self.row(
                "drain as a fraction of the bare HTTP ceiling",
                format!("{:.2}", drain / ceiling),
                "",
                None,
            );
        }
        if let Some(ingest) = self.value(f::INGEST_RATE) {
            self.row(
                "ingest as a fraction of the bare HTTP ceiling",
                format!("{:.2}", ingest / ceiling),
                "",
                None,
            );
        }
        if let Some(p50) = self.value(f::LIGHT_P50) {
            let over = p50 - ceiling_p50;
            self.row(
                "light-load p50 over the bare HTTP round trip",
                format!("{over:.2} ms"),
                "≤ 1 ms",
                Some(over <= 1.0),
            );
        }
    }

    pub fn detail(&mut self, text: impl Into<String>) {
        self.details.push(text.into());
    }

    /// A scenario that could not finish: a row that says so.
    pub fn failed(&mut self, scenario: &str, err: &anyhow::Error) {
        let text = format!("{err:#}");
        let short: String = text
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(160)
            .collect();
        self.row(
            format!("{scenario}: did not complete"),
            format!("error: {}", short.replace('|', "/")),
            "",
            Some(false),
        );
        self.failures.push(format!("{scenario}: {text}"));
    }

    /// Adds the peak-RSS row from every serve run so far.
    pub fn finish_memory(&mut self) {
        let Some((scenario, kib)) = self.serve_peaks.iter().max_by_key(|(_, k)| *k).cloned() else {
            return;
        };
        let mib = kib as f64 / 1024.0;
        let runs: Vec<String> = self
            .serve_peaks
            .iter()
            .map(|(s, k)| format!("{s} {:.1} MiB", *k as f64 / 1024.0))
            .collect();
        self.row(
            "memory: `serve` peak RSS (VmHWM) across the runs",
            format!("{mib:.1} MiB ({scenario})"),
            "< 150 MiB",
            Some(mib < 150.0),
        );
        self.details
            .push(format!("serve peak RSS by run: {}", runs.join(", ")));
    }

    pub fn markdown(&self, h: &Header) -> String {
        let mut out = header_markdown(h);
        let _ = writeln!(out, "| figure | value | target | met |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let target = if r.target.is_empty() {
                "—"
            } else {
                &r.target
            };
            let _ = writeln!(out, "| {} | {} | {} | {} |", r.figure, r.value, target, met);
        }
        if !self.details.is_empty() {
            let _ = writeln!(out, "\nDetails:\n");
            for d in &self.details {
                let _ = writeln!(out, "- {d}");
            }
        }
        out
    }
}

/// The heading of a report: date, command, machine, PostgreSQL, commit,
/// settings.
pub fn header_markdown(h: &Header) -> String {
    let m = &h.machine;
    let mut out = String::new();
    let _ = writeln!(out, "## postback-bench, {}\n", m.date);
    if h.quick {
        let _ = writeln!(
            out,
            "**--quick run: reduced sizes and durations, a smoke test, not a measurement.**\n"
        );
    }
    if h.interrupted {
        let _ = writeln!(out, "**Interrupted: the figures below are incomplete.**\n");
    }
    let _ = writeln!(out, "- command: `{}`", h.command);
    let _ = writeln!(
        out,
        "- machine: {} cores ({}), {} memory",
        m.cores, m.cpu, m.mem_total
    );
    let _ = writeln!(out, "- PostgreSQL: {} ({})", m.postgres, h.durability);
    let _ = writeln!(out, "- commit: {}", m.commit);
    let _ = writeln!(out, "- Postback settings: {}", h.settings);
    let _ = writeln!(
            out,
            "- PostgreSQL, Postback, the load generator and the receiver all on this machine, over loopback\n"
        );
    out
}

/// `12,345` (rounded to an integer).
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_groups_digits_by_three_and_rounds() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.6), "1,234,568");
        assert_eq!(thousands(-12_345.0), "-12,345");
    }
}
