//! The mock as a strict provider: requests per minute and tokens per minute as token buckets,
//! and requests in flight, enforced the way hosted providers do. Beyond them a request gets
//! 429 with `retry-after` and OpenAI's `x-ratelimit-*` headers (which every answer carries),
//! and nothing is generated. What was admitted is counted, so a test sees a gateway fleet
//! from the provider's side.
//!
//! A bucket holds up to its limit and refills at the limit per minute, continuously: it lets
//! through everything a rolling one-minute window of the same limit would, and a burst of the
//! whole limit after a quiet minute. A request is charged its prompt tokens and the tokens
//! the mock will generate for it (known when it is admitted), whether or not the client stays
//! to read them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// `sluice mock --rpm/--tpm/--max-concurrent`; `None` is not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u64>,
}

impl ProviderLimits {
    pub fn is_unlimited(&self) -> bool {
        *self == ProviderLimits::default()
    }
}

#[derive(Debug)]
struct Bucket {
    limit: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn new(limit: u64, now: Instant) -> Bucket {
        Bucket {
            limit: limit as f64,
            level: limit as f64,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let minutes = now.saturating_duration_since(self.updated).as_secs_f64() / 60.0;
        self.level = (self.level + minutes * self.limit).min(self.limit);
        self.updated = now;
    }

    /// How long until `amount` is in the bucket (zero if it is now).
    fn wait_for(&self, amount: f64) -> Duration {
        if self.level >= amount {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((amount - self.level) / self.limit * 60.0)
    }

    /// Until the bucket is full again.
    fn full_in(&self) -> Duration {
        Duration::from_secs_f64((self.limit - self.level) / self.limit * 60.0)
    }
}

/// One dimension as the `x-ratelimit-*` headers describe it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Window {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

/// What the headers of one answer say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RateHeaders {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl RateHeaders {
    /// Writes OpenAI's `x-ratelimit-*` fields for the limits set.
    pub(crate) fn apply(&self, headers: &mut axum::http::HeaderMap) {
        use axum::http::{HeaderName, HeaderValue};
        use sluice_api::ratelimit::{go_duration, REQUESTS_HEADERS, TOKENS_HEADERS};
        for (names, window) in [
            (REQUESTS_HEADERS, self.requests),
            (TOKENS_HEADERS, self.tokens),
        ] {
            let Some(w) = window else { continue };
            let values = [
                w.limit.to_string(),
                w.remaining.to_string(),
                go_duration(w.reset),
            ];
            for (name, value) in names.iter().zip(values) {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(HeaderName::from_static(name), v);
                }
            }
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Limited {
    /// `requests`, `tokens` or `concurrency`, as OpenAI's error `type` names the first two.
    pub what: &'static str,
    pub limit: u64,
    pub retry_after: Duration,
    pub headers: RateHeaders,
}

#[derive(Debug)]
struct GateState {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    in_flight: u64,
}

#[derive(Debug)]
pub(crate) struct ProviderGate {
    limits: ProviderLimits,
    state: Mutex<GateState>,
}

/// A request admitted under the concurrency limit; leaving frees its place.
#[derive(Debug)]
pub(crate) struct InFlightPlace {
    gate: Arc<ProviderGate>,
}

impl Drop for InFlightPlace {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

impl ProviderGate {
    pub(crate) fn new(limits: ProviderLimits) -> ProviderGate {
        let now = Instant::now();
        ProviderGate {
            limits,
            state: Mutex::new(GateState {
                requests: limits.requests_per_minute.map(|l| Bucket::new(l, now)),
                tokens: limits.tokens_per_minute.map(|l| Bucket::new(l, now)),
                in_flight: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a request of `tokens` (prompt and answer) or says which limit refused it.
    /// The concurrency place is held until the returned value is dropped.
    pub(crate) fn admit(
        self: &Arc<Self>,
        tokens: u64,
    ) -> Result<(InFlightPlace, RateHeaders), Limited> {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        for b in [&mut state.requests, &mut state.tokens]
            .into_iter()
            .flatten()
        {
            b.refill(now);
        }
        let refused = |state: &GateState, what, limit, retry_after| Limited {
            what,
            limit,
            retry_after,
            headers: headers(state),
        };
        if let Some(max) = self.limits.max_concurrent {
            if state.in_flight >= max {
                return Err(refused(state, "concurrency", max, Duration::from_secs(1)));
            }
        }
        if let Some(b) = &state.requests {
            let wait = b.wait_for(1.0);
            if !wait.is_zero() {
                return Err(refused(state, "requests", b.limit as u64, wait));
            }
        }
        if let Some(b) = &state.tokens {
            let wait = b.wait_for(tokens as f64);
            if !wait.is_zero() {
                // A request larger than the whole bucket waits a whole minute and more.
                return Err(refused(state, "tokens", b.limit as u64, wait));
            }
        }
        if let Some(b) = &mut state.requests {
            b.level -= 1.0;
        }
        if let Some(b) = &mut state.tokens {
            b.level -= tokens as f64;
        }
        state.in_flight += 1;
        let h = headers(state);
        Ok((InFlightPlace { gate: self.clone() }, h))
    }
}

fn headers(state: &GateState) -> RateHeaders {
    let window = |b: &Option<Bucket>| {
        b.as_ref().map(|b| Window {
            limit: b.limit as u64,
            remaining: b.level.max(0.0).floor() as u64,
            reset: b.full_in(),
        })
    };
    RateHeaders {
        requests: window(&state.requests),
        tokens: window(&state.tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn buckets_admit_the_limit_then_refill_a_share_a_second() {
        let gate = Arc::new(ProviderGate::new(ProviderLimits {
            tokens_per_minute: Some(6_000),
            requests_per_minute: Some(100),
            max_concurrent: None,
        }));
        let (a, h) = gate.admit(5_000).unwrap();
        assert_eq!(h.tokens.unwrap().remaining, 1_000);
        assert_eq!(h.requests.unwrap().remaining, 99);
        drop(a);
        let refused = gate.admit(2_000).unwrap_err();
        assert_eq!(refused.what, "tokens");
        assert_eq!(refused.limit, 6_000);
        // 1 000 more tokens come back in 10 s.
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        let (_b, h) = gate.admit(2_000).unwrap();
        assert_eq!(h.tokens.unwrap().remaining, 0);
        assert_eq!(h.tokens.unwrap().reset, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_and_concurrency_refuse_with_their_own_names() {
        let gate = Arc::new(ProviderGate::new(ProviderLimits {
            requests_per_minute: Some(2),
            max_concurrent: Some(1),
            tokens_per_minute: None,
        }));
        let held = gate.admit(10).unwrap();
        assert_eq!(gate.admit(10).unwrap_err().what, "concurrency");
        drop(held);
        let _second = gate.admit(10).unwrap();
        let third = gate.admit(10);
        let e = third.unwrap_err();
        // Concurrency is checked first: the second is still in flight.
        assert_eq!(e.what, "concurrency");
        drop(_second);
        let e = gate.admit(10).unwrap_err();
        assert_eq!(e.what, "requests");
        assert_eq!(e.retry_after, Duration::from_secs(30));
    }
}
