//! [`GatewayLimiter`]: the `Limiter` of a gateway whose config gives models
//! `[models.NAME.limits]`, over one `sluice_limits::ModelPool` per limited model and the
//! coordinator that hands each pool its lease: the local one (a single instance holds every
//! limit whole) or, with `[state] redis_url`, the Redis one shared by every instance.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_limits::pool::KEY_POOL_PREFIX;
use sluice_limits::{
    Coordinator, CoordinatorState, Demand, FleetSettings, Flexibility, JobType, Limits,
    LocalCoordinator, ModelLimits, ModelPool, PoolView, RedisCoordinator, RefusedBy, Reservation,
    Used,
};

use crate::config::limits::ResolvedFleet;

use crate::services::{
    Admission, Admitted, BoxFuture, Charge, KeyLimits, Limiter, NotAdmitted, Permit,
    RateLimitState, RateWindow, Refusal,
};

/// How often flexible job-type ratios are adjusted (besides after every
/// `sluice_limits::pool::ADJUST_AFTER_RELEASES` requests that finish).
const ADJUST_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub struct GatewayLimiter {
    pools: HashMap<String, Arc<ModelPool>>,
    /// Pools of API keys' own limits, made on a key's first request (and again when its
    /// limits change), named `key:NAME`.
    keys: std::sync::Mutex<HashMap<String, Arc<ModelPool>>>,
    clock: Arc<dyn sluice_limits::Clock>,
    coordinator: Arc<dyn Coordinator>,
}

impl GatewayLimiter {
    /// A pool per limited model, coordinated through Redis when `redis_url` is given (Redis
    /// need not answer yet: until it does, each pool takes the conservative share); `None`
    /// when no model has limits and API keys cannot have any (`keys_have_limits`: auth is
    /// on). Call from within the runtime the coordinator's tasks are to run on.
    pub fn start<'a>(
        models: impl Iterator<Item = &'a ModelLimits>,
        fleet: &ResolvedFleet,
        redis_url: Option<&str>,
        keys_have_limits: bool,
    ) -> Result<Option<GatewayLimiter>, sluice_store::RedisError> {
        let clock: Arc<dyn sluice_limits::Clock> = Arc::new(sluice_limits::TokioClock::new());
        let pools: HashMap<String, Arc<ModelPool>> = models
            .map(|m| (m.model.clone(), ModelPool::new(m.clone(), clock.clone())))
            .collect();
        if pools.is_empty() && !keys_have_limits {
            return Ok(None);
        }
        let coordinator: Arc<dyn Coordinator> = match redis_url {
            Some(url) => {
                let store = Arc::new(sluice_store::RedisStore::lazy(url)?);
                let settings = FleetSettings {
                    instance_id: uuid::Uuid::new_v4().simple().to_string(),
                    heartbeat: fleet.heartbeat,
                    instance_timeout: fleet.instance_timeout,
                    failure: fleet.on_redis_failure,
                    expected_max_instances: fleet.expected_max_instances,
                };
                RedisCoordinator::start(store, &pools, settings)
            }
            None => Arc::new(LocalCoordinator::new(&pools)),
        };
        // Flexible ratios move on an interval too, not only after releases: an idle type
        // lends even when nothing finishes.
        let weak: Vec<std::sync::Weak<ModelPool>> = pools.values().map(Arc::downgrade).collect();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(ADJUST_INTERVAL);
            every.tick().await;
            loop {
                every.tick().await;
                let mut alive = false;
                for pool in weak.iter().filter_map(std::sync::Weak::upgrade) {
                    pool.adjust_ratios();
                    alive = true;
                }
                if !alive {
                    return;
                }
            }
        });
        Ok(Some(GatewayLimiter {
            pools,
            keys: std::sync::Mutex::default(),
            clock,
            coordinator,
        }))
    }
}

impl GatewayLimiter {
    /// The pool of `key`'s own limits, made (and handed to the coordinator) on first use,
    /// and made anew when the key's limits changed.
    fn key_pool(&self, key: &KeyLimits<'_>) -> Option<Arc<ModelPool>> {
        let limits = Limits {
            requests_per_minute: key.requests_per_minute,
            tokens_per_minute: key.tokens_per_minute,
            ..Limits::default()
        };
        if limits.is_empty() {
            return None;
        }
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pool) = keys.get(key.name) {
            if pool.limits().limits == limits {
                return Some(pool.clone());
            }
        }
        let spec = ModelLimits {
            model: format!("{KEY_POOL_PREFIX}{}", key.name),
            // One kind of work: a key's limit is all of the key's.
            job_types: vec![JobType {
                name: "key".into(),
                estimated_tokens: 1,
                estimated_requests: 1,
                ratio: 1.0,
                flexibility: Flexibility::Fixed,
                max_wait: std::time::Duration::ZERO,
                memory_bytes: None,
            }],
            default_job_type: "key".into(),
            limits,
            memory_budget_bytes: None,
        }
        .validate()
        .ok()?;
        let pool = ModelPool::new(spec, self.clock.clone());
        self.coordinator.add_pool(pool.clone());
        keys.insert(key.name.to_owned(), pool.clone());
        Some(pool)
    }
}

/// The tightest windows of `view`, as the headers describe them.
fn rate_state(view: &PoolView) -> RateLimitState {
    let window = |tokens| {
        view.tightest(tokens).map(|w| RateWindow {
            limit: w.share,
            remaining: w.remaining(),
            reset: w.resets_in,
        })
    };
    RateLimitState {
        requests: window(false),
        tokens: window(true),
    }
}

impl Limiter for GatewayLimiter {
    fn coordination(&self) -> Option<CoordinatorState> {
        Some(self.coordinator.state())
    }

    fn observe_provider(
        &self,
        model: &str,
        status: u16,
        report: &sluice_api::ratelimit::ProviderReport,
    ) {
        if status == 429 {
            // Without retry-after, a second: the provider refused, and said no more.
            let pause = report
                .retry_after
                .unwrap_or(std::time::Duration::from_secs(1));
            self.coordinator.pause(model, pause);
        }
        let Some(pool) = self.pools.get(model) else {
            return;
        };
        let instances = self.coordinator.state().instances;
        for (tokens, reported) in [(true, report.tokens), (false, report.requests)] {
            if let Some(sluice_api::ratelimit::ReportedLimit {
                remaining: Some(remaining),
                reset: Some(reset),
                ..
            }) = reported
            {
                pool.provider_remaining(tokens, remaining, reset, instances);
            }
        }
    }

    fn views(&self) -> Vec<PoolView> {
        let mut views: Vec<PoolView> = self.pools.values().map(|p| p.view()).collect();
        views.sort_by(|a, b| a.model.cmp(&b.model));
        views
    }

    fn admit<'a>(&'a self, a: Admission<'a>) -> BoxFuture<'a, Result<Admitted, NotAdmitted>> {
        Box::pin(async move {
            // The key's own limits first, without waiting: they are the caller's, not the
            // model's to queue for.
            let key_pool = a.key.as_ref().and_then(|k| self.key_pool(k));
            let model_pool = self.pools.get(a.model);
            let output = a.output_tokens.unwrap_or_else(|| {
                model_pool.map_or(0, |p| {
                    let l = p.limits();
                    let job = a.job_type.and_then(|t| l.job_type(t));
                    l.job_types[job.unwrap_or(0)].estimated_tokens
                })
            });
            let demand = Demand {
                tokens: a.prompt_tokens.saturating_add(output),
            };
            let mut held = Vec::new();
            if let Some(pool) = &key_pool {
                match pool
                    .admit_within(0, demand, std::time::Duration::ZERO)
                    .await
                {
                    Ok(r) => held.push(r),
                    Err(refusal) => return Err(NotAdmitted::Limited(refused(refusal, pool))),
                }
            }
            let Some(pool) = model_pool else {
                let state = key_pool
                    .as_ref()
                    .map(|p| rate_state(&p.view()))
                    .unwrap_or_default();
                return Ok(Admitted {
                    permit: (!held.is_empty()).then(|| {
                        Box::new(LimitPermit {
                            reservations: held,
                            prompt_tokens: a.prompt_tokens,
                        }) as Box<dyn Permit>
                    }),
                    state,
                    job_type: String::new(),
                });
            };
            let limits = pool.limits();
            // A fallback model without the job type asked for counts the request under its
            // own default.
            let name = match a.job_type {
                Some(t) if limits.job_type(t).is_some() || !a.fallback => t,
                _ => &limits.default_job_type,
            };
            let Some(job) = limits.job_type(name) else {
                held.into_iter().for_each(Reservation::cancel);
                return Err(NotAdmitted::UnknownJobType {
                    job_type: name.to_owned(),
                    known: crate::config::limits::names(&limits.job_types),
                });
            };
            let max_wait = a.max_wait.unwrap_or(limits.job_types[job].max_wait);
            match pool.admit_within(job, demand, max_wait).await {
                Ok(reservation) => {
                    held.push(reservation);
                    Ok(Admitted {
                        permit: Some(Box::new(LimitPermit {
                            reservations: held,
                            prompt_tokens: a.prompt_tokens,
                        })),
                        state: rate_state(&pool.view()),
                        job_type: name.to_owned(),
                    })
                }
                Err(refusal) => {
                    // The key's reservation goes back: the request was not sent.
                    held.into_iter().for_each(Reservation::cancel);
                    Err(NotAdmitted::Limited(refused(refusal, pool)))
                }
            }
        })
    }
}

/// A pool's refusal as the limiter answers it.
fn refused(refusal: sluice_limits::Refusal, pool: &ModelPool) -> Refusal {
    Refusal {
        retry_after: refusal.retry_after,
        reason: refusal.to_string(),
        refused_by: match refusal.by {
            RefusedBy::Limit(d) => d.key(),
            RefusedBy::JobType { .. } => "job_type",
            RefusedBy::Memory => "memory",
            RefusedBy::TooLarge { .. } => "too_large",
            RefusedBy::Paused => "paused",
        },
        state: rate_state(&pool.view()),
    }
}

/// The reservations of one request (its model's, its key's), with the prompt estimate a
/// cut stream is charged.
struct LimitPermit {
    reservations: Vec<Reservation>,
    prompt_tokens: u64,
}

impl Permit for LimitPermit {
    fn settle(self: Box<Self>, charge: Charge) {
        let LimitPermit {
            reservations,
            prompt_tokens,
        } = *self;
        let tokens = match charge {
            Charge::Usage {
                prompt_tokens,
                completion_tokens,
            } => prompt_tokens.saturating_add(completion_tokens),
            Charge::Relayed { output_chunks } => prompt_tokens.saturating_add(output_chunks),
            Charge::Rejected => 0,
            Charge::NotSent => return reservations.into_iter().for_each(Reservation::cancel),
            // Dropped unsettled: each reservation keeps its whole estimate.
            Charge::Unknown => return drop(reservations),
        };
        for r in reservations {
            r.settle(Used {
                tokens,
                requests: 1,
            });
        }
    }
}
