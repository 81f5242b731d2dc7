//! [`GatewayLimiter`]: the `Limiter` of a gateway whose config gives models
//! `[models.NAME.limits]`, over one `sluice_limits::ModelPool` per limited model.
//!
//! A single instance holds the whole of every limit. (Sharing pools among instances through
//! Redis is the coordinator's job, which hands each pool its lease.)

use std::collections::HashMap;
use std::sync::Arc;

use sluice_limits::{Demand, ModelLimits, ModelPool, PoolView, Reservation, Used};

use crate::services::{
    Admission, Admitted, BoxFuture, Charge, Limiter, NotAdmitted, Permit, RateLimitState,
    RateWindow, Refusal,
};

pub struct GatewayLimiter {
    pools: HashMap<String, Arc<ModelPool>>,
}

impl GatewayLimiter {
    /// A pool per limited model; `None` when no model has limits.
    pub fn new<'a>(models: impl Iterator<Item = &'a ModelLimits>) -> Option<GatewayLimiter> {
        let clock: Arc<dyn sluice_limits::Clock> = Arc::new(sluice_limits::TokioClock::new());
        let pools: HashMap<String, Arc<ModelPool>> = models
            .map(|m| (m.model.clone(), ModelPool::new(m.clone(), clock.clone())))
            .collect();
        (!pools.is_empty()).then_some(GatewayLimiter { pools })
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
    fn views(&self) -> Vec<PoolView> {
        let mut views: Vec<PoolView> = self.pools.values().map(|p| p.view()).collect();
        views.sort_by(|a, b| a.model.cmp(&b.model));
        views
    }

    fn admit<'a>(&'a self, a: Admission<'a>) -> BoxFuture<'a, Result<Admitted, NotAdmitted>> {
        Box::pin(async move {
            let Some(pool) = self.pools.get(a.model) else {
                return Ok(Admitted {
                    permit: None,
                    state: RateLimitState::default(),
                });
            };
            let limits = pool.limits();
            let name = a.job_type.unwrap_or(&limits.default_job_type);
            let Some(job) = limits.job_type(name) else {
                return Err(NotAdmitted::UnknownJobType {
                    job_type: name.to_owned(),
                    known: crate::config::limits::names(&limits.job_types),
                });
            };
            // Without an output cap, the job type's estimate stands for the answer.
            let output = a
                .output_tokens
                .unwrap_or(limits.job_types[job].estimated_tokens);
            let demand = Demand {
                tokens: a.prompt_tokens.saturating_add(output),
            };
            match pool.admit(job, demand).await {
                Ok(reservation) => Ok(Admitted {
                    permit: Some(Box::new(LimitPermit {
                        reservation,
                        prompt_tokens: a.prompt_tokens,
                    })),
                    state: rate_state(&pool.view()),
                }),
                Err(refusal) => Err(NotAdmitted::Limited(Refusal {
                    retry_after: refusal.retry_after,
                    reason: refusal.to_string(),
                    state: rate_state(&pool.view()),
                })),
            }
        })
    }
}

/// A reservation, with the prompt estimate a cut stream is charged.
struct LimitPermit {
    reservation: Reservation,
    prompt_tokens: u64,
}

impl Permit for LimitPermit {
    fn settle(self: Box<Self>, charge: Charge) {
        let LimitPermit {
            reservation,
            prompt_tokens,
        } = *self;
        let tokens = match charge {
            Charge::Usage {
                prompt_tokens,
                completion_tokens,
            } => prompt_tokens.saturating_add(completion_tokens),
            Charge::Relayed { output_chunks } => prompt_tokens.saturating_add(output_chunks),
            Charge::Rejected => 0,
            Charge::NotSent => return reservation.cancel(),
            // Dropped unsettled: the reservation keeps its whole estimate.
            Charge::Unknown => return drop(reservation),
        };
        reservation.settle(Used {
            tokens,
            requests: 1,
        });
    }
}
