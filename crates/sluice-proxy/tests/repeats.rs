//! Identical requests replay their recordings in order; a long-lived proxy that serves the
//! suite a second time starts that order again after `POST /_sluice/reset`, or by itself
//! after an idle gap (`reset_repeats_when_idle`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sluice_proxy::{Mode, ProxyConfig, ProxyServer};
use sluice_testkit::refused_url;

/// Records two answers to one question: index 0 says "first", index 1 "second".
async fn record_two_answers(dir: &std::path::Path) {
    let upstream = ScriptedUpstream::start(json!({"answer": "first"})).await;
    let recorder = proxy_for(&upstream.base_url, dir, Mode::Record).await;
    post(&recorder, &chat_body("same", false)).await;
    upstream.set_answer(json!({"answer": "second"}));
    post(&recorder, &chat_body("same", false)).await;
    recorder.shutdown().await;
}

/// The answers to the suite: the same question twice.
async fn run_suite(proxy: &ProxyServer) -> Vec<String> {
    let mut answers = Vec::new();
    for _ in 0..2 {
        let resp = post(proxy, &chat_body("same", false)).await;
        assert_eq!(replay_header(&resp), "hit");
        let body: Value = resp.json().await.unwrap();
        answers.push(body["answer"].as_str().unwrap().to_owned());
    }
    answers
}

fn replay_config(dir: &std::path::Path) -> ProxyConfig {
    ProxyConfig::new(refused_url().replace("/v1", ""), dir, Mode::Replay)
}

#[tokio::test]
async fn the_reset_route_restarts_the_order_of_repeated_requests() {
    let dir = tempfile::tempdir().unwrap();
    record_two_answers(dir.path()).await;
    let proxy = start_proxy(replay_config(dir.path())).await;
    assert_eq!(run_suite(&proxy).await, ["first", "second"]);
    // Without a reset, the second run is past the recordings and repeats the last one.
    assert_eq!(run_suite(&proxy).await, ["second", "second"]);

    let reset = reqwest::Client::new()
        .post(format!("{}/_sluice/reset", proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    let body: Value = reset.json().await.unwrap();
    assert_eq!(body, json!({"reset": "repeat_counts", "keys": 1}));
    assert_eq!(run_suite(&proxy).await, ["first", "second"]);

    // Only POST resets.
    let get = reqwest::get(format!("{}/_sluice/reset", proxy.base_url()))
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    proxy.shutdown().await;
    // Resets are not requests of the run.
    assert_eq!(last_run(dir.path())["counts"]["hits"], 6);
}

#[tokio::test]
async fn an_idle_gap_restarts_the_order_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    record_two_answers(dir.path()).await;
    let proxy = start_proxy(ProxyConfig {
        reset_repeats_when_idle: Some(Duration::from_millis(1500)),
        ..replay_config(dir.path())
    })
    .await;
    assert_eq!(run_suite(&proxy).await, ["first", "second"]);
    // A busy machine only lengthens the gap; the requests within a run come back to back.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(run_suite(&proxy).await, ["first", "second"]);
    proxy.shutdown().await;
}
