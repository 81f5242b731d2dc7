//! `sluice mock`: an OpenAI-compatible LLM engine that behaves like a real one without a
//! model. Answers are deterministic prose or tool calls made up from the request; a timing
//! model paces them like continuous-batching inference (TTFT from uncached prompt tokens,
//! then a decode interval that grows with the batch); a simulated prefix KV cache reports
//! `cached_tokens`; and faults (errors, stalls, disconnects, broken tool arguments) can be
//! injected deterministically and changed at run time through `/admin/*`.
//!
//! The user guide, with the tokenizer, chat template and formulas spelled out, is
//! `docs/mock.md`.

mod completion;
mod engine;
mod faults;
mod kv_cache;
mod kv_events;
mod options;
mod precise_timer;
mod prng;
mod provider_limits;
mod request_log;
mod routes;
mod server;
mod stats;
mod timing;
mod tool_args;
mod vocab;

pub use engine::MockEngine;
pub use faults::{Faults, FaultsError};
pub use kv_events::{KvEventOptions, KvPublisher};
pub use options::{KvCacheOptions, MockOptions, OutputOptions, TimingModel};
pub use provider_limits::ProviderLimits;
pub use server::{serve, MockServer};
pub use sluice_api::kv_events::KvEncoding;
pub use stats::MockStats;
