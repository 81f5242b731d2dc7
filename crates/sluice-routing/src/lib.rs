//! Where a request goes.
//!
//! - [`blocks`]: the gateway's own chained hash over a prompt's token blocks. Engines hash
//!   blocks with a seeded hash no one else can recompute, so the index names every block by
//!   this hash of its tokens and keeps, per engine, the engine's names for them.
//! - [`PrefixIndex`]: which engine (pod) holds which blocks, fed by the engines' KV events and
//!   by what was routed; answers how many leading blocks of a prompt each candidate holds.
//! - [`KvSubscriber`]: one engine's KV events kept applied to the index: replay on connect
//!   and on gaps, purge on restart, reconnect with backoff.
//! - [`ModelRouter`]: a model's endpoints ranked per request by its policy (round robin,
//!   least loaded, prefix aware) with session affinity on top; the load each endpoint carries.
//! - [`HealthCheck`]: how an endpoint is checked while no traffic reaches it.
//! - [`PromptTokenizer`]: a chat request's prompt tokens as the engine computes them (the
//!   model's tokenizer and chat template, or the mock engine's).
//! - [`zmtp`]: the client side of ZeroMQ's wire protocol, for the engines' event sockets.

pub mod blocks;
mod health;
mod health_check;
mod kv_subscriber;
mod load;
mod prefix_index;
mod retry_budget;
mod router;
mod tokenize;
pub mod zmtp;

pub use blocks::{BlockHasher, OwnHash};
pub use health::{EndpointHealth, HealthSettings, Outcome, Standing};
pub use health_check::{CheckRecord, HealthCheck, TcpConnect};
pub use kv_subscriber::{KvSource, KvSubscriber, SubscriberSettings, SubscriberStats};
pub use load::{EndpointLoad, LoadGuard, LoadSnapshot};
pub use prefix_index::{Applied, PodId, PodSummary, PrefixIndex, Rejected};
pub use retry_budget::{RetryBudget, RetrySettings};
pub use router::{
    AttemptOrder, EndpointChangeError, EndpointId, EndpointSpec, EndpointTable, EndpointTarget,
    EndpointView, ModelRouter, Policy, Reason, RetryCounts, RetryReason, RetryRefused,
    RouteDecision, RouteQuery, RoutingSettings, MAX_SESSION_ID_BYTES,
};
pub use tokenize::{
    HfChatTokenizer, PromptTokenizer, SegmentCacheStats, TokenizeError, TokenizerLoadError,
    DEFAULT_TOKENIZER_CACHE_BYTES,
};
