//! Answering from a recording: the stored response, or its events at once or at their
//! recorded pace.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_json::{Map, Value};

use crate::config::ReplayTiming;
use crate::entry::{Entry, RecordedEvent, RecordedRequest};
use crate::error::proxy_error;
use crate::fields::truncate_str;
use crate::headers::{header_map_from_pairs, ReplayOutcome, REPLAY_FILE_HEADER, REPLAY_HEADER};
use crate::key::RequestKey;
use crate::nearest::{echoed_request, Nearest, MAX_ECHOED_CHARS};

/// Recorded offsets beyond this are treated as this, so a hand-edited file cannot make a
/// replay wait for years (or overflow a deadline).
const MAX_EVENT_OFFSET: Duration = Duration::from_secs(3600);

/// The response recorded in `entry`.
pub fn replay_response(entry: &Entry, file_name: &str, timing: ReplayTiming) -> Response {
    let status = StatusCode::from_u16(entry.response.status).unwrap_or(StatusCode::OK);
    let body = match &entry.response.events {
        Some(events) => stream_body(events.clone(), timing),
        None => match entry.response.body.to_bytes() {
            Ok(bytes) => Body::from(bytes),
            Err(e) => {
                return proxy_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "replay_store_error",
                    format!("recording {file_name}: {e}; fix or delete the file"),
                    Map::new(),
                    ReplayOutcome::Miss,
                )
            }
        },
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = header_map_from_pairs(&entry.response.headers);
    resp.headers_mut()
        .insert(REPLAY_HEADER, ReplayOutcome::Hit.header_value());
    if let Ok(v) = HeaderValue::from_str(file_name) {
        resp.headers_mut().insert(REPLAY_FILE_HEADER, v);
    }
    resp
}

fn stream_body(events: Vec<RecordedEvent>, timing: ReplayTiming) -> Body {
    match timing {
        ReplayTiming::Instant => {
            let wire: String = events.iter().map(RecordedEvent::encode).collect();
            Body::from(wire)
        }
        ReplayTiming::Recorded { scale } => {
            let scale = if scale.is_finite() && scale >= 0.0 {
                scale
            } else {
                1.0
            };
            let start = tokio::time::Instant::now();
            let stream =
                futures_util::stream::unfold(events.into_iter(), move |mut events| async move {
                    let event = events.next()?;
                    // Deadlines are absolute (from the response head), so a late wake-up
                    // does not push every later event back.
                    let offset = Duration::try_from_secs_f64(event.offset_ms * scale / 1000.0)
                        .unwrap_or(Duration::ZERO)
                        .min(MAX_EVENT_OFFSET);
                    tokio::time::sleep_until(start + offset).await;
                    let chunk = Bytes::from(event.encode());
                    Some((Ok::<Bytes, std::io::Error>(chunk), events))
                });
            Body::from_stream(stream)
        }
    }
}

/// The strict-replay miss: 502 with the key, the request (bounded), and the nearest
/// recording with the fields that differ, the first of them spelled out in the message.
pub fn miss_response(
    key: &RequestKey,
    request: &RecordedRequest,
    nearest: Option<&Nearest>,
) -> Response {
    let mut extra = Map::new();
    extra.insert("key".to_owned(), Value::String(key.as_str().to_owned()));
    extra.insert("request".to_owned(), echoed_request(request));
    extra.insert(
        "nearest".to_owned(),
        nearest
            .and_then(|n| serde_json::to_value(n).ok())
            .unwrap_or(Value::Null),
    );
    proxy_error(
        StatusCode::BAD_GATEWAY,
        "replay_miss",
        format!(
            "no recording for {} {} in replay mode; {}. Record it with --mode replay-or-record or --mode record",
            request.method,
            truncate_str(request.path.clone(), MAX_ECHOED_CHARS),
            miss_hint(nearest)
        ),
        extra,
        ReplayOutcome::Miss,
    )
}

/// What the message and the log line say about the nearest recording.
pub fn miss_hint(nearest: Option<&Nearest>) -> String {
    match nearest {
        Some(n) => n.explanation(),
        None => "the recordings directory holds no entries".to_owned(),
    }
}
