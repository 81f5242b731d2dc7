//! `[models.NAME.routing]`: how a model's endpoints are chosen, and the engines' KV events
//! (`kv_events`, `kv_replay` on each endpoint) that prefix-aware routing follows.
//!
//! ```toml
//! [models.llama.routing]
//! policy = "prefix_aware"      # or "round_robin" (default), "least_loaded"
//! tokenizer = "mock"           # how the engines tokenize prompts (prefix_aware)
//! block_size = 16              # the engines' KV block size, in tokens
//! session_ttl = "10m"          # pin x-session-id to its endpoint this long
//! imbalance = 2.0
//! prefill_weight = 1.0
//!
//! [[models.llama.endpoints]]
//! url = "http://vllm-0:8000/v1"
//! kv_events = "tcp://vllm-0:5557"
//! kv_replay = "tcp://vllm-0:5558"
//! ```

use serde::Deserialize;
use sluice_routing::{Policy, RoutingSettings};

use super::{ConfigDuration, ConfigProblem};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    pub policy: Option<PolicyName>,
    /// How the engines turn a chat request into prompt tokens; prefix-aware routing must
    /// see the same tokens. `"mock"`: the mock engine's.
    pub tokenizer: Option<String>,
    /// The engines' KV-cache block size in tokens (vLLM's default: 16).
    pub block_size: Option<u64>,
    /// Session affinity: requests with the same `x-session-id` go to the same endpoint for
    /// this long after the last one. Absent: no affinity.
    pub session_ttl: Option<ConfigDuration>,
    /// Prefix-aware: the cheapest endpoint yields to the least loaded when it has more than
    /// `imbalance × (fewest in flight + 1)` requests in flight. Default 2.
    pub imbalance: Option<f64>,
    /// Prefix-aware: what one block of prefill costs against one stream decoding. Default 1.
    pub prefill_weight: Option<f64>,
    /// How long a routed prompt counts as cached on an engine that publishes KV events,
    /// until its events say so. Default 2s.
    pub routed_ttl: Option<ConfigDuration>,
    /// How long a routed prompt counts as cached on an engine that publishes no events.
    /// Default 5m.
    pub approximate_ttl: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    RoundRobin,
    LeastLoaded,
    PrefixAware,
}

/// How the gateway tokenizes prompts for prefix matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptTokenizer {
    /// The mock engine's tokenizer and chat template (`sluice_api::mock_tokenizer`).
    Mock,
}

/// `[models.NAME.routing]`, checked.
#[derive(Debug, Clone, Default)]
pub struct ResolvedRouting {
    pub settings: RoutingSettings,
    pub tokenizer: Option<PromptTokenizer>,
}

pub fn resolve(
    key: &str,
    config: Option<&RoutingConfig>,
    has_kv_events: bool,
    problems: &mut Vec<ConfigProblem>,
) -> ResolvedRouting {
    let key = format!("{key}.routing");
    let mut push = |k: &str, message: String| {
        problems.push(ConfigProblem {
            line: None,
            key: format!("{key}{k}"),
            message,
        })
    };
    let c = config.cloned().unwrap_or_default();
    let defaults = RoutingSettings::default();
    let policy = match c.policy {
        None | Some(PolicyName::RoundRobin) => Policy::RoundRobin,
        Some(PolicyName::LeastLoaded) => Policy::LeastLoaded,
        Some(PolicyName::PrefixAware) => Policy::PrefixAware,
    };
    let tokenizer = match c.tokenizer.as_deref() {
        None => None,
        Some("mock") => Some(PromptTokenizer::Mock),
        Some(other) => {
            push(
                ".tokenizer",
                format!("`{other}` is not a known tokenizer; the one built in is \"mock\" (the mock engine's)"),
            );
            None
        }
    };
    if policy == Policy::PrefixAware && tokenizer.is_none() && c.tokenizer.is_none() {
        push(
            ".tokenizer",
            "prefix_aware routing must tokenize prompts as the engines do; name their tokenizer \
             (\"mock\" for sluice mock engines)"
                .into(),
        );
    }
    if has_kv_events && policy != Policy::PrefixAware {
        push(
            ".policy",
            "endpoints publish kv_events but the policy is not \"prefix_aware\": nothing would \
             read them; set policy = \"prefix_aware\" or remove kv_events"
                .into(),
        );
    }
    let block_size = match c.block_size {
        None => defaults.block_size,
        Some(n @ 1..=4096) => n as usize,
        Some(n) => {
            push(".block_size", format!("{n} is out of range; the engines' block size, 1 to 4096 tokens (vLLM's default is 16)"));
            defaults.block_size
        }
    };
    let mut positive = |name: &str, v: Option<f64>, default: f64| match v {
        None => default,
        Some(x) if x.is_finite() && x > 0.0 => x,
        Some(x) => {
            push(
                &format!(".{name}"),
                format!("{x} must be a positive number"),
            );
            default
        }
    };
    let imbalance = positive("imbalance", c.imbalance, defaults.imbalance);
    let prefill_weight = positive("prefill_weight", c.prefill_weight, defaults.prefill_weight);
    ResolvedRouting {
        settings: RoutingSettings {
            policy,
            block_size,
            imbalance,
            prefill_weight,
            routed_ttl: c.routed_ttl.map_or(defaults.routed_ttl, |d| d.0),
            approximate_ttl: c.approximate_ttl.map_or(defaults.approximate_ttl, |d| d.0),
            session_ttl: c.session_ttl.map(|d| d.0).filter(|d| !d.is_zero()),
        },
        tokenizer,
    }
}
