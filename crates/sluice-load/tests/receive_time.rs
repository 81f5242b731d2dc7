//! A chunk is timed when the kernel received it, not when a busy generator got round to
//! reading it: with the generator's own thread blocked most of the time, the inter-token
//! latency still reads as the target paced it, and the delay shows as receive lag.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::config;
use sluice_load::{run, Bound, Mode};
use sluice_mock::{MockOptions, MockServer, TimingModel};

/// Long steps and long blocks, so that the margins below are far beyond what a busy
/// machine adds to the mock's own pacing (the test runs beside builds).
const DECODE: Duration = Duration::from_millis(200);
/// The generator's thread is blocked this long in every `HOG_PERIOD`: shorter than the
/// decode step, so at most one chunk waits in the kernel at a time; and a period prime to
/// it, so that chunks land at every phase of the block (a period equal to the step would
/// delay every chunk alike and leave the gaps unchanged).
const HOG_BLOCK: Duration = Duration::from_millis(150);
const HOG_PERIOD: Duration = Duration::from_millis(173);

/// A mock paced on its own thread and runtime, out of reach of the hog.
fn mock_elsewhere() -> (String, std::sync::mpsc::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let options = MockOptions {
                timing: TimingModel {
                    ttft_base: Duration::from_millis(20),
                    prefill_per_token: Duration::ZERO,
                    decode_interval: DECODE,
                    batch_slowdown: 0.0,
                },
                ..MockOptions::default()
            };
            let mock = MockServer::start(options, SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .unwrap();
            addr_tx.send(mock.base_url()).unwrap();
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            mock.shutdown().await;
        });
    });
    (addr_rx.recv().unwrap(), stop_tx)
}

#[test]
fn token_times_are_the_kernels_receive_times() {
    let (url, stop) = mock_elsewhere();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async move {
        // Blocks the generator's only thread 87 % of the time.
        let hog = tokio::spawn(async {
            loop {
                std::thread::sleep(HOG_BLOCK);
                tokio::time::sleep(HOG_PERIOD - HOG_BLOCK).await;
            }
        });
        let mut c = config(url, 6);
        c.mode = Mode::Concurrency { concurrency: 1 };
        c.bound = Bound {
            duration: None,
            requests: Some(4),
        };
        let result = run(c).await.unwrap();
        hog.abort();
        result
    });
    let _ = stop.send(());
    let s = &result.report.runs[0].summary;
    let lag = s
        .generator
        .receive_lag
        .expect("kernel receive times on Linux");
    assert!(
        lag.p90_ms > 50.0,
        "the hog made reads late, and that was seen: {lag:?}"
    );
    // Read times would spread the 200 ms steps by up to 150 ms; receive times do not.
    let itl = s.latency.itl.expect("streamed");
    let decode_ms = DECODE.as_secs_f64() * 1000.0;
    assert!(
        itl.p90_ms < decode_ms + 40.0 && itl.p50_ms > decode_ms - 40.0,
        "ITL p50 {:.2} / p90 {:.2} ms against a scripted {decode_ms} ms (receive lag p90 {:.2} ms)",
        itl.p50_ms,
        itl.p90_ms,
        lag.p90_ms
    );
}
