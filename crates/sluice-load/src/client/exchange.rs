//! One request/response exchange, timed: when it was sent, when each token chunk arrived,
//! when the body ended, and what went wrong if anything did.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use sluice_api::chat::{ChunkSummary, UsageSummary};
use sluice_api::sse::{SseEvent, SseParser};
use sluice_api::Usage;

use super::connection::Connection;
use crate::clock::Clock;
use crate::record::ErrorClass;
use crate::stats::LatencyHistogram;
use crate::target::Target;

/// Bodies of error responses are read up to this size (to keep the connection usable and
/// to quote the server's message); the rest is discarded with the connection.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Error details quoted in reports are cut to this many characters.
const MAX_DETAIL_CHARS: usize = 300;

static SESSION_HEADER: HeaderName = HeaderName::from_static("x-session-id");

pub struct ExchangeRequest<'a> {
    pub target: &'a Target,
    pub body: Bytes,
    /// `--header` values, sent on every request.
    pub headers: &'a HeaderMap,
    pub session_id: Option<&'a str>,
    /// Keep the answer text (multi-turn history needs it).
    pub keep_text: bool,
}

#[derive(Debug, Default)]
pub struct ExchangeResult {
    pub sent_us: u64,
    pub first_token_us: Option<u64>,
    pub second_token_us: Option<u64>,
    pub end_us: u64,
    pub token_chunks: u32,
    pub max_gap_us: Option<u64>,
    pub usage: Option<Usage>,
    pub status: Option<u16>,
    pub error: Option<ErrorClass>,
    /// What the server or the socket said, for the report's error examples.
    pub error_detail: Option<String>,
    pub reply_text: Option<String>,
    /// The answer came as an event stream.
    pub streamed: bool,
    /// The connection can carry another request (the response was read to its end).
    pub reusable: bool,
}

impl ExchangeResult {
    fn fail(&mut self, class: ErrorClass, detail: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(class);
            let mut d: String = detail.into();
            if let Some((cut, _)) = d.char_indices().nth(MAX_DETAIL_CHARS) {
                d.truncate(cut);
            }
            self.error_detail = Some(d);
        }
    }
}

/// Sends the request on `conn` and reads the whole answer. Every gap between consecutive
/// token chunks is appended to `gaps` (microseconds). Never fails: failures are classified in
/// the result. Cancel-safe in the sense that matters: dropping it (timeout) drops nothing the
/// caller still needs, and the caller then discards the connection.
pub async fn exchange(
    conn: &mut Connection,
    req: ExchangeRequest<'_>,
    clock: &Clock,
    gaps: &mut Vec<u32>,
    receive_lag: &mut LatencyHistogram,
) -> ExchangeResult {
    let mut out = ExchangeResult::default();
    let request = build_request(&req);
    out.sent_us = clock.now_us();
    let response = conn.sender().send_request(request);
    let response = match conn.drive(response).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            out.end_us = clock.now_us();
            out.fail(ErrorClass::Connection, e.to_string());
            return out;
        }
        Err(ended) => {
            out.end_us = clock.now_us();
            out.fail(ErrorClass::Connection, ended.reason);
            return out;
        }
    };
    let status = response.status();
    out.status = Some(status.as_u16());
    let is_sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let mut body = response.into_body();
    if !status.is_success() {
        let (bytes, complete) = read_to_end(conn, &mut body, MAX_ERROR_BODY).await;
        out.end_us = clock.now_us();
        out.reusable = complete;
        out.fail(ErrorClass::Http(status.as_u16()), error_message(&bytes));
        return out;
    }
    if is_sse {
        out.streamed = true;
        read_stream(
            conn,
            &mut body,
            clock,
            gaps,
            receive_lag,
            req.keep_text,
            &mut out,
        )
        .await;
    } else {
        let (bytes, complete) = read_to_end(conn, &mut body, usize::MAX).await;
        out.end_us = arrived_at(conn, clock, out.sent_us);
        out.reusable = complete;
        if !complete {
            out.fail(ErrorClass::MidStream, "the response body was cut short");
            return out;
        }
        read_unary(&bytes, req.keep_text, &mut out);
    }
    out
}

fn build_request(req: &ExchangeRequest<'_>) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(req.body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = Uri::from(req.target.path.clone());
    let headers = request.headers_mut();
    headers.reserve(req.headers.len() + 3);
    headers.insert(HOST, req.target.host_header.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in req.headers {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(id) = req.session_id {
        if let Ok(v) = HeaderValue::from_str(id) {
            headers.insert(SESSION_HEADER.clone(), v);
        }
    }
    request
}

/// Reads the body to its end or to `limit` bytes. Returns the bytes and whether the end was
/// reached cleanly.
async fn read_to_end(
    conn: &mut Connection,
    body: &mut hyper::body::Incoming,
    limit: usize,
) -> (Bytes, bool) {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        match conn.drive(body.frame()).await {
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                // The common case is a body in one frame: keep it without copying.
                if first.is_none() && buf.is_empty() {
                    first = Some(data);
                } else {
                    if let Some(f) = first.take() {
                        buf.extend_from_slice(&f);
                    }
                    buf.extend_from_slice(&data);
                }
                let len = first.as_ref().map_or(buf.len(), Bytes::len);
                if len >= limit {
                    return (first.unwrap_or_else(|| buf.freeze()), false);
                }
            }
            Ok(None) => return (first.unwrap_or_else(|| buf.freeze()), true),
            Ok(Some(Err(_))) | Err(_) => return (first.unwrap_or_else(|| buf.freeze()), false),
        }
    }
}

/// When the bytes just delivered arrived: the kernel's receive time of the read that
/// brought them (see [`Connection::arrival`]), never before the request was sent nor after
/// now.
fn arrived_at(conn: &Connection, clock: &Clock, sent_us: u64) -> u64 {
    let now = clock.now_us();
    conn.arrival()
        .map_or(now, |a| a.at_us.clamp(sent_us.min(now), now))
}

#[allow(clippy::too_many_arguments)]
async fn read_stream(
    conn: &mut Connection,
    body: &mut hyper::body::Incoming,
    clock: &Clock,
    gaps: &mut Vec<u32>,
    receive_lag: &mut LatencyHistogram,
    keep_text: bool,
    out: &mut ExchangeResult,
) {
    let mut parser = SseParser::new();
    let mut events: Vec<SseEvent> = Vec::new();
    let mut done = false;
    let mut last_token_us: Option<u64> = None;
    let mut text = keep_text.then(String::new);
    loop {
        let frame = conn.drive(body.frame()).await;
        let now = arrived_at(conn, clock, out.sent_us);
        let data = match frame {
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Ok(None) => {
                out.end_us = now;
                out.reusable = true;
                break;
            }
            Ok(Some(Err(e))) => {
                out.end_us = now;
                out.fail(ErrorClass::MidStream, format!("stream broken: {e}"));
                break;
            }
            Err(ended) => {
                out.end_us = now;
                out.fail(
                    ErrorClass::MidStream,
                    format!("stream broken: {}", ended.reason),
                );
                break;
            }
        };
        if let Err(e) = parser.push(&data, &mut events) {
            out.end_us = now;
            out.fail(ErrorClass::Protocol, e.to_string());
            return;
        }
        for ev in events.drain(..) {
            if ev.data == "[DONE]" {
                done = true;
                continue;
            }
            if ev.event.as_deref() == Some("error") {
                out.fail(ErrorClass::MidStream, format!("error event: {}", ev.data));
                continue;
            }
            let chunk: ChunkSummary = match serde_json::from_str(&ev.data) {
                Ok(c) => c,
                Err(e) => {
                    out.fail(
                        ErrorClass::Protocol,
                        format!("stream event is not a JSON chunk ({e}): {}", ev.data),
                    );
                    continue;
                }
            };
            if let Some(err) = &chunk.error {
                out.fail(ErrorClass::MidStream, format!("error in stream: {err}"));
            }
            if chunk.carries_token() {
                out.token_chunks += 1;
                if let Some(lag) = conn.arrival().and_then(|a| a.lag_us) {
                    receive_lag.record(lag);
                }
                match last_token_us {
                    None => out.first_token_us = Some(now),
                    Some(prev) => {
                        if out.second_token_us.is_none() {
                            out.second_token_us = Some(now);
                        }
                        let gap = now.saturating_sub(prev);
                        gaps.push(u32::try_from(gap).unwrap_or(u32::MAX));
                        out.max_gap_us = Some(out.max_gap_us.map_or(gap, |m| m.max(gap)));
                    }
                }
                last_token_us = Some(now);
                if let Some(t) = text.as_mut() {
                    for choice in &chunk.choices {
                        if let Some(c) = choice.delta.as_ref().and_then(|d| d.content.as_deref()) {
                            t.push_str(c);
                        }
                    }
                }
            }
            if let Some(u) = chunk.usage {
                out.usage = Some(u);
            }
        }
    }
    if out.error.is_none() {
        if parser.has_partial_event() {
            out.fail(ErrorClass::MidStream, "stream ended inside an event");
        } else if !done {
            out.fail(ErrorClass::MidStream, "stream ended without `data: [DONE]`");
        }
    }
    out.reply_text = text;
}

#[derive(Deserialize)]
struct UnaryWithText {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Vec<UnaryChoice>,
}

#[derive(Deserialize)]
struct UnaryChoice {
    #[serde(default)]
    message: Option<UnaryMessage>,
}

#[derive(Deserialize)]
struct UnaryMessage {
    #[serde(default)]
    content: Option<String>,
}

fn read_unary(bytes: &[u8], keep_text: bool, out: &mut ExchangeResult) {
    if keep_text {
        match serde_json::from_slice::<UnaryWithText>(bytes) {
            Ok(a) => {
                out.usage = a.usage;
                out.reply_text = a
                    .choices
                    .into_iter()
                    .next()
                    .and_then(|c| c.message)
                    .and_then(|m| m.content);
            }
            Err(e) => out.fail(ErrorClass::Protocol, format!("response is not JSON: {e}")),
        }
    } else {
        match UsageSummary::from_body(bytes) {
            Ok(a) => out.usage = a.usage,
            Err(e) => out.fail(
                ErrorClass::Protocol,
                format!("response is not a chat completion: {e}"),
            ),
        }
    }
}

/// The server's own words for an error: `error.message` of an OpenAI envelope, or the start
/// of the body.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v
            .get("error")
            .and_then(|e| e.get("message").or(Some(e)))
            .and_then(|m| m.as_str())
        {
            return m.to_owned();
        }
    }
    String::from_utf8_lossy(body).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(br#"{"error":{"message":"model not found","type":"x"}}"#),
            "model not found"
        );
        assert_eq!(error_message(br#"{"error":"slow down"}"#), "slow down");
        assert_eq!(error_message(b"  Bad Gateway\n"), "Bad Gateway");
    }

    #[test]
    fn unary_usage_and_text() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"hi there"}}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let mut out = ExchangeResult::default();
        read_unary(body, true, &mut out);
        assert_eq!(out.reply_text.as_deref(), Some("hi there"));
        assert_eq!(out.usage.map(|u| u.completion_tokens), Some(2));
        let mut out = ExchangeResult::default();
        read_unary(b"<html>", false, &mut out);
        assert_eq!(out.error, Some(ErrorClass::Protocol));
    }
}
