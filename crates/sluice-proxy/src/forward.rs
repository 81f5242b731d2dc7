//! Live calls to the upstream, relayed to the client and, when asked, recorded.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use serde_json::Map;
use sluice_api::sse::{SseEvent, SseParser};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::compare::{compare_responses, FieldDrift};
use crate::drift::{ComparedRequest, DriftItem, DriftSource};
use crate::entry::{Entry, RecordedEvent, RecordedRequest, RecordedResponse, StoredBody};
use crate::error::proxy_error;
use crate::headers::{
    client_response_headers, is_event_stream, recordable_response_headers,
    upstream_request_headers, ReplayOutcome, REPLAY_FILE_HEADER, REPLAY_HEADER,
};
use crate::key::RequestKey;
use crate::metrics::RefusalReason;
use crate::redact::SecretScanner;
use crate::store::ReplayStore;
use crate::usage::RunUsage;

/// The client of every upstream call, and this proxy's entry in their `via` header.
#[derive(Debug)]
pub struct UpstreamClient {
    pub http: reqwest::Client,
    /// `1.1 sluice-proxy-<12 hex>`, unique to this process and start. A request that
    /// arrives carrying it has come back around a loop (the proxy's own `HTTPS_PROXY`
    /// points at itself).
    pub via: String,
    /// [`crate::ProxyConfig::max_response_bytes`].
    pub max_response_bytes: usize,
    /// [`crate::ProxyConfig::upstream_read_timeout`], set on `http`; kept for messages.
    pub read_timeout: std::time::Duration,
}

impl UpstreamClient {
    pub fn new(
        http: reqwest::Client,
        started_at_unix_ms: u64,
        config: &crate::ProxyConfig,
    ) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(std::process::id().to_le_bytes());
        h.update(started_at_unix_ms.to_le_bytes());
        h.update(format!("{:?}", std::time::Instant::now()));
        let digest = h.finalize();
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        UpstreamClient {
            http,
            via: format!("1.1 sluice-proxy-{hex}"),
            max_response_bytes: config.max_response_bytes,
            read_timeout: config.upstream_read_timeout,
        }
    }

    /// Whether a request carries this proxy's `via` entry: it went through this very
    /// proxy before.
    pub fn sent_before(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get_all(http::header::VIA)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains(self.via.as_str())))
    }
}

/// What to record a live answer as.
#[derive(Debug)]
pub struct RecordPlan {
    pub store: Arc<ReplayStore>,
    pub key: RequestKey,
    pub index: usize,
    pub request: RecordedRequest,
    pub scanner: SecretScanner,
    pub usage: Arc<RunUsage>,
    /// Set in the modes that overwrite (`record`, `read-old-write-new`): the response
    /// fields the comparison of the old recording with the new one ignores.
    pub compare_overwritten: Option<Arc<Vec<String>>>,
    /// Non-2xx statuses recorded as well ([`crate::ProxyConfig::record_statuses`]).
    pub record_statuses: Arc<[u16]>,
}

impl RecordPlan {
    fn records(&self, status: StatusCode) -> bool {
        status.is_success() || self.record_statuses.contains(&status.as_u16())
    }
}

impl RecordPlan {
    fn entry(&self, response: RecordedResponse) -> Entry {
        Entry::new(&self.key, self.request.clone(), response)
    }

    pub fn file_name(&self) -> String {
        ReplayStore::file_name(
            &self.request.method,
            &self.request.name_path(),
            &self.key,
            self.index,
        )
    }

    /// Scans `entry` for secrets; `Err` carries the log line naming the field.
    fn check(&self, entry: &Entry) -> Result<(), String> {
        let value = serde_json::to_value(entry).map_err(|e| format!("cannot serialize: {e}"))?;
        match self.scanner.scan(&value) {
            Some(found) => Err(format!(
                "refusing to record {}: field `{}` contains a {}",
                self.file_name(),
                found.field,
                found.what
            )),
            None => Ok(()),
        }
    }

    /// Checks and writes `entry`, logging why when it is not written, and counts the
    /// request's outcome. An overwritten recording whose content changed is reported as
    /// drift.
    async fn check_and_write(self, entry: Entry) -> ReplayOutcome {
        if let Err(why) = self.check(&entry) {
            tracing::error!("{why}");
            self.usage.refusal(RefusalReason::Secret);
            self.usage.outcome(ReplayOutcome::Refused, None);
            return ReplayOutcome::Refused;
        }
        let index = self.index;
        let store = self.store.clone();
        let compare = self.compare_overwritten.clone();
        // fsync blocks (and so does reading the recording being replaced); keep it off
        // the async workers.
        let written = tokio::task::spawn_blocking(move || {
            let previous = compare.and_then(|ignore| {
                let key = RequestKey::from_hex(&entry.key);
                let old = store.load(
                    &entry.request.method,
                    &entry.request.name_path(),
                    &key,
                    index,
                );
                match old {
                    Ok(Some((_, old))) => {
                        Some(compare_responses(&old.response, &entry.response, &ignore))
                    }
                    // Nothing to replace, or a file too broken to compare with.
                    Ok(None) | Err(_) => None,
                }
            });
            store.write(&entry, index).map(|path| (path, previous))
        })
        .await;
        match written {
            Ok(Ok((path, previous))) => {
                tracing::debug!("recorded {}", path.display());
                let file = self.file_name();
                if let Some(differences) = previous {
                    self.report_overwrite(&file, differences);
                }
                self.usage.outcome(ReplayOutcome::Recorded, Some(&file));
                ReplayOutcome::Recorded
            }
            Ok(Err(e)) => {
                tracing::error!("{e}");
                self.usage.refusal(RefusalReason::StoreError);
                self.usage.outcome(ReplayOutcome::Passthrough, None);
                ReplayOutcome::Passthrough
            }
            Err(e) => {
                tracing::error!("recording task failed: {e}");
                self.usage.refusal(RefusalReason::StoreError);
                self.usage.outcome(ReplayOutcome::Passthrough, None);
                ReplayOutcome::Passthrough
            }
        }
    }

    fn report_overwrite(&self, file: &str, differences: Vec<FieldDrift>) {
        let compared = ComparedRequest {
            file: file.to_owned(),
            key: self.key.as_str().to_owned(),
            method: self.request.method.clone(),
            origin: self.request.origin.clone(),
            path: self.request.path.clone(),
            label: self.request.label(),
            source: DriftSource::Overwrite,
        };
        let item = DriftItem::new(compared, Some(differences), &self.scanner);
        if !item.differences.is_empty() {
            tracing::warn!(
                "recording {file} changed: {}",
                item.differences
                    .iter()
                    .map(|d| d.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.usage.drift(item);
    }
}

/// Sends the request to `url`. `Err` is the 502 to answer with.
async fn send_upstream(
    client: &UpstreamClient,
    url: &str,
    parts: &Parts,
    body: Bytes,
) -> Result<reqwest::Response, Response> {
    let mut headers = upstream_request_headers(&parts.headers);
    // RFC 9110 §7.6.3: a proxy adds itself to `via`; here it is also how a loop is seen.
    if let Ok(via) = HeaderValue::from_str(&client.via) {
        headers.append(http::header::VIA, via);
    }
    let sent = client
        .http
        .request(parts.method.clone(), url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    sent.map_err(|e| {
        let chain = error_chain(&e);
        if e.is_timeout() && !e.is_connect() {
            tracing::warn!("upstream {url} did not answer in time: {chain}");
            return proxy_error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "upstream {url} sent no answer within upstream_read_timeout ({:?}): {chain}",
                    client.read_timeout
                ),
                Map::new(),
                ReplayOutcome::Passthrough,
            );
        }
        let hint = if looks_like_tls_trust(&chain) {
            "; if the upstream's certificate is signed by a private or corporate CA, pass that CA's certificate with --upstream-ca FILE"
        } else {
            "; check the upstream URL and that it is running"
        };
        tracing::warn!("cannot reach upstream {url}: {chain}{hint}");
        proxy_error(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("cannot reach upstream {url}: {chain}{hint}"),
            Map::new(),
            ReplayOutcome::Passthrough,
        )
    })
}

/// Whether a connect error is the upstream's certificate not being trusted.
fn looks_like_tls_trust(chain: &str) -> bool {
    let chain = chain.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "unknown issuer",
        "self signed",
        "self-signed",
    ]
    .iter()
    .any(|needle| chain.contains(needle))
}

fn upstream_body_failed(url: &str, e: &reqwest::Error) -> Response {
    let chain = error_chain(e);
    tracing::warn!("upstream {url} broke off while sending its body: {chain}");
    proxy_error(
        StatusCode::BAD_GATEWAY,
        "upstream_body_failed",
        format!("upstream {url} failed while sending its body: {chain}"),
        Map::new(),
        ReplayOutcome::Passthrough,
    )
}

fn upstream_body_too_large(url: &str, limit: usize) -> Response {
    tracing::warn!("upstream {url} sent an answer over max_response_bytes ({limit} bytes)");
    proxy_error(
        StatusCode::BAD_GATEWAY,
        "upstream_body_too_large",
        format!(
            "upstream {url} sent an answer over {limit} bytes (max_response_bytes); \
             raise it if such answers are expected"
        ),
        Map::new(),
        ReplayOutcome::Passthrough,
    )
}

/// Reads a whole answer, refusing one over `limit` bytes rather than holding whatever an
/// upstream sends (decompressed size: a small compressed body can be a large one).
async fn read_body(
    mut upstream: reqwest::Response,
    url: &str,
    limit: usize,
) -> Result<Bytes, Response> {
    if upstream.content_length().is_some_and(|n| n > limit as u64) {
        return Err(upstream_body_too_large(url, limit));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = upstream
        .chunk()
        .await
        .map_err(|e| upstream_body_failed(url, &e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(upstream_body_too_large(url, limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Sends the request to `url`, relays the answer, and records it under `plan` when it is a
/// 2xx (or a configured status) that completes cleanly. Counts the outcome in `usage`.
pub async fn forward(
    client: &UpstreamClient,
    url: &str,
    parts: &Parts,
    body: Bytes,
    plan: Option<RecordPlan>,
    usage: &RunUsage,
) -> Response {
    let upstream_resp = match send_upstream(client, url, parts, body).await {
        Ok(sent) => sent,
        Err(resp) => {
            usage.outcome(ReplayOutcome::Passthrough, None);
            return resp;
        }
    };
    let head_at = Instant::now();
    let status = upstream_resp.status();
    let headers = upstream_resp.headers().clone();
    let plan = plan.filter(|p| p.records(status));
    let recorded_head = RecordedResponse {
        status: status.as_u16(),
        headers: recordable_response_headers(&headers),
        body: StoredBody::default(),
        events: None,
    };

    if is_event_stream(&headers) {
        let (plan, outcome) = match plan {
            // Secrets in the request or response head are known now; refusing here lets
            // the client see `refused` on the response head.
            Some(plan) => match plan.check(&plan.entry(recorded_head.clone())) {
                Ok(()) => (Some(plan), ReplayOutcome::Recorded),
                Err(why) => {
                    tracing::error!("{why}");
                    usage.refusal(RefusalReason::Secret);
                    usage.outcome(ReplayOutcome::Refused, None);
                    (None, ReplayOutcome::Refused)
                }
            },
            None => {
                usage.outcome(ReplayOutcome::Passthrough, None);
                (None, ReplayOutcome::Passthrough)
            }
        };
        let file = plan.as_ref().map(RecordPlan::file_name);
        let body = relay_stream(
            upstream_resp,
            url,
            head_at,
            recorded_head,
            plan,
            client.max_response_bytes,
        );
        return client_response(status, &headers, body, outcome, file);
    }

    let bytes = match read_body(upstream_resp, url, client.max_response_bytes).await {
        Ok(b) => b,
        Err(failed) => {
            usage.outcome(ReplayOutcome::Passthrough, None);
            return failed;
        }
    };
    let (outcome, file) = match plan {
        Some(plan) => {
            let file = plan.file_name();
            let entry = plan.entry(RecordedResponse {
                body: StoredBody::from_bytes(&bytes),
                ..recorded_head
            });
            let outcome = plan.check_and_write(entry).await;
            (
                outcome,
                (outcome == ReplayOutcome::Recorded).then_some(file),
            )
        }
        None => {
            usage.outcome(ReplayOutcome::Passthrough, None);
            (ReplayOutcome::Passthrough, None)
        }
    };
    client_response(status, &headers, Body::from(bytes), outcome, file)
}

/// An error with its causes: reqwest's own message hides why a connection failed (refused,
/// certificate not trusted, ...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A live answer read to its end, for `diff` mode.
#[derive(Debug)]
pub struct LiveAnswer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub bytes: Bytes,
    /// The answer in recorded form (events parsed for an event stream; offsets are 0).
    pub response: RecordedResponse,
}

/// Calls upstream and reads the whole answer. `Err` is the 502 to answer with.
pub async fn fetch_whole(
    client: &UpstreamClient,
    url: &str,
    parts: &Parts,
    body: Bytes,
) -> Result<LiveAnswer, Response> {
    let upstream_resp = send_upstream(client, url, parts, body).await?;
    let status = upstream_resp.status();
    let headers = upstream_resp.headers().clone();
    let bytes = read_body(upstream_resp, url, client.max_response_bytes).await?;
    let mut response = RecordedResponse {
        status: status.as_u16(),
        headers: recordable_response_headers(&headers),
        body: StoredBody::default(),
        events: None,
    };
    if is_event_stream(&headers) {
        let mut parser = SseParser::new();
        let mut parsed = Vec::new();
        // A malformed stream is compared as far as it parsed; the drift shows the rest.
        let _ = parser.push(&bytes, &mut parsed);
        response.events = Some(
            parsed
                .into_iter()
                .map(|e| RecordedEvent {
                    offset_ms: 0.0,
                    event: e.event,
                    id: e.id,
                    data: e.data,
                })
                .collect(),
        );
    } else {
        response.body = StoredBody::from_bytes(&bytes);
    }
    Ok(LiveAnswer {
        status,
        headers,
        bytes,
        response,
    })
}

pub fn client_response(
    status: StatusCode,
    upstream_headers: &http::HeaderMap,
    body: Body,
    outcome: ReplayOutcome,
    file: Option<String>,
) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = client_response_headers(upstream_headers);
    resp.headers_mut()
        .insert(REPLAY_HEADER, outcome.header_value());
    if let Some(v) = file.and_then(|f| HeaderValue::from_str(&f).ok()) {
        resp.headers_mut().insert(REPLAY_FILE_HEADER, v);
    }
    resp
}

/// Relays an event stream chunk by chunk while timing its events; records it when it ended
/// cleanly (no transport error, no event cut in half) and the client read it all.
fn relay_stream(
    upstream: reqwest::Response,
    url: &str,
    head_at: Instant,
    recorded_head: RecordedResponse,
    mut plan: Option<RecordPlan>,
    max_recorded_bytes: usize,
) -> Body {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let url = url.to_owned();
    tokio::spawn(async move {
        let mut parser = SseParser::new();
        let mut parsed: Vec<SseEvent> = Vec::new();
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut clean = true;
        let mut recorded_bytes = 0usize;
        let mut body = upstream.bytes_stream();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    let offset_ms = head_at.elapsed().as_secs_f64() * 1000.0;
                    recorded_bytes = recorded_bytes.saturating_add(bytes.len());
                    if recorded_bytes > max_recorded_bytes {
                        // The client still gets every byte; only the recording stops.
                        if let Some(plan) = plan.take() {
                            tracing::warn!(
                                "not recording {}: the stream is over max_response_bytes ({max_recorded_bytes} bytes)",
                                plan.file_name()
                            );
                            plan.usage.refusal(RefusalReason::ResponseTooLarge);
                            plan.usage.outcome(ReplayOutcome::Passthrough, None);
                            events = Vec::new();
                            parser = SseParser::new();
                        }
                    }
                    if plan.is_some() {
                        if parser.push(&bytes, &mut parsed).is_err() {
                            clean = false;
                        }
                        events.extend(parsed.drain(..).map(|e| RecordedEvent {
                            offset_ms: (offset_ms * 1000.0).round() / 1000.0,
                            event: e.event,
                            id: e.id,
                            data: e.data,
                        }));
                    }
                    if tx.send(Ok(bytes)).await.is_err() {
                        // The client went away; what it did not read is not worth keeping.
                        if let Some(plan) = &plan {
                            plan.usage.outcome(ReplayOutcome::Passthrough, None);
                        }
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "upstream {url} broke off its event stream after {:.0} ms: {}; the client's stream is cut as well",
                        head_at.elapsed().as_secs_f64() * 1000.0,
                        error_chain(&e)
                    );
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    clean = false;
                    break;
                }
            }
        }
        // `tx` stays open until the entry is written, so a client that has seen the end of
        // the stream can rely on the recording being on disk.
        let Some(plan) = plan else { return };
        if !clean || parser.has_partial_event() {
            tracing::warn!(
                "not recording {}: the upstream stream did not end cleanly",
                plan.file_name()
            );
            plan.usage.refusal(RefusalReason::IncompleteStream);
            plan.usage.outcome(ReplayOutcome::Passthrough, None);
            return;
        }
        let entry = plan.entry(RecordedResponse {
            events: Some(events),
            ..recorded_head
        });
        plan.check_and_write(entry).await;
        drop(tx);
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Body::from_stream(stream)
}
