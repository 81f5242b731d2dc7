//! OpenTelemetry traces of the request path, exported over OTLP/HTTP (`[otel]`; off unless an
//! endpoint is configured).
//!
//! - `context`: W3C `traceparent`/`tracestate`, read from clients, written upstream.
//! - `request`: [`RequestTrace`], the marks one request's phases leave, turned into spans
//!   when it finishes.
//! - `otlp`: the spans in OTLP's protobuf encoding.
//! - `export`: [`SpanExporter`], the queue and the thread that posts batches.
//!
//! Off, the request path pays one `None` check per phase: no ids, no clock reads, no
//! header lookups.

mod context;
mod export;
mod otlp;
mod request;

use std::sync::Arc;

pub use context::{hex, traceparent_value, SpanId, TraceId, TraceParent};
pub use export::{Collector, ExportCounters, SpanExporter, MAX_BATCH_SPANS};
pub use otlp::{export_request, AttrValue, Resource, SpanData, SpanKind, SpanStatus};
pub use request::{FinishedTrace, RequestSummary, RequestTrace};

use crate::chat::HeadView;

/// `[otel]`, checked.
#[derive(Debug, Clone)]
pub struct ResolvedOtel {
    /// `None`: traces are off.
    pub collector: Option<Collector>,
    pub service_name: String,
    pub sample_ratio: f64,
    /// Requests whose spans may wait for the exporter.
    pub queue_requests: usize,
}

/// Starts traces for requests and hands their spans to the exporter.
pub struct Tracer {
    exporter: SpanExporter,
    /// A new trace is sampled when the low 64 bits of its id are below this (ratio × 2^64).
    sample_below: u128,
}

impl Tracer {
    /// The tracer `[otel]` asks for, its export thread started; `None` when traces are off.
    pub fn start(config: &ResolvedOtel) -> std::io::Result<Option<Arc<Tracer>>> {
        let Some(collector) = config.collector.clone() else {
            return Ok(None);
        };
        let resource = Resource {
            attributes: vec![
                ("service.name", config.service_name.clone().into()),
                ("service.version", env!("CARGO_PKG_VERSION").into()),
                ("telemetry.sdk.name", "sluice".into()),
                ("telemetry.sdk.language", "rust".into()),
            ],
            scope_name: "sluice-gateway",
            scope_version: env!("CARGO_PKG_VERSION"),
        };
        let exporter = SpanExporter::start(collector, resource, config.queue_requests)?;
        Ok(Some(Arc::new(Tracer {
            exporter,
            sample_below: (config.sample_ratio.clamp(0.0, 1.0) * 2f64.powi(64)) as u128,
        })))
    }

    /// The trace of a request whose head is `head`: the client's, when it sent a valid
    /// `traceparent` (its sampling decision is followed), else a new one sampled by ratio.
    pub fn begin(&self, head: &HeadView, received: tokio::time::Instant) -> Box<RequestTrace> {
        let parent = head.header("traceparent").and_then(TraceParent::parse);
        let state = parent
            .and(head.header("tracestate"))
            .and_then(context::tracestate_to_forward);
        let below = self.sample_below;
        Box::new(RequestTrace::new(
            parent,
            state,
            |id| u128::from(id.low_u64()) < below,
            received,
        ))
    }

    /// Queues a finished request's trace for export.
    pub fn export(&self, trace: FinishedTrace) {
        self.exporter.export(trace);
    }

    pub fn counters(&self) -> &ExportCounters {
        self.exporter.counters()
    }

    /// Exports what is queued (at shutdown).
    pub fn close(&self) {
        self.exporter.close();
    }
}
