//! JSON error answers the proxy itself produces, in the OpenAI envelope shape so clients
//! surface them as they would a provider error.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::headers::{ReplayOutcome, REPLAY_HEADER};

/// `{"error": {"type": kind, "message": message, ...extra}}` with `x-sluice-replay`.
pub fn proxy_error(
    status: StatusCode,
    kind: &str,
    message: String,
    extra: Map<String, Value>,
    outcome: ReplayOutcome,
) -> Response {
    let mut error = Map::new();
    error.insert("type".to_owned(), Value::String(kind.to_owned()));
    error.insert("message".to_owned(), Value::String(message));
    error.extend(extra);
    let mut resp = (status, axum::Json(json!({ "error": error }))).into_response();
    resp.headers_mut()
        .insert(REPLAY_HEADER, outcome.header_value());
    resp
}
