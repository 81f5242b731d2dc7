//! `sluice load compare BASELINE.json NEW.json --threshold 10%`: metric by metric, run by
//! run, and whether anything regressed beyond the threshold (latency up, throughput down,
//! error rate up by more than its own absolute allowance).

use std::path::Path;

use serde::Deserialize;

use crate::error::ReportError;
use crate::report::{num, Table, SCHEMA_VERSION};
use crate::stats::{LatencyStats, RunSummary};

/// The part of a JSON report `compare` reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportView {
    pub schema: u32,
    pub runs: Vec<RunView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RunView {
    pub label: String,
    pub summary: RunSummary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub run: String,
    pub metric: String,
    pub baseline: Option<f64>,
    pub new: Option<f64>,
    pub better: Better,
    /// Relative change (0.1 = +10 %); for the error rate, the absolute change.
    pub change: Option<f64>,
    pub regression: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub deltas: Vec<Delta>,
    pub notes: Vec<String>,
    pub threshold: f64,
}

impl Comparison {
    pub fn regressions(&self) -> usize {
        self.deltas.iter().filter(|d| d.regression).count()
    }
}

/// What counts as a regression.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Relative change of latency and throughput metrics (0.1 = 10 %).
    pub relative: f64,
    /// Absolute increase of the error rate (0.01 = one percentage point).
    pub error_rate: f64,
}

pub fn read_report(path: &Path) -> Result<ReportView, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let schema = serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| ReportError::Format {
            path: path.to_owned(),
            message: format!("not JSON: {e}"),
        })?
        .get("schema")
        .and_then(serde_json::Value::as_u64);
    match schema {
        Some(v) if v == u64::from(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(ReportError::Format {
                path: path.to_owned(),
                message: format!("it has schema {v}; this version reads schema {SCHEMA_VERSION}"),
            })
        }
        None => {
            return Err(ReportError::Format {
                path: path.to_owned(),
                message: "no `schema` field (write reports with `sluice load --json FILE`)".into(),
            })
        }
    }
    serde_json::from_str(&text).map_err(|e| ReportError::Format {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

type Pick = fn(&RunSummary) -> Option<f64>;

fn latency_metrics() -> Vec<(String, Pick)> {
    macro_rules! lat {
        ($m:ident, $name:literal) => {
            [
                (
                    concat!($name, ".p50").to_string(),
                    (|s: &RunSummary| s.latency.$m.as_ref().map(|x: &LatencyStats| x.p50_ms))
                        as Pick,
                ),
                (
                    concat!($name, ".p90").to_string(),
                    (|s: &RunSummary| s.latency.$m.as_ref().map(|x: &LatencyStats| x.p90_ms))
                        as Pick,
                ),
                (
                    concat!($name, ".p99").to_string(),
                    (|s: &RunSummary| s.latency.$m.as_ref().map(|x: &LatencyStats| x.p99_ms))
                        as Pick,
                ),
                (
                    concat!($name, ".mean").to_string(),
                    (|s: &RunSummary| s.latency.$m.as_ref().map(|x: &LatencyStats| x.mean_ms))
                        as Pick,
                ),
            ]
        };
    }
    let mut v = Vec::new();
    v.extend(lat!(ttft, "ttft"));
    v.extend(lat!(ttst, "ttst"));
    v.extend(lat!(tpot, "tpot"));
    v.extend(lat!(itl, "itl"));
    v.extend(lat!(e2e, "e2e"));
    v
}

fn throughput_metrics() -> Vec<(String, Pick)> {
    vec![
        ("requests_per_s".into(), |s| {
            Some(s.throughput.requests_per_s)
        }),
        ("output_tokens_per_s".into(), |s| {
            Some(s.throughput.output_tokens_per_s)
        }),
        ("total_tokens_per_s".into(), |s| {
            Some(s.throughput.total_tokens_per_s)
        }),
        ("goodput".into(), |s| s.throughput.goodput_requests_per_s),
    ]
}

pub fn compare(base: &ReportView, new: &ReportView, t: Thresholds) -> Comparison {
    let mut deltas = Vec::new();
    let mut notes = Vec::new();
    if base.runs.len() != new.runs.len() {
        notes.push(format!(
            "the baseline has {} runs and the new report {}: only the first {} are compared",
            base.runs.len(),
            new.runs.len(),
            base.runs.len().min(new.runs.len())
        ));
    }
    for (b, n) in base.runs.iter().zip(&new.runs) {
        let run = if b.label == n.label {
            b.label.clone()
        } else {
            notes.push(format!(
                "run `{}` of the baseline is compared with run `{}` of the new report",
                b.label, n.label
            ));
            format!("{} / {}", b.label, n.label)
        };
        for (metric, pick) in latency_metrics() {
            deltas.push(relative(
                &run,
                metric,
                pick(&b.summary),
                pick(&n.summary),
                Better::Lower,
                t.relative,
            ));
        }
        for (metric, pick) in throughput_metrics() {
            deltas.push(relative(
                &run,
                metric,
                pick(&b.summary),
                pick(&n.summary),
                Better::Higher,
                t.relative,
            ));
        }
        let (be, ne) = (b.summary.errors.error_rate, n.summary.errors.error_rate);
        deltas.push(Delta {
            run: run.clone(),
            metric: "error_rate".into(),
            baseline: Some(be),
            new: Some(ne),
            better: Better::Lower,
            change: Some(ne - be),
            regression: ne - be > t.error_rate,
        });
    }
    Comparison {
        deltas,
        notes,
        threshold: t.relative,
    }
}

fn relative(
    run: &str,
    metric: String,
    baseline: Option<f64>,
    new: Option<f64>,
    better: Better,
    threshold: f64,
) -> Delta {
    let change = match (baseline, new) {
        (Some(b), Some(n)) if b > 0.0 => Some((n - b) / b),
        _ => None,
    };
    let regression = change.is_some_and(|c| match better {
        Better::Lower => c > threshold,
        Better::Higher => c < -threshold,
    });
    Delta {
        run: run.to_owned(),
        metric,
        baseline,
        new,
        better,
        change,
        regression,
    }
}

pub fn render_comparison(c: &Comparison) -> String {
    let mut t = Table::new(["run", "metric", "baseline", "new", "change", ""]);
    for d in &c.deltas {
        if d.baseline.is_none() && d.new.is_none() {
            continue;
        }
        let change = match (d.metric.as_str(), d.change) {
            ("error_rate", Some(x)) => format!("{:+.2} pp", x * 100.0),
            (_, Some(x)) => format!("{:+.1} %", x * 100.0),
            (_, None) => "-".to_owned(),
        };
        let decimals = if d.metric == "error_rate" { 4 } else { 2 };
        t.row([
            d.run.clone(),
            d.metric.clone(),
            num(d.baseline, decimals),
            num(d.new, decimals),
            change,
            if d.regression {
                "REGRESSION".to_owned()
            } else {
                String::new()
            },
        ]);
    }
    let mut out = t.render("");
    for n in &c.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    let n = c.regressions();
    if n == 0 {
        out.push_str(&format!(
            "no regression beyond {:.1} % (latency up, throughput down)\n",
            c.threshold * 100.0
        ));
    } else {
        out.push_str(&format!(
            "{n} regression(s) beyond {:.1} %\n",
            c.threshold * 100.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::analyze;
    use crate::test_support::output;

    fn view(ttft_ms: u64, spacing_scale: u64, failed: u64) -> ReportView {
        let mut out = output(100, failed, ttft_ms);
        // Stretch the timeline to lower throughput.
        for r in out.records.iter_mut() {
            let shift = r.scheduled_us * (spacing_scale - 1);
            r.scheduled_us += shift;
            r.dispatched_us += shift;
            r.sent_us += shift;
            r.first_token_us = r.first_token_us.map(|t| t + shift);
            r.second_token_us = r.second_token_us.map(|t| t + shift);
            r.end_us += shift;
        }
        ReportView {
            schema: SCHEMA_VERSION,
            runs: vec![RunView {
                label: "concurrency 1".into(),
                summary: analyze(&out, &[]).summary,
            }],
        }
    }

    const T10: Thresholds = Thresholds {
        relative: 0.10,
        error_rate: 0.01,
    };

    #[test]
    fn identical_reports_do_not_regress() {
        let c = compare(&view(50, 1, 0), &view(50, 1, 0), T10);
        assert_eq!(c.regressions(), 0);
        assert!(render_comparison(&c).contains("no regression beyond 10.0 %"));
    }

    #[test]
    fn latency_up_beyond_the_threshold_is_a_regression() {
        let c = compare(&view(50, 1, 0), &view(60, 1, 0), T10);
        let ttft = c.deltas.iter().find(|d| d.metric == "ttft.p50").unwrap();
        assert!((ttft.change.unwrap() - 0.2).abs() < 1e-3);
        assert!(ttft.regression);
        assert!(render_comparison(&c).contains("REGRESSION"));
        let lax = Thresholds {
            relative: 0.25,
            ..T10
        };
        assert_eq!(
            compare(&view(50, 1, 0), &view(60, 1, 0), lax).regressions(),
            0
        );
        // Faster is never a regression.
        assert_eq!(
            compare(&view(60, 1, 0), &view(50, 1, 0), T10).regressions(),
            0
        );
    }

    #[test]
    fn throughput_down_and_errors_up_are_regressions() {
        let c = compare(&view(50, 1, 0), &view(50, 2, 0), T10);
        let rps = c
            .deltas
            .iter()
            .find(|d| d.metric == "requests_per_s")
            .unwrap();
        assert!(rps.regression, "{rps:?}");
        let c = compare(&view(50, 1, 0), &view(50, 1, 3), T10);
        let err = c.deltas.iter().find(|d| d.metric == "error_rate").unwrap();
        assert!(err.regression);
    }

    #[test]
    fn reports_are_read_back_and_schema_checked() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"schema": 99, "runs": []}"#).unwrap();
        let e = read_report(&bad).unwrap_err().to_string();
        assert!(e.contains("schema 99; this version reads schema 1"), "{e}");
        std::fs::write(&bad, r#"{"runs": []}"#).unwrap();
        assert!(read_report(&bad)
            .unwrap_err()
            .to_string()
            .contains("no `schema` field"));
        let e = read_report(&dir.path().join("missing.json")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read"));
    }
}
