//! TLS on the listener (`[server.tls]`): a real gateway terminating TLS with a certificate
//! made for the test, clients that verify it, and the same request path and bounds as on
//! plaintext; the pair reloaded in place (SIGHUP's reload, called directly here; the CLI
//! test sends the signal to a real `sluice serve`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use serde_json::{json, Value};
use sluice_testkit::{
    assert_eventually, gateway_toml, metric_value, read_stream, start_mock, MockOptions,
    TestGateway,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for localhost and 127.0.0.1, written as `cert.pem`/`key.pem`
/// in `dir`; returns the certificate's PEM.
fn write_pair(dir: &Path, name: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    cert.pem()
}

fn tls_toml(dir: &Path, mock_url: &str, extra: &str) -> String {
    gateway_toml(
        "m",
        &[mock_url.to_owned()],
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
    )
}

/// A client that trusts only `pem` and reports the server's certificate.
fn client(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .build()
        .unwrap()
}

fn https(gw: &TestGateway, path: &str) -> String {
    format!("https://localhost:{}{path}", gw.addr.port())
}

fn question(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "max_tokens": 5,
           "messages": [{"role": "user", "content": "hello over tls"}]})
}

/// The DER of the certificate the server presented.
fn presented(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_path_is_served_over_tls() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = write_pair(dir.path(), "first");
    let gw = TestGateway::start_toml(&tls_toml(dir.path(), &mock.base_url(), "")).await;
    let c = client(&pem);

    let resp = c
        .post(https(&gw, "/v1/chat/completions"))
        .header("x-request-id", "tls-1")
        .json(&question(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "tls-1");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(presented(&resp), der(&pem));
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let resp = c
        .post(https(&gw, "/v1/chat/completions"))
        .json(&question(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let transcript = read_stream(resp).await;
    assert!(transcript.ended_with_done());
    assert!(transcript.token_chunks() > 0);

    // The routed side: models, errors in OpenAI's shape, metrics.
    let models: Value = c
        .get(https(&gw, "/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "m");
    let unknown = c
        .post(https(&gw, "/v1/chat/completions"))
        .json(&json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    let metrics = c
        .get(https(&gw, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_requests_total",
            &[("model", "m"), ("status", "200")]
        ),
        2.0
    );

    // Plain HTTP on the TLS port gets no answer.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        got.escape_ascii().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_bounded_in_size_and_time_as_on_plaintext() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = write_pair(dir.path(), "bounds");
    let toml = tls_toml(dir.path(), &mock.base_url(), "");
    let toml = toml.replace(
        "drain_timeout = \"5s\"\n",
        "drain_timeout = \"5s\"\nbody_read_timeout = \"300ms\"\n",
    );
    let gw = TestGateway::start_toml(&toml).await;
    let c = client(&pem);

    // Declared larger than 32 MiB: refused before a byte of it is read (none is sent).
    let (_hold, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let never = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let resp = c
        .post(https(&gw, "/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("content-length", (33 * 1024 * 1024).to_string())
        .body(reqwest::Body::wrap_stream(never))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // A body that stops arriving: 408 after the body-read timeout.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"{\"model\":\"m\",".to_vec())).await.unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let resp = c
        .post(https(&gw, "/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("body read timeout"));
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_before_the_body_over_tls_too() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = write_pair(dir.path(), "keys");
    let extra = "[auth]\nmode = \"keys\"\n".to_owned();
    let toml = tls_toml(dir.path(), &mock.base_url(), &extra).replace(
        "drain_timeout = \"5s\"\n",
        &format!(
            "drain_timeout = \"5s\"\ndata_dir = \"{}\"\n",
            dir.path().display()
        ),
    );
    let gw = TestGateway::start_toml(&toml).await;
    let resp = client(&pem)
        .post(https(&gw, "/v1/chat/completions"))
        .header("authorization", "Bearer sk-sluice-nope")
        .json(&question(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_is_counted_as_499() {
    let mut opts = MockOptions::zero_timing();
    opts.timing.decode_interval = Duration::from_millis(50);
    let mock = start_mock(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = write_pair(dir.path(), "gone");
    let gw = TestGateway::start_toml(&tls_toml(dir.path(), &mock.base_url(), "")).await;
    let mut body = question(true);
    body["max_tokens"] = json!(200);
    let c = client(&pem);
    let mut resp = c
        .post(https(&gw, "/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.chunk().await.unwrap();
    drop(resp);
    let metrics = || async {
        let resp = c.get(https(&gw, "/metrics")).send().await.unwrap();
        resp.text().await.unwrap()
    };
    assert_eventually!(
        metric_value(
            &metrics().await,
            "sluice_requests_total",
            &[("model", "m"), ("status", "499")]
        ) == 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_pair_to_new_connections_and_a_bad_one_changes_nothing() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let first = write_pair(dir.path(), "first");
    let gw = TestGateway::start_toml(&tls_toml(dir.path(), &mock.base_url(), "")).await;
    let tls = gw.shared.services.tls.clone().unwrap();
    let health = |pem: &str| {
        let c = client(pem);
        let url = https(&gw, "/health");
        async move { c.get(url).send().await }
    };
    assert_eq!(presented(&health(&first).await.unwrap()), der(&first));

    let second = write_pair(dir.path(), "second");
    tls.store().reload().unwrap();
    let resp = health(&second).await.unwrap();
    assert_eq!(presented(&resp), der(&second));
    // A client that trusts only the old certificate no longer gets through.
    assert!(health(&first).await.is_err());

    // A broken key file: the reload fails, saying which file, and the pair serving stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let e = tls.store().reload().unwrap_err().to_string();
    assert!(e.contains("key.pem"), "{e}");
    assert_eq!(presented(&health(&second).await.unwrap()), der(&second));
    // A key that is not the certificate's.
    std::fs::write(
        dir.path().join("key.pem"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let e = tls.store().reload().unwrap_err().to_string();
    assert!(e.contains("does not match"), "{e}");
    assert_eq!(presented(&health(&second).await.unwrap()), der(&second));
    let _ = Arc::strong_count(&tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_unusable_files_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{0}/missing.pem\"\nkey = \"{0}/key.pem\"\n",
        dir.path().display()
    );
    let path = Path::new("tls.toml");
    let e = sluice_gateway::Config::from_toml(&toml, path)
        .and_then(|c| c.resolve(path, &|_| None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("server.tls.cert") && e.contains("missing.pem"),
        "{e}"
    );
}
