//! [`RequestTrace`]: one chat request's trace while it runs. The phases mark where they
//! start and end (a few `Instant`s); a sampled request's marks go to the export thread when
//! it finishes ([`FinishedTrace`]), and the spans are built there.
//!
//! ```text
//! chat MODEL (server)                         parent: the client's traceparent, if any
//!   authenticate · parse · resolve_model · cache_lookup · admit · route
//!   upstream
//!     chat MODEL (client) per attempt         its id goes upstream in traceparent
//!   respond                                   a stream: until its last event
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use tokio::time::Instant;

use super::context::{traceparent_value, SpanId, TraceId, TraceParent};
use super::otlp::{AttrValue, SpanData, SpanKind, SpanStatus};
use crate::services::Phase;
use crate::upstream::UpstreamEndpoint;

/// A request's trace: its ids, and the marks its phases and upstream attempts left.
pub struct RequestTrace {
    trace_id: TraceId,
    /// The server span: the whole request.
    span_id: SpanId,
    remote_parent: Option<SpanId>,
    trace_state: Option<Box<str>>,
    sampled: bool,
    received: Instant,
    /// Unix nanoseconds at `received`.
    received_unix_nanos: u64,
    phases: Vec<PhaseMark>,
    attempts: Vec<AttemptMark>,
    /// Why the request failed, once it did (`error.type`).
    error: Option<Cow<'static, str>>,
}

struct PhaseMark {
    phase: Phase,
    id: SpanId,
    start: Instant,
    end: Option<Instant>,
    failed: bool,
}

struct AttemptMark {
    id: SpanId,
    parent: SpanId,
    endpoint: Arc<UpstreamEndpoint>,
    start: Instant,
    end: Option<Instant>,
    /// The upstream's status, when it answered.
    status: Option<u16>,
    /// `error.type` of a failed attempt.
    error: Option<&'static str>,
}

/// What the server span says about the finished request. Owned: the spans are built on the
/// export thread, off the request path.
pub struct RequestSummary {
    pub request_id: String,
    /// As the client named it.
    pub model: Option<String>,
    pub tenant: String,
    /// The endpoint that answered.
    pub endpoint: Option<Arc<UpstreamEndpoint>>,
    pub status: u16,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub stream: bool,
    pub peer: std::net::IpAddr,
}

impl RequestTrace {
    pub(super) fn new(
        parent: Option<TraceParent>,
        trace_state: Option<Box<str>>,
        sampled: impl FnOnce(TraceId) -> bool,
        received: Instant,
    ) -> RequestTrace {
        let (trace_id, remote_parent, sampled) = match parent {
            Some(p) => (p.trace_id, Some(p.parent_id), p.sampled()),
            None => {
                let id = TraceId::random();
                (id, None, sampled(id))
            }
        };
        let since = received.elapsed();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        RequestTrace {
            trace_id,
            span_id: SpanId::random(),
            remote_parent,
            trace_state,
            sampled,
            received,
            received_unix_nanos: now.saturating_sub(since).as_nanos() as u64,
            phases: Vec::new(),
            attempts: Vec::new(),
            error: None,
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// A phase starts (and the one before it ends).
    pub fn enter(&mut self, phase: Phase) {
        if !self.sampled {
            return;
        }
        let now = Instant::now();
        self.close_phase(now);
        self.phases.push(PhaseMark {
            phase,
            id: SpanId::random(),
            start: now,
            end: None,
            failed: false,
        });
    }

    /// The running phase ends, and nothing of the pipeline runs until the next `enter` (the
    /// client connection reads the body).
    pub fn leave(&mut self) {
        self.close_phase(Instant::now());
    }

    /// The request failed in the running phase.
    pub fn fail(&mut self, error_type: Cow<'static, str>) {
        if let Some(open) = self.phases.last_mut().filter(|p| p.end.is_none()) {
            open.failed = true;
        }
        self.error = Some(error_type);
    }

    /// An upstream attempt starts: returns the header lines that carry the trace to it
    /// (`traceparent`, and the client's `tracestate`), naming the attempt's span as parent.
    pub fn start_attempt(&mut self, endpoint: &Arc<UpstreamEndpoint>) -> Vec<u8> {
        let id = SpanId::random();
        let mut lines = Vec::with_capacity(72);
        lines.extend_from_slice(b"traceparent: ");
        lines.extend_from_slice(&traceparent_value(self.trace_id, id, self.sampled));
        lines.extend_from_slice(b"\r\n");
        if let Some(state) = &self.trace_state {
            lines.extend_from_slice(b"tracestate: ");
            lines.extend_from_slice(state.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        if self.sampled {
            let parent = self
                .phases
                .last()
                .filter(|p| p.end.is_none())
                .map_or(self.span_id, |p| p.id);
            self.attempts.push(AttemptMark {
                id,
                parent,
                endpoint: endpoint.clone(),
                start: Instant::now(),
                end: None,
                status: None,
                error: None,
            });
        }
        lines
    }

    /// The last attempt got an answer with `status`. A success stays open until the
    /// request ends (its body is part of it); anything else ends now.
    pub fn attempt_answered(&mut self, status: u16) {
        if let Some(a) = self.attempts.last_mut() {
            a.status = Some(status);
            if !(200..300).contains(&status) {
                a.end = Some(Instant::now());
            }
        }
    }

    /// The last attempt failed without an answer.
    pub fn attempt_failed(&mut self, error_type: &'static str) {
        if let Some(a) = self.attempts.last_mut() {
            a.error = Some(error_type);
            a.end = Some(Instant::now());
        }
    }

    fn close_phase(&mut self, now: Instant) {
        if let Some(open) = self.phases.last_mut().filter(|p| p.end.is_none()) {
            open.end = Some(now);
        }
    }

    /// The request ended: everything still open ends now. `None` unless sampled.
    pub fn finish(mut self, summary: RequestSummary) -> Option<FinishedTrace> {
        if !self.sampled {
            return None;
        }
        let ended = Instant::now();
        self.close_phase(ended);
        Some(FinishedTrace {
            trace: self,
            ended,
            summary,
        })
    }
}

/// A sampled request's marks and summary, on their way to the export thread, which turns
/// them into spans.
pub struct FinishedTrace {
    trace: RequestTrace,
    ended: Instant,
    summary: RequestSummary,
}

impl FinishedTrace {
    /// How many spans [`FinishedTrace::spans`] makes.
    pub fn span_count(&self) -> usize {
        1 + self.trace.phases.len() + self.trace.attempts.len()
    }

    /// The request's spans: the server span, one per phase, one per upstream attempt.
    pub fn spans(self) -> Vec<SpanData> {
        let FinishedTrace {
            trace: this,
            ended: now,
            summary,
        } = self;
        let summary = &summary;
        let at = |t: Instant| {
            this.received_unix_nanos + t.saturating_duration_since(this.received).as_nanos() as u64
        };
        let operation = match summary.model.as_deref() {
            Some(model) => Cow::Owned(format!("chat {model}")),
            None => Cow::Borrowed("chat"),
        };
        // A stream that broke after its head went out ends with a 5xx and no error of its own.
        let error = this
            .error
            .clone()
            .or_else(|| (summary.status >= 500).then(|| Cow::Owned(summary.status.to_string())));
        let mut spans = Vec::with_capacity(1 + this.phases.len() + this.attempts.len());
        spans.push(SpanData {
            trace_id: this.trace_id,
            span_id: this.span_id,
            parent: this.remote_parent,
            trace_state: this.trace_state.clone(),
            name: operation.clone(),
            kind: SpanKind::Server,
            start: at(this.received),
            end: at(now),
            attributes: server_attributes(summary, error.as_deref()),
            // A server span is an error when the server failed (5xx), not the client.
            status: match &error {
                Some(e) if summary.status >= 500 => SpanStatus::Error(e.clone()),
                _ => SpanStatus::Unset,
            },
            sampled: true,
        });
        for phase in &this.phases {
            spans.push(SpanData {
                trace_id: this.trace_id,
                span_id: phase.id,
                parent: Some(this.span_id),
                trace_state: None,
                name: Cow::Borrowed(phase.phase.as_str()),
                kind: SpanKind::Internal,
                start: at(phase.start),
                end: at(phase.end.unwrap_or(now)),
                attributes: Vec::new(),
                status: match (&this.error, phase.failed) {
                    (Some(e), true) => SpanStatus::Error(e.clone()),
                    _ => SpanStatus::Unset,
                },
                sampled: true,
            });
        }
        for attempt in &this.attempts {
            let mut attributes = vec![
                ("gen_ai.operation.name", AttrValue::from("chat")),
                ("sluice.endpoint", attempt.endpoint.label.clone().into()),
            ];
            if let Some(model) = &summary.model {
                attributes.push(("gen_ai.request.model", model.clone().into()));
            }
            let url = attempt.endpoint.base_url();
            if let Some(host) = url.host_str() {
                attributes.push(("server.address", host.to_owned().into()));
            }
            if let Some(port) = url.port_or_known_default() {
                attributes.push(("server.port", u64::from(port).into()));
            }
            if let Some(status) = attempt.status {
                attributes.push(("http.response.status_code", u64::from(status).into()));
            }
            let error = attempt.error.map(Cow::Borrowed).or_else(|| {
                attempt
                    .status
                    .filter(|s| *s >= 400)
                    .map(|s| Cow::Owned(s.to_string()))
            });
            if let Some(e) = &error {
                attributes.push(("error.type", AttrValue::Str(e.clone())));
            }
            spans.push(SpanData {
                trace_id: this.trace_id,
                span_id: attempt.id,
                parent: Some(attempt.parent),
                trace_state: None,
                name: operation.clone(),
                kind: SpanKind::Client,
                start: at(attempt.start),
                end: at(attempt.end.unwrap_or(now)),
                attributes,
                status: error.map_or(SpanStatus::Unset, SpanStatus::Error),
                sampled: true,
            });
        }
        spans
    }
}

/// The server span's attributes: OpenTelemetry's GenAI and HTTP conventions, and sluice's
/// own under `sluice.`.
fn server_attributes(s: &RequestSummary, error: Option<&str>) -> Vec<(&'static str, AttrValue)> {
    let mut a: Vec<(&'static str, AttrValue)> = Vec::with_capacity(14);
    a.push(("gen_ai.operation.name", "chat".into()));
    if let Some(model) = &s.model {
        a.push(("gen_ai.request.model", model.clone().into()));
    }
    if let Some(n) = s.input_tokens {
        a.push(("gen_ai.usage.input_tokens", n.into()));
    }
    if let Some(n) = s.output_tokens {
        a.push(("gen_ai.usage.output_tokens", n.into()));
    }
    a.push(("http.request.method", "POST".into()));
    a.push(("http.route", "/v1/chat/completions".into()));
    a.push(("http.response.status_code", u64::from(s.status).into()));
    a.push(("client.address", s.peer.to_string().into()));
    a.push(("sluice.request_id", s.request_id.clone().into()));
    a.push(("sluice.tenant", s.tenant.clone().into()));
    a.push(("sluice.stream", s.stream.into()));
    if let Some(endpoint) = &s.endpoint {
        a.push(("sluice.endpoint", endpoint.label.clone().into()));
    }
    if let Some(e) = error {
        a.push(("error.type", e.to_owned().into()));
    }
    a
}
