//! `sluice serve`: an OpenAI-compatible LLM gateway.
//!
//! The request path lives in [`chat`] as named phases; [`config`] is the typed, validated TOML
//! file; [`upstream`] the pooled clients (over `egress`: direct or proxy tunnel); [`metrics`] the Prometheus registry; [`server`] wires
//! them into a router with graceful shutdown; `downstream` is each client's HTTP/1.1
//! connection.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod cache_admin;
pub mod chat;
pub mod config;
#[cfg(test)]
mod differential;
mod downstream;
mod egress;
pub mod endpoint_admin;
pub mod error;
mod http1;
pub mod limiter;
pub mod limits_admin;
pub mod metrics;
pub mod openapi;
mod ops;
pub mod otel;
pub mod request_id;
pub mod routing_admin;
pub mod server;
pub mod services;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod workers;

pub use config::{Config, ConfigError, ResolvedConfig};
pub use error::GatewayError;
pub use server::{Gateway, StartError};
pub use workers::WorkerPool;
