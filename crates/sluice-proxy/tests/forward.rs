//! Forward-proxy mode for plain HTTP: the client's HTTP_PROXY points at the proxy, which
//! receives absolute-form requests (`POST http://host:port/path`) and records them keyed
//! by their origin too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::tls::mock_addr;
use common::*;
use serde_json::Value;
use sluice_proxy::{Mode, ProxyConfig, ProxyServer};
use sluice_testkit::{start_mock, MockOptions, MockServer};

/// A client whose plain-HTTP traffic goes through `proxy`.
fn via(proxy: &ProxyServer) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(proxy.base_url()).unwrap())
        .build()
        .unwrap()
}

fn direct_chat_url(mock: &MockServer) -> String {
    format!("{}/chat/completions", mock.base_url())
}

async fn forward_only(dir: &std::path::Path, mode: Mode) -> ProxyServer {
    let ca = dir.join("ca");
    start_proxy(ProxyConfig {
        ca_dir: Some(ca),
        ..ProxyConfig::forward_only(dir.join("rec"), mode)
    })
    .await
}

#[tokio::test]
async fn plain_http_through_the_proxy_records_then_replays_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let url = direct_chat_url(&mock);
    let body = chat_body("forward me", false);

    let recorder = forward_only(dir.path(), Mode::ReplayOrRecord).await;
    let live = via(&recorder).post(&url).json(&body).send().await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(replay_header(&live), "recorded");
    let port = mock_addr(&mock).port();
    let file = replay_file(&live);
    assert!(
        file.starts_with(&format!("post-127-0-0-1-{port}-v1-chat-completions-")),
        "{file}"
    );
    let live_text = live.text().await.unwrap();
    let again = via(&recorder).post(&url).json(&body).send().await.unwrap();
    assert_eq!(replay_header(&again), "hit");
    assert_eq!(again.text().await.unwrap(), live_text);
    recorder.shutdown().await;
    mock.shutdown().await;

    let entries = entry_files(&dir.path().join("rec"));
    assert_eq!(entries.len(), 1);
    let entry = read_entry(&entries[0]);
    assert_eq!(
        entry["request"]["origin"],
        format!("http://127.0.0.1:{port}")
    );
    assert_eq!(entry["request"]["path"], "/v1/chat/completions");

    // The mock is gone: only the recording can answer.
    let replayer = forward_only(dir.path(), Mode::Replay).await;
    let replayed = via(&replayer).post(&url).json(&body).send().await.unwrap();
    assert_eq!(replayed.status(), 200);
    assert_eq!(replay_header(&replayed), "hit");
    assert_eq!(replay_file(&replayed), file);
    assert_eq!(replayed.text().await.unwrap(), live_text);

    // A request never recorded misses; the miss shows the origin it was keyed with.
    let missed = via(&replayer)
        .post(&url)
        .json(&chat_body("something else", false))
        .send()
        .await
        .unwrap();
    assert_eq!(missed.status(), 502);
    assert_eq!(replay_header(&missed), "miss");
    let miss: Value = missed.json().await.unwrap();
    assert_eq!(
        miss["error"]["request"]["origin"],
        format!("http://127.0.0.1:{port}")
    );
    replayer.shutdown().await;
}

#[tokio::test]
async fn the_same_path_on_two_hosts_gets_two_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let one = start_mock(MockOptions {
        seed: 1,
        ..MockOptions::zero_timing()
    })
    .await;
    let two = start_mock(MockOptions {
        seed: 2,
        ..MockOptions::zero_timing()
    })
    .await;
    let body = chat_body("same request, two hosts", false);
    let (url_one, url_two) = (direct_chat_url(&one), direct_chat_url(&two));

    let recorder = forward_only(dir.path(), Mode::ReplayOrRecord).await;
    let client = via(&recorder);
    let a = client
        .post(direct_chat_url(&one))
        .json(&body)
        .send()
        .await
        .unwrap();
    let b = client
        .post(direct_chat_url(&two))
        .json(&body)
        .send()
        .await
        .unwrap();
    // Both were live calls: an origin-blind key would have answered `b` from `a`'s file.
    assert_eq!(replay_header(&a), "recorded");
    assert_eq!(replay_header(&b), "recorded");
    let (file_a, file_b) = (replay_file(&a), replay_file(&b));
    assert_ne!(file_a, file_b);
    assert!(file_a.contains(&format!("-{}-", mock_addr(&one).port())));
    assert!(file_b.contains(&format!("-{}-", mock_addr(&two).port())));
    let content = |v: Value| v["choices"][0]["message"]["content"].clone();
    let (content_a, content_b) = (
        content(a.json().await.unwrap()),
        content(b.json().await.unwrap()),
    );
    assert_ne!(content_a, content_b, "the seeds answer differently");
    recorder.shutdown().await;
    assert_eq!(entry_files(&dir.path().join("rec")).len(), 2);

    one.shutdown().await;
    two.shutdown().await;
    let replayer = forward_only(dir.path(), Mode::Replay).await;
    let client = via(&replayer);
    for (mock_url, expected) in [(url_one, content_a), (url_two, content_b)] {
        let resp = client.post(mock_url).json(&body).send().await.unwrap();
        assert_eq!(replay_header(&resp), "hit");
        assert_eq!(content(resp.json().await.unwrap()), expected);
    }
    replayer.shutdown().await;
}

#[tokio::test]
async fn a_forward_only_proxy_explains_that_it_has_no_route_for_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = forward_only(dir.path(), Mode::Replay).await;
    let resp = post(&proxy, &chat_body("hi", false)).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "no_upstream");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no upstream is configured for /v1/chat/completions"),
        "{message}"
    );
    // Nothing was generated for a proxy that never intercepted TLS.
    assert!(!dir.path().join("ca").exists());
    proxy.shutdown().await;
}
