//! Mode behaviour: concurrency in record mode, read-old-write-new, bypass, passthrough,
//! and which answers are never stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use sluice_proxy::Mode;
use sluice_testkit::{start_mock, MockOptions};

#[tokio::test]
async fn concurrent_identical_requests_all_succeed_and_every_file_parses() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    // Two proxies on one directory write the same eight file names at the same time.
    let a = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;
    let b = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;
    let body = chat_body("everyone asks this", true);
    let mut calls = Vec::new();
    for i in 0..16 {
        let url = chat_url(if i % 2 == 0 { &a } else { &b });
        let body = body.clone();
        calls.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(replay_header(&resp), "recorded");
            sluice_testkit::read_stream(resp).await
        }));
    }
    for call in calls {
        let transcript = call.await.unwrap();
        assert!(transcript.ended_with_done());
    }
    a.shutdown().await;
    b.shutdown().await;
    mock.shutdown().await;
    let files = entry_files(dir.path());
    assert_eq!(files.len(), 8, "{files:?}");
    for (i, f) in files.iter().enumerate() {
        assert!(f.to_string_lossy().ends_with(&format!("-{i}.json")));
        let entry = read_entry(f);
        assert!(entry["response"]["events"].as_array().unwrap().len() > 2);
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[tokio::test]
async fn read_old_write_new_serves_old_entries_and_re_records_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let upstream = upstream_of(&mock);
    let recorder = proxy_for(&upstream, dir.path(), Mode::Record).await;
    let old = post(&recorder, &chat_body("old question", false)).await;
    assert_eq!(replay_header(&old), "recorded");
    // Millisecond timestamps: keep "before" and "after" the start apart.
    tokio::time::sleep(Duration::from_millis(5)).await;

    let rown = proxy_for(&upstream, dir.path(), Mode::ReadOldWriteNew).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = post(&recorder, &chat_body("new question", false)).await;
    assert_eq!(replay_header(&new), "recorded");
    let new_file = dir.path().join(replay_file(&new));
    let first_recorded_at = read_entry(&new_file)["recorded_at_unix_ms"]
        .as_u64()
        .unwrap();
    recorder.shutdown().await;

    let resp = post(&rown, &chat_body("old question", false)).await;
    assert_eq!(replay_header(&resp), "hit");
    let resp = post(&rown, &chat_body("new question", false)).await;
    assert_eq!(replay_header(&resp), "recorded");
    assert_eq!(dir.path().join(replay_file(&resp)), new_file);
    let re_recorded_at = read_entry(&new_file)["recorded_at_unix_ms"]
        .as_u64()
        .unwrap();
    assert!(re_recorded_at > first_recorded_at);
    let resp = post(&rown, &chat_body("never seen", false)).await;
    assert_eq!(replay_header(&resp), "recorded");
    assert_eq!(entry_files(dir.path()).len(), 3);
    rown.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn bypass_passthrough_and_failed_answers_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions {
        require_api_key: Some("the-right-key-123".to_owned()),
        ..MockOptions::zero_timing()
    })
    .await;
    let upstream = upstream_of(&mock);

    let replay = proxy_for(&upstream, dir.path(), Mode::Replay).await;
    let resp = reqwest::Client::new()
        .post(chat_url(&replay))
        .bearer_auth("the-right-key-123")
        .header("x-sluice-replay-bypass", "1")
        .json(&chat_body("live please", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(replay_header(&resp), "passthrough");
    replay.shutdown().await;

    let passthrough = proxy_for(&upstream, dir.path(), Mode::Passthrough).await;
    let resp = reqwest::Client::new()
        .post(chat_url(&passthrough))
        .bearer_auth("the-right-key-123")
        .json(&chat_body("live please", true))
        .send()
        .await
        .unwrap();
    assert_eq!(replay_header(&resp), "passthrough");
    assert!(sluice_testkit::read_stream(resp).await.ended_with_done());
    passthrough.shutdown().await;

    // A 401 from upstream is relayed, not recorded.
    let recorder = proxy_for(&upstream, dir.path(), Mode::ReplayOrRecord).await;
    let resp = post(&recorder, &chat_body("no key", false)).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(replay_header(&resp), "passthrough");
    recorder.shutdown().await;
    mock.shutdown().await;

    assert!(entry_files(dir.path()).is_empty());
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let dead = sluice_testkit::refused_url().replace("/v1", "");
    let proxy = proxy_for(&dead, dir.path(), Mode::Record).await;
    let resp = post(&proxy, &chat_body("anyone there", false)).await;
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_unreachable");
    assert!(body["error"]["message"].as_str().unwrap().contains(&dead));
    proxy.shutdown().await;
    assert!(entry_files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_stream_cut_short_is_relayed_as_broken_and_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions {
        faults: sluice_mock::Faults {
            disconnect_rate: 1.0,
            disconnect_after_chunks: 2,
            ..sluice_mock::Faults::default()
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let proxy = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;
    let resp = post(&proxy, &chat_body("cut me off", true)).await;
    assert_eq!(resp.status(), 200);
    let transcript = sluice_testkit::read_stream(resp).await;
    assert!(!transcript.ended_with_done());
    assert!(transcript.transport_error.is_some(), "{transcript:?}");
    proxy.shutdown().await;
    mock.shutdown().await;
    assert!(entry_files(dir.path()).is_empty());
}

#[tokio::test]
async fn non_2xx_answers_are_recorded_only_for_the_configured_statuses() {
    let mock = start_mock(MockOptions {
        faults: sluice_mock::Faults {
            error_rate: 1.0,
            error_status: 429,
            retry_after_secs: 7,
            ..sluice_mock::Faults::default()
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let upstream = upstream_of(&mock);
    let body = chat_body("slow down", false);

    // By default a 429 is relayed but not stored.
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_for(&upstream, dir.path(), Mode::ReplayOrRecord).await;
    let resp = post(&proxy, &body).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(replay_header(&resp), "passthrough");
    proxy.shutdown().await;
    assert!(entry_files(dir.path()).is_empty());

    // With 429 configured it is recorded, and replays offline with its status and body.
    let mut config = sluice_proxy::ProxyConfig::new(&upstream, dir.path(), Mode::ReplayOrRecord);
    config.record_statuses = vec![429];
    let proxy = start_proxy(config.clone()).await;
    let live = post(&proxy, &body).await;
    assert_eq!(live.status(), 429);
    assert_eq!(replay_header(&live), "recorded");
    let retry_after = live.headers().get("retry-after").cloned();
    let live_body = live.text().await.unwrap();
    proxy.shutdown().await;
    mock.shutdown().await;
    assert_eq!(entry_files(dir.path()).len(), 1);

    config.mode = Mode::Replay;
    let proxy = start_proxy(config).await;
    let replayed = post(&proxy, &body).await;
    assert_eq!(replayed.status(), 429);
    assert_eq!(replay_header(&replayed), "hit");
    assert_eq!(replayed.headers().get("retry-after").cloned(), retry_after);
    assert_eq!(replayed.text().await.unwrap(), live_body);
    proxy.shutdown().await;
}
