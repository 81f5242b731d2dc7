//! sluice proxy: records the HTTP exchanges between a service and its LLM providers and
//! replays them, so tests and CI runs are fast, free, offline and deterministic.
//!
//! The proxy is a reverse proxy: the client's base URL points at it and it forwards path
//! and query to one upstream. Each request gets a [`RequestKey`] (see [`key`]); recordings
//! live one JSON file per exchange in a directory ([`ReplayStore`]); the [`Mode`] decides
//! between disk and upstream. Credentials never count in the key and never reach disk
//! ([`redact`]). The user guide is `docs/proxy.md`.

pub mod config;
pub mod entry;
mod error;
mod forward;
mod handler;
pub mod headers;
pub mod key;
pub mod redact;
mod replay;
mod server;
pub mod store;

pub use config::{KeyOptions, Mode, ProxyConfig, ReplayTiming, UnknownMode};
pub use entry::Entry;
pub use key::{NormalisedRequest, RequestKey, KEY_VERSION};
pub use server::{serve, ProxyServer};
pub use store::ReplayStore;
