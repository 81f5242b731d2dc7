//! The proxy's own endpoints under the reserved prefix `/_sluice/`: metrics and the entry
//! listing. Nothing under the prefix is forwarded or recorded.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::json;

use crate::handler::ProxyState;
use crate::report::entry_summaries;

pub async fn metrics(State(state): State<Arc<ProxyState>>, req: Request) -> Response {
    if let Some(resp) = only_get(&req) {
        return resp;
    }
    let mut resp = state.usage.metrics().encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Every entry file with its request, status, recording time, event count and whether this
/// run used it.
pub async fn entries(State(state): State<Arc<ProxyState>>, req: Request) -> Response {
    if let Some(resp) = only_get(&req) {
        return resp;
    }
    let store = state.store.clone();
    let used = state.usage.used_files();
    // Reads every recording: blocking file I/O.
    let listed = tokio::task::spawn_blocking(move || entry_summaries(&store, Some(&used))).await;
    match listed {
        Ok(Ok(entries)) => axum::Json(entries).into_response(),
        Ok(Err(e)) => admin_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "replay_store_error",
            format!("cannot list the recordings directory: {e}"),
        ),
        Err(e) => admin_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "replay_store_error",
            format!("listing failed: {e}"),
        ),
    }
}

pub async fn not_found(req: Request) -> Response {
    admin_error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "{} is not a sluice proxy endpoint; paths under /_sluice/ are reserved for the proxy itself (GET /_sluice/metrics, GET /_sluice/entries) and never forwarded",
            req.uri().path()
        ),
    )
}

fn only_get(req: &Request) -> Option<Response> {
    (req.method() != Method::GET && req.method() != Method::HEAD).then(|| {
        let mut resp = admin_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} {} is not allowed; use GET",
                req.method(),
                req.uri().path()
            ),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        resp
    })
}

fn admin_error(status: StatusCode, kind: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": {"type": kind, "message": message}})),
    )
        .into_response()
}
