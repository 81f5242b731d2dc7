//! SLO gates: each SLO judged against a run, and the run's verdict.
//!
//! A gate needs evidence: with fewer than `--min-samples` samples behind its metric it is
//! INCONCLUSIVE, never a pass. A run is INCONCLUSIVE when its error rate is above
//! `--max-error-rate` (latency of the few that succeeded says little) or when no request
//! succeeded at all — such a run can never pass. A gate that fails on enough samples makes
//! the run FAIL whatever else holds.

use serde::{Deserialize, Serialize};

use crate::slo::{Slo, SloMetric, Statistic};
use crate::stats::{samples_to_bound, RunAnalysis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

impl Outcome {
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Inconclusive => "INCONCLUSIVE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub slo: String,
    pub outcome: Outcome,
    /// The observed value in the SLO's unit (ms for latencies, a fraction for the error
    /// rate, per second for rates); absent without samples.
    pub observed: Option<f64>,
    pub unit: String,
    pub samples: u64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunVerdict {
    pub outcome: Outcome,
    pub gates: Vec<GateResult>,
    /// Why the run is not a pass, beyond failed gates.
    pub reasons: Vec<String>,
}

/// What the gates are judged with.
#[derive(Debug, Clone, Copy)]
pub struct GatePolicy {
    pub min_samples: u64,
    pub max_error_rate: f64,
}

pub fn evaluate(slos: &[Slo], run: &RunAnalysis, policy: GatePolicy) -> RunVerdict {
    let s = &run.summary;
    let gates: Vec<GateResult> = slos.iter().map(|slo| judge(slo, run, policy)).collect();
    let mut reasons = Vec::new();
    if s.requests.succeeded == 0 {
        reasons.push(format!(
            "no request succeeded ({} sent): a run without a successful request can never pass",
            s.requests.total
        ));
    } else if s.errors.error_rate > policy.max_error_rate {
        reasons.push(format!(
            "error rate {:.2} % is above the ceiling --max-error-rate {:.2} %",
            s.errors.error_rate * 100.0,
            policy.max_error_rate * 100.0
        ));
    }
    let outcome = if gates.iter().any(|g| g.outcome == Outcome::Fail) {
        Outcome::Fail
    } else if !reasons.is_empty() || gates.iter().any(|g| g.outcome == Outcome::Inconclusive) {
        Outcome::Inconclusive
    } else {
        Outcome::Pass
    };
    RunVerdict {
        outcome,
        gates,
        reasons,
    }
}

fn judge(slo: &Slo, run: &RunAnalysis, policy: GatePolicy) -> GateResult {
    let s = &run.summary;
    let (observed, samples, unit) = match slo.metric {
        SloMetric::Latency { metric, statistic } => {
            let h = run.metrics.get(metric);
            let v = match statistic {
                Statistic::Percentile(p) => h.quantile_us(p / 100.0),
                Statistic::Mean => h.mean_us(),
                Statistic::Min => h.min_us(),
                Statistic::Max => h.max_us(),
            };
            (v.map(|us| us / 1000.0), h.count(), "ms")
        }
        SloMetric::ErrorRate => (
            (s.requests.total > 0).then_some(s.errors.error_rate),
            s.requests.total,
            "",
        ),
        SloMetric::Goodput => (
            Some(
                s.throughput
                    .goodput_requests_per_s
                    .unwrap_or(s.throughput.requests_per_s),
            ),
            s.requests.succeeded,
            "req/s",
        ),
        SloMetric::RequestsPerS => (
            Some(s.throughput.requests_per_s),
            s.requests.succeeded,
            "req/s",
        ),
        SloMetric::OutputTokensPerS => (
            Some(s.throughput.output_tokens_per_s),
            s.requests.succeeded,
            "tok/s",
        ),
    };
    // Thresholds of latencies are kept in µs; observed values are reported in ms.
    let threshold = if slo.is_latency() {
        slo.threshold / 1000.0
    } else {
        slo.threshold
    };
    // A percentile needs enough samples above it to be bounded at all: p99 of 100 samples
    // is about the largest of them, whatever the target's real p99 is.
    let percentile_needs = match slo.metric {
        SloMetric::Latency {
            statistic: Statistic::Percentile(p),
            ..
        } => samples_to_bound(p / 100.0),
        _ => 0,
    };
    let (outcome, detail) = match observed {
        _ if samples < policy.min_samples => (
            Outcome::Inconclusive,
            format!("fewer samples than --min-samples {}", policy.min_samples),
        ),
        // Too few to pass on; a failing estimate stays a failure (with few samples a high
        // percentile is under- rather than over-estimated).
        Some(v) if samples < percentile_needs && slo.comparison.holds(v, threshold) => (
            Outcome::Inconclusive,
            format!(
                "observed {}, but {samples} samples cannot bound this percentile: it needs {percentile_needs} (below that its 95 % interval reaches past the largest sample)",
                show(v, unit)
            ),
        ),
        None => (Outcome::Inconclusive, "no samples".to_owned()),
        Some(v) if slo.comparison.holds(v, threshold) => {
            (Outcome::Pass, format!("observed {}", show(v, unit)))
        }
        Some(v) => (
            Outcome::Fail,
            format!(
                "observed {}, limit {}",
                show(v, unit),
                slo.display_threshold()
            ),
        ),
    };
    GateResult {
        slo: slo.text.clone(),
        outcome,
        observed,
        unit: unit.to_owned(),
        samples,
        detail,
    }
}

fn show(v: f64, unit: &str) -> String {
    match unit {
        "" => format!("{v:.4}"),
        u => format!("{v:.3} {u}"),
    }
}

/// The verdict over several runs. A single run is its own verdict. In a sweep the gates
/// ask "is there a load at which the SLOs hold": PASS when any row passes, otherwise
/// INCONCLUSIVE when any row is, otherwise FAIL.
pub fn combine(runs: &[RunVerdict], sweep: bool) -> Outcome {
    let any = |o: Outcome| runs.iter().any(|r| r.outcome == o);
    if runs.is_empty() {
        return Outcome::Inconclusive;
    }
    if sweep {
        if any(Outcome::Pass) {
            Outcome::Pass
        } else if any(Outcome::Inconclusive) {
            Outcome::Inconclusive
        } else {
            Outcome::Fail
        }
    } else if any(Outcome::Fail) {
        Outcome::Fail
    } else if any(Outcome::Inconclusive) {
        Outcome::Inconclusive
    } else {
        Outcome::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunOutput;
    use crate::stats::analyze;
    use crate::test_support::output;

    const POLICY: GatePolicy = GatePolicy {
        min_samples: 20,
        max_error_rate: 0.05,
    };

    fn slos(list: &[&str]) -> Vec<Slo> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn verdict(out: &RunOutput, list: &[&str]) -> RunVerdict {
        let slos = slos(list);
        evaluate(&slos, &analyze(out, &slos), POLICY)
    }

    #[test]
    fn passing_and_failing_gates() {
        let out = output(600, 0, 50);
        let v = verdict(
            &out,
            &["ttft.p99<60ms", "tpot.p95<=10ms", "error_rate<0.01"],
        );
        assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
        assert_eq!(v.gates[0].observed, Some(50.0));
        let v = verdict(&out, &["ttft.p99<40ms", "error_rate<0.01"]);
        assert_eq!(v.outcome, Outcome::Fail);
        assert_eq!(v.gates[0].outcome, Outcome::Fail);
        assert!(
            v.gates[0]
                .detail
                .contains("observed 50.000 ms, limit 40 ms"),
            "{}",
            v.gates[0].detail
        );
        assert_eq!(v.gates[1].outcome, Outcome::Pass);
    }

    #[test]
    fn a_percentile_too_few_samples_can_bound_never_passes() {
        let out = output(100, 0, 50);
        let v = verdict(&out, &["ttft.p99<60ms", "ttft.p50<60ms"]);
        assert_eq!(v.gates[0].outcome, Outcome::Inconclusive);
        assert!(
            v.gates[0]
                .detail
                .contains("100 samples cannot bound this percentile: it needs 563"),
            "{}",
            v.gates[0].detail
        );
        assert_eq!(v.gates[1].outcome, Outcome::Pass);
        // Exceeding the limit already with few samples is a failure.
        let v = verdict(&out, &["ttft.p99<40ms"]);
        assert_eq!(v.gates[0].outcome, Outcome::Fail);
    }

    #[test]
    fn too_few_samples_is_inconclusive_never_pass() {
        let out = output(10, 0, 50);
        let v = verdict(&out, &["ttft.p99<60ms"]);
        assert_eq!(v.outcome, Outcome::Inconclusive);
        assert!(v.gates[0]
            .detail
            .contains("fewer samples than --min-samples 20"));
        // Even a failing value is only inconclusive without enough samples.
        let v = verdict(&out, &["ttft.p99<1ms"]);
        assert_eq!(v.outcome, Outcome::Inconclusive);
    }

    #[test]
    fn error_rate_above_the_ceiling_is_inconclusive() {
        let out = output(100, 10, 50);
        let v = verdict(&out, &["ttft.p99<60ms"]);
        assert_eq!(v.outcome, Outcome::Inconclusive);
        assert!(
            v.reasons[0].contains("above the ceiling"),
            "{:?}",
            v.reasons
        );
        // With no SLO at all the ceiling still applies.
        assert_eq!(verdict(&out, &[]).outcome, Outcome::Inconclusive);
        assert_eq!(verdict(&output(100, 0, 50), &[]).outcome, Outcome::Pass);
    }

    #[test]
    fn a_run_without_success_never_passes() {
        let out = output(100, 100, 50);
        let v = verdict(&out, &[]);
        assert_eq!(v.outcome, Outcome::Inconclusive);
        assert!(v.reasons[0].contains("can never pass"));
        // A gate that could vacuously hold (no latency samples) does not rescue it.
        let v = verdict(&out, &["e2e.p99<1s", "goodput>=0"]);
        assert_ne!(v.outcome, Outcome::Pass);
        // A gate that fails on evidence makes it a failure.
        let v = verdict(&out, &["error_rate<0.5"]);
        assert_eq!(v.outcome, Outcome::Fail);
    }

    #[test]
    fn goodput_counts_requests_meeting_every_latency_slo() {
        // Half the requests have TTFT 50 ms, half 150 ms.
        let mut out = output(100, 0, 50);
        for r in out.records.iter_mut().skip(50) {
            r.first_token_us = r.first_token_us.map(|t| t + 100_000);
        }
        let slos = slos(&["ttft.p50<=100ms", "goodput>=1"]);
        let a = analyze(&out, &slos);
        let all = a.summary.throughput.requests_per_s;
        let good = a.summary.throughput.goodput_requests_per_s.unwrap();
        assert!((good - all / 2.0).abs() < 1e-9, "{good} vs {all}");
        let v = evaluate(&slos, &a, POLICY);
        assert_eq!(v.gates[1].outcome, Outcome::Pass);
    }

    #[test]
    fn sweeps_pass_when_some_load_meets_the_slos() {
        let pass = RunVerdict {
            outcome: Outcome::Pass,
            gates: vec![],
            reasons: vec![],
        };
        let fail = RunVerdict {
            outcome: Outcome::Fail,
            ..pass.clone()
        };
        let inc = RunVerdict {
            outcome: Outcome::Inconclusive,
            ..pass.clone()
        };
        assert_eq!(combine(&[pass.clone(), fail.clone()], true), Outcome::Pass);
        assert_eq!(combine(&[pass.clone(), fail.clone()], false), Outcome::Fail);
        assert_eq!(
            combine(&[inc.clone(), fail.clone()], true),
            Outcome::Inconclusive
        );
        assert_eq!(combine(&[fail.clone(), fail], true), Outcome::Fail);
        assert_eq!(combine(&[pass, inc], false), Outcome::Inconclusive);
        assert_eq!(combine(&[], false), Outcome::Inconclusive);
    }
}
