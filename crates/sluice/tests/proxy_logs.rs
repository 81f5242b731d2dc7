//! `sluice proxy` leaves a log line for every failure a user has to act on (an upstream it
//! cannot trust, an upstream that breaks off, a corrupt recording, its own proxy variables
//! pointing back at itself), in plain text when the log is not a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_mock::{MockOptions, MockServer};
use sluice_proxy::{KeyOptions, NormalisedRequest, ReplayStore};
use sluice_testkit::tls::TlsUpstream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A `sluice proxy` process with its stderr collected.
struct LoggedProxy {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl LoggedProxy {
    fn start(args: &[&str], env: &[(&str, String)]) -> LoggedProxy {
        let mut cmd = Command::new(BIN);
        cmd.arg("proxy")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(name);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the proxy printed its address")
                .unwrap();
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on ".len()..];
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches(',')
                    .to_owned();
            }
        };
        // Keep reading stdout so the process never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        LoggedProxy { child, base, log }
    }

    /// Waits until the log holds `needle`, and returns the log.
    fn log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log.lock().unwrap().clone();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "{needle:?} never logged:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LoggedProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chat(content: &str, stream: bool) -> Value {
    json!({"model": "mock", "messages": [{"role": "user", "content": content}], "max_tokens": 4, "stream": stream})
}

async fn post(url: String, body: &Value) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(url)
        .json(body)
        .send()
        .await
}

/// An upstream that starts an event stream, sends one event, and hangs up mid-body.
fn breaking_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let event = b"data: {\"choices\":[]}\n\n";
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            let _ = conn.write_all(format!("{:x}\r\n", event.len()).as_bytes());
            let _ = conn.write_all(event);
            let _ = conn.write_all(b"\r\n");
            // No last chunk: the body is cut.
        }
    });
    addr
}

/// Writes a corrupt file where the recording of `chat(content)` would be.
fn corrupt_recording(dir: &Path, content: &str) {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let body = serde_json::to_vec(&chat(content, false)).unwrap();
    let key = NormalisedRequest::new(
        "POST",
        "/v1/chat/completions",
        None,
        &headers,
        &body,
        &KeyOptions::default(),
    )
    .key();
    let name = ReplayStore::file_name("POST", "/v1/chat/completions", &key, 0);
    std::fs::write(dir.join(name), "{ this is not an entry").unwrap();
}

#[tokio::test]
async fn failures_leave_a_log_line_each_without_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let recordings = dir.path().join("recordings");
    std::fs::create_dir(&recordings).unwrap();
    let mock = MockServer::start(MockOptions::zero_timing(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mock_addr: SocketAddr = mock
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .parse()
        .unwrap();
    let tls = TlsUpstream::start(mock_addr, dir.path()).await;
    let broken = breaking_upstream();
    corrupt_recording(&recordings, "corrupt");
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[routes]]\nprefix = \"/tls\"\nurl = \"https://127.0.0.1:{}\"\n\n\
             [[routes]]\nprefix = \"/broken\"\nurl = \"http://{broken}\"\n\n\
             [[routes]]\nprefix = \"/\"\nurl = \"http://{mock_addr}\"\n",
            tls.port()
        ),
    )
    .unwrap();
    let proxy = LoggedProxy::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--dir",
            recordings.to_str().unwrap(),
            "--mode",
            "replay-or-record",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );

    // An upstream whose certificate is not trusted: the hint names --upstream-ca.
    let resp = post(
        format!("{}/tls/v1/chat/completions", proxy.base),
        &chat("tls", false),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 502);
    let log = proxy.log_with("--upstream-ca");
    assert!(
        log.contains("cannot reach upstream https://127.0.0.1:"),
        "{log}"
    );

    // An upstream that hangs up in the middle of a stream: the client's stream breaks too.
    let resp = post(
        format!("{}/broken/v1/chat/completions", proxy.base),
        &chat("broken", true),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "the cut must reach the client");
    proxy.log_with(&format!(
        "upstream http://{broken}/v1/chat/completions broke off its event stream"
    ));

    // A recording that is not an entry: 500, and the log names the file.
    let resp = post(
        format!("{}/v1/chat/completions", proxy.base),
        &chat("corrupt", false),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 500);
    let log = proxy.log_with("is not a valid entry");
    assert!(log.contains("post-v1-chat-completions-"), "{log}");

    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log}"
    );
    tls.stop();
    mock.shutdown().await;
}

#[tokio::test]
async fn a_proxy_whose_own_proxy_variable_points_at_itself_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = LoggedProxy::start(
        &[
            "--dir",
            dir.path().to_str().unwrap(),
            "--mode",
            "passthrough",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        &[("HTTP_PROXY", format!("http://127.0.0.1:{port}"))],
    );
    proxy.log_with("points at this proxy itself");

    let resp = post(
        format!("{}/v1/chat/completions", proxy.base),
        &chat("loop", false),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 508);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "proxy_loop", "{body}");
    proxy.log_with("proxy loop:");
}
