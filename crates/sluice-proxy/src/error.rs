//! The crate's setup error ([`ProxyError`]) and the JSON error answers the proxy itself
//! produces, in the OpenAI envelope shape so clients surface them as they would a provider
//! error.

use std::path::PathBuf;

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

/// What can go wrong setting a proxy up: its config file, its certificate authority, the
/// extra upstream root. Each message names the file or key at fault and what to do.
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
}

impl From<ProxyError> for std::io::Error {
    fn from(e: ProxyError) -> Self {
        let kind = match &e {
            ProxyError::ConfigRead { source, .. }
            | ProxyError::CaRead { source, .. }
            | ProxyError::CaWrite { source, .. } => source.kind(),
            _ => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, e.to_string())
    }
}
