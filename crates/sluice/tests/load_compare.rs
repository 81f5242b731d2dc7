//! `sluice load compare` on real runs: two identical runs back to back do not "regress"
//! (their tails move, within noise or with too few samples to judge), and reports of
//! different shapes are refused unless forced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use sluice_mock::{MockOptions, MockServer, TimingModel};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn load(url: &str, json: &Path, extra: &[&str]) {
    let out = Command::new(BIN)
        .args(["load", "--url", url, "--model", "m", "--requests", "100"])
        .args(["--concurrency", "10"])
        .args(["--output-tokens", "8", "--json"])
        .arg(json)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn compare(a: &Path, b: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["load", "compare"])
        .arg(a)
        .arg(b)
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test]
async fn identical_runs_do_not_regress_and_other_shapes_are_refused() {
    let mock = MockServer::start(
        MockOptions {
            timing: TimingModel {
                // Scripted times far above what a busy machine adds, so the two runs
                // measure the same thing even when the machine is shared.
                ttft_base: Duration::from_millis(50),
                prefill_per_token: Duration::ZERO,
                decode_interval: Duration::from_millis(20),
                batch_slowdown: 0.0,
            },
            ..MockOptions::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let url = mock.base_url();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.json"),
        dir.path().join("b.json"),
        dir.path().join("c.json"),
    );
    let (u, ap, bp, cp) = (url.clone(), a.clone(), b.clone(), c.clone());
    tokio::task::spawn_blocking(move || {
        load(&u, &ap, &[]);
        load(&u, &bp, &[]);
        load(&u, &cp, &["--input-tokens", "512"]);
    })
    .await
    .unwrap();

    // A generous threshold: the machine may be shared, and a run beside a build can be slower
    // for real. The statistics of the verdict are unit-tested in `compare.rs`.
    let same = compare(&a, &b, &["--threshold", "100%"]);
    let text = String::from_utf8_lossy(&same.stdout);
    assert_eq!(same.status.code(), Some(0), "{text}");
    assert!(text.contains("no regression"), "{text}");

    let other = compare(&a, &c, &[]);
    assert_eq!(other.status.code(), Some(2));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains("config.workload") && err.contains("--force"),
        "{err}"
    );
    let forced = compare(&a, &c, &["--force"]);
    assert!(String::from_utf8_lossy(&forced.stdout).contains("note (--force)"));
    mock.shutdown().await;
}
