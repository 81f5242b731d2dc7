//! [`RetryBudget`]: retries may add at most a share of the traffic (as linkerd and Envoy
//! bound them), so a sick fleet is not hammered by its own clients' retries.
//!
//! Over the last ten seconds (ten one-second buckets), retries may number at most `ratio` of
//! the requests routed, plus `min_per_second` a second so a quiet model can still retry.

use std::sync::{Mutex, PoisonError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    /// Attempts a request may make in all (the first included).
    pub max_attempts: u32,
    /// Retries allowed per request routed.
    pub ratio: f64,
    pub min_per_second: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 2,
            ratio: 0.2,
            min_per_second: 5.0,
        }
    }
}

const BUCKETS: usize = 10;
const BUCKET_MS: u64 = 1_000;

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    second: u64,
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
pub struct RetryBudget {
    settings: RetrySettings,
    buckets: Mutex<[Bucket; BUCKETS]>,
}

impl RetryBudget {
    pub fn new(settings: RetrySettings) -> RetryBudget {
        RetryBudget {
            settings,
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        }
    }

    pub fn settings(&self) -> &RetrySettings {
        &self.settings
    }

    /// The bucket of `now_ms`, emptied if it held an older second.
    fn with_bucket<T>(&self, now_ms: u64, f: impl FnOnce(&mut [Bucket; BUCKETS], usize) -> T) -> T {
        let second = now_ms / BUCKET_MS;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let at = (second % BUCKETS as u64) as usize;
        if buckets[at].second != second {
            buckets[at] = Bucket {
                second,
                requests: 0,
                retries: 0,
            };
        }
        f(&mut buckets, at)
    }

    /// A request was routed.
    pub fn deposit(&self, now_ms: u64) {
        self.with_bucket(now_ms, |b, at| b[at].requests += 1);
    }

    /// Takes one retry, if the last ten seconds allow it.
    pub fn withdraw(&self, now_ms: u64) -> bool {
        let second = now_ms / BUCKET_MS;
        let s = self.settings;
        self.with_bucket(now_ms, |b, at| {
            let live = b
                .iter()
                .filter(|x| second.saturating_sub(x.second) < BUCKETS as u64 && x.second <= second);
            let (requests, retries) =
                live.fold((0, 0), |(q, r), x| (q + x.requests, r + x.retries));
            let allowed = s.ratio * requests as f64 + s.min_per_second * BUCKETS as f64;
            if (retries + 1) as f64 <= allowed {
                b[at].retries += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share_of_requests_plus_the_floor() {
        let b = RetryBudget::new(RetrySettings {
            max_attempts: 3,
            ratio: 0.2,
            min_per_second: 0.5,
        });
        // No traffic: the floor, half a retry a second over ten seconds.
        assert_eq!((0..20).filter(|_| b.withdraw(0)).count(), 5);
        // 100 requests: 20 more.
        for _ in 0..100 {
            b.deposit(0);
        }
        assert_eq!((0..50).filter(|_| b.withdraw(0)).count(), 20);
        // Ten seconds later all of that has left the window.
        assert_eq!((0..50).filter(|_| b.withdraw(10_000)).count(), 5);
        for _ in 0..1000 {
            b.deposit(10_500);
        }
        assert_eq!((0..500).filter(|_| b.withdraw(10_500)).count(), 200);
    }
}
