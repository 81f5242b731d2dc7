//! Repeated prompts: a share of the requests asks exactly what an earlier request asked, the
//! traffic an inference cache is for (the same question from many users, retries, agents
//! re-running a step). `--repeat-share 0.3 --repeat-prompts 100` makes each request, with
//! probability 0.3, one of 100 popular requests (picked uniformly); the others are each
//! their own. A popular request is built exactly like any other, so lengths and shape
//! follow the workload's settings.

use serde::Serialize;

use crate::prng::Rng;

/// PRNG stream of the repeat draws (distinct from the workloads' streams).
const STREAM: u64 = 0x5E17_0004;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RepeatedPrompts {
    /// Probability that a request is one of the popular ones, in [0, 1].
    pub share: f64,
    /// How many popular requests there are (at least 1).
    pub prompts: u32,
}

impl RepeatedPrompts {
    /// Checks the ranges; the message names the flag.
    pub fn new(share: f64, prompts: u32) -> Result<RepeatedPrompts, String> {
        if !(0.0..=1.0).contains(&share) {
            return Err(format!(
                "--repeat-share {share}: give a share between 0 and 1"
            ));
        }
        if prompts == 0 {
            return Err("--repeat-prompts 0: give at least one prompt to repeat".into());
        }
        Ok(RepeatedPrompts { share, prompts })
    }

    /// The index of the request to build as request `index`: `index` itself, or one of the
    /// popular requests' indices, taken from the top of the index space where no run's own
    /// requests reach. The same seed and index always give the same answer.
    pub fn index(&self, seed: u64, index: u64) -> u64 {
        let mut rng = Rng::derive(seed, STREAM, index);
        if rng.unit() < self.share {
            u64::MAX - rng.below(u64::from(self.prompts))
        } else {
            index
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_share_repeats_and_the_rest_stay_their_own() {
        let r = RepeatedPrompts::new(0.3, 10).unwrap();
        let n = 20_000u64;
        let mut popular: HashMap<u64, u64> = HashMap::new();
        let mut own = 0;
        for i in 0..n {
            let drawn = r.index(7, i);
            assert_eq!(drawn, r.index(7, i), "deterministic");
            if drawn == i {
                own += 1;
            } else {
                assert!(drawn > u64::MAX - 10, "{drawn}");
                *popular.entry(drawn).or_default() += 1;
            }
        }
        let share = (n - own) as f64 / n as f64;
        assert!((share - 0.3).abs() < 0.02, "{share}");
        assert_eq!(popular.len(), 10);
        // Uniform over the popular ones: each near 600 of 6 000.
        assert!(
            popular.values().all(|&c| (450..=750).contains(&c)),
            "{popular:?}"
        );
        // Another seed draws other requests.
        assert!((0..100).any(|i| r.index(8, i) != r.index(7, i)));
    }

    #[test]
    fn the_ends_of_the_range() {
        let none = RepeatedPrompts::new(0.0, 5).unwrap();
        assert!((0..1000).all(|i| none.index(1, i) == i));
        let all = RepeatedPrompts::new(1.0, 1).unwrap();
        assert!((0..1000).all(|i| all.index(1, i) == u64::MAX));
        assert!(RepeatedPrompts::new(1.5, 5)
            .unwrap_err()
            .contains("--repeat-share"));
        assert!(RepeatedPrompts::new(0.5, 0)
            .unwrap_err()
            .contains("--repeat-prompts"));
    }
}
