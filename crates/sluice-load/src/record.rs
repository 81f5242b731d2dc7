//! One request's measurements, as the workers take them. All times are microseconds since
//! the run's epoch (one `Instant` shared by the whole run).
//!
//! The derived metrics follow the definitions in `docs/load.md` exactly; the latency origin is the
//! *scheduled* send time, which in closed-loop runs is the send time itself.

use serde::{Deserialize, Serialize};

/// Why a request failed. `Http` carries the status code, so 429 and 503 are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// A non-2xx response.
    Http(u16),
    /// No complete answer within `--timeout`.
    Timeout,
    /// Could not connect, or the connection failed before a response began.
    Connection,
    /// The response began but ended badly: a stream cut before `data: [DONE]`, an error event
    /// inside the stream, or a body cut short.
    MidStream,
    /// The response could not be understood (not JSON, not an event stream).
    Protocol,
    /// Still open `--grace` after the measured window ended, and cut then. Counts as an
    /// error: the target held it longer than the run could wait.
    Unfinished,
    /// Still open when the run was interrupted (Ctrl-C), and cut then. Not the target's
    /// doing: left out of the totals and the error rate, and counted apart.
    Interrupted,
}

impl ErrorClass {
    /// The name used in reports: `http_503`, `timeout`, `connection`, `mid_stream`,
    /// `protocol`, `unfinished`, `interrupted`.
    pub fn key(&self) -> String {
        match self {
            ErrorClass::Http(code) => format!("http_{code}"),
            ErrorClass::Timeout => "timeout".to_owned(),
            ErrorClass::Connection => "connection".to_owned(),
            ErrorClass::MidStream => "mid_stream".to_owned(),
            ErrorClass::Protocol => "protocol".to_owned(),
            ErrorClass::Unfinished => "unfinished".to_owned(),
            ErrorClass::Interrupted => "interrupted".to_owned(),
        }
    }
}

impl Serialize for ErrorClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.key())
    }
}

/// Where a request's output token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The response's `usage.completion_tokens`.
    Usage,
    /// Counted stream chunks that carried a token (one token per chunk assumed).
    Chunks,
    /// The answer's text, counted by `--tokenizer` (the server sent no usage).
    Tokenizer,
    /// Neither: a non-streaming answer without usage.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    pub index: u64,
    /// Position of the target in `--url` order.
    pub target: u16,
    /// Sent during warm-up: excluded from every statistic.
    pub warmup: bool,
    pub stream: bool,
    /// When the request was due (open loop) or, in closed loop, when it was sent.
    pub scheduled_us: u64,
    /// When a worker took it up.
    pub dispatched_us: u64,
    /// Open loop: every open connection was busy with an answer in progress when it was
    /// due, so it waited for one to come free or a new one to connect. Lateness caused by
    /// the target holding connections, not by the generator.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub waited_for_connection: bool,
    /// When it was handed to an open connection.
    pub sent_us: u64,
    pub first_token_us: Option<u64>,
    pub second_token_us: Option<u64>,
    /// End of the response body (or the moment the failure was seen).
    pub end_us: u64,
    /// Stream chunks that carried a token.
    pub token_chunks: u32,
    /// Largest gap between consecutive token chunks.
    pub max_itl_us: Option<u64>,
    pub output_tokens: Option<u64>,
    pub token_source: TokenSource,
    pub prompt_tokens: Option<u64>,
    pub cached_prompt_tokens: Option<u64>,
    pub requested_output_tokens: Option<u32>,
    pub approx_input_tokens: Option<u32>,
    /// `x-session-id` sent (multi-turn conversation, shared-prefix user).
    pub session_id: Option<String>,
    pub status: Option<u16>,
    pub error: Option<ErrorClass>,
    /// Gaps between consecutive token chunks (µs), when the run keeps them
    /// (`--ndjson`/`--csv`): with `first_token_us`, every chunk's arrival.
    #[serde(skip)]
    pub token_gaps_us: Option<Vec<u32>>,
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Time to first token, from the scheduled send. Undefined for failed requests and for
    /// non-streaming answers (there is no first token to see).
    pub fn ttft_us(&self) -> Option<u64> {
        if !self.ok() {
            return None;
        }
        self.first_token_us
            .map(|t| t.saturating_sub(self.scheduled_us))
    }

    /// Second token chunk − first token chunk.
    pub fn ttst_us(&self) -> Option<u64> {
        if !self.ok() {
            return None;
        }
        match (self.first_token_us, self.second_token_us) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        }
    }

    /// End to end, from the scheduled send to the last byte.
    pub fn e2e_us(&self) -> Option<u64> {
        self.ok()
            .then(|| self.end_us.saturating_sub(self.scheduled_us))
    }

    /// (E2E − TTFT) / (output tokens − 1); undefined for ≤ 1 output token and without a TTFT.
    pub fn tpot_us(&self) -> Option<f64> {
        let ttft = self.ttft_us()?;
        let e2e = self.e2e_us()?;
        let tokens = self.output_tokens?;
        if tokens <= 1 {
            return None;
        }
        Some(e2e.saturating_sub(ttft) as f64 / (tokens - 1) as f64)
    }

    /// Scheduled send → actual send: the client-side queueing a request suffered (open loop).
    pub fn queue_us(&self) -> u64 {
        self.sent_us.saturating_sub(self.scheduled_us)
    }

    /// Every token chunk's arrival, from the start (the first is the TTFT), when the run
    /// kept them.
    pub fn token_times_us(&self) -> Option<Vec<u64>> {
        let gaps = self.token_gaps_us.as_ref()?;
        let first = self.first_token_us?.saturating_sub(self.scheduled_us);
        let mut t = first;
        let mut out = Vec::with_capacity(gaps.len() + 1);
        out.push(t);
        for &g in gaps {
            t += u64::from(g);
            out.push(t);
        }
        Some(out)
    }

    /// Scheduled send → a worker took it up: the generator's own lateness.
    pub fn lateness_us(&self) -> u64 {
        self.dispatched_us.saturating_sub(self.scheduled_us)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record() -> RequestRecord {
        RequestRecord {
            index: 0,
            target: 0,
            warmup: false,
            stream: true,
            scheduled_us: 1_000,
            dispatched_us: 1_100,
            waited_for_connection: false,
            token_gaps_us: None,
            sent_us: 1_500,
            first_token_us: Some(51_000),
            second_token_us: Some(61_000),
            end_us: 141_000,
            token_chunks: 10,
            max_itl_us: Some(10_000),
            output_tokens: Some(10),
            token_source: TokenSource::Usage,
            prompt_tokens: Some(5),
            cached_prompt_tokens: None,
            requested_output_tokens: Some(10),
            approx_input_tokens: Some(5),
            session_id: None,
            status: Some(200),
            error: None,
        }
    }

    #[test]
    fn metrics_follow_the_definitions() {
        let r = record();
        assert_eq!(r.ttft_us(), Some(50_000));
        assert_eq!(r.ttst_us(), Some(10_000));
        assert_eq!(r.e2e_us(), Some(140_000));
        assert_eq!(r.tpot_us(), Some(10_000.0));
        assert_eq!(r.queue_us(), 500);
        assert_eq!(r.lateness_us(), 100);
        let one = RequestRecord {
            output_tokens: Some(1),
            ..record()
        };
        assert_eq!(one.tpot_us(), None, "TPOT is undefined for one token");
        let unary = RequestRecord {
            stream: false,
            first_token_us: None,
            second_token_us: None,
            ..record()
        };
        assert_eq!(unary.ttft_us(), None);
        assert_eq!(unary.tpot_us(), None);
        assert_eq!(unary.e2e_us(), Some(140_000));
        let failed = RequestRecord {
            error: Some(ErrorClass::Http(503)),
            ..record()
        };
        assert_eq!(failed.ttft_us(), None);
        assert_eq!(failed.e2e_us(), None);
        assert_eq!(ErrorClass::Http(429).key(), "http_429");
        assert_eq!(ErrorClass::MidStream.key(), "mid_stream");
    }
}
