//! Several upstreams behind path prefixes, and the config file that declares them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use sluice_proxy::{Mode, ProxyConfig, ProxyFile, ProxyServer, Route};
use sluice_testkit::{start_mock, MockOptions, MockServer};

async fn seeded(seed: u64) -> MockServer {
    start_mock(MockOptions {
        seed,
        ..MockOptions::zero_timing()
    })
    .await
}

async fn content_at(proxy: &ProxyServer, path: &str, body: &Value) -> (String, String, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", proxy.base_url()))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let outcome = replay_header(&resp);
    let file = replay_file(&resp);
    let v: Value = resp.json().await.unwrap();
    (outcome, file, v["choices"][0]["message"]["content"].clone())
}

#[tokio::test]
async fn each_prefix_goes_to_its_upstream_and_the_longest_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (seeded(1).await, seeded(2).await);
    let body = chat_body("who answers?", false);
    // What each upstream says to this request, asked directly.
    let direct = |mock: &MockServer| {
        let url = format!("{}/chat/completions", mock.base_url());
        let body = body.clone();
        async move {
            let v: Value = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["choices"][0]["message"]["content"].clone()
        }
    };
    let (from_one, from_two) = (direct(&one).await, direct(&two).await);
    assert_ne!(from_one, from_two);

    let proxy = start_proxy(ProxyConfig {
        routes: vec![
            Route::new("/one", upstream_of(&one), true),
            Route::new("/one/two", upstream_of(&two), true),
            // Not stripped: the mock serves /v1/..., and the prefix is /v1.
            Route::new("/v1", upstream_of(&two), false),
        ],
        ..ProxyConfig::forward_only(dir.path(), Mode::ReplayOrRecord)
    })
    .await;
    let (outcome, file, content) = content_at(&proxy, "/one/v1/chat/completions", &body).await;
    assert_eq!((outcome.as_str(), &content), ("recorded", &from_one));
    // The key and file name use the path the client sent, prefix included.
    assert!(file.starts_with("post-one-v1-chat-completions-"), "{file}");
    let (_, _, content) = content_at(&proxy, "/one/two/v1/chat/completions", &body).await;
    assert_eq!(content, from_two);
    let (_, file, content) = content_at(&proxy, "/v1/chat/completions", &body).await;
    assert_eq!(content, from_two);
    assert!(file.starts_with("post-v1-chat-completions-"), "{file}");

    // A path under no prefix: a clear error naming the configured prefixes.
    let resp = post_to(&proxy, "/three/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 502);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "no_upstream");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("/three/v1/chat/completions"), "{message}");
    assert!(message.contains("/one, /one/two, /v1"), "{message}");
    // `/onex` is not under `/one`.
    let resp = post_to(&proxy, "/onex/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 502);
    proxy.shutdown().await;

    // Replayed by prefix with both upstreams gone.
    one.shutdown().await;
    two.shutdown().await;
    let replayer = start_proxy(ProxyConfig {
        routes: vec![
            Route::new("/one", sluice_testkit::refused_url(), true),
            Route::new("/one/two", sluice_testkit::refused_url(), true),
        ],
        ..ProxyConfig::forward_only(dir.path(), Mode::Replay)
    })
    .await;
    let (outcome, _, content) = content_at(&replayer, "/one/v1/chat/completions", &body).await;
    assert_eq!((outcome.as_str(), &content), ("hit", &from_one));
    let (_, _, content) = content_at(&replayer, "/one/two/v1/chat/completions", &body).await;
    assert_eq!(content, from_two);
    replayer.shutdown().await;
}

async fn post_to(proxy: &ProxyServer, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", proxy.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn routes_from_a_config_file_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (seeded(1).await, seeded(2).await);
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "dir = \"rec\"\nmode = \"record\"\n\n[[routes]]\nprefix = \"/a\"\nurl = \"{}\"\n\n[[routes]]\nprefix = \"/b\"\nurl = \"{}\"\n",
            upstream_of(&one),
            upstream_of(&two)
        ),
    )
    .unwrap();
    let file = ProxyFile::load(&path).unwrap();
    let proxy = start_proxy(ProxyConfig {
        routes: file.routes(),
        ..ProxyConfig::forward_only(file.dir.clone().unwrap(), file.mode.unwrap())
    })
    .await;
    let body = chat_body("from the file", false);
    let (_, _, a) = content_at(&proxy, "/a/v1/chat/completions", &body).await;
    let (_, _, b) = content_at(&proxy, "/b/v1/chat/completions", &body).await;
    assert_ne!(a, b);
    proxy.shutdown().await;
    // `dir` is relative to the file.
    assert_eq!(entry_files(&dir.path().join("rec")).len(), 2);
    one.shutdown().await;
    two.shutdown().await;
}

#[test]
fn config_file_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let load_err = |text: &str| {
        std::fs::write(&path, text).unwrap();
        ProxyFile::load(&path).unwrap_err().to_string()
    };

    let err = load_err("dir = \"rec\"\nupstreams = []\n");
    assert!(err.contains("unknown field `upstreams`"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");

    let err = load_err("[[routes]]\nprefix = \"/a\"\nurl = \"http://a\"\nstrip = false\n");
    assert!(err.contains("unknown field `strip`"), "{err}");

    let err = load_err("[[routes]]\nprefix = \"/a\"\nurl = \"http://a\"\n[[routes]]\nprefix = \"/b\"\nurl = \"ftp://b\"\n");
    assert!(err.contains("`routes[1].url`"), "{err}");
    assert!(err.contains("http:// or https://"), "{err}");

    let err = load_err("[[routes]]\nprefix = \"a\"\nurl = \"http://a\"\n");
    assert!(err.contains("`routes[0].prefix`"), "{err}");

    let err = load_err("[[routes]]\nprefix = \"/a\"\n");
    assert!(err.contains("missing field `url`"), "{err}");

    let err = load_err("mode = \"sometimes\"\n");
    assert!(err.contains("mode"), "{err}");
    assert!(err.contains("unknown proxy mode"), "{err}");

    let err = load_err("replay_timing = \"fast\"\n");
    assert!(err.contains("replay_timing"), "{err}");

    let err = load_err("listen = \"nowhere\"\n");
    assert!(err.contains("listen"), "{err}");

    let missing = dir.path().join("absent.toml");
    let err = ProxyFile::load(&missing).unwrap_err().to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
}
