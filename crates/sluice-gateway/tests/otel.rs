//! OpenTelemetry traces: a real gateway exports its spans over OTLP/HTTP to a collector
//! started by the test (`sluice_testkit::otlp`, which decodes them with the OpenTelemetry
//! project's own protobuf types), and the trace context reaches the mock engine upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{json, Value};
use sluice_testkit::otlp::{Attr, OtlpReceiver, ReceivedSpan};
use sluice_testkit::{
    assert_eventually, gateway_toml, metric_value, read_stream, refused_url, start_mock,
    MockOptions, TestGateway,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const STATUS_ERROR: i32 = 2;

fn otel(receiver_endpoint: &str, extra: &str) -> String {
    format!("[otel]\nendpoint = \"{receiver_endpoint}\"\n{extra}\n")
}

async fn chat(gw: &TestGateway, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn question(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 5,
           "messages": [{"role": "user", "content": "what is a sluice?"}]})
}

/// What the mock engine received last: its `traceparent` and `tracestate`.
async fn upstream_trace_headers(mock_base: &str) -> (Option<String>, Option<String>) {
    let url = mock_base.replace("/v1", "/admin/requests");
    let log: Vec<Value> = reqwest::get(url).await.unwrap().json().await.unwrap();
    let last = log.last().unwrap();
    let field = |name: &str| last[name].as_str().map(str::to_owned);
    (field("traceparent"), field("tracestate"))
}

fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

fn int(span: &ReceivedSpan, key: &str) -> i64 {
    span.attr(key)
        .and_then(Attr::as_int)
        .unwrap_or_else(|| panic!("{key} of {span:#?}"))
}

fn text<'a>(span: &'a ReceivedSpan, key: &str) -> &'a str {
    span.attr(key)
        .and_then(Attr::as_str)
        .unwrap_or_else(|| panic!("{key} of {span:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_of_its_phases_and_upstream_call_with_genai_attributes() {
    let receiver = OtlpReceiver::start().await;
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        &otel(&receiver.endpoint(), ""),
    ))
    .await;
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let resp = chat(
        &gw,
        question("m", false),
        &[
            ("traceparent", &traceparent),
            ("tracestate", "vendor=abc,other=1"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let answer: Value = resp.json().await.unwrap();

    // Server span, five phases (no keys, cache or limiter configured), one upstream call.
    assert_eventually!(receiver.trace(TRACE).len() == 7);
    let spans = receiver.trace(TRACE);
    let root = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(root.name, "chat m");
    assert_eq!(
        root.parent_span_id, CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(root.trace_state, "vendor=abc,other=1");
    assert_eq!(text(root, "gen_ai.operation.name"), "chat");
    assert_eq!(text(root, "gen_ai.request.model"), "m");
    assert_eq!(
        int(root, "gen_ai.usage.input_tokens"),
        answer["usage"]["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        int(root, "gen_ai.usage.output_tokens"),
        answer["usage"]["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(int(root, "http.response.status_code"), 200);
    assert_eq!(text(root, "http.route"), "/v1/chat/completions");
    assert_eq!(text(root, "sluice.request_id"), request_id);
    assert_eq!(text(root, "sluice.endpoint"), "m/0");
    assert_eq!(root.attr("sluice.stream"), Some(&Attr::Bool(false)));
    assert_eq!(root.status_code, 0);
    assert_eq!(root.flags & 0xff, 1, "sampled");
    assert_eq!(text_of(&root.resource, "service.name"), "sluice");
    assert_eq!(root.scope_name, "sluice-gateway");

    // The phases, in order, children of the server span, inside it and one after the other.
    let phases: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == INTERNAL).collect();
    let names: Vec<&str> = phases.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["parse", "resolve_model", "route", "upstream", "respond"]
    );
    let mut previous_end = root.start_unix_nano;
    for phase in &phases {
        assert_eq!(phase.parent_span_id, root.span_id, "{}", phase.name);
        assert!(phase.start_unix_nano >= previous_end, "{phase:#?}");
        assert!(phase.end_unix_nano >= phase.start_unix_nano);
        assert!(phase.end_unix_nano <= root.end_unix_nano);
        previous_end = phase.end_unix_nano;
    }

    // The upstream call: a client span under the upstream phase, whose id went upstream.
    let call = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    assert_eq!(call.parent_span_id, by_name(&spans, "upstream").span_id);
    assert_eq!(call.name, "chat m");
    assert_eq!(text(call, "sluice.endpoint"), "m/0");
    assert_eq!(text(call, "server.address"), "127.0.0.1");
    assert_eq!(
        int(call, "server.port"),
        i64::from(mock.local_addr().port())
    );
    assert_eq!(int(call, "http.response.status_code"), 200);
    let (sent_parent, sent_state) = upstream_trace_headers(&mock.base_url()).await;
    assert_eq!(
        sent_parent.as_deref(),
        Some(format!("00-{TRACE}-{}-01", call.span_id).as_str())
    );
    assert_eq!(sent_state.as_deref(), Some("vendor=abc,other=1"));

    gw.shutdown().await.unwrap();
    assert_eq!(receiver.spans().len(), 7);
}

fn text_of<'a>(attrs: &'a std::collections::BTreeMap<String, Attr>, key: &str) -> &'a str {
    attrs.get(key).and_then(Attr::as_str).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_traced_to_its_end_with_the_usage_of_its_last_chunk() {
    let receiver = OtlpReceiver::start().await;
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        &otel(&receiver.endpoint(), ""),
    ))
    .await;
    let mut body = question("m", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = chat(&gw, body, &[]).await;
    assert_eq!(resp.status(), 200);
    let transcript = read_stream(resp).await;
    assert!(transcript.ended_with_done());
    let usage = transcript
        .chunks()
        .into_iter()
        .find_map(|c| c.get("usage").filter(|u| !u.is_null()).cloned())
        .unwrap();

    assert_eventually!(receiver.spans().len() == 7);
    let spans = receiver.spans();
    let root = spans.iter().find(|s| s.kind == SERVER).unwrap();
    // No traceparent from the client: a trace of its own, without a parent.
    assert_eq!(root.parent_span_id, "");
    assert_ne!(root.trace_id, TRACE);
    assert!(spans.iter().all(|s| s.trace_id == root.trace_id));
    assert_eq!(root.attr("sluice.stream"), Some(&Attr::Bool(true)));
    assert_eq!(
        int(root, "gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        int(root, "gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64().unwrap()
    );
    // The respond phase lasts until the stream's end, which ends the request.
    let respond = by_name(&spans, "respond");
    assert_eq!(respond.end_unix_nano, root.end_unix_nano);
    let call = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    assert_eq!(call.end_unix_nano, root.end_unix_nano);
    let (sent_parent, _) = upstream_trace_headers(&mock.base_url()).await;
    assert_eq!(
        sent_parent.unwrap(),
        format!("00-{}-{}-01", root.trace_id, call.span_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_mark_the_spans_where_they_happened() {
    let receiver = OtlpReceiver::start().await;
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[refused_url()],
        &otel(&receiver.endpoint(), ""),
    ))
    .await;
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let resp = chat(&gw, question("m", false), &[("traceparent", &traceparent)]).await;
    assert_eq!(resp.status(), 502);
    assert_eventually!(receiver.trace(TRACE).len() == 6);
    let spans = receiver.trace(TRACE);
    let root = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(root.status_code, STATUS_ERROR);
    assert_eq!(text(root, "error.type"), "connect");
    assert_eq!(int(root, "http.response.status_code"), 502);
    let upstream = by_name(&spans, "upstream");
    assert_eq!(upstream.status_code, STATUS_ERROR, "the phase that failed");
    assert_eq!(by_name(&spans, "route").status_code, 0);
    let call = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    assert_eq!(call.status_code, STATUS_ERROR);
    assert_eq!(text(call, "error.type"), "connect");

    // A client error is not the server's: the server span's status stays unset.
    let other = "0af7651916cd43dd8448eb211c80319c";
    let resp = chat(
        &gw,
        question("nope", false),
        &[("traceparent", &format!("00-{other}-{CALLER_SPAN}-01"))],
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eventually!(receiver.trace(other).len() == 3);
    let spans = receiver.trace(other);
    let root = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(root.status_code, 0);
    assert_eq!(text(root, "error.type"), "404");
    assert_eq!(root.name, "chat nope");
    assert_eq!(by_name(&spans, "resolve_model").status_code, STATUS_ERROR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_caller_and_the_ratio_and_unsampled_traces_still_propagate() {
    let receiver = OtlpReceiver::start().await;
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        &otel(&receiver.endpoint(), "sample_ratio = 0.0"),
    ))
    .await;

    // Ratio 0, no caller: not recorded, but the upstream still joins a trace (not sampled).
    assert_eq!(chat(&gw, question("m", false), &[]).await.status(), 200);
    let (sent, _) = upstream_trace_headers(&mock.base_url()).await;
    let sent = sent.unwrap();
    assert!(sent.starts_with("00-") && sent.ends_with("-00"), "{sent}");

    // The caller did not sample: neither does the gateway; its trace id goes on.
    let unsampled = format!("00-{TRACE}-{CALLER_SPAN}-00");
    assert_eq!(
        chat(&gw, question("m", false), &[("traceparent", &unsampled)])
            .await
            .status(),
        200
    );
    let (sent, _) = upstream_trace_headers(&mock.base_url()).await;
    let sent = sent.unwrap();
    assert!(sent.starts_with(&format!("00-{TRACE}-")) && sent.ends_with("-00"));
    assert!(!sent.contains(CALLER_SPAN), "a span of its own: {sent}");

    // The caller sampled: recorded whatever the ratio.
    let sampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let sampled = format!("00-{sampled_trace}-{CALLER_SPAN}-01");
    assert_eq!(
        chat(&gw, question("m", false), &[("traceparent", &sampled)])
            .await
            .status(),
        200
    );
    // A header that breaks the W3C rules (uppercase hex) is ignored: a new, unsampled trace.
    let invalid = format!("00-{}-{CALLER_SPAN}-01", TRACE.to_uppercase());
    assert_eq!(
        chat(&gw, question("m", false), &[("traceparent", &invalid)])
            .await
            .status(),
        200
    );
    let (sent, _) = upstream_trace_headers(&mock.base_url()).await;
    let sent = sent.unwrap();
    assert!(
        !sent.to_lowercase().contains(TRACE) && sent.ends_with("-00"),
        "{sent}"
    );

    // Shutdown exports what is queued: only the sampled request's spans arrive.
    gw.shutdown().await.unwrap();
    let spans = receiver.spans();
    assert_eq!(spans.len(), 7, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == sampled_trace));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_off_send_no_trace_context_upstream() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = TestGateway::start_toml(&gateway_toml("m", &[mock.base_url()], "")).await;
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let resp = chat(&gw, question("m", false), &[("traceparent", &traceparent)]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream_trace_headers(&mock.base_url()).await, (None, None));
    assert!(!gw.metrics_text().await.contains("sluice_otel_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_refuses_for_a_while_gets_the_spans_on_retry() {
    let receiver = OtlpReceiver::start().await;
    receiver.refuse_next(2);
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        &otel(&receiver.endpoint(), ""),
    ))
    .await;
    assert_eq!(chat(&gw, question("m", false), &[]).await.status(), 200);
    assert_eventually!(receiver.spans().len() == 7);
    assert_eq!(receiver.refused(), 2);
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "sluice_otel_spans_exported_total", &[]),
        7.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_otel_spans_dropped_total",
            &[("reason", "export_failed")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_spans_counted_never_requests() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dead = refused_url().trim_end_matches("/v1").to_owned();
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        &otel(&dead, "timeout = \"2s\""),
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, question("m", false), &[]).await.status(), 200);
    }
    assert_eventually!(
        metric_value(
            &gw.metrics_text().await,
            "sluice_otel_spans_dropped_total",
            &[("reason", "export_failed")]
        ) == 21.0,
        Duration::from_secs(20)
    );
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "sluice_otel_spans_exported_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_ends_the_trace_in_the_authenticate_phase() {
    let receiver = OtlpReceiver::start().await;
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "data_dir = \"{}\"\n[auth]\nmode = \"keys\"\n{}",
        dir.path().display(),
        otel(&receiver.endpoint(), "")
    );
    let gw = TestGateway::start_toml(&gateway_toml("m", &[mock.base_url()], &extra)).await;
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let resp = chat(
        &gw,
        question("m", false),
        &[
            ("traceparent", &traceparent),
            ("authorization", "Bearer sk-sluice-unknown"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert_eventually!(receiver.trace(TRACE).len() == 2);
    let spans = receiver.trace(TRACE);
    let root = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(text(root, "error.type"), "401");
    assert_eq!(root.status_code, 0, "a client error");
    let auth = by_name(&spans, "authenticate");
    assert_eq!(auth.parent_span_id, root.span_id);
    assert_eq!(auth.status_code, STATUS_ERROR);
    assert!(spans
        .iter()
        .all(|s| !format!("{s:?}").contains("sk-sluice-unknown")));
}
