//! Fault injection: errors, added latency, stalled and cut streams, broken tool arguments.
//!
//! Whether a fault hits the n-th request is a pure function of (fault seed, n, fault kind), so
//! a test that sets `error_rate: 0.3` sees the same requests fail on every run.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::prng::unit_from_bits;

/// The fault knobs. Every field has a default (no faults), unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of chat requests answered with an error instead of a completion.
    pub error_rate: f64,
    /// Status of injected errors: 429, 500, 502 or 503.
    pub error_status: u16,
    /// `retry-after` seconds sent with an injected 429; 0 sends no header.
    pub retry_after_secs: u64,
    /// Delay before anything of a chat answer is sent, applied to every request.
    pub added_latency_ms: u64,
    /// Share of requests that pause mid-answer.
    pub stall_rate: f64,
    pub stall_ms: u64,
    /// A stalled stream pauses after this many SSE events.
    pub stall_after_chunks: u32,
    /// Share of requests whose connection is cut before the answer is complete.
    pub disconnect_rate: f64,
    /// A cut stream is cut after this many SSE events.
    pub disconnect_after_chunks: u32,
    /// Share of tool-call answers whose arguments are not valid JSON.
    pub invalid_tool_args_rate: f64,
    /// `/health` answers 503, as vLLM's does once its engine has died while its HTTP server
    /// still accepts connections; chat requests are answered as the other knobs say.
    pub unhealthy: bool,
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_status: 500,
            retry_after_secs: 1,
            added_latency_ms: 0,
            stall_rate: 0.0,
            stall_ms: 1000,
            stall_after_chunks: 2,
            disconnect_rate: 0.0,
            disconnect_after_chunks: 2,
            invalid_tool_args_rate: 0.0,
            unhealthy: false,
            seed: 0,
        }
    }
}

/// A fault setting that cannot be applied. `field` names the offending knob.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct FaultsError {
    pub field: &'static str,
    pub message: String,
}

/// Statuses an injected error may have.
const INJECTABLE_STATUSES: [u16; 4] = [429, 500, 502, 503];

impl Faults {
    /// Checks that rates are probabilities and the error status is one the mock can inject.
    pub fn validate(&self) -> Result<(), FaultsError> {
        let rates = [
            ("error_rate", self.error_rate),
            ("stall_rate", self.stall_rate),
            ("disconnect_rate", self.disconnect_rate),
            ("invalid_tool_args_rate", self.invalid_tool_args_rate),
        ];
        for (field, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(FaultsError {
                    field,
                    message: format!("`{field}` must be between 0 and 1, got {rate}"),
                });
            }
        }
        if !INJECTABLE_STATUSES.contains(&self.error_status) {
            return Err(FaultsError {
                field: "error_status",
                message: format!(
                    "`error_status` must be one of 429, 500, 502, 503, got {}",
                    self.error_status
                ),
            });
        }
        Ok(())
    }

    /// The faults that hit the `n`-th request.
    pub(crate) fn draw(&self, n: u64) -> FaultDraw {
        let hit = |kind: FaultKind, rate: f64| draw_unit(self.seed, n, kind) < rate;
        FaultDraw {
            error: hit(FaultKind::Error, self.error_rate),
            stall: hit(FaultKind::Stall, self.stall_rate),
            disconnect: hit(FaultKind::Disconnect, self.disconnect_rate),
            invalid_tool_args: hit(FaultKind::InvalidToolArgs, self.invalid_tool_args_rate),
        }
    }
}

/// The faults drawn for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FaultDraw {
    pub error: bool,
    pub stall: bool,
    pub disconnect: bool,
    pub invalid_tool_args: bool,
}

#[derive(Debug, Clone, Copy)]
enum FaultKind {
    Error = 0,
    Stall = 1,
    Disconnect = 2,
    InvalidToolArgs = 3,
}

/// Uniform in `[0, 1)`, from xxh3 over (seed, n, kind) as little-endian u64s.
fn draw_unit(seed: u64, n: u64, kind: FaultKind) -> f64 {
    let mut h = Xxh3::new();
    h.update(&seed.to_le_bytes());
    h.update(&n.to_le_bytes());
    h.update(&(kind as u64).to_le_bytes());
    unit_from_bits(h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_default_and_unknown_ones_are_rejected() {
        let f: Faults = serde_json::from_str(r#"{"error_rate": 0.5}"#).unwrap();
        assert_eq!(f.error_rate, 0.5);
        assert_eq!(f.error_status, 500);
        assert_eq!(f.stall_ms, 1000);
        assert!(serde_json::from_str::<Faults>(r#"{"eror_rate": 0.5}"#).is_err());
        let back: Faults = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn validation_names_the_field() {
        assert!(Faults::default().validate().is_ok());
        let e = Faults {
            stall_rate: 1.5,
            ..Faults::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "stall_rate");
        let e = Faults {
            error_rate: f64::NAN,
            ..Faults::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "error_rate");
        let e = Faults {
            error_status: 404,
            ..Faults::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "error_status");
        assert!(e.message.contains("404"));
    }

    #[test]
    fn draws_are_deterministic_and_match_the_rate() {
        let f = Faults {
            error_rate: 0.3,
            disconnect_rate: 0.05,
            seed: 11,
            ..Faults::default()
        };
        let draws: Vec<FaultDraw> = (0..10_000).map(|n| f.draw(n)).collect();
        let again: Vec<FaultDraw> = (0..10_000).map(|n| f.draw(n)).collect();
        assert_eq!(draws, again);
        let errors = draws.iter().filter(|d| d.error).count();
        let disconnects = draws.iter().filter(|d| d.disconnect).count();
        // Binomial sd is ~46 and ~22: these bounds are over 4 sd wide.
        assert!((2800..=3200).contains(&errors), "{errors}");
        assert!((400..=600).contains(&disconnects), "{disconnects}");
        assert!(draws.iter().all(|d| !d.stall && !d.invalid_tool_args));
        // Kinds are drawn independently.
        let both = draws.iter().filter(|d| d.error && d.disconnect).count();
        assert!((100..=200).contains(&both), "{both}");
        let other_seed = Faults {
            seed: 12,
            ..f.clone()
        };
        let differs = (0..1000).any(|n| other_seed.draw(n) != f.draw(n));
        assert!(differs);
    }

    #[test]
    fn rate_one_always_and_zero_never() {
        let always = Faults {
            error_rate: 1.0,
            ..Faults::default()
        };
        assert!((0..1000).all(|n| always.draw(n).error));
        assert!((0..1000).all(|n| !Faults::default().draw(n).error));
    }
}
