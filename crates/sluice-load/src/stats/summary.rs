//! The summary of one run (one rate or concurrency): what `compare` reads back, so its
//! field names are part of the report schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::histogram::{BucketCounts, LatencyHistogram, LatencyStats};
use super::timeseries::{buckets, TimeBucket};
use crate::record::{ErrorClass, RequestRecord, TokenSource};
use crate::run::RunOutput;
use crate::slo::{LatencyMetric, Slo};

/// Lateness above this at p99 means requests left late enough to matter at millisecond
/// latencies: the generator, not the target, may be what was measured.
const LATENESS_P99_LIMIT_US: f64 = 1000.0;
/// The runtime noticing arriving data later than this at p90 (the probe samples every
/// 10 ms, so its p99 rests on few samples) means a typical timestamp is that late.
const DELAY_P90_LIMIT_US: f64 = 1000.0;
/// Receive lag p99 above which the generator is likely holding the target back (µs).
const RECEIVE_LAG_P99_LIMIT_US: f64 = 10_000.0;
/// CPU use above this share of all cores means the generator was competing for CPU.
const CPU_SHARE_LIMIT: f64 = 0.9;
/// Steal (% of the machine's CPU time) from which the report says the machine itself paused.
const STEAL_NOTE_PERCENT: f64 = 0.5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub requests: RequestCounts,
    /// The measured window: from the end of warm-up to the end of the duration bound (or
    /// the interrupt); for a run bounded by a request count only, to the last response.
    pub duration_s: f64,
    /// Stopped early by an interrupt: the window ends there.
    #[serde(default)]
    pub interrupted: bool,
    pub throughput: Throughput,
    pub latency: Latencies,
    pub tokens: TokenSummary,
    pub errors: ErrorSummary,
    pub generator: GeneratorSummary,
    pub timeseries: Vec<TimeBucket>,
    /// Caveats a reader must know to read the numbers right.
    pub notes: Vec<String>,
    /// The latency samples as bucket counts, so that `compare` can tell a difference from
    /// noise. Absent from reports of older versions.
    #[serde(default)]
    pub distributions: Distributions,
}

/// One value per latency metric.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerMetric<T> {
    pub ttft: T,
    pub ttst: T,
    pub tpot: T,
    pub itl: T,
    pub e2e: T,
}

impl<T> PerMetric<T> {
    pub fn get(&self, m: LatencyMetric) -> &T {
        match m {
            LatencyMetric::Ttft => &self.ttft,
            LatencyMetric::Ttst => &self.ttst,
            LatencyMetric::Tpot => &self.tpot,
            LatencyMetric::Itl => &self.itl,
            LatencyMetric::E2e => &self.e2e,
        }
    }

    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> PerMetric<U> {
        PerMetric {
            ttft: f(&self.ttft),
            ttst: f(&self.ttst),
            tpot: f(&self.tpot),
            itl: f(&self.itl),
            e2e: f(&self.e2e),
        }
    }
}

/// Each latency metric's samples (see [`BucketCounts`]).
pub type Distributions = PerMetric<BucketCounts>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Measured requests (warm-up excluded).
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub warmup_excluded: u64,
    /// Succeeded after the window closed, within the grace period: in the latencies, not
    /// in the throughput (which counts what completed within the window).
    #[serde(default)]
    pub completed_after_window: u64,
    /// Still open when the grace period ended, and cut: counted as failed (class
    /// `unfinished`).
    #[serde(default)]
    pub unfinished: u64,
    /// Still open when the run was interrupted, and cut: not in `total`.
    #[serde(default)]
    pub interrupted: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Successful requests per second over the measured interval.
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    /// Prompt + output tokens per second (prompt tokens as reported by usage).
    pub total_tokens_per_s: f64,
    /// Highest output tokens in any one-second bucket.
    pub peak_output_tokens_per_s: f64,
    /// Requests per second that met every latency SLO; present when SLOs were given.
    pub goodput_requests_per_s: Option<f64>,
    /// Measured sends per second, between the first and the last actual send (open loop:
    /// how close the generator came to the schedule).
    pub achieved_send_rate_per_s: Option<f64>,
    /// The same over the scheduled send times: the rate the seeded arrival process realised
    /// (a Poisson schedule of n requests deviates from the target by about 1/√n).
    pub scheduled_rate_per_s: Option<f64>,
    /// The rate asked for (open loop).
    pub target_rate_per_s: Option<f64>,
    /// Output tokens per second as one user sees them: each streamed answer's decode
    /// speed after its first token, 1000 / TPOT (ms). Absent without streamed answers.
    #[serde(default)]
    pub per_user_output_tokens_per_s: Option<PerUserRate>,
}

/// A per-request rate's distribution, slowest first: `p1` is the speed 99 % of requests
/// beat.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PerUserRate {
    pub count: u64,
    pub p1: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
}

impl PerUserRate {
    /// From the TPOT histogram (µs per token): the speed at q is 10⁶ / TPOT at 1 − q.
    fn from_tpot(tpot: &LatencyHistogram) -> Option<PerUserRate> {
        let speed = |q: f64| {
            tpot.quantile_us(1.0 - q)
                .filter(|us| *us > 0.0)
                .map_or(0.0, |us| 1e6 / us)
        };
        (tpot.count() > 0).then(|| PerUserRate {
            count: tpot.count(),
            p1: speed(0.01),
            p10: speed(0.10),
            p50: speed(0.50),
            p90: speed(0.90),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    pub ttft: Option<LatencyStats>,
    pub ttst: Option<LatencyStats>,
    pub tpot: Option<LatencyStats>,
    pub itl: Option<LatencyStats>,
    pub e2e: Option<LatencyStats>,
    /// Scheduled send → actual send (open loop): time requests waited in the client.
    pub queue: Option<LatencyStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenSummary {
    pub output_total: u64,
    pub prompt_total: u64,
    /// Requests whose output count came from usage / counted chunks / nowhere.
    pub output_from_usage: u64,
    pub output_from_chunks: u64,
    /// Requests whose answer text was counted by `--tokenizer` (no usage sent).
    #[serde(default)]
    pub output_from_tokenizer: u64,
    pub output_unknown: u64,
    /// Requests with a known `max_tokens` whose output had another length.
    pub output_length_mismatches: u64,
    pub requested_output_mean: Option<f64>,
    pub output_mean: Option<f64>,
    /// Mean prompt length the generator built (generated workloads), in `input_unit`.
    pub approx_input_mean: Option<f64>,
    /// `words` (≈ tokens), or `tokens` when prompts were sized by `--tokenizer`.
    #[serde(default = "words")]
    pub input_unit: String,
    /// Mean prompt length as the server counted it.
    pub prompt_mean: Option<f64>,
    /// Mean share of prompt tokens served from the server's prefix cache, when reported.
    pub cached_prompt_share: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorSummary {
    /// Failed / total measured requests.
    pub error_rate: f64,
    pub by_class: BTreeMap<String, u64>,
    /// One message per class, as the server or the socket put it.
    pub examples: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorSummary {
    pub cores: usize,
    pub cpu_seconds: Option<f64>,
    /// CPU time / wall time: 100 = one core busy all the time.
    pub cpu_percent_of_one_core: Option<f64>,
    pub cpu_percent_of_all_cores: Option<f64>,
    /// CPU time the hypervisor gave to something else while this machine wanted it
    /// ("steal"), as a share of all cores' time over the run. Pauses of the whole machine:
    /// they show in every target's tail alike. Absent in reports from before it was kept.
    #[serde(default)]
    pub steal_percent: Option<f64>,
    /// Scheduled send → a worker took the request up (open loop only).
    pub lateness: Option<LatencyStats>,
    /// How late the generator's runtime noticed data arriving on a socket, sampled every
    /// 10 ms over loopback while idle.
    pub scheduling_delay: Option<LatencyStats>,
    /// How long each token chunk waited in the kernel before the generator read it: the
    /// delay a read-time timestamp would carry. Chunks are timed by the kernel's receive
    /// time where it gives one (Linux), so this lag is reported, not measured into the
    /// latencies. Absent without kernel timestamps.
    #[serde(default)]
    pub receive_lag: Option<LatencyStats>,
    pub connections_opened: u64,
    pub peak_connections: u64,
    pub max_connections: u64,
    /// Open loop needed more connections than allowed: requests waited for one, and that
    /// wait counts in their latency.
    pub connection_cap_hit: bool,
    pub likely_bottleneck: bool,
    pub bottleneck_reasons: Vec<String>,
}

/// Distributions of the measured requests, kept next to the summary for SLO gates that ask
/// for a percentile the summary does not list.
pub type MetricSet = PerMetric<LatencyHistogram>;

#[derive(Debug, Clone)]
pub struct RunAnalysis {
    pub summary: RunSummary,
    pub metrics: MetricSet,
}

pub fn analyze(out: &RunOutput, slos: &[Slo]) -> RunAnalysis {
    let cut_by_interrupt = out
        .records
        .iter()
        .filter(|r| !r.warmup && r.error == Some(ErrorClass::Interrupted))
        .count() as u64;
    // What the interrupt cut says nothing of the target.
    let measured: Vec<&RequestRecord> = out
        .records
        .iter()
        .filter(|r| !r.warmup && r.error != Some(ErrorClass::Interrupted))
        .collect();
    let total = measured.len() as u64;
    let succeeded = measured.iter().filter(|r| r.ok()).count() as u64;
    let failed = total - succeeded;

    let mut metrics = MetricSet {
        itl: out.itl.clone(),
        ..MetricSet::default()
    };
    let mut queue = LatencyHistogram::new();
    let mut lateness = LatencyHistogram::new();
    for r in &measured {
        if let Some(v) = r.ttft_us() {
            metrics.ttft.record(v);
        }
        if let Some(v) = r.ttst_us() {
            metrics.ttst.record(v);
        }
        if let Some(v) = r.tpot_us() {
            metrics.tpot.record_f64(v);
        }
        if let Some(v) = r.e2e_us() {
            metrics.e2e.record(v);
        }
        if out.open_loop {
            queue.record(r.queue_us());
            // A request that waited for a busy connection was held by the target, not by
            // the pacer: its lateness is not the generator's.
            if !r.waited_for_connection {
                lateness.record(r.lateness_us());
            }
        }
    }

    // A closed loop's workers start staggered: the window starts with the schedule, not
    // with the first send. Warm-up requests (a count) end where the first measured is due.
    let start_us = match out.warmup_end_us {
        Some(end) => end,
        None if matches!(out.records.first(), Some(r) if r.warmup) => measured
            .iter()
            .map(|r| r.scheduled_us)
            .min()
            .unwrap_or(out.start_us),
        None => out.start_us,
    };
    let end_us = out
        .window_end_us
        .unwrap_or_else(|| measured.iter().map(|r| r.end_us).max().unwrap_or(start_us));
    let duration_s = end_us.saturating_sub(start_us) as f64 / 1e6;
    // Throughput is what completed within the window; answers finishing in the grace
    // period are measured for latency but would otherwise count time the window excludes.
    let in_window: Vec<&RequestRecord> = measured
        .iter()
        .copied()
        .filter(|r| r.end_us <= end_us)
        .collect();
    let completed_after_window = measured
        .iter()
        .filter(|r| r.ok() && r.end_us > end_us)
        .count() as u64;
    let unfinished = measured
        .iter()
        .filter(|r| r.error == Some(ErrorClass::Unfinished))
        .count() as u64;
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };

    let tokens = token_summary(&measured, out.tokenizer);
    let window_tokens = token_summary(&in_window, out.tokenizer);
    let succeeded_in_window = in_window.iter().filter(|r| r.ok()).count() as u64;
    let goodput = goodput(&in_window, slos).map(|n| per_s(n as f64));
    let achieved = out
        .open_loop
        .then(|| span_rate(measured.iter().map(|r| r.sent_us)))
        .flatten();
    let scheduled = out
        .open_loop
        .then(|| span_rate(measured.iter().map(|r| r.scheduled_us)))
        .flatten();
    let throughput = Throughput {
        requests_per_s: per_s(succeeded_in_window as f64),
        output_tokens_per_s: per_s(window_tokens.output_total as f64),
        total_tokens_per_s: per_s((window_tokens.output_total + window_tokens.prompt_total) as f64),
        peak_output_tokens_per_s: out.token_timeline.iter().copied().fold(0.0, f64::max),
        goodput_requests_per_s: goodput,
        achieved_send_rate_per_s: achieved,
        scheduled_rate_per_s: scheduled,
        target_rate_per_s: out.target_rate,
        per_user_output_tokens_per_s: PerUserRate::from_tpot(&metrics.tpot),
    };

    let mut by_class = BTreeMap::new();
    for r in &measured {
        if let Some(e) = r.error {
            *by_class.entry(e.key()).or_insert(0) += 1;
        }
    }
    let errors = ErrorSummary {
        error_rate: if total > 0 {
            failed as f64 / total as f64
        } else {
            0.0
        },
        examples: out
            .error_examples
            .iter()
            .filter(|(k, _)| by_class.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        by_class,
    };

    let generator = generator_summary(out, lateness.stats());
    let latency = Latencies {
        ttft: metrics.ttft.stats(),
        ttst: metrics.ttst.stats(),
        tpot: metrics.tpot.stats(),
        itl: metrics.itl.stats(),
        e2e: metrics.e2e.stats(),
        queue: queue.stats(),
    };
    let mut notes = notes(out, &tokens, &measured, &generator);
    if completed_after_window > 0 {
        notes.push(format!(
            "{completed_after_window} requests sent within the window completed after it closed, within the grace period: their latencies are included, the throughput counts only what completed within the window"
        ));
    }
    if unfinished > 0 {
        notes.push(format!(
            "{unfinished} requests were still open --grace {} after the window closed and were cut: they count as failed (`unfinished`), and the latency percentiles do not include them, so the real tail is longer",
            crate::units::format_duration(out.grace)
        ));
    }
    if let Some(note) = target_fell_behind(
        out,
        &measured,
        in_window.len(),
        end_us,
        duration_s,
        achieved,
        &generator,
    ) {
        notes.push(note);
    }
    if out.interrupted {
        notes.push(format!(
            "interrupted: the window closed at the interrupt, {:.1} s in; {cut_by_interrupt} requests still open then were cut and are left out of the totals",
            duration_s
        ));
    }
    RunAnalysis {
        summary: RunSummary {
            requests: RequestCounts {
                total,
                succeeded,
                failed,
                warmup_excluded: out.records.iter().filter(|r| r.warmup).count() as u64,
                completed_after_window,
                unfinished,
                interrupted: cut_by_interrupt,
            },
            duration_s,
            interrupted: out.interrupted,
            throughput,
            latency,
            tokens,
            errors,
            generator,
            timeseries: buckets(&measured, &out.token_timeline, start_us, out.window_end_us),
            notes,
            distributions: metrics.map(LatencyHistogram::bucket_counts),
        },
        metrics,
    }
}

fn words() -> String {
    "words".to_owned()
}

fn token_summary(measured: &[&RequestRecord], tokenizer: bool) -> TokenSummary {
    let ok: Vec<&&RequestRecord> = measured.iter().filter(|r| r.ok()).collect();
    let count = |s: TokenSource| ok.iter().filter(|r| r.token_source == s).count() as u64;
    let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    TokenSummary {
        output_total: ok.iter().filter_map(|r| r.output_tokens).sum(),
        prompt_total: ok.iter().filter_map(|r| r.prompt_tokens).sum(),
        output_from_usage: count(TokenSource::Usage),
        output_from_chunks: count(TokenSource::Chunks),
        output_from_tokenizer: count(TokenSource::Tokenizer),
        output_unknown: count(TokenSource::Unknown),
        output_length_mismatches: ok
            .iter()
            .filter(|r| match (r.requested_output_tokens, r.output_tokens) {
                (Some(want), Some(got)) => u64::from(want) != got,
                _ => false,
            })
            .count() as u64,
        requested_output_mean: mean(
            ok.iter()
                .filter_map(|r| r.requested_output_tokens.map(f64::from))
                .collect(),
        ),
        output_mean: mean(
            ok.iter()
                .filter_map(|r| r.output_tokens.map(|t| t as f64))
                .collect(),
        ),
        approx_input_mean: mean(
            ok.iter()
                .filter_map(|r| r.approx_input_tokens.map(f64::from))
                .collect(),
        ),
        input_unit: if tokenizer { "tokens".into() } else { words() },
        prompt_mean: mean(
            ok.iter()
                .filter_map(|r| r.prompt_tokens.map(|t| t as f64))
                .collect(),
        ),
        cached_prompt_share: mean(
            ok.iter()
                .filter_map(|r| match (r.cached_prompt_tokens, r.prompt_tokens) {
                    (Some(c), Some(p)) if p > 0 => Some(c as f64 / p as f64),
                    _ => None,
                })
                .collect(),
        ),
    }
}

/// Requests that met every latency SLO; `None` when no latency SLO was given (goodput is
/// then not defined rather than equal to throughput).
fn goodput(measured: &[&RequestRecord], slos: &[Slo]) -> Option<u64> {
    let latency: Vec<&Slo> = slos.iter().filter(|s| s.is_latency()).collect();
    if latency.is_empty() {
        return None;
    }
    Some(
        measured
            .iter()
            .filter(|r| r.ok() && latency.iter().all(|s| s.request_meets(r) == Some(true)))
            .count() as u64,
    )
}

/// Events per second between the first and the last of `times_us`: (n − 1) / span.
fn span_rate(times_us: impl Iterator<Item = u64>) -> Option<f64> {
    let (mut n, mut first, mut last) = (0u64, u64::MAX, 0u64);
    for t in times_us {
        n += 1;
        first = first.min(t);
        last = last.max(t);
    }
    (n > 1 && last > first).then(|| (n - 1) as f64 / ((last - first) as f64 / 1e6))
}

fn generator_summary(out: &RunOutput, lateness: Option<LatencyStats>) -> GeneratorSummary {
    let cores = out.cores.max(1);
    let one = out
        .cpu_seconds
        .filter(|_| out.wall_s > 0.0)
        .map(|c| c / out.wall_s * 100.0);
    let all = one.map(|p| p / cores as f64);
    let mut reasons = Vec::new();
    if let Some(l) = &lateness {
        if l.p99_ms * 1000.0 > LATENESS_P99_LIMIT_US {
            reasons.push(format!(
                "send lateness p99 is {:.2} ms (over {:.0} ms): requests left later than scheduled",
                l.p99_ms,
                LATENESS_P99_LIMIT_US / 1000.0
            ));
        }
    }
    let scheduling_delay = out.scheduling_delay.stats();
    let receive_lag = out.receive_lag.stats();
    if let Some(l) = &receive_lag {
        if l.p99_ms * 1000.0 > RECEIVE_LAG_P99_LIMIT_US {
            reasons.push(format!(
                "the generator read token chunks {:.2} ms after they arrived (p99; over {:.0} ms): its timestamps are the kernel's receive times, but a reader this far behind can slow the target through TCP flow control",
                l.p99_ms,
                RECEIVE_LAG_P99_LIMIT_US / 1000.0
            ));
        }
    }
    // With kernel receive times, a late runtime no longer makes timestamps late.
    if let (Some(d), None) = (&scheduling_delay, &receive_lag) {
        if d.p90_ms * 1000.0 > DELAY_P90_LIMIT_US {
            reasons.push(format!(
                "the generator noticed arriving data {:.2} ms late at p90 (over {:.0} ms): its timestamps are late by about as much",
                d.p90_ms,
                DELAY_P90_LIMIT_US / 1000.0
            ));
        }
    }
    if let Some(a) = all {
        if a > CPU_SHARE_LIMIT * 100.0 {
            reasons.push(format!("the generator used {a:.0} % of all {cores} cores"));
        }
    }
    if out.connection_cap_hit {
        reasons.push(format!(
            "all {} connections (--max-connections) were busy: requests waited for one",
            out.max_connections
        ));
    }
    GeneratorSummary {
        cores,
        cpu_seconds: out.cpu_seconds,
        cpu_percent_of_one_core: one,
        cpu_percent_of_all_cores: all,
        steal_percent: out.steal_percent,
        lateness,
        scheduling_delay,
        receive_lag,
        connections_opened: out.connections_opened,
        peak_connections: out.peak_connections,
        max_connections: out.max_connections as u64,
        connection_cap_hit: out.connection_cap_hit,
        likely_bottleneck: !reasons.is_empty(),
        bottleneck_reasons: reasons,
    }
}

/// Completed (successfully or not) below this share of what was sent means the target did
/// not keep up.
const FELL_BEHIND_SHARE: f64 = 0.9;

/// Open loop: when the target answered markedly fewer requests per second than were sent,
/// says so with the evidence on each side, so that a saturated target is not taken for a
/// slow generator.
fn target_fell_behind(
    out: &RunOutput,
    measured: &[&RequestRecord],
    answered_in_window: usize,
    end_us: u64,
    duration_s: f64,
    sent_per_s: Option<f64>,
    generator: &GeneratorSummary,
) -> Option<String> {
    let sent = sent_per_s.filter(|s| *s > 0.0 && out.open_loop && duration_s > 0.0)?;
    let answered = answered_in_window as f64 / duration_s;
    if answered >= FELL_BEHIND_SHARE * sent {
        return None;
    }
    let in_flight = measured
        .iter()
        .filter(|r| r.sent_us < end_us && r.end_us > end_us)
        .count();
    let mut note = format!(
        "the target fell behind: it answered {answered:.2} requests/s of the {sent:.2}/s sent; {in_flight} were still in flight when the window closed"
    );
    let waited = measured.iter().filter(|r| r.waited_for_connection).count();
    if waited > 0 {
        note.push_str(&format!(
            "; {waited} requests found every open connection busy with an answer in progress and waited for one (the generator opened {} in all)",
            generator.connections_opened
        ));
    }
    let ttft: Vec<f64> = ttft_p50_by_second(measured);
    if let (Some(first), Some(last)) = (ttft.first(), ttft.last()) {
        if ttft.len() > 1 && *last > 2.0 * first {
            note.push_str(&format!(
                "; TTFT p50 rose from {first:.1} ms in the first second to {last:.1} ms in the last (requests queue at the target)"
            ));
        }
    }
    if generator.likely_bottleneck {
        note.push_str(&format!(
            "; the generator was strained as well: {}",
            generator.bottleneck_reasons.join("; ")
        ));
    } else {
        note.push_str(&format!(
            "; the generator's own measures were within bounds (CPU {} % of one core{})",
            generator
                .cpu_percent_of_one_core
                .map_or("?".to_owned(), |c| format!("{c:.0}")),
            generator
                .lateness
                .as_ref()
                .map(|l| format!(", pacing lateness p99 {:.2} ms", l.p99_ms))
                .unwrap_or_default()
        ));
    }
    Some(note)
}

/// TTFT p50 (ms) of the requests scheduled in each second that has any, in order.
fn ttft_p50_by_second(measured: &[&RequestRecord]) -> Vec<f64> {
    let mut by_second: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in measured {
        if let Some(v) = r.ttft_us() {
            by_second
                .entry(r.scheduled_us / 1_000_000)
                .or_default()
                .push(v);
        }
    }
    by_second
        .into_values()
        .filter_map(|mut v| super::histogram::exact_quantile(&mut v, 0.5))
        .map(|us| us as f64 / 1000.0)
        .collect()
}

fn notes(
    out: &RunOutput,
    tokens: &TokenSummary,
    measured: &[&RequestRecord],
    generator: &GeneratorSummary,
) -> Vec<String> {
    let mut notes = Vec::new();
    let unary = measured.iter().filter(|r| r.ok() && !r.stream).count();
    if unary > 0 {
        notes.push(format!(
            "{unary} answers were not streamed: TTFT, TTST, TPOT and ITL are undefined for them (only E2E is measured)"
        ));
    }
    let sources: Vec<String> = [
        (tokens.output_from_usage, "server usage"),
        (
            tokens.output_from_tokenizer,
            "the answer text through --tokenizer (usage absent)",
        ),
        (
            tokens.output_from_chunks,
            "counted stream chunks (usage absent; one token per chunk assumed)",
        ),
        (
            tokens.output_unknown,
            "nowhere (no usage in the answer): not counted",
        ),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} from {what}"))
    .collect();
    if !sources.is_empty() {
        notes.push(format!("output token counts: {}", sources.join(", ")));
    }
    if tokens.output_length_mismatches > 0 {
        notes.push(format!(
            "{} answers had another length than the max_tokens sent: the target may not honour `ignore_eos` (output length is then not controlled)",
            tokens.output_length_mismatches
        ));
    }
    if out.open_loop {
        notes.push(
            "open loop: TTFT and E2E are measured from each request's scheduled send time, so client-side queueing counts against latency".into(),
        );
    }
    if let Some(n) = out.distinct_requests {
        if (out.records.len() as u64) > n as u64 {
            notes.push(format!(
                "the dataset has {n} requests and was replayed cyclically ({} sent)",
                out.records.len()
            ));
        }
    }
    if let Some(steal) = generator.steal_percent.filter(|&s| s >= STEAL_NOTE_PERCENT) {
        notes.push(format!(
            "the hypervisor took {steal:.1} % of this machine's CPU time during the run (steal): the whole machine paused now and then, which shows in the latency tail whatever the target"
        ));
    }
    if generator.likely_bottleneck {
        notes.push(format!(
            "the load generator was likely a bottleneck: {}",
            generator.bottleneck_reasons.join("; ")
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::output;

    #[test]
    fn steal_is_reported_and_noted_when_the_machine_paused() {
        let mut out = output(50, 0, 20);
        out.steal_percent = Some(0.1);
        let s = analyze(&out, &[]).summary;
        assert_eq!(s.generator.steal_percent, Some(0.1));
        assert!(!s.notes.iter().any(|n| n.contains("steal")));
        // Not the generator's doing: no bottleneck is claimed for it.
        assert!(!s.generator.likely_bottleneck);

        out.steal_percent = Some(2.5);
        let s = analyze(&out, &[]).summary;
        assert!(
            s.notes
                .iter()
                .any(|n| n.contains("2.5 %") && n.contains("steal")),
            "{:?}",
            s.notes
        );
        assert!(!s.generator.likely_bottleneck);
    }
}
