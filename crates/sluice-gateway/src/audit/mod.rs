//! The audit log: one JSON line per request, written off the request path.
//!
//! - [`AuditLog`] is the [`AuditSink`] the gateway plugs in: the request path hands it a record
//!   through a bounded queue and moves on; a writer thread formats, scrubs and writes. When the
//!   queue is full the record is dropped and counted — on `/metrics`
//!   (`sluice_audit_records_dropped_total`), in a warning, and in an `audit_overflow` line the
//!   writer adds to the log itself — never silently.
//! - [`scrub`] takes personal data and secrets out of whatever content is captured.
//! - `file`: the append-only file with size-based rotation and its fsync policy.
//!
//! No header is ever written: the record holds no headers at all, so `Authorization` and key
//! headers cannot reach the log; keys are named by their name, never their secret.

mod file;
pub mod scrub;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

pub use file::{FileSink, Fsync};

use crate::services::{AuditCounters, AuditRecord, AuditSink};

/// How much of a request's and an answer's text the log keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentCapture {
    /// Neither (the default): the log says who asked what model, how it went, not what.
    #[default]
    Off,
    /// The last user message and the answer, each cut to [`SNIPPET_CHARS`], scrubbed.
    Snippet,
    /// Every message and the whole answer, scrubbed.
    Full,
}

/// How long the writer lets records gather between drains.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Characters a snippet keeps.
pub const SNIPPET_CHARS: usize = 256;

/// Where lines go.
pub enum Destination {
    File(FileSink),
    /// Standard output, a pipe, anything written to in order (flushed per batch).
    Stream(Box<dyn std::io::Write + Send>),
}

/// What the writer is sent.
// A record moves through the queue by value: boxing it would allocate on every request.
#[allow(clippy::large_enum_variant)]
enum Message {
    Record(AuditRecord),
    /// Write out and sync everything before this, acknowledge, and stop.
    Close(std::sync::mpsc::Sender<()>),
}

/// How long `close` waits for the writer to finish.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The audit sink: a bounded queue in front of a writer thread.
pub struct AuditLog {
    queue: SyncSender<Message>,
    content: ContentCapture,
    counters: AuditCounters,
    /// Dropped since the writer last reported it in the log.
    unreported: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer thread. `capacity` records may wait for it; more are dropped.
    pub fn start(
        destination: Destination,
        content: ContentCapture,
        capacity: usize,
    ) -> std::io::Result<AuditLog> {
        let (queue, records) = sync_channel::<Message>(capacity.max(1));
        let counters = AuditCounters::default();
        let unreported = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            destination,
            content,
            written: counters.written.clone(),
            unreported: unreported.clone(),
        };
        std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || writer.run(records))?;
        Ok(AuditLog {
            queue,
            content,
            counters,
            unreported,
        })
    }
}

impl AuditSink for AuditLog {
    fn record(&self, record: AuditRecord) {
        match self.queue.try_send(Message::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.inc();
                // Warn on the first drop of a burst; the writer reports the count.
                if self.unreported.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        "audit log: the writer is behind and its queue is full; records are being dropped (counted in sluice_audit_records_dropped_total)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc();
            }
        }
    }

    fn wants_content(&self) -> bool {
        self.content != ContentCapture::Off
    }

    fn counters(&self) -> Option<AuditCounters> {
        Some(self.counters.clone())
    }

    fn close(&self) {
        let (done, acknowledged) = std::sync::mpsc::channel();
        // Waits for room if the queue is full: the records before it go first. A second
        // close finds the writer gone and returns at once.
        if self.queue.send(Message::Close(done)).is_ok()
            && acknowledged.recv_timeout(CLOSE_TIMEOUT).is_err()
        {
            tracing::error!("audit log: the writer did not finish within {CLOSE_TIMEOUT:?} of shutdown; the last records may be missing");
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    destination: Destination,
    content: ContentCapture,
    written: prometheus_client::metrics::counter::Counter,
    unreported: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, records: Receiver<Message>) {
        let mut line = Vec::with_capacity(1024);
        // Wait for a record (waking each second to sync what is written, per the policy),
        // then take whatever else is queued: one flush per batch.
        loop {
            let first = match records.recv_timeout(Duration::from_secs(1)) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    if let Destination::File(f) = &mut self.destination {
                        if let Err(e) = f.sync_if_due() {
                            tracing::error!(error = %e, "audit log: syncing failed");
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            batch.extend(records.try_iter().take(1023));
            let mut closing = None;
            for message in &batch {
                let record = match message {
                    Message::Record(r) => r,
                    Message::Close(done) => {
                        closing = Some(done.clone());
                        break;
                    }
                };
                line.clear();
                let formatted = format_record(record, self.content);
                if serde_json::to_writer(&mut line, &formatted).is_err() {
                    continue;
                }
                line.push(b'\n');
                self.write(&line);
            }
            let dropped = self.unreported.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                line.clear();
                let note = json!({"time": rfc3339(std::time::SystemTime::now()), "event": "audit_overflow", "dropped": dropped});
                if serde_json::to_writer(&mut line, &note).is_ok() {
                    line.push(b'\n');
                    self.write(&line);
                }
            }
            self.flush();
            if let Some(done) = closing {
                self.sync();
                // Closed before acknowledging: a record sent after `close` returns finds no
                // writer and is counted as dropped, never queued for nobody.
                drop(records);
                let _ = done.send(());
                return;
            }
            // Let records gather before the next drain: a writer woken for every record
            // makes every request pay a wake-up (and, on a busy core, a context switch);
            // pausing turns those into one per pause at any rate below the queue's size per
            // pause. Records wait at most this long more to be written.
            std::thread::sleep(BATCH_PAUSE);
        }
        self.flush();
    }

    fn write(&mut self, line: &[u8]) {
        let result = match &mut self.destination {
            Destination::File(f) => f.append(line),
            Destination::Stream(w) => w.write_all(line),
        };
        match result {
            Ok(()) => {
                self.written.inc();
            }
            Err(e) => {
                tracing::error!(error = %e, "audit log: a line could not be written");
            }
        }
    }

    /// Everything written, on the disk now (shutdown).
    fn sync(&mut self) {
        if let Destination::File(f) = &mut self.destination {
            if let Err(e) = f.sync_now() {
                tracing::error!(error = %e, "audit log: syncing failed");
            }
        }
    }

    fn flush(&mut self) {
        let result = match &mut self.destination {
            Destination::File(f) => f.end_batch(),
            Destination::Stream(w) => w.flush(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "audit log: flushing failed");
        }
    }
}

/// One line of the log, as written.
#[derive(serde::Serialize)]
pub struct Line<'a> {
    time: String,
    request_id: &'a str,
    tenant: &'a str,
    subject: Option<&'a str>,
    key: Option<&'a str>,
    route: &'a str,
    model: Option<&'a str>,
    endpoint: Option<&'a str>,
    status: u16,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cache: Option<&'a str>,
    latency_ms: f64,
    /// The gateway's own words (phases, endpoint labels, refusal reasons): nothing of the
    /// client's is in them.
    decisions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Content>,
}

#[derive(serde::Serialize)]
struct Content {
    prompt: Option<String>,
    answer: Option<String>,
}

/// The line of one record, its content scrubbed.
pub fn format_record(r: &AuditRecord, content: ContentCapture) -> Line<'_> {
    let cache = r
        .decisions
        .iter()
        .find(|d| d.phase == crate::services::Phase::CacheLookup)
        .map(|d| d.outcome);
    Line {
        time: rfc3339(r.time),
        request_id: &r.request_id,
        tenant: &r.tenant,
        subject: r.subject.as_deref(),
        key: r.key_name.as_deref(),
        route: r.route,
        model: r.model.as_deref(),
        endpoint: r.endpoint.as_deref(),
        status: r.status,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        cache,
        latency_ms: (r.duration.as_secs_f64() * 1e6).round() / 1e3,
        decisions: r.decisions.iter().map(ToString::to_string).collect(),
        content: (content != ContentCapture::Off).then(|| Content {
            prompt: r.request_body.as_deref().map(|b| prompt_text(b, content)),
            answer: r.answer_body.as_deref().map(|b| answer_text(b, content)),
        }),
    }
}

fn cut(text: &str, content: ContentCapture) -> String {
    // Scrubbed whole, then cut: cutting first could split a finding and leave its half.
    let scrubbed = scrub::scrub(text);
    match content {
        ContentCapture::Snippet => match scrubbed.char_indices().nth(SNIPPET_CHARS) {
            Some((end, _)) => scrubbed[..end].to_owned(),
            None => scrubbed.into_owned(),
        },
        _ => scrubbed.into_owned(),
    }
}

/// The request's messages as text: every message (`full`) or the last user message
/// (`snippet`). Only `messages[].role` and `messages[].content` are read; serde skips the
/// rest of the body without building it.
fn prompt_text(body: &[u8], content: ContentCapture) -> String {
    #[derive(serde::Deserialize)]
    struct Prompt<'a> {
        #[serde(borrow, default)]
        messages: Vec<PromptMessage<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct PromptMessage<'a> {
        #[serde(borrow, default)]
        role: std::borrow::Cow<'a, str>,
        #[serde(default)]
        content: Option<serde_json::Value>,
    }
    let Ok(prompt) = serde_json::from_slice::<Prompt<'_>>(body) else {
        return "[unparseable request]".into();
    };
    let text_of = |v: &serde_json::Value| -> Option<String> {
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            // Content parts: their texts, in order (images and audio are not text).
            serde_json::Value::Array(parts) => Some(
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        }
    };
    let mut texts = prompt
        .messages
        .iter()
        .filter(|m| content == ContentCapture::Full || m.role == "user")
        .filter_map(|m| m.content.as_ref().and_then(text_of));
    let text = match content {
        ContentCapture::Snippet => texts.next_back().unwrap_or_default(),
        _ => texts.collect::<Vec<_>>().join("\n"),
    };
    cut(&text, content)
}

/// The first choice's text of a completion; serde skips everything else without building it.
fn answer_text(body: &[u8], content: ContentCapture) -> String {
    #[derive(serde::Deserialize)]
    struct Completion {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        #[serde(default)]
        message: Option<Message>,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        #[serde(default)]
        content: Option<String>,
    }
    let text = serde_json::from_slice::<Completion>(body)
        .ok()
        .and_then(|c| c.choices.into_iter().next())
        .and_then(|c| c.message)
        .and_then(|m| m.content)
        .unwrap_or_default();
    cut(&text, content)
}

/// `2026-12-02T04:05:06.789Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Condvar, Mutex};

    use crate::services::{Decision, Phase};

    /// Whether the gate is open, and what was written through it.
    type GateState = Mutex<(bool, Vec<u8>)>;

    /// A stream that blocks every write until the test opens its gate.
    #[derive(Clone, Default)]
    struct Gate(Arc<(GateState, Condvar)>);

    impl std::io::Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut state = cv
                .wait_while(lock.lock().unwrap(), |(open, _)| !*open)
                .unwrap();
            state.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Gate {
        fn open(&self) {
            let (lock, cv) = &*self.0;
            lock.lock().unwrap().0 = true;
            cv.notify_all();
        }
        fn written(&self) -> String {
            String::from_utf8(self.0 .0.lock().unwrap().1.clone()).unwrap()
        }
    }

    fn record(i: u32) -> AuditRecord {
        AuditRecord {
            time: UNIX_EPOCH,
            request_id: format!("r{i}"),
            tenant: "t".into(),
            subject: None,
            key_name: None,
            route: "/v1/chat/completions",
            model: Some("m".into()),
            endpoint: None,
            status: 200,
            prompt_tokens: None,
            completion_tokens: None,
            decisions: vec![Decision {
                phase: Phase::CacheLookup,
                outcome: "miss",
                detail: None,
            }],
            duration: Duration::from_millis(3),
            request_body: None,
            answer_body: None,
        }
    }

    #[test]
    fn a_full_queue_drops_counts_and_reports_in_the_log() {
        let gate = Gate::default();
        let log = AuditLog::start(
            Destination::Stream(Box::new(gate.clone())),
            ContentCapture::Off,
            2,
        )
        .unwrap();
        // The writer takes the first record and blocks writing it; two more fill the queue;
        // the rest are dropped, without the callers ever waiting.
        log.record(record(0));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while log.queue.try_send(Message::Record(record(99))).is_ok() {
            // The queue had room: the writer had not taken record 0 yet. Fill it again.
            assert!(std::time::Instant::now() < deadline);
        }
        let counters = log.counters().unwrap();
        let before = counters.dropped.get();
        for i in 1..=5 {
            log.record(record(i));
        }
        assert_eq!(counters.dropped.get() - before, 5);
        gate.open();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !gate.written().contains("audit_overflow") {
            assert!(std::time::Instant::now() < deadline, "{}", gate.written());
            std::thread::sleep(Duration::from_millis(5));
        }
        let lines: Vec<serde_json::Value> = gate
            .written()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let overflow = lines
            .iter()
            .find(|l| l["event"] == "audit_overflow")
            .unwrap();
        assert_eq!(overflow["dropped"], 5 + before);
        assert_eq!(lines[0]["request_id"], "r0");
        assert_eq!(lines[0]["cache"], "miss");
        assert_eq!(lines[0]["latency_ms"], 3.0);
        assert!(lines.iter().all(|l| l["request_id"] != "r3"));
    }

    #[test]
    fn snippets_keep_the_last_user_message_cut_and_scrubbed() {
        let long = "word ".repeat(100);
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "system text"},
            {"role": "user", "content": "first question"},
            {"role": "user", "content": [{"type": "text", "text": "mail a@b.io"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": long}]}
        ]})
        .to_string();
        let snippet = prompt_text(body.as_bytes(), ContentCapture::Snippet);
        assert!(snippet.starts_with("mail [EMAIL] word"), "{snippet}");
        assert_eq!(snippet.chars().count(), SNIPPET_CHARS);
        let full = prompt_text(body.as_bytes(), ContentCapture::Full);
        assert!(
            full.starts_with("system text\nfirst question\nmail [EMAIL]"),
            "{full}"
        );
        assert_eq!(
            prompt_text(b"not json", ContentCapture::Full),
            "[unparseable request]"
        );
        let answer =
            br#"{"choices":[{"message":{"role":"assistant","content":"call +1 415 555 2671"}}]}"#;
        assert_eq!(answer_text(answer, ContentCapture::Full), "call [PHONE]");
    }

    #[test]
    fn close_writes_out_every_queued_record_before_it_returns() {
        let gate = Gate::default();
        gate.open();
        let log = AuditLog::start(
            Destination::Stream(Box::new(gate.clone())),
            ContentCapture::Off,
            1000,
        )
        .unwrap();
        for i in 0..50 {
            log.record(record(i));
        }
        log.close();
        assert_eq!(gate.written().lines().count(), 50);
        // Closed: later records are counted as dropped, and a second close returns at once.
        log.record(record(50));
        log.close();
        assert_eq!(log.counters().unwrap().dropped.get(), 1);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_648_306_789);
        assert_eq!(rfc3339(t), "2025-12-02T04:05:06.789Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
