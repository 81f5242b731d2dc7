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
    /// Of the requests sent in this second, those that succeeded and those that failed.
    pub succeeded: u64,
    pub failed: u64,
    /// Requests that completed successfully in this second, whenever they were sent: beside
    /// `sent`, it shows when a target falls behind.
    #[serde(default)]
    pub completed: u64,
    /// How much of this second lies inside the measured window (1 but for the first and
    /// last): per-second rates of a partial second are its counts divided by this.
    #[serde(default = "whole_second")]
    pub covered_s: f64,
    /// Output tokens that arrived during this second.
    pub output_tokens: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
}

fn whole_second() -> f64 {
    1.0
}

/// Buckets over the seconds of the measured window `[start_us, end_us)`. Without a window
/// end (a run bounded by a request count), up to the last measured answer.
pub fn buckets(
    measured: &[&RequestRecord],
    token_timeline: &[f64],
    start_us: u64,
    window_end_us: Option<u64>,
) -> Vec<TimeBucket> {
    if measured.is_empty() {
        return Vec::new();
    }
    let end_us = window_end_us.unwrap_or_else(|| {
        measured
            .iter()
            .map(|r| r.end_us.max(r.scheduled_us))
            .max()
            .unwrap_or(start_us)
    });
    if end_us <= start_us {
        return Vec::new();
    }
    let first = start_us / 1_000_000;
    let last = (end_us - 1) / 1_000_000;
    let n = (last - first + 1) as usize;
    let mut ttft: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut e2e: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut out: Vec<TimeBucket> = (0..n as u64)
        .map(|i| TimeBucket {
            t_s: first + i,
            sent: 0,
            succeeded: 0,
            failed: 0,
            completed: 0,
            covered_s: {
                let (lo, hi) = ((first + i) * 1_000_000, (first + i + 1) * 1_000_000);
                (hi.min(end_us).saturating_sub(lo.max(start_us))) as f64 / 1e6
            },
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
        if r.ok() && (start_us..end_us).contains(&r.end_us) {
            if let Some(b) = out.get_mut((r.end_us / 1_000_000 - first) as usize) {
                b.completed += 1;
            }
        }
        let Some(i) = (r.scheduled_us / 1_000_000).checked_sub(first) else {
            continue;
        };
        let i = i as usize;
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
