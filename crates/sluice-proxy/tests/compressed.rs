//! An upstream that compresses its answers although the proxy asks for `identity`: the
//! recording holds the decoded body and the client gets it decoded, on record and on replay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use axum::http::header;
use axum::response::IntoResponse;
use common::{chat_body, chat_url, proxy_for};
use sluice_proxy::Mode;

const ANSWER: &str = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"squeezed"},"finish_reason":"stop"}]}"#;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Serves `ANSWER` gzip-encoded to every request, whatever it accepts.
async fn gzipping_upstream() -> String {
    let app = axum::Router::new().fallback(|| async {
        (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            gzip(ANSWER.as_bytes()),
        )
            .into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn compressed_answers_are_recorded_and_replayed_decoded() {
    let upstream = gzipping_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    for (mode, outcome) in [(Mode::ReplayOrRecord, "recorded"), (Mode::Replay, "hit")] {
        let proxy = proxy_for(&upstream, dir.path(), mode).await;
        let resp = client
            .post(chat_url(&proxy))
            .json(&chat_body("hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-sluice-replay"], outcome);
        assert!(
            resp.headers().get(header::CONTENT_ENCODING).is_none(),
            "{outcome}: the body is sent decoded, so no content-encoding"
        );
        assert_eq!(resp.text().await.unwrap(), ANSWER, "{outcome}");
        proxy.shutdown().await;
    }
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(files.len(), 1);
    let entry = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        entry.contains("squeezed"),
        "the recording holds the decoded answer:\n{entry}"
    );
    assert!(!entry.to_ascii_lowercase().contains("\"content-encoding\""));
}
