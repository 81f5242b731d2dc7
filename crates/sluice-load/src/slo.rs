//! SLO expressions: `ttft.p99<200ms`, `tpot.p95 <= 50ms`, `error_rate<0.01`, `goodput>=10`,
//! `throughput.output_tokens_per_s>1000`.
//!
//! Grammar: `METRIC OP VALUE` where
//! - METRIC is a latency (`ttft`, `ttst`, `tpot`, `itl`, `e2e`) with a statistic (`.p50`,
//!   `.p99.9`, any `.pNN` in (0, 100], `.mean`, `.min`, `.max`), or `error_rate`, `goodput`,
//!   `requests_per_s`, `output_tokens_per_s` (each rate also as `throughput.NAME`);
//! - OP is `<`, `<=`, `>`, `>=`;
//! - VALUE is a latency with a unit (`us`, `ms`, `s`), a fraction or percentage for
//!   `error_rate`, a number (optionally `/s`) for the rates.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::record::RequestRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyMetric {
    Ttft,
    Ttst,
    Tpot,
    Itl,
    E2e,
}

impl LatencyMetric {
    pub const ALL: [LatencyMetric; 5] = [
        LatencyMetric::Ttft,
        LatencyMetric::Ttst,
        LatencyMetric::Tpot,
        LatencyMetric::Itl,
        LatencyMetric::E2e,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LatencyMetric::Ttft => "ttft",
            LatencyMetric::Ttst => "ttst",
            LatencyMetric::Tpot => "tpot",
            LatencyMetric::Itl => "itl",
            LatencyMetric::E2e => "e2e",
        }
    }

    fn from_name(s: &str) -> Option<LatencyMetric> {
        LatencyMetric::ALL.into_iter().find(|m| m.name() == s)
    }

    /// This metric for one request, in microseconds. For ITL, a pooled distribution, the
    /// per-request value is the request's largest gap: a request meets `itl < X` when none
    /// of its gaps exceeded X.
    pub fn of_request_us(self, r: &RequestRecord) -> Option<f64> {
        match self {
            LatencyMetric::Ttft => r.ttft_us().map(|v| v as f64),
            LatencyMetric::Ttst => r.ttst_us().map(|v| v as f64),
            LatencyMetric::Tpot => r.tpot_us(),
            LatencyMetric::Itl => {
                if r.ok() {
                    r.max_itl_us.map(|v| v as f64)
                } else {
                    None
                }
            }
            LatencyMetric::E2e => r.e2e_us().map(|v| v as f64),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// A percentile in (0, 100].
    Percentile(f64),
    Mean,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SloMetric {
    Latency {
        metric: LatencyMetric,
        statistic: Statistic,
    },
    ErrorRate,
    Goodput,
    RequestsPerS,
    OutputTokensPerS,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Comparison {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Comparison {
    pub fn holds(self, observed: f64, threshold: f64) -> bool {
        match self {
            Comparison::Lt => observed < threshold,
            Comparison::Le => observed <= threshold,
            Comparison::Gt => observed > threshold,
            Comparison::Ge => observed >= threshold,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        }
    }
}

/// A parsed SLO. `threshold` is in microseconds for latencies, a fraction for the error
/// rate, per second for rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slo {
    /// The expression as given, for reports.
    pub text: String,
    pub metric: SloMetric,
    pub comparison: Comparison,
    pub threshold: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--slo `{text}`: {problem}")]
pub struct SloError {
    pub text: String,
    pub problem: String,
}

impl Slo {
    /// Whether one request meets this SLO, for goodput. Only latency SLOs judge single
    /// requests (`None` for the others); a request whose metric is undefined (failed, or no
    /// first token on a non-streaming answer) does not meet it.
    pub fn request_meets(&self, r: &RequestRecord) -> Option<bool> {
        match self.metric {
            SloMetric::Latency { metric, .. } => Some(
                metric
                    .of_request_us(r)
                    .is_some_and(|v| self.comparison.holds(v, self.threshold)),
            ),
            _ => None,
        }
    }

    pub fn is_latency(&self) -> bool {
        matches!(self.metric, SloMetric::Latency { .. })
    }

    /// The threshold in the unit reports use (ms for latencies).
    pub fn display_threshold(&self) -> String {
        match self.metric {
            SloMetric::Latency { .. } => format!("{} ms", self.threshold / 1000.0),
            SloMetric::ErrorRate => format!("{}", self.threshold),
            _ => format!("{}/s", self.threshold),
        }
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Slo {
    type Err = SloError;

    fn from_str(text: &str) -> Result<Slo, SloError> {
        let err = |problem: String| SloError {
            text: text.to_owned(),
            problem,
        };
        let t = text.trim();
        let op_at = t.find(['<', '>']).ok_or_else(|| {
            err("no comparison: write METRIC OP VALUE, e.g. `ttft.p99<200ms` (OP is <, <=, > or >=)".into())
        })?;
        let (lhs, rest) = t.split_at(op_at);
        if let Some(stray) = lhs.strip_suffix(['=', '!']) {
            let bad = &t[stray.len()..op_at + 1];
            return Err(err(format!(
                "comparison `{bad}` is not one of <, <=, >, >="
            )));
        }
        let (comparison, rhs) = if let Some(r) = rest.strip_prefix("<=") {
            (Comparison::Le, r)
        } else if let Some(r) = rest.strip_prefix(">=") {
            (Comparison::Ge, r)
        } else if let Some(r) = rest.strip_prefix('<') {
            (Comparison::Lt, r)
        } else {
            (Comparison::Gt, &rest[1..])
        };
        if rhs.starts_with(['<', '>', '=']) {
            return Err(err(format!(
                "comparison `{}{}` is not one of <, <=, >, >=",
                comparison.symbol(),
                &rhs[..1]
            )));
        }
        let metric = parse_metric(lhs.trim()).map_err(err)?;
        let threshold = parse_value(&metric, rhs.trim()).map_err(err)?;
        Ok(Slo {
            text: format!("{}{}{}", lhs.trim(), comparison.symbol(), rhs.trim()),
            metric,
            comparison,
            threshold,
        })
    }
}

fn parse_metric(lhs: &str) -> Result<SloMetric, String> {
    if lhs.is_empty() {
        return Err("the metric before the comparison is missing".into());
    }
    let name = lhs.strip_prefix("throughput.").unwrap_or(lhs);
    match name {
        "error_rate" => return Ok(SloMetric::ErrorRate),
        "goodput" => return Ok(SloMetric::Goodput),
        "requests_per_s" => return Ok(SloMetric::RequestsPerS),
        "output_tokens_per_s" => return Ok(SloMetric::OutputTokensPerS),
        _ => {}
    }
    let (base, stat) = match lhs.split_once('.') {
        Some((b, s)) => (b, Some(s)),
        None => (lhs, None),
    };
    let metric = LatencyMetric::from_name(base).ok_or_else(|| {
        format!(
            "unknown metric `{lhs}`: use ttft, ttst, tpot, itl or e2e with .pNN/.mean/.max, or error_rate, goodput, requests_per_s, output_tokens_per_s"
        )
    })?;
    let stat = stat.ok_or_else(|| {
        format!("`{base}` needs a statistic: `{base}.p99`, `{base}.mean` or `{base}.max`")
    })?;
    let statistic = match stat {
        "mean" => Statistic::Mean,
        "min" => Statistic::Min,
        "max" => Statistic::Max,
        p => {
            let number = p.strip_prefix('p').ok_or_else(|| {
                format!(
                    "unknown statistic `.{p}`: use .pNN (e.g. .p99, .p99.9), .mean, .min or .max"
                )
            })?;
            match number.parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => Statistic::Percentile(v),
                _ => {
                    return Err(format!(
                        "percentile `.{p}` must be p followed by a number in (0, 100], e.g. .p99 or .p99.9"
                    ))
                }
            }
        }
    };
    Ok(SloMetric::Latency { metric, statistic })
}

fn parse_value(metric: &SloMetric, rhs: &str) -> Result<f64, String> {
    if rhs.is_empty() {
        return Err("the value after the comparison is missing".into());
    }
    let split = rhs
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .unwrap_or(rhs.len());
    let (number, unit) = rhs.split_at(split);
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("value `{rhs}` is not a number"))?;
    if value < 0.0 {
        return Err(format!("value `{rhs}` must not be negative"));
    }
    let unit = unit.trim();
    match metric {
        SloMetric::Latency { .. } => {
            let scale = match unit {
                "us" | "µs" => 1.0,
                "ms" => 1e3,
                "s" => 1e6,
                "" => {
                    return Err(format!(
                        "latency `{rhs}` needs a unit: write `{number}ms` (or us, s)"
                    ))
                }
                other => return Err(format!("unknown latency unit `{other}` (use us, ms or s)")),
            };
            Ok(value * scale)
        }
        SloMetric::ErrorRate => {
            let v = match unit {
                "" => value,
                "%" => value / 100.0,
                other => {
                    return Err(format!(
                        "error_rate is a fraction (`0.01`) or a percentage (`1%`), not `{other}`"
                    ))
                }
            };
            if v > 1.0 {
                return Err(format!(
                    "error_rate `{rhs}` is above 1: write a fraction (`0.01`) or a percentage (`1%`)"
                ));
            }
            Ok(v)
        }
        SloMetric::Goodput | SloMetric::RequestsPerS | SloMetric::OutputTokensPerS => match unit {
            "" | "/s" => Ok(value),
            other => Err(format!(
                "a rate is a number per second (`10` or `10/s`), not `{other}`"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Slo {
        s.parse().unwrap()
    }

    fn e(s: &str) -> String {
        s.parse::<Slo>().unwrap_err().to_string()
    }

    #[test]
    fn good_expressions() {
        let s = p("ttft.p99<200ms");
        assert_eq!(
            s.metric,
            SloMetric::Latency {
                metric: LatencyMetric::Ttft,
                statistic: Statistic::Percentile(99.0)
            }
        );
        assert_eq!(s.comparison, Comparison::Lt);
        assert_eq!(s.threshold, 200_000.0);
        let s = p(" tpot.p95 <= 50ms ");
        assert_eq!(s.comparison, Comparison::Le);
        assert_eq!(s.text, "tpot.p95<=50ms");
        assert_eq!(p("itl.p99.9<0.1s").threshold, 100_000.0);
        assert!(matches!(
            p("e2e.mean<2s").metric,
            SloMetric::Latency {
                statistic: Statistic::Mean,
                ..
            }
        ));
        assert_eq!(p("ttst.max<=900us").threshold, 900.0);
        assert_eq!(p("error_rate<0.01").threshold, 0.01);
        assert_eq!(p("error_rate<1%").threshold, 0.01);
        assert_eq!(p("goodput>=10").metric, SloMetric::Goodput);
        assert_eq!(p("goodput>=10/s").threshold, 10.0);
        let s = p("throughput.output_tokens_per_s>1000");
        assert_eq!(s.metric, SloMetric::OutputTokensPerS);
        assert_eq!(s.comparison, Comparison::Gt);
        assert_eq!(p("requests_per_s>=2.5").threshold, 2.5);
    }

    #[test]
    fn bad_expressions_name_the_wrong_part() {
        assert!(e("ttft.p99 200ms").contains("no comparison"));
        assert!(e("ttft.p99<200").contains("needs a unit: write `200ms`"));
        assert!(e("ttft<200ms").contains("`ttft` needs a statistic"));
        assert!(e("latency.p99<1s").contains("unknown metric `latency.p99`"));
        assert!(e("ttft.p101<1s").contains("percentile `.p101`"));
        assert!(e("ttft.median<1s").contains("unknown statistic `.median`"));
        assert!(e("ttft.p99<200 parsecs").contains("unknown latency unit `parsecs`"));
        assert!(e("ttft.p99<abc").contains("value `abc` is not a number"));
        assert!(e("ttft.p99=<200ms").contains("comparison `=<` is not one of"));
        assert!(e("ttft.p99==200ms").contains("no comparison"));
        assert!(e("ttft.p99<<200ms").contains("comparison `<<`"));
        assert!(e("error_rate<5").contains("above 1"));
        assert!(e("goodput>10ms").contains("a rate is a number per second"));
        assert!(e("<10").contains("metric before the comparison is missing"));
        assert!(e("goodput>").contains("value after the comparison is missing"));
        assert!(e("e2e.p50<-1ms").contains("must not be negative"));
        assert!(e("x<1").starts_with("--slo `x<1`: "));
    }

    #[test]
    fn requests_are_judged_by_their_own_latency() {
        let slo = p("ttft.p99<=50ms");
        let mut r = crate::record::tests::record();
        assert_eq!(slo.request_meets(&r), Some(true));
        r.first_token_us = Some(r.scheduled_us + 50_001);
        assert_eq!(slo.request_meets(&r), Some(false));
        r.first_token_us = None;
        assert_eq!(slo.request_meets(&r), Some(false), "undefined never meets");
        let itl = p("itl.p99<20ms");
        assert_eq!(
            itl.request_meets(&crate::record::tests::record()),
            Some(true)
        );
        assert_eq!(p("error_rate<0.1").request_meets(&r), None);
    }
}
