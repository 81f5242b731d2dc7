//! `GET /v1/admin/limits`: the admission pools as they are now — per limited model, this
//! instance's share of each limit, the pool size, usage in the current windows, and per job
//! type its ratio, slots, requests in flight and waiting. The pools pool every tenant's
//! traffic, so only the global admin sees them.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use sluice_limits::{Dimension, PoolView};

use crate::error::GatewayError;
use crate::services::Principal;
use crate::state::WorkerState;

/// `GET /v1/admin/limits`.
pub async fn view(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
) -> Response {
    if p.administered_tenant().is_some() {
        // Shared pools carry every tenant's usage: not a tenant admin's to see.
        return GatewayError::NotFound {
            what: "limits view for a tenant's admin (the pools are shared; ask the global admin)",
            name: "limits".into(),
        }
        .into_response();
    }
    let limiter = w.shared.services.limiter.as_ref();
    let models: Vec<Value> = limiter
        .map(|l| l.views().iter().map(model_view).collect())
        .unwrap_or_default();
    let unlimited: Vec<&str> = w
        .shared
        .models
        .values()
        .filter(|m| !m.limited)
        .map(|m| m.name.as_str())
        .collect();
    let state = limiter.and_then(|l| l.coordination());
    let degraded = state.as_ref().and_then(|s| s.degraded.as_ref()).map(|d| {
        json!({
            "since_unix": d.since.duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_secs()),
            "mode": d.mode.as_str(),
            "error": d.error,
        })
    });
    Json(json!({
        "object": "limits",
        "instances": state.as_ref().map_or(1, |s| s.instances),
        "coordinator": state.as_ref().map_or("local", |s| s.kind),
        "degraded": degraded,
        "models": models,
        "unlimited_models": unlimited,
    }))
    .into_response()
}

fn model_view(v: &PoolView) -> Value {
    let mut shares = serde_json::Map::new();
    for d in Dimension::ALL {
        if let Some(share) = v.lease.get(d) {
            shares.insert(d.key().into(), json!(share));
        }
    }
    let windows: Vec<Value> = v
        .windows
        .iter()
        .map(|w| {
            json!({
                "limit": w.dimension.key(),
                "share": w.share,
                "used": w.used,
                "remaining": w.remaining(),
                "resets_in_ms": w.resets_in.as_millis() as u64,
            })
        })
        .collect();
    let jobs: Vec<Value> = v
        .jobs
        .iter()
        .map(|j| {
            json!({
                "name": j.name,
                "ratio": j.ratio,
                "slots": j.slots,
                "in_flight": j.in_flight,
                "waiting": j.waiting,
            })
        })
        .collect();
    json!({
        "model": v.model,
        "paused_for_ms": v.paused_for.as_millis() as u64,
        "shares": shares,
        "pool": v.pool,
        "in_flight": v.in_flight,
        "memory": v.memory.map(|m| json!({"budget": m.budget, "in_use": m.in_use})),
        "windows": windows,
        "job_types": jobs,
    })
}
