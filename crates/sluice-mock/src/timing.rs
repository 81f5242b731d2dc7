//! When each token of an answer is due. The formulas are pure functions; [`Pacer`] turns
//! them into absolute deadlines so that sleeping late for one token does not delay the rest.

use std::time::Duration;

use tokio::time::Instant;

use crate::options::TimingModel;

/// Longest single wait the model produces, so that absurd settings still give deadlines a
/// clock can represent.
const MAX_STEP: Duration = Duration::from_secs(86_400);

/// Time from admission to the first token: the fixed cost plus prefill of every prompt
/// token not served from the prefix cache.
pub(crate) fn time_to_first_token(t: &TimingModel, uncached_tokens: usize) -> Duration {
    let n = u32::try_from(uncached_tokens).unwrap_or(u32::MAX);
    t.ttft_base
        .saturating_add(t.prefill_per_token.saturating_mul(n))
        .min(MAX_STEP)
}

/// Gap between two tokens of one stream while `in_flight` requests share the engine.
pub(crate) fn decode_interval(t: &TimingModel, in_flight: u64) -> Duration {
    if t.decode_interval.is_zero() {
        return Duration::ZERO;
    }
    let others = in_flight.saturating_sub(1) as f64;
    // A nonsensical (negative, NaN) slowdown is read as none rather than trusted.
    let slowdown = if t.batch_slowdown.is_finite() && t.batch_slowdown > 0.0 {
        t.batch_slowdown
    } else {
        0.0
    };
    let factor = 1.0 + slowdown * others;
    Duration::try_from_secs_f64(t.decode_interval.as_secs_f64() * factor)
        .unwrap_or(MAX_STEP)
        .min(MAX_STEP)
}

/// Deadlines of the successive token slots of one request.
#[derive(Debug)]
pub(crate) struct Pacer {
    timing: TimingModel,
    ttft: Duration,
    /// Deadline of the last slot handed out; before the first, the admission time.
    deadline: Instant,
    started: bool,
}

/// Whether the next slot needs a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotDue {
    /// Due at the same instant as the previous one: no timer at all.
    Now,
    At(Instant),
}

impl Pacer {
    pub(crate) fn new(timing: TimingModel, admitted: Instant, uncached_tokens: usize) -> Self {
        Pacer {
            timing,
            ttft: time_to_first_token(&timing, uncached_tokens),
            deadline: admitted,
            started: false,
        }
    }

    /// Advances to the next slot: the first is due TTFT after admission, each later one a
    /// decode interval (at the current batch size) after the previous deadline.
    pub(crate) fn next_slot(&mut self, in_flight: u64) -> SlotDue {
        let step = if self.started {
            decode_interval(&self.timing, in_flight)
        } else {
            self.started = true;
            self.ttft
        };
        if step.is_zero() {
            return SlotDue::Now;
        }
        self.deadline = self.deadline.checked_add(step).unwrap_or(self.deadline);
        SlotDue::At(self.deadline)
    }

    /// Whether the next slot is due at the same instant as the previous one, so the two can
    /// go out together. Does not depend on the batch size: a zero interval stays zero.
    pub(crate) fn next_slot_is_immediate(&self) -> bool {
        if self.started {
            self.timing.decode_interval.is_zero()
        } else {
            self.ttft.is_zero()
        }
    }

    /// Delays this and every later slot by `d` (a stall), counted from now if the schedule
    /// is already behind, so the tokens after a stall keep their pace instead of bursting.
    pub(crate) fn push_back(&mut self, d: Duration) -> SlotDue {
        if d.is_zero() {
            return SlotDue::Now;
        }
        let from = self.deadline.max(Instant::now());
        self.deadline = from.checked_add(d.min(MAX_STEP)).unwrap_or(from);
        SlotDue::At(self.deadline)
    }
}

pub(crate) async fn wait(due: SlotDue) {
    if let SlotDue::At(deadline) = due {
        crate::precise_timer::sleep_until(deadline.into_std()).await;
    }
}

/// Sleeps `d`, without touching the timer when it is zero.
pub(crate) async fn pause(d: Duration) {
    if !d.is_zero() {
        let now = std::time::Instant::now();
        // A client can ask for an absurd latency; cap it rather than overflow the clock.
        let deadline = now.checked_add(d.min(MAX_STEP)).unwrap_or(now);
        crate::precise_timer::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> TimingModel {
        TimingModel {
            ttft_base: Duration::from_millis(20),
            prefill_per_token: Duration::from_micros(20),
            decode_interval: Duration::from_millis(10),
            batch_slowdown: 0.05,
        }
    }

    #[test]
    fn ttft_grows_with_uncached_tokens() {
        let t = model();
        assert_eq!(time_to_first_token(&t, 0), Duration::from_millis(20));
        assert_eq!(time_to_first_token(&t, 1000), Duration::from_millis(40));
        assert_eq!(
            time_to_first_token(&TimingModel::ZERO, 1000),
            Duration::ZERO
        );
        assert!(time_to_first_token(&t, usize::MAX) <= MAX_STEP);
    }

    #[test]
    fn interval_grows_with_batch() {
        let t = model();
        assert_eq!(decode_interval(&t, 0), Duration::from_millis(10));
        assert_eq!(decode_interval(&t, 1), Duration::from_millis(10));
        let eleven = decode_interval(&t, 11).as_secs_f64();
        assert!((eleven - 0.015).abs() < 1e-9, "{eleven}");
        assert_eq!(decode_interval(&TimingModel::ZERO, 50), Duration::ZERO);
        let bad = TimingModel {
            batch_slowdown: f64::NAN,
            ..t
        };
        assert_eq!(decode_interval(&bad, 9), Duration::from_millis(10));
        let huge = TimingModel {
            batch_slowdown: 1e300,
            ..t
        };
        assert_eq!(decode_interval(&huge, 9), MAX_STEP);
    }

    #[test]
    fn deadlines_are_absolute() {
        let start = Instant::now();
        let mut p = Pacer::new(model(), start, 500);
        assert_eq!(
            p.next_slot(1),
            SlotDue::At(start + Duration::from_millis(30))
        );
        assert_eq!(
            p.next_slot(1),
            SlotDue::At(start + Duration::from_millis(40))
        );
        assert_eq!(
            p.next_slot(3),
            SlotDue::At(start + Duration::from_millis(51))
        );
    }

    #[test]
    fn a_stall_shifts_later_slots() {
        let start = Instant::now();
        let mut p = Pacer::new(model(), start, 0);
        assert!(!p.next_slot_is_immediate());
        let first = p.next_slot(1);
        let SlotDue::At(stalled) = p.push_back(Duration::from_secs(5)) else {
            panic!("a stall waits");
        };
        assert!(stalled >= start + Duration::from_millis(5020));
        assert_eq!(
            p.next_slot(1),
            SlotDue::At(stalled + Duration::from_millis(10))
        );
        assert_ne!(first, SlotDue::Now);
    }

    #[test]
    fn zero_timing_never_waits() {
        let mut p = Pacer::new(TimingModel::ZERO, Instant::now(), 500);
        for _ in 0..5 {
            assert!(p.next_slot_is_immediate());
            assert_eq!(p.next_slot(100), SlotDue::Now);
        }
        assert_eq!(p.push_back(Duration::ZERO), SlotDue::Now);
    }
}
