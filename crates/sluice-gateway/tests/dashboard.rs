//! `deploy/grafana/sluice.json` is built on the real metric names: after a run of traffic
//! through a real gateway (unary, streamed, failed; with an audit log and traces), every metric the
//! dashboard queries is on `/metrics`, with every label it groups or filters by.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use regex::Regex;
use serde_json::{json, Value};
use sluice_testkit::{gateway_toml, refused_url, start_mock, MockOptions, TestGateway};

fn dashboard_queries() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/sluice.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists() {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let collector = sluice_testkit::otlp::OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = gateway_toml(
        "m",
        &[mock.base_url(), refused_url()],
        &format!(
            "[audit]\nsink = \"file\"\npath = \"{}\"\n[otel]\nendpoint = \"{}\"\n",
            dir.path().join("audit.jsonl").display(),
            collector.endpoint()
        ),
    );
    let gw = TestGateway::start_toml(&toml).await;
    let client = reqwest::Client::new();
    for stream in [false, true, false, true] {
        let resp = client
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "m", "stream": stream, "max_tokens": 4,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let unknown = client
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let text = gw.metrics_text().await;

    let name = Regex::new(r"\bsluice_[a-z_]+").unwrap();
    let grouping = Regex::new(r"by \(([a-z_, ]+)\)").unwrap();
    let filter = Regex::new(r"\{([a-z_]+)=").unwrap();
    let mut checked = BTreeSet::new();
    for expr in dashboard_queries() {
        let mut labels: Vec<String> = grouping
            .captures_iter(&expr)
            .flat_map(|c| {
                c[1].split(',')
                    .map(|l| l.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .chain(filter.captures_iter(&expr).map(|c| c[1].to_owned()))
            .filter(|l| l != "le")
            .collect();
        labels.sort();
        labels.dedup();
        for metric in name.find_iter(&expr).map(|m| m.as_str()) {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
                .collect();
            assert!(
                !lines.is_empty(),
                "`{metric}` (in `{expr}`) is not on /metrics:\n{text}"
            );
            for label in &labels {
                // A metric the query groups by `label` carries it (metrics without labels
                // are summed whole and group by nothing).
                if lines.iter().any(|l| l.contains('{')) {
                    assert!(
                        lines.iter().any(|l| l.contains(&format!("{label}=\""))),
                        "`{metric}` has no label `{label}` (in `{expr}`):\n{}",
                        lines.join("\n")
                    );
                }
            }
            checked.insert(metric.to_owned());
        }
    }
    assert!(checked.len() >= 12, "{checked:?}");
    gw.shutdown().await.unwrap();
}
