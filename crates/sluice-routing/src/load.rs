//! What each endpoint is doing, as the router sees it: requests in flight, prompt tokens
//! sent and not yet answered (prefill still queued or running), streams decoding. Counted
//! exactly once by a drop guard per attempt, whatever way the attempt ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct EndpointLoad {
    in_flight: AtomicU64,
    prefill_tokens: AtomicU64,
    decoding: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadSnapshot {
    pub in_flight: u64,
    /// Prompt tokens sent whose first answer token has not come back.
    pub prefill_tokens: u64,
    /// Requests past their first token.
    pub decoding: u64,
}

impl EndpointLoad {
    pub fn snapshot(&self) -> LoadSnapshot {
        LoadSnapshot {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            prefill_tokens: self.prefill_tokens.load(Ordering::Relaxed),
            decoding: self.decoding.load(Ordering::Relaxed),
        }
    }

    /// Counts one attempt with `prompt_tokens` of prefill until the guard drops.
    pub fn start(self: &Arc<Self>, prompt_tokens: u64) -> LoadGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.prefill_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        LoadGuard {
            load: self.clone(),
            prompt_tokens,
            decoding: false,
        }
    }
}

/// One attempt's part of its endpoint's load.
#[derive(Debug)]
pub struct LoadGuard {
    load: Arc<EndpointLoad>,
    prompt_tokens: u64,
    decoding: bool,
}

impl LoadGuard {
    /// The first answer token came back: the prompt is prefilled; the request decodes.
    pub fn first_token(&mut self) {
        if !self.decoding {
            self.decoding = true;
            self.load
                .prefill_tokens
                .fetch_sub(self.prompt_tokens, Ordering::Relaxed);
            self.load.decoding.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.decoding {
            self.load.decoding.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.load
                .prefill_tokens
                .fetch_sub(self.prompt_tokens, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_counts_its_attempt_once_whichever_way_it_ends() {
        let load = Arc::new(EndpointLoad::default());
        let a = load.start(100);
        let mut b = load.start(50);
        assert_eq!(
            load.snapshot(),
            LoadSnapshot {
                in_flight: 2,
                prefill_tokens: 150,
                decoding: 0
            }
        );
        b.first_token();
        b.first_token();
        assert_eq!(
            load.snapshot(),
            LoadSnapshot {
                in_flight: 2,
                prefill_tokens: 100,
                decoding: 1
            }
        );
        drop(a);
        drop(b);
        assert_eq!(load.snapshot(), LoadSnapshot::default());
    }
}
