//! The gateway's inference cache: answers stored by request, served again to the same
//! tenant asking the same model the same thing.
//!
//! - [`key`]: [`CacheKey`], BLAKE3 over the tenant, the model, the endpoint group and the
//!   canonical request (the fields that do not change the answer left out).
//! - [`policy`]: [`CacheMode`] and [`CachePolicy`], the model's default and a request's
//!   override (header or body field).
//! - [`entry`]: [`Entry`], a stored answer (a completion, or a stream's events) and its
//!   versioned encoding.
//! - [`memory`]: [`MemoryFront`], recently used entries in memory under a byte bound.
//! - [`flight`]: [`SingleFlight`], identical concurrent misses sharing one upstream call.
//! - [`replay`]: a stored stream served as a completion and the other way round, with a
//!   fresh `id` and `created`.
//! - [`redis`]: [`redis::RedisEntries`], entries in Redis, shared by every gateway on it.
//! - [`sqlite`]: [`SqliteEntries`], entries in the embedded store (the gateway's SQLite
//!   file), bounded in bytes, surviving restarts.
//!
//! - [`tools`]: whether an answer's tool calls are fit to replay (offered tools, JSON
//!   arguments that match the tool's schema).
//!
//! This crate knows nothing of HTTP or of the gateway: the gateway's cache phases call it.

pub mod entry;
pub mod flight;
pub mod key;
pub mod memory;
pub mod policy;
pub mod redis;
pub mod replay;
pub mod sqlite;
pub mod tools;

pub use entry::{Entry, EntryError, SavedUsage, StoredAnswer};
pub use flight::{Leader, Role, SingleFlight, Waited, Waiter};
pub use key::{CacheKey, KeyError, KeyMemo, CHAT_COMPLETIONS, IGNORED_FIELDS, KEY_SCHEME};
pub use memory::{FrontStats, MemoryFront};
pub use policy::{CacheMode, CachePolicy, OverrideError, RequestOverride};
pub use sqlite::{Purge, SqliteEntries, StoreStats};
