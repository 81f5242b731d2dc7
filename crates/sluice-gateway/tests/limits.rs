//! Admission through a real gateway (`[models.NAME.limits]`) in front of a real mock engine:
//! refusals with OpenAI's headers, waiting, job types, and every way a request ends charged
//! as it should be — checked against the mock's own token counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{json, Value};
use sluice_limits::{Dimension, PoolView};
use sluice_testkit::{assert_eventually, gateway_toml, start_mock, MockOptions, TestGateway};

fn question(extra: Value) -> Value {
    let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// "hello there": 11 characters, estimated at 3 prompt tokens.
const PROMPT_ESTIMATE: u64 = 3;

async fn ask(gw: &TestGateway, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(body);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.send().await.unwrap()
}

fn view(gw: &TestGateway) -> PoolView {
    gw.shared
        .services
        .limiter
        .as_ref()
        .unwrap()
        .views()
        .remove(0)
}

fn used(gw: &TestGateway, d: Dimension) -> u64 {
    view(gw)
        .windows
        .iter()
        .find(|w| w.dimension == d)
        .map_or(0, |w| w.used)
}

fn limits_toml(table: &str) -> String {
    format!("[models.m.limits]\n{table}\n")
}

/// A mock that takes 3 s before answering: requests stay in flight while a test looks.
async fn slow_mock() -> sluice_testkit::MockServer {
    mock_holding_ms(3_000).await
}

/// A mock that holds every answer `ms` milliseconds: the window in which a test sees its
/// requests in flight.
async fn mock_holding_ms(ms: u64) -> sluice_testkit::MockServer {
    start_mock(MockOptions {
        faults: sluice_mock::Faults {
            added_latency_ms: ms,
            ..sluice_mock::Faults::default()
        },
        ..MockOptions::zero_timing()
    })
    .await
}

/// A gateway in front of `mock` whose model `m` has the limits `table` sets.
async fn limited(mock: &sluice_testkit::MockServer, table: &str) -> TestGateway {
    TestGateway::start_toml(&gateway_toml("m", &[mock.base_url()], &limits_toml(table))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_a_request_gets_429_naming_the_limit_with_openais_headers() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = limited(
        &mock,
        "requests_per_minute = 3\ntokens_per_minute = 100000\nestimated_tokens = 100",
    )
    .await;
    for remaining in [2, 1, 0] {
        let resp = ask(&gw, &question(json!({})), &[]).await;
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            h["x-ratelimit-remaining-requests"],
            remaining.to_string().as_str()
        );
        assert_eq!(h["x-ratelimit-limit-tokens"], "100000");
        let reset = h["x-ratelimit-reset-requests"].to_str().unwrap();
        let reset = sluice_api::ratelimit::parse_go_duration(reset).unwrap();
        assert!(
            reset > Duration::from_secs(59) && reset <= Duration::from_secs(61),
            "{reset:?}"
        );
    }
    let resp = ask(&gw, &question(json!({})), &[]).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=61).contains(&retry_after), "{retry_after}");
    assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("requests_per_minute"), "{message}");
    assert_eq!(
        mock.engine().stats().requests_total,
        3,
        "the refused one never went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_charged_as_the_upstream_reports_them_unary_and_streamed() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        &limits_toml(
            "tokens_per_minute = 1000000\nrequests_per_minute = 1000\nestimated_tokens = 100",
        ),
    ))
    .await;
    // Long enough for the mock's prefix cache (blocks of 16 tokens) to serve it again.
    let long =
        json!([{"role": "user", "content": "the river runs past the stone mill ".repeat(12)}]);
    for body in [
        question(json!({})),
        question(json!({"stream": true, "stream_options": {"include_usage": true}})),
        // The gateway asks for the usage chunk on this client's behalf.
        question(json!({"stream": true})),
        question(json!({"messages": long})),
        // The same prompt again: the mock reports cached prompt tokens, counted in full.
        question(json!({"messages": long, "stream": true})),
    ] {
        let resp = ask(&gw, &body, &[]).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let stats = mock.engine().stats();
    assert!(stats.cached_tokens_total > 0, "{stats:?}");
    assert_eventually!(view(&gw).in_flight == 0);
    assert_eq!(
        used(&gw, Dimension::TokensPerMinute),
        stats.prompt_tokens_total + stats.completion_tokens_total
    );
    assert_eq!(used(&gw, Dimension::RequestsPerMinute), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_leaves_is_charged_what_it_relayed_not_refunded() {
    let mock = start_mock(MockOptions {
        timing: sluice_mock::TimingModel {
            decode_interval: Duration::from_millis(30),
            ..MockOptions::zero_timing().timing
        },
        output: sluice_mock::OutputOptions {
            min_tokens: 64,
            max_tokens: 64,
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let gw = limited(&mock, "tokens_per_minute = 100000\nestimated_tokens = 100").await;
    let resp = ask(
        &gw,
        &question(json!({"stream": true, "max_tokens": 64})),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut chunks = 0;
    while chunks < 5 {
        use futures_util::StreamExt;
        let bytes = stream.next().await.unwrap().unwrap();
        chunks += bytes.windows(6).filter(|w| w == b"data: ").count();
    }
    drop(stream);
    assert_eventually!(view(&gw).in_flight == 0);
    let charged = used(&gw, Dimension::TokensPerMinute);
    // The prompt and at least the chunks the client read; far from the 67 reserved, and
    // never zero (leaving early is no way around the limit).
    assert!(charged >= PROMPT_ESTIMATE + 5, "{charged}");
    assert!(charged < PROMPT_ESTIMATE + 64, "{charged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_upstream_breaks_is_charged_what_it_relayed() {
    let mock = start_mock(MockOptions {
        output: sluice_mock::OutputOptions {
            min_tokens: 40,
            max_tokens: 40,
        },
        faults: sluice_mock::Faults {
            disconnect_rate: 1.0,
            disconnect_after_chunks: 4,
            ..sluice_mock::Faults::default()
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let gw = limited(&mock, "tokens_per_minute = 100000\nestimated_tokens = 100").await;
    let resp = ask(
        &gw,
        &question(json!({"stream": true, "max_tokens": 40})),
        &[],
    )
    .await;
    let text = resp.text().await.unwrap();
    assert!(text.contains("upstream_stream_broken"), "{text}");
    assert_eventually!(view(&gw).in_flight == 0);
    // Four events relayed, the first of them the role: at most four tokens of output.
    let charged = used(&gw, Dimension::TokensPerMinute);
    assert!(
        (PROMPT_ESTIMATE + 3..=PROMPT_ESTIMATE + 4).contains(&charged),
        "{charged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_reached_an_upstream_costs_nothing_an_upstream_error_one_request() {
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let limits = limits_toml(
        "tokens_per_minute = 100000\nrequests_per_minute = 100\nestimated_tokens = 100",
    );
    let gw = TestGateway::start_toml(&gateway_toml("m", &[dead], &limits)).await;
    let resp = ask(&gw, &question(json!({})), &[]).await;
    assert_eq!(resp.status(), 502);
    assert_eventually!(view(&gw).in_flight == 0);
    assert_eq!(used(&gw, Dimension::TokensPerMinute), 0);
    assert_eq!(used(&gw, Dimension::RequestsPerMinute), 0);

    let mock = start_mock(MockOptions {
        faults: sluice_mock::Faults {
            error_rate: 1.0,
            error_status: 500,
            ..sluice_mock::Faults::default()
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let gw = TestGateway::start_toml(&gateway_toml("m", &[mock.base_url()], &limits)).await;
    let resp = ask(&gw, &question(json!({})), &[]).await;
    assert_eq!(resp.status(), 502);
    assert_eventually!(view(&gw).in_flight == 0);
    assert_eq!(used(&gw, Dimension::TokensPerMinute), 0);
    assert_eq!(used(&gw, Dimension::RequestsPerMinute), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_up_to_max_wait_for_a_slot() {
    let mock = slow_mock().await;
    let waits = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        &limits_toml("max_concurrent = 1\nmax_wait = \"60s\""),
    ))
    .await;
    let body = question(json!({}));
    let (a, b) = tokio::join!(ask(&waits, &body, &[]), ask(&waits, &body, &[]));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));

    let refuses = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        &limits_toml("max_concurrent = 1\nmax_wait = \"0s\""),
    ))
    .await;
    let (a, b) = tokio::join!(ask(&refuses, &body, &[]), ask(&refuses, &body, &[]));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429]);
    let refused = if a.status() == 429 { a } else { b };
    let e: Value = refused.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("job type `default`") || message.contains("max_concurrent"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_types_come_from_the_header_and_keep_their_own_share() {
    // Held 10 s: both batch requests must be seen in flight at once, and a busy machine
    // (the whole suite running beside) once missed a 3 s window.
    let mock = mock_holding_ms(10_000).await;
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        "[models.m.limits]\nmax_concurrent = 4\ndefault_job_type = \"chat\"\n\
         [models.m.limits.job_types.chat]\nratio = 0.5\n\
         [models.m.limits.job_types.batch]\nratio = 0.5\n",
    ))
    .await;
    let body = question(json!({}));
    let batch = [("x-sluice-job-type", "batch")];
    // Batch fills its two slots; a third batch request is refused; chat still gets in.
    // The last two go once the pool shows the first two in flight (not after a sleep).
    let (a, b, (c, d)) = tokio::join!(ask(&gw, &body, &batch), ask(&gw, &body, &batch), async {
        assert_eventually!(view(&gw)
            .jobs
            .iter()
            .any(|j| j.name == "batch" && j.in_flight == 2));
        tokio::join!(ask(&gw, &body, &batch), ask(&gw, &body, &[]))
    },);
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    assert_eq!(c.status(), 429);
    assert_eq!(d.status(), 200);
    let e: Value = c.json().await.unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("job type `batch`"));

    let resp = ask(&gw, &body, &[("x-sluice-job-type", "nightly")]).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["param"], "x-sluice-job-type");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch, chat"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_refuses_a_job_that_does_not_fit_beside_those_in_flight() {
    let mock = slow_mock().await;
    let gw = TestGateway::start_toml(&gateway_toml(
        "m",
        &[mock.base_url()],
        "[models.m.limits]\nmax_concurrent = 10\nmemory_budget = 3000\ndefault_job_type = \"chat\"\n\
         [models.m.limits.job_types.chat]\nratio = 0.5\nmemory = 1000\n\
         [models.m.limits.job_types.long]\nratio = 0.5\nmemory = 2000\n",
    ))
    .await;
    let body = question(json!({}));
    let long = [("x-sluice-job-type", "long")];
    // A long job and a chat fill the budget; another chat is refused though chat has slots.
    let (a, b, refused) = tokio::join!(ask(&gw, &body, &long), ask(&gw, &body, &[]), async {
        assert_eventually!(view(&gw).memory.is_some_and(|m| m.in_use == 3_000));
        ask(&gw, &body, &[]).await
    });
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    assert_eq!(refused.status(), 429);
    let e: Value = refused.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("memory budget"), "{message}");
    assert_eq!(view(&gw).memory.unwrap().in_use, 0, "all given back");
    assert_eq!(mock.engine().stats().requests_total, 2);
}

#[test]
fn limits_that_cannot_be_enforced_are_named_in_the_config() {
    use sluice_gateway::config::Config;
    let check = |limits: &str| {
        let toml = gateway_toml("m", &["http://127.0.0.1:9/v1".into()], limits);
        let path = std::path::Path::new("gw.toml");
        Config::from_toml(&toml, path)
            .and_then(|c| c.resolve(path, &|_| None))
            .map(drop)
            .unwrap_err()
            .to_string()
    };
    let e = check("[models.m.limits]\n");
    assert!(e.contains("models.m.limits: sets no limit"), "{e}");
    let e = check("[models.m.limits]\ntokens_per_minute = 1000\n");
    assert!(
        e.contains("models.m.limits.estimated_tokens: is needed"),
        "{e}"
    );
    let e = check(
        "[models.m.limits]\nrequests_per_minute = 10\n[models.m.limits.job_types.a]\nratio = 0.5\n[models.m.limits.job_types.b]\nratio = 0.4\n",
    );
    assert!(e.contains("default_job_type: is needed"), "{e}");
    let e = check(
        "[models.m.limits]\nrequests_per_minute = 10\ndefault_job_type = \"a\"\n[models.m.limits.job_types.a]\nratio = 0.5\n[models.m.limits.job_types.b]\nratio = 0.4\n",
    );
    assert!(
        e.contains("models.m.limits.job_types: ratios add up to 0.9"),
        "{e}"
    );
    let e = check("[models.m.limits]\nrequests_per_minute = 0\n");
    assert!(e.contains("requests_per_minute: is 0"), "{e}");
    let e = check("[models.m.limits]\nrequests_per_minute = 1\nmax_wait = \"soon\"\n");
    assert!(e.contains("max_wait"), "{e}");
    let e = check("[models.m]\nfallback_models = [\"m\", \"gone\"]\n");
    assert!(
        e.contains("models.m.fallback_models: `m` is this model itself"),
        "{e}"
    );
    assert!(e.contains("`gone` is not a configured model"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_admin_sees_the_pools_and_a_tenants_admin_does_not() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[auth]\nmode = \"keys\"\n\
         [models.m]\n[[models.m.endpoints]]\nurl = \"{url}\"\n\
         [models.m.limits]\ntokens_per_minute = 100000\nrequests_per_minute = 600\nmax_concurrent = 8\n\
         default_job_type = \"chat\"\nmemory_budget = 1000000\n\
         [models.m.limits.job_types.chat]\nestimated_tokens = 10000\nratio = 0.75\nmemory = 1000\n\
         [models.m.limits.job_types.batch]\nestimated_tokens = 10000\nratio = 0.25\nkind = \"flexible\"\nmemory = 1000\n\
         [models.free]\n[[models.free.endpoints]]\nurl = \"{url}\"\n",
        dir.path().display(),
        url = mock.base_url(),
    );
    let global = sluice_testkit::api_key(dir.path(), "ops", "*", "chat:write,admin");
    let tenant = sluice_testkit::api_key(dir.path(), "acme-ops", "acme", "chat:write,admin");
    let gw = TestGateway::start_toml(&toml).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", &global)
        .json(&question(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let usage: Value = resp.json().await.unwrap();
    let total = usage["usage"]["total_tokens"].as_u64().unwrap();

    let view: Value = client
        .get(gw.url("/v1/admin/limits"))
        .header("authorization", &global)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["object"], "limits");
    assert_eq!(view["instances"], 1);
    assert_eq!(view["unlimited_models"], json!(["free"]));
    let m = &view["models"][0];
    assert_eq!(m["model"], "m");
    assert_eq!(
        m["shares"],
        json!({"tokens_per_minute": 100000, "requests_per_minute": 600, "max_concurrent": 8})
    );
    // 100 000 tokens a minute at 10 000 a job: 10; concurrency allows 8.
    assert_eq!(m["pool"], 8);
    assert_eq!(m["memory"], json!({"budget": 1000000, "in_use": 0}));
    assert_eq!(m["windows"][0]["limit"], "tokens_per_minute");
    assert_eq!(m["windows"][0]["used"], total);
    assert_eq!(m["windows"][1]["used"], 1);
    let jobs = m["job_types"].as_array().unwrap();
    let slots: Vec<(&str, u64)> = jobs
        .iter()
        .map(|j| (j["name"].as_str().unwrap(), j["slots"].as_u64().unwrap()))
        .collect();
    assert_eq!(slots, vec![("batch", 2), ("chat", 6)]);

    let refused = client
        .get(gw.url("/v1/admin/limits"))
        .header("authorization", &tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_model_takes_what_the_first_refuses_and_all_refusing_names_each_reason() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let url = mock.base_url();
    let gw = TestGateway::start_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [models.big]\nfallback_models = [\"small\"]\n[[models.big.endpoints]]\nurl = \"{url}\"\n\
         [models.big.limits]\nrequests_per_minute = 1\n\
         [models.small]\n[[models.small.endpoints]]\nurl = \"{url}\"\n\
         [models.small.limits]\nrequests_per_minute = 1\n\
         [models.spare]\n[[models.spare.endpoints]]\nurl = \"{url}\"\n"
    ))
    .await;
    let body = |extra: Value| {
        let mut q = question(extra);
        q["model"] = json!("big");
        q
    };
    let first = ask(&gw, &body(json!({})), &[]).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("x-sluice-model").is_none());
    // `big` is spent: its configured fallback serves, and says so.
    let second = ask(&gw, &body(json!({})), &[]).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-sluice-model"], "small");
    let answer: Value = second.json().await.unwrap();
    assert_eq!(
        answer["model"], "small",
        "the upstream was asked for the fallback"
    );
    // Both spent: the error names each model's reason.
    let third = ask(&gw, &body(json!({})), &[]).await;
    assert_eq!(third.status(), 429);
    let e: Value = third.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("no model had capacity"), "{message}");
    assert!(
        message.contains("model `big`") && message.contains("model `small`"),
        "{message}"
    );
    // A request names its own fallbacks: an unlimited one always has room.
    let fourth = ask(
        &gw,
        &body(json!({})),
        &[("x-sluice-fallback-models", "small, spare")],
    )
    .await;
    assert_eq!(fourth.status(), 200);
    assert_eq!(fourth.headers()["x-sluice-model"], "spare");
    let unknown = ask(
        &gw,
        &body(json!({})),
        &[("x-sluice-fallback-models", "nope")],
    )
    .await;
    assert_eq!(unknown.status(), 400);
    let e: Value = unknown.json().await.unwrap();
    assert_eq!(e["error"]["param"], "x-sluice-fallback-models");
    // Requests were counted under the model that served them.
    let text = gw.metrics_text().await;
    let served = |model| {
        sluice_testkit::metric_value(
            &text,
            "sluice_requests_total",
            &[("model", model), ("status", "200")],
        )
    };
    assert_eq!(
        (served("big"), served("small"), served("spare")),
        (1.0, 1.0, 1.0)
    );
}
