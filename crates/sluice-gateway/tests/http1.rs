//! The gateway's client connections at the byte level: framing, persistence, interim and
//! refused requests, over raw loopback sockets (no HTTP client library in between to smooth
//! over what the gateway writes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use sluice_testkit::{gateway_toml, start_mock, MockOptions, MockServer, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One client connection, reading answers as they come.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(60), self.stream.read(&mut chunk))
            .await
            .expect("the gateway answers within 60 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next answer; `head_only` for an answer to HEAD.
    async fn answer_to(&mut self, head_only: bool) -> Answer {
        let (status, headers, len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = resp.parse(&self.buf).unwrap() {
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect();
                break (resp.code.unwrap(), headers, len);
            }
            assert!(self.fill().await > 0, "closed before a whole head");
        };
        self.buf.drain(..len);
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status < 200 || status == 204 || status == 304 {
            return answer;
        }
        if let Some(n) = answer.header("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(self.fill().await > 0, "closed inside a body");
            }
            answer.body = self.buf.drain(..n).collect();
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await > 0, "closed inside a chunk size");
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16)
                        .unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await > 0, "closed inside a chunk");
                }
                answer
                    .body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                assert_eq!(&self.buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
                self.buf.drain(..line_end + 4 + size);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await > 0 {}
            answer.body = std::mem::take(&mut self.buf);
        }
        answer
    }

    async fn answer(&mut self) -> Answer {
        self.answer_to(false).await
    }

    /// Whether the gateway closed the connection (with nothing more sent).
    async fn closed(&mut self) -> bool {
        self.fill().await == 0 && self.buf.is_empty()
    }

    /// Closed by the gateway on its own account, not by the idle timeout: the gateway closes
    /// every idle connection after 30 s, so waiting without a bound cannot tell a connection
    /// it meant to close from one it wrongly kept open. The bound is far above how long a
    /// close takes and far below the timeout.
    async fn closed_now(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(10), self.closed())
            .await
            .unwrap_or(false)
    }
}

async fn gateway(mock: &MockServer) -> TestGateway {
    TestGateway::start_toml(&gateway_toml("m", &[mock.base_url()], "")).await
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;

fn chat_request(extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn keep_alive_carries_pipelined_requests_answered_in_order() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway(&mock).await;
    let mut c = Raw::connect(gw.addr).await;
    // Three requests in one write: a chat completion, a 404, and the health check.
    let mut burst = chat_request("x-request-id: first\r\n", CHAT);
    burst.extend_from_slice(b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n");
    burst.extend_from_slice(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    c.send(&burst).await;
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-request-id"), Some("first"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(
        a.header("date").is_some_and(|d| d.ends_with(" GMT")),
        "{a:?}"
    );
    assert_eq!(a.json()["usage"]["completion_tokens"], 4);
    let a = c.answer().await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"]["message"].is_string());
    assert!(
        a.header("x-request-id").is_some(),
        "routed requests get an id too"
    );
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), None, "the connection stays open");

    // The same connection carries a stream, chunked, and then another request.
    let stream_body =
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true}"#;
    c.send(&chat_request("", stream_body)).await;
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(a.body).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    c.send(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer().await.status, 200);
}

#[tokio::test]
async fn a_chunked_body_after_100_continue_is_read_whole() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway(&mock).await;
    let mut c = Raw::connect(gw.addr).await;
    c.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = c.answer().await;
    assert_eq!(interim.status, 100, "the gateway asks for the body");
    let (a, b) = CHAT.split_at(20);
    let chunked = format!(
        "{:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\ntrailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    c.send(chunked.as_bytes()).await;
    let a = c.answer().await;
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["usage"]["completion_tokens"], 4);
    // The body's end was found exactly: the connection still works.
    c.send(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer().await.status, 200);

    // Expecting 100-continue when the body is already there gets no interim answer.
    let mut both = chat_request("expect: 100-continue\r\n", CHAT);
    both.extend_from_slice(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    c.send(&both).await;
    assert_eq!(c.answer().await.status, 200);
    assert_eq!(c.answer().await.status, 200);
}

#[tokio::test]
async fn persistence_follows_the_version_and_connection_field() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway(&mock).await;

    let mut c = Raw::connect(gw.addr).await;
    c.send(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.closed_now().await);

    let mut c = Raw::connect(gw.addr).await;
    c.send(b"GET /health HTTP/1.0\r\n\r\n").await;
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.closed_now().await, "HTTP/1.0 closes unless asked not to");

    let mut c = Raw::connect(gw.addr).await;
    c.send(b"GET /health HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await;
    let a = c.answer().await;
    assert_eq!(a.header("connection"), Some("keep-alive"));
    // HTTP/1.0 cannot take chunks: a stream is sent as is and ends with the connection.
    let body =
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream":true}"#;
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("transfer-encoding"), None);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(String::from_utf8(a.body)
        .unwrap()
        .ends_with("data: [DONE]\n\n"));

    // A completion's head is written by the connection itself: the same rules hold.
    let mut c = Raw::connect(gw.addr).await;
    c.send(&chat_request("connection: close\r\n", CHAT)).await;
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(a.header("x-request-id").is_some());
    assert!(c.closed_now().await);

    let mut c = Raw::connect(gw.addr).await;
    for _ in 0..2 {
        c.send(
            format!(
                "POST /v1/chat/completions HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{CHAT}",
                CHAT.len()
            )
            .as_bytes(),
        )
        .await;
        let a = c.answer().await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("connection"), Some("keep-alive"));
        assert!(String::from_utf8(a.body).unwrap().contains("\"usage\""));
    }

    // HEAD: no body. The router drops the body of a HEAD answer, so its length is not
    // known, and the answer does not claim 0.
    let mut c = Raw::connect(gw.addr).await;
    c.send(b"HEAD /v1/models HTTP/1.1\r\nhost: x\r\n\r\nGET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let head = c.answer_to(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), None);
    assert_eq!(c.answer().await.status, 200, "no body came between");
}

/// Each malformed or unsupported request: its status, and the connection closed after the
/// JSON error.
#[tokio::test]
async fn malformed_requests_are_refused_with_json_and_the_connection_closed() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway(&mock).await;
    let many_fields: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
    let long_field = format!("x-long: {}\r\n", "a".repeat(70 * 1024));
    let cases: Vec<(String, u16, &str)> = vec![
        ("GARBAGE\r\n\r\n".into(), 400, "malformed"),
        ("GET * HTTP/1.1\r\nhost: x\r\n\r\n".into(), 400, "neither a path"),
        ("GET /health HTTP/1.1\r\n\r\n".into(), 400, "must carry a Host"),
        (
            "GET /health HTTP/1.1\r\nhost: a\r\nHost: b\r\n\r\n".into(),
            400,
            "more than one Host",
        ),
        ("GET /health HTTP/2.0\r\nhost: x\r\n\r\n".into(), 505, "HTTP/1.1"),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(), 505, "HTTP/1.1"),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            400,
            "both",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n".into(),
            400,
            "conflicting",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: -5\r\n\r\n".into(),
            400,
            "Content-Length",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n".into(),
            501,
            "chunked",
        ),
        (
            "POST /v1/chat/completions HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            400,
            "HTTP/1.0",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\nexpect: something\r\ncontent-length: 2\r\n\r\n{}".into(),
            417,
            "100-continue",
        ),
        (format!("GET /health HTTP/1.1\r\n{many_fields}\r\n"), 431, "header fields"),
        (format!("GET /health HTTP/1.1\r\n{long_field}\r\n"), 431, "KiB"),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".into(),
            400,
            "chunk",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\n{}\n0\n\n".into(),
            400,
            "bare LF",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n 2\r\n{}\r\n0\r\n\r\n".into(),
            400,
            "chunk size",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 999999999999\r\n\r\n".into(),
            413,
            "MiB",
        ),
    ];
    for (request, status, says) in cases {
        // Every case but those about Host carries one, so it fails for its own reason.
        let request = if says.contains("Host")
            || request.contains("host:")
            || !request.contains(" HTTP/1.")
        {
            request
        } else {
            request.replacen("\r\n", "\r\nhost: x\r\n", 1)
        };
        let mut c = Raw::connect(gw.addr).await;
        c.send(request.as_bytes()).await;
        let a = c.answer().await;
        assert_eq!(a.status, status, "{request:.120}");
        assert_eq!(a.header("connection"), Some("close"), "{request:.120}");
        let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{request:.120}: {message}");
        assert!(c.closed_now().await, "{request:.120}");
    }
    assert_eq!(
        mock.engine().stats().requests_total,
        0,
        "nothing went upstream"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway(&mock).await;
    // Half a head: answered 408, then closed.
    let mut slow = Raw::connect(gw.addr).await;
    slow.send(b"GET /health HTTP/1.1\r\nhost:").await;
    // Idle after one request: closed without a word.
    let mut idle = Raw::connect(gw.addr).await;
    idle.send(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(idle.answer().await.status, 200);
    let started = tokio::time::Instant::now();
    let a = slow.answer().await;
    assert_eq!(a.status, 408);
    assert!(slow.closed().await);
    assert!(idle.closed().await);
    assert!(
        started.elapsed() >= Duration::from_secs(29),
        "closed after {:?}",
        started.elapsed()
    );
}

async fn gateway_with(mock: &MockServer, server_keys: &str) -> TestGateway {
    TestGateway::start_toml(&gateway_toml("m", &[mock.base_url()], server_keys)).await
}

/// A body that stops arriving is answered 408 after the body read timeout; one that drips in
/// slowly enough to reset that timeout each time is answered 408 at the body timeout. Nothing
/// reaches the upstream either way.
#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_or_drips_past_its_deadlines_is_answered_408() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway_with(
        &mock,
        "body_read_timeout = \"10s\"\nbody_timeout = \"25s\"\n",
    )
    .await;

    let mut stalled = Raw::connect(gw.addr).await;
    stalled
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"model\"")
        .await;
    let started = tokio::time::Instant::now();
    let a = stalled.answer().await;
    assert_eq!(a.status, 408);
    assert_eq!(a.json()["error"]["code"], "request_timeout");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("body read timeout"));
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert!(stalled.closed_now().await);

    let mut dripping = Raw::connect(gw.addr).await;
    dripping
        .send(b"POST /health HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await;
    let started = tokio::time::Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        // One chunk of one byte every 5 s: each read comes well within 10 s.
        let _ = dripping.stream.write_all(b"1\r\nx\r\n").await;
    }
    let a = dripping.answer().await;
    assert_eq!(a.status, 408);
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("whole body"));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(25), "{waited:?}");
    assert_eq!(mock.engine().stats().requests_total, 0);
}

/// A chunked request body may carry a bounded number of trailer fields.
#[tokio::test]
async fn request_trailers_are_bounded_in_count() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway(&mock).await;
    let trailers: String = (0..40).map(|i| format!("x-t{i}: v\r\n")).collect();
    let mut c = Raw::connect(gw.addr).await;
    c.send(
        format!("POST /health HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n{trailers}\r\n")
            .as_bytes(),
    )
    .await;
    let a = c.answer().await;
    assert_eq!(a.status, 400);
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("trailer"));
}

/// Routes other than chat take small bodies: a large one is refused at its head, not
/// buffered.
#[tokio::test]
async fn routes_other_than_chat_refuse_large_bodies_at_the_head() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway(&mock).await;
    let mut c = Raw::connect(gw.addr).await;
    c.send(b"POST /health HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        .await;
    let a = c.answer().await;
    assert_eq!(a.status, 413);
    assert!(c.closed_now().await);
}

/// At `max_connections` a new client connection is closed at once; when one closes, the next
/// is served.
#[tokio::test]
async fn client_connections_beyond_max_connections_are_closed() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway_with(&mock, "max_connections = 2\n").await;
    let mut first = Raw::connect(gw.addr).await;
    first.send(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(first.answer().await.status, 200);
    let mut second = Raw::connect(gw.addr).await;
    second
        .send(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert_eq!(second.answer().await.status, 200);

    let mut third = Raw::connect(gw.addr).await;
    assert!(
        third.closed_now().await,
        "a third connection is closed unanswered"
    );
    let metrics = gw.shared.metrics.encode();
    assert_eq!(
        sluice_testkit::metric_value(&metrics, "sluice_client_connections_refused_total", &[]),
        1.0
    );
    assert_eq!(
        sluice_testkit::metric_value(&metrics, "sluice_client_connections", &[]),
        2.0
    );

    drop(first);
    // The slot comes back when the gateway sees the close.
    let mut served = false;
    for _ in 0..100 {
        let mut next = Raw::connect(gw.addr).await;
        let _ = next
            .stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        if next.fill().await > 0 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a slot came free after a connection closed");
}

/// RFC 9112 §3.2.2: a server accepts a target in absolute form.
#[tokio::test]
async fn absolute_form_targets_are_served() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = gateway(&mock).await;
    let mut c = Raw::connect(gw.addr).await;
    c.send(b"GET http://gateway.example/health HTTP/1.1\r\nhost: gateway.example\r\n\r\n")
        .await;
    assert_eq!(c.answer().await.status, 200);
    let body = CHAT;
    c.send(
        format!(
            "POST HTTP://gateway.example:8080/v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert!(String::from_utf8(a.body).unwrap().contains("\"usage\""));
}

/// A client that stops reading a stream is dropped once a write waits past the write
/// timeout, or past the stream's total timeout, whichever comes first; its upstream request
/// is cancelled and it is counted as 499.
#[tokio::test]
async fn a_client_that_stops_reading_a_stream_is_dropped_and_its_upstream_cancelled() {
    for (server_keys, extra) in [
        ("write_timeout = \"500ms\"\n", ""),
        (
            "",
            "[defaults.timeouts]\nfirst_byte = \"500ms\"\ntotal = \"1s\"\n",
        ),
    ] {
        let mock = start_mock(MockOptions::zero_timing()).await;
        let toml = gateway_toml("m", &[mock.base_url()], &format!("{server_keys}{extra}"));
        let gw = TestGateway::start_toml(&toml).await;
        // Far more output than the socket buffers hold, and never read.
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":131072,"ignore_eos":true}"#;
        // A small receive window, so the gateway's writes block soon.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut c = Raw {
            stream: socket.connect(gw.addr).await.unwrap(),
            buf: Vec::new(),
        };
        c.send(&chat_request("", body)).await;
        sluice_testkit::assert_eventually!(
            mock.engine().stats().cancelled == 1,
            Duration::from_secs(30)
        );
        let metrics = gw.metrics_text().await;
        assert_eq!(
            sluice_testkit::metric_value(&metrics, "sluice_requests_total", &[("status", "499")]),
            1.0,
            "{server_keys}{extra}"
        );
        drop(c);
    }
}
