//! The run's time base: microseconds since one `Instant`, shared by the scheduler and every
//! worker, so scheduled, sent and received times are directly comparable.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn start() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The instant `us` microseconds after the epoch.
    pub fn at_us(&self, us: u64) -> Instant {
        self.epoch + Duration::from_micros(us)
    }
}
