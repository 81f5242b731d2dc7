//! Flexible job-type ratios: capacity moves from idle flexible types to busy ones, in
//! bounded steps, and fixed types never give or take. The rule is a pure function of the
//! ratios and each type's load, so it is tested on its own; the pool calls it every
//! adjustment interval and after a number of releases.

use crate::limits::Flexibility;

/// Below this load (in flight and queued over slots) a flexible type lends.
pub const IDLE_LOAD: f64 = 0.3;
/// Above this load a flexible type borrows.
pub const BUSY_LOAD: f64 = 0.7;
/// At most this share of a lender's ratio moves in one adjustment.
pub const MAX_STEP: f64 = 0.2;
/// No flexible type's ratio falls below this.
pub const MIN_RATIO: f64 = 0.01;

/// One job type as the adjustment sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypeLoad {
    pub ratio: f64,
    pub flexibility: Flexibility,
    /// (in flight + waiting) / slots.
    pub load: f64,
}

/// The ratios after one adjustment: every idle flexible type lends up to [`MAX_STEP`] of
/// its ratio (never going below [`MIN_RATIO`]); the busy flexible types share what was lent
/// in proportion to their load. Nothing moves without both a lender and a borrower, so the
/// ratios always add up to what they added up to before.
pub fn adjust(types: &[TypeLoad]) -> Vec<f64> {
    let flexible = |t: &TypeLoad| t.flexibility == Flexibility::Flexible;
    let busy: f64 = types
        .iter()
        .filter(|t| flexible(t) && t.load > BUSY_LOAD)
        .map(|t| t.load)
        .sum();
    let lends = |t: &TypeLoad| {
        if flexible(t) && t.load < IDLE_LOAD {
            (t.ratio * MAX_STEP).min((t.ratio - MIN_RATIO).max(0.0))
        } else {
            0.0
        }
    };
    let lent: f64 = types.iter().map(lends).sum();
    if busy == 0.0 || lent == 0.0 {
        return types.iter().map(|t| t.ratio).collect();
    }
    types
        .iter()
        .map(|t| {
            if flexible(t) && t.load > BUSY_LOAD {
                t.ratio + lent * t.load / busy
            } else {
                t.ratio - lends(t)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Flexibility::{Fixed, Flexible};

    fn t(ratio: f64, flexibility: Flexibility, load: f64) -> TypeLoad {
        TypeLoad {
            ratio,
            flexibility,
            load,
        }
    }

    #[test]
    fn idle_flexible_capacity_moves_to_busy_flexible_types_only() {
        let after = adjust(&[
            t(0.4, Fixed, 0.0),
            t(0.3, Flexible, 0.1),
            t(0.3, Flexible, 1.0),
        ]);
        assert_eq!(after[0], 0.4, "fixed keeps its ratio, idle or not");
        assert!((after[1] - 0.24).abs() < 1e-9, "{after:?}");
        assert!((after[2] - 0.36).abs() < 1e-9, "{after:?}");
        // A busy fixed type takes nothing; with no flexible borrower nothing moves.
        let same = adjust(&[t(0.5, Fixed, 2.0), t(0.5, Flexible, 0.0)]);
        assert_eq!(same, vec![0.5, 0.5]);
    }

    #[test]
    fn repeated_adjustments_stop_at_the_floor() {
        let mut types = vec![t(0.5, Flexible, 0.0), t(0.5, Flexible, 1.0)];
        for _ in 0..200 {
            let r = adjust(&types);
            types[0].ratio = r[0];
            types[1].ratio = r[1];
        }
        assert!((types[0].ratio - MIN_RATIO).abs() < 1e-6, "{types:?}");
        assert!((types[1].ratio - (1.0 - MIN_RATIO)).abs() < 1e-6);
    }

    proptest! {
        #[test]
        fn ratios_keep_their_sum_fixed_types_never_move_and_floors_hold(
            raw in prop::collection::vec((0.01f64..1.0, any::<bool>(), 0.0f64..3.0), 1..8)
        ) {
            let sum: f64 = raw.iter().map(|r| r.0).sum();
            let types: Vec<TypeLoad> = raw
                .iter()
                .map(|&(r, flex, load)| t(r / sum, if flex { Flexible } else { Fixed }, load))
                .collect();
            let after = adjust(&types);
            let total: f64 = after.iter().sum();
            prop_assert!((total - 1.0).abs() < 1e-9, "{after:?}");
            for (before, now) in types.iter().zip(&after) {
                match before.flexibility {
                    Fixed => prop_assert_eq!(before.ratio, *now),
                    Flexible => {
                        prop_assert!(*now >= before.ratio.min(MIN_RATIO) - 1e-12);
                        prop_assert!(*now >= before.ratio * (1.0 - MAX_STEP) - 1e-12);
                    }
                }
            }
        }
    }
}
