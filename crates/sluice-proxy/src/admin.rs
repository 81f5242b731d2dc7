//! The proxy's own endpoints under the reserved prefix `/_sluice/`: metrics, the entry
//! listing, and the reset of the repeat counts. Nothing under the prefix is forwarded or recorded, whichever way the request
//! arrived (origin-form, absolute-form, or inside a CONNECT tunnel): the handler answers
//! it here before any routing.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::json;

use crate::error::made_up;
use crate::handler::ProxyState;
use crate::headers::RESERVED_PREFIX;
use crate::report::entry_summaries;

/// Whether `path` lies under the reserved prefix: `/_sluice` itself or below it, not
/// `/_sluicex`.
pub fn is_reserved(path: &str) -> bool {
    path.strip_prefix(RESERVED_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The answer to a request for a reserved path.
pub async fn answer(state: &ProxyState, method: &Method, path: &str) -> Response {
    match path {
        "/_sluice/metrics" => match refuse_method(method, path, Allowed::Get) {
            Some(refused) => refused,
            None => metrics(state),
        },
        "/_sluice/entries" => match refuse_method(method, path, Allowed::Get) {
            Some(refused) => refused,
            None => entries(state).await,
        },
        "/_sluice/reset" => match refuse_method(method, path, Allowed::Post) {
            Some(refused) => refused,
            None => reset(state),
        },
        _ => not_found(path),
    }
}

fn metrics(state: &ProxyState) -> Response {
    let mut resp = state.usage.metrics().encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Every entry file with its request, status, recording time, event count and whether this
/// run used it.
async fn entries(state: &ProxyState) -> Response {
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

/// Restarts the repeat counts, so a long-lived proxy serves the suite's next run as it
/// served the first. The run's usage (last-run.json) goes on: it covers the process.
fn reset(state: &ProxyState) -> Response {
    let keys = state.store.reset_repeats();
    tracing::info!("repeat counts restarted by POST /_sluice/reset ({keys} keys)");
    axum::Json(json!({"reset": "repeat_counts", "keys": keys})).into_response()
}

fn not_found(path: &str) -> Response {
    admin_error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "{path} is not a sluice proxy endpoint; paths under /_sluice/ are reserved for the proxy itself (GET /_sluice/metrics, GET /_sluice/entries, POST /_sluice/reset) and never forwarded"
        ),
    )
}

/// Reading endpoints take GET (and HEAD); the reset takes POST.
#[derive(Clone, Copy)]
enum Allowed {
    Get,
    Post,
}

/// The 405 answer when `method` is not what the endpoint takes.
fn refuse_method(method: &Method, path: &str, allowed: Allowed) -> Option<Response> {
    let (ok, use_, allow) = match allowed {
        Allowed::Get => (
            method == Method::GET || method == Method::HEAD,
            "GET",
            "GET, HEAD",
        ),
        Allowed::Post => (method == Method::POST, "POST", "POST"),
    };
    (!ok).then(|| {
        let mut resp = admin_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} {path} is not allowed; use {use_}"),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        resp
    })
}

fn admin_error(status: StatusCode, kind: &str, message: String) -> Response {
    made_up(status, json!({"error": {"type": kind, "message": message}}))
}

#[cfg(test)]
mod tests {
    use super::is_reserved;

    #[test]
    fn the_reserved_prefix_is_matched_on_segment_boundaries() {
        for path in ["/_sluice", "/_sluice/", "/_sluice/metrics", "/_sluice/a/b"] {
            assert!(is_reserved(path), "{path}");
        }
        for path in ["/_sluicex/y", "/v1/_sluice/metrics", "/", "/_sluic"] {
            assert!(!is_reserved(path), "{path}");
        }
    }
}
