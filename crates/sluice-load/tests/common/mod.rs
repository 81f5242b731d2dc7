//! Shared set-up of the integration tests: an in-process mock engine with scripted timing
//! and a load configuration pointed at it.
#![allow(dead_code)]

pub mod capture;
pub mod reference;

use std::net::SocketAddr;
use std::time::Duration;

use sluice_load::{Bound, LengthDist, LoadConfig, Mode, WorkloadSpec};
use sluice_mock::{MockOptions, MockServer, TimingModel};

/// Timing-sensitive tests of one file take this lock so that they do not run at the same
/// time: each would otherwise measure the others' CPU use on two cores.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A mock whose every answer takes exactly `ttft` to the first token and `decode` between
/// tokens, whatever the load: the "scripted truth" the measurements are checked against.
pub async fn scripted_mock(ttft: Duration, decode: Duration) -> MockServer {
    let options = MockOptions {
        timing: TimingModel {
            ttft_base: ttft,
            prefill_per_token: Duration::ZERO,
            decode_interval: decode,
            batch_slowdown: 0.0,
        },
        ..MockOptions::default()
    };
    MockServer::start(options, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("mock starts")
}

pub async fn zero_mock() -> MockServer {
    MockServer::start(
        MockOptions::zero_timing(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("mock starts")
}

/// Synthetic 32-word prompts, exactly `output` tokens out, streaming, closed loop.
pub fn config(url: String, output: u32) -> LoadConfig {
    let mut c = LoadConfig::new(vec![url], "mock");
    c.workload = WorkloadSpec::Synthetic {
        input_tokens: LengthDist::Fixed(32),
        output_tokens: LengthDist::Fixed(output),
    };
    c.mode = Mode::Concurrency { concurrency: 1 };
    c.bound = Bound {
        duration: None,
        requests: Some(10),
    };
    c.seed = 7;
    c
}

/// |got − want| within `rel` of want or `abs_ms`, whichever is larger.
pub fn close(got: f64, want: f64, rel: f64, abs_ms: f64) -> bool {
    (got - want).abs() <= (want * rel).max(abs_ms)
}
