//! `[models.NAME.limits]`: a model's rate limits and the job types that share them, read
//! from the file and turned into `sluice_limits::ModelLimits` (whose checks name the key).
//!
//! ```toml
//! [models.gpt.limits]
//! tokens_per_minute = 100000
//! requests_per_minute = 600
//! max_concurrent = 20
//! max_wait = "2s"                 # how long a request may wait for capacity; "0s": 429 at once
//! default_job_type = "interactive"
//!
//! [models.gpt.limits.job_types.interactive]
//! estimated_tokens = 2000
//! ratio = 0.6
//!
//! [models.gpt.limits.job_types.batch]
//! estimated_tokens = 8000
//! ratio = 0.4
//! kind = "flexible"
//! max_wait = "30s"
//! ```
//!
//! Without `job_types`, the model has one job type, `default`, and the table's own
//! `estimated_tokens` is its estimate.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use sluice_limits::{Flexibility, JobType, Limits, ModelLimits};

use super::{ConfigDuration, ConfigProblem};

/// The job type of a model without `job_types`.
pub const DEFAULT_JOB_TYPE: &str = "default";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimitsConfig {
    pub tokens_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub max_concurrent: Option<u64>,
    /// How long a request may wait for capacity before it is answered 429 (each job type
    /// may set its own). Default `"0s"`: at once, with `Retry-After`.
    pub max_wait: Option<ConfigDuration>,
    /// The tokens a typical request uses, prompt and answer (models without `job_types`).
    pub estimated_tokens: Option<u64>,
    /// The job type of a request without `x-sluice-job-type`.
    pub default_job_type: Option<String>,
    /// Bytes of memory this instance may hold for the model's jobs at once (each job type
    /// then says its `memory`).
    pub memory_budget: Option<u64>,
    #[serde(default)]
    pub job_types: BTreeMap<String, JobTypeConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobTypeConfig {
    pub estimated_tokens: Option<u64>,
    /// Requests one job makes. Default 1.
    pub estimated_requests: Option<u64>,
    /// The type's share of the model's pool. Default 1 when it is the only type.
    pub ratio: Option<f64>,
    /// `"fixed"` (default): its share is its own; `"flexible"`: lends while idle, borrows
    /// while busy.
    pub kind: Option<JobKind>,
    pub max_wait: Option<ConfigDuration>,
    /// Bytes one job holds, against `memory_budget`.
    pub memory: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Fixed,
    Flexible,
}

/// `[limits]`: how the instances sharing a Redis (`[state] redis_url`) coordinate their
/// pools. Ignored without Redis (one instance holds every limit whole).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// How often an instance reports and gets its leases. Default 1s.
    pub heartbeat: Option<ConfigDuration>,
    /// An instance silent this long is gone and its part shared. Default 5s; at least two
    /// heartbeats.
    pub instance_timeout: Option<ConfigDuration>,
    /// While Redis cannot be reached: `"fail_static"` (default: keep the last lease, never
    /// more), `"fail_open"` (each instance takes every limit whole), `"fail_closed"` (admit
    /// nothing).
    pub on_redis_failure: Option<FailureMode>,
    /// The most instances expected to share the limits: an instance that cannot reach Redis
    /// when it starts takes the limits divided by this. Default 8.
    pub expected_max_instances: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    FailStatic,
    FailOpen,
    FailClosed,
}

/// `[limits]` with every default applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedFleet {
    pub heartbeat: Duration,
    pub instance_timeout: Duration,
    pub on_redis_failure: sluice_limits::RedisFailure,
    pub expected_max_instances: u64,
}

impl FleetConfig {
    pub fn resolve(&self, problems: &mut Vec<ConfigProblem>) -> ResolvedFleet {
        let mut push = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: format!("limits.{key}"),
                line: None,
                message,
            });
        };
        let heartbeat = self.heartbeat.map_or(Duration::from_secs(1), |d| d.0);
        let instance_timeout = self
            .instance_timeout
            .map_or(Duration::from_secs(5), |d| d.0);
        if heartbeat.is_zero() {
            push(
                "heartbeat",
                "must be more than zero; leave it out for 1s".into(),
            );
        }
        if instance_timeout < heartbeat * 2 {
            push(
                "instance_timeout",
                format!(
                    "must be at least two heartbeats ({:?}), or a single late heartbeat drops a live instance",
                    heartbeat * 2
                ),
            );
        }
        let expected_max_instances = self.expected_max_instances.unwrap_or(8);
        if expected_max_instances == 0 {
            push(
                "expected_max_instances",
                "must be at least 1; leave it out for 8".into(),
            );
        }
        ResolvedFleet {
            heartbeat,
            instance_timeout,
            on_redis_failure: match self.on_redis_failure {
                None | Some(FailureMode::FailStatic) => sluice_limits::RedisFailure::FailStatic,
                Some(FailureMode::FailOpen) => sluice_limits::RedisFailure::FailOpen,
                Some(FailureMode::FailClosed) => sluice_limits::RedisFailure::FailClosed,
            },
            expected_max_instances,
        }
    }
}

/// The model's limits, checked; problems are pushed with their keys.
pub fn resolve(
    model: &str,
    key: &str,
    c: &ModelLimitsConfig,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ModelLimits> {
    let mut push = |suffix: &str, message: String| {
        problems.push(ConfigProblem {
            key: format!("{key}.limits{suffix}"),
            line: None,
            message,
        });
    };
    let default_wait = c.max_wait.map_or(Duration::ZERO, |d| d.0);
    let job_types: Vec<JobType> = if c.job_types.is_empty() {
        vec![JobType {
            name: DEFAULT_JOB_TYPE.into(),
            estimated_tokens: c.estimated_tokens.unwrap_or(0),
            estimated_requests: 1,
            ratio: 1.0,
            flexibility: Flexibility::Fixed,
            max_wait: default_wait,
            memory_bytes: None,
        }]
    } else {
        if c.estimated_tokens.is_some() {
            push(
                ".estimated_tokens",
                "applies only to a model without job_types; give each job type its own estimated_tokens".into(),
            );
            return None;
        }
        let only = c.job_types.len() == 1;
        let mut types = Vec::new();
        for (name, j) in &c.job_types {
            let ratio = match (j.ratio, only) {
                (Some(r), _) => r,
                (None, true) => 1.0,
                (None, false) => {
                    push(
                        &format!(".job_types.{name}.ratio"),
                        "is needed when a model has several job types: the type's share of the pool, all adding up to 1".into(),
                    );
                    return None;
                }
            };
            types.push(JobType {
                name: name.clone(),
                estimated_tokens: j.estimated_tokens.unwrap_or(0),
                estimated_requests: j.estimated_requests.unwrap_or(1),
                ratio,
                flexibility: match j.kind {
                    Some(JobKind::Flexible) => Flexibility::Flexible,
                    Some(JobKind::Fixed) | None => Flexibility::Fixed,
                },
                max_wait: j.max_wait.map_or(default_wait, |d| d.0),
                memory_bytes: j.memory,
            });
        }
        types
    };
    let default_job_type = match (&c.default_job_type, job_types.as_slice()) {
        (Some(name), _) => name.clone(),
        (None, [only]) => only.name.clone(),
        (None, _) => {
            push(
                ".default_job_type",
                format!(
                    "is needed when a model has several job types: the type of a request without x-sluice-job-type (one of {})",
                    names(&job_types)
                ),
            );
            return None;
        }
    };
    let limits = ModelLimits {
        model: model.to_owned(),
        limits: Limits {
            tokens_per_minute: c.tokens_per_minute,
            requests_per_minute: c.requests_per_minute,
            tokens_per_day: c.tokens_per_day,
            requests_per_day: c.requests_per_day,
            max_concurrent: c.max_concurrent,
        },
        job_types,
        default_job_type,
        memory_budget_bytes: c.memory_budget,
    };
    match limits.validate() {
        Ok(limits) => Some(limits),
        Err(e) => {
            // The implicit job type's estimate is the table's own key.
            let suffix = if c.job_types.is_empty() && e.key.starts_with(".job_types.") {
                format!(".{}", e.key.rsplit('.').next().unwrap_or_default())
            } else {
                e.key
            };
            push(&suffix, e.message);
            None
        }
    }
}

pub(crate) fn names(job_types: &[JobType]) -> String {
    job_types
        .iter()
        .map(|j| j.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
