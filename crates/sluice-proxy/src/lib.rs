//! sluice proxy: records the HTTP exchanges between a service and its LLM providers and
//! replays them, so tests and CI runs are fast, free, offline and deterministic.
//!
//! The proxy is a reverse proxy: the client's base URL points at it and it forwards path
//! and query to one upstream. Each request gets a [`RequestKey`] (see [`key`]); recordings
//! live one JSON file per exchange in a directory ([`ReplayStore`]); the [`Mode`] decides
//! between disk and upstream. Credentials never count in the key and never reach disk
//! ([`redact`]). Each run's usage and drift are kept in `DIR/.sluice/` ([`usage`]) for
//! [`usage_report`] and [`prune`]; `/_sluice/` paths are the proxy's own ([`metrics`],
//! the entry listing). The user guide is `docs/proxy.md`.

mod admin;
mod atomic_file;
pub mod compare;
pub mod config;
mod diff_mode;
pub mod drift;
pub mod entry;
mod error;
mod forward;
mod handler;
pub mod headers;
pub mod key;
pub mod metrics;
pub mod redact;
mod replay;
pub mod report;
mod server;
pub mod store;
pub mod usage;

pub use config::{KeyOptions, Mode, ProxyConfig, ReplayTiming, UnknownMode, DEFAULT_DIFF_IGNORE};
pub use drift::{DriftItem, DriftReport, DriftVerdict};
pub use entry::Entry;
pub use error::RecordingsError;
pub use key::{NormalisedRequest, RequestKey, KEY_VERSION};
pub use report::{prune, render_report, usage_report, PruneOptions, PruneOutcome, UsageReport};
pub use server::{serve, ProxyServer};
pub use store::ReplayStore;
pub use usage::LastRun;
