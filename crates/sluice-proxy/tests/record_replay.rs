//! Recording against a live mock engine, then replaying with the engine gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use sluice_proxy::Mode;
use sluice_testkit::{read_stream, refused_url, start_mock, MockOptions};

#[tokio::test]
async fn recorded_answers_replay_offline_with_identical_bodies_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let recorder = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;

    let unary = post(&recorder, &chat_body("hello there", false)).await;
    assert_eq!(unary.status(), 200);
    assert_eq!(replay_header(&unary), "recorded");
    let live_unary = unary.text().await.unwrap();

    let stream = post(&recorder, &chat_body("tell me a story", true)).await;
    assert_eq!(replay_header(&stream), "recorded");
    let live_stream = read_stream(stream).await;
    assert!(live_stream.transport_error.is_none());
    assert!(live_stream.ended_with_done());
    recorder.shutdown().await;
    mock.shutdown().await;
    assert_eq!(entry_files(dir.path()).len(), 2);

    // The upstream is now a port nothing listens on: any live call would fail.
    let dead = refused_url();
    let replayer = proxy_for(dead.trim_end_matches("/v1"), dir.path(), Mode::Replay).await;
    let unary = post(&replayer, &chat_body("hello there", false)).await;
    assert_eq!(unary.status(), 200);
    assert_eq!(replay_header(&unary), "hit");
    assert!(replay_file(&unary).starts_with("post-v1-chat-completions-"));
    let replayed_unary = unary.text().await.unwrap();
    assert_eq!(replayed_unary, live_unary);
    // A recorded event stream is also stored as readable events, not as one blob.
    let stream_entry = entry_files(dir.path())
        .iter()
        .map(|p| read_entry(p))
        .find(|e| e["response"]["events"].is_array())
        .unwrap();
    assert_eq!(stream_entry["key_version"], 1);
    assert!(stream_entry["response"].get("body").is_none());

    let stream = post(&replayer, &chat_body("tell me a story", true)).await;
    assert_eq!(replay_header(&stream), "hit");
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let replayed_stream = read_stream(stream).await;
    assert_eq!(replayed_stream.datas(), live_stream.datas());
    assert_eq!(replayed_stream.events.len(), live_stream.events.len());
    replayer.shutdown().await;
}

#[tokio::test]
async fn strict_miss_reports_the_nearest_entry_and_the_changed_field() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let recorder = proxy_for(&upstream_of(&mock), dir.path(), Mode::ReplayOrRecord).await;
    let first = post(&recorder, &chat_body("what is rust", false)).await;
    assert_eq!(replay_header(&first), "recorded");
    let again = post(&recorder, &chat_body("what is rust", false)).await;
    assert_eq!(replay_header(&again), "hit");
    recorder.shutdown().await;

    let replayer = proxy_for(&upstream_of(&mock), dir.path(), Mode::Replay).await;
    let resp = post(&replayer, &chat_body("what is go", false)).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(replay_header(&resp), "miss");
    let body: Value = resp.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["type"], "replay_miss");
    assert_eq!(error["key"].as_str().unwrap().len(), 64);
    assert_eq!(error["request"]["path"], "/v1/chat/completions");
    let nearest = &error["nearest"];
    assert!(nearest["file"]
        .as_str()
        .unwrap()
        .starts_with("post-v1-chat-completions-"));
    let diffs = nearest["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(diffs[0]["path"], "body.messages[0].content");
    assert_eq!(diffs[0]["recorded"], "what is rust");
    assert_eq!(diffs[0]["requested"], "what is go");
    // A miss never writes.
    assert_eq!(entry_files(dir.path()).len(), 1);
    replayer.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn identical_requests_replay_their_recordings_in_order_then_repeat_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let body = chat_body("same question", false);

    // Run 1 records indices 0 and 1 from seed 1; run 2 overwrites index 0 from seed 2.
    let mock1 = start_mock(MockOptions {
        seed: 1,
        ..MockOptions::zero_timing()
    })
    .await;
    let recorder = proxy_for(&upstream_of(&mock1), dir.path(), Mode::Record).await;
    let a: Value = post(&recorder, &body).await.json().await.unwrap();
    let b = post(&recorder, &body).await;
    assert!(replay_file(&b).ends_with("-1.json"));
    let b: Value = b.json().await.unwrap();
    recorder.shutdown().await;
    mock1.shutdown().await;
    let seed1_content = a["choices"][0]["message"]["content"].clone();
    assert_eq!(b["choices"][0]["message"]["content"], seed1_content);

    let mock2 = start_mock(MockOptions {
        seed: 2,
        ..MockOptions::zero_timing()
    })
    .await;
    let recorder = proxy_for(&upstream_of(&mock2), dir.path(), Mode::Record).await;
    let c: Value = post(&recorder, &body).await.json().await.unwrap();
    recorder.shutdown().await;
    mock2.shutdown().await;
    let seed2_content = c["choices"][0]["message"]["content"].clone();
    assert_ne!(
        seed1_content, seed2_content,
        "seeds must give different answers"
    );
    assert_eq!(entry_files(dir.path()).len(), 2);

    let replayer = proxy_for(&refused_url().replace("/v1", ""), dir.path(), Mode::Replay).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let resp = post(&replayer, &body).await;
        assert_eq!(replay_header(&resp), "hit");
        let file = replay_file(&resp);
        let v: Value = resp.json().await.unwrap();
        seen.push((file, v["choices"][0]["message"]["content"].clone()));
    }
    assert!(seen[0].0.ends_with("-0.json"));
    assert_eq!(seen[0].1, seed2_content);
    assert!(seen[1].0.ends_with("-1.json"));
    assert_eq!(seen[1].1, seed1_content);
    assert!(seen[2].0.ends_with("-1.json"));
    assert_eq!(seen[2].1, seed1_content);
    replayer.shutdown().await;
}

#[tokio::test]
async fn requests_without_a_body_record_and_replay_too() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let recorder = proxy_for(&upstream_of(&mock), dir.path(), Mode::ReplayOrRecord).await;
    let live = reqwest::get(format!("{}/v1/models", recorder.base_url()))
        .await
        .unwrap();
    assert_eq!(replay_header(&live), "recorded");
    assert!(replay_file(&live).starts_with("get-v1-models-"));
    let live: Value = live.json().await.unwrap();
    recorder.shutdown().await;
    mock.shutdown().await;

    let replayer = proxy_for(&refused_url().replace("/v1", ""), dir.path(), Mode::Replay).await;
    let replayed = reqwest::get(format!("{}/v1/models", replayer.base_url()))
        .await
        .unwrap();
    assert_eq!(replay_header(&replayed), "hit");
    assert_eq!(replayed.json::<Value>().await.unwrap(), live);
    replayer.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_recording_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let recorder = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;
    let resp = post(&recorder, &chat_body("fragile", false)).await;
    let file = replay_file(&resp);
    recorder.shutdown().await;
    mock.shutdown().await;
    std::fs::write(dir.path().join(&file), "{ not json").unwrap();

    let replayer = proxy_for(&refused_url().replace("/v1", ""), dir.path(), Mode::Replay).await;
    let resp = post(&replayer, &chat_body("fragile", false)).await;
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "replay_store_error");
    assert!(body["error"]["message"].as_str().unwrap().contains(&file));
    replayer.shutdown().await;
}

#[tokio::test]
async fn a_charset_parameter_does_not_split_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let recorder = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;
    // reqwest's `.json` sends `content-type: application/json`.
    assert_eq!(
        replay_header(&post(&recorder, &chat_body("charset", false)).await),
        "recorded"
    );
    recorder.shutdown().await;
    mock.shutdown().await;

    let replayer = proxy_for(
        &sluice_testkit::refused_url().replace("/v1", ""),
        dir.path(),
        Mode::Replay,
    )
    .await;
    for content_type in [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ] {
        let resp = reqwest::Client::new()
            .post(chat_url(&replayer))
            .header("content-type", content_type)
            .body(chat_body("charset", false).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(replay_header(&resp), "hit", "{content_type}");
    }
    replayer.shutdown().await;
}
