//! The API contract: `/openapi.json` is the checked-in `docs/openapi.json`, every `$ref`
//! resolves, and every documented route is served (no route answers "unknown path" or a
//! method it does not allow). schemathesis checks the answers against the schemas in the
//! test command (`tests/python/test_openapi_contract.py`).
//!
//! After changing the contract: `SLUICE_UPDATE_OPENAPI=1 cargo test -p sluice-gateway --test
//! openapi` rewrites `docs/openapi.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sluice_gateway::openapi::{document, ROUTES};
use sluice_testkit::{gateway_toml, start_mock, MockOptions, TestGateway};

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_checked_in_one() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = TestGateway::start_toml(&gateway_toml("m", &[mock.base_url()], "")).await;
    let served: Value = reqwest::get(gw.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, document());
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("SLUICE_UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &pretty).unwrap();
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        checked_in == pretty,
        "docs/openapi.json differs from what the gateway serves; after changing the API run \
         SLUICE_UPDATE_OPENAPI=1 cargo test -p sluice-gateway --test openapi, and review the diff"
    );
    gw.shutdown().await.unwrap();
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push(x.as_str().unwrap().to_owned());
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 10);
    for r in all {
        let pointer = r.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let gw = TestGateway::start_toml(&gateway_toml("m", &[mock.base_url()], "")).await;
    let client = reqwest::Client::new();
    for route in ROUTES {
        let path = route.path.replace("{name}", "someone");
        let method = reqwest::Method::from_bytes(route.method.to_uppercase().as_bytes()).unwrap();
        let resp = client
            .request(method, gw.url(&path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert!(
            status != 405 && !body.contains("unknown_url"),
            "{} {path}: {status} {body}",
            route.method
        );
        let documented: Vec<&str> = route.responses.iter().map(|r| r.0).collect();
        assert!(
            documented.contains(&status.to_string().as_str()) || documented.contains(&"default"),
            "{} {path} answered {status}, documented {documented:?}: {body}",
            route.method
        );
    }
    gw.shutdown().await.unwrap();
}
