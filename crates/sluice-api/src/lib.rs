//! Wire formats spoken by sluice, as plain types with serde and no I/O.
//!
//! Everything that crosses a socket in sluice is described here once, so the gateway, the mock
//! engine and the tools agree on one definition:
//! - [`chat`]: OpenAI chat completions — the request (parsed leniently, unknown fields kept),
//!   the response, stream chunks and usage.
//! - [`error`]: the OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`.
//! - [`kv_events`]: vLLM's KV-cache events (both MessagePack encodings) and their ZMQ frames.
//! - [`mock_tokenizer`]: the mock engine's tokenizer and chat template.
//! - [`models`]: the `GET /v1/models` list.
//! - [`ProxyFields`]: the few request fields a proxy acts on, read without building the request.
//! - [`ratelimit`]: OpenAI's `x-ratelimit-*` headers and the Go durations their resets use.
//! - [`sse`]: server-sent-event framing, an incremental parser and an encoder.

pub mod chat;
pub mod error;
pub mod kv_events;
pub mod mock_tokenizer;
pub mod models;
mod proxy_fields;
pub mod ratelimit;
pub mod sse;
mod usage_scan;

pub use chat::{ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, RequestError, Usage};
pub use error::{ErrorObject, ErrorResponse};
pub use proxy_fields::ProxyFields;
pub use usage_scan::{ChunkShape, NotACompletion};
