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

/// Why `sluice proxy report` or `prune` cannot do its work.
#[derive(Debug, thiserror::Error)]
pub enum RecordingsError {
    #[error(
        "{path} is not a directory: pass the recordings directory the proxy ran with as --dir"
    )]
    NotADirectory { path: std::path::PathBuf },
    #[error("no last-run record in {path}: run the suite through the proxy first (any mode but passthrough), then report or prune")]
    NoLastRun { path: std::path::PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid run record (delete it and run the suite again): {source}")]
    Parse {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("the last run (started at {started_at_unix_ms} ms since the epoch) is still marked running: stop that proxy first; if it crashed, its usage may be incomplete — run the suite again, or pass --force")]
    LastRunRunning { started_at_unix_ms: u64 },
    #[error("the last run had {misses} replay miss(es), so it did not run the whole suite and pruning could delete recordings a fixed run needs; fix the misses and run again, or pass --force")]
    LastRunHadMisses { misses: u64 },
    #[error("the last run was in passthrough mode and used no recordings, so every entry looks unused; run the suite in replay (or another recording) mode first, or pass --force")]
    LastRunReadNothing,
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
