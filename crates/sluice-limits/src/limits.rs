//! What a model's limits are: the dimensions, the job types that share them, and the
//! checks that turn a config into something the pool can enforce (every message names the
//! key and the fix).

use std::time::Duration;

/// One thing a provider limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    TokensPerMinute,
    RequestsPerMinute,
    TokensPerDay,
    RequestsPerDay,
    /// Requests in flight at once.
    Concurrent,
}

pub const MINUTE: Duration = Duration::from_secs(60);
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::TokensPerMinute,
        Dimension::RequestsPerMinute,
        Dimension::TokensPerDay,
        Dimension::RequestsPerDay,
        Dimension::Concurrent,
    ];

    /// The config key, also used in messages, metrics and the admin view.
    pub fn key(self) -> &'static str {
        match self {
            Dimension::TokensPerMinute => "tokens_per_minute",
            Dimension::RequestsPerMinute => "requests_per_minute",
            Dimension::TokensPerDay => "tokens_per_day",
            Dimension::RequestsPerDay => "requests_per_day",
            Dimension::Concurrent => "max_concurrent",
        }
    }

    /// The rolling window the dimension counts over; `None` for concurrency.
    pub fn window(self) -> Option<Duration> {
        match self {
            Dimension::TokensPerMinute | Dimension::RequestsPerMinute => Some(MINUTE),
            Dimension::TokensPerDay | Dimension::RequestsPerDay => Some(DAY),
            Dimension::Concurrent => None,
        }
    }

    /// Whether the dimension counts tokens (else requests).
    pub fn counts_tokens(self) -> bool {
        matches!(self, Dimension::TokensPerMinute | Dimension::TokensPerDay)
    }
}

/// A model's limits; `None` is "not limited in this dimension". At least one is set (a
/// model without limits has no `ModelLimits` at all: it is unlimited, explicitly).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub tokens_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub max_concurrent: Option<u64>,
}

impl Limits {
    pub fn get(&self, d: Dimension) -> Option<u64> {
        match d {
            Dimension::TokensPerMinute => self.tokens_per_minute,
            Dimension::RequestsPerMinute => self.requests_per_minute,
            Dimension::TokensPerDay => self.tokens_per_day,
            Dimension::RequestsPerDay => self.requests_per_day,
            Dimension::Concurrent => self.max_concurrent,
        }
    }

    /// The dimensions that are set, in [`Dimension::ALL`] order.
    pub fn set(&self) -> impl Iterator<Item = (Dimension, u64)> + '_ {
        Dimension::ALL
            .into_iter()
            .filter_map(|d| self.get(d).map(|v| (d, v)))
    }

    pub fn is_empty(&self) -> bool {
        self.set().next().is_none()
    }

    fn counts_tokens(&self) -> bool {
        self.tokens_per_minute.is_some() || self.tokens_per_day.is_some()
    }
}

/// Whether a job type's share of the pool moves with demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flexibility {
    /// Its ratio never changes: capacity nobody else may take (interactive traffic).
    Fixed,
    /// Lends capacity while idle and borrows while busy (batch traffic).
    Flexible,
}

/// A kind of work sharing a model's limits (header `x-sluice-job-type`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobType {
    pub name: String,
    /// Tokens a typical request of this type uses (prompt and answer): with the
    /// requests estimate, what turns a token or request budget into slots.
    pub estimated_tokens: u64,
    /// Requests one job of this type makes (usually 1).
    pub estimated_requests: u64,
    /// Its share of the model's pool, before flexible adjustment.
    pub ratio: f64,
    pub flexibility: Flexibility,
    /// How long a request of this type may wait for capacity; zero refuses at once.
    pub max_wait: Duration,
    /// Memory one job of this type holds, for the instance's memory budget.
    pub memory_bytes: Option<u64>,
}

/// A model's limits with its job types, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLimits {
    pub model: String,
    pub limits: Limits,
    pub job_types: Vec<JobType>,
    /// The job type of a request that names none.
    pub default_job_type: String,
    /// Memory this instance may hold for the model's jobs at once.
    pub memory_budget_bytes: Option<u64>,
}

/// A config that cannot be enforced; the message names the key (under
/// `models.NAME.limits`) and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("models.{model}.limits{key}: {message}")]
pub struct LimitsError {
    pub model: String,
    /// `""` for the table itself, else `.key` or `.job_types.NAME.key`.
    pub key: String,
    pub message: String,
}

impl ModelLimits {
    /// Checks what the pool relies on: at least one limit; every limit and estimate
    /// positive; an estimate of tokens wherever tokens are limited (a job of unknown size
    /// cannot be counted against a token budget, and guessing one token would let through
    /// thousands of times the limit); ratios positive, adding up to 1 (within rounding);
    /// the default job type among them.
    pub fn validate(self) -> Result<ModelLimits, LimitsError> {
        let err = |key: &str, message: String| LimitsError {
            model: self.model.clone(),
            key: key.to_owned(),
            message,
        };
        if self.limits.is_empty() {
            return Err(err(
                "",
                "sets no limit; set at least one of tokens_per_minute, requests_per_minute, \
                 tokens_per_day, requests_per_day, max_concurrent, or remove the table (the \
                 model is then unlimited)"
                    .into(),
            ));
        }
        for (d, v) in self.limits.set() {
            if v == 0 {
                return Err(err(
                    &format!(".{}", d.key()),
                    "is 0, which admits nothing; give a positive number, or remove the key to leave it unlimited"
                        .into(),
                ));
            }
        }
        if self.job_types.is_empty() {
            return Err(err(".job_types", "declares no job type".into()));
        }
        let mut total = 0.0;
        for (i, j) in self.job_types.iter().enumerate() {
            let key = |k: &str| format!(".job_types.{}.{k}", j.name);
            if self.job_types[..i].iter().any(|o| o.name == j.name) {
                return Err(err(
                    &format!(".job_types.{}", j.name),
                    "is declared twice".into(),
                ));
            }
            if self.limits.counts_tokens() && j.estimated_tokens == 0 {
                return Err(err(
                    &key("estimated_tokens"),
                    "is needed where tokens are limited: the tokens a typical request of this \
                     type uses, prompt and answer (e.g. 2000)"
                        .into(),
                ));
            }
            if j.estimated_requests == 0 {
                return Err(err(
                    &key("estimated_requests"),
                    "is 0; a job makes at least one request".into(),
                ));
            }
            if !(j.ratio.is_finite() && j.ratio > 0.0 && j.ratio <= 1.0) {
                return Err(err(
                    &key("ratio"),
                    format!("is {}; give a share of the pool in (0, 1]", j.ratio),
                ));
            }
            if self.memory_budget_bytes.is_some() && j.memory_bytes.is_none() {
                return Err(err(
                    &key("memory"),
                    "is needed when the model has a memory_budget: the memory one job of this type holds"
                        .into(),
                ));
            }
            total += j.ratio;
        }
        if (total - 1.0).abs() > 1e-6 {
            return Err(err(
                ".job_types",
                format!("ratios add up to {total}; make them add up to 1"),
            ));
        }
        if !self
            .job_types
            .iter()
            .any(|j| j.name == self.default_job_type)
        {
            return Err(err(
                ".default_job_type",
                format!(
                    "`{}` is not among the job types ({})",
                    self.default_job_type,
                    self.job_types
                        .iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(self)
    }

    /// The average estimate over job types of what `d` counts (tokens or requests): what
    /// one slot of the pool is worth in that dimension.
    pub fn average_estimate(&self, d: Dimension) -> f64 {
        let n = self.job_types.len().max(1) as f64;
        let sum: u64 = self
            .job_types
            .iter()
            .map(|j| {
                if d.counts_tokens() {
                    j.estimated_tokens
                } else {
                    j.estimated_requests
                }
            })
            .sum();
        sum as f64 / n
    }

    pub fn job_type(&self, name: &str) -> Option<usize> {
        self.job_types.iter().position(|j| j.name == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn job(name: &str, tokens: u64, ratio: f64, flexibility: Flexibility) -> JobType {
        JobType {
            name: name.into(),
            estimated_tokens: tokens,
            estimated_requests: 1,
            ratio,
            flexibility,
            max_wait: Duration::ZERO,
            memory_bytes: None,
        }
    }

    pub fn model(limits: Limits, jobs: Vec<JobType>) -> ModelLimits {
        ModelLimits {
            model: "m".into(),
            default_job_type: jobs[0].name.clone(),
            limits,
            job_types: jobs,
            memory_budget_bytes: None,
        }
    }

    fn tpm(n: u64) -> Limits {
        Limits {
            tokens_per_minute: Some(n),
            ..Limits::default()
        }
    }

    #[test]
    fn configs_that_cannot_be_enforced_are_named() {
        let bad = |m: ModelLimits| m.validate().unwrap_err().to_string();
        let one = || vec![job("chat", 1000, 1.0, Flexibility::Fixed)];
        assert!(bad(model(Limits::default(), one())).contains("sets no limit"));
        let e = bad(model(tpm(0), one()));
        assert!(
            e.starts_with("models.m.limits.tokens_per_minute: is 0"),
            "{e}"
        );
        let e = bad(model(
            tpm(10),
            vec![job("chat", 0, 1.0, Flexibility::Fixed)],
        ));
        assert!(e.contains("job_types.chat.estimated_tokens"), "{e}");
        // Requests only: no token estimate needed.
        let rpm = Limits {
            requests_per_minute: Some(10),
            ..Limits::default()
        };
        assert!(model(rpm, vec![job("chat", 0, 1.0, Flexibility::Fixed)])
            .validate()
            .is_ok());
        let e = bad(model(
            tpm(10),
            vec![
                job("a", 1, 0.5, Flexibility::Fixed),
                job("b", 1, 0.4, Flexibility::Fixed),
            ],
        ));
        assert!(e.contains("add up to 0.9"), "{e}");
        let e = bad(model(tpm(10), vec![job("a", 1, 1.5, Flexibility::Fixed)]));
        assert!(e.contains("job_types.a.ratio"), "{e}");
        let mut m = model(tpm(10), one());
        m.default_job_type = "batch".into();
        assert!(bad(m).contains("`batch` is not among the job types (chat)"));
        let e = bad(model(
            tpm(10),
            vec![
                job("a", 1, 0.5, Flexibility::Fixed),
                job("a", 1, 0.5, Flexibility::Fixed),
            ],
        ));
        assert!(e.contains("declared twice"), "{e}");
    }

    #[test]
    fn a_slot_is_worth_the_average_estimate() {
        let m = model(
            tpm(100_000),
            vec![
                job("a", 10_000, 0.5, Flexibility::Fixed),
                job("b", 30_000, 0.5, Flexibility::Flexible),
            ],
        );
        assert_eq!(m.average_estimate(Dimension::TokensPerMinute), 20_000.0);
        assert_eq!(m.average_estimate(Dimension::RequestsPerMinute), 1.0);
    }
}
