//! The live progress line on stderr (only when stderr is a terminal; the caller decides).

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::RunShared;

pub(super) struct Progress {
    task: JoinHandle<()>,
}

pub(super) fn start(shared: Arc<RunShared>, label: String) -> Progress {
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_done = 0u64;
        let mut last_t = 0.0f64;
        loop {
            tick.tick().await;
            let t = shared.clock.now_us() as f64 / 1e6;
            let sent = shared.sent.load(Ordering::Relaxed);
            let done = shared.done.load(Ordering::Relaxed);
            let failed = shared.failed.load(Ordering::Relaxed);
            let rate = if t > last_t {
                (done - last_done) as f64 / (t - last_t)
            } else {
                0.0
            };
            last_done = done;
            last_t = t;
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{label}: {t:6.1} s  {rate:8.1} req/s  in flight {:5}  done {done}  errors {failed}",
                sent.saturating_sub(done)
            );
            let _ = err.flush();
        }
    });
    Progress { task }
}

impl Progress {
    pub(super) fn finish(self) {
        self.task.abort();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}
