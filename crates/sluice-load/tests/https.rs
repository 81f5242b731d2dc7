//! `https://` targets: TLS to the server (trusting `--ca-file` besides the web's roots),
//! with chunks still timed by the kernel's receive times under the TLS layer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{config, zero_mock};
use sluice_load::{run, LoadError};
use sluice_testkit::tls::TlsUpstream;

#[tokio::test]
async fn an_https_target_is_measured_and_an_untrusted_one_refused_with_the_fix() {
    let mock = zero_mock().await;
    let backend = mock
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsUpstream::start(backend, dir.path()).await;
    let url = format!("https://127.0.0.1:{}/v1", tls.port());

    let mut c = config(url.clone(), 8);
    c.ca_file = Some(dir.path().join("upstream-root.pem"));
    let result = run(c).await.unwrap();
    let s = &result.report.runs[0].summary;
    assert_eq!(s.requests.succeeded, 10, "{:?}", s.errors);
    assert_eq!(s.tokens.output_mean, Some(8.0));
    #[cfg(target_os = "linux")]
    assert!(s.generator.receive_lag.is_some(), "stamped under TLS");

    // The server's certificate is signed by a CA nobody said to trust.
    let err = run(config(url, 8)).await.unwrap_err();
    assert!(matches!(err, LoadError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("--ca-file"), "{err}");

    let mut c = config("https://127.0.0.1:1/v1".into(), 8);
    c.ca_file = Some(dir.path().join("missing.pem"));
    let err = run(c).await.unwrap_err();
    assert!(err.to_string().starts_with("--ca-file"), "{err}");
    tls.stop();
    mock.shutdown().await;
}

#[tokio::test]
async fn a_server_that_never_answers_the_handshake_is_refused_within_the_timeout() {
    // Takes the TCP connection and then says nothing: no TLS server hello.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let mut c = config(format!("https://127.0.0.1:{port}/v1"), 8);
    c.timeout = std::time::Duration::from_millis(500);
    let started = std::time::Instant::now();
    let err = run(c).await.unwrap_err();
    assert!(matches!(err, LoadError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("within --timeout"), "{err}");
    // The bound is the timeout; 20 s is far beyond any busy machine's delay of it.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
