//! The HTTP surface of the mock engine.

mod admin;
mod chat;
mod chunks;
mod errors;
mod stream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sluice_api::models::{ModelList, ModelObject};

use crate::engine::MockEngine;
use errors::ApiError;

/// Room for long-context prompts; far above what one chat request needs in practice.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(crate) fn router(engine: Arc<MockEngine>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route(
            "/admin/faults",
            get(admin::get_faults)
                .put(admin::put_faults)
                .patch(admin::patch_faults),
        )
        .route("/admin/stats", get(admin::stats))
        .route("/admin/requests", get(admin::requests))
        .route("/admin/kv-cache/reset", post(admin::reset_kv_cache))
        .route("/admin/kv-events", get(admin::kv_events))
        .route("/admin/kv-events/drop", post(admin::drop_kv_batches))
        .route("/admin/kv-events/restart", post(admin::restart_kv))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            engine.clone(),
            echo_request_id,
        ))
        .with_state(engine)
}

/// Echoes `x-request-id` on every answer and remembers the ids of API requests, so a test
/// can check that a gateway forwarded them.
async fn echo_request_id(
    State(engine): State<Arc<MockEngine>>,
    request: Request,
    next: Next,
) -> Response {
    let id = request.headers().get(&X_REQUEST_ID).cloned();
    if let Some(id) = &id {
        if request.uri().path().starts_with("/v1/") {
            engine
                .counters()
                .record_request_id(&String::from_utf8_lossy(id.as_bytes()));
        }
    }
    let mut response = next.run(request).await;
    if let Some(id) = id {
        response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
    response
}

/// Checks `Authorization: Bearer <key>` when the engine requires a key.
fn authorize(engine: &MockEngine, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &engine.options().require_api_key else {
        return Ok(());
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    if given == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("Incorrect API key provided."))
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(engine): State<Arc<MockEngine>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&engine, &headers) {
        return e.into_response();
    }
    let created = unix_now();
    let list = ModelList::new(
        engine
            .options()
            .served_models
            .iter()
            .map(|m| ModelObject::new(m, created, "sluice-mock"))
            .collect(),
    );
    Json(list).into_response()
}

/// 200 while well; 503 with the `unhealthy` fault, as vLLM answers once its engine died.
async fn health(State(engine): State<Arc<MockEngine>>) -> (StatusCode, Json<serde_json::Value>) {
    if engine.faults().unhealthy {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"status": "ok"})))
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}
