//! Coordinators: who decides each instance's lease of a model's limits.
//!
//! - [`LocalCoordinator`]: a single instance holds every limit whole (the default).
//! - [`RedisCoordinator`]: instances naming the same Redis register, heartbeat, and get their
//!   leases from one Lua script (see `allocate.lua`); membership changes are published so
//!   every instance looks again at once. Usage travels with the heartbeat: no Redis round trip
//!   on the request path.

mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use self::redis::{FleetSettings, RedisCoordinator, RedisFailure};
use crate::pool::ModelPool;

/// What the admin view and metrics say about coordination.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorState {
    /// `local` or `redis`.
    pub kind: &'static str,
    /// Live instances sharing the pools.
    pub instances: u64,
    /// `None` while coordination works; else since when it has not, and what the
    /// instance does meanwhile (`fail_static`, `fail_open`, `fail_closed`).
    pub degraded: Option<Degraded>,
    /// Coordination calls that failed since the start.
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Degraded {
    pub since: std::time::SystemTime,
    pub mode: RedisFailure,
    pub error: String,
}

/// Hands each model's pool its lease, and spreads a provider's pause.
pub trait Coordinator: Send + Sync {
    fn state(&self) -> CoordinatorState;

    /// An upstream asked for a pause of `model` (a 429 with `retry-after`): no instance
    /// sends it anything until the pause ends.
    fn pause(&self, model: &str, pause: Duration);

    /// Coordinates one more pool from now on (an API key's, made on its first request).
    fn add_pool(&self, pool: Arc<ModelPool>);
}

/// One instance alone: every pool keeps the whole of its limits.
pub struct LocalCoordinator {
    pools: std::sync::RwLock<HashMap<String, Arc<ModelPool>>>,
}

impl LocalCoordinator {
    pub fn new(pools: &HashMap<String, Arc<ModelPool>>) -> LocalCoordinator {
        LocalCoordinator {
            pools: std::sync::RwLock::new(pools.clone()),
        }
    }
}

impl Coordinator for LocalCoordinator {
    fn state(&self) -> CoordinatorState {
        CoordinatorState {
            kind: "local",
            instances: 1,
            degraded: None,
            errors: 0,
        }
    }

    fn pause(&self, model: &str, pause: Duration) {
        let pools = self
            .pools
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pool) = pools.get(model) {
            pool.pause(pause);
        }
    }

    fn add_pool(&self, pool: Arc<ModelPool>) {
        // Alone, a pool keeps the whole of its limits: nothing to hand it.
        self.pools
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pool.limits().model.clone(), pool);
    }
}
