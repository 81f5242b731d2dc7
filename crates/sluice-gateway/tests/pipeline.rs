//! The request path's phases with services plugged in: a key store, a cache, a limiter and an
//! audit sink of the test's own (in-memory; the real ones come with their issues), through a
//! real gateway and a real mock engine over loopback. Each test shows a seam doing its job:
//! authentication before the body, a cache hit answering with no upstream call, a refusal
//! with Retry-After, one audit record per request with the phases' decisions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_gateway::auth::Scope;
use sluice_gateway::services::{
    Admission, Admitted, AuditRecord, AuditSink, AuthError, BoxFuture, CacheQuery, CacheStore,
    Charge, KeyPrincipal, KeyStore, Limiter, NotAdmitted, Permit, Phase, Principal, RateLimitState,
    Refusal,
};
use sluice_gateway::state::Services;
use sluice_testkit::{assert_eventually, gateway_toml, start_mock, MockOptions, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Keys;

impl KeyStore for Keys {
    fn authenticate(&self, token: Option<&[u8]>) -> Result<Principal, AuthError> {
        match token {
            None => Err(AuthError::Missing),
            Some(b"sk-acme") => Ok(Principal::Key(Arc::new(KeyPrincipal {
                tenant: "acme".into(),
                subject: "ci-key".into(),
                key_name: "ci-key".into(),
                scopes: [Scope::ChatWrite, Scope::ModelsRead].into_iter().collect(),
                allowed_models: vec!["m".into()],
                requests_per_minute: None,
                tokens_per_minute: None,
            }))),
            Some(b"sk-other-model") => Ok(Principal::Key(Arc::new(KeyPrincipal {
                tenant: "acme".into(),
                subject: "narrow".into(),
                key_name: "narrow".into(),
                scopes: [Scope::ChatWrite, Scope::ModelsRead].into_iter().collect(),
                allowed_models: vec!["not-m".into()],
                requests_per_minute: None,
                tokens_per_minute: None,
            }))),
            Some(_) => Err(AuthError::Invalid),
        }
    }
}

#[derive(Default)]
struct Audit(Mutex<Vec<AuditRecord>>);

impl AuditSink for Audit {
    fn record(&self, record: AuditRecord) {
        self.0.lock().unwrap().push(record);
    }
}

impl Audit {
    fn records(&self) -> Vec<AuditRecord> {
        self.0.lock().unwrap().clone()
    }
}

/// Entries by key, in a map: the seam without the real store.
#[derive(Default)]
struct MemoryCache(Mutex<HashMap<sluice_cache::CacheKey, Arc<sluice_cache::Entry>>>);

impl CacheStore for MemoryCache {
    fn lookup<'a>(
        &'a self,
        query: CacheQuery<'a>,
    ) -> BoxFuture<'a, Option<Arc<sluice_cache::Entry>>> {
        let hit = self.0.lock().unwrap().get(query.key).cloned();
        Box::pin(async move { hit })
    }

    fn store(&self, key: sluice_cache::CacheKey, entry: Arc<sluice_cache::Entry>) {
        self.0.lock().unwrap().insert(key, entry);
    }
}

/// Admits requests estimated at `max` tokens or fewer; records what permits were charged.
struct TokenCap {
    max: u64,
    charged: Arc<Mutex<Vec<Charge>>>,
}

struct CapPermit(Arc<Mutex<Vec<Charge>>>);

impl Permit for CapPermit {
    fn settle(self: Box<Self>, charge: Charge) {
        self.0.lock().unwrap().push(charge);
    }
}

impl Limiter for TokenCap {
    fn admit<'a>(&'a self, request: Admission<'a>) -> BoxFuture<'a, Result<Admitted, NotAdmitted>> {
        let estimate = request.prompt_tokens + request.output_tokens.unwrap_or(0);
        let verdict = if estimate <= self.max {
            Ok(Admitted {
                permit: Some(Box::new(CapPermit(self.charged.clone())) as Box<dyn Permit>),
                state: RateLimitState::default(),
                job_type: "default".into(),
            })
        } else {
            Err(NotAdmitted::Limited(Refusal {
                retry_after: Duration::from_millis(1500),
                reason: format!("{estimate} tokens is over the cap of {}", self.max),
                refused_by: "tokens_per_minute",
                state: RateLimitState::default(),
            }))
        };
        Box::pin(async move { verdict })
    }
}

fn body(extra: Value) -> String {
    let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

async fn post(gw: &TestGateway, key: Option<&str>, body: String) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn authentication_runs_on_the_head_and_scopes_models() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let audit = Arc::new(Audit::default());
    let services = Services {
        keys: Some(Arc::new(Keys)),
        audit: Some(audit.clone()),
        ..Services::default()
    };
    let gw = TestGateway::start_with(&gateway_toml("m", &[mock.base_url()], ""), services).await;

    // Refused before its body is read: a head announcing 10 MB, and no body sent.
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    raw.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("invalid_api_key"), "{answer}");

    let resp = post(&gw, Some("sk-wrong"), body(json!({}))).await;
    assert_eq!(resp.status(), 401);
    let resp = post(&gw, Some("sk-other-model"), body(json!({}))).await;
    assert_eq!(resp.status(), 403);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_allowed");
    let resp = post(&gw, Some("sk-acme"), body(json!({}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mock.engine().stats().requests_total,
        1,
        "only the admitted request went upstream"
    );

    assert_eventually!(audit.records().len() == 4);
    let records = audit.records();
    let statuses: Vec<u16> = records.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401, 401, 403, 200]);
    assert_eq!(records[0].tenant, "anonymous");
    assert_eq!(records[3].tenant, "acme");
    assert_eq!(records[3].model.as_deref(), Some("m"));
}

#[tokio::test]
async fn a_cache_hit_answers_without_the_upstream_and_says_so() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let audit = Arc::new(Audit::default());
    let services = Services {
        cache: Some(Arc::new(MemoryCache::default())),
        audit: Some(audit.clone()),
        ..Services::default()
    };
    let toml = gateway_toml("m", &[mock.base_url()], "") + "[models.m.cache]\nmode = \"on\"\n";
    let gw = TestGateway::start_with(&toml, services).await;

    let first = post(&gw, None, body(json!({}))).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-sluice-cache"], "miss");
    let first_body = first.text().await.unwrap();
    let second = post(&gw, None, body(json!({}))).await;
    assert_eq!(second.headers()["x-sluice-cache"], "hit");
    assert!(second.headers().contains_key("x-request-id"));
    // The same answer, under a fresh id, with no upstream tokens spent and what was saved.
    let first: Value = serde_json::from_str(&first_body).unwrap();
    let hit: Value = second.json().await.unwrap();
    assert_eq!(hit["choices"], first["choices"]);
    assert_ne!(hit["id"], first["id"]);
    assert_eq!(hit["usage"]["completion_tokens"], 0);
    assert_eq!(
        hit["usage"]["sluice_cache_saved"]["completion_tokens"],
        first["usage"]["completion_tokens"]
    );
    assert_eq!(
        mock.engine().stats().requests_total,
        1,
        "the hit made no upstream call"
    );

    // Another request misses; the first question streamed is a hit too, as a stream.
    let other = post(&gw, None, body(json!({"max_tokens": 5}))).await;
    assert_eq!(other.headers()["x-sluice-cache"], "miss");
    let stream = post(&gw, None, body(json!({"stream": true}))).await;
    assert_eq!(stream.headers()["x-sluice-cache"], "hit");
    assert!(stream.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(mock.engine().stats().requests_total, 2);

    // An error carries the phases' headers too (a miss, then the upstream fails).
    let faults = reqwest::Client::new()
        .patch(mock.base_url().replace("/v1", "/admin/faults"))
        .json(&json!({"error_rate": 1.0, "error_status": 500}))
        .send()
        .await
        .unwrap();
    assert!(faults.status().is_success());
    let failed = post(&gw, None, body(json!({"max_tokens": 6}))).await;
    assert_eq!(failed.status(), 502);
    assert_eq!(failed.headers()["x-sluice-cache"], "miss");

    assert_eventually!(audit.records().len() == 5);
    let outcomes: Vec<&'static str> = audit
        .records()
        .iter()
        .flat_map(|r| {
            r.decisions
                .iter()
                .filter(|d| d.phase == Phase::CacheLookup)
                .map(|d| d.outcome)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(outcomes, vec!["miss", "hit", "miss", "hit", "miss"]);
}

#[tokio::test]
async fn the_limiter_refuses_with_retry_after_and_reconciles_what_it_admitted() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let charged = Arc::new(Mutex::new(Vec::new()));
    let services = Services {
        limiter: Some(Arc::new(TokenCap {
            max: 100,
            charged: charged.clone(),
        })),
        ..Services::default()
    };
    // The table makes the model a limited one; the test's limiter stands in for the pools.
    let limits = "[models.m.limits]\nrequests_per_minute = 1000\n";
    let gw =
        TestGateway::start_with(&gateway_toml("m", &[mock.base_url()], limits), services).await;

    let resp = post(&gw, None, body(json!({"max_tokens": 4}))).await;
    assert_eq!(resp.status(), 200);
    let usage: Value = resp.json().await.unwrap();
    assert_eq!(
        *charged.lock().unwrap(),
        vec![Charge::Usage {
            prompt_tokens: usage["usage"]["prompt_tokens"].as_u64().unwrap(),
            completion_tokens: usage["usage"]["completion_tokens"].as_u64().unwrap(),
        }]
    );

    let resp = post(&gw, None, body(json!({"max_tokens": 1000}))).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("over the cap"));
    assert_eq!(
        mock.engine().stats().requests_total,
        1,
        "the refused request never went upstream"
    );
}

/// Every request is audited exactly once, including one whose client went away mid-stream
/// (499), with the route and upstream decisions naming the endpoint by its label.
#[tokio::test]
async fn every_request_is_audited_once_with_its_decisions() {
    let mock = start_mock(MockOptions {
        timing: sluice_mock::TimingModel {
            decode_interval: Duration::from_millis(20),
            ..MockOptions::zero_timing().timing
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let audit = Arc::new(Audit::default());
    let services = Services {
        audit: Some(audit.clone()),
        ..Services::default()
    };
    let toml =
        gateway_toml("m", &[mock.base_url()], "").replace("url = ", "name = \"engine-a\"\nurl = ");
    let gw = TestGateway::start_with(&toml, services).await;

    assert_eq!(post(&gw, None, body(json!({}))).await.status(), 200);
    assert_eq!(
        post(&gw, None, body(json!({"model": "nope"})))
            .await
            .status(),
        404
    );
    // A stream the client abandons after its first bytes.
    let mut resp = post(
        &gw,
        None,
        body(json!({"stream": true, "max_tokens": 200, "ignore_eos": true})),
    )
    .await;
    resp.chunk().await.unwrap();
    drop(resp);

    assert_eventually!(audit.records().len() == 3);
    let records = audit.records();
    let mut statuses: Vec<u16> = records.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 404, 499]);
    let ok = records.iter().find(|r| r.status == 200).unwrap();
    let said: Vec<String> = ok.decisions.iter().map(ToString::to_string).collect();
    assert_eq!(
        said,
        vec!["route=round_robin(engine-a)", "upstream=answered(engine-a)"]
    );
    let unknown = records.iter().find(|r| r.status == 404).unwrap();
    assert_eq!(unknown.model, None);
    // Nothing more arrives later, even once the gateway has drained: exactly once.
    gw.shutdown().await.unwrap();
    assert_eq!(audit.records().len(), 3);
}
