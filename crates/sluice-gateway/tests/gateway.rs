//! The gateway over real HTTP: `sluice serve` (in process) in front of real mock engines on
//! ephemeral loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_testkit::{
    assert_eventually, gateway_toml, metric_value, read_stream, refused_url, start_mock,
    MockOptions, MockServer, TestGateway,
};

fn zero() -> MockOptions {
    MockOptions::zero_timing()
}

fn slow_decode(ms: u64) -> MockOptions {
    let mut o = MockOptions::zero_timing();
    o.timing.decode_interval = Duration::from_millis(ms);
    o
}

async fn gateway_for(mocks: &[&MockServer], extra: &str) -> TestGateway {
    let urls: Vec<String> = mocks.iter().map(|m| m.base_url()).collect();
    TestGateway::start_toml(&gateway_toml("m", &urls, extra)).await
}

fn hello(extra: Value) -> Value {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "Hello there"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

async fn post(gw: &TestGateway, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A chat request whose body is sent as given, valid JSON or not.
async fn post_raw(gw: &TestGateway, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn set_faults(mock: &MockServer, faults: Value) {
    let url = mock.base_url().replace("/v1", "/admin/faults");
    let resp = reqwest::Client::new()
        .patch(url)
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
}

async fn mock_requests(mock: &MockServer) -> Vec<Value> {
    let url = mock.base_url().replace("/v1", "/admin/requests");
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn non_streaming_round_trip_matches_the_engine() {
    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;
    let body = hello(json!({"max_tokens": 12}));

    let resp = post(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let via_gateway: Value = resp.json().await.unwrap();

    let direct: Value = reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via_gateway["object"], "chat.completion");
    assert_eq!(via_gateway["choices"], direct["choices"]);
    assert_eq!(
        via_gateway["usage"]["completion_tokens"],
        direct["usage"]["completion_tokens"]
    );
    assert!(via_gateway["usage"]["completion_tokens"].as_u64().unwrap() <= 12);
}

#[tokio::test]
async fn streaming_relays_every_chunk_in_order_then_done() {
    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;

    // Without include_usage the client gets no usage chunk, though the gateway asked for one.
    let body = hello(json!({"stream": true, "max_tokens": 8, "vendor": {"k": [1, null]}}));
    let resp = post(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let mut asked = body.clone();
    asked["stream_options"] = json!({"include_usage": true});
    assert_eq!(
        mock_requests(&mock).await.last().unwrap()["body"],
        asked,
        "the engine got the client's request with usage asked for"
    );
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let t = read_stream(resp).await;
    assert!(t.transport_error.is_none(), "{:?}", t.transport_error);
    assert!(t.ended_with_done(), "{:?}", t.datas());
    let chunks = t.chunks();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c.get("usage").is_none_or(Value::is_null)));
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    let plain_content = t.content();

    // With include_usage: a final usage chunk whose completion_tokens counts the content chunks.
    let resp = post(
        &gw,
        &hello(json!({"stream": true, "max_tokens": 8, "stream_options": {"include_usage": true}})),
    )
    .await;
    let t = read_stream(resp).await;
    assert!(t.ended_with_done());
    let chunks = t.chunks();
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    let content_chunks = t.token_chunks() as u64;
    assert_eq!(usage_chunk["usage"]["completion_tokens"], content_chunks);
    assert_eq!(
        t.content(),
        plain_content,
        "same request, same deterministic text"
    );
}

#[tokio::test]
async fn unknown_fields_are_forwarded_unchanged_and_models_renamed() {
    let mock = start_mock(zero()).await;
    let extra = "";
    let urls = [mock.base_url()];
    let toml = gateway_toml("m", &urls, extra).replace(
        &format!("url = \"{}\"\n", urls[0]),
        &format!("url = \"{}\"\nmodel = \"engine-name\"\n", urls[0]),
    );
    let gw = TestGateway::start_toml(&toml).await;
    let body = hello(json!({
        "response_format": {"type": "json_object"},
        "logprobs": true,
        "top_logprobs": 2,
        "vendor_extension": {"nested": [1, {"x": null}]},
        "messages": [{"role": "user", "content": "hi", "name": "alice"}],
    }));
    let resp = post(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let seen = mock_requests(&mock).await;
    let got = &seen.last().unwrap()["body"];
    assert_eq!(got["model"], "engine-name");
    for key in [
        "response_format",
        "logprobs",
        "top_logprobs",
        "vendor_extension",
        "messages",
    ] {
        assert_eq!(got[key], body[key], "field {key}");
    }

    // Without a rename, a non-streaming request goes upstream exactly as the client sent it.
    let direct = gateway_for(&[&mock], "").await;
    assert_eq!(post(&direct, &body).await.status(), 200);
    let seen = mock_requests(&mock).await;
    assert_eq!(seen.last().unwrap()["body"], body);
}

#[tokio::test]
async fn malformed_requests_get_400_naming_the_field() {
    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;
    let client = reqwest::Client::new();

    let resp = post_raw(&gw, "{\"model\": \"m\", ".into()).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));

    let resp = post(&gw, &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["param"], "messages");

    let resp = post(&gw, &json!({"model": "m", "messages": [{"content": "x"}]})).await;
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["param"], "messages[0].role");

    let resp = client
        .get(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let e: Value = resp.json().await.unwrap();
    assert!(e["error"]["message"].is_string());

    assert_eq!(
        mock.engine().stats().requests_total,
        0,
        "nothing reached the engine"
    );
}

#[tokio::test]
async fn unknown_model_is_404_listing_the_models() {
    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;
    let resp = post(
        &gw,
        &json!({"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_found");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("gpt-nope") && msg.contains("available models: m"),
        "{msg}"
    );
}

#[tokio::test]
async fn upstream_4xx_passes_through_with_status_body_and_retry_after() {
    let mut opts = zero();
    opts.require_api_key = Some("sk-right".into());
    let mock = start_mock(opts).await;
    let gw = gateway_for(&[&mock], "").await;
    let resp = post(&gw, &hello(json!({}))).await;
    assert_eq!(resp.status(), 401);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(
        e["error"]["code"], "invalid_api_key",
        "the engine's own body: {e}"
    );

    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;
    set_faults(
        &mock,
        json!({"error_rate": 1.0, "error_status": 429, "retry_after_secs": 7}),
    )
    .await;
    let resp = post(&gw, &hello(json!({}))).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let e: Value = resp.json().await.unwrap();
    assert!(e["error"]["message"].is_string());
}

#[tokio::test]
async fn upstream_key_comes_from_the_environment() {
    let mut opts = zero();
    opts.require_api_key = Some("sk-from-env".into());
    let mock = start_mock(opts).await;
    // The variable name is unique to this test; nothing else in the process reads it.
    std::env::set_var("SLUICE_TEST_UPSTREAM_KEY_1", "sk-from-env");
    let urls = [mock.base_url()];
    let toml = gateway_toml("m", &urls, "").replace(
        &format!("url = \"{}\"\n", urls[0]),
        &format!(
            "url = \"{}\"\napi_key_env = \"SLUICE_TEST_UPSTREAM_KEY_1\"\n",
            urls[0]
        ),
    );
    let gw = TestGateway::start_toml(&toml).await;
    assert_eq!(post(&gw, &hello(json!({}))).await.status(), 200);
}

#[tokio::test]
async fn upstream_5xx_is_502_and_refused_is_502_and_slow_is_504() {
    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;
    set_faults(&mock, json!({"error_rate": 1.0, "error_status": 500})).await;
    let resp = post(&gw, &hello(json!({}))).await;
    assert_eq!(resp.status(), 502);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("500"));

    // A port nothing listens on: bind one, note it, close it.
    let dead = refused_url();
    let gw = TestGateway::start_toml(&gateway_toml("m", std::slice::from_ref(&dead), "")).await;
    let resp = post(&gw, &hello(json!({}))).await;
    assert_eq!(resp.status(), 502);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_unreachable");
    // Clients learn the endpoint's label, never its address.
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("upstream m/0"), "{message}");
    let port = dead.rsplit(':').next().unwrap().trim_end_matches("/v1");
    assert!(
        !message.contains("127.0.0.1") && !message.contains(port),
        "{message}"
    );

    let mock = start_mock(zero()).await;
    set_faults(&mock, json!({"added_latency_ms": 3000})).await;
    let gw = gateway_for(&[&mock], "[defaults.timeouts]\nfirst_byte = \"200ms\"\n").await;
    let resp = post(&gw, &hello(json!({}))).await;
    assert_eq!(resp.status(), 504);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_timeout");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("first_byte"));
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_upstream_errors_total",
            &[("kind", "timeout_first_byte")]
        ),
        1.0
    );
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
/// hangs until the client gives up. Returns the URL and the sockets that keep it full.
fn unanswered_connect_url() -> (String, Vec<impl Sized>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    // Never accepted: these fill the queue (Linux admits backlog + 1).
    for _ in 0..2 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(50));
    held.push(listener);
    (format!("http://{addr}/v1"), held)
}

#[tokio::test]
async fn connect_timeout_is_504_and_a_tls_failure_is_502() {
    let (url, _held) = unanswered_connect_url();
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[url],
        "[defaults.timeouts]\nconnect = \"300ms\"\n",
    ))
    .await;
    let resp = post(&gw, &hello(json!({}))).await;
    assert_eq!(resp.status(), 504);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_timeout");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("connect"), "{message}");
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_upstream_errors_total",
            &[("kind", "timeout_connect")]
        ),
        1.0
    );

    // An https endpoint that is really a plain-HTTP server: the TLS handshake fails before
    // the request is sent, which is a 502 that says so (and safe to retry elsewhere).
    let mock = start_mock(zero()).await;
    let https = mock.base_url().replace("http://", "https://");
    let gw = TestGateway::start_toml(&gateway_toml("m", &[https], "")).await;
    let resp = post(&gw, &hello(json!({}))).await;
    assert_eq!(resp.status(), 502);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_unreachable");
    assert_eq!(
        mock_requests(&mock).await.len(),
        0,
        "nothing reached the engine"
    );
}

#[tokio::test]
async fn a_stream_broken_midway_ends_with_an_error_event() {
    let mock = start_mock(zero()).await;
    set_faults(
        &mock,
        json!({"disconnect_rate": 1.0, "disconnect_after_chunks": 3}),
    )
    .await;
    let gw = gateway_for(&[&mock], "").await;
    let resp = post(&gw, &hello(json!({"stream": true, "max_tokens": 20}))).await;
    assert_eq!(resp.status(), 200);
    let t = read_stream(resp).await;
    assert!(
        !t.ended_with_done(),
        "a broken stream must not look complete"
    );
    let last: Value = serde_json::from_str(&t.events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_broken", "{last}");
    assert!(
        t.events.len() >= 3,
        "the chunks before the break were relayed"
    );
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_upstream_errors_total",
            &[("kind", "stream_broken")]
        ),
        1.0
    );
}

#[tokio::test]
async fn stream_total_timeout_ends_with_an_error_event() {
    let mock = start_mock(slow_decode(100)).await;
    let gw = gateway_for(
        &[&mock],
        "[defaults.timeouts]\nfirst_byte = \"300ms\"\ntotal = \"400ms\"\n",
    )
    .await;
    let resp = post(
        &gw,
        &hello(json!({"stream": true, "max_tokens": 50, "ignore_eos": true})),
    )
    .await;
    let t = read_stream(resp).await;
    assert!(!t.ended_with_done());
    let last: Value = serde_json::from_str(&t.events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{last}");
}

#[tokio::test]
async fn round_robin_spreads_and_connect_failures_move_on() {
    let a = start_mock(zero()).await;
    let b = start_mock(zero()).await;
    let gw = gateway_for(&[&a, &b], "").await;
    for _ in 0..10 {
        assert_eq!(post(&gw, &hello(json!({}))).await.status(), 200);
    }
    assert_eq!(a.engine().stats().requests_total, 5);
    assert_eq!(b.engine().stats().requests_total, 5);

    let dead = refused_url();
    let live = start_mock(zero()).await;
    let gw = TestGateway::start_toml(&gateway_toml("m", &[dead, live.base_url()], "")).await;
    for _ in 0..6 {
        assert_eq!(post(&gw, &hello(json!({}))).await.status(), 200);
    }
    assert_eq!(live.engine().stats().requests_total, 6);
    let metrics = gw.metrics_text().await;
    let tried_dead = metric_value(
        &metrics,
        "sluice_upstream_errors_total",
        &[("kind", "connect")],
    );
    // Its first failure cools the dead endpoint (1 s): the requests after it go to the live
    // one first. A slow machine may see the cooldown end once or twice within the six.
    assert!(
        (1.0..=3.0).contains(&tried_dead),
        "the dead endpoint was tried first {tried_dead} times"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let mock = start_mock(slow_decode(50)).await;
    let gw = gateway_for(&[&mock], "").await;
    let resp = post(
        &gw,
        &hello(json!({"stream": true, "max_tokens": 200, "ignore_eos": true})),
    )
    .await;
    let mut body = resp.bytes_stream();
    use futures_util::StreamExt;
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(body);
    assert_eventually!(mock.engine().stats().cancelled == 1);
    assert_eq!(mock.engine().stats().completed, 0);
    assert_eventually!(
        metric_value(
            &gw.metrics_text().await,
            "sluice_requests_total",
            &[("status", "499")]
        ) == 1.0
    );
}

#[tokio::test]
async fn client_disconnect_cancels_a_waiting_unary_request() {
    let mut opts = zero();
    opts.timing.ttft_base = Duration::from_secs(5);
    let mock = start_mock(opts).await;
    let gw = gateway_for(&[&mock], "").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = client
        .post(gw.url("/v1/chat/completions"))
        .json(&hello(json!({})))
        .send()
        .await;
    assert!(result.is_err(), "the client gave up");
    assert_eventually!(mock.engine().stats().cancelled == 1);
}

/// An upstream that answers every request with 200 and `body`.
async fn fixed_upstream(body: &'static str) -> String {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let answer = service_fn(move |_req| async move {
                hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        body.as_bytes(),
                    )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), answer),
            );
        }
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn a_200_that_is_not_a_completion_is_a_502_and_usage_is_read_from_one_that_is() {
    for (body, why) in [
        (
            "<html><body>upstream maintenance</body></html>",
            "expected a JSON object",
        ),
        (
            r#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","con"#,
            "not closed",
        ),
        (r#"{"id":"c1","usage":{"prompt_tokens":"many"}}"#, "`usage`"),
    ] {
        let url = fixed_upstream(body).await;
        let gw = TestGateway::start_toml(&gateway_toml("m", &[url], "")).await;
        let resp = post(&gw, &hello(json!({}))).await;
        assert_eq!(resp.status(), 502, "{body}");
        let e: Value = resp.json().await.unwrap();
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains("not a chat completion"), "{message}");
        assert!(message.contains(why), "{message}");
    }

    // A completion with `usage` before and after nested objects that have their own.
    let body = r#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"the \"usage\": {"},"usage":{"prompt_tokens":1000,"completion_tokens":1000,"total_tokens":2000}}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;
    let url = fixed_upstream(body).await;
    let gw = TestGateway::start_toml(&gateway_toml("m", &[url], "")).await;
    let resp = post(&gw, &hello(json!({}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), body, "forwarded as it came");
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "sluice_tokens_total", &[("kind", "input")]),
        11.0
    );
    assert_eq!(
        metric_value(&metrics, "sluice_tokens_total", &[("kind", "output")]),
        7.0
    );
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413_and_not_forwarded() {
    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;
    let limit = sluice_gateway::chat::MAX_REQUEST_BYTES;
    let body = format!(
        "{{\"model\": \"m\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
        "a".repeat(limit)
    );
    let resp = post_raw(&gw, body).await;
    assert_eq!(resp.status(), 413);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("MiB"),
        "{e}"
    );
    assert_eq!(mock.engine().stats().requests_total, 0);
}

#[tokio::test]
async fn request_ids_are_echoed_generated_and_forwarded() {
    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "trace-abc-123")
        .json(&hello(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    assert!(mock
        .engine()
        .stats()
        .recent_request_ids
        .contains(&"trace-abc-123".to_string()));

    let resp = post(&gw, &hello(json!({}))).await;
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    assert!(mock
        .engine()
        .stats()
        .recent_request_ids
        .contains(&generated));

    // Error answers carry it too.
    let resp = post(&gw, &json!({"model": "nope", "messages": []})).await;
    assert!(resp.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;
    let mut output_tokens = 0;
    for _ in 0..3 {
        let v: Value = post(&gw, &hello(json!({"max_tokens": 5})))
            .await
            .json()
            .await
            .unwrap();
        output_tokens += v["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let t = read_stream(post(&gw, &hello(json!({"stream": true, "max_tokens": 4}))).await).await;
    assert!(t.ended_with_done());
    let streamed = t.token_chunks() as u64;
    output_tokens += streamed;
    post(
        &gw,
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;

    let m = gw.metrics_text().await;
    assert_eq!(
        metric_value(
            &m,
            "sluice_requests_total",
            &[("model", "m"), ("status", "200")]
        ),
        4.0
    );
    assert_eq!(
        metric_value(&m, "sluice_requests_total", &[("status", "404")]),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_tokens_total",
            &[("model", "m"), ("kind", "output")]
        ),
        output_tokens as f64
    );
    assert!(
        metric_value(
            &m,
            "sluice_tokens_total",
            &[("model", "m"), ("kind", "input")]
        ) > 0.0
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_request_duration_seconds_count",
            &[("model", "m")]
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_gateway_overhead_seconds_count",
            &[("model", "m")]
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &m,
            "sluice_time_to_first_token_seconds_count",
            &[("model", "m")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(&m, "sluice_requests_in_flight", &[("model", "m")]),
        0.0
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_stream_finish() {
    let mock = start_mock(slow_decode(20)).await;
    let mut gw = gateway_for(&[&mock], "").await;
    let resp = post(
        &gw,
        &hello(json!({"stream": true, "max_tokens": 25, "ignore_eos": true})),
    )
    .await;
    let addr = gw.addr;
    gw.begin_shutdown();
    let t = read_stream(resp).await;
    assert!(t.ended_with_done(), "the stream finished during the drain");
    let tokens = t.token_chunks();
    assert_eq!(tokens, 25, "every token of the answer arrived");
    gw.shutdown().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn drain_timeout_cuts_streams_that_run_too_long() {
    let mock = start_mock(slow_decode(100)).await;
    let urls = [mock.base_url()];
    let toml =
        gateway_toml("m", &urls, "").replace("drain_timeout = \"5s\"", "drain_timeout = \"300ms\"");
    let gw = TestGateway::start_toml(&toml).await;
    let resp = post(
        &gw,
        &hello(json!({"stream": true, "max_tokens": 100, "ignore_eos": true})),
    )
    .await;
    let reader = tokio::spawn(read_stream(resp));
    gw.shutdown().await.unwrap();
    drop(mock);
    let t = reader.await.unwrap();
    assert!(
        !t.ended_with_done(),
        "a 10 s stream cannot finish in a 300 ms drain"
    );
}

#[tokio::test]
async fn models_health_and_readiness() {
    let mock = start_mock(zero()).await;
    let gw = gateway_for(&[&mock], "").await;
    let models: Value = reqwest::get(gw.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "m");
    assert_eq!(reqwest::get(gw.url("/health")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(gw.url("/ready")).await.unwrap().status(), 200);
    let missing = reqwest::get(gw.url("/v2/nothing")).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.json::<Value>().await.unwrap()["error"]["message"].is_string());

    let dead = refused_url();
    let gw = TestGateway::start_toml(&gateway_toml("m", &[dead], "")).await;
    let resp = reqwest::get(gw.url("/ready")).await.unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["models_without_reachable_endpoint"], json!(["m"]));
    assert_eq!(reqwest::get(gw.url("/health")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn worker_pool_serves_on_every_worker_shares_metrics_and_drains() {
    let mock = start_mock(slow_decode(20)).await;
    let toml = gateway_toml("m", &[mock.base_url()], "").replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\nworkers = 3",
    );
    let path = std::path::Path::new("pool.toml");
    let config = sluice_gateway::Config::from_toml(&toml, path)
        .unwrap()
        .resolve(path, &|_| None)
        .unwrap();
    let pool = sluice_gateway::WorkerPool::start(&config).await.unwrap();
    assert_eq!(pool.workers(), 3);
    let base = format!("http://{}", pool.local_addr());

    // Separate clients open separate connections, which the kernel spreads over the workers.
    // One request at a time, so each worker that served any opened exactly one upstream
    // connection (its own pool's; an idle one is reused): three opened means every worker
    // served. The kernel hashes each new client port, so all three are reached long before
    // the bound (a worker missing 60 connections in a row: about 1 in 10^10).
    let mut sent = 0;
    let metrics = loop {
        let resp = reqwest::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .json(&hello(json!({"max_tokens": 3})))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        sent += 1;
        // Whichever worker serves /metrics reports the requests of all of them.
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let opened = metric_value(&metrics, "sluice_upstream_connections_opened_total", &[]);
        assert!(
            opened <= 3.0,
            "{opened} connections for sequential requests"
        );
        if opened == 3.0 || sent == 60 {
            break metrics;
        }
    };
    assert_eq!(
        metric_value(&metrics, "sluice_requests_total", &[("status", "200")]),
        f64::from(sent)
    );
    let opened = metric_value(&metrics, "sluice_upstream_connections_opened_total", &[]);
    assert_eq!(
        opened, 3.0,
        "after {sent} clients, not every worker had served one"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_upstream_connections",
            &[("state", "idle")]
        ),
        opened
    );
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_upstream_connections",
            &[("state", "connecting")]
        ),
        0.0
    );
    assert_eq!(
        metric_value(&metrics, "sluice_upstream_connection_waiters", &[]),
        0.0
    );
    // Endpoints are labelled by name (`MODEL/INDEX` by default), never by URL.
    assert!(metrics.contains("endpoint=\"m/0\""), "{metrics}");
    assert!(!metrics.contains(mock.base_url().trim_end_matches("/v1")));

    // A stream in flight when shutdown begins still finishes.
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&hello(
            json!({"stream": true, "max_tokens": 20, "ignore_eos": true}),
        ))
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(read_stream(resp));
    pool.shutdown().await.unwrap();
    let t = reader.await.unwrap();
    assert!(t.ended_with_done());
    assert_eq!(t.token_chunks(), 20);
}

#[tokio::test]
async fn worker_pool_refuses_a_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let toml = gateway_toml("m", &[refused_url()], "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", taken.local_addr().unwrap()),
    );
    let path = std::path::Path::new("pool.toml");
    let config = sluice_gateway::Config::from_toml(&toml, path)
        .unwrap()
        .resolve(path, &|_| None)
        .unwrap();
    let err = sluice_gateway::WorkerPool::start(&config)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
}

/// Reads until `seen` holds one whole request (its head, then a body as long as its
/// `content-length` says); its length, or `None` when the connection ends first.
async fn read_request(
    conn: &mut (impl tokio::io::AsyncRead + Unpin),
    seen: &mut Vec<u8>,
) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(seen);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return Some(end + 4 + length);
            }
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An upstream that answers every request with the raw bytes `answer`, then closes.
async fn raw_upstream(answer: &'static [u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                if read_request(&mut conn, &mut seen).await.is_some() {
                    let _ = conn.write_all(answer).await;
                }
            });
        }
    });
    format!("http://{addr}/v1")
}

/// The gateway asks for identity; an answer under a content coding or a transfer coding it
/// would have to decode is a 502 naming the coding, never encoded bytes passed on unlabelled.
#[tokio::test]
async fn encoded_upstream_answers_are_refused_naming_the_coding() {
    for (answer, coding) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: 4\r\n\r\nabcd"[..],
            "`gzip`",
        ),
        (
            b"HTTP/1.1 400 Bad Request\r\ncontent-encoding: br\r\ncontent-length: 4\r\n\r\nabcd",
            "`br`",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
            "`gzip, chunked`",
        ),
    ] {
        let url = raw_upstream(answer).await;
        let gw = TestGateway::start_toml(&gateway_toml("m", &[url], "")).await;
        let resp = post(&gw, &hello(json!({}))).await;
        assert_eq!(resp.status(), 502, "{coding}");
        assert_eq!(resp.headers().get("content-encoding"), None);
        let e: Value = resp.json().await.unwrap();
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(coding), "{message}");
    }
}

/// A successful answer larger than `server.max_response_bytes` is a 502, not buffered.
#[tokio::test]
async fn an_answer_over_max_response_bytes_is_a_502() {
    // One whose length is announced, and a chunked one, whose length is not.
    let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1000\r\n".to_vec();
    chunked.extend_from_slice(&[b'a'; 4096]);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let answers: [&'static [u8]; 2] = [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n",
        Box::leak(chunked.into_boxed_slice()),
    ];
    for answer in answers {
        let url = raw_upstream(answer).await;
        let gw = TestGateway::start_toml(&gateway_toml("m", &[url], "max_response_bytes = 2048\n"))
            .await;
        let resp = post(&gw, &hello(json!({}))).await;
        assert_eq!(resp.status(), 502);
        let e: Value = resp.json().await.unwrap();
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains("max_response_bytes"), "{message}");
    }
}

/// Waiting for a connection (here: a connect that hangs) is the gateway's own queueing:
/// when the first-byte deadline passes during it, nothing was sent, so the request moves to
/// the next endpoint, and the timeout is counted as `timeout_pool_wait`, not `first_byte`.
#[tokio::test]
async fn a_timeout_while_waiting_for_a_connection_moves_to_the_next_endpoint() {
    let (hung, _held) = unanswered_connect_url();
    let live = start_mock(zero()).await;
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[hung, live.base_url()],
        "[defaults.timeouts]\nconnect = \"5s\"\nfirst_byte = \"300ms\"\n",
    ))
    .await;
    // Round robin starts the first request at the hung endpoint.
    let resp = post(&gw, &hello(json!({}))).await;
    assert_eq!(resp.status(), 200);
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_upstream_errors_total",
            &[("endpoint", "m/0"), ("kind", "timeout_pool_wait")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_upstream_pool_wait_seconds_count",
            &[("endpoint", "m/1")]
        ),
        1.0
    );
}

/// An upstream that answers each request with a valid completion and then, 300 ms after the
/// first answer on each connection, sends a second, unsolicited response on it. Returns the
/// URL and how many unsolicited responses it has sent.
async fn upstream_with_unsolicited_answers() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    const VALID: &str = r#"{"id":"valid","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    const UNSOLICITED: &str = r#"{"id":"unsolicited","object":"chat.completion","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}"#;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let (mut rd, wr) = conn.into_split();
                let wr = Arc::new(tokio::sync::Mutex::new(wr));
                let mut seen = Vec::new();
                let mut first = true;
                loop {
                    let Some(request_len) = read_request(&mut rd, &mut seen).await else {
                        return;
                    };
                    seen.drain(..request_len);
                    let answer = |body: &str| {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let _ = wr.lock().await.write_all(answer(VALID).as_bytes()).await;
                    if std::mem::take(&mut first) {
                        let (wr, counter) = (wr.clone(), counter.clone());
                        let stray = answer(UNSOLICITED);
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let _ = wr.lock().await.write_all(stray.as_bytes()).await;
                            counter.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                }
            });
        }
    });
    (format!("http://{addr}/v1"), sent)
}

/// A connection on which bytes arrived while it was idle is never used again, so no client
/// receives a response meant for no request (or another one).
#[tokio::test]
async fn bytes_arriving_on_an_idle_upstream_connection_reach_no_client() {
    use std::sync::atomic::Ordering;
    let (url, unsolicited) = upstream_with_unsolicited_answers().await;
    let gw = TestGateway::start_toml(&gateway_toml("m", &[url], "")).await;
    let mut bodies = Vec::new();
    // Two in a row on the first connection, most likely before its stray answer comes.
    for _ in 0..2 {
        let resp = post(&gw, &hello(json!({}))).await;
        assert_eq!(resp.status(), 200);
        bodies.push(resp.text().await.unwrap());
    }
    assert_eventually!(unsolicited.load(Ordering::SeqCst) == 1);
    // Later requests: the connection the stray answer sits on must not carry them.
    for _ in 0..3 {
        let resp = post(&gw, &hello(json!({}))).await;
        assert_eq!(resp.status(), 200);
        bodies.push(resp.text().await.unwrap());
    }
    for body in &bodies {
        assert!(body.contains("\"valid\""), "{body}");
    }
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "sluice_tokens_total", &[("kind", "input")]),
        5.0,
        "only the five real answers were counted"
    );
}

/// An answer the gateway refused (a 200 that is not a completion) closes its connection:
/// the next request opens a new one.
#[tokio::test]
async fn a_refused_answer_closes_its_upstream_connection() {
    let url = fixed_upstream("<html>maintenance</html>").await;
    let gw = TestGateway::start_toml(&gateway_toml("m", &[url], "")).await;
    for _ in 0..2 {
        assert_eq!(post(&gw, &hello(json!({}))).await.status(), 502);
    }
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "sluice_upstream_connections_opened_total", &[]),
        2.0
    );
}

/// One SSE line longer than the parser's bound ends the stream with an error event instead
/// of growing a buffer without limit.
#[tokio::test]
async fn an_sse_line_over_the_limit_ends_the_stream_with_an_error() {
    let line = sluice_api::sse::SseParser::MAX_LINE + 1024;
    let mut body = b"data: ".to_vec();
    body.resize(6 + line, b'a');
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let url = raw_upstream(Box::leak(answer.into_boxed_slice())).await;
    let gw = TestGateway::start_toml(&gateway_toml("m", &[url], "")).await;
    let resp = post(&gw, &hello(json!({"stream": true}))).await;
    assert_eq!(resp.status(), 200);
    let t = read_stream(resp).await;
    assert!(!t.ended_with_done());
    let last = t.datas().last().map(|d| d.to_string()).unwrap_or_default();
    assert!(last.contains("size limit"), "{last}");
}
