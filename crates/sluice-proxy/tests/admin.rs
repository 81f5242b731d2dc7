//! The reserved `/_sluice/` prefix: metrics, the entry listing, 404s; never forwarded.
//! And no secret ever reaches `.sluice/*.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use sluice_proxy::{Mode, ProxyConfig};
use sluice_testkit::{metric_value, start_mock, MockOptions};

async fn metrics_text(proxy: &sluice_proxy::ProxyServer) -> String {
    let resp = reqwest::get(format!("{}/_sluice/metrics", proxy.base_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    resp.text().await.unwrap()
}

fn requests(text: &str, outcome: &str) -> f64 {
    metric_value(text, "sluice_proxy_requests_total", &[("outcome", outcome)])
}

#[tokio::test]
async fn metrics_count_hits_misses_records_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let proxy = start_proxy(ProxyConfig {
        secret_values: vec!["internal-db-password-42".to_owned()],
        ..ProxyConfig::new(upstream_of(&mock), dir.path(), Mode::ReplayOrRecord)
    })
    .await;
    let before = metrics_text(&proxy).await;
    for outcome in ["hit", "miss", "recorded", "refused", "passthrough"] {
        assert_eq!(requests(&before, outcome), 0.0, "{outcome} starts at 0");
    }
    assert_eq!(
        post(&proxy, &chat_body("count me", false)).await.status(),
        200
    );
    assert_eq!(
        replay_header(&post(&proxy, &chat_body("count me", false)).await),
        "hit"
    );
    let stream = post(&proxy, &chat_body("count my stream", true)).await;
    assert!(sluice_testkit::read_stream(stream).await.ended_with_done());
    let refused = post(&proxy, &chat_body("store internal-db-password-42", false)).await;
    assert_eq!(replay_header(&refused), "refused");
    let text = metrics_text(&proxy).await;
    assert_eq!(requests(&text, "recorded"), 2.0, "{text}");
    assert_eq!(requests(&text, "hit"), 1.0);
    assert_eq!(requests(&text, "refused"), 1.0);
    assert_eq!(requests(&text, "miss"), 0.0);
    assert_eq!(
        metric_value(
            &text,
            "sluice_proxy_refusals_total",
            &[("reason", "secret")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(&text, "sluice_proxy_drift_total", &[("verdict", "drifted")]),
        0.0
    );

    // The entry listing: both recordings, used by this run.
    let entries: Vec<Value> = reqwest::get(format!("{}/_sluice/entries", proxy.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entries.len(), 2, "{entries:#?}");
    for e in &entries {
        assert_eq!(e["method"], "POST");
        assert_eq!(e["path"], "/v1/chat/completions");
        assert_eq!(e["index"], 0);
        assert_eq!(e["status"], 200);
        assert_eq!(e["key"].as_str().unwrap().len(), 64);
        assert!(e["recorded_at_unix_ms"].is_u64());
        assert_eq!(e["used"], true);
        assert!(e["file"]
            .as_str()
            .unwrap()
            .starts_with("post-v1-chat-completions-"));
    }
    assert_eq!(
        entries.iter().filter(|e| e["events"].is_u64()).count(),
        1,
        "one stream"
    );
    proxy.shutdown().await;

    // A strict replay run: a miss, and a listing where nothing is used yet.
    let replay = proxy_for(&upstream_of(&mock), dir.path(), Mode::Replay).await;
    let entries: Vec<Value> = reqwest::get(format!("{}/_sluice/entries", replay.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(entries.iter().all(|e| e["used"] == false));
    assert_eq!(
        replay_header(&post(&replay, &chat_body("not recorded", false)).await),
        "miss"
    );
    let text = metrics_text(&replay).await;
    assert_eq!(requests(&text, "miss"), 1.0);
    assert_eq!(requests(&text, "recorded"), 0.0, "one registry per proxy");
    replay.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn reserved_paths_are_answered_by_the_proxy_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = ScriptedUpstream::start(json!({"ok": true})).await;
    let proxy = proxy_for(&upstream.base_url, dir.path(), Mode::Record).await;
    let client = reqwest::Client::new();
    let base = proxy.base_url();
    for path in [
        "/_sluice/nope",
        "/_sluice",
        "/_sluice/",
        "/_sluice/v1/chat/completions",
    ] {
        let resp = client
            .post(format!("{base}{path}"))
            .json(&chat_body("hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "not_found", "{path}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reserved"));
    }
    let resp = client
        .post(format!("{base}/_sluice/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "method_not_allowed"
    );
    assert_eq!(
        client
            .get(format!("{base}/_sluice/entries"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(upstream.paths().is_empty(), "{:?}", upstream.paths());
    assert!(entry_files(dir.path()).is_empty());

    // Anything else is forwarded (the counter works).
    let resp = client
        .get(format!("{base}/_sluicex/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay_header(&resp), "recorded");
    assert_eq!(upstream.paths(), vec!["/_sluicex/y".to_owned()]);
    proxy.shutdown().await;
    let run = last_run(dir.path());
    assert_eq!(
        run["counts"]["recorded"], 1,
        "admin calls are not counted as requests"
    );
}

const API_KEY: &str = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
const CONFIGURED: &str = "internal-db-password-42";

#[tokio::test]
async fn no_secret_ever_reaches_the_run_files() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = ScriptedUpstream::start(
        json!({"id": "a", "choices": [{"message": {"content": "clean answer"}}]}),
    )
    .await;
    let config = ProxyConfig {
        secret_values: vec![CONFIGURED.to_owned()],
        ..ProxyConfig::new(&upstream.base_url, dir.path(), Mode::Record)
    };
    let send = |proxy_url: String, content: &'static str| async move {
        reqwest::Client::new()
            .post(format!(
                "{proxy_url}/v1/chat/completions?api_key=querysecret123"
            ))
            .bearer_auth(API_KEY)
            .header("x-api-key", "another-secret-value")
            .json(&chat_body(content, false))
            .send()
            .await
            .unwrap()
    };
    let recorder = start_proxy(config.clone()).await;
    assert_eq!(
        replay_header(&send(recorder.base_url(), "question").await),
        "recorded"
    );
    recorder.shutdown().await;

    // The provider now leaks secrets into its answer: the overwrite is refused, diff mode
    // reports drift with the values redacted, misses list no credentials.
    upstream.set_answer(json!({"id": "b", "choices": [{"message": {"content": format!("echo {API_KEY} and {CONFIGURED} and another-secret-value")}}]}));
    let recorder = start_proxy(config.clone()).await;
    assert_eq!(
        replay_header(&send(recorder.base_url(), "question").await),
        "refused"
    );
    recorder.shutdown().await;
    let differ = start_proxy(ProxyConfig {
        mode: Mode::Diff,
        ..config.clone()
    })
    .await;
    let resp = send(differ.base_url(), "question").await;
    assert_eq!(resp.headers()["x-sluice-drift"], "drifted");
    differ.shutdown().await;
    let report = drift_report(dir.path());
    let text = report.to_string();
    assert!(
        text.contains("<redacted: "),
        "the drift was reported, redacted: {text}"
    );
    check_clean(dir.path());

    let replayer = start_proxy(ProxyConfig {
        mode: Mode::Replay,
        ..config
    })
    .await;
    assert_eq!(
        replay_header(&send(replayer.base_url(), "unrecorded question").await),
        "miss"
    );
    replayer.shutdown().await;
    assert_eq!(last_run(dir.path())["counts"]["misses"], 1);
    check_clean(dir.path());
}

fn check_clean(dir: &std::path::Path) {
    let state = dir.join(".sluice");
    let mut scanned = 0;
    for file in std::fs::read_dir(&state).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        scanned += 1;
        let text = std::fs::read_to_string(&path).unwrap().to_lowercase();
        for secret in [
            API_KEY,
            CONFIGURED,
            "another-secret-value",
            "querysecret123",
            "authorization",
            "x-api-key",
        ] {
            assert!(
                !text.contains(&secret.to_lowercase()),
                "{secret} found in {}",
                path.display()
            );
        }
    }
    assert_eq!(scanned, 2, "last-run.json and drift.json");
}
