//! Latency distributions: an HDR histogram at microsecond resolution (3 significant digits,
//! so any reported percentile is within 0.05 % of the exact order statistic) plus the exact
//! count, sum, minimum and maximum.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest recordable value: one day in microseconds. Larger values are clamped (and no
/// request the tool sends lives that long: `--timeout` ends it first).
const MAX_US: u64 = 86_400_000_000;

#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
    sum_us: f64,
    min_us: u64,
    max_us: u64,
}

/// The summary every report shows for a latency metric, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    pub count: u64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts (1 ≤ low, high ≥ 2·low,
        // sigfig ≤ 5); construction cannot fail for them.
        let hist = match Histogram::new_with_bounds(1, MAX_US, 3) {
            Ok(h) => h,
            Err(e) => unreachable!("constant histogram bounds rejected: {e:?}"),
        };
        LatencyHistogram {
            hist,
            sum_us: 0.0,
            min_us: u64::MAX,
            max_us: 0,
        }
    }

    pub fn record(&mut self, us: u64) {
        let us = us.min(MAX_US);
        self.hist.saturating_record(us);
        self.sum_us += us as f64;
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    /// Records a fractional value (TPOT is a quotient) rounded to the microsecond.
    pub fn record_f64(&mut self, us: f64) {
        if us.is_finite() && us >= 0.0 {
            self.record(us.round() as u64);
        }
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.count() == 0 {
            return;
        }
        // Same bounds on both sides, so every value of `other` fits.
        let _ = self.hist.add(&other.hist);
        self.sum_us += other.sum_us;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0..=1) by nearest rank, in microseconds: the middle of the
    /// histogram bucket holding the ⌈q·n⌉-th smallest value, clamped to the exact min/max.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.count() == 0 {
            return None;
        }
        let v = self
            .hist
            .median_equivalent(self.hist.value_at_quantile(q.clamp(0.0, 1.0)));
        Some(v.clamp(self.min_us, self.max_us) as f64)
    }

    pub fn mean_us(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.sum_us / self.count() as f64)
    }

    pub fn min_us(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.min_us as f64)
    }

    pub fn max_us(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.max_us as f64)
    }

    pub fn stats(&self) -> Option<LatencyStats> {
        let ms = |us: Option<f64>| crate::units::us_to_ms(us.unwrap_or(0.0));
        (self.count() > 0).then(|| LatencyStats {
            count: self.count(),
            mean_ms: ms(self.mean_us()),
            min_ms: ms(self.min_us()),
            p50_ms: ms(self.quantile_us(0.50)),
            p90_ms: ms(self.quantile_us(0.90)),
            p95_ms: ms(self.quantile_us(0.95)),
            p99_ms: ms(self.quantile_us(0.99)),
            p99_9_ms: ms(self.quantile_us(0.999)),
            max_ms: ms(self.max_us()),
        })
    }
}

/// z of a two-sided 95 % interval.
const Z95: f64 = 1.96;

/// A histogram's samples as `[value_us, count]` pairs, one per non-empty bucket (the value
/// is the bucket's highest, within 0.05 % of every sample in it): what a JSON report keeps
/// so that `compare` can judge differences against their noise later.
pub type BucketCounts = Vec<[u64; 2]>;

/// A 95 % interval of a statistic, in microseconds. A side is `None` when the samples
/// cannot bound it (for a high percentile of few samples, the upper side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub low_us: Option<f64>,
    pub high_us: Option<f64>,
}

impl LatencyHistogram {
    pub fn bucket_counts(&self) -> BucketCounts {
        self.hist
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_since_last_iteration()])
            .collect()
    }

    /// A histogram holding `counts` (sum, minimum and maximum as those buckets give them).
    pub fn from_bucket_counts(counts: &[[u64; 2]]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for &[value, n] in counts {
            if n == 0 {
                continue;
            }
            let value = value.min(MAX_US);
            h.hist.saturating_record_n(value, n);
            h.sum_us += value as f64 * n as f64;
            h.min_us = h.min_us.min(value);
            h.max_us = h.max_us.max(value);
        }
        h
    }

    /// The distribution-free 95 % interval of quantile `q`: the order statistics of ranks
    /// n·q ∓ 1.96·√(n·q·(1−q)) (the normal approximation of the binomial count of samples
    /// below the quantile). A side whose rank falls outside the sample is unbounded.
    pub fn quantile_interval(&self, q: f64) -> Interval {
        let n = self.count();
        let unbounded = Interval {
            low_us: None,
            high_us: None,
        };
        if n == 0 {
            return unbounded;
        }
        let (lo, hi) = quantile_ranks(n, q);
        let at = |rank: u64| {
            self.quantile_us(rank as f64 / n as f64)
                .filter(|_| rank >= 1 && rank <= n)
        };
        Interval {
            low_us: lo.and_then(at),
            high_us: hi.and_then(at),
        }
    }

    /// The 95 % interval of the mean: mean ∓ 1.96 standard errors.
    pub fn mean_interval(&self) -> Interval {
        let n = self.count();
        match self.mean_us() {
            Some(mean) if n >= 2 => {
                let half = Z95 * self.hist.stdev() / (n as f64).sqrt();
                Interval {
                    low_us: Some(mean - half),
                    high_us: Some(mean + half),
                }
            }
            _ => Interval {
                low_us: None,
                high_us: None,
            },
        }
    }
}

/// The 1-based ranks bounding the 95 % interval of quantile `q` among `n` samples; a side
/// is `None` when it falls outside 1..=n.
fn quantile_ranks(n: u64, q: f64) -> (Option<u64>, Option<u64>) {
    let q = q.clamp(0.0, 1.0);
    let centre = n as f64 * q;
    let spread = Z95 * (n as f64 * q * (1.0 - q)).sqrt();
    let lo = (centre - spread).floor();
    let hi = (centre + spread).ceil() + 1.0;
    (
        (lo >= 1.0).then_some(lo as u64),
        (hi <= n as f64).then_some(hi as u64),
    )
}

/// The fewest samples whose 95 % interval of quantile `q` is bounded on both sides: below
/// it, the quantile is the sample's maximum (or minimum) for all the data can say — p99 of
/// 20 samples is the largest of them. 8 for p50, 53 for p90, 110 for p95, 563 for p99.
pub fn samples_to_bound(q: f64) -> u64 {
    let mut n = 1;
    while n < 1_000_000 {
        if let (Some(_), Some(_)) = quantile_ranks(n, q) {
            return n;
        }
        n += 1;
    }
    n
}

/// Exact nearest-rank quantile of a small sample (the per-second buckets of the time series
/// use this: they are small and exactness is free there). Sorts `values`.
pub fn exact_quantile(values: &mut [u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize;
    values.get(rank.clamp(1, values.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_need_enough_samples_to_be_bounded() {
        let needed: Vec<u64> = [0.5, 0.9, 0.95, 0.99]
            .iter()
            .map(|&q| samples_to_bound(q))
            .collect();
        // Each is the first n whose interval has a rank on both sides inside the sample.
        for (&q, &n) in [0.5, 0.9, 0.95, 0.99].iter().zip(&needed) {
            assert!(
                matches!(quantile_ranks(n, q), (Some(_), Some(_))),
                "{q} {n}"
            );
            assert!(
                !matches!(quantile_ranks(n - 1, q), (Some(_), Some(_))),
                "{q} {n}"
            );
        }
        assert!(needed[3] > 500 && needed[3] < 800, "{needed:?}");
        assert!(needed[0] <= 20, "{needed:?}");
    }

    #[test]
    fn intervals_contain_the_estimate_and_narrow_with_samples() {
        let mut small = LatencyHistogram::new();
        let mut large = LatencyHistogram::new();
        for i in 0..100u64 {
            small.record(1000 + i * 10);
        }
        for i in 0..10_000u64 {
            large.record(1000 + (i % 100) * 10);
        }
        let (s, l) = (small.quantile_interval(0.5), large.quantile_interval(0.5));
        let p50 = small.quantile_us(0.5).unwrap();
        assert!(s.low_us.unwrap() <= p50 && p50 <= s.high_us.unwrap());
        assert!(l.high_us.unwrap() - l.low_us.unwrap() < s.high_us.unwrap() - s.low_us.unwrap());
        // p99 of 100 samples cannot be bounded above.
        assert_eq!(small.quantile_interval(0.99).high_us, None);
        let round = LatencyHistogram::from_bucket_counts(&large.bucket_counts());
        assert_eq!(round.count(), large.count());
        assert_eq!(round.quantile_us(0.9), large.quantile_us(0.9));
    }

    fn within(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= want * rel
    }

    #[test]
    fn percentiles_of_known_data() {
        // 1..=10000 ms in µs: p50 = 5000 ms, p90 = 9000 ms, p99 = 9900 ms, p99.9 = 9990 ms.
        let mut h = LatencyHistogram::new();
        for ms in 1..=10_000u64 {
            h.record(ms * 1000);
        }
        let s = h.stats().unwrap();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.max_ms, 10_000.0);
        assert!(
            (s.mean_ms - 5000.5).abs() < 1e-9,
            "mean is exact: {}",
            s.mean_ms
        );
        for (got, want) in [
            (s.p50_ms, 5000.0),
            (s.p90_ms, 9000.0),
            (s.p95_ms, 9500.0),
            (s.p99_ms, 9900.0),
            (s.p99_9_ms, 9990.0),
        ] {
            assert!(within(got, want, 0.0005), "{got} vs {want}");
        }
    }

    #[test]
    fn small_values_are_exact_and_single_values_are_themselves() {
        let mut h = LatencyHistogram::new();
        for us in [10, 20, 30, 40] {
            h.record(us);
        }
        assert_eq!(h.quantile_us(0.5), Some(20.0));
        assert_eq!(h.quantile_us(0.75), Some(30.0));
        assert_eq!(h.quantile_us(1.0), Some(40.0));
        let mut one = LatencyHistogram::new();
        one.record(50_123);
        let s = one.stats().unwrap();
        assert_eq!(
            (s.p50_ms, s.p99_9_ms, s.min_ms, s.max_ms),
            (50.123, 50.123, 50.123, 50.123)
        );
        assert!(LatencyHistogram::new().stats().is_none());
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record(100);
        b.record(300);
        b.record_f64(200.4);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.min_us(), Some(100.0));
        assert_eq!(a.max_us(), Some(300.0));
        assert_eq!(a.quantile_us(0.5), Some(200.0));
    }

    #[test]
    fn exact_quantiles() {
        let mut v = vec![5, 1, 4, 2, 3];
        assert_eq!(exact_quantile(&mut v, 0.5), Some(3));
        assert_eq!(exact_quantile(&mut v, 0.99), Some(5));
        assert_eq!(exact_quantile(&mut v, 0.0), Some(1));
        assert_eq!(exact_quantile(&mut [], 0.5), None);
    }
}
