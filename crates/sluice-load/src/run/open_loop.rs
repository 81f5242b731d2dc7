//! Open loop: requests are released at their scheduled times whatever the target does.
//!
//! A dedicated OS thread does the pacing: it sleeps until each due time (a plain thread
//! sleep is accurate to tens of microseconds, where the async timer wheel has 1 ms ticks)
//! and hands the request to an idle worker. Workers run on the run's I/O threads
//! ([`IoThreads`]) and own their connections; when none is
//! idle a new one is started, up to `--max-connections`, so in-flight requests are never
//! capped silently. When the cap is reached the thread waits for a worker, the wait counts
//! against the request's latency (it is measured from the due time), and the report says
//! the cap was hit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::io_threads::IoThreads;
use super::{
    health, Job, LoopOutput, RunError, RunSettings, RunShared, Warmup, Worker, WorkerOutput,
};
use crate::arrival::ArrivalSchedule;
use crate::clock::Clock;

/// Connections opened before the first request is due.
const PRECONNECT: usize = 32;
/// Gap between the end of pre-connecting and the first due time, so the first request is
/// not late by construction.
const LEAD_US: u64 = 2_000;

pub(super) enum Schedule {
    Arrival(ArrivalSchedule),
    /// Offsets in seconds, and the position of the next one.
    Trace(Vec<f64>, usize),
}

impl Schedule {
    fn next_offset_s(&mut self) -> Option<f64> {
        match self {
            Schedule::Arrival(a) => Some(a.next_offset_s()),
            Schedule::Trace(offsets, next) => {
                let v = offsets.get(*next).copied();
                *next += 1;
                v
            }
        }
    }
}

struct Paced {
    handles: Vec<JoinHandle<WorkerOutput>>,
    cap_hit: bool,
}

/// Runs the schedule on `settings.io_threads` I/O threads of its own.
pub(super) async fn run(
    settings: Arc<RunSettings>,
    shared: Arc<RunShared>,
    schedule: Schedule,
) -> Result<LoopOutput, RunError> {
    let io = Arc::new(IoThreads::start(settings.io_threads)?);
    let probe = health::start(io.handle(0));
    let targets = settings.targets.len().max(1);
    let mut opening = Vec::new();
    for i in 0..settings.max_connections.min(PRECONNECT) {
        let mut w = Worker::new(settings.clone(), shared.clone());
        opening.push(io.handle(i).spawn(async move {
            w.preconnect(i % targets).await;
            w
        }));
    }
    let mut ready = Vec::with_capacity(opening.len());
    for h in opening {
        ready.push(h.await.map_err(|e| RunError::Worker(e.to_string()))?);
    }
    let start_us = shared.clock.now_us() + LEAD_US;
    let pacer = Pacer {
        settings,
        shared,
        io: io.clone(),
        schedule,
        start_us,
        ready,
    };
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("sluice-load-pacer".into())
        .spawn(move || {
            let _ = tx.send(pacer.pace());
        })
        .map_err(RunError::Thread)?;
    let paced = rx.await.map_err(|_| RunError::PacingLost)?;
    let mut outputs = Vec::with_capacity(paced.handles.len());
    for h in paced.handles {
        outputs.push(h.await.map_err(|e| RunError::Worker(e.to_string()))?);
    }
    Ok(LoopOutput {
        outputs,
        cap_hit: paced.cap_hit,
        start_us,
        // Before the I/O threads stop: the probe runs on one of them.
        scheduling_delay: probe.finish().await,
    })
}

struct Pacer {
    settings: Arc<RunSettings>,
    shared: Arc<RunShared>,
    io: Arc<IoThreads>,
    schedule: Schedule,
    start_us: u64,
    /// Pre-connected workers, started first.
    ready: Vec<Worker>,
}

/// The worker side of the hand-off: take a job, do it, say it is idle again.
async fn serve(
    mut worker: Worker,
    id: usize,
    mut jobs: mpsc::Receiver<Job>,
    idle: mpsc::UnboundedSender<usize>,
) -> WorkerOutput {
    while let Some(job) = jobs.recv().await {
        worker.run_job(job).await;
        // The pacer is gone once the schedule is done; finishing the job is all that is left.
        let _ = idle.send(id);
    }
    worker.finish()
}

impl Pacer {
    fn pace(mut self) -> Paced {
        let (idle_tx, mut idle_rx) = mpsc::unbounded_channel::<usize>();
        let mut senders: Vec<mpsc::Sender<Job>> = Vec::new();
        let mut handles = Vec::new();
        let mut idle: Vec<usize> = Vec::new();
        let mut start = |worker: Worker, senders: &mut Vec<mpsc::Sender<Job>>| -> usize {
            let id = senders.len();
            let (tx, rx) = mpsc::channel(1);
            senders.push(tx);
            handles.push(
                self.io
                    .handle(id)
                    .spawn(serve(worker, id, rx, idle_tx.clone())),
            );
            id
        };
        for w in std::mem::take(&mut self.ready) {
            idle.push(start(w, &mut senders));
        }

        let clock = self.shared.clock;
        let warmup = self.settings.warmup;
        let warmup_n = warmup.requests();
        // `--requests` counts measured requests only.
        let limit = self.settings.bound.requests;
        let mut measured = 0u64;
        let duration_us = self.settings.bound.duration.map(|d| d.as_micros() as u64);
        let mut end_us = match (duration_us, warmup) {
            (None, _) => u64::MAX,
            (Some(_), Warmup::Requests(n)) if n > 0 => u64::MAX,
            (Some(d), Warmup::Duration(w)) => self.start_us + w.as_micros() as u64 + d,
            (Some(d), _) => self.start_us + d,
        };
        let max_workers = self.settings.max_connections.max(1);
        let mut cap_hit = false;
        let mut seq = 0u64;
        while let Some(offset_s) = self.schedule.next_offset_s() {
            let due = self.start_us + (offset_s * 1e6).round() as u64;
            let warm = warmup.covers(seq, due, self.start_us);
            if !warm {
                if limit.is_some_and(|l| measured >= l) {
                    break;
                }
                measured += 1;
            }
            if warmup_n > 0 && seq == warmup_n {
                if let Some(d) = duration_us {
                    end_us = due.saturating_add(d);
                }
            }
            if due >= end_us {
                break;
            }
            sleep_until(&clock, due);
            while let Ok(id) = idle_rx.try_recv() {
                idle.push(id);
            }
            let id = match idle.pop() {
                Some(id) => id,
                None if senders.len() < max_workers => start(
                    Worker::new(self.settings.clone(), self.shared.clone()),
                    &mut senders,
                ),
                None => {
                    cap_hit = true;
                    match idle_rx.blocking_recv() {
                        Some(id) => id,
                        None => break,
                    }
                }
            };
            let job = Job {
                seq,
                scheduled_us: Some(due),
                warmup: warm,
            };
            // An idle worker's one-slot queue is empty, so this cannot be full; a worker
            // that died cannot take it, and its job is then not sent at all.
            if let Some(tx) = senders.get(id) {
                let _ = tx.try_send(job);
            }
            seq += 1;
        }
        Paced { handles, cap_hit }
    }
}

/// Sleeps the thread until `due_us` on the run clock. Never sleeps when already late: a
/// generator that fell behind catches up at once (the schedule is absolute) and the
/// lateness is measured.
fn sleep_until(clock: &Clock, due_us: u64) {
    loop {
        let now = clock.now_us();
        if now >= due_us {
            return;
        }
        std::thread::sleep(Duration::from_micros(due_us - now));
    }
}
