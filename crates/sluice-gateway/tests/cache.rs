//! The inference cache through a real gateway: the embedded store (memory front over the
//! SQLite file in a temporary data directory), a real mock engine upstream counting what it
//! is asked, and the mock's fault knobs producing what must never be stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_testkit::{
    assert_eventually, gateway_toml, metric_value, start_mock, MockOptions, MockServer, TestGateway,
};

fn toml(mock: &MockServer, data_dir: &Path, mode: &str, extra: &str) -> String {
    gateway_toml(
        "m",
        &[mock.base_url()],
        &format!("data_dir = \"{}\"\n{extra}", data_dir.display()),
    ) + &format!("[models.m.cache]\nmode = \"{mode}\"\n")
}

fn question(extra: Value) -> Value {
    let mut body = json!({"model": "m", "max_tokens": 6,
                          "messages": [{"role": "user", "content": "what is a sluice?"}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

async fn ask(gw: &TestGateway, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(body);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.send().await.unwrap()
}

/// `x-sluice-cache` of the answer, after checking it succeeded.
async fn outcome(gw: &TestGateway, body: &Value, headers: &[(&str, &str)]) -> String {
    let resp = ask(gw, body, headers).await;
    assert_eq!(resp.status(), 200);
    let o = resp.headers()["x-sluice-cache"]
        .to_str()
        .unwrap()
        .to_owned();
    resp.bytes().await.unwrap();
    o
}

fn upstream_calls(mock: &MockServer) -> u64 {
    mock.engine().stats().requests_total
}

async fn writes(gw: &TestGateway) -> f64 {
    metric_value(&gw.metrics_text().await, "sluice_cache_writes_total", &[])
}

async fn skipped(gw: &TestGateway, reason: &str) -> f64 {
    metric_value(
        &gw.metrics_text().await,
        "sluice_cache_skipped_writes_total",
        &[("reason", reason)],
    )
}

fn bearer(dir: &Path, name: &str, tenant: &str, scopes: &str) -> String {
    sluice_testkit::api_key(dir, name, tenant, scopes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_reads_and_writes_as_named_and_a_request_may_override_it() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&toml(&mock, dir.path(), "off", "")).await;
    let q = question(json!({}));

    // The model's default is off: neither read nor written.
    assert_eq!(outcome(&gw, &q, &[]).await, "bypass");
    assert_eq!(outcome(&gw, &q, &[]).await, "bypass");
    assert_eq!(upstream_calls(&mock), 2);
    // read_only: reads (a miss), writes nothing.
    assert_eq!(
        outcome(&gw, &q, &[("x-sluice-cache", "read_only")]).await,
        "miss"
    );
    assert_eq!(
        outcome(&gw, &q, &[("x-sluice-cache", "read_only")]).await,
        "miss"
    );
    assert_eq!(upstream_calls(&mock), 4);
    // write_only: does not read, but stores; then a read hits without the upstream.
    assert_eq!(
        outcome(&gw, &q, &[("x-sluice-cache", "write_only")]).await,
        "bypass"
    );
    assert_eq!(upstream_calls(&mock), 5);
    assert_eq!(
        outcome(&gw, &q, &[("x-sluice-cache", "read_only")]).await,
        "hit"
    );
    assert_eq!(upstream_calls(&mock), 5);
    // on, through the body field (for SDKs that cannot set headers): a hit too.
    let with_field = question(json!({"sluice": {"cache": {"mode": "on"}}}));
    assert_eq!(outcome(&gw, &with_field, &[]).await, "hit");
    // A header wins over the body field.
    assert_eq!(
        outcome(&gw, &with_field, &[("x-sluice-cache", "off")]).await,
        "bypass"
    );
    assert_eq!(upstream_calls(&mock), 6);
    // The gateway's own field never goes upstream.
    let log: Vec<Value> = reqwest::get(mock.base_url().replace("/v1", "/admin/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = &log.last().unwrap()["body"];
    assert!(last.get("sluice").is_none(), "{last}");
    assert_eq!(last["model"], "m");

    let metrics = gw.metrics_text().await;
    let lookups = |o: &str| metric_value(&metrics, "sluice_cache_lookups_total", &[("outcome", o)]);
    assert_eq!(
        (lookups("hit"), lookups("miss"), lookups("bypass")),
        (2.0, 2.0, 4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_the_stored_answer_under_a_fresh_id_with_the_tokens_it_saved() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&toml(&mock, dir.path(), "on", "")).await;
    let q = question(json!({"temperature": 1}));
    let first = ask(&gw, &q, &[]).await;
    assert_eq!(first.headers()["x-sluice-cache"], "miss");
    let first: Value = first.json().await.unwrap();
    // Same question, other spelling: key order, an ignored field, a number written 1.0.
    let respelled = json!({"messages": [{"content": "what is a sluice?", "role": "user"}],
                           "temperature": 1.0, "max_tokens": 6, "model": "m",
                           "user": "someone-else"});
    let hit = ask(&gw, &respelled, &[]).await;
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()["x-sluice-cache"], "hit");
    assert!(hit.headers().contains_key("x-request-id"));
    let hit: Value = hit.json().await.unwrap();
    assert_eq!(hit["choices"], first["choices"]);
    assert_ne!(hit["id"], first["id"]);
    assert_eq!(hit["usage"]["prompt_tokens"], 0);
    assert_eq!(hit["usage"]["completion_tokens"], 0);
    assert_eq!(
        hit["usage"]["sluice_cache_saved"],
        json!({"prompt_tokens": first["usage"]["prompt_tokens"],
               "completion_tokens": first["usage"]["completion_tokens"]})
    );
    assert_eq!(upstream_calls(&mock), 1);
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_cache_tokens_saved_total",
            &[("kind", "output")]
        ),
        first["usage"]["completion_tokens"].as_f64().unwrap()
    );
    // The hit counted no upstream tokens.
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_tokens_total",
            &[("model", "m"), ("kind", "output")]
        ),
        first["usage"]["completion_tokens"].as_f64().unwrap()
    );
    // A different question misses.
    let other = question(json!({"temperature": 0.5}));
    assert_eq!(outcome(&gw, &other, &[]).await, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_bounds_what_a_read_accepts_and_bad_options_are_named() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&toml(&mock, dir.path(), "on", "")).await;
    let q = question(json!({}));
    assert_eq!(outcome(&gw, &q, &[]).await, "miss");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        outcome(&gw, &q, &[("x-sluice-cache-max-age", "0")]).await,
        "miss"
    );
    assert_eq!(
        outcome(&gw, &q, &[("x-sluice-cache-max-age", "3600")]).await,
        "hit"
    );

    for (headers, body, param) in [
        (
            vec![("x-sluice-cache", "yes")],
            question(json!({})),
            "x-sluice-cache",
        ),
        (
            vec![("x-sluice-cache-max-age", "1h")],
            question(json!({})),
            "x-sluice-cache-max-age",
        ),
        (
            vec![],
            question(json!({"sluice": {"cache": {"mode": "sometimes"}}})),
            "sluice.cache.mode",
        ),
        (
            vec![],
            question(json!({"sluice": {"cach": {}}})),
            "sluice.cach",
        ),
    ] {
        let resp = ask(&gw, &body, &headers).await;
        assert_eq!(resp.status(), 400, "{param}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["param"], param);
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_a_restart_and_failures_are_never_stored() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = toml(&mock, dir.path(), "on", "");
    let q = question(json!({}));
    let gw = TestGateway::start_toml(&config).await;
    assert_eq!(outcome(&gw, &q, &[]).await, "miss");
    assert_eventually!(writes(&gw).await == 1.0);
    gw.shutdown().await.unwrap();

    // A new gateway on the same data directory: its memory is empty, the file is not.
    let gw = TestGateway::start_toml(&config).await;
    assert_eq!(outcome(&gw, &q, &[]).await, "hit");
    assert_eq!(upstream_calls(&mock), 1);

    // An upstream error is not stored: the same question misses again once it recovers.
    patch_faults(&mock, json!({"error_rate": 1.0, "error_status": 500})).await;
    let other = question(json!({"max_tokens": 3}));
    assert_eq!(ask(&gw, &other, &[]).await.status(), 502);
    patch_faults(&mock, json!({"error_rate": 0.0})).await;
    assert_eq!(outcome(&gw, &other, &[]).await, "miss");
    assert_eq!(skipped(&gw, "request_failed").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_stored_only_when_they_fit_the_offered_tools() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&toml(&mock, dir.path(), "on", "")).await;
    let tools = json!({"tools": [{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]});
    let q = question(tools.clone());
    let first = ask(&gw, &q, &[]).await;
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(outcome(&gw, &q, &[]).await, "hit");

    // Arguments cut in half (the mock's fault): never stored.
    patch_faults(&mock, json!({"invalid_tool_args_rate": 1.0})).await;
    let broken = question(json!({"tools": tools["tools"], "max_tokens": 7}));
    assert_eq!(outcome(&gw, &broken, &[]).await, "miss");
    assert_eq!(outcome(&gw, &broken, &[]).await, "miss");
    assert_eq!(skipped(&gw, "tool_arguments_not_json").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_never_reads_anothers_entry() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let ha = bearer(dir.path(), "a-key", "a", "chat:write");
    let hb = bearer(dir.path(), "b-key", "b", "chat:write");
    let gw =
        TestGateway::start_toml(&toml(&mock, dir.path(), "on", "[auth]\nmode = \"keys\"\n")).await;
    let q = question(json!({}));
    assert_eq!(outcome(&gw, &q, &[("authorization", &ha)]).await, "miss");
    assert_eq!(outcome(&gw, &q, &[("authorization", &ha)]).await, "hit");
    assert_eq!(outcome(&gw, &q, &[("authorization", &hb)]).await, "miss");
    assert_eq!(outcome(&gw, &q, &[("authorization", &hb)]).await, "hit");
    assert_eq!(upstream_calls(&mock), 2);
}

/// The data of every event of a streamed answer, `[DONE]` last.
async fn stream_events(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The text a stream's chunks carry, and whether it ended with `[DONE]`.
fn streamed_text(events: &[String]) -> (String, bool) {
    let mut text = String::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(e).unwrap();
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
    }
    (text, events.last().map(String::as_str) == Some("[DONE]"))
}

async fn patch_faults(mock: &MockServer, faults: Value) {
    sluice_testkit::patch_mock_faults(mock, faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_stored_at_done_and_serves_streams_and_completions() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&toml(&mock, dir.path(), "on", "")).await;
    let streaming = question(json!({"stream": true, "max_tokens": 12}));
    let first = ask(&gw, &streaming, &[]).await;
    assert_eq!(first.headers()["x-sluice-cache"], "miss");
    let (text, done) = streamed_text(&stream_events(first).await);
    assert!(done && !text.is_empty());
    assert_eventually!(writes(&gw).await == 1.0);

    // The same question streamed again: the same text, from the cache, under one fresh id.
    let again = ask(&gw, &streaming, &[]).await;
    assert_eq!(again.headers()["x-sluice-cache"], "hit");
    let events = stream_events(again).await;
    assert_eq!(streamed_text(&events), (text.clone(), true));
    let ids: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one id for the whole replay");
    // No usage chunk for a client that did not ask; one, zeroed, for one that did.
    assert!(!events.iter().any(|e| e.contains("\"usage\":{")));
    let with_usage = question(json!({"stream": true, "max_tokens": 12,
                                     "stream_options": {"include_usage": true}}));
    let events = stream_events(ask(&gw, &with_usage, &[]).await).await;
    let usage: Value = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .find(|c| c["usage"].is_object())
        .unwrap()["usage"]
        .clone();
    assert_eq!(usage["completion_tokens"], 0);
    assert!(
        usage["sluice_cache_saved"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // A non-streaming request is answered with the completion the stored stream adds up to.
    let whole = ask(&gw, &question(json!({"max_tokens": 12})), &[]).await;
    assert_eq!(whole.headers()["x-sluice-cache"], "hit");
    let whole: Value = whole.json().await.unwrap();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["content"], text);
    assert_eq!(upstream_calls(&mock), 1);

    // And the other way round: a stored completion streams.
    let completion_first = question(json!({"max_tokens": 9}));
    let stored: Value = ask(&gw, &completion_first, &[]).await.json().await.unwrap();
    assert_eventually!(writes(&gw).await == 2.0);
    let events = stream_events(
        ask(
            &gw,
            &question(json!({"max_tokens": 9, "stream": true})),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(
        streamed_text(&events),
        (
            stored["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
            true
        )
    );
    assert_eq!(upstream_calls(&mock), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_is_never_stored() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&toml(&mock, dir.path(), "on", "")).await;
    patch_faults(
        &mock,
        json!({"disconnect_rate": 1.0, "disconnect_after_chunks": 3}),
    )
    .await;
    let streaming = question(json!({"stream": true, "max_tokens": 20}));
    let (_, done) = streamed_text(&stream_events(ask(&gw, &streaming, &[]).await).await);
    assert!(!done, "the stream was cut");
    patch_faults(&mock, json!({"disconnect_rate": 0.0})).await;
    assert_eq!(
        ask(&gw, &streaming, &[]).await.headers()["x-sluice-cache"],
        "miss"
    );
    assert_eq!(skipped(&gw, "stream_broken").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_tool_calls_are_checked_before_they_are_stored() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&toml(&mock, dir.path(), "on", "")).await;
    let tools = json!([{"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
    let good = question(json!({"stream": true, "tools": tools}));
    stream_events(ask(&gw, &good, &[]).await).await;
    assert_eventually!(writes(&gw).await == 1.0);
    // Served as a completion, the stored stream's call is whole.
    let whole: Value = ask(&gw, &question(json!({"tools": tools})), &[])
        .await
        .json()
        .await
        .unwrap();
    let call = &whole["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["q"].is_string());

    patch_faults(&mock, json!({"invalid_tool_args_rate": 1.0})).await;
    let broken = question(json!({"stream": true, "tools": tools, "max_tokens": 30}));
    stream_events(ask(&gw, &broken, &[]).await).await;
    assert_eq!(
        ask(&gw, &broken, &[]).await.headers()["x-sluice-cache"],
        "miss"
    );
}

/// Sends `bodies` at once, the first alone until it has reached the upstream (which must
/// hold it for seconds), so that the others arrive while it is there. Each answer's status,
/// `x-sluice-cache` and body.
async fn while_the_first_is_upstream(
    gw: &TestGateway,
    mock: &MockServer,
    bodies: Vec<Value>,
) -> Vec<(u16, String, String)> {
    let mut tasks = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let url = gw.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            let outcome = resp.headers()["x-sluice-cache"]
                .to_str()
                .unwrap()
                .to_owned();
            (resp.status().as_u16(), outcome, resp.text().await.unwrap())
        }));
        if i == 0 {
            assert_eventually!(upstream_calls(mock) == 1);
        }
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

async fn coalesced(gw: &TestGateway, outcome: &str) -> f64 {
    metric_value(
        &gw.metrics_text().await,
        "sluice_cache_coalesced_total",
        &[("outcome", outcome)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_misses_together_make_one_upstream_call() {
    let mut opts = MockOptions::zero_timing();
    // The first request stays upstream this long: seconds to spare on a busy machine.
    opts.timing.ttft_base = Duration::from_secs(2);
    let mock = start_mock(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&toml(&mock, dir.path(), "on", "")).await;
    let bodies = (0..8)
        .map(|i| question(json!({"stream": i % 2 == 1})))
        .collect();
    let answers = while_the_first_is_upstream(&gw, &mock, bodies).await;
    for (status, _, text) in &answers {
        assert_eq!(*status, 200, "{text}");
    }
    assert_eq!(
        upstream_calls(&mock),
        1,
        "one upstream call for eight requests"
    );
    let misses = answers.iter().filter(|(_, o, _)| o == "miss").count();
    assert_eq!(misses, 1, "{answers:?}");
    assert_eq!(coalesced(&gw, "served").await, 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_fails_releases_its_waiters_to_go_upstream() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&toml(&mock, dir.path(), "on", "")).await;
    // Every request fails, after long enough for the others to arrive while the first is
    // upstream.
    patch_faults(
        &mock,
        json!({"error_rate": 1.0, "error_status": 503, "added_latency_ms": 2000}),
    )
    .await;
    let answers = while_the_first_is_upstream(&gw, &mock, vec![question(json!({})); 4]).await;
    assert!(
        answers.iter().all(|(status, ..)| *status == 502),
        "{answers:?}"
    );
    // Each waiter, released by the failure, asked the upstream itself: a failure is not
    // shared.
    assert_eq!(upstream_calls(&mock), 4);
    assert_eq!(coalesced(&gw, "went_upstream").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_and_purge_their_own_tenants_entries_only() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = bearer(dir.path(), "a-app", "a", "chat:write,admin");
    let b = bearer(dir.path(), "b-app", "b", "chat:write");
    let global = bearer(dir.path(), "ops", "*", "admin");
    let gw =
        TestGateway::start_toml(&toml(&mock, dir.path(), "on", "[auth]\nmode = \"keys\"\n")).await;
    let q = question(json!({}));
    assert_eq!(outcome(&gw, &q, &[("authorization", &a)]).await, "miss");
    assert_eq!(outcome(&gw, &q, &[("authorization", &a)]).await, "hit");
    assert_eq!(outcome(&gw, &q, &[("authorization", &b)]).await, "miss");
    assert_eventually!(writes(&gw).await == 2.0);

    let client = reqwest::Client::new();
    let view = |auth: String| {
        let req = client
            .get(gw.url("/v1/admin/cache"))
            .header("authorization", auth);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let mine = view(a.clone()).await;
    assert_eq!(mine["tenant"], "a");
    assert_eq!(mine["entries"], 1);
    assert_eq!(mine["lookups"], json!({"hit": 1, "miss": 1, "bypass": 0}));
    assert_eq!(mine["hit_ratio"], 0.5);
    assert!(
        mine.get("memory").is_none(),
        "the memory front is every tenant's"
    );
    let all = view(global.clone()).await;
    assert_eq!(all["tenant"], Value::Null);
    assert_eq!(all["entries"], 2);
    assert_eq!(all["memory"]["entries"], 2);
    // Without the admin scope: 403.
    let refused = client
        .get(gw.url("/v1/admin/cache"))
        .header("authorization", &b)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    let purge = |auth: String, query: &str| {
        let req = client
            .delete(gw.url(&format!("/v1/admin/cache{query}")))
            .header("authorization", auth);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    // Another tenant's entries are answered as a tenant that does not exist.
    assert_eq!(purge(a.clone(), "?tenant=b").await.0, 404);
    let (status, body) = purge(a.clone(), "?older_than=soon").await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("older_than"))
    );
    assert_eq!(purge(a.clone(), "?colour=red").await.0, 400);
    assert_eq!(purge(a.clone(), "?model=other").await.1["deleted"], 0);
    assert_eq!(purge(a.clone(), "?model=m").await.1["deleted"], 1);
    // a's entry is gone (from memory too); b's is not.
    assert_eq!(outcome(&gw, &q, &[("authorization", &a)]).await, "miss");
    assert_eq!(outcome(&gw, &q, &[("authorization", &b)]).await, "hit");
    assert_eventually!(writes(&gw).await == 3.0);
    assert_eq!(
        purge(global.clone(), "?older_than=0s").await.1["deleted"],
        2
    );
    assert_eq!(view(global).await["entries"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_two_gateways_share_entries_and_a_dead_redis_only_costs_hits() {
    let mut redis = sluice_testkit::redis::RedisServer::start();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let state = format!("[state]\nredis_url = \"{}\"\n", redis.url());
    let a = TestGateway::start_toml(&toml(&mock, dir_a.path(), "on", &state)).await;
    let b = TestGateway::start_toml(&toml(&mock, dir_b.path(), "on", &state)).await;
    let q = question(json!({}));
    let streaming = question(json!({"stream": true}));

    assert_eq!(outcome(&a, &q, &[]).await, "miss");
    assert_eventually!(writes(&a).await == 1.0);
    // Stored by one gateway, answered by the other, in either shape.
    assert_eq!(outcome(&b, &q, &[]).await, "hit");
    let events = stream_events(ask(&b, &streaming, &[]).await).await;
    assert!(streamed_text(&events).1);
    assert_eq!(upstream_calls(&mock), 1);

    // A hit is one round trip to Redis: one GET, nothing else.
    let before = redis.commands_executed();
    for gw in [&a, &b, &a, &b, &a] {
        assert_eq!(outcome(gw, &q, &[]).await, "hit");
    }
    let after = redis.commands_executed();
    let delta: BTreeMap<&str, u64> = after
        .iter()
        .map(|(name, n)| (name.as_str(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(delta, BTreeMap::from([("get", 5)]));

    // The store's view, and a purge through one gateway that holds for the other.
    let cache_b = b.shared.services.cache.clone().unwrap();
    let stats = tokio::task::spawn_blocking({
        let c = cache_b.clone();
        move || c.stats(None)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stats.entries, 1);
    assert!(stats.bytes > 0);
    let purge = sluice_cache::Purge {
        model: Some("m".into()),
        ..sluice_cache::Purge::default()
    };
    let deleted = tokio::task::spawn_blocking(move || cache_b.purge(&purge))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(outcome(&a, &q, &[]).await, "miss");
    assert_eventually!(writes(&a).await == 2.0);

    // Redis dies: every request is still answered, as a miss, and the faults are counted.
    redis.kill();
    for gw in [&a, &b] {
        assert_eq!(outcome(gw, &q, &[]).await, "miss");
        let (_, done) = streamed_text(&stream_events(ask(gw, &streaming, &[]).await).await);
        assert!(done);
    }
    assert_eventually!(
        metric_value(
            &b.metrics_text().await,
            "sluice_cache_store_errors_total",
            &[]
        ) >= 2.0
    );
}
