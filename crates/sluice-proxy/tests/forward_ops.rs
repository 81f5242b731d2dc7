//! Run usage, drift, metrics and the reserved `/_sluice/` prefix for forward-proxy
//! (absolute-form) and CONNECT-tunnelled requests, not only for reverse routes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::tls::TlsUpstream;
use common::*;
use serde_json::{json, Value};
use sluice_proxy::{CertificateAuthority, Mode, ProxyConfig, ProxyServer};

fn answer(text: &str) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
}

fn addr_of(upstream: &ScriptedUpstream) -> SocketAddr {
    upstream
        .base_url
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

fn drift_header(resp: &reqwest::Response) -> String {
    resp.headers()["x-sluice-drift"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn requests(metrics: &str, outcome: &str) -> String {
    let name = format!("sluice_proxy_requests_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&name))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .to_owned()
}

async fn forward_only(dir: &Path, mode: Mode) -> ProxyServer {
    start_proxy(ProxyConfig {
        ca_dir: Some(dir.join("ca")),
        ..ProxyConfig::forward_only(dir.join("rec"), mode)
    })
    .await
}

fn via(proxy: &ProxyServer) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(proxy.base_url()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn forward_requests_are_counted_diffed_and_never_forward_the_reserved_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let upstream = ScriptedUpstream::start(answer("first")).await;
    let url = format!("{}/v1/chat/completions", upstream.base_url);
    let body = chat_body("forward usage", false);

    let proxy = forward_only(dir.path(), Mode::ReplayOrRecord).await;
    let client = via(&proxy);
    let recorded = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(replay_header(&recorded), "recorded");
    let file = replay_file(&recorded);
    let hit = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(replay_header(&hit), "hit");

    // Absolute-form requests for the reserved prefix are the proxy's own, whatever host
    // they name.
    let metrics = client
        .get(format!("{}/_sluice/metrics", upstream.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    assert_eq!(requests(&metrics, "recorded"), "1", "{metrics}");
    assert_eq!(requests(&metrics, "hit"), "1", "{metrics}");
    let entries: Value = client
        .get("http://elsewhere.invalid/_sluice/entries")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entries[0]["file"], file.as_str(), "{entries:#}");
    assert_eq!(entries[0]["origin"], upstream.base_url.as_str());
    assert_eq!(entries[0]["used"], true);
    assert_eq!(upstream.paths(), vec!["/v1/chat/completions".to_owned()]);

    proxy.shutdown().await;
    let run = last_run(&rec);
    assert!(run["finished_at_unix_ms"].is_u64(), "{run:#}");
    assert_eq!(run["counts"]["recorded"], 1);
    assert_eq!(run["counts"]["hits"], 1);
    assert_eq!(used_files(&rec), vec![file.clone()]);

    // Diff mode through the forward proxy: the live answer changed.
    upstream.set_answer(answer("second"));
    let differ = forward_only(dir.path(), Mode::Diff).await;
    let live = via(&differ).post(&url).json(&body).send().await.unwrap();
    assert_eq!(replay_header(&live), "passthrough");
    assert_eq!(drift_header(&live), "drifted");
    assert_eq!(replay_file(&live), file);
    assert_eq!(live.json::<Value>().await.unwrap(), answer("second"));
    differ.shutdown().await;
    let drift = drift_report(&rec);
    let item = &drift["items"][0];
    assert_eq!(item["verdict"], "drifted", "{drift:#}");
    assert_eq!(item["origin"], upstream.base_url.as_str());
    assert_eq!(item["path"], "/v1/chat/completions");
    assert_eq!(
        item["differences"][0]["path"],
        "body.choices[0].message.content"
    );
    assert_eq!(last_run(&rec)["counts"]["passthrough"], 1);
}

#[tokio::test]
async fn tunnelled_requests_are_counted_diffed_and_answer_the_reserved_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let ca = CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap();
    let scripted = ScriptedUpstream::start(answer("first")).await;
    let tls = TlsUpstream::start(addr_of(&scripted), dir.path()).await;
    let origin = format!("https://localhost:{}", tls.port());
    let url = format!("{origin}/v1/chat/completions");
    let body = chat_body("tunnel usage", false);
    let intercepting = |mode: Mode| {
        start_proxy(ProxyConfig {
            ca_dir: Some(dir.path().join("ca")),
            upstream_ca: Some(tls.root_pem.clone()),
            ..ProxyConfig::forward_only(&rec, mode)
        })
    };
    let tunnelling = |proxy: &ProxyServer| {
        let cert = reqwest::Certificate::from_pem(&std::fs::read(ca.cert_path()).unwrap());
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::https(proxy.base_url()).unwrap())
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert.unwrap())
            .build()
            .unwrap()
    };

    let proxy = intercepting(Mode::ReplayOrRecord).await;
    let client = tunnelling(&proxy);
    let recorded = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(replay_header(&recorded), "recorded");
    let file = replay_file(&recorded);

    // Inside the tunnel, the reserved prefix is answered by the proxy, not the upstream.
    let entries: Value = client
        .get(format!("{origin}/_sluice/entries"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entries[0]["file"], file.as_str(), "{entries:#}");
    assert_eq!(entries[0]["origin"], origin.as_str());
    let nope = client
        .post(format!("{origin}/_sluice/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(nope.status(), 404);
    assert_eq!(scripted.paths(), vec!["/v1/chat/completions".to_owned()]);

    // Shutdown drains the tunnel's connection, then writes the final counts.
    proxy.shutdown().await;
    let run = last_run(&rec);
    assert!(run["finished_at_unix_ms"].is_u64(), "{run:#}");
    assert_eq!(run["counts"]["recorded"], 1);
    assert_eq!(used_files(&rec), vec![file.clone()]);

    // Diff mode inside a tunnel: unchanged first, then drifted.
    let differ = intercepting(Mode::Diff).await;
    let client = tunnelling(&differ);
    let same = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(drift_header(&same), "same");
    scripted.set_answer(answer("second"));
    let drifted = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(drift_header(&drifted), "drifted");
    assert_eq!(replay_header(&drifted), "passthrough");
    let metrics = client
        .get(format!("{origin}/_sluice/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sluice_proxy_drift_total{verdict=\"drifted\"} 1"),
        "{metrics}"
    );
    differ.shutdown().await;
    let drift = drift_report(&rec);
    assert_eq!(drift["items"][1]["verdict"], "drifted", "{drift:#}");
    assert_eq!(drift["items"][1]["origin"], origin.as_str());
    assert_eq!(last_run(&rec)["counts"]["passthrough"], 2);
    tls.stop();
}
