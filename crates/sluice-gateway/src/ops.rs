//! Operational endpoints: `/health` (the process is up), `/ready` (config loaded and every
//! model has a reachable endpoint), `/metrics`, and the model list.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use sluice_api::models::{ModelList, ModelObject};

use crate::services::Principal;
use crate::state::WorkerState;
use crate::upstream::UpstreamEndpoint;

/// How long readiness waits for one endpoint's TCP handshake.
const READY_PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

pub async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn ready(State(w): State<Arc<WorkerState>>) -> Response {
    let checks = w.shared.model_names.iter().map(|name| {
        let endpoints = w
            .shared
            .models
            .get(name)
            .map(|model| w.endpoints(model, &model.router.table()));
        async move {
            let probes = endpoints
                .iter()
                .flat_map(|e| e.iter().flatten())
                .map(|e| reachable(e));
            let any = futures_util::future::join_all(probes)
                .await
                .into_iter()
                .any(|ok| ok);
            (name.clone(), any)
        }
    });
    let results = futures_util::future::join_all(checks).await;
    let unreachable: Vec<&String> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect();
    if unreachable.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "models_without_reachable_endpoint": unreachable,
            })),
        )
            .into_response()
    }
}

/// An endpoint is reachable when a TCP connection to it opens. This proves the network path
/// and a listener, without spending a generation on it.
async fn reachable(endpoint: &UpstreamEndpoint) -> bool {
    let url = endpoint.base_url();
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(
        tokio::time::timeout(
            READY_PROBE_TIMEOUT,
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

pub async fn metrics(State(w): State<Arc<WorkerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        w.shared.metrics.encode(),
    )
        .into_response()
}

/// The models the caller may use (all of them when auth is off).
pub async fn models(
    State(w): State<Arc<WorkerState>>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let principal = principal.map_or(Principal::Anonymous, |Extension(p)| p);
    let data = w
        .shared
        .model_names
        .iter()
        .filter(|name| principal.may_use(name))
        .map(|name| ModelObject::new(name.clone(), w.shared.started_unix, "sluice"))
        .collect();
    Json(ModelList::new(data)).into_response()
}

/// The API contract (see `openapi`), built once.
pub async fn openapi() -> Response {
    static DOCUMENT: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(crate::openapi::document);
    Json(&*DOCUMENT).into_response()
}

pub async fn not_found() -> Response {
    crate::error::json_error(
        StatusCode::NOT_FOUND,
        &sluice_api::ErrorResponse::new(
            "invalid_request_error",
            Some("unknown_url"),
            "unknown path; sluice serves POST /v1/chat/completions, GET /v1/models, /v1/admin/keys, /health, /ready, /metrics and /openapi.json",
        ),
    )
}
