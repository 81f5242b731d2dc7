//! Endpoints that come and go while the gateway runs (pods scaled up and down, replaced,
//! drained): `GET /v1/admin/endpoints`, `POST /v1/admin/endpoints`,
//! `DELETE /v1/admin/endpoints/{model}/{name}`, and [`reload`], which brings every model's
//! endpoints in line with a re-read config file (SIGHUP).
//!
//! A change replaces the model's endpoint table in its router ([`sluice_routing::ModelRouter`]):
//! requests already routed finish where they went; the next request sees the new table. A
//! removed endpoint's KV events stop being followed and what the prefix index held for it is
//! dropped; sessions pinned to it are pinned again elsewhere. Endpoints are shared by every
//! tenant, so only the global admin sees or changes them. Changes last until the gateway
//! restarts: the config file is what it starts with.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use sluice_routing::{EndpointChangeError, EndpointView};

use crate::config::{
    resolve_runtime_endpoint, same_endpoint, EndpointConfig, ResolvedConfig, ResolvedEndpoint,
};
use crate::error::GatewayError;
use crate::routing_admin::global_admin_only;
use crate::services::Principal;
use crate::state::{endpoint_spec, GatewayShared, ModelEntry, WorkerState};
use crate::upstream::UpstreamEndpoint;

const ENDPOINTS: (&str, &str) = (
    "endpoint list for a tenant's admin (endpoints are shared; ask the global admin)",
    "endpoints",
);

/// `GET /v1/admin/endpoints`: every model's endpoints, as routing sees them.
pub async fn list(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
) -> Response {
    if let Some(refused) = global_admin_only(&p, ENDPOINTS) {
        return refused;
    }
    let data: Vec<Value> = w
        .shared
        .model_names
        .iter()
        .filter_map(|name| w.shared.models.get(name))
        .flat_map(|model| model_endpoints(model))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

fn model_endpoints(model: &ModelEntry) -> Vec<Value> {
    let table = model.router.table();
    let views = model.router.endpoints();
    (0..table.len())
        .filter_map(|i| {
            let config = table.target(i)?.downcast_ref::<ResolvedEndpoint>()?;
            let view = views.iter().find(|v| Some(v.id) == table.id(i))?;
            Some(endpoint_view(&model.name, config, view))
        })
        .collect()
}

fn endpoint_view(model: &str, config: &ResolvedEndpoint, view: &EndpointView) -> Value {
    json!({
        "object": "endpoint",
        "model": model,
        "name": config.label,
        "url": config.base_url.as_str(),
        "upstream_model": config.upstream_model,
        "kv_events": config.kv.as_ref().map(|k| k.events.as_str()),
        "standing": view.standing.as_str(),
        "in_flight": view.load.in_flight,
        "ejections": view.ejections,
        "health_check": view.health_check.as_ref().map(|check| json!({
            "check": check,
            "passed": view.checks.passed.load(Ordering::Relaxed),
            "failed": view.checks.failed.load(Ordering::Relaxed),
            "last_failure": view.checks.last_failure(),
        })),
    })
}

/// `POST /v1/admin/endpoints`: `{"model": "llama", "endpoint": {"name": "vllm-3", "url":
/// "http://10.0.0.7:8000/v1", ...}}` — the endpoint as a `[[models.NAME.endpoints]]` table
/// would be written, with a name.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    model: String,
    endpoint: EndpointConfig,
}

pub async fn add(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = global_admin_only(&p, ENDPOINTS) {
        return refused;
    }
    let new: NewEndpoint = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return GatewayError::invalid_request(
                format!(
                    "expected {{\"model\": \"NAME\", \"endpoint\": {{\"name\": \"...\", \"url\": \"http://HOST:PORT/v1\"}}}} \
                     with the keys of a [[models.NAME.endpoints]] table: {e}"
                ),
                None,
            )
            .into_response()
        }
    };
    let Some(model) = w.shared.models.get(&new.model) else {
        return GatewayError::NotFound {
            what: "model",
            name: new.model,
        }
        .into_response();
    };
    let env = |name: &str| std::env::var(name).ok();
    let resolved = match resolve_runtime_endpoint(&new.endpoint, w.shared.endpoint_defaults, &env) {
        Ok(r) => r,
        Err(problems) => {
            let first = problems.first();
            let message = problems
                .iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
                .join("; ");
            return GatewayError::invalid_request(message, first.map(|p| p.key.clone()))
                .into_response();
        }
    };
    match add_endpoint(&w.shared, model, resolved) {
        Ok(()) => {
            let view = model_endpoints(model)
                .into_iter()
                .find(|v| v["name"] == json!(new.endpoint.name));
            (StatusCode::CREATED, Json(view.unwrap_or(Value::Null))).into_response()
        }
        Err(message) => {
            GatewayError::invalid_request(message, Some("endpoint.name".into())).into_response()
        }
    }
}

/// `DELETE /v1/admin/endpoints/{model}/{name}`.
pub async fn remove(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
    Path((model, name)): Path<(String, String)>,
) -> Response {
    if let Some(refused) = global_admin_only(&p, ENDPOINTS) {
        return refused;
    }
    let Some(entry) = w.shared.models.get(&model) else {
        return GatewayError::NotFound {
            what: "model",
            name: model,
        }
        .into_response();
    };
    match entry.router.remove_endpoint(&name) {
        Ok(_) => {
            tracing::info!(model = %model, endpoint = %name, "endpoint removed");
            Json(json!({"object": "endpoint", "model": model, "name": name, "deleted": true}))
                .into_response()
        }
        Err(EndpointChangeError::NotFound(_) | EndpointChangeError::Exists(_)) => {
            GatewayError::NotFound {
                what: "endpoint",
                name: format!("{model}/{name}"),
            }
            .into_response()
        }
    }
}

/// Adds `endpoint` to `model`, checked as the config's would be: its KV events only where
/// the model routes by prefix, its HTTP client buildable.
fn add_endpoint(
    shared: &GatewayShared,
    model: &ModelEntry,
    endpoint: ResolvedEndpoint,
) -> Result<(), String> {
    if endpoint.kv.is_some() && !model.router.needs_prompt() {
        return Err(format!(
            "endpoint.kv_events: model `{}` does not route by prefix (its policy is \"{}\"), so \
             nothing would read the events; remove kv_events or set policy = \"prefix_aware\"",
            model.name,
            model.router.settings().policy.as_str()
        ));
    }
    // Each worker builds its own client later; one now proves it can be built.
    UpstreamEndpoint::new(endpoint.clone(), &shared.metrics)
        .map_err(|e| format!("endpoint: cannot build its HTTP client: {e}"))?;
    let label = endpoint.label.clone();
    model
        .router
        .add_endpoint(endpoint_spec(&endpoint, model.health_check_path.as_deref()))
        .map_err(|e| e.to_string())?;
    tracing::info!(model = %model.name, endpoint = %label, "endpoint added");
    Ok(())
}

/// What [`reload`] changed, endpoint by endpoint (`MODEL/NAME`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed in the file (URL, key, timeouts, KV events): removed and added again.
    pub replaced: Vec<String>,
    /// What a reload cannot change, and so left as it was (models added or removed, an
    /// endpoint refused), each with the reason.
    pub refused: Vec<String>,
}

/// Brings every model's endpoints in line with `config` (the file, re-read): endpoints
/// gone from it are removed, new ones added, changed ones replaced. Only endpoints change;
/// everything else in the file takes effect at the next start.
pub fn reload(shared: &GatewayShared, config: &ResolvedConfig) -> Reloaded {
    let mut out = Reloaded::default();
    for (name, new) in &config.models {
        let Some(model) = shared.models.get(name) else {
            out.refused
                .push(format!("{name}: a new model needs a restart"));
            continue;
        };
        let table = model.router.table();
        let current: Vec<ResolvedEndpoint> = (0..table.len())
            .filter_map(|i| table.target(i)?.downcast_ref::<ResolvedEndpoint>().cloned())
            .collect();
        for old in &current {
            match new.endpoints.iter().find(|e| e.label == old.label) {
                Some(e) if same_endpoint(e, old) => {}
                Some(_) => {
                    let _ = model.router.remove_endpoint(&old.label);
                    out.replaced.push(format!("{name}/{}", old.label));
                }
                None => {
                    let _ = model.router.remove_endpoint(&old.label);
                    out.removed.push(format!("{name}/{}", old.label));
                }
            }
        }
        for e in &new.endpoints {
            let key = format!("{name}/{}", e.label);
            let kept = current
                .iter()
                .any(|old| old.label == e.label && same_endpoint(e, old));
            if kept {
                continue;
            }
            match add_endpoint(shared, model, e.clone()) {
                Ok(()) if out.replaced.contains(&key) => {}
                Ok(()) => out.added.push(key),
                Err(why) => out.refused.push(format!("{key}: {why}")),
            }
        }
    }
    for name in &shared.model_names {
        if !config.models.contains_key(name) {
            out.refused.push(format!(
                "{name}: removing a model needs a restart (its endpoints are kept)"
            ));
        }
    }
    out
}
