//! The proxy's bounds on what an upstream may do: send more than `max_response_bytes`, or
//! stay silent past `upstream_read_timeout`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sluice_proxy::{Mode, ProxyConfig};
use sluice_testkit::{metric_value, read_stream, start_mock, MockOptions};

async fn proxy_metrics(proxy: &sluice_proxy::ProxyServer) -> String {
    reqwest::get(format!("{}/_sluice/metrics", proxy.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_answer_over_max_response_bytes_is_refused_and_a_stream_over_it_relayed_unrecorded() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    // The same unary answer passes under the default bound (its size is measured here).
    let open = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;
    let whole = post(&open, &chat_body("how long is this answer", false)).await;
    assert_eq!(whole.status(), 200);
    let size = whole.bytes().await.unwrap().len();
    open.shutdown().await;
    std::fs::remove_dir_all(dir.path()).unwrap();

    let proxy = start_proxy(ProxyConfig {
        max_response_bytes: size - 1,
        ..ProxyConfig::new(upstream_of(&mock), dir.path(), Mode::Record)
    })
    .await;
    let refused = post(&proxy, &chat_body("how long is this answer", false)).await;
    assert_eq!(refused.status(), 502);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_body_too_large", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_response_bytes"), "{message}");
    assert!(message.contains(&(size - 1).to_string()), "{message}");

    // A stream larger than the bound reaches the client whole; only the recording stops.
    let stream = post(&proxy, &chat_body("tell me a long story", true)).await;
    assert_eq!(stream.status(), 200);
    let stream = read_stream(stream).await;
    assert!(stream.transport_error.is_none());
    assert!(stream.ended_with_done());
    let streamed: usize = stream.datas().iter().map(|d| d.len()).sum();
    assert!(
        streamed > size,
        "the stream ({streamed} bytes of data) is over the bound"
    );
    assert!(entry_files(dir.path()).is_empty(), "nothing was recorded");
    let text = proxy_metrics(&proxy).await;
    assert_eq!(
        metric_value(
            &text,
            "sluice_proxy_refusals_total",
            &[("reason", "response_too_large")]
        ),
        1.0,
        "{text}"
    );
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn an_upstream_silent_past_the_read_timeout_is_a_504() {
    let dir = tempfile::tempdir().unwrap();
    // A non-streaming answer's head comes only when it is complete: 60 s from now.
    let mut slow = MockOptions::zero_timing();
    slow.timing.ttft_base = Duration::from_secs(60);
    let mock = start_mock(slow).await;
    let proxy = start_proxy(ProxyConfig {
        upstream_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::new(upstream_of(&mock), dir.path(), Mode::Record)
    })
    .await;
    // Far below the mock's 60 s, far above the 300 ms: the verdict is not a race.
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        post(&proxy, &chat_body("are you there", false)),
    )
    .await
    .expect("the proxy gave up on the silent upstream");
    assert_eq!(answer.status(), 504);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_timeout", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream_read_timeout"));
    assert!(entry_files(dir.path()).is_empty());
    proxy.shutdown().await;
    mock.shutdown().await;
}
