//! Token-length distributions for synthetic prompts and answers: `128` (fixed),
//! `uniform:64-256` (inclusive), `normal:200,50` (mean, standard deviation; rounded and
//! clamped to at least 1). And [`PauseDist`], a user's think time between two turns.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::prng::Rng;
use crate::units::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LengthDist {
    Fixed(u32),
    Uniform { lo: u32, hi: u32 },
    Normal { mean: f64, stddev: f64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "length distribution `{text}`: {problem} (expected `128`, `uniform:64-256` or `normal:200,50`)"
)]
pub struct DistError {
    pub text: String,
    pub problem: String,
}

impl LengthDist {
    pub fn sample(&self, rng: &mut Rng) -> u32 {
        match *self {
            LengthDist::Fixed(n) => n,
            LengthDist::Uniform { lo, hi } => rng.in_range(u64::from(lo), u64::from(hi)) as u32,
            LengthDist::Normal { mean, stddev } => {
                let x = (mean + stddev * rng.normal()).round();
                x.clamp(1.0, f64::from(u32::MAX)) as u32
            }
        }
    }

    /// The expected value (before clamping, for the normal).
    pub fn mean(&self) -> f64 {
        match *self {
            LengthDist::Fixed(n) => f64::from(n),
            LengthDist::Uniform { lo, hi } => (f64::from(lo) + f64::from(hi)) / 2.0,
            LengthDist::Normal { mean, .. } => mean,
        }
    }
}

impl FromStr for LengthDist {
    type Err = DistError;

    fn from_str(text: &str) -> Result<Self, DistError> {
        let err = |problem: &str| DistError {
            text: text.to_owned(),
            problem: problem.to_owned(),
        };
        let count = |s: &str, what: &str| -> Result<u32, DistError> {
            match s.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(err(&format!(
                    "{what} `{}` is not a positive integer",
                    s.trim()
                ))),
            }
        };
        let t = text.trim();
        if let Some(rest) = t.strip_prefix("uniform:") {
            let (lo, hi) = rest
                .split_once('-')
                .ok_or_else(|| err("a uniform range is written `uniform:LO-HI`"))?;
            let (lo, hi) = (count(lo, "lower bound")?, count(hi, "upper bound")?);
            if lo > hi {
                return Err(err("the lower bound exceeds the upper bound"));
            }
            return Ok(LengthDist::Uniform { lo, hi });
        }
        if let Some(rest) = t.strip_prefix("normal:") {
            let (mean, sd) = rest
                .split_once(',')
                .ok_or_else(|| err("a normal is written `normal:MEAN,STDDEV`"))?;
            let mean: f64 = mean
                .trim()
                .parse()
                .ok()
                .filter(|m: &f64| m.is_finite() && *m >= 1.0)
                .ok_or_else(|| err(&format!("mean `{}` must be a number ≥ 1", mean.trim())))?;
            let stddev: f64 = sd
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| {
                    err(&format!(
                        "standard deviation `{}` must be a number ≥ 0",
                        sd.trim()
                    ))
                })?;
            return Ok(LengthDist::Normal { mean, stddev });
        }
        if t.contains(':') {
            return Err(err("unknown distribution (use uniform: or normal:)"));
        }
        Ok(LengthDist::Fixed(count(t, "length")?))
    }
}

impl fmt::Display for LengthDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthDist::Fixed(n) => write!(f, "{n}"),
            LengthDist::Uniform { lo, hi } => write!(f, "uniform:{lo}-{hi}"),
            LengthDist::Normal { mean, stddev } => write!(f, "normal:{mean},{stddev}"),
        }
    }
}

impl serde::Serialize for LengthDist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How long a user takes between an answer and their next question: `0` (no pause: the
/// next turn is sent as soon as a request slot comes), `5s` (fixed) or `exp:5s`
/// (exponential with that mean: most replies come quickly, a few much later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PauseDist {
    #[default]
    None,
    Fixed(Duration),
    Exponential {
        mean: Duration,
    },
}

impl PauseDist {
    pub fn sample(&self, rng: &mut Rng) -> Duration {
        match *self {
            PauseDist::None => Duration::ZERO,
            PauseDist::Fixed(d) => d,
            PauseDist::Exponential { mean } => {
                Duration::try_from_secs_f64(rng.exponential(mean.as_secs_f64()))
                    .unwrap_or(Duration::MAX)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("think time `{text}`: {problem} (expected `0`, `5s` or `exp:5s`)")]
pub struct PauseError {
    pub text: String,
    pub problem: String,
}

impl FromStr for PauseDist {
    type Err = PauseError;

    fn from_str(text: &str) -> Result<Self, PauseError> {
        let err = |problem: String| PauseError {
            text: text.to_owned(),
            problem,
        };
        let t = text.trim();
        if t == "0" {
            return Ok(PauseDist::None);
        }
        let (exponential, duration) = match t.strip_prefix("exp:") {
            Some(rest) => (true, rest),
            None if t.contains(':') => return Err(err("unknown distribution".into())),
            None => (false, t),
        };
        let d = parse_duration(duration).map_err(|e| err(e.to_string()))?;
        Ok(match (exponential, d.is_zero()) {
            (_, true) => PauseDist::None,
            (true, false) => PauseDist::Exponential { mean: d },
            (false, false) => PauseDist::Fixed(d),
        })
    }
}

impl fmt::Display for PauseDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseDist::None => write!(f, "0"),
            PauseDist::Fixed(d) => write!(f, "{}s", d.as_secs_f64()),
            PauseDist::Exponential { mean } => write!(f, "exp:{}s", mean.as_secs_f64()),
        }
    }
}

impl serde::Serialize for PauseDist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_parse_print_and_sample() {
        assert_eq!("0".parse::<PauseDist>().unwrap(), PauseDist::None);
        assert_eq!("0s".parse::<PauseDist>().unwrap(), PauseDist::None);
        let fixed: PauseDist = "1.5s".parse().unwrap();
        assert_eq!(fixed, PauseDist::Fixed(Duration::from_millis(1500)));
        assert_eq!(fixed.to_string(), "1.5s");
        let exp: PauseDist = " exp:200ms ".parse().unwrap();
        assert_eq!(exp.to_string(), "exp:0.2s");
        assert_eq!(exp.to_string().parse::<PauseDist>().unwrap(), exp);
        for bad in ["5", "exp:", "gamma:5s", "-1s", "exp:xs"] {
            let e = bad.parse::<PauseDist>().unwrap_err();
            assert!(e.to_string().contains(bad.trim()), "{e}");
        }
        let mut rng = Rng::new(3);
        assert_eq!(fixed.sample(&mut rng), Duration::from_millis(1500));
        let n = 20_000;
        let mean = (0..n)
            .map(|_| exp.sample(&mut rng).as_secs_f64())
            .sum::<f64>()
            / f64::from(n);
        assert!((mean - 0.2).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn parses_and_prints() {
        for text in ["128", "uniform:64-256", "normal:200,50"] {
            let d: LengthDist = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        let e = "uniform:300-200".parse::<LengthDist>().unwrap_err();
        assert!(e.to_string().contains("lower bound exceeds"), "{e}");
        let e = "normal:200".parse::<LengthDist>().unwrap_err();
        assert!(e.to_string().contains("normal:MEAN,STDDEV"), "{e}");
        let e = "zipf:1".parse::<LengthDist>().unwrap_err();
        assert!(e.to_string().contains("unknown distribution"), "{e}");
        let e = "0".parse::<LengthDist>().unwrap_err();
        assert!(e.to_string().contains("positive integer"), "{e}");
        let e = "normal:200,-1".parse::<LengthDist>().unwrap_err();
        assert!(e.to_string().contains("standard deviation `-1`"), "{e}");
    }

    #[test]
    fn fixed_is_fixed() {
        let mut r = Rng::new(1);
        assert!((0..100).all(|_| LengthDist::Fixed(7).sample(&mut r) == 7));
    }

    #[test]
    fn uniform_stays_in_bounds_and_has_the_right_mean() {
        let d = LengthDist::Uniform { lo: 64, hi: 256 };
        let mut r = Rng::new(2);
        let xs: Vec<u32> = (0..100_000).map(|_| d.sample(&mut r)).collect();
        assert!(xs.iter().all(|x| (64..=256).contains(x)));
        assert!(xs.contains(&64) && xs.contains(&256), "both ends reachable");
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64;
        assert!((mean - 160.0).abs() < 1.0, "{mean}");
    }

    #[test]
    fn normal_has_the_right_mean_and_spread_and_is_seeded() {
        let d = LengthDist::Normal {
            mean: 200.0,
            stddev: 50.0,
        };
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..100_000).map(|_| f64::from(d.sample(&mut r))).collect();
        let (mean, cv) = crate::prng::mean_and_cv(&xs);
        assert!((mean - 200.0).abs() < 1.0, "{mean}");
        assert!((cv * mean - 50.0).abs() < 1.0, "sd {}", cv * mean);
        let again: Vec<u32> = {
            let mut r = Rng::new(3);
            (0..10).map(|_| d.sample(&mut r)).collect()
        };
        assert_eq!(
            again,
            xs[..10].iter().map(|&x| x as u32).collect::<Vec<_>>()
        );
        let narrow = LengthDist::Normal {
            mean: 1.0,
            stddev: 100.0,
        };
        assert!((0..1000).all(|_| narrow.sample(&mut r) >= 1));
    }
}
