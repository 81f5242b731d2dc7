//! Admission control: per-model rate-limit pools shared by every gateway instance.
//!
//! - [`limits`]: what a model's limits and job types are, and the checks on a config.
//! - [`window`]: rolling windows (never clock-aligned ones).
//! - [`pool`]: one model's capacity on this instance, job-type slots, the admission
//!   decision, waiting in a fair queue, and reservations settled exactly once.
//! - [`ratios`]: flexible job-type ratios.
//! - [`coordinator`]: who gives each pool its lease — the local one, or Redis for many
//!   instances (registration, heartbeats, allocation in Lua, published changes).
//! - [`clock`]: the injectable clock the windows and waits run on.

pub mod clock;
pub mod coordinator;
pub mod limits;
pub mod pool;
pub mod ratios;
pub mod window;

pub use clock::{Clock, TokioClock};
pub use coordinator::{
    Coordinator, CoordinatorState, FleetSettings, LocalCoordinator, RedisCoordinator, RedisFailure,
};
pub use limits::{Dimension, Flexibility, JobType, Limits, LimitsError, ModelLimits};
pub use pool::{
    Demand, Lease, MemoryView, ModelPool, PoolView, Refusal, RefusedBy, Reservation, Used,
    WindowView,
};
