//! The last chat requests received, as `GET /admin/requests` shows them, so a test can check
//! what a gateway actually forwarded (renamed model, unknown fields kept, ...).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use axum::body::Bytes;
use serde::Serialize;
use serde_json::Value;

/// How many requests are kept.
pub(crate) const LOGGED_REQUESTS: usize = 64;

/// Larger bodies are logged without their content, so the log stays small.
const MAX_LOGGED_BODY: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    entries: Mutex<VecDeque<Entry>>,
}

#[derive(Debug)]
struct Entry {
    request_id: Option<String>,
    trace: TraceHeaders,
    /// The body as received; parsed only when the log is read, to keep the hot path cheap.
    body: Option<Bytes>,
}

/// The W3C trace context a request carried, so a test can check a gateway propagates it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// One logged request as served: `body` is the JSON received, or null when it was not JSON
/// or too large to keep.
#[derive(Debug, Serialize)]
pub(crate) struct LoggedRequest {
    pub request_id: Option<String>,
    #[serde(flatten)]
    pub trace: TraceHeaders,
    pub body: Value,
}

impl RequestLog {
    pub(crate) fn record(&self, request_id: Option<String>, trace: TraceHeaders, body: &Bytes) {
        // `Bytes` clones share the buffer: no copy of the body.
        let body = (body.len() <= MAX_LOGGED_BODY).then(|| body.clone());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() == LOGGED_REQUESTS {
            entries.pop_front();
        }
        entries.push_back(Entry {
            request_id,
            trace,
            body,
        });
    }

    /// Oldest first.
    pub(crate) fn snapshot(&self) -> Vec<LoggedRequest> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter()
            .map(|e| LoggedRequest {
                request_id: e.request_id.clone(),
                trace: e.trace.clone(),
                body: e
                    .body
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_requests_with_parsed_bodies() {
        let log = RequestLog::default();
        for i in 0..70 {
            log.record(
                Some(format!("r{i}")),
                TraceHeaders::default(),
                &Bytes::from(format!("{{\"n\":{i}}}")),
            );
        }
        log.record(
            None,
            TraceHeaders::default(),
            &Bytes::from_static(b"not json"),
        );
        log.record(
            None,
            TraceHeaders::default(),
            &Bytes::from(vec![b' '; MAX_LOGGED_BODY + 1]),
        );
        let seen = log.snapshot();
        assert_eq!(seen.len(), LOGGED_REQUESTS);
        assert_eq!(seen[0].request_id.as_deref(), Some("r8"));
        assert_eq!(seen[0].body["n"], 8);
        assert_eq!(seen[LOGGED_REQUESTS - 2].body, Value::Null);
        assert_eq!(seen[LOGGED_REQUESTS - 1].body, Value::Null);
    }
}
