//! `--mode diff` and drift from overwrites: live answers compared field by field with the
//! recordings, ids and timestamps ignored, verdicts in the response and in
//! `.sluice/drift.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sluice_proxy::{usage_report, Mode};
use sluice_testkit::{read_stream, start_mock, MockOptions, MockServer};

async fn mock_with_seed(seed: u64) -> MockServer {
    start_mock(MockOptions {
        seed,
        ..MockOptions::zero_timing()
    })
    .await
}

fn drift_header(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-sluice-drift")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_owned()
}

fn paths_of(item: &Value) -> Vec<String> {
    item["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_owned())
        .collect()
}

/// The drift item for `file` in the run's report.
fn item_for<'a>(report: &'a Value, file: &str) -> &'a Value {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["file"] == file)
        .unwrap_or_else(|| panic!("no item for {file} in {report:#}"))
}

#[tokio::test]
async fn diff_mode_serves_the_live_answer_and_reports_what_drifted() {
    let dir = tempfile::tempdir().unwrap();
    let unary = chat_body("what changed", false);
    let stream = chat_body("stream what changed", true);

    let seed_a = mock_with_seed(1).await;
    let recorder = proxy_for(&upstream_of(&seed_a), dir.path(), Mode::Record).await;
    let recorded_unary: Value = post(&recorder, &unary).await.json().await.unwrap();
    let recorded_stream = read_stream(post(&recorder, &stream).await).await;
    assert!(recorded_stream.ended_with_done());
    recorder.shutdown().await;
    seed_a.shutdown().await;

    // Another seed answers differently: drift.
    let seed_b = mock_with_seed(2).await;
    let direct: Value = reqwest::Client::new()
        .post(format!("{}/chat/completions", seed_b.base_url()))
        .json(&unary)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let differ = proxy_for(&upstream_of(&seed_b), dir.path(), Mode::Diff).await;
    let resp = post(&differ, &unary).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(replay_header(&resp), "passthrough");
    assert_eq!(drift_header(&resp), "drifted");
    let unary_file = replay_file(&resp);
    let live: Value = resp.json().await.unwrap();
    let live_content = &live["choices"][0]["message"]["content"];
    assert_eq!(
        live_content, &direct["choices"][0]["message"]["content"],
        "live (seed B) answer served"
    );
    assert_ne!(
        live_content,
        &recorded_unary["choices"][0]["message"]["content"]
    );

    let resp = post(&differ, &stream).await;
    assert_eq!(drift_header(&resp), "drifted");
    let stream_file = replay_file(&resp);
    let live_stream = read_stream(resp).await;
    assert!(live_stream.ended_with_done());
    assert_ne!(live_stream.content(), recorded_stream.content());

    let resp = post(&differ, &chat_body("never recorded", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(drift_header(&resp), "no-recording");
    differ.shutdown().await;
    seed_b.shutdown().await;

    let report = drift_report(dir.path());
    assert_eq!(report["mode"], "diff");
    assert_eq!(report["summary"]["drifted"], 2);
    assert_eq!(report["summary"]["no_recording"], 1);
    let item = item_for(&report, &unary_file);
    assert_eq!(item["verdict"], "drifted");
    assert_eq!(item["source"], "live");
    let paths = paths_of(item);
    assert!(
        paths.contains(&"body.choices[0].message.content".to_owned()),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p == "body.id" || p == "body.created" || p.contains("system_fingerprint")),
        "{paths:?}"
    );
    let content_diff = item["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "body.choices[0].message.content")
        .unwrap();
    assert_eq!(
        content_diff["recorded"],
        recorded_unary["choices"][0]["message"]["content"]
    );
    assert_eq!(&content_diff["live"], live_content);

    let item = item_for(&report, &stream_file);
    let paths = paths_of(item);
    assert!(paths.contains(&"text".to_owned()), "{paths:?}");
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("events[") && p.ends_with("delta.content")),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.ends_with(".id") || p.ends_with(".created")),
        "{paths:?}"
    );

    // The report shows the drift summary and counts compared recordings as used.
    let usage = usage_report(dir.path(), true).unwrap();
    let drift = usage.drift.as_ref().unwrap();
    assert_eq!(drift.summary.drifted, 2);
    let text = sluice_proxy::render_report(&usage, true);
    assert!(
        text.contains("drift: same 0, drifted 2, no_recording 1"),
        "{text}"
    );
    assert!(text.contains("body.choices[0].message.content"), "{text}");
    assert!(usage.unused.is_empty(), "{:?}", usage.unused);

    // The recording's own seed again: nothing drifted (ids and timestamps differ).
    let seed_a = mock_with_seed(1).await;
    let differ = proxy_for(&upstream_of(&seed_a), dir.path(), Mode::Diff).await;
    let resp = post(&differ, &unary).await;
    assert_eq!(drift_header(&resp), "same");
    let resp = post(&differ, &stream).await;
    assert_eq!(drift_header(&resp), "same");
    assert!(read_stream(resp).await.ended_with_done());
    differ.shutdown().await;
    seed_a.shutdown().await;
    let report = drift_report(dir.path());
    assert_eq!(report["summary"]["same"], 2);
    assert_eq!(report["summary"]["drifted"], 0);
    assert!(report["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["verdict"] == "same"));
    // Diff mode never writes recordings.
    assert_eq!(entry_files(dir.path()).len(), 2);
}

#[tokio::test]
async fn overwriting_a_recording_with_changed_content_reports_drift() {
    let dir = tempfile::tempdir().unwrap();
    let body = chat_body("refresh me", false);
    let seed_a = mock_with_seed(1).await;
    let recorder = proxy_for(&upstream_of(&seed_a), dir.path(), Mode::Record).await;
    let file = replay_file(&post(&recorder, &body).await);
    recorder.shutdown().await;

    // Re-recording from the same seed changes only ids and timestamps: counted, not listed.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let recorder = proxy_for(&upstream_of(&seed_a), dir.path(), Mode::Record).await;
    assert_eq!(replay_header(&post(&recorder, &body).await), "recorded");
    recorder.shutdown().await;
    seed_a.shutdown().await;
    let report = drift_report(dir.path());
    assert_eq!(report["summary"]["same"], 1);
    assert!(report["items"].as_array().unwrap().is_empty(), "{report:#}");

    tokio::time::sleep(Duration::from_millis(5)).await;
    let seed_b = mock_with_seed(2).await;
    let rown = proxy_for(&upstream_of(&seed_b), dir.path(), Mode::ReadOldWriteNew).await;
    // Recorded before this proxy started: served from disk, nothing compared.
    assert_eq!(replay_header(&post(&rown, &body).await), "hit");
    rown.shutdown().await;

    // A record run overwrites it with seed B's different answer.
    let recorder = proxy_for(&upstream_of(&seed_b), dir.path(), Mode::Record).await;
    let resp = post(&recorder, &body).await;
    assert_eq!(replay_header(&resp), "recorded");
    assert_eq!(replay_file(&resp), file);
    recorder.shutdown().await;
    let report = drift_report(dir.path());
    let item = item_for(&report, &file);
    assert_eq!(item["verdict"], "drifted");
    assert_eq!(item["source"], "overwrite");
    assert!(paths_of(item).contains(&"body.choices[0].message.content".to_owned()));

    // read-old-write-new re-records an entry newer than its start: compared too.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rown = proxy_for(&upstream_of(&seed_b), dir.path(), Mode::ReadOldWriteNew).await;
    let new_body = chat_body("recorded during the refresh", false);
    let seed_a = mock_with_seed(1).await;
    let other = proxy_for(&upstream_of(&seed_a), dir.path(), Mode::Record).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new_file = replay_file(&post(&other, &new_body).await);
    other.shutdown().await;
    seed_a.shutdown().await;
    let resp = post(&rown, &new_body).await;
    assert_eq!(replay_header(&resp), "recorded");
    rown.shutdown().await;
    seed_b.shutdown().await;
    let report = drift_report(dir.path());
    assert_eq!(report["mode"], "read-old-write-new");
    let item = item_for(&report, &new_file);
    assert_eq!(item["verdict"], "drifted");
    assert_eq!(item["source"], "overwrite");
    assert!(paths_of(item).contains(&"body.choices[0].message.content".to_owned()));
}
