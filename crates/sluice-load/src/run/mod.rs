//! Running load: one [`RunPlan`] (a rate, a concurrency or a trace) against the targets,
//! producing every request's [`RequestRecord`].
//!
//! - [`closed_loop`]: C workers, each sending its next request when the previous answer
//!   ends.
//! - [`open_loop`]: a pacing thread releases requests at their scheduled times to a pool of
//!   connection-owning workers that grows as needed (up to `--max-connections`); latency is
//!   measured from the scheduled time.
//! - [`worker`]: what a worker does with one request.

mod closed_loop;
mod health;
mod io_threads;
mod open_loop;
mod progress;
mod stop;
mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde::Serialize;
use tokio::runtime::Handle;

use crate::arrival::{Arrival, ArrivalSchedule};
use crate::clock::Clock;
use crate::config::ConnectionReuse;
use crate::record::RequestRecord;
use crate::stats::LatencyHistogram;
use crate::target::Target;
use crate::workload::Workload;

pub use stop::Interrupt;
pub(crate) use worker::{Job, Worker, WorkerOutput};

/// When a run stops sending: after a measured duration, a number of measured requests, or
/// whichever comes first. With neither, a trace runs to its end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bound {
    #[serde(
        rename = "duration_s",
        serialize_with = "crate::report::serialize_opt_duration"
    )]
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
}

/// What is excluded from the statistics at the start of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    None,
    #[serde(
        rename = "duration_s",
        serialize_with = "crate::report::serialize_duration"
    )]
    Duration(Duration),
    Requests(u64),
}

impl Warmup {
    /// Whether request `seq`, scheduled at `scheduled_us` after a run start of `start_us`, is
    /// part of the warm-up.
    pub fn covers(&self, seq: u64, scheduled_us: u64, start_us: u64) -> bool {
        match *self {
            Warmup::None => false,
            Warmup::Duration(d) => scheduled_us < start_us.saturating_add(d.as_micros() as u64),
            Warmup::Requests(n) => seq < n,
        }
    }

    fn requests(&self) -> u64 {
        match *self {
            Warmup::Requests(n) => n,
            _ => 0,
        }
    }
}

/// The load of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadPoint {
    /// Open loop at a rate.
    Rate { rate: f64, arrival: Arrival },
    /// Closed loop with a fixed number of requests in flight.
    Concurrency { concurrency: usize },
    /// Open loop at the dataset's timestamps.
    Trace,
}

impl LoadPoint {
    pub fn is_open_loop(&self) -> bool {
        !matches!(self, LoadPoint::Concurrency { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            LoadPoint::Rate { rate, arrival } => format!("{rate:.2} req/s {arrival}"),
            LoadPoint::Concurrency { concurrency } => format!("concurrency {concurrency}"),
            LoadPoint::Trace => "trace replay".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub label: String,
    pub load: LoadPoint,
    /// Added to every request index, so the runs of a sweep send different prompts and
    /// one run cannot warm the target's prefix cache for the next.
    pub index_base: u64,
}

/// Everything the runs of one invocation share.
#[derive(Debug)]
pub struct RunSettings {
    /// Resolved targets (`addr` set).
    pub targets: Vec<Target>,
    /// Target order by request index (weighted round robin).
    pub cycle: Vec<u16>,
    pub headers: HeaderMap,
    pub workload: Arc<Workload>,
    pub bound: Bound,
    pub warmup: Warmup,
    pub timeout: Duration,
    pub max_connections: usize,
    /// Open loop: single-threaded runtimes doing the network I/O (see `io_threads`).
    pub io_threads: usize,
    /// Open loop: which idle connection takes the next request.
    pub connection_reuse: ConnectionReuse,
    /// Print a progress line to stderr.
    pub progress: bool,
    /// See [`crate::LoadConfig::keep_token_times`].
    pub keep_token_times: bool,
    /// `--seed`: also seeds the arrival times.
    pub seed: u64,
    /// How long requests still open when the window closes may take to finish.
    pub grace: Duration,
    /// Stops the run early (the first Ctrl-C).
    pub interrupt: Interrupt,
    /// For `https://` targets.
    pub tls: Option<crate::client::TlsSettings>,
    /// `--tokenizer`: counts answers that come without `usage`.
    pub tokenizer: Option<crate::tokenizer::TokenCounter>,
}

/// What a run produced, before analysis.
#[derive(Debug)]
pub struct RunOutput {
    pub label: String,
    pub load: LoadPoint,
    /// Every request, warm-up included, in index order.
    pub records: Vec<RequestRecord>,
    /// Gaps between token chunks of measured requests (µs).
    pub itl: LatencyHistogram,
    /// Output tokens of measured requests per second since the epoch.
    pub token_timeline: Vec<f64>,
    pub error_examples: BTreeMap<String, String>,
    /// Start of measurement when the warm-up is a duration (µs since the epoch).
    pub warmup_end_us: Option<u64>,
    /// When the run's schedule started (µs since the epoch): the window starts here, or at
    /// `warmup_end_us`.
    pub start_us: u64,
    /// End of the measured window (µs since the epoch): the duration bound, or the
    /// interrupt. `None` for runs bounded by a request count only.
    pub window_end_us: Option<u64>,
    /// The run was interrupted; its window ends at the interrupt.
    pub interrupted: bool,
    /// See [`RunSettings::grace`].
    pub grace: Duration,
    pub open_loop: bool,
    pub target_rate: Option<f64>,
    pub wall_s: f64,
    pub cpu_seconds: Option<f64>,
    /// Share of the machine's CPU time the hypervisor took during the run (Linux).
    pub steal_percent: Option<f64>,
    pub cores: usize,
    pub connections_opened: u64,
    pub peak_connections: u64,
    pub max_connections: usize,
    pub connection_cap_hit: bool,
    pub distinct_requests: Option<usize>,
    /// Prompts were sized, and answers without usage counted, by `--tokenizer`.
    pub tokenizer: bool,
    /// How late the generator noticed arriving data (see `health`).
    pub scheduling_delay: LatencyHistogram,
    /// How long token chunks waited in the kernel before a worker read them (kernel
    /// receive time to read; see `client::connection`).
    pub receive_lag: LatencyHistogram,
}

/// State shared by the workers of one run.
#[derive(Debug)]
pub(crate) struct RunShared {
    pub clock: Clock,
    pub index_base: u64,
    pub sent: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub open_connections: AtomicU64,
    pub peak_connections: AtomicU64,
    /// End of sending (µs since the epoch); `u64::MAX` until known (a `--duration` after
    /// `--warmup-requests` starts only when the warm-up requests are out).
    pub end_us: AtomicU64,
    /// The grace period's cut and the interrupt.
    pub stop: stop::RunStop,
}

impl RunShared {
    pub fn connection_opened(&self) {
        let now = self.open_connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_connections.fetch_max(now, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Failures that stop a run (as opposed to failed requests, which are measured).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the pacing thread could not be started: {0}")]
    Thread(std::io::Error),
    #[error("the pacing thread stopped unexpectedly")]
    PacingLost,
    #[error("a worker task failed: {0}")]
    Worker(String),
}

/// Runs one plan to its end and returns every request's record.
pub async fn execute(settings: Arc<RunSettings>, plan: &RunPlan) -> Result<RunOutput, RunError> {
    let cpu_before = crate::host::process_cpu_seconds();
    let machine_before = crate::host::MachineTicks::read();
    let clock = Clock::start();
    let shared = Arc::new(RunShared {
        clock,
        index_base: plan.index_base,
        sent: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        open_connections: AtomicU64::new(0),
        peak_connections: AtomicU64::new(0),
        end_us: AtomicU64::new(u64::MAX),
        stop: stop::RunStop::new(),
    });
    let enforcer = tokio::spawn(stop::enforce(
        shared.clone(),
        settings.grace,
        settings.interrupt.clone(),
    ));
    let progress = settings
        .progress
        .then(|| progress::start(shared.clone(), plan.label.clone()));
    let ran = match &plan.load {
        LoadPoint::Concurrency { concurrency } => {
            let probe = health::start(&Handle::current());
            let (outputs, start_us) =
                closed_loop::run(settings.clone(), shared.clone(), *concurrency).await?;
            LoopOutput {
                outputs,
                cap_hit: false,
                start_us,
                scheduling_delay: probe.finish().await,
            }
        }
        LoadPoint::Rate { rate, arrival } => {
            let schedule = open_loop::Schedule::Arrival(ArrivalSchedule::with_segments(
                *arrival,
                *rate,
                settings.seed ^ plan.index_base,
                &segments(&settings, *rate),
            ));
            open_loop::run(settings.clone(), shared.clone(), schedule).await?
        }
        LoadPoint::Trace => {
            let offsets: Vec<f64> = settings
                .workload
                .trace_offsets()
                .map(<[f64]>::to_vec)
                .unwrap_or_default();
            open_loop::run(
                settings.clone(),
                shared.clone(),
                open_loop::Schedule::Trace(offsets, 0),
            )
            .await?
        }
    };
    enforcer.abort();
    if let Some(p) = progress {
        p.finish();
    }
    let wall_s = clock.epoch().elapsed().as_secs_f64();
    let cpu_seconds = match (cpu_before, crate::host::process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a).max(0.0)),
        _ => None,
    };
    let steal_percent = machine_before
        .and_then(|before| crate::host::MachineTicks::read()?.steal_percent_since(&before));
    Ok(merge(
        plan,
        &settings,
        &shared,
        ran.outputs,
        MergeFacts {
            cap_hit: ran.cap_hit,
            start_us: ran.start_us,
            wall_s,
            cpu_seconds,
            steal_percent,
            scheduling_delay: ran.scheduling_delay,
        },
    ))
}

/// The gap counts of warm-up and measurement at `rate`, so the arrival process is exact
/// over the measured requests (see [`crate::arrival::BLOCK`]).
fn segments(settings: &RunSettings, rate: f64) -> Vec<usize> {
    let at_rate = |d: Duration| (d.as_secs_f64() * rate).round() as usize;
    let warmup = match settings.warmup {
        Warmup::None => 0,
        Warmup::Duration(d) => at_rate(d),
        Warmup::Requests(n) => n as usize,
    };
    let measured = match (settings.bound.requests, settings.bound.duration) {
        (Some(n), Some(d)) => (n as usize).min(at_rate(d)),
        (Some(n), None) => n as usize,
        (None, Some(d)) => at_rate(d),
        (None, None) => 0,
    };
    vec![warmup, measured.saturating_sub(1)]
}

/// What the closed or open loop hands back.
struct LoopOutput {
    outputs: Vec<WorkerOutput>,
    /// The open loop's connection cap held a request back.
    cap_hit: bool,
    /// The time (µs since the epoch) due times count from.
    start_us: u64,
    /// The health probe's measurements (see `health`).
    scheduling_delay: LatencyHistogram,
}

struct MergeFacts {
    cap_hit: bool,
    start_us: u64,
    wall_s: f64,
    cpu_seconds: Option<f64>,
    steal_percent: Option<f64>,
    scheduling_delay: LatencyHistogram,
}

fn merge(
    plan: &RunPlan,
    settings: &RunSettings,
    shared: &RunShared,
    outputs: Vec<WorkerOutput>,
    facts: MergeFacts,
) -> RunOutput {
    let mut records = Vec::new();
    let mut itl = LatencyHistogram::new();
    let mut receive_lag = LatencyHistogram::new();
    let mut timeline: Vec<f64> = Vec::new();
    let mut error_examples = BTreeMap::new();
    let mut connections_opened = 0;
    for out in outputs {
        records.extend(out.records);
        itl.merge(&out.itl);
        receive_lag.merge(&out.receive_lag);
        if timeline.len() < out.timeline.len() {
            timeline.resize(out.timeline.len(), 0.0);
        }
        for (i, v) in out.timeline.iter().enumerate() {
            timeline[i] += v;
        }
        for (k, v) in out.error_examples {
            error_examples.entry(k).or_insert(v);
        }
        connections_opened += out.connections_opened;
    }
    records.sort_by_key(|r| r.index);
    let warmup_end_us = match settings.warmup {
        Warmup::Duration(d) => Some(facts.start_us + d.as_micros() as u64),
        _ => None,
    };
    let bound_end_us = Some(shared.end_us.load(Ordering::Relaxed)).filter(|&e| e != u64::MAX);
    let interrupted_at_us = shared.stop.interrupted_at_us();
    let window_end_us = match (bound_end_us, interrupted_at_us) {
        (Some(end), Some(at)) => Some(end.min(at)),
        (end, at) => end.or(at),
    };
    RunOutput {
        label: plan.label.clone(),
        load: plan.load.clone(),
        records,
        itl,
        token_timeline: timeline,
        error_examples,
        warmup_end_us,
        start_us: facts.start_us,
        window_end_us,
        interrupted: interrupted_at_us.is_some(),
        grace: settings.grace,
        open_loop: plan.load.is_open_loop(),
        target_rate: match plan.load {
            LoadPoint::Rate { rate, .. } => Some(rate),
            _ => None,
        },
        wall_s: facts.wall_s,
        cpu_seconds: facts.cpu_seconds,
        steal_percent: facts.steal_percent,
        cores: crate::host::cores(),
        connections_opened,
        peak_connections: shared.peak_connections.load(Ordering::Relaxed),
        max_connections: settings.max_connections,
        connection_cap_hit: facts.cap_hit,
        distinct_requests: settings.workload.distinct_requests(),
        tokenizer: settings.tokenizer.is_some(),
        scheduling_delay: facts.scheduling_delay,
        receive_lag,
    }
}
