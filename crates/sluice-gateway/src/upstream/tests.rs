//! The connection pool against real loopback servers: reuse, limits, expiry, and upstreams
//! that close connections.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::UpstreamEndpoint;
use crate::config::{Config, ResolvedEndpoint};
use crate::metrics::GatewayMetrics;

const ANSWER: &str = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
/// Raw answers for the scripted server: `{}` by length, and `{"a":1}` in two chunks.
const LENGTH_ANSWER: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
const CHUNKED_ANSWER: &str =
    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";

/// Connections a test server accepted, and how many of them have ended.
#[derive(Default)]
struct ConnectionCount {
    accepted: AtomicUsize,
    closed: AtomicUsize,
}

impl ConnectionCount {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// How the hyper test server answers.
#[derive(Clone, Copy)]
enum Answer {
    /// A JSON body after `delay`.
    Json { delay: Duration },
    /// Two chunks 200 ms apart.
    SlowStream,
}

async fn hyper_server(answer: Answer) -> (String, Arc<ConnectionCount>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(ConnectionCount::default());
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counted.accepted.fetch_add(1, Ordering::SeqCst);
            let counted = counted.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    let body = match answer {
                        Answer::Json { delay } => {
                            tokio::time::sleep(delay).await;
                            Full::new(Bytes::from(ANSWER))
                                .map_err(|e| match e {})
                                .boxed()
                        }
                        Answer::SlowStream => {
                            let chunks = futures_util::stream::unfold(0, |i| async move {
                                if i == 2 {
                                    return None;
                                }
                                if i == 1 {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                                let frame = Frame::data(Bytes::from_static(b"data: {}\n\n"));
                                Some((Ok::<_, Infallible>(frame), i + 1))
                            });
                            StreamBody::new(chunks).boxed()
                        }
                    };
                    Ok::<_, Infallible>(http::Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                counted.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, count)
}

/// A server that answers one request per connection with keep-alive semantics, then closes
/// the connection `close_after` later, the way an upstream's keep-alive timeout does.
async fn closing_server(close_after: Duration) -> (String, Arc<ConnectionCount>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(ConnectionCount::default());
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counted.accepted.fetch_add(1, Ordering::SeqCst);
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // Head and body of one request (the body is short and follows the head).
                while !request_complete(&seen) {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                    ANSWER.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                tokio::time::sleep(close_after).await;
                drop(stream);
                counted.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, count)
}

fn request_complete(seen: &[u8]) -> bool {
    let Some(head_end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    seen.len() >= head_end + 4 + length
}

fn endpoint(url: &str, connections: &str) -> Arc<UpstreamEndpoint> {
    let resolved = resolved_endpoint(
        &format!("url = \"{url}\"\nconnections = {{ {connections} }}"),
        &|_| None,
    );
    Arc::new(UpstreamEndpoint::new(resolved, &GatewayMetrics::new()).unwrap())
}

/// Model `m`'s one endpoint, configured by `keys`, with `env` as the environment.
fn resolved_endpoint(keys: &str, env: &dyn Fn(&str) -> Option<String>) -> ResolvedEndpoint {
    let text = format!("[models.m]\n[[models.m.endpoints]]\n{keys}\n");
    let path = Path::new("test.toml");
    let config = Config::from_toml(&text, path)
        .unwrap()
        .resolve(path, env)
        .unwrap();
    config.models["m"].endpoints[0].clone()
}

/// One request, its body read to the end and accepted (the connection released).
async fn call(endpoint: &UpstreamEndpoint) -> Bytes {
    let resp = endpoint
        .send(Bytes::from_static(b"{}"), "req", b"")
        .await
        .unwrap()
        .response;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let bytes = super::read_whole(&mut body, u64::MAX).await.unwrap();
    body.release();
    bytes
}

/// `n` calls started together; each must get the answer.
async fn call_all_at_once(endpoint: &Arc<UpstreamEndpoint>, n: usize) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let ep = endpoint.clone();
            tokio::spawn(async move { call(&ep).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), ANSWER);
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 2 s: {what}");
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let (url, server) = hyper_server(Answer::Json {
        delay: Duration::ZERO,
    })
    .await;
    let ep = endpoint(&url, "");
    for _ in 0..5 {
        assert_eq!(call(&ep).await, ANSWER);
    }
    assert_eq!(server.accepted(), 1);
    let stats = ep.pool_stats();
    assert_eq!((stats.opened, stats.idle), (1, 1));
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    let (url, server) = closing_server(Duration::from_millis(20)).await;
    let ep = endpoint(&url, "");
    for i in 0..5 {
        assert_eq!(call(&ep).await, ANSWER, "request {i}");
        eventually("the server closed the idle connection", || {
            server.closed() == i + 1
        })
        .await;
    }
    // Each request found the previous connection closed and opened its own.
    assert_eq!(server.accepted(), 5);
    assert_eq!(ep.pool_stats().opened, 5);
}

#[tokio::test]
async fn requests_beyond_max_connecting_wait_for_a_connection_and_succeed() {
    let (url, _server) = hyper_server(Answer::Json {
        delay: Duration::from_millis(30),
    })
    .await;
    let ep = endpoint(&url, "max_connecting = 2");
    let watched = ep.clone();
    let watcher = tokio::spawn(async move {
        let (mut most_connecting, mut most_waiting) = (0, 0);
        for _ in 0..400 {
            let s = watched.pool_stats();
            most_connecting = most_connecting.max(s.connecting);
            most_waiting = most_waiting.max(s.waiting);
            tokio::task::yield_now().await;
        }
        (most_connecting, most_waiting)
    });
    call_all_at_once(&ep, 20).await;
    let (most_connecting, most_waiting) = watcher.await.unwrap();
    assert!(most_connecting <= 2, "{most_connecting} connects at once");
    assert!(most_waiting > 0, "no request ever waited");
    assert_eq!(ep.pool_stats().waiting, 0);
}

#[tokio::test]
async fn idle_connections_beyond_max_idle_are_closed() {
    let (url, server) = hyper_server(Answer::Json {
        delay: Duration::from_millis(50),
    })
    .await;
    let ep = endpoint(&url, "max_idle = 3");
    call_all_at_once(&ep, 10).await;
    assert_eq!(server.accepted(), 10);
    assert_eq!(ep.pool_stats().idle, 3);
    eventually("the 7 surplus connections close", || server.closed() == 7).await;
}

#[tokio::test(start_paused = true)]
async fn an_expired_idle_connection_is_closed_instead_of_reused() {
    let (url, server) = hyper_server(Answer::Json {
        delay: Duration::ZERO,
    })
    .await;
    let ep = endpoint(&url, "idle_timeout = \"100ms\"");
    call(&ep).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    call(&ep).await;
    assert_eq!(server.accepted(), 2);
    eventually("the expired connection closes", || server.closed() == 1).await;
}

#[tokio::test]
async fn a_body_dropped_before_its_end_does_not_return_its_connection() {
    let (url, server) = hyper_server(Answer::SlowStream).await;
    let ep = endpoint(&url, "");
    let resp = ep
        .send(Bytes::from_static(b"{}"), "req", b"")
        .await
        .unwrap()
        .response;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    assert_eq!(ep.pool_stats().idle, 0);
    eventually("the half-read connection closes", || server.closed() == 1).await;
    // A body read to the end but not accepted does not return it either.
    let resp = ep
        .send(Bytes::from_static(b"{}"), "req", b"")
        .await
        .unwrap()
        .response;
    resp.into_body().collect().await.unwrap();
    assert_eq!(ep.pool_stats().idle, 0);
    eventually("the unaccepted connection closes", || server.closed() == 2).await;
    // Read to the end and released: it goes back.
    let resp = ep
        .send(Bytes::from_static(b"{}"), "req", b"")
        .await
        .unwrap()
        .response;
    let mut body = resp.into_body();
    while body.frame().await.is_some() {}
    body.release();
    assert_eq!(server.accepted(), 3);
    assert_eq!(ep.pool_stats().idle, 1);
}

/// A server that answers the requests it receives, on whatever connection, with `answers`
/// in order, and keeps every request it saw. An answer starting with `CLOSE ` is sent without
/// that prefix and then the connection is closed.
async fn scripted_server(
    answers: Vec<&'static str>,
) -> (
    String,
    Arc<ConnectionCount>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(ConnectionCount::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let answers = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        answers,
    )));
    let (counted, requests) = (count.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counted.accepted.fetch_add(1, Ordering::SeqCst);
            let (counted, requests, answers) = (counted.clone(), requests.clone(), answers.clone());
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                'requests: loop {
                    while !request_complete(&pending) {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break 'requests,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                    requests
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&pending).into_owned());
                    pending.clear();
                    let Some(answer) = answers.lock().unwrap().pop_front() else {
                        break;
                    };
                    let (answer, close) = match answer.strip_prefix("CLOSE ") {
                        Some(rest) => (rest, true),
                        None => (answer, false),
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() || close {
                        break;
                    }
                }
                counted.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, count, seen)
}

#[tokio::test]
async fn a_request_carries_the_fixed_headers_its_id_and_its_length() {
    let (url, _server, seen) = scripted_server(vec![LENGTH_ANSWER]).await;
    let resolved = resolved_endpoint(
        &format!("url = \"{url}\"\napi_key_env = \"KEY\""),
        &|name| (name == "KEY").then(|| "sk-test".to_owned()),
    );
    let ep = UpstreamEndpoint::new(resolved, &GatewayMetrics::new()).unwrap();
    let resp = ep
        .send(Bytes::from_static(b"{\"model\":\"m\"}"), "req-1", b"")
        .await
        .unwrap()
        .response;
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "{}");
    let request = seen.lock().unwrap()[0].clone();
    let host = url.trim_start_matches("http://").trim_end_matches("/v1");
    let expected = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\naccept-encoding: identity\r\nuser-agent: sluice/{}\r\nauthorization: Bearer sk-test\r\nx-request-id: req-1\r\ncontent-length: 13\r\n\r\n{{\"model\":\"m\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(request, expected);
}

#[tokio::test]
async fn a_connection_is_reused_after_a_chunked_answer_but_not_after_connection_close() {
    let (url, server, _) = scripted_server(vec![
        CHUNKED_ANSWER,
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        LENGTH_ANSWER,
    ])
    .await;
    let ep = endpoint(&url, "");
    assert_eq!(call(&ep).await, "{\"a\":1}");
    assert_eq!(ep.pool_stats().idle, 1);
    assert_eq!(call(&ep).await, "{}");
    // The upstream said it closes this one.
    assert_eq!(ep.pool_stats().idle, 0);
    assert_eq!(call(&ep).await, "{}");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn an_upstream_that_answers_garbage_gets_a_protocol_error_naming_it() {
    let (url, _server, _) = scripted_server(vec!["<html>502 Bad Gateway</html>\r\n\r\n"]).await;
    let ep = endpoint(&url, "");
    let Err(e) = ep.send(Bytes::from_static(b"{}"), "req", b"").await else {
        panic!("garbage accepted as a response");
    };
    assert!(!e.retry_safe());
    let text = e.to_string();
    assert!(text.contains("not valid HTTP/1.1"), "{text}");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_its_connection_is_not_reused() {
    let (url, server, _) = scripted_server(vec![
        "CLOSE HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":",
    ])
    .await;
    let ep = endpoint(&url, "");
    let resp = ep
        .send(Bytes::from_static(b"{}"), "req", b"")
        .await
        .unwrap()
        .response;
    let e = resp.into_body().collect().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("closed the connection before the body ended"),
        "{e}"
    );
    assert_eq!(ep.pool_stats().idle, 0);
    eventually("the server saw the connection end", || server.closed() == 1).await;
}

#[tokio::test]
async fn requests_over_tls_are_answered_and_share_one_connection() {
    let (backend, server, _) =
        scripted_server(vec![LENGTH_ANSWER, CHUNKED_ANSWER, LENGTH_ANSWER]).await;
    let backend = backend
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let upstream = sluice_testkit::tls::TlsUpstream::start(backend, dir.path()).await;
    let url = format!("https://localhost:{}/v1", upstream.port());
    let ep = UpstreamEndpoint::build(
        resolved_endpoint(&format!("url = \"{url}\""), &|_| None),
        &GatewayMetrics::new(),
        Some(upstream.client_config()),
    )
    .unwrap();
    assert_eq!(call(&ep).await, "{}");
    assert_eq!(call(&ep).await, "{\"a\":1}");
    assert_eq!(call(&ep).await, "{}");
    assert_eq!(server.accepted(), 1, "one TLS connection for all three");
    assert_eq!(ep.pool_stats().opened, 1);
}

#[tokio::test]
async fn a_body_ended_by_closing_is_read_whole_and_its_connection_not_kept() {
    let (url, server, _) = scripted_server(vec![
        "CLOSE HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\":1}",
        LENGTH_ANSWER,
    ])
    .await;
    let ep = endpoint(&url, "");
    assert_eq!(call(&ep).await, "{\"a\":1}");
    assert_eq!(ep.pool_stats().idle, 0);
    assert_eq!(call(&ep).await, "{}");
    assert_eq!(server.accepted(), 2);
}
