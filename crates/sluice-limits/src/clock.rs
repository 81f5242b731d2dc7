//! The pool's clock: milliseconds on tokio's clock, so tests run the limiter on paused time
//! (`tokio::time::pause` and `advance`) instead of sleeping through minutes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::window::Millis;

pub trait Clock: Send + Sync {
    /// Milliseconds since the clock started; never goes backwards.
    fn now_ms(&self) -> Millis;
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Tokio's clock (paused in tests, real otherwise).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> Millis {
        self.start.elapsed().as_millis() as u64
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }
}
