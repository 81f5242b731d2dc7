//! [`SpanExporter`]: finished spans leave the request path through a bounded queue; a thread
//! of their own batches them and posts them to the collector over OTLP/HTTP (protobuf).
//!
//! The request path only `try_send`s: a slow or dead collector costs dropped spans (counted
//! in `sluice_otel_spans_dropped_total`), never latency. The thread talks HTTP/1.1 with the
//! gateway's own client connection (`upstream::h1`): a deadline over each whole export, the
//! answer's head and body bounded, and the connection kept only after a clean exchange.

use std::future::poll_fn;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpStream;

use super::otlp::{export_request, Resource, SpanData};
use super::request::FinishedTrace;
use crate::http1::{Decoded, Framing};
use crate::upstream::h1::Connection;

/// Spans in one export request at most (a few hundred bytes each).
pub const MAX_BATCH_SPANS: usize = 512;
/// How long spans may wait to be batched.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Attempts per batch when the collector is unreachable or says to come back.
const ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Largest collector answer read (an `ExportTraceServiceResponse` is a few bytes, or an
/// error message).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long `close` waits for the last export.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the spans go: `http://HOST:PORT[/prefix]` + `/v1/traces`.
#[derive(Debug, Clone)]
pub struct Collector {
    /// `host:port`, resolved at each connect (collectors move).
    pub authority: String,
    /// The `Host` header value.
    pub host: String,
    pub path: String,
    /// Deadline of one export attempt: connect, send, answer.
    pub timeout: Duration,
}

/// The exporter's counts on `/metrics`: `sluice_otel_spans_exported_total` and
/// `sluice_otel_spans_dropped_total{reason}`.
#[derive(Debug, Clone)]
pub struct ExportCounters {
    pub exported: Counter,
    pub dropped: Family<DropReason, Counter>,
    dropped_queue_full: Counter,
    dropped_export_failed: Counter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropReason {
    /// `queue_full` or `export_failed`.
    pub reason: &'static str,
}

impl Default for ExportCounters {
    fn default() -> Self {
        let dropped = Family::<DropReason, Counter>::default();
        // Both series exist from the start, at zero: a dashboard sees them before trouble.
        let dropped_queue_full = dropped
            .get_or_create(&DropReason {
                reason: "queue_full",
            })
            .clone();
        let dropped_export_failed = dropped
            .get_or_create(&DropReason {
                reason: "export_failed",
            })
            .clone();
        ExportCounters {
            exported: Counter::default(),
            dropped,
            dropped_queue_full,
            dropped_export_failed,
        }
    }
}

enum Message {
    /// Boxed: a request's marks and summary are some 300 bytes; the channel's slots are
    /// the size of its largest message.
    Trace(Box<FinishedTrace>),
    Close(std::sync::mpsc::Sender<()>),
}

/// The request path's end of the exporter.
pub struct SpanExporter {
    queue: SyncSender<Message>,
    counters: ExportCounters,
}

impl SpanExporter {
    /// Starts the export thread; at most `capacity` requests' spans wait for it.
    pub fn start(
        collector: Collector,
        resource: Resource,
        capacity: usize,
    ) -> std::io::Result<SpanExporter> {
        let (queue, spans) = sync_channel(capacity.max(1));
        let counters = ExportCounters::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = ExportThread {
            collector,
            resource,
            counters: counters.clone(),
            connection: None,
            last_warning: None,
        };
        std::thread::Builder::new()
            .name("sluice-otel".into())
            .spawn(move || thread.run(&runtime, spans))?;
        Ok(SpanExporter { queue, counters })
    }

    /// Queues one request's trace; drops (and counts its spans) when the queue is full.
    pub fn export(&self, trace: FinishedTrace) {
        match self.queue.try_send(Message::Trace(Box::new(trace))) {
            Ok(()) => {}
            Err(
                TrySendError::Full(Message::Trace(t))
                | TrySendError::Disconnected(Message::Trace(t)),
            ) => {
                self.counters
                    .dropped_queue_full
                    .inc_by(t.span_count() as u64);
            }
            Err(_) => {}
        }
    }

    pub fn counters(&self) -> &ExportCounters {
        &self.counters
    }

    /// Exports what is queued and stops the thread (at shutdown).
    pub fn close(&self) {
        let (done, acknowledged) = std::sync::mpsc::channel();
        if self.queue.send(Message::Close(done)).is_ok()
            && acknowledged.recv_timeout(CLOSE_TIMEOUT).is_err()
        {
            tracing::warn!(
                "traces: the last spans were not exported within {CLOSE_TIMEOUT:?} of shutdown"
            );
        }
    }
}

impl Drop for SpanExporter {
    fn drop(&mut self) {
        self.close();
    }
}

struct ExportThread {
    collector: Collector,
    resource: Resource,
    counters: ExportCounters,
    /// Kept between exports after a clean exchange.
    connection: Option<Connection<TcpStream>>,
    last_warning: Option<Instant>,
}

/// Why one export attempt failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Exchange(String),
    #[error("the collector answered {status}: {message}")]
    Status { status: u16, message: String },
}

impl ExportError {
    /// Whether trying again may help (OTLP/HTTP: 429, 502, 503, 504, and the network).
    fn retryable(&self) -> bool {
        match self {
            ExportError::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            _ => true,
        }
    }
}

impl ExportThread {
    fn run(mut self, runtime: &tokio::runtime::Runtime, queue: Receiver<Message>) {
        let mut pending: Vec<SpanData> = Vec::new();
        let mut oldest: Option<Instant> = None;
        loop {
            let wait = oldest.map_or(FLUSH_INTERVAL, |t| {
                FLUSH_INTERVAL.saturating_sub(t.elapsed())
            });
            let mut closing = None;
            match queue.recv_timeout(wait) {
                Ok(Message::Trace(trace)) => {
                    oldest.get_or_insert_with(Instant::now);
                    pending.extend(trace.spans());
                }
                Ok(Message::Close(done)) => closing = Some(done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(runtime, &mut pending);
                    return;
                }
            }
            // Whatever else is queued joins this batch.
            while closing.is_none() && pending.len() < MAX_BATCH_SPANS {
                match queue.try_recv() {
                    Ok(Message::Trace(trace)) => pending.extend(trace.spans()),
                    Ok(Message::Close(done)) => closing = Some(done),
                    Err(_) => break,
                }
            }
            let due = oldest.is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL);
            if closing.is_some() || due || pending.len() >= MAX_BATCH_SPANS {
                self.flush(runtime, &mut pending);
                oldest = None;
            }
            if let Some(done) = closing {
                let _ = done.send(());
                return;
            }
        }
    }

    /// Exports everything pending, in batches.
    fn flush(&mut self, runtime: &tokio::runtime::Runtime, pending: &mut Vec<SpanData>) {
        while !pending.is_empty() {
            let n = pending.len().min(MAX_BATCH_SPANS);
            let batch: Vec<SpanData> = pending.drain(..n).collect();
            let body = export_request(&self.resource, &batch);
            match runtime.block_on(self.export_with_retries(&body)) {
                Ok(()) => {
                    self.counters.exported.inc_by(n as u64);
                }
                Err(e) => {
                    self.counters.dropped_export_failed.inc_by(n as u64);
                    self.warn(&e, n);
                }
            }
        }
    }

    async fn export_with_retries(&mut self, body: &[u8]) -> Result<(), ExportError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.post(body).await {
                Ok(()) => return Ok(()),
                Err(e) if e.retryable() && attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "traces: export failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One export attempt under one deadline.
    async fn post(&mut self, body: &[u8]) -> Result<(), ExportError> {
        let timeout = self.collector.timeout;
        let exchange = self.exchange(body);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // Whatever the connection was doing, its state is unknown now.
                self.connection = None;
                Err(ExportError::Timeout(timeout))
            }
        }
    }

    async fn exchange(&mut self, body: &[u8]) -> Result<(), ExportError> {
        let reusable = self
            .connection
            .take()
            .and_then(|mut c| c.is_open_while_idle().then_some(c));
        let mut connection = match reusable {
            Some(c) => c,
            None => {
                let tcp = TcpStream::connect(&self.collector.authority)
                    .await
                    .map_err(ExportError::Connect)?;
                let _ = tcp.set_nodelay(true);
                Connection::new(tcp)
            }
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-protobuf\r\nuser-agent: sluice/{}\r\ncontent-length: {}\r\n\r\n",
            self.collector.path,
            self.collector.host,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        connection
            .write_request([head.as_bytes(), body])
            .await
            .map_err(|e| ExportError::Exchange(format!("sending: {e}")))?;
        let answer = connection
            .read_head()
            .await
            .map_err(|e| ExportError::Exchange(e.to_string()))?;
        let mut framing = answer.framing;
        let text = read_answer(&mut connection, &mut framing).await?;
        // Kept only when the exchange ended cleanly where the framing says it ends.
        if answer.keep_alive && framing == Framing::Done && !connection.has_unread() {
            self.connection = Some(connection);
        }
        if answer.status.is_success() {
            return Ok(());
        }
        Err(ExportError::Status {
            status: answer.status.as_u16(),
            message: String::from_utf8_lossy(&text[..text.len().min(200)])
                .trim()
                .to_owned(),
        })
    }

    /// At most one warning every ten seconds: a dead collector must not flood the log.
    fn warn(&mut self, e: &ExportError, spans: usize) {
        if self
            .last_warning
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        self.last_warning = Some(Instant::now());
        tracing::warn!(
            collector = %self.collector.authority,
            error = %e,
            "traces: {spans} spans could not be exported and were dropped (counted in sluice_otel_spans_dropped_total)"
        );
    }
}

/// Reads the answer's body to its end, bounded.
async fn read_answer(
    connection: &mut Connection<TcpStream>,
    framing: &mut Framing,
) -> Result<Vec<u8>, ExportError> {
    let mut body = Vec::new();
    loop {
        match connection.decode(framing) {
            Ok(Decoded::Data(data)) => {
                if body.len() + data.len() > MAX_ANSWER_BYTES {
                    return Err(ExportError::Exchange(format!(
                        "the answer is larger than {} KiB",
                        MAX_ANSWER_BYTES / 1024
                    )));
                }
                body.extend_from_slice(&data);
                continue;
            }
            Ok(Decoded::End) => return Ok(body),
            Ok(Decoded::NeedMore) => {}
            Err(e) => return Err(ExportError::Exchange(e.to_string())),
        }
        match poll_fn(|cx| connection.poll_read_more(cx)).await {
            Ok(0) if *framing == Framing::UntilClose => {
                *framing = Framing::Done;
                return Ok(body);
            }
            Ok(0) => {
                return Err(ExportError::Exchange(
                    "the collector closed the connection before its answer ended".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(ExportError::Exchange(e.to_string())),
        }
    }
}
