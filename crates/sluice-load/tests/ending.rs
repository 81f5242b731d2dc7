//! How a run ends against a target that misbehaves: stalled streams cannot stretch it (the
//! window closes at the duration, open requests get a grace period and are then cut), an
//! interrupt ends it at once with its reports, and a target that dies is not hammered with
//! connects.
//!
//! The bounds asserted on elapsed time are an order of magnitude away from what the run
//! does (a stall is 60 s, the run takes about 3 s), so a busy machine cannot make them fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::config;
use sluice_load::{run, run_interruptible, Arrival, Bound, Interrupt, LoadConfig, Mode, Outcome};
use sluice_mock::{Faults, MockOptions, MockServer};

async fn stalling_mock(stall_rate: f64) -> MockServer {
    let options = MockOptions {
        faults: Faults {
            stall_rate,
            stall_ms: 60_000,
            stall_after_chunks: 2,
            ..Faults::default()
        },
        ..MockOptions::zero_timing()
    };
    MockServer::start(options, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
}

fn for_two_seconds(url: String, mode: Mode) -> LoadConfig {
    let mut c = config(url, 8);
    c.mode = mode;
    c.bound = Bound {
        duration: Some(Duration::from_secs(2)),
        requests: None,
    };
    c.grace = Duration::from_secs(1);
    c.timeout = Duration::from_secs(60);
    c
}

#[tokio::test]
async fn stalled_streams_are_cut_after_the_grace_period_and_throughput_counts_the_window() {
    let mock = stalling_mock(0.2).await;
    for mode in [
        Mode::Concurrency { concurrency: 8 },
        Mode::Rate {
            rate: 100.0,
            arrival: Arrival::Constant,
        },
    ] {
        let started = Instant::now();
        let result = run(for_two_seconds(mock.base_url(), mode.clone()))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "{mode:?}: the run took {took:?}, held open by 60 s stalls"
        );
        let s = &result.report.runs[0].summary;
        assert!(
            (s.duration_s - 2.0).abs() < 1e-3,
            "{mode:?}: the window is the duration, not the last answer: {}",
            s.duration_s
        );
        assert!(s.requests.unfinished > 0, "{mode:?}: {:?}", s.requests);
        assert_eq!(
            s.errors.by_class.get("unfinished").copied(),
            Some(s.requests.unfinished)
        );
        assert!(!result.report.interrupted);
        // Throughput is what completed within the window, over the window.
        let in_window = s.requests.succeeded - s.requests.completed_after_window;
        assert!(
            (s.throughput.requests_per_s * s.duration_s - in_window as f64).abs() < 1e-6,
            "{mode:?}: {} req/s over {} s against {in_window} completed in the window",
            s.throughput.requests_per_s,
            s.duration_s
        );
        assert!(in_window > 0);
        assert!(
            s.notes.iter().any(|n| n.contains("were cut")),
            "{:?}",
            s.notes
        );
    }
    mock.shutdown().await;
}

#[tokio::test]
async fn an_interrupt_ends_the_run_at_once_with_its_report() {
    // Every stream stalls for a minute: without the interrupt the run would last that long.
    let mock = stalling_mock(1.0).await;
    let mut c = for_two_seconds(mock.base_url(), Mode::Concurrency { concurrency: 4 });
    c.bound.duration = Some(Duration::from_secs(30));
    let interrupt = Interrupt::new();
    let trigger = interrupt.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trigger.trigger();
    });
    let started = Instant::now();
    let result = run_interruptible(c, interrupt).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let report = &result.report;
    assert!(report.interrupted);
    let s = &report.runs[0].summary;
    assert!(s.interrupted);
    assert_eq!(s.requests.interrupted, 4, "{:?}", s.requests);
    // What the interrupt cut is not the target's failure.
    assert_eq!(s.requests.total, 0);
    assert_eq!(s.errors.error_rate, 0.0);
    assert!(s.duration_s < 20.0);
    assert_ne!(report.verdict.outcome, Outcome::Pass);
    assert!(s.notes.iter().any(|n| n.starts_with("interrupted")));
    // Every request has its record, cut ones included.
    assert_eq!(result.records[0].1.len(), 4);
    mock.shutdown().await;
}

#[tokio::test]
async fn a_target_that_dies_is_not_hammered_with_connects() {
    let mock = MockServer::start(
        MockOptions::zero_timing(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let mut c = for_two_seconds(mock.base_url(), Mode::Concurrency { concurrency: 4 });
    c.bound.duration = Some(Duration::from_secs(3));
    c.stream = false;
    let load = tokio::spawn(run(c));
    tokio::time::sleep(Duration::from_secs(1)).await;
    mock.shutdown().await;
    let result = load.await.unwrap().unwrap();
    let s = &result.report.runs[0].summary;
    let refused = s.errors.by_class.get("connection").copied().unwrap_or(0);
    assert!(refused > 0, "the target died: {:?}", s.errors.by_class);
    // Four workers backing off from 10 ms to 1 s make about ten attempts each in two
    // seconds; without a pause they made tens of thousands.
    assert!(
        refused < 400,
        "{refused} refused connects in two seconds from four workers"
    );
}
