//! Credentials never count in the key and never reach disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use sluice_proxy::{KeyOptions, Mode, ProxyConfig, Route};
use sluice_testkit::{refused_url, start_mock, MockOptions};

const API_KEY: &str = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
const ROTATED_KEY: &str = "sk-proj-ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn credentials_are_never_written_and_rotating_them_changes_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions {
        require_api_key: Some(API_KEY.to_owned()),
        ..MockOptions::zero_timing()
    })
    .await;
    let config = ProxyConfig {
        key: KeyOptions {
            ignore_paths: vec!["user".to_owned()],
            // Listing a secret header must not put it in the key or on disk.
            header_allow_list: vec!["content-type".to_owned(), "authorization".to_owned()],
        },
        ..ProxyConfig::new(upstream_of(&mock), dir.path(), Mode::Record)
    };
    let recorder = start_proxy(config.clone()).await;
    let mut body = chat_body("secret-free question", false);
    body["user"] = Value::from("user-1");
    let resp = reqwest::Client::new()
        .post(format!("{}?api_key=querysecret123", chat_url(&recorder)))
        .bearer_auth(API_KEY)
        .header("x-api-key", "another-secret-value")
        .header("traceparent", TRACEPARENT)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the mock accepted the forwarded key");
    assert_eq!(replay_header(&resp), "recorded");
    recorder.shutdown().await;
    mock.shutdown().await;

    let files = entry_files(dir.path());
    assert_eq!(files.len(), 1);
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap().to_lowercase();
        for secret in [
            API_KEY,
            "another-secret-value",
            "querysecret123",
            TRACEPARENT,
            "authorization",
            "traceparent",
            "x-api-key",
        ] {
            assert!(
                !text.contains(&secret.to_lowercase()),
                "{secret} found in {}",
                file.display()
            );
        }
    }

    // Another key, another trace, another ignored field, query parameter reordered: the
    // same recording answers.
    let replayer = start_proxy(ProxyConfig {
        routes: vec![Route::catch_all(refused_url().replace("/v1", ""))],
        mode: Mode::Replay,
        ..config
    })
    .await;
    body["user"] = Value::from("user-2");
    let resp = reqwest::Client::new()
        .post(format!(
            "{}?api_key=rotated-query-secret",
            chat_url(&replayer)
        ))
        .bearer_auth(ROTATED_KEY)
        .header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay_header(&resp), "hit");
    assert_eq!(resp.status(), 200);
    replayer.shutdown().await;
}

#[tokio::test]
async fn an_entry_containing_a_configured_secret_is_refused_but_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let proxy = start_proxy(ProxyConfig {
        secret_values: vec!["internal-db-password-42".to_owned()],
        ..ProxyConfig::new(upstream_of(&mock), dir.path(), Mode::ReplayOrRecord)
    })
    .await;
    for stream in [false, true] {
        let body = chat_body("please store internal-db-password-42 for me", stream);
        let resp = post(&proxy, &body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(replay_header(&resp), "refused");
        assert!(!resp.bytes().await.unwrap().is_empty());
    }
    // A key pattern in the body is refused the same way, without configuration.
    let resp = post(
        &proxy,
        &chat_body("my key is sk-ant-api03-abcdefghijklmnop", false),
    )
    .await;
    assert_eq!(replay_header(&resp), "refused");
    assert!(entry_files(dir.path()).is_empty());
    // Nothing but the proxy's own run record (`.sluice/`): no temporary files either.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".sluice")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    proxy.shutdown().await;
    mock.shutdown().await;
}
