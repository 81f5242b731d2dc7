//! `[models.NAME.routing]`: how a model's endpoints are chosen, and the engines' KV events
//! (`kv_events`, `kv_replay` on each endpoint) that prefix-aware routing follows.
//!
//! ```toml
//! [models.llama.routing]
//! policy = "prefix_aware"      # or "round_robin" (default), "least_loaded"
//! tokenizer = "/models/llama"  # the model's tokenizer.json + tokenizer_config.json, or "mock"
//! block_size = 16              # the engines' KV block size, in tokens
//! session_ttl = "10m"          # pin x-session-id to its endpoint this long
//! imbalance = 2.0
//! prefill_weight = 1.0
//! health_check_path = "/health" # GET it on each endpoint's host; absent: a TCP connect
//!
//! [[models.llama.endpoints]]
//! url = "http://vllm-0:8000/v1"
//! kv_events = "tcp://vllm-0:5557"
//! kv_replay = "tcp://vllm-0:5558"
//! ```

use serde::Deserialize;
use sluice_routing::{HealthSettings, Policy, PromptTokenizer, RetrySettings, RoutingSettings};

use super::{ConfigDuration, ConfigProblem};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    pub policy: Option<PolicyName>,
    /// How the engines turn a chat request into prompt tokens; prefix-aware routing must
    /// see the same tokens. The directory holding the model's `tokenizer.json` and
    /// `tokenizer_config.json` (its chat template), or `"mock"`: the mock engine's.
    pub tokenizer: Option<String>,
    /// Memory the tokenizer keeps for the token ids of prompt pieces it has seen (the
    /// messages of a conversation's earlier turns, which every turn sends again). Default
    /// 64 MiB; 0 turns it off.
    pub tokenizer_cache_bytes: Option<u64>,
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
    /// Prefix-aware: an endpoint sent more than this many times the mean share of the
    /// recent requests is first only when no other is under it. Default 1.3.
    pub max_share: Option<f64>,
    /// How long a routed prompt counts as cached on an engine that publishes KV events,
    /// until its events say so. Default 2s.
    pub routed_ttl: Option<ConfigDuration>,
    /// How long a routed prompt counts as cached on an engine that publishes no events.
    /// Default 5m.
    pub approximate_ttl: Option<ConfigDuration>,
    /// Attempts a request may make in all when endpoints fail it (a reset, a 429, a 5xx,
    /// before anything reached the client). Default 2; 1 turns retries off.
    pub max_attempts: Option<u32>,
    /// Retries may add at most this share of the model's requests (over ten seconds).
    /// Default 0.2.
    pub retry_budget: Option<f64>,
    /// Retries allowed a second whatever the traffic. Default 5.
    pub min_retries_per_second: Option<f64>,
    /// Failures in a row that take an endpoint out of rotation. Default 3.
    pub eject_after: Option<u32>,
    /// How long the first ejection lasts (each next one in a row twice as long, up to 2m).
    /// Default 10s.
    pub ejection: Option<ConfigDuration>,
    /// How long a failed endpoint is kept from being first (a 429's retry-after instead,
    /// up to 1m). Default 1s.
    pub cooldown: Option<ConfigDuration>,
    /// How long an endpoint back from an ejection takes to get its full share. Default 10s.
    pub slow_start: Option<ConfigDuration>,
    /// How often each endpoint's health is checked (a failed check counts as a failure).
    /// Default 5s; "0s": never.
    pub health_check_interval: Option<ConfigDuration>,
    /// The check: `GET` this path on the endpoint's host and port (not under its base URL's
    /// path), which must answer 2xx — vLLM's `/health` answers 500 once its engine died while
    /// its port still accepts. Absent: a TCP connect to the host and port.
    pub health_check_path: Option<String>,
    /// How long one check may take before it fails. Default 1s.
    pub health_check_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    RoundRobin,
    LeastLoaded,
    PrefixAware,
}

/// `[models.NAME.routing]`, checked.
#[derive(Debug, Clone, Default)]
pub struct ResolvedRouting {
    pub settings: RoutingSettings,
    pub tokenizer: Option<PromptTokenizer>,
    /// `health_check_path`: endpoints are checked over HTTP, else by a TCP connect.
    pub health_check_path: Option<String>,
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
        Some(spec) => match PromptTokenizer::load(
            spec,
            c.tokenizer_cache_bytes
                .unwrap_or(sluice_routing::DEFAULT_TOKENIZER_CACHE_BYTES),
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                push(
                    ".tokenizer",
                    format!(
                        "{e}; name the directory holding the model's tokenizer.json and \
                         tokenizer_config.json (as downloaded from its repository), or \"mock\" \
                         for sluice mock engines"
                    ),
                );
                None
            }
        },
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
    let max_share = match c.max_share {
        None => defaults.max_share,
        Some(x) if x.is_finite() && x >= 1.0 => x,
        Some(x) => {
            push(
                ".max_share",
                format!("{x} must be at least 1 (1: every endpoint its even share)"),
            );
            defaults.max_share
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
    let retry_defaults = RetrySettings::default();
    let min_per_second = positive(
        "min_retries_per_second",
        c.min_retries_per_second,
        retry_defaults.min_per_second,
    );
    let ratio = match c.retry_budget {
        None => retry_defaults.ratio,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            push(
                ".retry_budget",
                format!("{r} is not a share between 0 and 1"),
            );
            retry_defaults.ratio
        }
    };
    let max_attempts = match c.max_attempts {
        None => retry_defaults.max_attempts,
        Some(n @ 1..=10) => n,
        Some(n) => {
            push(
                ".max_attempts",
                format!("{n} is out of range; 1 (no retries) to 10"),
            );
            retry_defaults.max_attempts
        }
    };
    let health_defaults = HealthSettings::default();
    let eject_after = match c.eject_after {
        None => health_defaults.consecutive_failures,
        Some(0) => {
            push(".eject_after", "must be at least 1".into());
            health_defaults.consecutive_failures
        }
        Some(n) => n,
    };
    let health_check_path = c.health_check_path.and_then(|path| {
        match path.parse::<http::uri::PathAndQuery>() {
            Ok(p) if path.starts_with('/') => Some(p.to_string()),
            _ => {
                push(
                    ".health_check_path",
                    format!(
                        "`{path}` is not a URL path; write the path the engine answers health                          checks on, from the root of its host (vLLM: \"/health\")"
                    ),
                );
                None
            }
        }
    });
    let health_check_timeout = match c.health_check_timeout {
        None => defaults.health_check_timeout,
        Some(d) if !d.0.is_zero() => d.0,
        Some(_) => {
            push(
                ".health_check_timeout",
                "must be longer than 0s (to turn checks off, set health_check_interval = \"0s\")"
                    .into(),
            );
            defaults.health_check_timeout
        }
    };
    ResolvedRouting {
        settings: RoutingSettings {
            policy,
            block_size,
            imbalance,
            prefill_weight,
            routed_ttl: c.routed_ttl.map_or(defaults.routed_ttl, |d| d.0),
            approximate_ttl: c.approximate_ttl.map_or(defaults.approximate_ttl, |d| d.0),
            session_ttl: c.session_ttl.map(|d| d.0).filter(|d| !d.is_zero()),
            health: HealthSettings {
                consecutive_failures: eject_after,
                ejection: c.ejection.map_or(health_defaults.ejection, |d| d.0),
                cooldown: c.cooldown.map_or(health_defaults.cooldown, |d| d.0),
                slow_start: c.slow_start.map_or(health_defaults.slow_start, |d| d.0),
                ..health_defaults
            },
            retry: RetrySettings {
                max_attempts,
                ratio,
                min_per_second,
            },
            max_share,
            health_check_interval: match c.health_check_interval {
                None => defaults.health_check_interval,
                Some(d) if d.0.is_zero() => None,
                Some(d) => Some(d.0),
            },
            health_check_timeout,
        },
        tokenizer,
        health_check_path,
    }
}
