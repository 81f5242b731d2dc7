//! Per-second buckets over the run, for the chart: what was sent in each second, how it
//! fared (latency by the second its request was *scheduled* in, so a backlog shows up where
//! it began), and how many tokens arrived in it.

use serde::{Deserialize, Serialize};

use super::histogram::exact_quantile;
use crate::record::RequestRecord;
use crate::units::us_to_ms;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeBucket {
    /// Start of the bucket, seconds since the run began.
    pub t_s: u64,
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Output tokens that arrived during this second.
    pub output_tokens: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
}

/// Buckets from the first to the last second that holds a measured request or token.
pub fn buckets(measured: &[&RequestRecord], token_timeline: &[f64]) -> Vec<TimeBucket> {
    let first = measured.iter().map(|r| r.scheduled_us / 1_000_000).min();
    let last = measured
        .iter()
        .map(|r| r.end_us.max(r.scheduled_us) / 1_000_000)
        .max();
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    let n = (last - first + 1) as usize;
    let mut ttft: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut e2e: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut out: Vec<TimeBucket> = (0..n as u64)
        .map(|i| TimeBucket {
            t_s: first + i,
            sent: 0,
            succeeded: 0,
            failed: 0,
            output_tokens: token_timeline
                .get((first + i) as usize)
                .copied()
                .unwrap_or(0.0),
            ttft_p50_ms: None,
            ttft_p99_ms: None,
            e2e_p50_ms: None,
            e2e_p99_ms: None,
        })
        .collect();
    for r in measured {
        let i = (r.scheduled_us / 1_000_000 - first) as usize;
        let Some(b) = out.get_mut(i) else { continue };
        b.sent += 1;
        if r.ok() {
            b.succeeded += 1;
        } else {
            b.failed += 1;
        }
        if let Some(v) = r.ttft_us() {
            ttft[i].push(v);
        }
        if let Some(v) = r.e2e_us() {
            e2e[i].push(v);
        }
    }
    let ms = |v: Option<u64>| v.map(|us| us_to_ms(us as f64));
    for (i, b) in out.iter_mut().enumerate() {
        b.ttft_p50_ms = ms(exact_quantile(&mut ttft[i], 0.5));
        b.ttft_p99_ms = ms(exact_quantile(&mut ttft[i], 0.99));
        b.e2e_p50_ms = ms(exact_quantile(&mut e2e[i], 0.5));
        b.e2e_p99_ms = ms(exact_quantile(&mut e2e[i], 0.99));
    }
    out
}
