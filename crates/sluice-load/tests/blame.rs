//! A target that cannot keep up is named as the side that fell behind, with the evidence,
//! instead of the generator being blamed for the lateness the target caused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::config;
use sluice_load::{run, Arrival, Bound, Mode};
use sluice_mock::{MockOptions, MockServer, TimingModel};

#[tokio::test]
async fn a_saturated_target_is_named_as_the_side_that_fell_behind() {
    // 8 tokens 10 ms apart, each step slowed by every other request in flight: at most
    // about 1 / (8 × 10 ms × 1.0) = 12.5 answers a second however many are open.
    let mock = MockServer::start(
        MockOptions {
            timing: TimingModel {
                ttft_base: Duration::from_millis(5),
                prefill_per_token: Duration::ZERO,
                decode_interval: Duration::from_millis(10),
                batch_slowdown: 1.0,
            },
            ..MockOptions::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let mut c = config(mock.base_url(), 8);
    c.mode = Mode::Rate {
        rate: 40.0,
        arrival: Arrival::Constant,
    };
    c.bound = Bound {
        duration: Some(Duration::from_secs(3)),
        requests: None,
    };
    c.grace = Duration::from_millis(200);
    let result = run(c).await.unwrap();
    let s = &result.report.runs[0].summary;
    let note = s
        .notes
        .iter()
        .find(|n| n.starts_with("the target fell behind"))
        .unwrap_or_else(|| panic!("no diagnosis in {:#?}", s.notes));
    assert!(
        note.contains("requests/s of the") && note.contains("/s sent"),
        "{note}"
    );
    assert!(
        note.contains("still in flight when the window closed"),
        "{note}"
    );
    assert!(
        note.contains("waited for one"),
        "connections held by the target: {note}"
    );
    // The chart's data: completions per second fall short of sends per second.
    let full: Vec<_> = s.timeseries.iter().filter(|b| b.covered_s > 0.99).collect();
    let sent: u64 = full.iter().map(|b| b.sent).sum();
    let completed: u64 = full.iter().map(|b| b.completed).sum();
    assert!(
        (completed as f64) < 0.9 * sent as f64,
        "sent {sent}, completed {completed}"
    );
    mock.shutdown().await;
}
