//! Open loop: requests are released at their scheduled times whatever the target does.
//!
//! A dedicated OS thread does the pacing: it sleeps until each due time (a plain thread
//! sleep is accurate to tens of microseconds, where the async timer wheel has 1 ms ticks)
//! and hands the request to an idle connection-owning worker: the one idle longest or
//! shortest, by `--connection-reuse` ([`IdleWorkers`]). Workers run on the run's I/O threads
//! ([`IoThreads`]) and own their connections.
//!
//! When no worker is idle, the request goes to whichever comes free first: a worker finishing
//! its request, or a new one that the pacer starts connecting then (at most
//! [`MAX_CONNECTING`] connect at once, up to `--max-connections` in all). The wait counts
//! against the request's latency (it is measured from the due time) and shows as send
//! lateness. Giving a request its own new connection instead, as this generator did before,
//! turned every scheduling stall on a shared machine into a storm of hundreds of connects
//! (one per request due during the stall) that the client, the target and everything behind
//! the target then paid for while they were furthest behind; see docs/benchmarks-log.md. When
//! the cap is reached the report says so.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
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
use crate::config::ConnectionReuse;

/// Connections opened before the first request is due.
const PRECONNECT: usize = 32;
/// Connections being opened at once while requests wait for one. Enough that a target which
/// is slow to answer still gets a new connection every few hundred microseconds per slot.
const MAX_CONNECTING: usize = 16;
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

/// The worker side of the hand-off: (connect to `connect_first`, then say it is idle;) take a
/// job, do it, say it is idle again.
async fn serve(
    mut worker: Worker,
    id: usize,
    connect_first: Option<usize>,
    mut jobs: mpsc::Receiver<Job>,
    idle: mpsc::UnboundedSender<usize>,
) -> WorkerOutput {
    if let Some(target) = connect_first {
        // A failed connect is reported by the request that finds no connection.
        worker.preconnect(target).await;
        let _ = idle.send(id);
    }
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
        let mut workers = WorkerSet {
            senders: Vec::new(),
            handles: Vec::new(),
            connecting: Vec::new(),
            connecting_now: 0,
            idle: IdleWorkers::new(self.settings.connection_reuse),
            idle_tx,
        };
        for w in std::mem::take(&mut self.ready) {
            let id = workers.start(&self.io, w, None);
            workers.idle.push(id);
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
        // The window's end, for the grace period and the analysis.
        self.shared.end_us.store(end_us, Ordering::Relaxed);
        let max_workers = self.settings.max_connections.max(1);
        let cycle = &self.settings.cycle;
        let mut cap_hit = false;
        let mut seq = 0u64;
        'schedule: while let Some(offset_s) = self.schedule.next_offset_s() {
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
                    self.shared.end_us.store(end_us, Ordering::Relaxed);
                }
            }
            if due >= end_us {
                break;
            }
            if !sleep_until(&clock, due, &self.shared) {
                break;
            }
            while let Ok(id) = idle_rx.try_recv() {
                workers.now_idle(id);
            }
            let mut waited = false;
            let id = loop {
                if let Some(id) = workers.idle.pop() {
                    break id;
                }
                waited = true;
                if workers.senders.len() >= max_workers {
                    cap_hit = true;
                } else if workers.connecting_now < MAX_CONNECTING {
                    let target = cycle
                        .get((seq % cycle.len().max(1) as u64) as usize)
                        .map_or(0, |&t| usize::from(t));
                    let worker = Worker::new(self.settings.clone(), self.shared.clone());
                    workers.start(&self.io, worker, Some(target));
                }
                // An interrupt cuts the open requests, so a worker comes free soon.
                match idle_rx.blocking_recv() {
                    Some(id) => workers.now_idle(id),
                    None => break 'schedule,
                }
                if self.shared.stop.halted() {
                    break 'schedule;
                }
            };
            let job = Job {
                seq,
                scheduled_us: Some(due),
                warmup: warm,
                waited_for_connection: waited,
            };
            // An idle worker's one-slot queue is empty, so this cannot be full; a worker
            // that died cannot take it, and its job is then not sent at all.
            if let Some(tx) = workers.senders.get(id) {
                let _ = tx.try_send(job);
            }
            seq += 1;
        }
        Paced {
            handles: workers.handles,
            cap_hit,
        }
    }
}

/// The pacer's view of the workers.
struct WorkerSet {
    /// Job queues, by worker id.
    senders: Vec<mpsc::Sender<Job>>,
    handles: Vec<JoinHandle<WorkerOutput>>,
    /// By worker id: started with a connect that has not finished yet.
    connecting: Vec<bool>,
    connecting_now: usize,
    idle: IdleWorkers,
    idle_tx: mpsc::UnboundedSender<usize>,
}

impl WorkerSet {
    /// Starts `worker` on an I/O thread; with `connect_to`, it first connects there and then
    /// reports itself idle.
    fn start(&mut self, io: &IoThreads, worker: Worker, connect_to: Option<usize>) -> usize {
        let id = self.senders.len();
        let (tx, rx) = mpsc::channel(1);
        self.senders.push(tx);
        self.connecting.push(connect_to.is_some());
        self.connecting_now += usize::from(connect_to.is_some());
        self.handles.push(io.handle(id).spawn(serve(
            worker,
            id,
            connect_to,
            rx,
            self.idle_tx.clone(),
        )));
        id
    }

    fn now_idle(&mut self, id: usize) {
        if let Some(c) = self.connecting.get_mut(id) {
            if std::mem::take(c) {
                self.connecting_now -= 1;
            }
        }
        self.idle.push(id);
    }
}

/// Idle workers in the order they became idle.
struct IdleWorkers {
    order: ConnectionReuse,
    ids: VecDeque<usize>,
}

impl IdleWorkers {
    fn new(order: ConnectionReuse) -> IdleWorkers {
        IdleWorkers {
            order,
            ids: VecDeque::new(),
        }
    }

    fn push(&mut self, id: usize) {
        self.ids.push_back(id);
    }

    fn pop(&mut self) -> Option<usize> {
        match self.order {
            ConnectionReuse::Spread => self.ids.pop_front(),
            ConnectionReuse::Recent => self.ids.pop_back(),
        }
    }
}

/// The longest the pacer sleeps before looking whether the run was interrupted.
const HALT_CHECK: Duration = Duration::from_millis(20);

/// Sleeps the thread until `due_us` on the run clock; `false` when the run was interrupted
/// meanwhile. Never sleeps when already late: a generator that fell behind catches up at
/// once (the schedule is absolute) and the lateness is measured.
fn sleep_until(clock: &Clock, due_us: u64, shared: &RunShared) -> bool {
    loop {
        if shared.stop.halted() {
            return false;
        }
        let now = clock.now_us();
        if now >= due_us {
            return true;
        }
        std::thread::sleep(Duration::from_micros(due_us - now).min(HALT_CHECK));
    }
}
