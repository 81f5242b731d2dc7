//! CONNECT with TLS interception: HTTPS clients whose HTTPS_PROXY is the proxy, an HTTPS
//! upstream (a TLS terminator in front of the mock engine), and the proxy's own CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::tls::{error_chain, mock_addr, TlsUpstream};
use common::*;
use serde_json::Value;
use sluice_proxy::ca::{CA_CERT_FILE, CA_KEY_FILE};
use sluice_proxy::{CertificateAuthority, Mode, ProxyConfig, ProxyServer};
use sluice_testkit::{read_stream, start_mock, MockOptions, MockServer};

/// What every test here starts from: a temp dir, a mock engine, and that mock behind a TLS
/// terminator whose root certificate is `upstream.root_pem`.
struct TlsScene {
    dir: tempfile::TempDir,
    mock: MockServer,
    upstream: TlsUpstream,
}

impl TlsScene {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mock = start_mock(MockOptions::zero_timing()).await;
        let upstream = TlsUpstream::start(mock_addr(&mock), dir.path()).await;
        TlsScene {
            dir,
            mock,
            upstream,
        }
    }
}

/// The proxy's CA in `DIR/ca`, created on first use.
fn ca_in(dir: &tempfile::TempDir) -> CertificateAuthority {
    CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap()
}

/// A forward-only proxy trusting the test upstream's root, with its CA in `dir/ca`.
async fn intercepting(dir: &Path, upstream_root: &Path, mode: Mode) -> ProxyServer {
    start_proxy(ProxyConfig {
        ca_dir: Some(dir.join("ca")),
        upstream_ca: Some(upstream_root.to_owned()),
        ..ProxyConfig::forward_only(dir.join("rec"), mode)
    })
    .await
}

/// An HTTPS client tunnelling through `proxy`, trusting `ca_pem` (and nothing else) when
/// given.
fn tunnelling(proxy: &ProxyServer, ca_pem: Option<&Path>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .proxy(reqwest::Proxy::https(proxy.base_url()).unwrap())
        .tls_built_in_root_certs(false);
    if let Some(pem) = ca_pem {
        let cert = reqwest::Certificate::from_pem(&std::fs::read(pem).unwrap()).unwrap();
        builder = builder.add_root_certificate(cert);
    }
    builder.build().unwrap()
}

fn chat_url(host: &str, port: u16) -> String {
    format!("https://{host}:{port}/v1/chat/completions")
}

#[tokio::test]
async fn a_client_trusting_the_ca_records_and_replays_through_the_tunnel() {
    let TlsScene {
        dir,
        mock,
        upstream,
    } = TlsScene::start().await;
    let ca = ca_in(&dir);
    let url = chat_url("localhost", upstream.port());
    let body = chat_body("through the tunnel", false);

    let proxy = intercepting(dir.path(), &upstream.root_pem, Mode::ReplayOrRecord).await;
    let client = tunnelling(&proxy, Some(ca.cert_path()));
    let first = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(replay_header(&first), "recorded");
    let file = replay_file(&first);
    assert!(
        file.starts_with(&format!(
            "post-localhost-{}-v1-chat-completions-",
            upstream.port()
        )),
        "{file}"
    );
    let live: Value = first.json().await.unwrap();
    let second = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(replay_header(&second), "hit");
    assert_eq!(second.json::<Value>().await.unwrap(), live);
    let entry = read_entry(&dir.path().join("rec").join(&file));
    assert_eq!(
        entry["request"]["origin"],
        format!("https://localhost:{}", upstream.port())
    );
    proxy.shutdown().await;

    // Upstream gone: a new proxy in strict replay still answers through a new tunnel.
    upstream.stop();
    mock.shutdown().await;
    let replayer = intercepting(dir.path(), &upstream.root_pem, Mode::Replay).await;
    let client = tunnelling(&replayer, Some(ca.cert_path()));
    let replayed = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(replay_header(&replayed), "hit");
    assert_eq!(replayed.json::<Value>().await.unwrap(), live);
    replayer.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_on_the_certificate() {
    let TlsScene {
        dir,
        mock,
        upstream,
    } = TlsScene::start().await;
    let proxy = intercepting(dir.path(), &upstream.root_pem, Mode::ReplayOrRecord).await;

    // Trusts only the upstream's own root: the proxy's leaf is not signed by it.
    let client = tunnelling(&proxy, Some(&upstream.root_pem));
    let err = client
        .post(chat_url("127.0.0.1", upstream.port()))
        .json(&chat_body("not trusted", false))
        .send()
        .await
        .unwrap_err();
    let chain = error_chain(&err);
    assert!(err.is_connect(), "{chain}");
    assert!(
        chain.contains("invalid peer certificate") && chain.contains("UnknownIssuer"),
        "expected a certificate error, got: {chain}"
    );
    // Nothing reached the upstream, nothing was recorded.
    assert!(entry_files(&dir.path().join("rec")).is_empty());

    // The same request from a client that trusts the CA works: the failure was trust.
    let client = tunnelling(&proxy, Some(&dir.path().join("ca").join(CA_CERT_FILE)));
    let ok = client
        .post(chat_url("127.0.0.1", upstream.port()))
        .json(&chat_body("trusted", false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(replay_header(&ok), "recorded");
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn upstream_certificates_are_still_verified() {
    let TlsScene {
        dir,
        mock,
        upstream,
    } = TlsScene::start().await;
    let ca = ca_in(&dir);
    // No upstream_ca: the proxy must refuse the test upstream's certificate.
    let proxy = start_proxy(ProxyConfig {
        ca_dir: Some(dir.path().join("ca")),
        ..ProxyConfig::forward_only(dir.path().join("rec"), Mode::ReplayOrRecord)
    })
    .await;
    let resp = tunnelling(&proxy, Some(ca.cert_path()))
        .post(chat_url("localhost", upstream.port()))
        .json(&chat_body("verify me", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_unreachable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("UnknownIssuer"), "{message}");
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn a_stream_through_the_tunnel_replays_byte_identical() {
    let TlsScene {
        dir,
        mock,
        upstream,
    } = TlsScene::start().await;
    let ca = ca_in(&dir);
    let url = chat_url("127.0.0.1", upstream.port());
    let body = chat_body("stream a story through the tunnel", true);

    let proxy = intercepting(dir.path(), &upstream.root_pem, Mode::ReplayOrRecord).await;
    let live = tunnelling(&proxy, Some(ca.cert_path()))
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay_header(&live), "recorded");
    assert!(replay_file(&live).starts_with(&format!("post-127-0-0-1-{}-", upstream.port())));
    let live_bytes = live.bytes().await.unwrap();
    proxy.shutdown().await;
    upstream.stop();
    mock.shutdown().await;

    let replayer = intercepting(dir.path(), &upstream.root_pem, Mode::Replay).await;
    let client = tunnelling(&replayer, Some(ca.cert_path()));
    let replayed = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(replay_header(&replayed), "hit");
    assert!(replayed.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let replayed_bytes = replayed.bytes().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&replayed_bytes),
        String::from_utf8_lossy(&live_bytes)
    );
    // And as events, through the testkit's reader.
    let again = client.post(&url).json(&body).send().await.unwrap();
    let transcript = read_stream(again).await;
    assert!(transcript.ended_with_done());
    assert!(transcript.token_chunks() > 0);
    replayer.shutdown().await;
}

#[tokio::test]
async fn the_ca_is_generated_on_first_use_private_and_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let mock = start_mock(MockOptions::zero_timing()).await;
    let upstream = TlsUpstream::start(mock_addr(&mock), dir.path()).await;
    let url = chat_url("localhost", upstream.port());

    let proxy = intercepting(dir.path(), &upstream.root_pem, Mode::ReplayOrRecord).await;
    assert!(!ca_dir.exists(), "no CA before the first CONNECT");
    // The first CONNECT generates the CA; this client cannot trust it yet.
    let err = tunnelling(&proxy, None)
        .post(&url)
        .json(&chat_body("first", false))
        .send()
        .await
        .unwrap_err();
    assert!(error_chain(&err).contains("invalid peer certificate"));
    let cert_path = ca_dir.join(CA_CERT_FILE);
    let key_path = ca_dir.join(CA_KEY_FILE);
    let cert_pem = std::fs::read_to_string(&cert_path).unwrap();
    assert!(cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_path), 0o600, "the key is private");
        assert_eq!(mode(&cert_path), 0o644, "the certificate is world-readable");
    }
    proxy.shutdown().await;

    // A restart loads the same CA: the certificate is unchanged and a client trusting it
    // (as written before the restart) gets through.
    let proxy = intercepting(dir.path(), &upstream.root_pem, Mode::ReplayOrRecord).await;
    let ok = tunnelling(&proxy, Some(&cert_path))
        .post(&url)
        .json(&chat_body("second", false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), cert_pem);
    assert_eq!(
        CertificateAuthority::load_or_create(&ca_dir)
            .unwrap()
            .cert_der()
            .as_ref(),
        rustls::pki_types::CertificateDer::from(rustls_pem_der(&cert_pem)).as_ref()
    );
    proxy.shutdown().await;
    mock.shutdown().await;
}

fn rustls_pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_broken_ca_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    CertificateAuthority::load_or_create(&ca_dir).unwrap();
    let cert_path = ca_dir.join(CA_CERT_FILE);
    let key_path = ca_dir.join(CA_KEY_FILE);
    let start = || {
        ProxyServer::start(
            ProxyConfig {
                ca_dir: Some(ca_dir.clone()),
                ..ProxyConfig::forward_only(dir.path().join("rec"), Mode::Replay)
            },
            std::net::SocketAddr::from(LOOPBACK),
        )
    };

    // A corrupt certificate.
    let good_cert = std::fs::read(&cert_path).unwrap();
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let err = start().await.unwrap_err().to_string();
    assert!(err.contains(&cert_path.display().to_string()), "{err}");
    let err = CertificateAuthority::load_or_create(&ca_dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&cert_path.display().to_string()), "{err}");

    // Another CA's certificate next to this key.
    let other = tempfile::tempdir().unwrap();
    let other_ca = CertificateAuthority::load_or_create(other.path()).unwrap();
    std::fs::copy(other_ca.cert_path(), &cert_path).unwrap();
    let err = start().await.unwrap_err().to_string();
    assert!(err.contains("is not the certificate of the key"), "{err}");
    std::fs::write(&cert_path, &good_cert).unwrap();

    // A corrupt key.
    let good_key = std::fs::read(&key_path).unwrap();
    std::fs::write(&key_path, "garbage").unwrap();
    let err = start().await.unwrap_err().to_string();
    assert!(err.contains(&key_path.display().to_string()), "{err}");
    std::fs::write(&key_path, &good_key).unwrap();

    // A key other users can read is refused, with the fix.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = start().await.unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // A missing half.
    std::fs::remove_file(&cert_path).unwrap();
    let err = start().await.unwrap_err().to_string();
    assert!(err.contains(&cert_path.display().to_string()), "{err}");
    assert!(err.contains("missing"), "{err}");

    // Repaired, it starts.
    std::fs::write(&cert_path, &good_cert).unwrap();
    start().await.unwrap().shutdown().await;
}

#[tokio::test]
async fn a_tunnel_that_never_speaks_tls_is_closed_and_the_proxy_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let TlsScene {
        dir,
        mock,
        upstream,
    } = TlsScene::start().await;
    let ca = ca_in(&dir);
    let proxy = intercepting(dir.path(), &upstream.root_pem, Mode::ReplayOrRecord).await;

    let mut tcp = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    tcp.write_all(b"CONNECT example.test:80 HTTP/1.1\r\nHost: example.test:80\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Plain HTTP instead of a TLS ClientHello: the proxy closes the tunnel.
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // Closed (or reset) within the timeout: the read ends either way, with no answer.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut rest),
    )
    .await
    .expect("the proxy closes the tunnel");
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "{rest:?}"
    );

    // A target that is not a host name gets a clear 400.
    let mut tcp = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    tcp.write_all(b"CONNECT bad_host!:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // The proxy still serves tunnels.
    let ok = tunnelling(&proxy, Some(ca.cert_path()))
        .post(chat_url("localhost", upstream.port()))
        .json(&chat_body("still here", false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    proxy.shutdown().await;
    mock.shutdown().await;
}
