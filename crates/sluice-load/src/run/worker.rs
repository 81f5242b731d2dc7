//! A worker: owns one connection per target and turns jobs into records.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::stop::Cut;
use super::{RunSettings, RunShared};
use crate::client::{exchange, Connection, ExchangeRequest, ExchangeResult};
use crate::record::{ErrorClass, RequestRecord, TokenSource};
use crate::stats::LatencyHistogram;

/// One request to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job {
    /// Position in this run (0-based).
    pub seq: u64,
    /// Open loop: when it is due. Closed loop: `None` (due when sent).
    pub scheduled_us: Option<u64>,
    pub warmup: bool,
    /// Open loop: no connection was idle when it was due (see
    /// [`RequestRecord::waited_for_connection`]).
    pub waited_for_connection: bool,
}

/// Whether a job got a connection: closed-loop workers back off after failed connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobOutcome {
    Connected,
    ConnectFailed,
}

/// What a worker hands back at the end of a run.
#[derive(Debug, Default)]
pub(crate) struct WorkerOutput {
    pub records: Vec<RequestRecord>,
    pub itl: LatencyHistogram,
    pub timeline: Vec<f64>,
    pub error_examples: BTreeMap<String, String>,
    pub connections_opened: u64,
    /// How long each token chunk waited in the kernel before the worker read it.
    pub receive_lag: LatencyHistogram,
}

pub(crate) struct Worker {
    settings: Arc<RunSettings>,
    shared: Arc<RunShared>,
    connections: Vec<Option<Connection>>,
    /// Reused for every request's ITL gaps.
    gaps: Vec<u32>,
    out: WorkerOutput,
}

impl Worker {
    pub fn new(settings: Arc<RunSettings>, shared: Arc<RunShared>) -> Worker {
        let targets = settings.targets.len();
        Worker {
            settings,
            shared,
            connections: (0..targets).map(|_| None).collect(),
            gaps: Vec::with_capacity(256),
            out: WorkerOutput::default(),
        }
    }

    pub fn finish(mut self) -> WorkerOutput {
        for c in self.connections.iter_mut() {
            if c.take().is_some() {
                self.shared.connection_closed();
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Opens the connection to `target` ahead of traffic, so the first requests do not pay
    /// for the TCP handshake. A failure, or no connection within `--timeout` (a target whose
    /// accept queue is full drops the handshake, and the kernel retries for minutes), is left
    /// for the first request to report.
    pub async fn preconnect(&mut self, target: usize) {
        let timeout = self.settings.timeout;
        if let Ok(Ok(c)) = tokio::time::timeout(timeout, self.connection(target)).await {
            if let Some(slot) = self.connections.get_mut(target) {
                *slot = Some(c);
            }
        }
    }

    /// A live connection to `target`, reusing the kept one when it is still open.
    async fn connection(&mut self, target: usize) -> Result<Connection, String> {
        if let Some(mut c) = self.connections.get_mut(target).and_then(Option::take) {
            if c.is_reusable().await {
                return Ok(c);
            }
            self.shared.connection_closed();
        }
        let t = self
            .settings
            .targets
            .get(target)
            .ok_or_else(|| format!("no target {target}"))?;
        let addr = t
            .addr
            .ok_or_else(|| format!("target {target} has no resolved address"))?;
        let tls = t.tls_name.as_ref().and_then(|name| {
            let settings = self.settings.tls.as_ref()?;
            Some((settings, name))
        });
        let c = Connection::open(addr, self.shared.clock, tls)
            .await
            .map_err(|e| e.to_string())?;
        self.shared.connection_opened();
        self.out.connections_opened += 1;
        Ok(c)
    }

    pub async fn run_job(&mut self, job: Job) -> JobOutcome {
        let clock = self.shared.clock;
        let dispatched_us = clock.now_us();
        let settings = self.settings.clone();
        let index = self.shared.index_base + job.seq;
        let prepared = settings.workload.prepare(index);
        let cycle_len = settings.cycle.len().max(1) as u64;
        let target_i = settings
            .cycle
            .get((job.seq % cycle_len) as usize)
            .copied()
            .unwrap_or(0) as usize;
        let Some(target) = settings.targets.get(target_i) else {
            return JobOutcome::ConnectFailed;
        };
        self.shared.sent.fetch_add(1, Ordering::Relaxed);

        let request = ExchangeRequest {
            target,
            body: prepared.body,
            headers: &settings.headers,
            session_id: prepared.session_id.as_deref(),
            keep_text: settings.workload.wants_reply_text() || settings.tokenizer.is_some(),
        };
        self.gaps.clear();
        let before_us = clock.now_us();
        // Set once a connection is in hand, so a timeout knows whether it dropped one.
        let mut had_connection = false;
        let mut cut = self.shared.stop.subscribe();
        let attempt = async {
            let mut conn = match self.connection(target_i).await {
                Ok(c) => c,
                Err(detail) => {
                    let now = clock.now_us();
                    let r = ExchangeResult {
                        sent_us: now,
                        end_us: now,
                        error: Some(ErrorClass::Connection),
                        error_detail: Some(detail),
                        ..ExchangeResult::default()
                    };
                    return (r, None);
                }
            };
            had_connection = true;
            let r = exchange(
                &mut conn,
                request,
                &clock,
                &mut self.gaps,
                &mut self.out.receive_lag,
            )
            .await;
            let keep = r.reusable.then_some(conn);
            (r, keep)
        };
        let ended = tokio::select! {
            done = tokio::time::timeout(settings.timeout, attempt) => done.map_err(|_| None),
            why = cut.wait_for(Option::is_some) => Err(why.ok().and_then(|w| *w)),
        };
        let (result, conn) = match ended {
            Ok(pair) => pair,
            Err(why) => {
                let now = clock.now_us();
                let (error, detail) = match why {
                    None => (
                        ErrorClass::Timeout,
                        format!(
                            "no complete answer within --timeout {}",
                            crate::units::format_duration(settings.timeout)
                        ),
                    ),
                    Some(Cut::Grace) => (
                        ErrorClass::Unfinished,
                        format!(
                            "still open --grace {} after the measured window ended",
                            crate::units::format_duration(settings.grace)
                        ),
                    ),
                    Some(Cut::Interrupt) => (
                        ErrorClass::Interrupted,
                        "still open when the run was interrupted".to_owned(),
                    ),
                };
                let r = ExchangeResult {
                    sent_us: before_us,
                    end_us: now,
                    error: Some(error),
                    error_detail: Some(detail),
                    ..ExchangeResult::default()
                };
                (r, None)
            }
        };
        let outcome = if had_connection {
            JobOutcome::Connected
        } else {
            JobOutcome::ConnectFailed
        };
        match conn {
            Some(c) => {
                if let Some(slot) = self.connections.get_mut(target_i) {
                    *slot = Some(c);
                }
            }
            // Not reusable (or dropped with a timed-out attempt): it is closed now.
            None if had_connection => self.shared.connection_closed(),
            None => {}
        }

        // The server's own count first; then the answer's text through the user's tokenizer;
        // then one token per stream chunk.
        let tokenized = match (&result.usage, &settings.tokenizer, &result.reply_text) {
            (None, Some(t), Some(text)) => t.count(text),
            _ => None,
        };
        let (output_tokens, token_source) = match (result.usage, tokenized, result.streamed) {
            (Some(u), _, _) => (Some(u.completion_tokens), TokenSource::Usage),
            (None, Some(n), _) => (Some(u64::from(n)), TokenSource::Tokenizer),
            (None, None, true) => (Some(u64::from(result.token_chunks)), TokenSource::Chunks),
            (None, None, false) => (None, TokenSource::Unknown),
        };
        let record = RequestRecord {
            index,
            target: target_i as u16,
            warmup: job.warmup,
            stream: result.streamed,
            scheduled_us: job.scheduled_us.unwrap_or(result.sent_us),
            dispatched_us,
            waited_for_connection: job.waited_for_connection,
            token_gaps_us: (settings.keep_token_times && result.streamed)
                .then(|| self.gaps.clone()),
            sent_us: result.sent_us,
            first_token_us: result.first_token_us,
            second_token_us: result.second_token_us,
            end_us: result.end_us,
            token_chunks: result.token_chunks,
            max_itl_us: result.max_gap_us,
            output_tokens,
            token_source,
            prompt_tokens: result.usage.map(|u| u.prompt_tokens),
            cached_prompt_tokens: result
                .usage
                .and_then(|u| u.prompt_tokens_details)
                .map(|d| d.cached_tokens),
            requested_output_tokens: prepared.requested_output_tokens,
            approx_input_tokens: prepared.approx_input_tokens,
            session_id: prepared.session_id,
            status: result.status,
            error: result.error,
        };
        self.shared.done.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = record.error {
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
            if let Some(detail) = &result.error_detail {
                self.out
                    .error_examples
                    .entry(e.key())
                    .or_insert_with(|| detail.clone());
            }
        } else if !record.warmup {
            self.account_measured(&record);
        }
        if let Some(ticket) = prepared.turn {
            let reply = if record.ok() { result.reply_text } else { None };
            settings.workload.finish(ticket, reply);
        }
        self.out.records.push(record);
        outcome
    }

    /// ITL gaps and the token timeline of a measured, successful request.
    fn account_measured(&mut self, r: &RequestRecord) {
        for &g in &self.gaps {
            self.out.itl.record(u64::from(g));
        }
        let tokens = r.output_tokens.unwrap_or(0) as f64;
        match r.first_token_us {
            Some(first) if r.token_chunks > 0 => {
                // Spread the counted tokens over the chunks as they arrived.
                let per_chunk = tokens / f64::from(r.token_chunks);
                let mut t = first;
                add_tokens(&mut self.out.timeline, t, per_chunk);
                for &g in &self.gaps {
                    t += u64::from(g);
                    add_tokens(&mut self.out.timeline, t, per_chunk);
                }
            }
            _ => add_tokens(&mut self.out.timeline, r.end_us, tokens),
        }
    }
}

fn add_tokens(timeline: &mut Vec<f64>, at_us: u64, tokens: f64) {
    let sec = (at_us / 1_000_000) as usize;
    if timeline.len() <= sec {
        timeline.resize(sec + 1, 0.0);
    }
    timeline[sec] += tokens;
}
