//! [`SingleFlight`]: identical misses that arrive together share one upstream call.
//!
//! The first miss for a key becomes the leader and goes upstream; the others wait for it
//! (up to a timeout) and are served from what it stores. A leader that fails, or is dropped
//! without an answer (its client left, its stream broke), releases its waiters, who then go
//! upstream themselves: a failure is never shared. The leader's guard publishes exactly once,
//! on `complete` or on drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::entry::Entry;
use crate::key::CacheKey;

/// What a leader's flight ended with: the stored entry, or nothing to share.
type Outcome = Option<Option<Arc<Entry>>>;

#[derive(Default)]
pub struct SingleFlight {
    flights: Mutex<HashMap<CacheKey, watch::Receiver<Outcome>>>,
}

/// Which part a request plays for its key.
pub enum Role {
    /// Go upstream, then `complete` with what was stored.
    Leader(Leader),
    /// Another request is already upstream for this key: wait for it.
    Waiter(Waiter),
}

/// The request that goes upstream for a key.
pub struct Leader {
    key: CacheKey,
    flights: Arc<SingleFlight>,
    done: Option<watch::Sender<Outcome>>,
}

/// A request waiting on a leader.
pub struct Waiter {
    outcome: watch::Receiver<Outcome>,
}

/// What a waiter gets.
#[derive(Debug)]
pub enum Waited {
    /// The leader's answer, stored.
    Served(Arc<Entry>),
    /// The leader failed, stored nothing, or took longer than the wait allows: go upstream.
    GoUpstream,
}

impl SingleFlight {
    /// Joins the flight for `key`, leading it if there is none.
    pub fn join(self: &Arc<Self>, key: CacheKey) -> Role {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(outcome) = flights.get(&key) {
            return Role::Waiter(Waiter {
                outcome: outcome.clone(),
            });
        }
        let (done, outcome) = watch::channel(None);
        flights.insert(key, outcome);
        Role::Leader(Leader {
            key,
            flights: self.clone(),
            done: Some(done),
        })
    }

    /// Flights under way (for tests and the admin view).
    pub fn in_flight(&self) -> usize {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Leader {
    /// Ends the flight: waiters get `stored`, or go upstream themselves when it is `None`.
    pub fn complete(mut self, stored: Option<Arc<Entry>>) {
        self.publish(stored);
    }

    fn publish(&mut self, stored: Option<Arc<Entry>>) {
        let Some(done) = self.done.take() else {
            return;
        };
        // Out of the table first: a request arriving from now on finds the entry in the
        // cache (or misses and leads a new flight), never a finished flight.
        self.flights
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        let _ = done.send(Some(stored));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.publish(None);
    }
}

impl Waiter {
    /// Waits up to `timeout` for the leader.
    pub async fn wait(mut self, timeout: Duration) -> Waited {
        let outcome = tokio::time::timeout(timeout, self.outcome.wait_for(Option::is_some)).await;
        match outcome {
            Ok(Ok(outcome)) => match outcome.clone() {
                Some(Some(entry)) => Waited::Served(entry),
                _ => Waited::GoUpstream,
            },
            // Timed out, or the leader vanished without publishing (cannot happen: its drop
            // publishes).
            _ => Waited::GoUpstream,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::entry::StoredAnswer;
    use bytes::Bytes;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry::new(
            "t",
            "m",
            "application/json",
            None,
            StoredAnswer::Completion(Bytes::from_static(b"{}")),
        ))
    }

    fn lead(f: &Arc<SingleFlight>, key: CacheKey) -> Leader {
        match f.join(key) {
            Role::Leader(l) => l,
            Role::Waiter(_) => panic!("expected to lead"),
        }
    }

    fn wait(f: &Arc<SingleFlight>, key: CacheKey) -> Waiter {
        match f.join(key) {
            Role::Waiter(w) => w,
            Role::Leader(_) => panic!("expected to wait"),
        }
    }

    #[tokio::test]
    async fn waiters_get_what_the_leader_stored() {
        let f = Arc::new(SingleFlight::default());
        let k = CacheKey([1; 32]);
        let leader = lead(&f, k);
        let waiters: Vec<_> = (0..5).map(|_| wait(&f, k)).collect();
        // Another key flies on its own.
        let _other = lead(&f, CacheKey([2; 32]));
        let e = entry();
        leader.complete(Some(e.clone()));
        for w in waiters {
            match w.wait(Duration::from_secs(5)).await {
                Waited::Served(got) => assert!(Arc::ptr_eq(&got, &e)),
                Waited::GoUpstream => panic!("should be served"),
            }
        }
        // The flight is over: the next miss leads again.
        let _ = lead(&f, k);
    }

    #[tokio::test]
    async fn a_failed_or_dropped_leader_sends_its_waiters_upstream() {
        let f = Arc::new(SingleFlight::default());
        let k = CacheKey([3; 32]);
        let leader = lead(&f, k);
        let w = wait(&f, k);
        leader.complete(None);
        assert!(matches!(
            w.wait(Duration::from_secs(5)).await,
            Waited::GoUpstream
        ));

        let leader = lead(&f, k);
        let w = wait(&f, k);
        drop(leader);
        assert!(matches!(
            w.wait(Duration::from_secs(5)).await,
            Waited::GoUpstream
        ));
        assert_eq!(f.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_leader_is_waited_for_only_so_long() {
        let f = Arc::new(SingleFlight::default());
        let k = CacheKey([4; 32]);
        let _leader = lead(&f, k);
        let w = wait(&f, k);
        assert!(matches!(
            w.wait(Duration::from_secs(3)).await,
            Waited::GoUpstream
        ));
    }
}
