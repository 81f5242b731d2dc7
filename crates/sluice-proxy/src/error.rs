//! The crate's error ([`ProxyError`]: setting a proxy up, and offline work on a recordings
//! directory) and the JSON error answers the proxy itself produces, in the OpenAI envelope
//! shape so clients surface them as they would a provider error.

use std::path::PathBuf;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::headers::{ReplayOutcome, REPLAY_HEADER};

/// Sent on every answer the proxy makes up itself. The OpenAI and Anthropic SDKs honour
/// it: without it each replay miss would be sent three times, with a second of backoff,
/// and count as three misses. None of these answers changes on a retry.
pub const SHOULD_RETRY_HEADER: &str = "x-should-retry";

/// `{"error": {"type": kind, "message": message, ...extra}}` with `x-sluice-replay` and
/// `x-should-retry: false`.
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
    let mut resp = made_up(status, json!({ "error": error }));
    resp.headers_mut()
        .insert(REPLAY_HEADER, outcome.header_value());
    resp
}

/// A JSON answer of the proxy's own (an error, or an admin endpoint's refusal), marked so
/// that SDKs do not retry it.
pub fn made_up(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(SHOULD_RETRY_HEADER, http::HeaderValue::from_static("false"));
    resp
}

/// What can go wrong setting a proxy up (its config file, its certificate authority, the
/// extra upstream root) or working on a recordings directory offline (`sluice proxy
/// report` and `prune`). Each message names the file or key at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type; the message from the
    /// parser quotes the line and names the key.
    #[error("config file {path}: {message}")]
    ConfigParse { path: PathBuf, message: String },
    /// A value that parsed but makes no sense; `key` is its dotted path (`routes[1].url`).
    #[error("invalid config: `{key}`: {message}")]
    ConfigValue { key: String, message: String },
    #[error("no directory for the proxy's CA: set SLUICE_CA_DIR, XDG_DATA_HOME or HOME, or pass --ca-dir")]
    NoCaDir,
    #[error("cannot read CA file {path}: {source}; fix its permissions, or delete the CA directory to generate a new CA")]
    CaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path} is not usable: {reason}; delete the CA directory to generate a new CA (and trust the new one)")]
    CaInvalid { path: PathBuf, reason: String },
    #[error("cannot write CA file {path}: {source}")]
    CaWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a certificate for {subject}: {reason}")]
    Certificate { subject: String, reason: String },
    #[error("upstream CA file {path}: {reason}")]
    UpstreamCa { path: PathBuf, reason: String },
    /// `report`/`prune` was pointed at something that is not a recordings directory.
    #[error(
        "{path} is not a directory: pass the recordings directory the proxy ran with as --dir"
    )]
    NotADirectory { path: PathBuf },
    #[error("no last-run record in {path}: run the suite through the proxy first (any mode but passthrough), then report or prune")]
    NoLastRun { path: PathBuf },
    /// A recordings directory, an entry or a run record could not be read.
    #[error("cannot read {path}: {source}")]
    RecordingsRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid run record (delete it and run the suite again): {source}")]
    RunRecordParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the last run (started at {started_at_unix_ms} ms since the epoch) is still marked running: stop that proxy first; if it crashed, its usage may be incomplete — run the suite again, or pass --force")]
    LastRunRunning { started_at_unix_ms: u64 },
    #[error("the last run had {misses} replay miss(es), so it did not run the whole suite and pruning could delete recordings a fixed run needs; fix the misses and run again, or pass --force")]
    LastRunHadMisses { misses: u64 },
    #[error("the last run was in passthrough mode and used no recordings, so every entry looks unused; run the suite in replay (or another recording) mode first, or pass --force")]
    LastRunReadNothing,
    #[error("the last run used none of the {entries} recordings it could have used ({requests} request(s) reached the proxy otherwise): the suite may have crashed at start, skipped its tests, or not sent its requests to the proxy (check its base URL); pruning now would delete every recording. Run the whole suite through the proxy, or pass --force")]
    LastRunUsedNothing { entries: usize, requests: u64 },
    #[error("the last run used only {used} of the {reachable} recordings it could have used, below --min-used {min_percent} (percent): it looks like part of the suite did not run. Run the whole suite (for shards, pass each shard's run record with --run), lower --min-used if the suite really shrank, or pass --force")]
    LastRunUsedTooFew {
        used: usize,
        reachable: usize,
        min_percent: u8,
    },
    #[error("cannot remove {path}: {source}")]
    RecordingRemove {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<ProxyError> for std::io::Error {
    fn from(e: ProxyError) -> Self {
        let kind = match &e {
            ProxyError::ConfigRead { source, .. }
            | ProxyError::CaRead { source, .. }
            | ProxyError::CaWrite { source, .. }
            | ProxyError::RecordingsRead { source, .. }
            | ProxyError::RecordingRemove { source, .. } => source.kind(),
            ProxyError::NoLastRun { .. } => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, e.to_string())
    }
}
