//! Counters of what the engine did, and the per-request guard that keeps them honest when a
//! client goes away mid-answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// How many `x-request-id` values [`MockStats::recent_request_ids`] keeps.
pub(crate) const RECENT_IDS: usize = 64;

/// A snapshot of the engine's counters, as served by `GET /admin/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MockStats {
    /// Chat completion requests received, including rejected ones.
    pub requests_total: u64,
    /// Accepted chat requests not yet finished.
    pub active: u64,
    /// Requests answered in full.
    pub completed: u64,
    /// Requests whose client went away before the answer was complete.
    pub cancelled: u64,
    /// Faults that actually took effect (errors, stalls, disconnects, broken tool arguments).
    pub faults_injected: u64,
    pub prompt_tokens_total: u64,
    pub cached_tokens_total: u64,
    /// Sum of `usage.completion_tokens` over completed requests.
    pub completion_tokens_total: u64,
    /// Requests the provider-side limits let through, and the tokens (prompt and answer)
    /// they were charged.
    pub admitted_total: u64,
    pub admitted_tokens_total: u64,
    /// Requests answered 429 by the provider-side limits.
    pub rate_limited_total: u64,
    /// The last [`RECENT_IDS`] `x-request-id` values received on `/v1/*`, oldest first.
    pub recent_request_ids: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests_total: AtomicU64,
    active: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    faults_injected: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    admitted: AtomicU64,
    admitted_tokens: AtomicU64,
    rate_limited: AtomicU64,
    recent_ids: Mutex<VecDeque<String>>,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> MockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MockStats {
            requests_total: get(&self.requests_total),
            active: get(&self.active),
            completed: get(&self.completed),
            cancelled: get(&self.cancelled),
            faults_injected: get(&self.faults_injected),
            prompt_tokens_total: get(&self.prompt_tokens),
            cached_tokens_total: get(&self.cached_tokens),
            completion_tokens_total: get(&self.completion_tokens),
            admitted_total: get(&self.admitted),
            admitted_tokens_total: get(&self.admitted_tokens),
            rate_limited_total: get(&self.rate_limited),
            recent_request_ids: self
                .recent_ids
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
        }
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn count_request(&self) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_admitted(&self, tokens: u64) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
        self.admitted_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    pub(crate) fn count_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_fault(&self) {
        self.faults_injected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_prompt(&self, prompt_tokens: u64, cached_tokens: u64) {
        self.prompt_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        self.cached_tokens
            .fetch_add(cached_tokens, Ordering::Relaxed);
    }

    pub(crate) fn record_request_id(&self, id: &str) {
        let mut ids = self
            .recent_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ids.len() == RECENT_IDS {
            ids.pop_front();
        }
        ids.push_back(id.to_owned());
    }
}

/// Held for the life of one accepted chat request. Dropping it without [`Self::complete`] or
/// [`Self::fail`] means the client went away: hyper drops the handler future, or the
/// response body stream, when the connection closes.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    counters: Arc<Counters>,
    ended: bool,
    /// The request's place under the provider's concurrency limit, freed with the guard.
    place: Option<crate::provider_limits::InFlightPlace>,
}

impl RequestGuard {
    pub(crate) fn begin(counters: Arc<Counters>) -> Self {
        counters.active.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            counters,
            ended: false,
            place: None,
        }
    }

    /// Keeps `place` until the request ends.
    pub(crate) fn hold(&mut self, place: crate::provider_limits::InFlightPlace) {
        self.place = Some(place);
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The answer was delivered in full.
    pub(crate) fn complete(&mut self, completion_tokens: u64) {
        if !self.ended {
            self.ended = true;
            self.counters.completed.fetch_add(1, Ordering::Relaxed);
            self.counters
                .completion_tokens
                .fetch_add(completion_tokens, Ordering::Relaxed);
        }
    }

    /// The mock itself ended the request (an injected fault): neither completed nor a
    /// client cancellation.
    pub(crate) fn fail(&mut self) {
        self.ended = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        if !self.ended {
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_outcomes() {
        let c = Arc::new(Counters::default());
        let mut done = RequestGuard::begin(c.clone());
        let dropped = RequestGuard::begin(c.clone());
        let mut failed = RequestGuard::begin(c.clone());
        assert_eq!(c.snapshot().active, 3);
        done.complete(12);
        done.complete(12);
        failed.fail();
        drop((done, dropped, failed));
        let s = c.snapshot();
        assert_eq!((s.active, s.completed, s.cancelled), (0, 1, 1));
        assert_eq!(s.completion_tokens_total, 12);
    }

    #[test]
    fn recent_ids_keep_the_last_64() {
        let c = Counters::default();
        for i in 0..100 {
            c.record_request_id(&format!("r{i}"));
        }
        let ids = c.snapshot().recent_request_ids;
        assert_eq!(ids.len(), RECENT_IDS);
        assert_eq!(ids.first().map(String::as_str), Some("r36"));
        assert_eq!(ids.last().map(String::as_str), Some("r99"));
    }
}
