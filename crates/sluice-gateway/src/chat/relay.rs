//! Relays an upstream SSE stream to the client event by event.
//!
//! Each upstream event is re-framed as it arrives (no buffering beyond one network read), and
//! read just enough to time the first token and pick up usage. A stream that breaks — the
//! connection drops, the total timeout expires, or the upstream ends without `[DONE]` — ends
//! with an OpenAI-style error event, never a silent truncation. Dropping the response body
//! (client gone) drops the upstream stream with it, which closes the upstream connection: the
//! engine sees the cancellation.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use sluice_api::chat::ChunkSummary;
use sluice_api::sse::{SseEvent, SseParser, DONE_EVENT};
use sluice_api::{ChunkShape, ErrorResponse, Usage};
use tokio::time::Instant;

use super::RequestCtx;
use crate::error::{GatewayError, TimeoutPhase};
use crate::services::Charge;
use crate::upstream::{error_chain, PooledBody, UpstreamEndpoint, UpstreamResponse};

/// How long to wait for the upstream to end its response after `[DONE]`.
const DRAIN_AFTER_DONE: std::time::Duration = std::time::Duration::from_secs(1);
/// Largest stream recorded for the cache (its events' data); a longer one is relayed and
/// not stored.
const MAX_RECORDED_BYTES: usize = 8 * 1024 * 1024;

/// A stream being recorded for the cache: stored only if it ends with `[DONE]` and carried
/// no error event.
struct Recording {
    key: sluice_cache::CacheKey,
    events: Vec<Bytes>,
    bytes: usize,
    /// Why it will not be stored, once that is known.
    spoiled: Option<&'static str>,
}

impl Recording {
    fn push(&mut self, data: &str) {
        if self.spoiled.is_some() {
            return;
        }
        self.bytes += data.len();
        if self.bytes > MAX_RECORDED_BYTES {
            self.spoiled = Some("too_large");
            self.events = Vec::new();
            return;
        }
        self.events.push(Bytes::copy_from_slice(data.as_bytes()));
    }
}

pub fn stream_response(
    endpoint: Arc<UpstreamEndpoint>,
    response: UpstreamResponse,
    ctx: RequestCtx,
    client_wants_usage: bool,
) -> Response {
    let timeouts = endpoint.timeouts();
    let received = ctx.received;
    let mut ctx = ctx;
    // The upstream answered: from now on the stream is charged what it relays.
    ctx.charge = Charge::Relayed { output_chunks: 0 };
    let recording = ctx.cache_write.take().map(|key| {
        Box::new(Recording {
            key,
            events: Vec::new(),
            bytes: 0,
            spoiled: None,
        })
    });
    let relay = StreamRelay {
        recording,
        upstream: response.into_body(),
        parser: SseParser::new(),
        events: Vec::new(),
        total_deadline: received + timeouts.total,
        first_event_deadline: Some(received + timeouts.first_byte),
        endpoint,
        ctx,
        done: false,
        client_wants_usage,
        saw_done: false,
        seen_token: false,
        usage: None,
    };
    let body = futures_util::stream::unfold(relay, |mut relay| async move {
        relay
            .next_output()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), relay))
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::OK;
    resp.extensions_mut()
        .insert(super::AnswerDeadline(received + timeouts.total));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies in front of the gateway not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

struct StreamRelay {
    upstream: PooledBody,
    parser: SseParser,
    events: Vec<SseEvent>,
    total_deadline: Instant,
    /// Until the first event arrives, the first-byte timeout applies too.
    first_event_deadline: Option<Instant>,
    endpoint: Arc<UpstreamEndpoint>,
    /// The request's context: accounted (finished) when the stream ends, or as 499 when the
    /// client goes away and this relay is dropped.
    ctx: RequestCtx,
    done: bool,
    client_wants_usage: bool,
    saw_done: bool,
    seen_token: bool,
    usage: Option<Usage>,
    /// The stream as the cache will store it (when the request's answer is to be stored).
    recording: Option<Box<Recording>>,
}

/// What the relay reads from one chunk.
struct ChunkRead {
    usage: Option<Usage>,
    has_error: bool,
    usage_only: bool,
    /// Known only before the first token (afterwards nobody asks).
    carries_token: bool,
}

enum Next {
    Chunk(Bytes),
    End,
    Timeout(TimeoutPhase),
    Broken(String),
}

impl StreamRelay {
    /// The next bytes for the client, or `None` when the response is complete.
    async fn next_output(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            let flight = self.ctx.flight.as_mut()?;
            if self.saw_done {
                // Read the upstream to its end, briefly, so its connection can go back to the
                // pool; nothing after `[DONE]` is relayed.
                let upstream = &mut self.upstream;
                let drain = async { while let Some(Ok(_)) = upstream.frame().await {} };
                let _ = flight
                    .wait_upstream(tokio::time::timeout(DRAIN_AFTER_DONE, drain))
                    .await;
                // A stream that ended with `[DONE]` and then its body: a clean exchange.
                self.upstream.release();
                self.finish(None);
                return None;
            }
            let (deadline, phase) = match self.first_event_deadline {
                Some(d) if d < self.total_deadline => (d, TimeoutPhase::FirstByte),
                _ => (self.total_deadline, TimeoutPhase::Total),
            };
            let next = flight
                .wait_upstream(tokio::time::timeout_at(deadline, self.upstream.frame()))
                .await;
            let next = match next {
                Err(_) => Next::Timeout(phase),
                Ok(None) => Next::End,
                Ok(Some(Err(e))) => Next::Broken(error_chain(&e)),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(bytes) => Next::Chunk(bytes),
                    // The client connection's bodies carry data frames only.
                    Err(_) => continue,
                },
            };
            match next {
                Next::Chunk(bytes) => {
                    if let Some(out) = self.relay_chunk(&bytes) {
                        return Some(out);
                    }
                }
                Next::End => {
                    let reason = if self.parser.has_partial_event() {
                        "the upstream closed the stream in the middle of an event"
                    } else {
                        "the upstream closed the stream before `data: [DONE]`"
                    };
                    return Some(self.break_stream(reason.to_owned()));
                }
                Next::Broken(reason) => return Some(self.break_stream(reason)),
                Next::Timeout(phase) => {
                    let e = GatewayError::UpstreamTimeout {
                        endpoint: self.endpoint.label.clone(),
                        phase,
                        limit: match phase {
                            TimeoutPhase::FirstByte => self.endpoint.timeouts().first_byte,
                            _ => self.endpoint.timeouts().total,
                        },
                    };
                    return Some(self.fail_with(e.to_body(), e.upstream_kind()));
                }
            }
        }
    }

    /// Parses one network read and frames every complete event in it for the client.
    fn relay_chunk(&mut self, bytes: &[u8]) -> Option<Bytes> {
        if self.saw_done {
            return None;
        }
        if self.parser.push(bytes, &mut self.events).is_err() {
            let reason = "an event-stream line exceeded the size limit".to_owned();
            return Some(self.break_stream(reason));
        }
        if self.events.is_empty() {
            return None;
        }
        self.first_event_deadline = None;
        let mut out = String::new();
        for event in std::mem::take(&mut self.events) {
            if self.saw_done {
                break;
            }
            if event.data == "[DONE]" {
                self.saw_done = true;
                out.push_str(DONE_EVENT);
                continue;
            }
            if let Some(recording) = &mut self.recording {
                recording.push(&event.data);
            }
            if !self.inspect(&event) {
                continue;
            }
            sluice_api::sse::encode_event_into(&mut out, event.event.as_deref(), &event.data);
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    /// Reads what the gateway needs from one event; false when the event is to be dropped
    /// (the usage chunk the gateway asked for on the client's behalf).
    fn inspect(&mut self, event: &SseEvent) -> bool {
        let Some(chunk) = self.read_chunk(&event.data) else {
            // Not a chunk sluice understands: pass it on untouched.
            return true;
        };
        let Some(flight) = &self.ctx.flight else {
            return true;
        };
        if chunk.has_error {
            flight
                .model
                .upstream_error(&self.endpoint.label, "stream_error");
            if let Some(recording) = &mut self.recording {
                recording.spoiled = Some("stream_error");
            }
        }
        if !self.seen_token && chunk.carries_token {
            self.seen_token = true;
            flight.model.first_token(flight.received.elapsed());
            if let Some(load) = &mut self.ctx.endpoint_load {
                load.first_token();
            }
        }
        if let Some(u) = chunk.usage {
            // Counted as reported, even if the client leaves before the stream's end.
            self.ctx.charge = Charge::Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            };
            self.usage = Some(u);
        }
        if !chunk.usage_only && !chunk.has_error {
            // One token a chunk: what a stream cut short is charged for its output.
            if let Charge::Relayed { output_chunks } = &mut self.ctx.charge {
                *output_chunks += 1;
            }
        }
        self.client_wants_usage || !chunk.usage_only
    }

    /// What one chunk says. Until the first token, serde reads the chunk's choices (does it
    /// carry a token?); after it, only usage, an error and an empty choice list matter, and
    /// the structural walk finds them without building the chunk (most of the relay's cost
    /// per event otherwise; docs/benchmarks-log.md). The walk leaves anything unusual to serde.
    fn read_chunk(&self, data: &str) -> Option<ChunkRead> {
        if self.seen_token {
            if let Some(shape) = ChunkShape::scan(data.as_bytes()) {
                return Some(ChunkRead {
                    usage: shape.usage,
                    has_error: shape.has_error,
                    usage_only: shape.usage_only,
                    carries_token: false,
                });
            }
        }
        let summary = serde_json::from_str::<ChunkSummary>(data).ok()?;
        Some(ChunkRead {
            carries_token: summary.carries_token(),
            has_error: summary.error.is_some(),
            usage_only: summary.is_usage_only(),
            usage: summary.usage,
        })
    }

    fn break_stream(&mut self, reason: String) -> Bytes {
        let e = GatewayError::UpstreamProtocol {
            endpoint: self.endpoint.label.clone(),
            reason: format!("stream broken: {reason}"),
        };
        let mut body = e.to_body();
        body.error.code = Some("upstream_stream_broken".into());
        self.fail_with(body, Some("stream_broken"))
    }

    fn fail_with(&mut self, body: ErrorResponse, kind: Option<&'static str>) -> Bytes {
        let request_id = self.ctx.id.as_str();
        tracing::warn!(request_id, endpoint = %self.endpoint.label, error = %body.error.message, "stream ended with an error");
        self.finish(kind);
        Bytes::from(sluice_api::sse::encode_event(None, &body.to_json()))
    }

    fn finish(&mut self, error_kind: Option<&'static str>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let (Some(kind), Some(flight)) = (error_kind, &self.ctx.flight) {
            flight.model.upstream_error(&self.endpoint.label, kind);
        }
        // The head went out as 200; a broken stream is counted by its upstream error.
        super::finish(
            &mut self.ctx,
            StatusCode::OK.as_u16(),
            self.usage.as_ref(),
            None,
        );
        if let Some(recording) = self.recording.take() {
            self.commit(*recording, error_kind);
        }
    }

    /// Stores a recorded stream that ended cleanly; counts why one is not stored.
    fn commit(&mut self, recording: Recording, error_kind: Option<&'static str>) {
        let spoiled = recording
            .spoiled
            .or(error_kind.map(|_| "stream_broken"))
            .or((!self.saw_done).then_some("stream_broken"));
        if let Some(reason) = spoiled {
            if let Some(m) = &self.ctx.shared.cache_metrics {
                m.skipped(reason);
            }
            return;
        }
        super::store_in_cache(
            &mut self.ctx,
            recording.key,
            "application/json",
            sluice_cache::StoredAnswer::Stream(recording.events),
            self.usage.as_ref(),
        );
    }
}
