//! Configuration of a mock engine: how fast it is, how big its KV cache is, how long its
//! answers are, which faults it injects.

use std::time::Duration;

use crate::faults::Faults;

/// Everything a [`crate::MockEngine`] is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct MockOptions {
    pub timing: TimingModel,
    pub kv_cache: KvCacheOptions,
    pub output: OutputOptions,
    /// The faults in force at start; changeable later through the admin API.
    pub faults: Faults,
    /// Mixed into every answer, so two mocks with different seeds answer differently.
    pub seed: u64,
    /// Listed by `GET /v1/models`. Chat requests naming any model are served regardless.
    pub served_models: Vec<String>,
    /// When set, `/v1/*` requests must carry `Authorization: Bearer <key>`.
    pub require_api_key: Option<String>,
    /// Provider-side limits: beyond them, 429 (see `provider_limits`).
    pub limits: crate::ProviderLimits,
    /// When set, the prefix cache's changes are published as vLLM's KV events.
    pub kv_events: Option<crate::KvEventOptions>,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            timing: TimingModel::default(),
            kv_cache: KvCacheOptions::default(),
            output: OutputOptions::default(),
            faults: Faults::default(),
            seed: 0,
            served_models: vec!["mock".to_owned()],
            require_api_key: None,
            limits: crate::ProviderLimits::default(),
            kv_events: None,
        }
    }
}

impl MockOptions {
    /// Defaults with every delay zero: the mock answers as fast as it can, which is what a
    /// benchmark of the gateway itself wants.
    pub fn zero_timing() -> Self {
        MockOptions {
            timing: TimingModel::ZERO,
            ..MockOptions::default()
        }
    }
}

/// Latency model of one engine replica. The formulas are in `docs/mock.md`:
/// TTFT = `ttft_base` + `prefill_per_token` × uncached prompt tokens; then one token every
/// `decode_interval` × (1 + `batch_slowdown` × (requests in flight − 1)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimingModel {
    pub ttft_base: Duration,
    pub prefill_per_token: Duration,
    pub decode_interval: Duration,
    /// Fractional slowdown of each decode step per additional request in flight, the cost of
    /// continuous batching.
    pub batch_slowdown: f64,
}

impl TimingModel {
    pub const ZERO: TimingModel = TimingModel {
        ttft_base: Duration::ZERO,
        prefill_per_token: Duration::ZERO,
        decode_interval: Duration::ZERO,
        batch_slowdown: 0.0,
    };
}

impl Default for TimingModel {
    /// Roughly a small model on one datacenter GPU: 20 ms to first token plus 20 µs per
    /// uncached prompt token, then 100 tokens/s per stream.
    fn default() -> Self {
        TimingModel {
            ttft_base: Duration::from_millis(20),
            prefill_per_token: Duration::from_micros(20),
            decode_interval: Duration::from_millis(10),
            batch_slowdown: 0.02,
        }
    }
}

/// The simulated prefix cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheOptions {
    /// Tokens per block; only whole blocks are cached.
    pub block_size: usize,
    /// How many blocks fit before the least recently used are evicted.
    pub capacity_blocks: usize,
}

impl Default for KvCacheOptions {
    fn default() -> Self {
        KvCacheOptions {
            block_size: 16,
            capacity_blocks: 8192,
        }
    }
}

/// The length an answer has when nothing cuts it short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputOptions {
    pub min_tokens: u32,
    pub max_tokens: u32,
}

impl Default for OutputOptions {
    fn default() -> Self {
        OutputOptions {
            min_tokens: 16,
            max_tokens: 128,
        }
    }
}

impl OutputOptions {
    /// The inclusive range natural lengths are drawn from, repaired so that it is never
    /// empty and never allows an empty answer.
    pub(crate) fn natural_range(&self) -> (u32, u32) {
        let lo = self.min_tokens.max(1);
        let hi = self.max_tokens.max(lo);
        (lo, hi)
    }
}
