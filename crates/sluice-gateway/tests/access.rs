//! Who may call what, through a real gateway with `auth.mode = "keys"`, its real SQLite store
//! in a temp data directory, and a real mock engine: the access matrix as one table, keys
//! surviving a restart, and a revocation reaching a second gateway on the same store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_gateway::auth::{now_unix, KeyTable, NewKey, Scope, ScopeSet};
use sluice_store::EmbeddedStore;
use sluice_testkit::{gateway_toml, start_mock, MockOptions, TestGateway};

fn config(mock_url: &str, data_dir: &Path) -> String {
    let mut toml = gateway_toml(
        "m",
        &[mock_url.to_owned()],
        &format!(
            "data_dir = \"{}\"\n[auth]\nmode = \"keys\"\n",
            data_dir.display()
        ),
    );
    toml.push_str(&format!(
        "[models.other]\n[[models.other.endpoints]]\nurl = \"{mock_url}\"\n"
    ));
    toml
}

fn table(data_dir: &Path) -> KeyTable {
    KeyTable::open(Arc::new(EmbeddedStore::open(data_dir).unwrap())).unwrap()
}

fn scopes(list: &[Scope]) -> ScopeSet {
    list.iter().copied().collect()
}

/// Creates a key and returns its secret.
fn key(table: &KeyTable, name: &str, tenant: &str, scopes: ScopeSet, models: &[&str]) -> String {
    table
        .create(NewKey {
            name: name.into(),
            tenant: tenant.into(),
            subject: None,
            scopes,
            models: models.iter().map(|m| m.to_string()).collect(),
            expires_unix: None,
            requests_per_minute: None,
            tokens_per_minute: None,
        })
        .unwrap()
        .1
}

async fn call(
    client: &reqwest::Client,
    gw: &TestGateway,
    route: &Route,
    key: Option<&str>,
) -> (u16, Value) {
    let url = gw.url(route.path);
    let mut req = match route.method {
        "POST" => client.post(url).json(&json!({
            "model": "m", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]})),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

struct Route {
    method: &'static str,
    path: &'static str,
}

const CHAT: Route = Route {
    method: "POST",
    path: "/v1/chat/completions",
};
const MODELS: Route = Route {
    method: "GET",
    path: "/v1/models",
};
/// A resource of tenant `acme`: its key `acme-bot`.
const ACME_KEY: Route = Route {
    method: "GET",
    path: "/v1/admin/keys/acme-bot",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_matrix() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let t = table(dir.path());
    let all = scopes(&Scope::ALL);
    let right = key(&t, "acme-admin", "acme", all, &[]);
    key(&t, "acme-bot", "acme", scopes(&[Scope::ChatWrite]), &[]);
    let wrong_scope = key(&t, "acme-reader", "acme", scopes(&[Scope::ModelsRead]), &[]);
    let model_not_allowed = key(
        &t,
        "acme-other",
        "acme",
        scopes(&[Scope::ChatWrite, Scope::ModelsRead]),
        &["other"],
    );
    let other_tenant = key(&t, "globex-admin", "globex", all, &[]);
    let global = key(&t, "root", "*", all, &[]);
    let revoked = key(&t, "acme-gone", "acme", all, &[]);
    assert!(t.revoke("acme-gone", None).unwrap());
    let expired = t
        .create(NewKey {
            name: "acme-old".into(),
            tenant: "acme".into(),
            subject: None,
            scopes: all,
            models: vec![],
            expires_unix: Some(now_unix() - 10),
            requests_per_minute: None,
            tokens_per_minute: None,
        })
        .unwrap()
        .1;

    let gw = TestGateway::start_toml(&config(&mock.base_url(), dir.path())).await;
    let client = reqwest::Client::new();
    let unknown = "sk-sluice-thisisnotakeyanybodyhasthisisnotakeyanybod";
    // credential → expected status on (chat, models, another key of tenant acme).
    let matrix: [(&str, Option<&str>, [u16; 3]); 10] = [
        ("no key", None, [401, 401, 401]),
        ("unknown key", Some(unknown), [401, 401, 401]),
        ("expired", Some(&expired), [401, 401, 401]),
        ("revoked", Some(&revoked), [401, 401, 401]),
        ("wrong scope", Some(&wrong_scope), [403, 200, 403]),
        (
            "model not allowed",
            Some(&model_not_allowed),
            [403, 200, 403],
        ),
        ("other tenant", Some(&other_tenant), [200, 200, 404]),
        ("right", Some(&right), [200, 200, 200]),
        ("global admin", Some(&global), [200, 200, 200]),
        ("not a bearer token", Some("Basic"), [401, 401, 401]),
    ];
    let mut failures = Vec::new();
    for (who, credential, expected) in &matrix {
        for (route, want) in [&CHAT, &MODELS, &ACME_KEY].into_iter().zip(expected) {
            let (got, body) = call(&client, &gw, route, *credential).await;
            if got != *want {
                failures.push(format!(
                    "{who}: {} {} → {got}, want {want}: {body}",
                    route.method, route.path
                ));
            }
            if got >= 400 {
                // OpenAI's shape, a message that says what to do, and never the secret.
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(!message.is_empty(), "{who} {}: {body}", route.path);
                if let Some(c) = credential {
                    assert!(!body.to_string().contains(c), "{who}: the key was echoed");
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What the refusals say.
    let (_, body) = call(&client, &gw, &CHAT, Some(&wrong_scope)).await;
    assert_eq!(body["error"]["code"], "insufficient_scope");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("chat:write"));
    let (_, body) = call(&client, &gw, &CHAT, Some(&model_not_allowed)).await;
    assert_eq!(body["error"]["code"], "model_not_allowed");
    let (_, body) = call(&client, &gw, &CHAT, Some(&expired)).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let (_, body) = call(&client, &gw, &ACME_KEY, Some(&other_tenant)).await;
    assert_eq!(body["error"]["code"], "not_found");

    // /v1/models lists only what the key may use.
    let (_, body) = call(&client, &gw, &MODELS, Some(&model_not_allowed)).await;
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["other"]);
    let (_, body) = call(&client, &gw, &MODELS, Some(&right)).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2);

    // Health, readiness and metrics need no key.
    for path in ["/health", "/metrics"] {
        let status = client.get(gw.url(path)).send().await.unwrap().status();
        assert_eq!(status, 200, "{path}");
    }
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_client_never_gets_its_body_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_toml(&config(&mock.base_url(), dir.path())).await;
    // A head announcing 32 MiB, and no body at all: the answer comes from the head alone.
    let mut sock = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    sock.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 33554432\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = sock.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer without the body");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_over_http_stay_within_the_tenant() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let t = table(dir.path());
    let acme_admin = key(&t, "acme-admin", "acme", scopes(&[Scope::Admin]), &[]);
    key(&t, "globex-bot", "globex", scopes(&[Scope::ChatWrite]), &[]);
    let gw = TestGateway::start_toml(&config(&mock.base_url(), dir.path())).await;
    let client = reqwest::Client::new();

    // Create: the secret comes back once; the tenant is the admin's own.
    let resp = client
        .post(gw.url("/v1/admin/keys"))
        .bearer_auth(&acme_admin)
        .json(&json!({"name": "acme-ci", "scopes": ["chat:write"], "models": ["m"], "expires_in": "1d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["tenant"], "acme");
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk-sluice-"));

    // Another tenant is refused for creation and invisible for the rest.
    let resp = client
        .post(gw.url("/v1/admin/keys"))
        .bearer_auth(&acme_admin)
        .json(&json!({"name": "sneaky", "tenant": "globex", "scopes": ["chat:write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let list: Value = client
        .get(gw.url("/v1/admin/keys"))
        .bearer_auth(&acme_admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme-admin", "acme-ci"]);
    assert!(!list.to_string().contains("digest") && !list.to_string().contains("sk-sluice-"));
    let resp = client
        .delete(gw.url("/v1/admin/keys/globex-bot"))
        .bearer_auth(&acme_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        t.get("globex-bot", None).unwrap().unwrap().revoked_unix,
        None
    );

    // The new key works, and stops working once revoked over HTTP.
    let chat = |k: String| {
        let client = client.clone();
        let url = gw.url("/v1/chat/completions");
        async move {
            client
                .post(url)
                .bearer_auth(k)
                .json(&json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(wait_for_status(|| chat(secret.clone()), 200).await, 200);
    let resp = client
        .delete(gw.url("/v1/admin/keys/acme-ci"))
        .bearer_auth(&acme_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "revoked");
    assert_eq!(wait_for_status(|| chat(secret.clone()), 401).await, 401);
    gw.shutdown().await.unwrap();
}

/// Calls `f` until it answers `want` (or 30 s pass); returns the last answer.
async fn wait_for_status<F, Fut>(f: F, want: u16) -> u16
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = f().await;
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_a_restart_and_a_revocation_reaches_every_gateway_on_the_store() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&mock.base_url(), dir.path());
    let t = table(dir.path());
    let secret = key(&t, "shared", "acme", scopes(&[Scope::ModelsRead]), &[]);
    let client = reqwest::Client::new();
    let models = |gw: &TestGateway| {
        let req = client.get(gw.url("/v1/models")).bearer_auth(&secret);
        async move { req.send().await.unwrap().status().as_u16() }
    };

    let first = TestGateway::start_toml(&toml).await;
    assert_eq!(models(&first).await, 200);
    first.shutdown().await.unwrap();
    // A new process on the same data directory knows the key.
    let a = TestGateway::start_toml(&toml).await;
    let b = TestGateway::start_toml(&toml).await;
    assert_eq!(models(&a).await, 200);
    assert_eq!(models(&b).await, 200);

    // Revoked through another connection to the store (as `sluice keys revoke` does).
    let revoked_at = Instant::now();
    assert!(table(dir.path()).revoke("shared", None).unwrap());
    let mut took = Vec::new();
    for gw in [&a, &b] {
        assert_eq!(wait_for_status(|| models(gw), 401).await, 401);
        took.push(revoked_at.elapsed());
    }
    // The documented bound is 5 s (the refresher looks every 0.5 s); what this run saw is
    // printed, not asserted: a busy machine may be slower, and that is not a defect.
    println!("revocation refused by both gateways after {took:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_declared_in_the_config_by_its_digest_is_accepted() {
    use sluice_gateway::auth::{KeyDigest, NewSecret};
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = NewSecret::generate().unwrap().secret;
    let digest = KeyDigest::of(secret.as_bytes()).to_hex();
    let mut toml = config(&mock.base_url(), dir.path());
    toml.push_str(&format!(
        "[[auth.keys]]\nname = \"gitops\"\ntenant = \"acme\"\ndigest = \"sha256:{digest}\"\nscopes = [\"models:read\"]\nmodels = [\"other\"]\n"
    ));
    let gw = TestGateway::start_toml(&toml).await;
    let client = reqwest::Client::new();
    let (status, body) = call(&client, &gw, &MODELS, Some(&secret)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["id"], "other");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (status, _) = call(&client, &gw, &CHAT, Some(&secret)).await;
    assert_eq!(status, 403);
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_redis_are_shared_by_every_instance_and_survive_without_it() {
    use sluice_testkit::redis::RedisServer;
    let mut redis = RedisServer::start();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut toml = config(&mock.base_url(), dir.path());
    toml.push_str(&format!("[state]\nredis_url = \"{}\"\n", redis.url()));
    let store = sluice_store::RedisStore::connect(&redis.url()).unwrap();
    let t = KeyTable::redis(Arc::new(store));
    let admin = key(&t, "ops", "acme", scopes(&[Scope::Admin]), &[]);

    let a = TestGateway::start_toml(&toml).await;
    let b = TestGateway::start_toml(&toml).await;
    let client = reqwest::Client::new();
    // Made through one instance's admin API...
    let created: Value = client
        .post(a.url("/v1/admin/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "shared", "scopes": ["models:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["key"].as_str().unwrap().to_owned();
    let models = |gw: &TestGateway| {
        let req = client.get(gw.url("/v1/models")).bearer_auth(&secret);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // ...it works on the other.
    assert_eq!(wait_for_status(|| models(&b), 200).await, 200);
    assert_eq!(wait_for_status(|| models(&a), 200).await, 200);
    // Nothing of it is in the data directory: Redis holds the keys.
    assert!(!dir.path().join("sluice.db").exists());

    // Revoked through the second instance, refused by both.
    let revoked_at = Instant::now();
    let resp = client
        .delete(b.url("/v1/admin/keys/shared"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut took = Vec::new();
    for gw in [&a, &b] {
        assert_eq!(wait_for_status(|| models(gw), 401).await, 401);
        took.push(revoked_at.elapsed());
    }
    println!("revocation through Redis refused by both instances after {took:?}");

    // With Redis gone, keys already known keep working (checking one never waits on
    // Redis); the admin API says its store failed.
    redis.kill();
    let ops = client
        .get(a.url("/v1/models"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(ops.status(), 403, "an admin-only key may not list models");
    let listed = client
        .get(a.url("/v1/admin/keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 500);
    let body: Value = listed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_failed");
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
