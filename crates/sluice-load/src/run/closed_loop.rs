//! Closed loop: a fixed number of workers, each sending its next request as soon as its
//! previous answer ends. The concurrency is exact; the rate is whatever the target allows.
//!
//! Workers start staggered, 1 ms apart (spread over at most one second), rather than all at
//! once: C requests arriving in the same instant would, against a target with steady service
//! times, stay in lock-step for the whole run, and every token of every stream would then
//! be due in the same instant — a burst pattern no real client population produces and
//! that measures the burst, not the target. Use a warm-up to keep the ramp out of the
//! statistics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::worker::JobOutcome;
use super::{Job, RunError, RunSettings, RunShared, Warmup, Worker, WorkerOutput};

/// Runs the workers to the end; returns their outputs and the start time (µs since the
/// epoch) that warm-up and duration count from.
pub(super) async fn run(
    settings: Arc<RunSettings>,
    shared: Arc<RunShared>,
    concurrency: usize,
) -> Result<(Vec<WorkerOutput>, u64), RunError> {
    // Connect everyone first, so that the stagger below is not undone by connection set-up
    // (a worker still connecting when its turn comes would start in a burst with others).
    let targets = settings.targets.len().max(1);
    let mut opening = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let mut worker = Worker::new(settings.clone(), shared.clone());
        opening.push(tokio::spawn(async move {
            worker.preconnect(i % targets).await;
            worker
        }));
    }
    let mut workers = Vec::with_capacity(concurrency);
    for h in opening {
        workers.push(h.await.map_err(|e| RunError::Worker(e.to_string()))?);
    }

    let clock = shared.clock;
    let start_us = clock.now_us();
    let next = Arc::new(AtomicU64::new(0));
    // `--requests` counts measured requests only.
    let measured = Arc::new(AtomicU64::new(0));
    let warmup_n = settings.warmup.requests();
    let limit = settings.bound.requests;
    let duration_us = settings.bound.duration.map(|d| d.as_micros() as u64);
    let end_us = match (duration_us, settings.warmup) {
        (None, _) => u64::MAX,
        // Starts counting when the warm-up requests are out (set by the worker that takes
        // the first measured request).
        (Some(_), Warmup::Requests(n)) if n > 0 => u64::MAX,
        (Some(d), Warmup::Duration(w)) => start_us + (w.as_micros() as u64).saturating_add(d),
        (Some(d), _) => start_us + d,
    };
    shared.end_us.store(end_us, Ordering::Relaxed);

    let stagger = stagger(concurrency);
    let mut handles = Vec::with_capacity(concurrency);
    for (i, mut worker) in workers.into_iter().enumerate() {
        let settings = settings.clone();
        let shared = shared.clone();
        let next = next.clone();
        let measured = measured.clone();
        let start_at = clock.at_us(start_us) + stagger * i as u32;
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(start_at.into()).await;
            let mut backoff = ConnectBackoff::default();
            loop {
                let now = shared.clock.now_us();
                if now >= shared.end_us.load(Ordering::Relaxed) || shared.stop.halted() {
                    break;
                }
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let warmup = settings.warmup.covers(seq, now, start_us);
                if !warmup && limit.is_some_and(|l| measured.fetch_add(1, Ordering::Relaxed) >= l) {
                    break;
                }
                if warmup_n > 0 && seq == warmup_n {
                    if let Some(d) = duration_us {
                        shared
                            .end_us
                            .store(now.saturating_add(d), Ordering::Relaxed);
                    }
                }
                let outcome = worker
                    .run_job(Job {
                        seq,
                        scheduled_us: None,
                        warmup,
                        waited_for_connection: false,
                    })
                    .await;
                if let Some(pause) = backoff.after(outcome) {
                    // Each waits on its own; the window may close meanwhile.
                    tokio::time::sleep(pause).await;
                }
            }
            worker.finish()
        }));
    }
    let mut outputs = Vec::with_capacity(concurrency);
    for h in handles {
        outputs.push(h.await.map_err(|e| RunError::Worker(e.to_string()))?);
    }
    Ok((outputs, start_us))
}

/// Pauses of a closed-loop worker after failed connects: 10 ms doubling to 1 s, back to
/// none after a request that connected. A target that died is otherwise hammered with as
/// many connects as the loop can make (65 000 refused in 4 s were seen), which measures
/// nothing and loads the machine both share. Open-loop requests keep their schedule.
#[derive(Debug, Default)]
struct ConnectBackoff {
    next: Option<Duration>,
}

impl ConnectBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn after(&mut self, outcome: JobOutcome) -> Option<Duration> {
        if outcome != JobOutcome::ConnectFailed {
            self.next = None;
            return None;
        }
        let pause = self.next.unwrap_or(Self::FIRST);
        self.next = Some((pause * 2).min(Self::MAX));
        Some(pause)
    }
}

/// Gap between the starts of two workers: 1 ms, shortened so that all have started within
/// one second.
fn stagger(concurrency: usize) -> Duration {
    let one_second_spread = Duration::from_secs(1) / concurrency.max(1) as u32;
    one_second_spread.min(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_connects_back_off_and_a_connect_resets() {
        let mut b = ConnectBackoff::default();
        let pauses: Vec<_> = (0..9)
            .map(|_| b.after(JobOutcome::ConnectFailed).unwrap().as_millis())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.after(JobOutcome::Connected), None);
        assert_eq!(b.after(JobOutcome::ConnectFailed).unwrap().as_millis(), 10);
    }
}
