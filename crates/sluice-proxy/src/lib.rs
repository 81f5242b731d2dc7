//! sluice proxy: records the HTTP exchanges between a service and its LLM providers and
//! replays them, so tests and CI runs are fast, free, offline and deterministic.
//!
//! One listener serves three kinds of request. Origin-form requests (`POST /v1/...`, the
//! client's base URL points at the proxy) follow reverse [`Route`]s by path prefix.
//! Absolute-form requests (`GET http://host/path`, the client's `HTTP_PROXY`) go to the
//! URL they name. CONNECT tunnels (`HTTPS_PROXY`) are intercepted with certificates signed
//! by the proxy's own [`CertificateAuthority`] and their requests go to `https://host:port`.
//! Each request gets a [`RequestKey`] (see [`key`]; forward requests include their origin);
//! recordings live one JSON file per exchange in a directory ([`ReplayStore`]); the
//! [`Mode`] decides between disk and upstream. Credentials never count in the key and never
//! reach disk ([`redact`]). Each run's usage and drift are kept in `DIR/.sluice/`
//! ([`usage`]) for [`usage_report`] and [`prune`]; `/_sluice/` paths are the proxy's own
//! ([`metrics`], the entry listing), answered before any routing. The user guide is
//! `docs/proxy.md`.

mod admin;
mod atomic_file;
pub mod ca;
pub mod compare;
pub mod config;
pub mod config_file;
mod diff_mode;
pub mod drift;
pub mod entry;
mod error;
pub mod fields;
mod forward;
mod handler;
pub mod headers;
pub mod key;
pub mod metrics;
pub mod nearest;
pub mod redact;
mod replay;
pub mod report;
pub mod route;
mod server;
pub mod store;
mod tunnel;
pub mod usage;

pub use ca::CertificateAuthority;
pub use config::{
    KeyOptions, Mode, ProxyConfig, ReplayTiming, UnknownMode, DEFAULT_DIFF_IGNORE,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_UPSTREAM_READ_TIMEOUT,
};
pub use config_file::ProxyFile;
pub use drift::{DriftItem, DriftReport, DriftVerdict};
pub use entry::Entry;
pub use error::ProxyError;
pub use key::{NormalisedRequest, RequestKey, KEY_VERSION};
pub use report::{
    prune, render_report, usage_report, usage_report_of_runs, PruneOptions, PruneOutcome,
    UnreachableEntry, UsageReport, DEFAULT_MIN_USED_PERCENT,
};
pub use route::Route;
pub use server::{serve, ProxyServer};
pub use store::ReplayStore;
pub use usage::LastRun;
