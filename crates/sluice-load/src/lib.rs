//! `sluice load`: an LLM load generator whose numbers can be trusted.
//!
//! It sends OpenAI chat completion traffic (synthetic, shared-prefix, multi-turn or replayed
//! from a file) to one or more endpoints, open loop (constant, Poisson or gamma arrivals,
//! trace replay) or closed loop (fixed concurrency), or as a sweep from synchronous to
//! saturation; measures every request with the definitions of `docs/load.md` (TTFT, TTST,
//! TPOT, ITL, E2E, throughput, goodput, errors by class); judges SLO gates; and writes
//! console, JSON, NDJSON, Markdown and SVG reports. `compare` diffs two JSON reports.
//!
//! Trust comes first: open-loop latency is measured from the *scheduled* send time (no
//! coordinated omission), the generator reports its own CPU use and lateness and says when
//! it was likely the bottleneck, a gate without enough samples is INCONCLUSIVE, and a run
//! without a successful request never passes.
//!
//! Module map:
//! - [`config`]: [`LoadConfig`], everything a run is made of.
//! - [`load_test`]: [`load_test::run`], the whole invocation (including sweeps).
//! - [`run`]: executing one rate/concurrency/trace (`open_loop`, `closed_loop`, `worker`).
//! - [`client`]: the HTTP/1.1 client and the timed exchange.
//! - [`workload`], [`dist`], [`arrival`], [`prng`]: what is sent, and when; [`tokenizer`]:
//!   prompt sizes and answer counts in the target model's tokens, when its tokenizer is given.
//! - [`record`], [`stats`]: measurements and their summaries.
//! - [`slo`], [`gate`]: SLO expressions and verdicts. [`compare`]: report diffs.
//! - [`report`]: JSON/NDJSON/console/Markdown/SVG output.

pub mod arrival;
pub mod client;
pub mod clock;
pub mod compare;
pub mod config;
pub mod dist;
pub mod error;
pub mod gate;
pub mod host;
pub mod load_test;
pub mod prng;
pub mod record;
pub mod report;
pub mod run;
pub mod slo;
pub mod stats;
pub mod target;
#[cfg(test)]
mod test_support;
pub mod tokenizer;
pub mod units;
pub mod workload;

pub use arrival::Arrival;
pub use config::{ConnectionReuse, LoadConfig, Mode};
pub use dist::{LengthDist, PauseDist};
pub use error::{LoadError, ReportError};
pub use gate::Outcome;
pub use load_test::{run, run_interruptible, LoadTestResult};
pub use run::{Bound, Interrupt, Warmup};
pub use slo::Slo;
pub use workload::{RepeatedPrompts, WorkloadSpec};
