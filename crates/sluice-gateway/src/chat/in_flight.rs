//! Accounting for one request from the moment its model is known until its answer ends —
//! or the client goes away, which drops this guard unfinished and is recorded as 499.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::{ModelMetrics, CLIENT_CLOSED};

pub struct InFlight {
    /// The model's metric handles; its name is the `model` label of everything recorded.
    pub model: Arc<ModelMetrics>,
    pub received: Instant,
    /// Time spent waiting on the upstream: for the response head, for the body, for each
    /// stream chunk. The rest of the request's duration is the gateway's own overhead.
    pub upstream_wait: Duration,
    /// The part of `upstream_wait` spent waiting for a pooled connection: the gateway's own
    /// queueing, so it counts as overhead.
    pub pool_wait: Duration,
    finished: bool,
}

impl InFlight {
    pub fn start(model: Arc<ModelMetrics>, received: Instant) -> Self {
        model.request_started();
        InFlight {
            model,
            received,
            upstream_wait: Duration::ZERO,
            pool_wait: Duration::ZERO,
            finished: false,
        }
    }

    /// The request is now `model`'s (a fallback took it before anything was sent): counted
    /// from here under that model, from the same arrival.
    pub fn move_to(mut self, model: Arc<ModelMetrics>) -> InFlight {
        self.finished = true;
        self.model.request_moved();
        InFlight::start(model, self.received)
    }

    /// Waits for `fut`, counting the time as upstream wait.
    pub fn wait_upstream<F: Future>(&mut self, fut: F) -> UpstreamWait<'_, F> {
        UpstreamWait {
            total: &mut self.upstream_wait,
            start: Instant::now(),
            fut,
        }
    }

    pub fn finish(mut self, status: u16) {
        self.record(status);
    }

    fn record(&mut self, status: u16) {
        if self.finished {
            return;
        }
        self.finished = true;
        let upstream = self.upstream_wait.saturating_sub(self.pool_wait);
        self.model
            .request_finished(status, self.received.elapsed(), upstream);
    }
}

pin_project_lite::pin_project! {
    /// [`InFlight::wait_upstream`]'s future. A struct rather than an `async fn`: an
    /// `async fn` keeps its argument and the future it awaits as two copies in its state, and
    /// the upstream call's future is the largest part of a request's state.
    pub struct UpstreamWait<'a, F> {
        total: &'a mut Duration,
        start: Instant,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for UpstreamWait<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.fut.poll(cx));
        **this.total += this.start.elapsed();
        Poll::Ready(out)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.record(CLIENT_CLOSED);
    }
}
