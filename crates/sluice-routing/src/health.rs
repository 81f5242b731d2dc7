//! Endpoint health as the router sees it, from what requests and probes meet.
//!
//! - **Ejection:** `consecutive_failures` failures in a row (connect failures, resets, 5xx
//!   answers, failed probes) take an endpoint out of rotation for `ejection`, doubled at each
//!   ejection in a row up to `max_ejection`. A success resets the count.
//! - **Cooldown:** any failure also keeps the endpoint from being first for a short while:
//!   `cooldown` after a 5xx or a reset, the upstream's `retry-after` (capped) after a 429.
//! - **Gradual return:** after an ejection the endpoint is first for a growing share of the
//!   requests it would have been first for, from none to all over `slow_start`; a failure
//!   then ejects it again (for longer).
//!
//! An endpoint out of rotation is not dropped: it goes to the end of the attempt order, so a
//! model whose endpoints are all unwell still tries them rather than refusing at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSettings {
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
    pub cooldown: Duration,
    /// The longest cooldown a 429's `retry-after` sets.
    pub max_retry_after: Duration,
    pub slow_start: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            consecutive_failures: 3,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(120),
            cooldown: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(60),
            slow_start: Duration::from_secs(10),
        }
    }
}

/// What one attempt (or probe) met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A connect failure, a reset, a 5xx, a failed probe.
    Failure,
    /// A 429; its `retry-after`, when it had one.
    RateLimited(Option<Duration>),
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    /// Ejections in a row (reset by a success after the return).
    ejections: u32,
    ejected_until_ms: u64,
    cooling_until_ms: u64,
    /// When the last ejection ended (the gradual return's start).
    returned_at_ms: Option<u64>,
}

/// How an endpoint stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Healthy,
    /// Just back from an ejection: first for `share` (0 to 1, in thousandths) of its turns.
    Returning {
        per_mille: u64,
    },
    /// Kept from being first for a short while after a failure.
    Cooling,
    Ejected,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Healthy => "healthy",
            Standing::Returning { .. } => "returning",
            Standing::Cooling => "cooling",
            Standing::Ejected => "ejected",
        }
    }
}

#[derive(Debug, Default)]
pub struct EndpointHealth {
    state: Mutex<State>,
    /// Times ejected since start (for metrics).
    pub ejections_total: AtomicU64,
}

impl EndpointHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn report(&self, outcome: Outcome, s: &HealthSettings, now_ms: u64) {
        let mut st = self.lock();
        settle(&mut st, s, now_ms);
        match outcome {
            Outcome::Success => st.consecutive = 0,
            Outcome::Failure | Outcome::RateLimited(_) => {
                let cool = match outcome {
                    Outcome::RateLimited(Some(after)) => after.min(s.max_retry_after),
                    _ => s.cooldown,
                };
                st.cooling_until_ms = st.cooling_until_ms.max(now_ms + cool.as_millis() as u64);
                if outcome == Outcome::Failure {
                    st.consecutive += 1;
                    let returning = st.returned_at_ms.is_some();
                    if (st.consecutive >= s.consecutive_failures.max(1) || returning)
                        && st.ejected_until_ms <= now_ms
                    {
                        let factor = 1u32 << st.ejections.min(16);
                        let length = (s.ejection * factor).min(s.max_ejection);
                        st.ejected_until_ms = now_ms + length.as_millis() as u64;
                        st.ejections += 1;
                        st.consecutive = 0;
                        st.returned_at_ms = None;
                        self.ejections_total.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    pub fn standing(&self, s: &HealthSettings, now_ms: u64) -> Standing {
        let mut st = self.lock();
        if st.ejected_until_ms > now_ms {
            return Standing::Ejected;
        }
        settle(&mut st, s, now_ms);
        if st.cooling_until_ms > now_ms {
            return Standing::Cooling;
        }
        match st.returned_at_ms {
            // Within the slow start (settle ended it otherwise).
            Some(at) => Standing::Returning {
                per_mille: now_ms.saturating_sub(at) * 1000
                    / s.slow_start.as_millis().max(1) as u64,
            },
            None => Standing::Healthy,
        }
    }
}

/// An ejection that has ended starts the return (from when it ended); a return that has
/// lasted `slow_start` is over, and the endpoint's record clean again.
fn settle(st: &mut State, s: &HealthSettings, now_ms: u64) {
    if st.ejections > 0
        && st.returned_at_ms.is_none()
        && st.ejected_until_ms > 0
        && st.ejected_until_ms <= now_ms
    {
        st.returned_at_ms = Some(st.ejected_until_ms);
    }
    if st
        .returned_at_ms
        .is_some_and(|at| now_ms.saturating_sub(at) >= s.slow_start.as_millis() as u64)
    {
        st.returned_at_ms = None;
        st.ejections = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> HealthSettings {
        HealthSettings::default()
    }

    #[test]
    fn failures_in_a_row_eject_for_longer_each_time_and_a_success_resets_the_count() {
        let h = EndpointHealth::default();
        h.report(Outcome::Failure, &s(), 0);
        h.report(Outcome::Failure, &s(), 0);
        h.report(Outcome::Success, &s(), 0);
        h.report(Outcome::Failure, &s(), 0);
        assert_eq!(
            h.standing(&s(), 0),
            Standing::Cooling,
            "a failure cools, one is not enough to eject"
        );
        assert_eq!(h.standing(&s(), 1_000), Standing::Healthy);
        h.report(Outcome::Failure, &s(), 1_000);
        h.report(Outcome::Failure, &s(), 1_000);
        assert_eq!(h.standing(&s(), 1_000), Standing::Ejected);
        assert_eq!(h.standing(&s(), 10_999), Standing::Ejected);
        // Back, gradually: 10 % of the way through the slow start at 12 s.
        assert_eq!(
            h.standing(&s(), 12_000),
            Standing::Returning { per_mille: 100 }
        );
        // A failure while returning ejects again, for twice as long.
        h.report(Outcome::Failure, &s(), 12_000);
        assert_eq!(h.standing(&s(), 31_999), Standing::Ejected);
        assert_eq!(
            h.standing(&s(), 32_000),
            Standing::Returning { per_mille: 0 }
        );
        assert_eq!(h.standing(&s(), 42_000), Standing::Healthy);
        assert_eq!(h.ejections_total.load(Ordering::Relaxed), 2);
        // Fully back: one failure is again just a failure.
        h.report(Outcome::Failure, &s(), 43_000);
        assert_eq!(h.standing(&s(), 44_000), Standing::Healthy);
    }

    #[test]
    fn a_429_cools_for_its_retry_after_capped_and_never_ejects() {
        let h = EndpointHealth::default();
        for _ in 0..10 {
            h.report(Outcome::RateLimited(Some(Duration::from_secs(5))), &s(), 0);
        }
        assert_eq!(h.standing(&s(), 4_999), Standing::Cooling);
        assert_eq!(h.standing(&s(), 5_000), Standing::Healthy);
        h.report(
            Outcome::RateLimited(Some(Duration::from_secs(3600))),
            &s(),
            5_000,
        );
        assert_eq!(h.standing(&s(), 64_999), Standing::Cooling);
        assert_eq!(h.standing(&s(), 65_000), Standing::Healthy);
    }
}
