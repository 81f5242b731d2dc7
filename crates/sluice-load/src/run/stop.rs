//! How a run ends. The measured window closes at its bound (`--duration` after the
//! warm-up): nothing new is sent, and requests still open get a grace period
//! (`--grace`) to finish; whatever is open after it is cut and recorded as `unfinished`.
//! An [`Interrupt`] (the first Ctrl-C) closes the window at once: sending stops and every
//! open request is cut and recorded as `interrupted`, so the reports can still be written.
//!
//! Without this, one stalled stream held the whole run open until `--timeout`, and the
//! throughput was divided by that stretched time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::RunShared;

/// A request to stop, shared by whoever may ask (a signal handler) and the runs. Cloning
/// shares it.
#[derive(Debug, Clone)]
pub struct Interrupt(Arc<watch::Sender<bool>>);

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt::new()
    }
}

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt(Arc::new(watch::channel(false).0))
    }

    /// Asks every run using this to stop; the first call counts, later ones change nothing.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    async fn triggered(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so this only returns once triggered.
        let _ = rx.wait_for(|set| *set).await;
    }
}

/// Why an open request was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Still open when the grace period after the window ended.
    Grace,
    /// Still open when the run was interrupted.
    Interrupt,
}

/// The stop state of one run.
#[derive(Debug)]
pub(crate) struct RunStop {
    cut: watch::Sender<Option<Cut>>,
    halted: AtomicBool,
    /// When the interrupt closed the window (µs since the epoch); `u64::MAX` if it did not.
    interrupted_at_us: AtomicU64,
}

impl RunStop {
    pub fn new() -> RunStop {
        RunStop {
            cut: watch::channel(None).0,
            halted: AtomicBool::new(false),
            interrupted_at_us: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether sending must stop now (interrupted), whatever the schedule says.
    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    /// A receiver that sees the cut when it comes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Cut>> {
        self.cut.subscribe()
    }

    pub fn interrupted_at_us(&self) -> Option<u64> {
        let at = self.interrupted_at_us.load(Ordering::Relaxed);
        (at != u64::MAX).then_some(at)
    }

    fn interrupt(&self, now_us: u64) {
        self.interrupted_at_us.store(now_us, Ordering::Relaxed);
        self.halted.store(true, Ordering::Relaxed);
        self.cut.send_replace(Some(Cut::Interrupt));
    }
}

/// How often the window's end is checked before it is known (a `--duration` after
/// `--warmup-requests` starts only when the warm-up requests are out).
const POLL: Duration = Duration::from_millis(50);

/// Cuts the run's open requests `grace` after its window ends, or at once (and stops
/// sending) when `interrupt` is triggered. Runs until then; the caller aborts it when the
/// run ends first.
pub(crate) async fn enforce(shared: Arc<RunShared>, grace: Duration, interrupt: Interrupt) {
    let deadline = async {
        loop {
            let end_us = shared.end_us.load(Ordering::Relaxed);
            if end_us != u64::MAX {
                let cut_at_us = end_us.saturating_add(grace.as_micros() as u64);
                let now_us = shared.clock.now_us();
                if now_us >= cut_at_us {
                    return;
                }
                let wait = Duration::from_micros(cut_at_us - now_us).min(POLL * 20);
                tokio::time::sleep(wait).await;
            } else {
                tokio::time::sleep(POLL).await;
            }
        }
    };
    tokio::select! {
        () = deadline => {
            shared.stop.cut.send_replace(Some(Cut::Grace));
        }
        () = interrupt.triggered() => {
            shared.stop.interrupt(shared.clock.now_us());
        }
    }
}
