//! `sluice load compare BASELINE.json NEW.json --threshold 10%`: metric by metric, run by
//! run, and whether anything regressed beyond the threshold (latency up, throughput down,
//! error rate up by more than its own absolute allowance).
//!
//! A latency regression must also be more than noise: the 95 % intervals of the two runs'
//! statistic (distribution-free for a percentile, from the reports' bucket counts) must not
//! overlap, and a percentile is judged only when both runs have enough samples to bound it
//! (p99 needs 563). Two identical runs back to back therefore do not "regress" because the
//! maximum of 100 samples moved. Reports of different shapes (closed against open loop,
//! other prompt or answer lengths) are refused unless forced: their numbers do not measure
//! the same thing.

use std::path::Path;

use serde::Deserialize;

use crate::error::ReportError;
use crate::report::{num, Table, SCHEMA_VERSION};
use crate::slo::LatencyMetric;
use crate::stats::{samples_to_bound, Interval, LatencyHistogram, LatencyStats, RunSummary};

/// The part of a JSON report `compare` reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportView {
    pub schema: u32,
    pub runs: Vec<RunView>,
    /// The configuration, for the shape check.
    #[serde(default)]
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RunView {
    pub label: String,
    pub summary: RunSummary,
    /// The run's load (`{"kind": "rate", "rate": 40, ...}`), for the shape check.
    #[serde(default)]
    pub load: serde_json::Value,
}

/// How the two reports differ in what they measured (load kind and size, workload,
/// streaming), one sentence each; empty when they can be compared.
pub fn shape_differences(base: &ReportView, new: &ReportView) -> Vec<String> {
    let mut out = Vec::new();
    for field in ["mode", "workload", "stream", "warmup"] {
        let (b, n) = (&base.config[field], &new.config[field]);
        if b != n {
            out.push(format!("`config.{field}` differs: {b} against {n}"));
        }
    }
    for (b, n) in base.runs.iter().zip(&new.runs) {
        if b.load != n.load {
            out.push(format!(
                "run `{}` had load {} against {}",
                b.label, b.load, n.load
            ));
        }
    }
    out
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
    /// Why a change beyond the threshold is not a regression (noise, too few samples).
    pub note: Option<String>,
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

/// A latency statistic `compare` judges.
#[derive(Debug, Clone, Copy)]
enum Statistic {
    Quantile(f64),
    Mean,
}

impl Statistic {
    const ALL: [(&'static str, Statistic); 4] = [
        ("p50", Statistic::Quantile(0.50)),
        ("p90", Statistic::Quantile(0.90)),
        ("p99", Statistic::Quantile(0.99)),
        ("mean", Statistic::Mean),
    ];

    fn of(self, s: &LatencyStats) -> f64 {
        match self {
            Statistic::Quantile(q) if q <= 0.5 => s.p50_ms,
            Statistic::Quantile(q) if q <= 0.9 => s.p90_ms,
            Statistic::Quantile(_) => s.p99_ms,
            Statistic::Mean => s.mean_ms,
        }
    }

    fn interval(self, h: &LatencyHistogram) -> Interval {
        match self {
            Statistic::Quantile(q) => h.quantile_interval(q),
            Statistic::Mean => h.mean_interval(),
        }
    }

    /// Samples each run needs before this statistic is judged at all.
    fn needs(self) -> u64 {
        match self {
            Statistic::Quantile(q) => samples_to_bound(q),
            Statistic::Mean => MEAN_MIN_SAMPLES,
        }
    }
}

/// A mean of fewer samples is not judged.
const MEAN_MIN_SAMPLES: u64 = 20;

fn latency_stats(s: &RunSummary, m: LatencyMetric) -> Option<&LatencyStats> {
    let l = &s.latency;
    match m {
        LatencyMetric::Ttft => l.ttft.as_ref(),
        LatencyMetric::Ttst => l.ttst.as_ref(),
        LatencyMetric::Tpot => l.tpot.as_ref(),
        LatencyMetric::Itl => l.itl.as_ref(),
        LatencyMetric::E2e => l.e2e.as_ref(),
    }
}

/// A latency statistic of both runs: beyond the threshold and beyond the noise (the 95 %
/// intervals apart), with enough samples in both, is a regression.
fn latency_delta(
    run: &str,
    metric: LatencyMetric,
    (name, stat): (&str, Statistic),
    base: &RunSummary,
    new: &RunSummary,
    threshold: f64,
) -> Delta {
    let (b, n) = (latency_stats(base, metric), latency_stats(new, metric));
    let mut delta = relative(
        run,
        format!("{}.{name}", metric.name()),
        b.map(|x| stat.of(x)),
        n.map(|x| stat.of(x)),
        Better::Lower,
        threshold,
    );
    if !delta.regression {
        return delta;
    }
    let (bh, nh) = (
        LatencyHistogram::from_bucket_counts(base.distributions.get(metric)),
        LatencyHistogram::from_bucket_counts(new.distributions.get(metric)),
    );
    if bh.count() == 0 || nh.count() == 0 {
        delta.note = Some(
            "threshold only: a report has no distributions (written by an older version)".into(),
        );
        return delta;
    }
    let needs = stat.needs();
    let fewest = bh.count().min(nh.count());
    if fewest < needs {
        delta.regression = false;
        delta.note = Some(format!(
            "not judged: {fewest} samples, {name} needs {needs} in each run to be bounded"
        ));
        return delta;
    }
    let (bi, ni) = (stat.interval(&bh), stat.interval(&nh));
    let apart = match (bi.high_us, ni.low_us) {
        (Some(base_high), Some(new_low)) => new_low > base_high,
        _ => false,
    };
    if !apart {
        delta.regression = false;
        delta.note = Some(format!(
            "within noise: the 95 % intervals overlap (baseline up to {}, new from {} ms)",
            interval_end(bi.high_us),
            interval_end(ni.low_us)
        ));
    }
    delta
}

fn interval_end(us: Option<f64>) -> String {
    us.map_or("unbounded".to_owned(), |v| format!("{:.2}", v / 1000.0))
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
        for metric in LatencyMetric::ALL {
            for stat in Statistic::ALL {
                deltas.push(latency_delta(
                    &run, metric, stat, &b.summary, &n.summary, t.relative,
                ));
            }
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
            note: None,
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
        note: None,
    }
}

pub fn render_comparison(c: &Comparison) -> String {
    let mut t = Table::new(["run", "metric", "baseline", "new", "change", "", "why not"]);
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
            d.note.clone().unwrap_or_default(),
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
                load: serde_json::json!({"kind": "concurrency", "concurrency": 1}),
            }],
            config: serde_json::json!({"stream": true}),
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

    /// `n` requests whose TTFT is (50 ms + exponential noise of mean `noise_ms`) × `scale`.
    fn noisy(seed: u64, n: u64, scale: f64, noise_ms: f64) -> ReportView {
        let mut out = output(n, 0, 50);
        let mut rng = crate::prng::Rng::new(seed);
        for r in out.records.iter_mut() {
            let ttft = ((50_000.0 + rng.exponential(noise_ms * 1000.0)) * scale) as u64;
            r.first_token_us = Some(r.sent_us + ttft);
            r.second_token_us = Some(r.sent_us + ttft + 10_000);
            r.end_us = r.sent_us + ttft + 90_000;
        }
        let mut v = view(50, 1, 0);
        v.runs[0].summary = analyze(&out, &[]).summary;
        v
    }

    fn noisy_view(seed: u64, n: u64, scale: f64) -> ReportView {
        noisy(seed, n, scale, 10.0)
    }

    #[test]
    fn two_runs_of_one_distribution_do_not_regress_whatever_their_tails_do() {
        let mut judged_noise = 0;
        for seed in 0..20 {
            let (a, b) = (noisy_view(seed, 100, 1.0), noisy_view(seed + 100, 100, 1.0));
            let c = compare(&a, &b, T10);
            assert_eq!(c.regressions(), 0, "seed {seed}: {}", render_comparison(&c));
            let p99 = c.deltas.iter().find(|d| d.metric == "ttft.p99").unwrap();
            if p99.change.unwrap() > 0.10 {
                assert!(p99.note.as_ref().unwrap().contains("needs 563"), "{p99:?}");
                judged_noise += 1;
            }
        }
        // The tails of 100 samples do move by more than 10 %: the check above was exercised.
        assert!(judged_noise > 0);
    }

    #[test]
    fn a_real_shift_is_a_regression_at_every_statistic() {
        let base = noisy_view(1, 2000, 1.0);
        let c = compare(&base, &noisy_view(2, 2000, 1.3), T10);
        for metric in ["ttft.p50", "ttft.p90", "ttft.p99", "ttft.mean"] {
            let d = c.deltas.iter().find(|d| d.metric == metric).unwrap();
            assert!(d.regression, "{d:?}");
        }
    }

    #[test]
    fn a_mean_that_moved_within_its_noise_is_not_a_regression() {
        let mut exercised = 0;
        for seed in 0..20 {
            let (a, b) = (noisy(seed, 30, 1.0, 40.0), noisy(seed + 50, 30, 1.0, 40.0));
            let c = compare(&a, &b, T10);
            let mean = c.deltas.iter().find(|d| d.metric == "ttft.mean").unwrap();
            assert!(!mean.regression, "seed {seed}: {mean:?}");
            if mean.change.unwrap() > 0.10 {
                assert!(mean.note.as_ref().unwrap().starts_with("within noise"));
                exercised += 1;
            }
        }
        assert!(exercised > 0);
    }

    #[test]
    fn reports_of_different_shapes_are_told_apart() {
        let a = view(50, 1, 0);
        assert!(shape_differences(&a, &a).is_empty());
        let mut b = view(50, 1, 0);
        b.runs[0].load = serde_json::json!({"kind": "rate", "rate": 5.0});
        b.config = serde_json::json!({"stream": false});
        let d = shape_differences(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("config.stream"));
        assert!(d[1].contains("had load"));
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
