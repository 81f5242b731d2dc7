//! Routing for operators: `GET /v1/admin/prefix-index` shows, per model, how its endpoints
//! are chosen and, per endpoint (pod), the load the router counts, the blocks the prefix
//! index holds for it and how its KV-event stream is doing (last sequence, lag, gaps,
//! replays, purges). `PATCH /v1/admin/routing/{model}` changes the session TTL at runtime.
//! Endpoints are shared by every tenant, so only the global admin sees or changes them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use sluice_routing::{EndpointView, ModelRouter};

use crate::error::GatewayError;
use crate::services::Principal;
use crate::state::WorkerState;

/// Endpoints are shared by every tenant: a tenant's admin is told `what` does not exist
/// for them (as another tenant's key would be).
pub(crate) fn global_admin_only(
    p: &Principal,
    (what, name): (&'static str, &str),
) -> Option<Response> {
    p.administered_tenant().is_some().then(|| {
        GatewayError::NotFound {
            what,
            name: name.into(),
        }
        .into_response()
    })
}

const ROUTING_VIEW: (&str, &str) = (
    "routing view for a tenant's admin (endpoints are shared; ask the global admin)",
    "routing",
);

/// `GET /v1/admin/prefix-index`.
pub async fn view(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
) -> Response {
    if let Some(refused) = global_admin_only(&p, ROUTING_VIEW) {
        return refused;
    }
    let mut names: Vec<&String> = w.shared.models.keys().collect();
    names.sort();
    let models: Vec<Value> = names
        .into_iter()
        .map(|name| model_view(name, &w.shared.models[name].router))
        .collect();
    Json(json!({"object": "prefix_index", "models": models})).into_response()
}

fn model_view(name: &str, router: &ModelRouter) -> Value {
    let settings = router.settings();
    let decisions: serde_json::Map<String, Value> = router
        .decisions()
        .into_iter()
        .map(|(reason, n)| (reason.as_str().to_owned(), json!(n)))
        .collect();
    json!({
        "model": name,
        "policy": settings.policy.as_str(),
        "block_size": settings.block_size,
        "session_ttl_ms": router.session_ttl().map(|d| d.as_millis() as u64),
        "blocks": router.index().map(|ix| ix.blocks()),
        "memory_bytes": router.index().map(|ix| ix.memory_bytes()),
        "decisions": decisions,
        "pods": router.endpoints().iter().map(pod_view).collect::<Vec<_>>(),
    })
}

fn pod_view(e: &EndpointView) -> Value {
    let events = e.events.as_ref().map(|s| {
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "connected": s.connected.load(Ordering::Relaxed),
            "last_seq": s.last_seq(),
            "lag_ms": n(&s.last_lag_ms),
            "batches": n(&s.batches),
            "gaps": n(&s.gaps),
            "replays": n(&s.replays),
            "replay_shortfalls": n(&s.replay_shortfalls),
            "purges": n(&s.purges),
            "decode_errors": n(&s.decode_errors),
            "rejected_events": n(&s.rejected_events),
        })
    });
    json!({
        "pod": e.label,
        "in_flight": e.load.in_flight,
        "prefill_tokens": e.load.prefill_tokens,
        "decoding": e.load.decoding,
        "standing": e.standing.as_str(),
        "ejections": e.ejections,
        "stored_blocks": e.index.as_ref().map_or(0, |p| p.stored_blocks),
        "routed_blocks": e.index.as_ref().map_or(0, |p| p.routed_blocks),
        "events": events,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingChange {
    /// `"200ms"`, `"10m"`, ...; `null` or `"0s"` turns affinity off.
    session_ttl: Option<String>,
}

/// `PATCH /v1/admin/routing/{model}`: `{"session_ttl": "200ms"}`. Applies at once, to
/// sessions already pinned too; lasts until the gateway restarts (the config file keeps
/// the value it starts with).
pub async fn change(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
    Path(model): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = global_admin_only(&p, ROUTING_VIEW) {
        return refused;
    }
    let Some(entry) = w.shared.models.get(&model) else {
        return GatewayError::NotFound {
            what: "model",
            name: model,
        }
        .into_response();
    };
    let change: RoutingChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return GatewayError::invalid_request(
                format!("expected {{\"session_ttl\": \"10m\"}} (or null): {e}"),
                None,
            )
            .into_response()
        }
    };
    let ttl = match change.session_ttl.as_deref() {
        None => None,
        Some(text) => match crate::config::ConfigDuration::parse(text) {
            Ok(d) if d.0.is_zero() => None,
            Ok(d) => Some(d.0),
            Err(e) => {
                return GatewayError::invalid_request(
                    format!("session_ttl: {e}"),
                    Some("session_ttl".into()),
                )
                .into_response()
            }
        },
    };
    entry.router.set_session_ttl(ttl);
    tracing::info!(model = %model, session_ttl_ms = ?ttl.map(|d| d.as_millis()), "routing: session TTL changed");
    Json(model_view(&model, &entry.router)).into_response()
}
