//! [`RequestCtx`]: everything one chat request carries through the phases, from its head to
//! the end of its answer (for a stream, the end of the stream).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue, Method};
use bytes::Bytes;
use sluice_api::{ChatCompletionRequest, ProxyFields, RequestError};
use tokio::time::Instant;

use super::InFlight;
use crate::otel::RequestTrace;
use crate::request_id::RequestId;
use crate::services::{Charge, Decision, Permit, Phase, Principal};
use crate::state::{GatewayShared, ModelEntry};

/// One chat request. Built on its head by the client connection; the phases fill it in.
/// Dropped unfinished (the client went away), it is accounted as 499 (see `finish`).
pub struct RequestCtx {
    pub id: RequestId,
    pub received: Instant,
    pub head: HeadView,
    pub shared: Arc<GatewayShared>,
    pub principal: Principal,
    pub body: RequestBody,
    /// Set by the resolve-model phase.
    pub model: Option<Arc<ModelEntry>>,
    /// What the phases decided, kept while something reads it (an audit sink).
    pub decisions: Decisions,
    /// Metrics accounting, from the moment the model is known.
    pub flight: Option<InFlight>,
    /// Capacity the admit phase reserved; settled when the request finishes.
    pub permit: Option<Box<dyn Permit>>,
    /// What the request costs against its limits so far, moved on by the upstream phases
    /// (sent, answered, each chunk relayed); `finish` settles the permit with it, or with
    /// the usage the upstream reported.
    pub charge: Charge,
    /// The key the answer is to be stored under, if it succeeds (the cache missed, or the
    /// mode only writes).
    pub cache_write: Option<sluice_cache::CacheKey>,
    /// This request leads the flight of identical misses: storing its answer releases the
    /// waiters with it; dropping it (the request failed) sends them upstream.
    pub cache_leader: Option<sluice_cache::Leader>,
    /// The endpoint that answered (set by the call), for the access log: a reference-count
    /// increment, not a copy of its label.
    pub endpoint: Option<Arc<crate::upstream::UpstreamEndpoint>>,
    /// Header fields the phases add to the answer, whatever its kind.
    pub answer_headers: AnswerHeaders,
    /// The request's trace, when traces are on (`[otel]`).
    pub trace: Option<Box<RequestTrace>>,
    /// The answering attempt's share of its endpoint's load, as the router counts it;
    /// given back when the request ends, however it ends.
    pub endpoint_load: Option<sluice_routing::LoadGuard>,
    pub(super) finished: bool,
}

impl RequestCtx {
    pub fn new(shared: Arc<GatewayShared>, head: HeadView, id: RequestId) -> Self {
        let keep_decisions = shared.services.audit.is_some();
        let received = Instant::now();
        let trace = shared
            .services
            .tracer
            .as_ref()
            .map(|tracer| tracer.begin(&head, received));
        RequestCtx {
            id,
            received,
            head,
            shared,
            principal: Principal::Anonymous,
            body: RequestBody::default(),
            model: None,
            decisions: Decisions {
                kept: Vec::new(),
                keep: keep_decisions,
            },
            flight: None,
            permit: None,
            charge: Charge::NotSent,
            cache_write: None,
            cache_leader: None,
            endpoint: None,
            answer_headers: AnswerHeaders::default(),
            trace,
            endpoint_load: None,
            finished: false,
        }
    }

    /// A phase starts: its span, when the request is traced, runs until the next one starts.
    pub fn enter(&mut self, phase: Phase) {
        if let Some(trace) = &mut self.trace {
            trace.enter(phase);
        }
    }

    /// Records a decision (a no-op unless something reads decisions).
    pub fn decide(
        &mut self,
        phase: Phase,
        outcome: &'static str,
        detail: impl FnOnce() -> Option<String>,
    ) {
        self.decisions.push(phase, outcome, detail);
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if !self.finished {
            super::finish(self, crate::metrics::CLIENT_CLOSED, None, None);
        }
    }
}

/// The decisions of one request, collected only while some service reads them: a gateway
/// without an audit sink allocates nothing for them.
pub struct Decisions {
    kept: Vec<Decision>,
    keep: bool,
}

impl Decisions {
    fn push(
        &mut self,
        phase: Phase,
        outcome: &'static str,
        detail: impl FnOnce() -> Option<String>,
    ) {
        if self.keep {
            self.kept.push(Decision {
                phase,
                outcome,
                detail: detail(),
            });
        }
    }

    pub fn take(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.kept)
    }
}

/// The request head as the phases see it: method, target, peer, and header fields looked up
/// by name. A lookup scans the head's bytes, so a field no phase asks for costs nothing.
/// (Another front end, e.g. HTTP/2 from hyper, would build the same view from its own map.)
#[derive(Debug, Clone)]
pub struct HeadView {
    /// The head as received, request line to the empty line; checked by the connection's
    /// parser, so every field line is `name: value`.
    bytes: Bytes,
    pub method: Method,
    target: Range<usize>,
    pub peer: SocketAddr,
}

impl HeadView {
    pub fn new(bytes: Bytes, method: Method, target: Range<usize>, peer: SocketAddr) -> Self {
        HeadView {
            bytes,
            method,
            target,
            peer,
        }
    }

    /// The request target as sent (path and query).
    pub fn target(&self) -> &[u8] {
        self.bytes.get(self.target.clone()).unwrap_or_default()
    }

    /// The value of the first field named `name` (ASCII case-insensitive), whitespace
    /// trimmed.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every field's name and value, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        // Skip the request line; stop at the empty line.
        self.bytes
            .split(|&b| b == b'\n')
            .skip(1)
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .take_while(|line| !line.is_empty())
            .filter_map(|line| {
                let colon = memchr::memchr(b':', line)?;
                Some((&line[..colon], line[colon + 1..].trim_ascii()))
            })
    }

    /// The token of an `Authorization: Bearer TOKEN` field, if the request has one.
    pub fn bearer_token(&self) -> Option<&[u8]> {
        crate::auth::bearer_token(self.header("authorization")?)
    }
}

/// The request body: the client's bytes, the fields every request needs (the quick read),
/// and the full parse, made once when a phase first needs the messages.
#[derive(Default)]
pub struct RequestBody {
    pub raw: Bytes,
    pub fields: ProxyFields,
    /// Boxed: the rare case, and the context is moved into a stream's relay.
    parsed: Option<Box<ChatCompletionRequest>>,
}

impl RequestBody {
    /// Checks `raw`. Most bodies need only the quick read; any other goes through the full
    /// parse, which words the error of an invalid one.
    pub fn read(raw: Bytes) -> Result<Self, RequestError> {
        if let Some(fields) = ProxyFields::read(&raw) {
            return Ok(RequestBody {
                raw,
                fields,
                parsed: None,
            });
        }
        let request = ChatCompletionRequest::from_slice(&raw)?;
        Ok(RequestBody {
            fields: ProxyFields::of(&request),
            raw,
            parsed: Some(Box::new(request)),
        })
    }

    /// The whole request, parsed now if no phase has needed it before.
    pub fn parsed(&mut self) -> Result<&ChatCompletionRequest, RequestError> {
        let request = match self.parsed.take() {
            Some(request) => request,
            None => Box::new(ChatCompletionRequest::from_slice(&self.raw)?),
        };
        Ok(self.parsed.insert(request))
    }

    /// The whole request moved out (parsed now if need be), to lend to another thread;
    /// [`RequestBody::restore`] gives it back.
    pub fn take_parsed(&mut self) -> Result<Box<ChatCompletionRequest>, RequestError> {
        match self.parsed.take() {
            Some(request) => Ok(request),
            None => Ok(Box::new(ChatCompletionRequest::from_slice(&self.raw)?)),
        }
    }

    pub fn restore(&mut self, parsed: Box<ChatCompletionRequest>) {
        self.parsed = Some(parsed);
    }

    /// The parsed request, if a phase parsed it (without parsing now).
    pub fn parsed_if_any(&self) -> Option<&ChatCompletionRequest> {
        self.parsed.as_deref()
    }
}

/// Header fields for the answer. A handful at most, so a list, not a map.
#[derive(Debug, Default)]
pub struct AnswerHeaders(Vec<(HeaderName, HeaderValue)>);

impl AnswerHeaders {
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(field) => field.1 = value,
            None => self.0.push((name, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every field to `headers`, replacing a field of the same name.
    pub fn apply(self, headers: &mut axum::http::HeaderMap) {
        for (name, value) in self.0 {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn view(head: &str) -> HeadView {
        let bytes = Bytes::from(head.to_owned());
        let end = head.find(" HTTP/").unwrap();
        HeadView::new(bytes, Method::POST, 5..end, "127.0.0.1:9".parse().unwrap())
    }

    #[test]
    fn header_lookup_is_case_insensitive_trims_and_finds_the_first() {
        let v =
            view("POST /v1/x?q=1 HTTP/1.1\r\nHost: a\r\nX-Tenant:  t1 \r\nx-tenant: t2\r\n\r\n");
        assert_eq!(v.target(), b"/v1/x?q=1");
        assert_eq!(v.header("x-tenant"), Some(&b"t1"[..]));
        assert_eq!(v.header("HOST"), Some(&b"a"[..]));
        assert_eq!(v.header("missing"), None);
        assert_eq!(v.fields().count(), 3);
    }

    #[test]
    fn bearer_tokens_are_read_only_from_the_bearer_scheme() {
        let with = |auth: &str| view(&format!("POST / HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n"));
        assert_eq!(with("Bearer sk-1").bearer_token(), Some(&b"sk-1"[..]));
        assert_eq!(with("bearer  sk-2 ").bearer_token(), Some(&b"sk-2"[..]));
        assert_eq!(with("Basic abc").bearer_token(), None);
        assert_eq!(with("Bearer ").bearer_token(), None);
        assert_eq!(view("POST / HTTP/1.1\r\n\r\n").bearer_token(), None);
    }

    #[test]
    fn answer_headers_replace_a_field_of_the_same_name() {
        let mut h = AnswerHeaders::default();
        h.insert(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("1"),
        );
        h.insert(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("2"),
        );
        assert_eq!(h.iter().count(), 1);
        assert_eq!(h.iter().next().unwrap().1, "2");
    }
}
