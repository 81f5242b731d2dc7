//! The reported latencies equal the scripted truth of the mock engine.
//!
//! The mock answers with TTFT = 50 ms and a fixed gap between tokens (no prefill cost, no
//! batch slowdown), 16 tokens per answer (max_tokens + ignore_eos). The tool must report
//! TTFT, TPOT and ITL within ±2 % or ±1 ms of that at concurrency 1, 64 and 512.
//!
//! Two facts shape the checks:
//! - The mock is never early and can be a little late (its precise timer wakes within
//!   ~0.1 ms on an idle machine; on two shared cores more). So TTFT is checked twice: against an independent reference client (a
//!   blocking std socket on its own thread, see `common/reference.rs`) measuring the same
//!   mock at the same time — ±2 %/±1 ms, the tool's own accuracy — and against the script,
//!   allowing for the mock's timer lag as the reference measured it.
//! - Tests run unoptimised. In a debug build the in-process mock plus the generator cannot
//!   move 512 × 100 = 51 200 chunks/s through two shared cores without falling behind (in
//!   release they can, at ~20 % CPU: run with `--release` to see it), so at concurrency 512
//!   a debug build scripts a 100 ms gap and 8-token answers (5 120 chunks/s, the load of the
//!   64-stream test); release builds script 10 ms and 16 tokens everywhere.
//!
//! Medians are held to ±2 %/±1 ms. p99 is held to a looser bound (documented per test): on
//! two shared CI cores, with the mock in the same process, a p99 also measures scheduling
//! hiccups of the machine. The bounds are loose enough for that and tight enough to catch a
//! systematic error (a missed chunk, a wrong origin, a gap counted twice). Because the
//! machine is shared, a timing check that fails is measured again (three attempts); counts
//! (requests, tokens, gaps) must be exact on every attempt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::reference::{self, Prober};
use common::{close, config, scripted_mock};
use sluice_load::{Bound, Mode};

const TTFT_MS: f64 = 50.0;

/// Fails the attempt (not the test) with a message.
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($msg)+));
        }
    };
}

/// Up to three attempts: the machine is shared (CI, other builds), and a measurement
/// disturbed by another process is taken again. A systematic error fails every attempt.
async fn check_at(shape: Shape) {
    let _serial = common::SERIAL.lock().await;
    let mut failures = Vec::new();
    for attempt in 1..=3 {
        match attempt_at(shape).await {
            Ok(()) => return,
            Err(e) => {
                eprintln!(
                    "attempt {attempt} at concurrency {}: {e}",
                    shape.concurrency
                );
                failures.push(e);
            }
        }
    }
    panic!(
        "concurrency {}: every attempt failed: {failures:#?}",
        shape.concurrency
    );
}

/// One accuracy scenario.
#[derive(Debug, Clone, Copy)]
struct Shape {
    concurrency: usize,
    decode_ms: f64,
    /// Tokens per answer.
    output: u32,
    /// Measured requests (after `concurrency` warm-up requests).
    requests: u64,
    /// How far above the script a p99 may be (see each test).
    p99_slack_ms: f64,
}

async fn attempt_at(shape: Shape) -> Result<(), String> {
    let Shape {
        concurrency,
        decode_ms,
        output,
        requests,
        p99_slack_ms,
    } = shape;
    let mock = scripted_mock(
        Duration::from_millis(TTFT_MS as u64),
        Duration::from_millis(decode_ms as u64),
    )
    .await;
    let addr = mock.local_addr();
    let mut c = config(mock.base_url(), output);
    c.mode = Mode::Concurrency { concurrency };
    c.bound = Bound {
        duration: None,
        requests: Some(requests),
    };
    c.warmup = sluice_load::Warmup::Requests(concurrency as u64);
    let prober = Prober::start(addr, output);
    let result = sluice_load::run(c).await.expect("run completes");
    let reference_ttft = prober.median();
    let run = &result.report.runs[0];
    let s = &run.summary;
    // Counting is exact whatever the machine does: these are test failures, not retries.
    assert_eq!(s.requests.failed, 0, "{:?}", s.errors);
    assert_eq!(s.requests.total, requests);
    assert_eq!(
        s.tokens.output_from_usage, requests,
        "usage is requested and used"
    );
    assert_eq!(s.tokens.output_total, requests * u64::from(output));
    assert_eq!(s.tokens.output_length_mismatches, 0);
    let ttft = s.latency.ttft.unwrap();
    let tpot = s.latency.tpot.unwrap();
    let itl = s.latency.itl.unwrap();
    let ttst = s.latency.ttst.unwrap();
    let e2e = s.latency.e2e.unwrap();
    let delay = s.generator.scheduling_delay.unwrap();
    eprintln!(
        "c={concurrency} decode={decode_ms}ms: TTFT p50 {:.3} p99 {:.3} (reference {reference_ttft:.3}) | TPOT p50 {:.3} p99 {:.3} | ITL p50 {:.3} p99 {:.3} | TTST p50 {:.3} | E2E p50 {:.3} | generator CPU {:.0} % of all cores, runtime delay p50 {:.3} p90 {:.3} p99 {:.3} ms n={}",
        ttft.p50_ms, ttft.p99_ms, tpot.p50_ms, tpot.p99_ms, itl.p50_ms, itl.p99_ms, ttst.p50_ms,
        e2e.p50_ms, s.generator.cpu_percent_of_all_cores.unwrap_or(f64::NAN), delay.p50_ms, delay.p90_ms, delay.p99_ms, delay.count
    );
    assert_eq!(
        itl.count,
        requests * u64::from(output - 1),
        "one gap per token after the first"
    );
    // Nothing can arrive before the script allows it: an early value is a measuring error.
    assert!(
        ttft.min_ms >= TTFT_MS - 0.5,
        "TTFT min {} is earlier than possible",
        ttft.min_ms
    );

    // The tool agrees with the independent reference on the same wire.
    check!(
        close(ttft.p50_ms, reference_ttft, 0.02, 1.0),
        "TTFT p50 {} vs reference {reference_ttft}",
        ttft.p50_ms
    );
    // The mock is late only by its timer (and never early): the script holds to within it.
    let mock_lag = reference_ttft - TTFT_MS;
    check!(
        (-0.5..=5.0).contains(&mock_lag),
        "mock TTFT lag {mock_lag} ms"
    );
    check!(
        close(ttft.p50_ms - mock_lag, TTFT_MS, 0.02, 1.0),
        "TTFT p50 {} (mock lag {mock_lag})",
        ttft.p50_ms
    );
    check!(
        ttft.p99_ms <= TTFT_MS + mock_lag + p99_slack_ms,
        "TTFT p99 {}",
        ttft.p99_ms
    );

    // Gaps: no offset to allow for.
    check!(
        close(tpot.p50_ms, decode_ms, 0.02, 1.0),
        "TPOT p50 {}",
        tpot.p50_ms
    );
    check!(
        close(itl.p50_ms, decode_ms, 0.02, 1.0),
        "ITL p50 {}",
        itl.p50_ms
    );
    check!(
        close(ttst.p50_ms, decode_ms, 0.02, 1.0),
        "TTST p50 {}",
        ttst.p50_ms
    );
    // TPOT averages 15 gaps, so its tail is much tighter than ITL's.
    check!(
        tpot.p99_ms <= decode_ms + p99_slack_ms / 4.0,
        "TPOT p99 {}",
        tpot.p99_ms
    );
    check!(
        itl.p99_ms <= decode_ms + p99_slack_ms,
        "ITL p99 {}",
        itl.p99_ms
    );
    // E2E = TTFT + 15 gaps.
    let want_e2e = TTFT_MS + mock_lag + decode_ms * f64::from(output - 1);
    check!(
        close(e2e.p50_ms, want_e2e, 0.02, 1.0),
        "E2E p50 {}",
        e2e.p50_ms
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_1_matches_the_script() {
    // p99 slack 3 ms: at one request in flight only timer ticks and the OS add delay.
    check_at(Shape {
        concurrency: 1,
        decode_ms: 10.0,
        output: 16,
        requests: 30,
        p99_slack_ms: 3.0,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_64_matches_the_script() {
    // p99 slack 10 ms: 64 streams × 100 tokens/s share two cores with the mock.
    check_at(Shape {
        concurrency: 64,
        decode_ms: 10.0,
        output: 16,
        requests: 64 * 4,
        p99_slack_ms: 10.0,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_512_matches_the_script() {
    // p99 slack 30 ms: 512 streams through one process on two shared cores; the median
    // still has to hold to ±2 %. See the module comment for the debug-build decode gap.
    let debug = cfg!(debug_assertions);
    check_at(Shape {
        concurrency: 512,
        decode_ms: if debug { 100.0 } else { 10.0 },
        output: if debug { 8 } else { 16 },
        requests: 512 * 3,
        p99_slack_ms: 30.0,
    })
    .await;
}

#[test]
fn the_reference_body_is_what_the_tool_sends() {
    // The reference client must ask the mock for the same work as the tool does.
    let req =
        sluice_api::ChatCompletionRequest::from_slice(reference::body(16, 0).as_bytes()).unwrap();
    assert_eq!(req.output_cap(), Some(16));
    assert!(req.is_stream() && req.wants_stream_usage());
}
