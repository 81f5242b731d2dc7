//! Open-loop arrival processes: when each request is due, as an offset from the start of
//! the run. The schedule is fixed in advance of the traffic (it never looks at responses),
//! which is what makes latency measured from it free of coordinated omission.

use std::fmt;

use serde::Serialize;

use crate::prng::Rng;

/// How gaps between arrivals are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Arrival {
    /// Equal gaps of 1/rate.
    Constant,
    /// Exponential gaps (a Poisson process): gamma with shape 1.
    Poisson,
    /// Gamma gaps with shape = `burstiness` and mean 1/rate. Below 1 burstier than Poisson,
    /// above 1 more regular.
    Gamma { burstiness: f64 },
}

impl Arrival {
    /// Builds the process from the command-line words, checking the burstiness.
    pub fn from_name(name: &str, burstiness: Option<f64>) -> Result<Arrival, String> {
        match (name, burstiness) {
            ("constant", None) => Ok(Arrival::Constant),
            ("poisson", None) => Ok(Arrival::Poisson),
            ("constant" | "poisson", Some(_)) => Err(format!(
                "--burstiness applies to --arrival gamma only, not `{name}`"
            )),
            ("gamma", Some(b)) if b.is_finite() && b > 0.0 => Ok(Arrival::Gamma { burstiness: b }),
            ("gamma", Some(b)) => Err(format!("--burstiness must be a positive number, got {b}")),
            ("gamma", None) => Err(
                "--arrival gamma needs --burstiness B (the gamma shape; 1 = Poisson)".to_owned(),
            ),
            (other, _) => Err(format!(
                "unknown arrival process `{other}` (use constant, poisson or gamma)"
            )),
        }
    }
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arrival::Constant => f.write_str("constant"),
            Arrival::Poisson => f.write_str("poisson"),
            Arrival::Gamma { burstiness } => write!(f, "gamma(burstiness {burstiness})"),
        }
    }
}

/// Random gaps are drawn in blocks of this many and scaled so that each block spans exactly
/// `BLOCK / rate` seconds.
///
/// Why: a Poisson schedule of n requests misses its rate by about 1/√n (2 % at n = 2500),
/// so two runs "at the same rate" would differ in offered load by that much, and that noise
/// would be read as a difference between targets. Scaling a block of independent gamma
/// gaps to a fixed sum gives exactly the gamma renewal process *conditioned* on that sum
/// (the normalised gaps are Dirichlet-distributed): within a block the arrivals are as
/// bursty as the unconditioned process (the coefficient of variation of the gaps is
/// within 0.1 % of it), while the rate over every block is exact.
pub const BLOCK: usize = 1024;

/// Successive scheduled send times, in seconds from the start, of an open-loop process at
/// `rate` requests per second. The first request is due at 0.
#[derive(Debug, Clone)]
pub struct ArrivalSchedule {
    arrival: Arrival,
    rate: f64,
    rng: Rng,
    index: u64,
    clock_s: f64,
    /// Gaps of the current block, consumed from the end.
    pending: Vec<f64>,
    /// Sizes (in gaps) of the next blocks, consumed from the end; then [`BLOCK`]s.
    planned: Vec<usize>,
}

impl ArrivalSchedule {
    pub fn new(arrival: Arrival, rate: f64, seed: u64) -> Self {
        ArrivalSchedule {
            arrival,
            rate,
            rng: Rng::derive(seed, 0x0A44_17A1, 0),
            index: 0,
            clock_s: 0.0,
            pending: Vec::new(),
            planned: Vec::new(),
        }
    }

    /// Like [`ArrivalSchedule::new`], with the first blocks sized to the run's segments
    /// (e.g. warm-up gaps, then measured gaps), so that the rate is exact over each segment
    /// rather than only over whole blocks.
    pub fn with_segments(arrival: Arrival, rate: f64, seed: u64, segments: &[usize]) -> Self {
        let mut s = Self::new(arrival, rate, seed);
        s.planned = segments.iter().rev().copied().filter(|&n| n > 0).collect();
        s
    }

    /// The due time of the next request, in seconds from the start.
    pub fn next_offset_s(&mut self) -> f64 {
        let i = self.index;
        self.index += 1;
        match self.arrival {
            // Computed from the index rather than summed, so no rounding drift accumulates
            // over millions of requests.
            Arrival::Constant => i as f64 / self.rate,
            Arrival::Poisson | Arrival::Gamma { .. } => {
                if i > 0 {
                    self.clock_s += self.gap_s();
                }
                self.clock_s
            }
        }
    }

    fn gap_s(&mut self) -> f64 {
        let mean = 1.0 / self.rate;
        if let Some(g) = self.pending.pop() {
            return g;
        }
        let size = self.planned.pop().unwrap_or(BLOCK);
        let mut block: Vec<f64> = (0..size)
            .map(|_| match self.arrival {
                Arrival::Constant => mean,
                Arrival::Poisson => self.rng.exponential(mean),
                Arrival::Gamma { burstiness } => self.rng.gamma(burstiness, mean / burstiness),
            })
            .collect();
        let sum: f64 = block.iter().sum();
        if sum > 0.0 && sum.is_finite() {
            let scale = size as f64 * mean / sum;
            block.iter_mut().for_each(|g| *g *= scale);
        }
        // Consumed from the end: reverse so gaps come out in the order drawn.
        block.reverse();
        let first = block.pop().unwrap_or(mean);
        self.pending = block;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::mean_and_cv;

    fn gaps(arrival: Arrival, rate: f64, n: usize) -> Vec<f64> {
        let mut s = ArrivalSchedule::new(arrival, rate, 42);
        let times: Vec<f64> = (0..=n).map(|_| s.next_offset_s()).collect();
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[test]
    fn constant_gaps_are_exact() {
        let g = gaps(Arrival::Constant, 250.0, 1000);
        assert!(g.iter().all(|x| (x - 0.004).abs() < 1e-12));
        let mut s = ArrivalSchedule::new(Arrival::Constant, 3.0, 1);
        assert_eq!(s.next_offset_s(), 0.0);
    }

    #[test]
    fn poisson_gaps_have_mean_one_over_rate_and_cv_one() {
        let (mean, cv) = mean_and_cv(&gaps(Arrival::Poisson, 100.0, 200_000));
        assert!((mean - 0.01).abs() / 0.01 < 0.01, "{mean}");
        assert!((cv - 1.0).abs() < 0.015, "{cv}");
    }

    #[test]
    fn gamma_gaps_have_mean_one_over_rate_and_cv_one_over_sqrt_shape() {
        for b in [0.25, 1.0, 4.0] {
            let (mean, cv) = mean_and_cv(&gaps(Arrival::Gamma { burstiness: b }, 50.0, 200_000));
            assert!((mean - 0.02).abs() / 0.02 < 0.015, "b={b}: {mean}");
            let want = 1.0 / f64::sqrt(b);
            assert!(
                (cv - want).abs() / want < 0.03,
                "b={b}: cv {cv} want {want}"
            );
        }
    }

    #[test]
    fn every_block_has_the_exact_rate() {
        for arrival in [Arrival::Poisson, Arrival::Gamma { burstiness: 0.3 }] {
            let mut s = ArrivalSchedule::new(arrival, 40.0, 9);
            let times: Vec<f64> = (0..=3 * BLOCK).map(|_| s.next_offset_s()).collect();
            for k in 1..=3 {
                let t = times[k * BLOCK];
                let want = (k * BLOCK) as f64 / 40.0;
                assert!(
                    (t - want).abs() < 1e-9,
                    "{arrival}: block {k} ends at {t}, want {want}"
                );
            }
        }
    }

    #[test]
    fn planned_segments_have_the_exact_rate() {
        // 10 warm-up gaps, then 299 measured gaps: arrivals 10..=309 span exactly 299/rate.
        let mut s = ArrivalSchedule::with_segments(Arrival::Poisson, 100.0, 3, &[10, 299]);
        let t: Vec<f64> = (0..=400).map(|_| s.next_offset_s()).collect();
        assert!((t[10] - 0.10).abs() < 1e-9, "{}", t[10]);
        assert!((t[309] - t[10] - 2.99).abs() < 1e-9, "{}", t[309] - t[10]);
        let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g > 0.0));
    }

    #[test]
    fn names() {
        assert_eq!(Arrival::from_name("poisson", None), Ok(Arrival::Poisson));
        assert_eq!(
            Arrival::from_name("gamma", Some(0.5)),
            Ok(Arrival::Gamma { burstiness: 0.5 })
        );
        assert!(Arrival::from_name("gamma", None)
            .unwrap_err()
            .contains("--burstiness"));
        assert!(Arrival::from_name("gamma", Some(0.0)).is_err());
        assert!(Arrival::from_name("constant", Some(2.0)).is_err());
        assert!(Arrival::from_name("bursty", None)
            .unwrap_err()
            .contains("unknown arrival process `bursty`"));
    }
}
