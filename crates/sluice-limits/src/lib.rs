//! Admission control: per-model rate-limit pools shared by every gateway instance.
//!
//! - [`limits`]: what a model's limits and job types are, and the checks on a config.
//! - [`window`]: rolling windows (never clock-aligned ones).
//! - [`pool`]: one model's capacity on this instance, job-type slots, the admission
//!   decision, waiting in a fair queue, and reservations settled exactly once.
//! - [`ratios`]: flexible job-type ratios.
//! - [`clock`]: the injectable clock the windows and waits run on.

pub mod clock;
pub mod limits;
pub mod pool;
pub mod ratios;
pub mod window;

pub use clock::{Clock, TokioClock};
pub use limits::{Dimension, Flexibility, JobType, Limits, LimitsError, ModelLimits};
pub use pool::{
    Demand, Lease, ModelPool, PoolView, Refusal, RefusedBy, Reservation, Used, WindowView,
};
