//! The routing seam: a model's [`Router`] orders its endpoints for one request.
//!
//! The route phase asks the router for an [`AttemptOrder`]; the upstream phase tries the
//! endpoints in that order, moving on only when a failure is retry-safe. Round robin is the
//! first router. Prefix-aware routing (fed by vLLM KV events), session affinity and health
//! plug in as other implementations, holding their own index; the path does not change.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What a router may read of a request. Fields come as the routers that need them come
/// (a session key, the prompt's block hashes).
#[derive(Debug, Clone, Copy)]
pub struct RouteQuery<'a> {
    pub model: &'a str,
    pub tenant: &'a str,
}

/// Endpoint indices (into the model's endpoint list) in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOrder {
    /// `start`, `start + 1`, ... wrapping around all `len` endpoints: round robin's order,
    /// with no allocation.
    Rotation { start: usize, len: usize },
    /// An explicit order (a router that ranks endpoints).
    Ranked(Vec<usize>),
}

impl AttemptOrder {
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let (rotation, ranked) = match self {
            AttemptOrder::Rotation { start, len } => (Some((*start, *len)), &[][..]),
            AttemptOrder::Ranked(order) => (None, &order[..]),
        };
        let rotated = rotation
            .into_iter()
            .flat_map(|(start, len)| (0..len).map(move |i| (start + i) % len));
        rotated.chain(ranked.iter().copied())
    }

    /// The endpoint tried first, if any.
    pub fn first(&self) -> Option<usize> {
        self.iter().next()
    }
}

/// Orders a model's endpoints for one request. Shared by every worker: implementations keep
/// their state in atomics or behind their own locks.
pub trait Router: Send + Sync {
    /// A short name for decisions and logs (`round_robin`).
    fn name(&self) -> &'static str;
    fn attempt_order(&self, query: &RouteQuery<'_>, endpoints: usize) -> AttemptOrder;
}

/// Each request starts at the next endpoint; the others follow in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Router for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn attempt_order(&self, _query: &RouteQuery<'_>, endpoints: usize) -> AttemptOrder {
        let start = if endpoints == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % endpoints
        };
        AttemptOrder::Rotation {
            start,
            len: endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(o: &AttemptOrder) -> Vec<usize> {
        o.iter().collect()
    }

    #[test]
    fn round_robin_starts_each_request_at_the_next_endpoint_and_lists_all() {
        let rr = RoundRobin::default();
        let q = RouteQuery {
            model: "m",
            tenant: "t",
        };
        let orders: Vec<Vec<usize>> = (0..4).map(|_| order(&rr.attempt_order(&q, 3))).collect();
        assert_eq!(
            orders,
            vec![vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1], vec![0, 1, 2]]
        );
        assert_eq!(order(&rr.attempt_order(&q, 0)), Vec::<usize>::new());
    }

    #[test]
    fn a_ranked_order_is_tried_as_ranked() {
        let o = AttemptOrder::Ranked(vec![2, 0]);
        assert_eq!(order(&o), vec![2, 0]);
        assert_eq!(o.first(), Some(2));
    }
}
