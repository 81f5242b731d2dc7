//! Rate-limit pools shared by several gateway instances through a real Redis (started by the
//! testkit on a free port), in front of a real mock engine; and the gateway learning from a
//! strict provider (the mock with provider-side limits). Heartbeats are short (200 ms) so
//! membership changes show within a second or two.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_limits::Dimension;
use sluice_testkit::redis::RedisServer;
use sluice_testkit::relay::TcpRelay;
use sluice_testkit::{assert_eventually, start_mock, MockOptions, MockServer, TestGateway};

const FLEET: &str = "[limits]\nheartbeat = \"200ms\"\ninstance_timeout = \"1s\"\n";

fn toml(mock: &MockServer, redis: Option<&RedisServer>, limits: &str) -> String {
    let state = redis.map_or(String::new(), |r| {
        format!("[state]\nredis_url = \"{}\"\n{FLEET}", r.url())
    });
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n{state}\
         [models.m]\n[[models.m.endpoints]]\nurl = \"{}\"\n[models.m.limits]\n{limits}\n",
        mock.base_url()
    )
}

fn question(max_tokens: u64) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": max_tokens})
}

async fn ask(gw: &TestGateway, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn pool(gw: &TestGateway) -> u64 {
    gw.shared.services.limiter.as_ref().unwrap().views()[0].pool
}

fn instances(gw: &TestGateway) -> u64 {
    gw.shared
        .services
        .limiter
        .as_ref()
        .unwrap()
        .coordination()
        .unwrap()
        .instances
}

fn share(gw: &TestGateway, d: Dimension) -> Option<u64> {
    gw.shared.services.limiter.as_ref().unwrap().views()[0]
        .lease
        .get(d)
}

const SCALING: &str = "tokens_per_minute = 100000\nestimated_tokens = 10000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_split_as_instances_join_and_come_back_when_one_goes() {
    let redis = RedisServer::start();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let config = toml(&mock, Some(&redis), SCALING);
    let a = TestGateway::start_toml(&config).await;
    assert_eventually!(pool(&a) == 10 && instances(&a) == 1);
    let b = TestGateway::start_toml(&config).await;
    assert_eventually!(pool(&a) == 5 && pool(&b) == 5);
    let c = TestGateway::start_toml(&config).await;
    assert_eventually!(pool(&a) == 3 && pool(&b) == 3 && pool(&c) == 3);
    assert_eq!(instances(&c), 3);
    // The three shares never add up to more than the limit.
    let total: u64 = [&a, &b, &c]
        .iter()
        .map(|g| share(g, Dimension::TokensPerMinute).unwrap())
        .sum();
    assert!(total <= 100_000, "{total}");

    // One instance stops (its heartbeats with it): within the timeout and two heartbeats,
    // the two left take its part.
    drop(c);
    assert_eventually!(pool(&a) == 5 && pool(&b) == 5, Duration::from_secs(20));
    assert_eq!(instances(&a), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_instances_passes_at_most_the_limit() {
    let redis = RedisServer::start();
    // Answers take a while, so every admitted request still holds its reservation when the
    // last of the burst arrives, however slowly the machine sends them.
    let mock = start_mock(MockOptions {
        faults: sluice_mock::Faults {
            added_latency_ms: 5_000,
            ..sluice_mock::Faults::default()
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let config = toml(
        &mock,
        Some(&redis),
        "tokens_per_minute = 30000\nestimated_tokens = 3000",
    );
    let gws = [
        TestGateway::start_toml(&config).await,
        TestGateway::start_toml(&config).await,
        TestGateway::start_toml(&config).await,
    ];
    for g in &gws {
        assert_eventually!(instances(g) == 3 && pool(g) == 3);
    }
    // 30 requests at once, each reserving 3 + 2 997 tokens: 10 would fill the limit.
    let body = question(2_997);
    let answers = futures_util::future::join_all((0..30).map(|i| ask(&gws[i % 3], &body))).await;
    let admitted = answers.iter().filter(|r| r.status() == 200).count();
    let refused = answers.iter().filter(|r| r.status() == 429).count();
    assert_eq!(admitted + refused, 30);
    assert!(admitted <= 10, "{admitted} admitted");
    assert!(
        admitted >= 9,
        "{admitted} admitted: each instance's share holds three"
    );
    assert_eq!(mock.engine().stats().requests_total, admitted as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_retry_after_pauses_the_model_on_every_instance() {
    let redis = RedisServer::start();
    let mock = start_mock(MockOptions {
        faults: sluice_mock::Faults {
            error_rate: 1.0,
            error_status: 429,
            retry_after_secs: 30,
            ..sluice_mock::Faults::default()
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let config = toml(&mock, Some(&redis), "requests_per_minute = 1000");
    let a = TestGateway::start_toml(&config).await;
    let b = TestGateway::start_toml(&config).await;
    assert_eventually!(instances(&a) == 2 && instances(&b) == 2);
    let first = ask(&a, &question(5)).await;
    assert_eq!(first.status(), 429, "the provider's own 429, passed on");
    assert_eq!(mock.engine().stats().requests_total, 1);
    // The other instance hears of it (published at once)...
    let paused =
        |g: &TestGateway| g.shared.services.limiter.as_ref().unwrap().views()[0].paused_for;
    assert_eventually!(paused(&b) > Duration::ZERO, Duration::from_secs(20));
    // ...and holds its requests back without asking the provider.
    let r = ask(&b, &question(5)).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("provider asked for a pause"), "{message}");
    assert_eq!(mock.engine().stats().requests_total, 1);
}

/// Subscribers to the fleet's events, as Redis counts them.
fn subscribers(redis: &RedisServer) -> usize {
    redis
        .query(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .lines()
        .filter(|l| l.contains("sub=1"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_stops_answering_is_replaced() {
    let redis = RedisServer::start();
    let relay = TcpRelay::start(([127, 0, 0, 1], redis.port()).into()).await;
    let mock = start_mock(MockOptions::zero_timing()).await;
    let config = toml(&mock, Some(&redis), "requests_per_minute = 1000")
        .replace(&redis.url(), &format!("redis://{}", relay.addr()));
    let gw = TestGateway::start_toml(&config).await;
    assert_eventually!(subscribers(&redis) == 1);
    // The path to Redis goes silent without closing: Redis still counts the old
    // subscription, which will never deliver anything again.
    relay.silence_open_connections();
    // Quiet for the instance timeout (1 s), the subscription is pinged, gets no pong within
    // 2 s, and is made again over a new connection (Redis then counts both: the old one's
    // close never reached it).
    assert_eventually!(subscribers(&redis) == 2, Duration::from_secs(20));
    assert_eq!(redis.commands_executed().get("subscribe"), Some(&2));
    assert_eq!(ask(&gw, &question(5)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_path_makes_no_redis_round_trip() {
    let redis = RedisServer::start();
    let mock = start_mock(MockOptions::zero_timing()).await;
    // Heartbeats far apart: whatever Redis sees during the requests is theirs.
    let config = toml(&mock, Some(&redis), "requests_per_minute = 100000").replace(
        "heartbeat = \"200ms\"\ninstance_timeout = \"1s\"",
        "heartbeat = \"60s\"\ninstance_timeout = \"180s\"",
    );
    let gw = TestGateway::start_toml(&config).await;
    // Started: the first heartbeat made, the subscription open, and Redis quiet since.
    assert_eventually!({
        let seen = redis.commands_executed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis.commands_executed() == seen
            && seen.contains_key("subscribe")
            && (seen.contains_key("evalsha") || seen.contains_key("eval"))
    });
    let before = redis.commands_executed();
    for _ in 0..200 {
        assert_eq!(ask(&gw, &question(5)).await.status(), 200);
    }
    let after = redis.commands_executed();
    let delta: BTreeMap<&str, u64> = after
        .iter()
        .map(|(name, n)| (name.as_str(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(delta, BTreeMap::new(), "200 admitted requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_costs_redis_six_commands_however_many_models() {
    let redis = RedisServer::start();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let mut config = toml(&mock, Some(&redis), "requests_per_minute = 100");
    for name in ["n", "o"] {
        config.push_str(&format!(
            "[models.{name}]\n[[models.{name}.endpoints]]\nurl = \"{}\"\n\
             [models.{name}.limits]\ntokens_per_minute = 100000\nestimated_tokens = 100\n",
            mock.base_url()
        ));
    }
    let a = TestGateway::start_toml(&config).await;
    let b = TestGateway::start_toml(&config).await;
    assert_eventually!(instances(&a) == 2 && instances(&b) == 2);
    let before = redis.commands_executed();
    assert_eventually!(
        redis
            .commands_executed()
            .get("evalsha")
            .copied()
            .unwrap_or(0)
            >= before.get("evalsha").copied().unwrap_or(0) + 10
    );
    let after = redis.commands_executed();
    let mut delta: BTreeMap<&str, u64> = after
        .iter()
        .map(|(name, n)| (name.as_str(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    // A subscription quiet for the instance timeout is pinged: not part of a heartbeat.
    delta.remove("ping");
    let beats = delta["evalsha"];
    // Register, read the members, read every report, read the pauses, write this
    // instance's reports: the same five for three models as for one.
    let expected: BTreeMap<&str, u64> = ["evalsha", "zadd", "zrange", "hgetall", "hmget", "hset"]
        .into_iter()
        .map(|c| (c, beats))
        .collect();
    assert_eq!(delta, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_an_instance_keeps_its_share_and_takes_its_part_again_when_redis_returns() {
    let mut redis = RedisServer::start();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let config = toml(&mock, Some(&redis), "requests_per_minute = 10");
    let a = TestGateway::start_toml(&config).await;
    let b = TestGateway::start_toml(&config).await;
    assert_eventually!(share(&a, Dimension::RequestsPerMinute) == Some(5));
    assert_eventually!(share(&b, Dimension::RequestsPerMinute) == Some(5));

    redis.kill();
    let view = |g: &TestGateway| {
        g.shared
            .services
            .limiter
            .as_ref()
            .unwrap()
            .coordination()
            .unwrap()
    };
    assert_eventually!(view(&a).degraded.is_some());
    // Fail-static: never more than the last share (and, once the others would count this
    // instance gone, its conservative part), however long the outage.
    let mut admitted = 0;
    for _ in 0..10 {
        if ask(&a, &question(5)).await.status() == 200 {
            admitted += 1;
        }
    }
    assert!((1..=5).contains(&admitted), "{admitted}");
    assert!(share(&a, Dimension::RequestsPerMinute).unwrap() <= 5);
    let d = view(&a).degraded.unwrap();
    assert_eq!(d.mode.as_str(), "fail_static");

    redis.restart();
    assert_eventually!(
        view(&a).degraded.is_none() && view(&b).degraded.is_none(),
        Duration::from_secs(5)
    );
    assert_eventually!(
        instances(&a) == 2 && instances(&b) == 2,
        Duration::from_secs(5)
    );
    // Counted where the admin view and metrics show it.
    let errors = sluice_testkit::metric_value(
        &a.metrics_text().await,
        "sluice_limits_redis_errors_total",
        &[],
    );
    assert!(errors >= 1.0, "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_reports_less_remaining_shrinks_the_pool_before_it_refuses() {
    // The provider allows 1 000 tokens a minute, about 9 answers of 100 tokens; the
    // gateway's own limit is far higher.
    let mock = start_mock(MockOptions {
        output: sluice_mock::OutputOptions {
            min_tokens: 100,
            max_tokens: 100,
        },
        limits: sluice_mock::ProviderLimits {
            tokens_per_minute: Some(1_000),
            requests_per_minute: None,
            max_concurrent: None,
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let gw = TestGateway::start_toml(&toml(
        &mock,
        None,
        "tokens_per_minute = 1000000\nestimated_tokens = 300",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = ask(&gw, &question(300)).await;
        statuses.push(r.status().as_u16());
    }
    // The gateway refused once the provider said too little remained; the provider
    // itself never had to.
    assert!(statuses.contains(&429), "{statuses:?}");
    let stats = mock.engine().stats();
    assert_eq!(stats.rate_limited_total, 0, "{statuses:?}");
    assert_eq!(
        stats.admitted_total,
        statuses.iter().filter(|s| **s == 200).count() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_follow_demand_and_never_add_up_to_more_than_the_limit() {
    let redis = RedisServer::start();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let config = toml(&mock, Some(&redis), "requests_per_minute = 20");
    let busy = TestGateway::start_toml(&config).await;
    let idle = TestGateway::start_toml(&config).await;
    let rpm = |g: &TestGateway| share(g, Dimension::RequestsPerMinute).unwrap();
    assert_eventually!(rpm(&busy) == 10 && rpm(&idle) == 10);
    // All the traffic goes to one instance: it uses its share, and more is refused.
    let mut admitted = 0;
    for _ in 0..15 {
        if ask(&busy, &question(5)).await.status() == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
    // Its unmet demand moves most of the limit to it; the idle one keeps a little.
    assert_eventually!(rpm(&busy) > 15 && rpm(&idle) >= 1, Duration::from_secs(20));
    assert!(
        rpm(&busy) + rpm(&idle) <= 20,
        "{} + {}",
        rpm(&busy),
        rpm(&idle)
    );
    let mut more = 0;
    for _ in 0..15 {
        if ask(&busy, &question(5)).await.status() == 200 {
            more += 1;
        }
    }
    assert!(more >= 5, "{more}");
    // However it is split, the minute's requests stay within the limit.
    assert!(admitted + more <= 20, "{}", admitted + more);
}

/// A key with its own requests-per-minute limit, in `table`.
fn limited_key(table: &sluice_gateway::auth::KeyTable, name: &str, rpm: u64) -> String {
    use sluice_gateway::auth::{NewKey, ScopeSet};
    let (_, secret) = table
        .create(NewKey {
            name: name.into(),
            tenant: "acme".into(),
            subject: None,
            scopes: ScopeSet::parse_list("chat:write").unwrap(),
            models: Vec::new(),
            expires_unix: None,
            requests_per_minute: Some(rpm),
            tokens_per_minute: None,
        })
        .unwrap();
    format!("Bearer {secret}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_keys_own_limit_holds_on_any_model_and_across_instances() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(sluice_store::EmbeddedStore::open(dir.path()).unwrap());
    let key = limited_key(
        &sluice_gateway::auth::KeyTable::open(store).unwrap(),
        "ci",
        3,
    );
    // A model without limits of its own: only the key's apply.
    let alone = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[auth]\nmode = \"keys\"\n\
         [models.m]\n[[models.m.endpoints]]\nurl = \"{}\"\n",
        dir.path().display(),
        mock.base_url()
    );
    let gw = TestGateway::start_toml(&alone).await;
    let send = |gw: &TestGateway| {
        reqwest::Client::new()
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", &key)
            .json(&question(5))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(&gw).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let refused: Value = send(&gw).await.unwrap().json().await.unwrap();
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("API key `ci`: its requests_per_minute limit"),
        "{message}"
    );
    drop(gw);

    // Two instances on one Redis share the key's limit: 4 a minute in all.
    // With Redis, keys live there.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let in_redis = sluice_store::RedisStore::connect(&redis.url()).unwrap();
    let key = limited_key(
        &sluice_gateway::auth::KeyTable::redis(std::sync::Arc::new(in_redis)),
        "shared",
        4,
    );
    let shared = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[auth]\nmode = \"keys\"\n\
         [state]\nredis_url = \"{}\"\n{FLEET}[models.m]\n[[models.m.endpoints]]\nurl = \"{}\"\n",
        dir.path().display(),
        redis.url(),
        mock.base_url()
    );
    let a = TestGateway::start_toml(&shared).await;
    let b = TestGateway::start_toml(&shared).await;
    assert_eventually!(instances(&a) == 2 && instances(&b) == 2);
    let send = |gw: &TestGateway| {
        reqwest::Client::new()
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", &key)
            .json(&question(5))
            .send()
    };
    let mut admitted = 0;
    for i in 0..12 {
        let gw = if i % 2 == 0 { &a } else { &b };
        if send(gw).await.unwrap().status() == 200 {
            admitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        (2..=4).contains(&admitted),
        "{admitted} admitted of the key's 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_type_ratios_stay_with_their_instance() {
    let redis = RedisServer::start();
    let mock = start_mock(MockOptions {
        faults: sluice_mock::Faults {
            added_latency_ms: 400,
            ..sluice_mock::Faults::default()
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let config = toml(
        &mock,
        Some(&redis),
        "max_concurrent = 40\nmax_wait = \"5s\"\ndefault_job_type = \"a\"\n\
         [models.m.limits.job_types.a]\nratio = 0.5\nkind = \"flexible\"\n\
         [models.m.limits.job_types.b]\nratio = 0.5\nkind = \"flexible\"\n",
    );
    let busy = TestGateway::start_toml(&config).await;
    let other = TestGateway::start_toml(&config).await;
    assert_eventually!(instances(&busy) == 2 && instances(&other) == 2);
    let ratios = |g: &TestGateway| -> Vec<f64> {
        g.shared.services.limiter.as_ref().unwrap().views()[0]
            .jobs
            .iter()
            .map(|j| j.ratio)
            .collect()
    };
    // Job type `a` floods one instance (20 slots, 10 for each type) with four waves' worth:
    // its requests wait, and `a` borrows from the idle `b` there.
    let body = question(5);
    let flood = futures_util::future::join_all((0..40).map(|_| ask(&busy, &body)));
    let watch = async {
        assert_eventually!(ratios(&busy)[0] > 0.5, Duration::from_secs(8));
    };
    let (answers, ()) = tokio::join!(flood, watch);
    assert!(answers.iter().all(|r| r.status() == 200));
    // The other instance's ratios did not move: they are never shared.
    assert!(ratios(&busy)[0] > 0.5);
    assert_eq!(ratios(&other), vec![0.5, 0.5]);
}
