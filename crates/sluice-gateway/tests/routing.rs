//! Routing through a real gateway in front of real mock engines that publish their KV
//! events over ZMQ: a conversation's next turn goes to the engine holding its prefix, and
//! says so in `x-sluice-route`; session affinity follows its TTL, changed at runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_mock::{KvEventOptions, MockOptions, MockServer};
use sluice_testkit::{assert_eventually, start_mock, TestGateway};

async fn engines(n: usize, kv_events: bool) -> Vec<MockServer> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            start_mock(MockOptions {
                kv_events: kv_events.then(KvEventOptions::default),
                ..MockOptions::zero_timing()
            })
            .await,
        );
    }
    out
}

/// A mock that answers every chat request with `status`.
async fn failing_mock(status: u16) -> MockServer {
    start_mock(MockOptions {
        faults: sluice_mock::Faults {
            error_rate: 1.0,
            error_status: status,
            ..sluice_mock::Faults::default()
        },
        ..MockOptions::zero_timing()
    })
    .await
}

/// `[models.m]` over `engines`, with their KV events when they publish them.
fn config(engines: &[MockServer], routing: &str) -> String {
    let mut s =
        String::from("[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n[models.m]\n");
    for (i, e) in engines.iter().enumerate() {
        s.push_str(&format!(
            "[[models.m.endpoints]]\nname = \"pod-{i}\"\nurl = \"{}\"\n",
            e.base_url()
        ));
        if let Some(kv) = e.engine().kv_events() {
            s.push_str(&format!(
                "kv_events = \"{}\"\nkv_replay = \"{}\"\n",
                kv.publish_endpoint,
                kv.replay_endpoint.as_deref().unwrap()
            ));
        }
    }
    s.push_str(&format!("[models.m.routing]\n{routing}\n"));
    s
}

/// `toml` with API keys on, kept under `dir` (admin routes need a global admin's key).
fn with_keys(toml: &str, dir: &std::path::Path) -> String {
    toml.replace(
        "[models.m]\n",
        &format!(
            "data_dir = \"{}\"\n[auth]\nmode = \"keys\"\n[models.m]\n",
            dir.display()
        ),
    )
}

/// A conversation's messages after `turns` user turns (each a long paragraph, several
/// blocks) and the assistant's answers between them.
fn conversation(topic: &str, turns: usize) -> Vec<Value> {
    let mut messages = vec![
        json!({"role": "system", "content": format!("You help with {topic}. {}", "Be brief and exact. ".repeat(10))}),
    ];
    for i in 0..turns {
        if i > 0 {
            messages
                .push(json!({"role": "assistant", "content": format!("answer {i} about {topic}")}));
        }
        messages.push(json!({"role": "user", "content": format!("question {i} on {topic}: {}", "details follow here ".repeat(8))}));
    }
    messages
}

/// Sends the request; returns (the endpoint it went to, the reason, matched blocks).
async fn ask(gw: &TestGateway, messages: &[Value], session: Option<&str>) -> (String, String, u32) {
    ask_as(gw, None, messages, session).await
}

async fn ask_as(
    gw: &TestGateway,
    key: Option<&str>,
    messages: &[Value],
    session: Option<&str>,
) -> (String, String, u32) {
    let mut r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": messages, "max_tokens": 8}));
    if let Some(k) = key {
        r = r.header("authorization", k);
    }
    if let Some(s) = session {
        r = r.header("x-session-id", s);
    }
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let route = resp.headers()["x-sluice-route"]
        .to_str()
        .unwrap()
        .to_owned();
    let field = |name: &str| {
        route
            .split("; ")
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {route}"))
            .to_owned()
    };
    (
        field("pod"),
        field("reason"),
        field("matched_blocks").parse().unwrap(),
    )
}

/// An admin route's JSON, read with `key`.
async fn admin_get(gw: &TestGateway, key: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(gw.url(path))
        .header("authorization", key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Blocks the gateway's index holds per pod, from the engines' events.
fn stored_blocks(gw: &TestGateway) -> Vec<u64> {
    gw.shared.models["m"]
        .router
        .endpoints()
        .iter()
        .map(|e| e.index.as_ref().map_or(0, |p| p.stored_blocks))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_turns_follow_the_engine_that_holds_its_prefix() {
    let mocks = engines(3, true).await;
    // Routed prompts count for 1 ms only: what keeps a conversation in place is the
    // engines' own events.
    let dir = tempfile::tempdir().unwrap();
    let admin = sluice_testkit::api_key(dir.path(), "ops", "*", "chat:write,admin");
    let gw = TestGateway::start_toml(&with_keys(
        &config(
            &mocks,
            "policy = \"prefix_aware\"\ntokenizer = \"mock\"\nrouted_ttl = \"1ms\"",
        ),
        dir.path(),
    ))
    .await;
    let key = Some(admin.as_str());
    let topics = [
        "sailing",
        "cooking",
        "chess",
        "gardening",
        "astronomy",
        "pottery",
    ];
    let mut home = Vec::new();
    for topic in topics {
        let (pod, reason, matched) = ask_as(&gw, key, &conversation(topic, 1), None).await;
        assert_eq!(
            (reason.as_str(), matched),
            ("no_prefix_match", 0),
            "{topic}"
        );
        home.push(pod);
    }
    let spread: BTreeSet<&String> = home.iter().collect();
    assert_eq!(
        spread.len(),
        3,
        "new conversations spread over the engines: {home:?}"
    );
    // The engines' events reach the index.
    let total_cached = || {
        mocks
            .iter()
            .map(|m| m.engine().cached_blocks() as u64)
            .collect::<Vec<_>>()
    };
    assert_eventually!(stored_blocks(&gw) == total_cached());
    tokio::time::sleep(Duration::from_millis(5)).await; // past routed_ttl
    for turn in 2..=4 {
        for (topic, pod) in topics.iter().zip(&home) {
            let (to, reason, matched) = ask_as(&gw, key, &conversation(topic, turn), None).await;
            assert_eq!(&to, pod, "{topic}, turn {turn}");
            assert_eq!(reason, "prefix_match");
            assert!(matched > 0);
        }
        assert_eventually!(stored_blocks(&gw) == total_cached());
    }
    // The engines served those turns from their caches.
    let cached: u64 = mocks
        .iter()
        .map(|m| m.engine().stats().cached_tokens_total)
        .sum();
    assert!(cached > 0);
    // The operator's view: decisions by reason, and each pod's event stream.
    let view = admin_get(&gw, &admin, "/v1/admin/prefix-index").await;
    let m = &view["models"][0];
    assert_eq!(m["policy"], "prefix_aware");
    assert_eq!(m["decisions"]["prefix_match"], 18);
    assert_eq!(m["decisions"]["no_prefix_match"], 6);
    for (pod, mock) in m["pods"].as_array().unwrap().iter().zip(&mocks) {
        assert_eq!(pod["stored_blocks"], mock.engine().cached_blocks() as u64);
        assert_eq!(pod["events"]["connected"], true);
        assert_eq!(
            pod["events"]["last_seq"],
            mock.engine().kv_events().unwrap().next_seq() - 1
        );
        assert_eq!(pod["events"]["gaps"], 0);
        assert_eq!(pod["in_flight"], 0, "every request's load was given back");
    }
    let metrics = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sluice_route_decisions_total{model=\"m\",reason=\"prefix_match\"} 18",
        "sluice_route_decisions_total{model=\"m\",reason=\"no_prefix_match\"} 6",
        "sluice_kv_connected{model=\"m\",pod=\"pod-0\"} 1",
        "sluice_kv_stream_events_total{model=\"m\",pod=\"pod-0\",kind=\"gap\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.contains("sluice_kv_events_total{model=\"m\",pod=\"pod-1\",kind=\"block_stored\"}")
    );
    assert!(metrics.contains("sluice_prefix_index_blocks{model=\"m\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_events_the_routers_own_record_keeps_a_conversation_in_place() {
    let mocks = engines(3, false).await;
    let gw = TestGateway::start_toml(&config(
        &mocks,
        "policy = \"prefix_aware\"\ntokenizer = \"mock\"",
    ))
    .await;
    let (pod, _, _) = ask(&gw, &conversation("rivers", 1), None).await;
    for turn in 2..=3 {
        let (to, reason, _) = ask(&gw, &conversation("rivers", turn), None).await;
        assert_eq!(
            (to.as_str(), reason.as_str()),
            (pod.as_str(), "prefix_match")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_own_tokenizer_routes_a_long_conversation_by_its_prefix() {
    // Qwen2.5's tokenizer and chat template; the engines publish no events, so the index
    // holds what routing recorded, named from the gateway's Qwen tokens. The prompts are
    // long enough (> 8 KiB) to be tokenized off the worker thread.
    let qwen = sluice_testkit::tokenizer::qwen_model_dir().unwrap();
    let mocks = engines(3, false).await;
    let routing = format!(
        "policy = \"prefix_aware\"\ntokenizer = \"{}\"",
        qwen.path().display()
    );
    let gw = TestGateway::start_toml(&config(&mocks, &routing)).await;
    let tokenizer =
        sluice_routing::PromptTokenizer::load(qwen.path().to_str().unwrap(), 0).unwrap();
    let long = |turns: usize| {
        let mut messages = conversation("glaciers", turns);
        messages[0]["content"] = json!(format!(
            "You help with glaciers. {}",
            "Ice flows downhill under its own weight; ".repeat(300)
        ));
        messages
    };
    let first = long(1);
    let body = json!({"model": "m", "messages": first}).to_string();
    assert!(body.len() > 8 * 1024);
    let request = sluice_api::ChatCompletionRequest::from_slice(body.as_bytes()).unwrap();
    let first_blocks = tokenizer.prompt_tokens(&request).unwrap().len() / 16;
    assert!(first_blocks > 100, "{first_blocks}");

    let (pod, _, _) = ask(&gw, &first, None).await;
    for turn in 2..=3 {
        let (to, reason, matched) = ask(&gw, &long(turn), None).await;
        assert_eq!(
            (to.as_str(), reason.as_str()),
            (pod.as_str(), "prefix_match")
        );
        // Each turn's prompt starts with the whole previous prompt: at least the first
        // turn's full blocks are matched.
        assert!(
            matched as usize >= first_blocks,
            "turn {turn}: {matched} < {first_blocks}"
        );
    }
    // Another conversation names its topic in its first block: nothing of it matches.
    let (_, reason, matched) = ask(&gw, &conversation("volcanoes", 1), None).await;
    assert_eq!((reason.as_str(), matched), ("no_prefix_match", 0));

    // Each turn tokenized only its new messages. Qwen's template writes
    // `<|im_start|>ROLE\nCONTENT<|im_end|>\n` a message, then `<|im_start|>assistant\n`:
    // the pieces between special tokens are the messages, "\n" and "assistant\n". Turn 1
    // tokenized 4 (its 2 messages, "\n", the generation prompt; its second "\n" was kept),
    // turns 2 and 3 their 2 new messages each, the other conversation its 2.
    let metrics = gw.metrics_text().await;
    for line in [
        "sluice_tokenizer_cache_lookups_total{model=\"m\",outcome=\"miss\"} 10",
        "sluice_tokenizer_cache_lookups_total{model=\"m\",outcome=\"hit\"} 22",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_on_its_endpoint_until_its_ttl_changed_at_runtime() {
    let mocks = engines(3, false).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = with_keys(&config(&mocks, "session_ttl = \"10m\""), dir.path());
    let admin = sluice_testkit::api_key(dir.path(), "ops", "*", "chat:write,admin");
    let tenant = sluice_testkit::api_key(dir.path(), "acme-ops", "acme", "chat:write,admin");
    let gw = TestGateway::start_toml(&toml).await;
    let key = Some(admin.as_str());
    let hello = conversation("x", 1);
    let (pod, reason, _) = ask_as(&gw, key, &hello, Some("s-1")).await;
    assert_eq!(reason, "round_robin");
    for _ in 0..4 {
        let (to, reason, _) = ask_as(&gw, key, &hello, Some("s-1")).await;
        assert_eq!((to.as_str(), reason.as_str()), (pod.as_str(), "session"));
    }
    // 200 ms from now on, for the pin made above too: once that has passed, the session
    // routes by the policy again (waiting longer only makes that surer).
    let client = reqwest::Client::new();
    let patch = |k: &str, body: Value| {
        client
            .patch(gw.url("/v1/admin/routing/m"))
            .header("authorization", k)
            .json(&body)
            .send()
    };
    let resp = patch(&admin, json!({"session_ttl": "200ms"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["session_ttl_ms"], 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, reason, _) = ask_as(&gw, key, &hello, Some("s-1")).await;
    assert_eq!(reason, "round_robin");
    // Requests without a session are never pinned.
    let (_, reason, _) = ask_as(&gw, key, &hello, None).await;
    assert_eq!(reason, "round_robin");
    // Bad values are named; a tenant's admin may not change shared endpoints.
    let resp = patch(&admin, json!({"session_ttl": "soon"})).await.unwrap();
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["param"], "session_ttl");
    assert_eq!(
        patch(&tenant, json!({"session_ttl": null}))
            .await
            .unwrap()
            .status(),
        404
    );
    let resp = client
        .patch(gw.url("/v1/admin/routing/nope"))
        .header("authorization", &admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_retried_around_cooled_and_ejected() {
    let good = start_mock(MockOptions::zero_timing()).await;
    let bad = failing_mock(503).await;
    let mocks = [good, bad];
    // A long cooldown: after its first failure the bad endpoint is not first again here.
    let gw = TestGateway::start_toml(&config(
        &mocks,
        "cooldown = \"1m\"\neject_after = 2\nejection = \"1m\"",
    ))
    .await;
    let mut reasons = Vec::new();
    for _ in 0..6 {
        let (pod, reason, _) = ask(&gw, &conversation("x", 1), None).await;
        assert_eq!(pod, "pod-0", "every answer came from the good endpoint");
        reasons.push(reason);
    }
    assert_eq!(
        reasons.iter().filter(|r| *r == "retry").count(),
        1,
        "one request met the bad endpoint and was retried: {reasons:?}"
    );
    assert_eq!(mocks[1].engine().stats().requests_total, 1);
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("sluice_route_retries_total{model=\"m\",reason=\"status_5xx\"} 1"),
        "{metrics}"
    );
    // Failures in a row eject; the last resort is still tried when nothing else is left.
    let router = &gw.shared.models["m"].router;
    let decision = router.route(&sluice_routing::RouteQuery::default(), 0);
    router.report(&decision, 1, sluice_routing::Outcome::Failure, 0);
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("sluice_endpoint_ejected{model=\"m\",pod=\"pod-1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_endpoint_ejections_total{model=\"m\",pod=\"pod-1\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_attempt_a_failure_reaches_the_client() {
    let bad = failing_mock(500).await;
    let good = start_mock(MockOptions::zero_timing()).await;
    let mocks = [bad, good];
    let gw = TestGateway::start_toml(&config(&mocks, "max_attempts = 1")).await;
    let statuses: Vec<u16> = futures_util::future::join_all((0..4).map(|_| async {
        reqwest::Client::new()
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": conversation("y", 1), "max_tokens": 4}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }))
    .await;
    assert!(
        statuses.contains(&502) || statuses.contains(&500),
        "{statuses:?}"
    );
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("sluice_route_retries_refused_total{model=\"m\",reason=\"attempts\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_eject_an_endpoint_that_no_longer_accepts_connections_without_traffic() {
    let live = start_mock(MockOptions::zero_timing()).await;
    // A port nothing listens on any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[models.m]\n\
         [[models.m.endpoints]]\nname = \"live\"\nurl = \"{}\"\n\
         [[models.m.endpoints]]\nname = \"dead\"\nurl = \"http://{dead}/v1\"\n\
         [models.m.routing]\nhealth_check_interval = \"50ms\"\n",
        live.base_url()
    );
    let gw = TestGateway::start_toml(&toml).await;
    let standing = |i: usize| gw.shared.models["m"].router.endpoints()[i].standing;
    assert_eventually!(standing(1) == sluice_routing::Standing::Ejected);
    assert_eq!(
        standing(0),
        sluice_routing::Standing::Healthy,
        "the live one passes its probes"
    );
    // Requests go to the live endpoint first from then on.
    for _ in 0..4 {
        assert_eq!(ask(&gw, &conversation("z", 1), None).await.0, "live");
    }
}

/// Turns a mock's `unhealthy` fault on or off: its `/health` answers 503, its port still
/// accepts and its chat answers still come.
async fn set_unhealthy(mock: &MockServer, unhealthy: bool) {
    sluice_testkit::patch_mock_faults(mock, json!({ "unhealthy": unhealthy })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_eject_an_engine_whose_health_fails_while_its_port_accepts() {
    let mocks = engines(2, false).await;
    let dir = tempfile::tempdir().unwrap();
    // The same two engines behind two models: `m` checks GET /health, `t` a TCP connect.
    let checks = "health_check_interval = \"50ms\"\neject_after = 2\nslow_start = \"0s\"\n\
                  ejection = \"200ms\"\n";
    let mut toml = with_keys(
        &config(
            &mocks,
            &format!("{checks}health_check_path = \"/health\"\nhealth_check_timeout = \"2s\"\n"),
        ),
        dir.path(),
    );
    for (i, m) in mocks.iter().enumerate() {
        toml.push_str(&format!(
            "[[models.t.endpoints]]\nname = \"pod-{i}\"\nurl = \"{}\"\n",
            m.base_url()
        ));
    }
    toml.push_str(&format!("[models.t.routing]\n{checks}"));
    let key = sluice_testkit::api_key(dir.path(), "ops", "*", "chat:write,admin");
    let gw = TestGateway::start_toml(&toml).await;
    let view = |model: &str, i: usize| gw.shared.models[model].router.endpoints()[i].clone();
    let passed = |model: &str, i: usize| {
        view(model, i)
            .checks
            .passed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eventually!(passed("m", 0) >= 2 && passed("m", 1) >= 2 && passed("t", 1) >= 2);
    assert_eq!(
        view("m", 1).health_check.as_deref(),
        Some(format!("GET {}/health", mocks[1].base_url().trim_end_matches("/v1")).as_str())
    );

    set_unhealthy(&mocks[1], true).await;
    // No traffic at all: the HTTP check alone ejects it, and says why.
    assert_eventually!(view("m", 1).standing == sluice_routing::Standing::Ejected);
    let why = view("m", 1).checks.last_failure().unwrap();
    assert!(why.contains("503"), "{why}");
    assert_eq!(view("m", 0).standing, sluice_routing::Standing::Healthy);
    // A TCP connect cannot see it: the same engine passes the other model's checks.
    let tcp_passed = passed("t", 1);
    assert_eventually!(passed("t", 1) >= tcp_passed + 3);
    assert_eq!(view("t", 1).standing, sluice_routing::Standing::Healthy);
    assert_eq!(view("t", 1).checks.last_failure(), None);
    // Requests go to the well engine.
    for _ in 0..4 {
        assert_eq!(
            ask_as(&gw, Some(&key), &conversation("h", 1), None).await.0,
            "pod-0"
        );
    }
    // The admin view and the metrics show the checks.
    let pods = admin_get(&gw, &key, "/v1/admin/endpoints").await;
    let sick = pods["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["model"] == "m" && p["name"] == "pod-1")
        .cloned()
        .unwrap();
    assert_eq!(sick["standing"], "ejected", "{sick}");
    assert!(
        sick["health_check"]["last_failure"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{sick}"
    );
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains(
            "sluice_endpoint_health_checks_total{model=\"m\",pod=\"pod-1\",kind=\"failed\"}"
        ),
        "{metrics}"
    );

    // Well again: its checks pass and it is back in rotation.
    set_unhealthy(&mocks[1], false).await;
    assert_eventually!(view("m", 1).standing == sluice_routing::Standing::Healthy);
    assert_eq!(view("m", 1).checks.last_failure(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_come_and_go_through_the_admin_api() {
    let mocks = engines(2, false).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = with_keys(&config(&mocks[..1], "policy = \"round_robin\""), dir.path());
    let admin = sluice_testkit::api_key(dir.path(), "ops", "*", "chat:write,admin");
    let tenant = sluice_testkit::api_key(dir.path(), "acme-ops", "acme", "chat:write,admin");
    let gw = TestGateway::start_toml(&toml).await;
    let client = reqwest::Client::new();
    let key = Some(admin.as_str());
    let hello = conversation("x", 1);
    let post = |k: &str, body: Value| {
        client
            .post(gw.url("/v1/admin/endpoints"))
            .header("authorization", k)
            .json(&body)
            .send()
    };
    let error = |v: Value| {
        (
            v["error"]["param"].clone(),
            v["error"]["message"].as_str().unwrap_or("").to_owned(),
        )
    };

    let added = post(
        &admin,
        json!({"model": "m", "endpoint": {"name": "pod-new", "url": mocks[1].base_url(),
                                          "timeouts": {"total": "17m"}}}),
    )
    .await
    .unwrap();
    assert_eq!(added.status(), 201);
    // A cache miss waits as long as the slowest endpoint's answer may take, added ones too.
    assert_eq!(
        gw.shared.models["m"].cache_wait(),
        Duration::from_secs(17 * 60)
    );
    let view: Value = added.json().await.unwrap();
    assert_eq!(
        (view["name"].as_str(), view["standing"].as_str()),
        (Some("pod-new"), Some("healthy"))
    );
    let list = admin_get(&gw, &admin, "/v1/admin/endpoints").await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pod-0", "pod-new"]);
    let mut pods = BTreeSet::new();
    for _ in 0..4 {
        pods.insert(ask_as(&gw, key, &hello, None).await.0);
    }
    assert_eq!(
        pods,
        BTreeSet::from(["pod-0".to_owned(), "pod-new".to_owned()])
    );
    assert!(mocks[1].engine().stats().requests_total >= 2);

    // Refusals say what to fix.
    let again = post(
        &admin,
        json!({"model": "m", "endpoint": {"name": "pod-new", "url": mocks[1].base_url()}}),
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 400);
    assert!(error(again.json().await.unwrap()).1.contains("pod-new"));
    let unnamed = post(
        &admin,
        json!({"model": "m", "endpoint": {"url": mocks[1].base_url()}}),
    )
    .await
    .unwrap();
    assert_eq!(unnamed.status(), 400);
    assert_eq!(error(unnamed.json().await.unwrap()).0, "endpoint.name");
    let bad_url = post(
        &admin,
        json!({"model": "m", "endpoint": {"name": "x", "url": "ftp://h/v1"}}),
    )
    .await
    .unwrap();
    assert_eq!(bad_url.status(), 400);
    assert_eq!(error(bad_url.json().await.unwrap()).0, "endpoint.url");
    let kv = post(&admin, json!({"model": "m", "endpoint": {"name": "x", "url": mocks[1].base_url(), "kv_events": "tcp://127.0.0.1:9"}})).await.unwrap();
    assert_eq!(kv.status(), 400);
    assert!(error(kv.json().await.unwrap()).1.contains("prefix_aware"));
    let unknown = post(
        &admin,
        json!({"model": "nope", "endpoint": {"name": "x", "url": mocks[1].base_url()}}),
    )
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    let as_tenant = post(
        &tenant,
        json!({"model": "m", "endpoint": {"name": "x", "url": mocks[1].base_url()}}),
    )
    .await
    .unwrap();
    assert_eq!(as_tenant.status(), 404);

    // Removed: no request goes there any more.
    let delete = |name: &str| {
        client
            .delete(gw.url(&format!("/v1/admin/endpoints/m/{name}")))
            .header("authorization", &admin)
            .send()
    };
    assert_eq!(delete("pod-0").await.unwrap().status(), 200);
    assert_eq!(delete("pod-0").await.unwrap().status(), 404);
    let before = mocks[0].engine().stats().requests_total;
    for _ in 0..4 {
        assert_eq!(ask_as(&gw, key, &hello, None).await.0, "pod-new");
    }
    assert_eq!(mocks[0].engine().stats().requests_total, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_pod_is_purged_and_followed_again_when_it_returns() {
    let mocks = engines(2, true).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = with_keys(
        &config(&mocks, "policy = \"prefix_aware\"\ntokenizer = \"mock\""),
        dir.path(),
    );
    let admin = sluice_testkit::api_key(dir.path(), "ops", "*", "chat:write,admin");
    let gw = TestGateway::start_toml(&toml).await;
    let key = Some(admin.as_str());
    let (pod, _, _) = ask_as(&gw, key, &conversation("tides", 1), None).await;
    let i: usize = pod.trim_start_matches("pod-").parse().unwrap();
    assert_eventually!(
        stored_blocks(&gw)[i] > 0,
        std::time::Duration::from_secs(30)
    );
    let held = stored_blocks(&gw)[i];

    let client = reqwest::Client::new();
    let resp = client
        .delete(gw.url(&format!("/v1/admin/endpoints/m/{pod}")))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let index = gw.shared.models["m"].router.index().unwrap().clone();
    let pod_blocks = |name: &str| {
        index
            .summary()
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.stored_blocks + p.routed_blocks)
    };
    assert_eq!(pod_blocks(&pod), 0, "purged on removal");
    let (to, _, _) = ask_as(&gw, key, &conversation("tides", 2), None).await;
    assert_ne!(to, pod);

    // Back with its KV events: replayed from 0, the engine's cache is indexed again.
    let kv = mocks[i].engine().kv_events().unwrap();
    let resp = client
        .post(gw.url("/v1/admin/endpoints"))
        .header("authorization", &admin)
        .json(&json!({"model": "m", "endpoint": {
            "name": pod, "url": mocks[i].base_url(),
            "kv_events": kv.publish_endpoint, "kv_replay": kv.replay_endpoint}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eventually!(pod_blocks(&pod) >= held, std::time::Duration::from_secs(30));
}
