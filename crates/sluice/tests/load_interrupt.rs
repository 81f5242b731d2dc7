//! `sluice load` and Ctrl-C: the first SIGINT stops the run, and every report asked for is
//! still written, marked interrupted; the exit status is 130.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_mock::{Faults, MockOptions, MockServer};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[tokio::test]
async fn the_first_ctrl_c_writes_every_report_marked_interrupted() {
    // Every stream stalls for a minute after two chunks: the run can only end early.
    let mock = MockServer::start(
        MockOptions {
            faults: Faults {
                stall_rate: 1.0,
                stall_ms: 60_000,
                ..Faults::default()
            },
            ..MockOptions::zero_timing()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (json, markdown) = (dir.path().join("r.json"), dir.path().join("r.md"));
    let child = Command::new(BIN)
        .args(["load", "--url", &mock.base_url(), "--model", "m"])
        .args(["--concurrency", "2", "--duration", "60s"])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once both streams are stalled: the handler is installed by then.
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.engine().stats().active < 2 {
        assert!(Instant::now() < deadline, "the load never reached the mock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("INTERRUPTED"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["interrupted"], true);
    assert_eq!(report["runs"][0]["summary"]["requests"]["interrupted"], 2);
    assert_ne!(report["verdict"]["outcome"], "PASS");
    let md = std::fs::read_to_string(&markdown).unwrap();
    assert!(md.contains("**Interrupted:**"), "{md}");
    mock.shutdown().await;
}
