//! What a strict-replay miss and the proxy's other made-up answers tell a client: the
//! nearest recording (ties broken by similarity), the differing fields spelled out in the
//! message, a body bounded whatever the request's size, and `x-should-retry: false` so the
//! SDKs do not send it again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use sluice_proxy::Mode;
use sluice_testkit::refused_url;

fn dead_upstream() -> String {
    refused_url().replace("/v1", "")
}

fn should_retry(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_owned()
}

/// Records `contents` as chat questions and returns each one's file.
async fn record(dir: &std::path::Path, contents: &[&str]) -> Vec<String> {
    let upstream = ScriptedUpstream::start(json!({"choices": []})).await;
    let recorder = proxy_for(&upstream.base_url, dir, Mode::Record).await;
    let mut files = Vec::new();
    for c in contents {
        let resp = post(&recorder, &chat_body(c, false)).await;
        assert_eq!(replay_header(&resp), "recorded");
        files.push(replay_file(&resp));
    }
    recorder.shutdown().await;
    files
}

#[tokio::test]
async fn among_recordings_differing_in_as_many_fields_the_most_similar_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let files = record(
        dir.path(),
        &[
            "write a poem about the sea, in the style of a sailor",
            "tell me about the rust programming language",
        ],
    )
    .await;
    // Both differ from the request in one field. The dissimilar one is listed first, so
    // "the first with the fewest differences" would name it.
    std::fs::rename(
        dir.path().join(&files[0]),
        dir.path().join("aaa-dissimilar.json"),
    )
    .unwrap();
    std::fs::rename(
        dir.path().join(&files[1]),
        dir.path().join("zzz-similar.json"),
    )
    .unwrap();

    let replayer = proxy_for(&dead_upstream(), dir.path(), Mode::Replay).await;
    let resp = post(
        &replayer,
        &chat_body("tell me about the go programming language", false),
    )
    .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(should_retry(&resp), "false");
    let error = resp.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(error["nearest"]["file"], "zzz-similar.json", "{error:#}");
    assert_eq!(error["nearest"]["differences_total"], 1);
    let message = error["message"].as_str().unwrap();
    // The message names the file, what it was, the field and both values.
    for part in [
        "zzz-similar.json",
        "mock: \"tell me about the rust programming language\"",
        "body.messages[0].content: \"tell me about the rust programming language\" → \"tell me about the go programming language\"",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    replayer.shutdown().await;
    let run = last_run(dir.path());
    assert_eq!(run["misses"][0]["nearest"], "zzz-similar.json");
    assert_eq!(
        run["misses"][0]["label"],
        "mock: \"tell me about the go programming language\""
    );
}

#[tokio::test]
async fn a_huge_request_gets_a_small_miss_answer_with_a_short_diff() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = format!("{} the answer is rust, clearly", "x".repeat(5_000_000));
    record(dir.path(), &[recorded.as_str()]).await;

    let replayer = proxy_for(&dead_upstream(), dir.path(), Mode::Replay).await;
    let asked = recorded.replace("rust", "go");
    let resp = post(&replayer, &chat_body(&asked, false)).await;
    assert_eq!(resp.status(), 502);
    let bytes = resp.bytes().await.unwrap();
    assert!(
        bytes.len() < 64 * 1024,
        "a 5 MB prompt got a {} byte miss answer",
        bytes.len()
    );
    let error = serde_json::from_slice::<Value>(&bytes).unwrap()["error"].clone();
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("\"…xxxxxxxxx the answer is [-rust-]{+go+}, clearly\""),
        "{message}"
    );
    let content = error["request"]["body"]["messages"][0]["content"]
        .as_str()
        .unwrap();
    assert!(content.ends_with("(5000026 chars)"), "{}", &content[180..]);
    let recorded_value = error["nearest"]["differences"][0]["recorded"]
        .as_str()
        .unwrap();
    assert!(recorded_value.chars().count() < 300);
    replayer.shutdown().await;
}

#[tokio::test]
async fn every_answer_the_proxy_makes_up_says_not_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let files = record(dir.path(), &["recorded"]).await;
    let client = reqwest::Client::new();

    // Strict replay miss: 502.
    let replayer = proxy_for(&dead_upstream(), dir.path(), Mode::Replay).await;
    let miss = post(&replayer, &chat_body("not recorded", false)).await;
    assert_eq!(
        (miss.status().as_u16(), should_retry(&miss).as_str()),
        (502, "false")
    );
    // A reserved path that does not exist: 404; a wrong method on one: 405.
    let admin = client
        .get(format!("{}/_sluice/nothing", replayer.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (admin.status().as_u16(), should_retry(&admin).as_str()),
        (404, "false")
    );
    let wrong = client
        .delete(format!("{}/_sluice/metrics", replayer.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (wrong.status().as_u16(), should_retry(&wrong).as_str()),
        (405, "false")
    );
    // A recording that cannot be read: 500.
    std::fs::write(dir.path().join(&files[0]), "{ not json").unwrap();
    let broken = post(&replayer, &chat_body("recorded", false)).await;
    assert_eq!(
        (broken.status().as_u16(), should_retry(&broken).as_str()),
        (500, "false")
    );
    let body: Value = broken.json().await.unwrap();
    assert_eq!(body["error"]["type"], "replay_store_error");
    replayer.shutdown().await;

    // An upstream that cannot be reached: 502.
    let live = proxy_for(&dead_upstream(), dir.path(), Mode::Passthrough).await;
    let down = post(&live, &chat_body("anything", false)).await;
    assert_eq!(
        (down.status().as_u16(), should_retry(&down).as_str()),
        (502, "false")
    );
    let body: Value = down.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_unreachable");
    live.shutdown().await;
}

#[tokio::test]
async fn a_provider_answer_keeps_its_own_retry_advice() {
    // Only the proxy's own answers are marked; a relayed answer is the provider's.
    let dir = tempfile::tempdir().unwrap();
    let upstream = ScriptedUpstream::start(json!({"ok": true})).await;
    let proxy = proxy_for(&upstream.base_url, dir.path(), Mode::Passthrough).await;
    let resp = post(&proxy, &chat_body("hi", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(should_retry(&resp), "<none>");
    proxy.shutdown().await;
}
