//! The results: one row per scenario (figures, ceiling ratio, CPU and
//! memory), the goals met or not, failures, printed as a Markdown table and
//! written as JSON.

use std::fmt::Write as _;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::{driver::Outcome, procfs::Usage};

pub struct Row {
    pub scenario: String,
    pub rps: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// How the figure compares with its ceiling, e.g. "4.1% of health".
    pub versus: String,
    pub usage: Usage,
    pub notes: String,
    /// Everything else, for the JSON.
    pub details: Value,
    /// Latencies to chart, microseconds.
    pub latencies: Option<Histogram<u64>>,
}

impl Row {
    /// A row of calls: rps and latency of the successes.
    pub fn calls(scenario: &str, outcome: &Outcome, usage: Usage) -> Self {
        let notes = match outcome.rejected.len() {
            0 => String::new(),
            n => format!("{n} refused (RESOURCE_EXHAUSTED)"),
        };
        Self {
            scenario: scenario.to_owned(),
            rps: Some(outcome.ok_rps()),
            p50_ms: Some(outcome.ok_ms(0.5)),
            p99_ms: Some(outcome.ok_ms(0.99)),
            versus: String::new(),
            usage,
            notes,
            details: json!({
                "ok": outcome.ok.len(),
                "rejected": outcome.rejected.len(),
                "errors": outcome.errors,
                "seconds": outcome.elapsed.as_secs_f64(),
                "max_ms": outcome.ok.max() as f64 / 1000.0,
            }),
            latencies: (!outcome.ok.is_empty()).then(|| outcome.ok.clone()),
        }
    }

    pub fn detail(&mut self, key: &str, value: impl Into<Value>) {
        if let Value::Object(map) = &mut self.details {
            map.insert(key.to_owned(), value.into());
        }
    }

    pub fn note(&mut self, text: impl AsRef<str>) {
        if !self.notes.is_empty() {
            self.notes.push_str("; ");
        }
        self.notes.push_str(text.as_ref());
    }
}

pub struct Goal {
    pub goal: String,
    pub figure: String,
    pub met: bool,
}

#[derive(Default)]
pub struct Report {
    pub header: Value,
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    pub failures: Vec<String>,
    /// Latencies charted beside the rows' (e.g. overload rejections).
    pub extra_series: Vec<(String, Histogram<u64>)>,
}

fn figure(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "—".into(),
    }
}

impl Report {
    pub fn row(&self, scenario: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.scenario == scenario)
    }

    pub fn goal(&mut self, goal: impl Into<String>, figure: impl Into<String>, met: bool) {
        self.goals.push(Goal {
            goal: goal.into(),
            figure: figure.into(),
            met,
        });
    }

    pub fn fail(&mut self, scenario: &str, problem: impl AsRef<str>) {
        self.failures
            .push(format!("{scenario}: {}", problem.as_ref()));
    }

    /// The table and the goals, in Markdown.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | rps | p50 ms | p99 ms | vs ceiling (same run) | CPU cores client / server / other | server RSS / HWM MiB | notes |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|---|--:|--:|---|");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.2} / {:.2} / {:.2} | {:.0} / {:.0} | {} |",
                row.scenario,
                figure(row.rps),
                figure(row.p50_ms),
                figure(row.p99_ms),
                row.versus,
                row.usage.client_cores,
                row.usage.server_cores,
                row.usage.other_cores,
                row.usage.rss_mib,
                row.usage.hwm_mib,
                row.notes,
            );
        }
        let _ = writeln!(out, "\n| goal | figure | met |\n|---|---|---|");
        for goal in &self.goals {
            let met = if goal.met { "met" } else { "**not met**" };
            let _ = writeln!(out, "| {} | {} | {met} |", goal.goal, goal.figure);
        }
        out
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                json!({
                    "scenario": row.scenario,
                    "rps": row.rps,
                    "p50_ms": row.p50_ms,
                    "p99_ms": row.p99_ms,
                    "versus": row.versus,
                    "usage": row.usage,
                    "notes": row.notes,
                    "details": row.details,
                })
            })
            .collect();
        let goals: Vec<Value> = self
            .goals
            .iter()
            .map(|g| json!({"goal": g.goal, "figure": g.figure, "met": g.met}))
            .collect();
        json!({
            "run": self.header,
            "rows": rows,
            "goals": goals,
            "failures": self.failures,
        })
    }

    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&self.json())?)?;
        Ok(())
    }
}

/// `part` as a percentage of `whole`, e.g. "4.1% of health".
pub fn percent_of(part: f64, whole: f64, of: &str) -> String {
    format!("{:.1}% of {of}", 100.0 * part / whole.max(1e-9))
}
