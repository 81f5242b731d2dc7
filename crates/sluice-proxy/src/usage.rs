//! What one proxy run did, kept in memory and persisted to `DIR/.sluice/`:
//! `last-run.json` (the recordings served or written, the misses, the counts) and
//! `drift.json` (the run's drift items). `sluice proxy report` and `prune` read them.
//!
//! The files are rewritten atomically at most once a second while requests arrive and
//! always on a clean stop, so a crash loses at most the last second of usage.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::atomic_file::write_atomically;
use crate::config::Mode;
use crate::drift::{DriftItem, DriftReport, DriftSource, DriftVerdict};
use crate::entry::now_unix_ms;
use crate::headers::ReplayOutcome;
use crate::metrics::{ProxyMetrics, RefusalReason};
use crate::store::STATE_DIR;

pub const LAST_RUN_FILE: &str = "last-run.json";
pub const DRIFT_FILE: &str = "drift.json";

/// Version of the `last-run.json` layout.
pub const LAST_RUN_FORMAT: u32 = 1;

/// The shortest time between two writes of the run files while requests arrive.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Misses listed in `last-run.json`; the count keeps going beyond it. A broken suite can
/// miss thousands of times and the first ones say what broke.
const MAX_LISTED_MISSES: usize = 1000;

/// Requests per final outcome (see [`ReplayOutcome`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    pub hits: u64,
    pub misses: u64,
    pub recorded: u64,
    pub refused: u64,
    pub passthrough: u64,
}

/// A request strict replay could not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissRecord {
    pub key: String,
    pub method: String,
    /// `scheme://host:port` of a forward-proxy or CONNECT request; absent for reverse routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub path: String,
    /// The request's model and the start of its last message, when its body says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The nearest recording, when the directory had one.
    pub nearest: Option<String>,
}

/// `DIR/.sluice/last-run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub format: u32,
    pub started_at_unix_ms: u64,
    /// `None` while the proxy runs (or when it did not stop cleanly).
    pub finished_at_unix_ms: Option<u64>,
    pub mode: String,
    pub counts: RunCounts,
    /// Refusals by reason (`secret`, `store_error`, ...), only reasons that occurred.
    #[serde(default)]
    pub refusals: BTreeMap<String, u64>,
    /// Entry files served (hit), written (recorded) or compared with (diff) by this run.
    pub used: BTreeSet<String>,
    /// The first misses (see `counts.misses` for the total).
    #[serde(default)]
    pub misses: Vec<MissRecord>,
    /// The prefixes of the run's reverse routes: the recordings of other paths (without an
    /// origin) could not have been served by it, so `prune` keeps them. `None` in records
    /// written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
}

impl LastRun {
    /// Several runs' records as one (the shards of a test suite): entries used by any,
    /// counts and refusals summed, misses listed up to the same bound, started at the
    /// first start, finished at the last finish (unfinished if any is), routes joined.
    /// The mode is the runs' common mode, or the distinct modes joined with `+`.
    pub fn merge(runs: &[LastRun]) -> Option<LastRun> {
        let (first, rest) = runs.split_first()?;
        let mut merged = first.clone();
        let mut modes = vec![first.mode.clone()];
        for run in rest {
            merged.started_at_unix_ms = merged.started_at_unix_ms.min(run.started_at_unix_ms);
            merged.finished_at_unix_ms = match (merged.finished_at_unix_ms, run.finished_at_unix_ms)
            {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            if !modes.contains(&run.mode) {
                modes.push(run.mode.clone());
            }
            let c = &mut merged.counts;
            c.hits += run.counts.hits;
            c.misses += run.counts.misses;
            c.recorded += run.counts.recorded;
            c.refused += run.counts.refused;
            c.passthrough += run.counts.passthrough;
            for (reason, n) in &run.refusals {
                *merged.refusals.entry(reason.clone()).or_insert(0) += n;
            }
            merged.used.extend(run.used.iter().cloned());
            let room = MAX_LISTED_MISSES.saturating_sub(merged.misses.len());
            merged.misses.extend(run.misses.iter().take(room).cloned());
            merged.routes = match (merged.routes.take(), &run.routes) {
                (Some(mut a), Some(b)) => {
                    a.extend(
                        b.iter()
                            .filter(|p| !a.contains(p))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    Some(a)
                }
                _ => None,
            };
        }
        merged.mode = modes.join("+");
        Some(merged)
    }
}

#[derive(Debug)]
struct RunState {
    last_run: LastRun,
    drift: DriftReport,
    last_run_dirty: bool,
    drift_dirty: bool,
}

/// The usage of one proxy run, the proxy's metrics, and the writer of the run files.
#[derive(Debug)]
pub struct RunUsage {
    state_dir: PathBuf,
    metrics: ProxyMetrics,
    state: Mutex<RunState>,
    changed: Notify,
}

impl RunUsage {
    /// Starts the record of a run: creates `DIR/.sluice` and writes a `last-run.json`
    /// marked running and an empty `drift.json`, replacing the previous run's. A directory
    /// that cannot be written (read-only fixtures in CI) only costs the run files: the
    /// proxy still serves, with a warning, and keeps its metrics.
    pub fn begin(dir: &Path, mode: Mode, started_at_unix_ms: u64, routes: Vec<String>) -> RunUsage {
        let state_dir = dir.join(STATE_DIR);
        let usage = RunUsage {
            state_dir,
            metrics: ProxyMetrics::new(),
            state: Mutex::new(RunState {
                last_run: LastRun {
                    format: LAST_RUN_FORMAT,
                    started_at_unix_ms,
                    finished_at_unix_ms: None,
                    mode: mode.as_str().to_owned(),
                    counts: RunCounts::default(),
                    refusals: BTreeMap::new(),
                    used: BTreeSet::new(),
                    misses: Vec::new(),
                    routes: Some(routes),
                },
                drift: DriftReport {
                    run_started_at_unix_ms: started_at_unix_ms,
                    mode: mode.as_str().to_owned(),
                    ..DriftReport::default()
                },
                last_run_dirty: true,
                drift_dirty: true,
            }),
            changed: Notify::new(),
        };
        let started = std::fs::create_dir_all(&usage.state_dir)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", usage.state_dir.display()),
                )
            })
            .and_then(|()| usage.write_pending());
        if let Err(e) = started {
            tracing::warn!("run usage will not be saved (report and prune need it): {e}");
        }
        usage
    }

    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request's final outcome; `file` is the entry it was served from or
    /// written to.
    pub fn outcome(&self, outcome: ReplayOutcome, file: Option<&str>) {
        self.metrics.request(outcome);
        {
            let mut state = self.lock();
            let counts = &mut state.last_run.counts;
            match outcome {
                ReplayOutcome::Hit => counts.hits += 1,
                ReplayOutcome::Miss => counts.misses += 1,
                ReplayOutcome::Recorded => counts.recorded += 1,
                ReplayOutcome::Refused => counts.refused += 1,
                ReplayOutcome::Passthrough => counts.passthrough += 1,
            }
            if let Some(file) = file {
                state.last_run.used.insert(file.to_owned());
            }
            state.last_run_dirty = true;
        }
        self.changed.notify_one();
    }

    /// Counts a strict-replay miss (outcome `miss`) and lists it.
    pub fn miss(&self, miss: MissRecord) {
        {
            let mut state = self.lock();
            if state.last_run.misses.len() < MAX_LISTED_MISSES {
                state.last_run.misses.push(miss);
            }
        }
        self.outcome(ReplayOutcome::Miss, None);
    }

    /// Marks an entry as used without counting a request (the recording `diff` mode
    /// compared with).
    pub fn use_file(&self, file: &str) {
        {
            let mut state = self.lock();
            state.last_run.used.insert(file.to_owned());
            state.last_run_dirty = true;
        }
        self.changed.notify_one();
    }

    pub fn refusal(&self, reason: RefusalReason) {
        self.metrics.refusal(reason);
        {
            let mut state = self.lock();
            *state
                .last_run
                .refusals
                .entry(reason.as_str().to_owned())
                .or_insert(0) += 1;
            state.last_run_dirty = true;
        }
        self.changed.notify_one();
    }

    /// Counts a comparison and adds it to the drift report. An overwrite that changed
    /// nothing is counted but not listed: the report is about what changed.
    pub fn drift(&self, item: DriftItem) {
        self.metrics.drift(item.verdict);
        {
            let mut state = self.lock();
            state.drift.summary.count(item.verdict);
            if !(item.source == DriftSource::Overwrite && item.verdict == DriftVerdict::Same) {
                state.drift.items.push(item);
            }
            state.drift_dirty = true;
        }
        self.changed.notify_one();
    }

    /// The entry files used so far.
    pub fn used_files(&self) -> BTreeSet<String> {
        self.lock().last_run.used.clone()
    }

    /// Writes the files whose content changed since the last write.
    fn write_pending(&self) -> io::Result<()> {
        let (last_run, drift) = {
            let mut state = self.lock();
            let last_run = state.last_run_dirty.then(|| state.last_run.clone());
            let drift = state.drift_dirty.then(|| state.drift.clone());
            state.last_run_dirty = false;
            state.drift_dirty = false;
            (last_run, drift)
        };
        if let Some(drift) = drift {
            write_json(&self.state_dir.join(DRIFT_FILE), &drift)?;
        }
        if let Some(last_run) = last_run {
            write_json(&self.state_dir.join(LAST_RUN_FILE), &last_run)?;
        }
        Ok(())
    }

    async fn flush(self: &Arc<Self>) {
        let usage = self.clone();
        match tokio::task::spawn_blocking(move || usage.write_pending()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot write the run usage: {e}"),
            Err(e) => tracing::warn!("run usage writer failed: {e}"),
        }
    }

    /// Starts the background writer. [`RunWriter::finish`] marks the run finished and
    /// writes the final state.
    pub fn spawn_writer(self: &Arc<Self>) -> RunWriter {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let usage = self.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = usage.changed.notified() => {}
                    _ = &mut stopped => break,
                }
                usage.flush().await;
                tokio::select! {
                    () = tokio::time::sleep(FLUSH_INTERVAL) => {}
                    _ = &mut stopped => break,
                }
            }
            {
                let mut state = usage.lock();
                state.last_run.finished_at_unix_ms = Some(now_unix_ms());
                state.last_run_dirty = true;
            }
            usage.flush().await;
        });
        RunWriter { stop, task }
    }
}

/// The background writer of a run's files.
#[derive(Debug)]
pub struct RunWriter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunWriter {
    /// Marks the run finished and waits until the final state is on disk.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::warn!("run usage writer failed: {e}");
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    text.push('\n');
    write_atomically(path, text.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}
