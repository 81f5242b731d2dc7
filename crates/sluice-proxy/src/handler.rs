//! One request through the proxy: find its target, compute its key, then per mode answer
//! from disk, call upstream (recording or not), or report a miss. Reverse, forward and
//! tunnelled requests all take this path.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use http::request::Parts;
use http::StatusCode;
use serde_json::Map;

use crate::admin;
use crate::ca::{default_ca_dir, CertificateAuthority};
use crate::config::{Mode, ProxyConfig};
use crate::diff_mode::serve_diff;
use crate::drift::redact_str;
use crate::entry::{Entry, RecordedRequest};
use crate::error::proxy_error;
use crate::error::ProxyError;
use crate::fields::truncate_str;
use crate::forward::{forward, RecordPlan, UpstreamClient};
use crate::headers::{ReplayOutcome, BYPASS_HEADER, REPLAY_HEADER};
use crate::key::{NormalisedRequest, RequestKey};
use crate::metrics::RefusalReason;
use crate::nearest::{nearest, MAX_ECHOED_CHARS};
use crate::redact::{is_secret_header, is_secret_query_param, SecretScanner};
use crate::replay::{miss_hint, miss_response, replay_response};
use crate::route::resolve;
use crate::store::{ReplayStore, StoreError};
use crate::usage::{MissRecord, RunUsage};

/// Request bodies larger than this are refused: recordings are for API calls, not uploads.
const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;

/// Shared by every request of one proxy.
#[derive(Debug)]
pub struct ProxyState {
    pub config: ProxyConfig,
    pub store: Arc<ReplayStore>,
    pub client: UpstreamClient,
    /// `read-old-write-new` serves only entries recorded before this instant.
    pub started_at_unix_ms: u64,
    /// The CA for CONNECT interception, once loaded or generated.
    pub ca: tokio::sync::OnceCell<Arc<CertificateAuthority>>,
    /// This run's usage, metrics and drift.
    pub usage: Arc<RunUsage>,
    /// [`ProxyConfig::diff_ignore`], shared with the tasks that record streams.
    pub diff_ignore: Arc<Vec<String>>,
    /// [`ProxyConfig::record_statuses`], shared with every record plan.
    pub record_statuses: Arc<[u16]>,
}

impl ProxyState {
    /// The CA, loaded or generated on first use.
    pub async fn certificate_authority(&self) -> Result<Arc<CertificateAuthority>, ProxyError> {
        let configured = self.config.ca_dir.clone();
        self.ca
            .get_or_try_init(|| async move {
                let dir: PathBuf = match configured {
                    Some(dir) => dir,
                    None => default_ca_dir()?,
                };
                // Key generation and file writes block.
                tokio::task::spawn_blocking(move || CertificateAuthority::load_or_create(&dir))
                    .await
                    .map_err(|e| ProxyError::Certificate {
                        subject: "the proxy CA".to_owned(),
                        reason: format!("the generating task failed: {e}"),
                    })?
                    .map(Arc::new)
            })
            .await
            .cloned()
    }
}

pub async fn handle(state: Arc<ProxyState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if admin::is_reserved(parts.uri.path()) {
        // The proxy's own endpoints, before any routing; never forwarded nor counted.
        return admin::answer(&state, &parts.method, parts.uri.path()).await;
    }
    if parts.method == http::Method::CONNECT {
        // Only the outer connection answers CONNECT; inside a tunnel it is an error.
        state.usage.outcome(ReplayOutcome::Passthrough, None);
        return proxy_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect_in_tunnel",
            "CONNECT is not supported inside a CONNECT tunnel".to_owned(),
            Map::new(),
            ReplayOutcome::Passthrough,
        );
    }
    if state.client.sent_before(&parts.headers) {
        tracing::error!(
            "proxy loop: {} {} came back to this proxy; its own HTTP_PROXY/HTTPS_PROXY points at itself. Unset them in the proxy's environment, or list the upstream hosts in NO_PROXY",
            parts.method,
            parts.uri
        );
        state.usage.outcome(ReplayOutcome::Passthrough, None);
        return proxy_error(
            StatusCode::LOOP_DETECTED,
            "proxy_loop",
            "this request came back to the sluice proxy that forwarded it: the proxy's own HTTP_PROXY/HTTPS_PROXY points at itself. Unset them in the proxy's environment, or list the upstream hosts in NO_PROXY".to_owned(),
            Map::new(),
            ReplayOutcome::Passthrough,
        );
    }
    let target = match resolve(&state.config.routes, &parts) {
        Ok(t) => t,
        Err(no) => {
            // Nothing was read or forwarded, but the run still saw the request.
            state.usage.outcome(ReplayOutcome::Passthrough, None);
            return proxy_error(
                no.status,
                no.kind,
                no.message,
                Map::new(),
                ReplayOutcome::Passthrough,
            );
        }
    };
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(e) => {
            state.usage.refusal(RefusalReason::RequestTooLarge);
            state.usage.outcome(ReplayOutcome::Passthrough, None);
            return proxy_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_body_unreadable",
                format!("cannot read the request body (limit {MAX_REQUEST_BODY} bytes): {e}"),
                Map::new(),
                ReplayOutcome::Passthrough,
            );
        }
    };
    let bypass = parts
        .headers
        .get(BYPASS_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    if bypass || state.config.mode == Mode::Passthrough {
        return forward(&state.client, &target.url, &parts, body, None, &state.usage).await;
    }

    let normalised = NormalisedRequest::new(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
        &body,
        &state.config.key,
    )
    .with_origin(target.origin.clone());
    let key = normalised.key();
    let request = RecordedRequest::new(&normalised, &body);
    let index = state.store.next_index(&key);
    let plan = RecordPlan {
        store: state.store.clone(),
        key: key.clone(),
        index,
        request,
        scanner: scanner_for(&state.config, &parts),
        usage: state.usage.clone(),
        record_statuses: state.record_statuses.clone(),
        compare_overwritten: matches!(state.config.mode, Mode::Record | Mode::ReadOldWriteNew)
            .then(|| state.diff_ignore.clone()),
    };
    if state.config.mode == Mode::Diff {
        return serve_diff(&state, &target.url, &parts, body, plan).await;
    }

    let stored = match state.config.mode {
        Mode::Replay | Mode::ReplayOrRecord => {
            lookup(&state, &plan.request, &key, index, true).await
        }
        Mode::ReadOldWriteNew => {
            lookup(&state, &plan.request, &key, index, false)
                .await
                .map(|found| {
                    found.filter(|(_, entry)| entry.recorded_at_unix_ms < state.started_at_unix_ms)
                })
        }
        Mode::Record | Mode::Passthrough | Mode::Diff => Ok(None),
    };
    match stored {
        Err(e) => {
            tracing::error!(
                "cannot answer {} {} from the recordings: {e}",
                parts.method,
                parts.uri.path()
            );
            state.usage.refusal(RefusalReason::StoreError);
            state.usage.outcome(ReplayOutcome::Miss, None);
            proxy_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "replay_store_error",
                e.to_string(),
                Map::new(),
                ReplayOutcome::Miss,
            )
        }
        Ok(Some((file, entry))) => {
            let resp = replay_response(&entry, &file, state.config.replay_timing);
            let served = resp
                .headers()
                .get(REPLAY_HEADER)
                .is_some_and(|v| v.as_bytes() == ReplayOutcome::Hit.as_str().as_bytes());
            if served {
                state.usage.outcome(ReplayOutcome::Hit, Some(&file));
            } else {
                // The recording's body could not be decoded.
                tracing::error!(
                    "recording {file} has a body that cannot be decoded; fix or delete the file"
                );
                state.usage.refusal(RefusalReason::StoreError);
                state.usage.outcome(ReplayOutcome::Miss, None);
            }
            resp
        }
        Ok(None) if state.config.mode == Mode::Replay => {
            let store = state.store.clone();
            let request = plan.request.clone();
            let ignore = state.config.key.ignore_paths.clone();
            // Reading every recording is blocking file I/O.
            let nearest = tokio::task::spawn_blocking(move || nearest(&store, &request, &ignore))
                .await
                .ok()
                .flatten();
            // The log and the run record are kept: what they quote of the request is
            // scanned for secrets as a recording would be.
            let label = plan.request.label().map(|l| redact_str(l, &plan.scanner));
            tracing::warn!(
                "replay miss: {} {}{} (key {}{}); {}",
                plan.request.method,
                plan.request.origin.as_deref().unwrap_or(""),
                truncate_str(plan.request.path.clone(), MAX_ECHOED_CHARS),
                key.short(),
                label
                    .as_deref()
                    .map(|l| format!(", {l}"))
                    .unwrap_or_default(),
                redact_str(miss_hint(nearest.as_ref()), &plan.scanner),
            );
            state.usage.miss(MissRecord {
                key: key.as_str().to_owned(),
                method: plan.request.method.clone(),
                origin: plan.request.origin.clone(),
                path: plan.request.path.clone(),
                label,
                nearest: nearest.as_ref().map(|n| n.file.clone()),
            });
            miss_response(&key, &plan.request, nearest.as_ref())
        }
        Ok(None) => {
            forward(
                &state.client,
                &target.url,
                &parts,
                body,
                Some(plan),
                &state.usage,
            )
            .await
        }
    }
}

/// The entry to answer with, as `(file name, entry)`. With `repeat_last`, the last
/// recording answers requests beyond the recorded count.
pub(crate) async fn lookup(
    state: &ProxyState,
    request: &RecordedRequest,
    key: &RequestKey,
    index: usize,
    repeat_last: bool,
) -> Result<Option<(String, Entry)>, StoreError> {
    let store = state.store.clone();
    let (method, path, key) = (request.method.clone(), request.name_path(), key.clone());
    let found = tokio::task::spawn_blocking(move || {
        if repeat_last {
            store.load_for_replay(&method, &path, &key, index)
        } else {
            store.load(&method, &path, &key, index)
        }
    })
    .await
    .unwrap_or(Ok(None))?;
    Ok(found.map(|(path, entry)| {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (name, entry)
    }))
}

/// A scanner knowing the configured secrets and this request's own credentials.
fn scanner_for(config: &ProxyConfig, parts: &Parts) -> SecretScanner {
    let mut scanner = SecretScanner::new(&config.secret_values);
    for (name, value) in &parts.headers {
        if is_secret_header(name.as_str()) {
            scanner.add_credential(&String::from_utf8_lossy(value.as_bytes()));
        }
    }
    for pair in parts.uri.query().unwrap_or("").split('&') {
        if let Some((name, value)) = pair.split_once('=') {
            if is_secret_query_param(name) {
                scanner.add_credential(value);
            }
        }
    }
    scanner
}
