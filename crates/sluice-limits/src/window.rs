//! [`RollingWindow`]: what was used over the last minute (or day), at any instant — not per
//! clock minute. A fixed window that resets on the minute lets twice the limit through
//! across the boundary (the whole limit at :59, the whole limit again at :00); a rolling one
//! holds the limit over every span of that length.
//!
//! Usage is kept in buckets (a sixtieth of the span each, by default). Usage recorded in a
//! bucket leaves the window once the bucket's *end* is a whole span in the past, so it counts
//! for up to one bucket longer than exactly, never shorter: the window may refuse a little
//! early, it never admits more than the limit.

/// A point on the pool's clock, in milliseconds (see [`crate::Clock`]).
pub type Millis = u64;

/// Where a reservation's usage was put, so that a refund takes it out of the same bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u64);

#[derive(Debug, Clone)]
pub struct RollingWindow {
    span_ms: u64,
    bucket_ms: u64,
    /// `buckets[n % len]` holds bucket number `n` for `n` in `newest + 1 - len ..= newest`:
    /// one bucket more than the span has, as the oldest bucket's usage is still in the
    /// window until that bucket's end is a span in the past.
    buckets: Vec<u64>,
    newest: u64,
    total: u64,
}

impl RollingWindow {
    /// A window over `span_ms`, in `buckets` buckets (at least 1; the span is rounded up to
    /// a whole number of buckets).
    pub fn new(span_ms: u64, buckets: usize) -> RollingWindow {
        let n = buckets.max(1);
        let bucket_ms = span_ms.div_ceil(n as u64).max(1);
        RollingWindow {
            span_ms: bucket_ms * n as u64,
            bucket_ms,
            buckets: vec![0; n + 1],
            newest: 0,
            total: 0,
        }
    }

    pub fn span_ms(&self) -> u64 {
        self.span_ms
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn slot(&self, bucket: u64) -> usize {
        (bucket % self.len()) as usize
    }

    /// Moves the window to `now`, dropping buckets that left it. Time never runs backwards
    /// here: an earlier `now` is taken as the latest seen.
    fn advance(&mut self, now: Millis) {
        let current = now / self.bucket_ms;
        if current <= self.newest {
            return;
        }
        let gone = (current - self.newest).min(self.len());
        for b in (current + 1 - gone)..=current {
            let slot = self.slot(b);
            self.total -= self.buckets[slot];
            self.buckets[slot] = 0;
        }
        self.newest = current;
    }

    /// Usage in the window at `now`.
    pub fn total(&mut self, now: Millis) -> u64 {
        self.advance(now);
        self.total
    }

    /// Records `amount` at `now`.
    pub fn add(&mut self, now: Millis, amount: u64) -> Stamp {
        self.advance(now);
        let slot = self.slot(self.newest);
        self.buckets[slot] = self.buckets[slot].saturating_add(amount);
        self.total = self.total.saturating_add(amount);
        Stamp(self.newest)
    }

    /// Takes back up to `amount` of what was recorded under `stamp`, if that bucket is still
    /// in the window (usage already gone from it needs no refund).
    pub fn refund(&mut self, now: Millis, stamp: Stamp, amount: u64) {
        self.advance(now);
        if stamp.0 + self.len() <= self.newest || stamp.0 > self.newest {
            return;
        }
        let slot = self.slot(stamp.0);
        let back = amount.min(self.buckets[slot]);
        self.buckets[slot] -= back;
        self.total -= back;
    }

    /// How long after `now` until usage of at least `needed` has left the window; `None`
    /// when the window does not hold that much.
    pub fn frees_in(&mut self, now: Millis, needed: u64) -> Option<u64> {
        self.advance(now);
        if needed == 0 {
            return Some(0);
        }
        let mut freed = 0u64;
        let oldest = (self.newest + 1).saturating_sub(self.len());
        for b in oldest..=self.newest {
            freed += self.buckets[self.slot(b)];
            if freed >= needed {
                // Bucket b's usage leaves once its end is a span in the past.
                let leaves_at = (b + 1) * self.bucket_ms + self.span_ms;
                return Some(leaves_at.saturating_sub(now));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usage_leaves_a_whole_span_after_its_bucket_ends() {
        let mut w = RollingWindow::new(60_000, 60);
        w.add(500, 10);
        w.add(30_000, 5);
        assert_eq!(w.total(59_999), 15);
        // Bucket 0 ends at 1 000; its usage is in the window until 61 000.
        assert_eq!(w.total(60_999), 15);
        assert_eq!(w.total(61_000), 5);
        assert_eq!(w.total(91_000), 0);
        // A jump of more than the span clears everything.
        w.add(100_000, 7);
        assert_eq!(w.total(1_000_000), 0);
    }

    #[test]
    fn refunds_come_out_of_their_own_bucket_while_it_counts() {
        let mut w = RollingWindow::new(60_000, 60);
        let s = w.add(0, 100);
        w.add(5_000, 50);
        w.refund(6_000, s, 60);
        assert_eq!(w.total(6_000), 90);
        // More than the bucket holds takes only what it holds.
        w.refund(6_000, s, 1_000);
        assert_eq!(w.total(6_000), 50);
        // Bucket 10 is in the window until 71 000.
        let late = w.add(10_000, 30);
        assert_eq!(w.total(70_000), 30);
        w.refund(70_500, late, 30);
        assert_eq!(w.total(70_500), 0);
        // Once its bucket has left, a refund changes nothing.
        let s = w.add(90_000, 10);
        w.add(200_000, 4);
        w.refund(200_000, s, 10);
        assert_eq!(w.total(200_000), 4);
    }

    #[test]
    fn frees_in_names_when_enough_has_left() {
        let mut w = RollingWindow::new(60_000, 60);
        w.add(0, 10);
        w.add(20_500, 10);
        assert_eq!(w.frees_in(30_000, 0), Some(0));
        assert_eq!(w.frees_in(30_000, 5), Some(31_000));
        assert_eq!(w.frees_in(30_000, 15), Some(51_000));
        assert_eq!(w.frees_in(30_000, 21), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u64),
        Refund(usize, u64),
        Look,
    }

    proptest! {
        /// Against the plain list of what was added and refunded: never less than the exact
        /// sum over the last span, never more than the sum over the span plus one bucket.
        #[test]
        fn never_undercounts_never_overcounts_by_more_than_a_bucket(
            steps in prop::collection::vec(
                (0u64..3_000, prop_oneof![
                    (0u64..1_000).prop_map(Op::Add),
                    (0usize..50, 0u64..1_000).prop_map(|(i, a)| Op::Refund(i, a)),
                    Just(Op::Look),
                ]),
                1..200,
            )
        ) {
            let mut w = RollingWindow::new(10_000, 10);
            let mut now = 0u64;
            // (time, bucket stamp, amount still counted)
            let mut log: Vec<(u64, Stamp, u64)> = Vec::new();
            for (dt, op) in steps {
                now += dt;
                match op {
                    Op::Add(a) => log.push((now, w.add(now, a), a)),
                    Op::Refund(i, a) => {
                        // A reservation refunds at most what it still holds.
                        if let Some(entry) = log.get_mut(i) {
                            let a = a.min(entry.2);
                            let in_window = entry.1.0 + 11 > now / 1_000;
                            w.refund(now, entry.1, a);
                            if in_window {
                                entry.2 -= a;
                            }
                        }
                    }
                    Op::Look => {}
                }
                let total = w.total(now);
                let exact: u64 = log.iter().filter(|(t, _, _)| t + 10_000 > now).map(|e| e.2).sum();
                let loose: u64 = log.iter().filter(|(t, _, _)| t + 11_000 > now).map(|e| e.2).sum();
                prop_assert!(total >= exact, "total {total} under exact {exact}");
                prop_assert!(total <= loose, "total {total} over {loose}");
            }
        }
    }
}
