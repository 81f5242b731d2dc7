//! Reports on disk, `compare` on them, error classes, verdicts and sweeps, end to end
//! against the mock engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{config, zero_mock};
use sluice_load::compare::{compare, read_report, Thresholds};
use sluice_load::report::{
    render_console, render_markdown, write_chart, write_json, write_ndjson, write_text,
};
use sluice_load::{Bound, LoadError, Mode, Outcome, Warmup};
use sluice_mock::{Faults, MockOptions, MockServer};

async fn faulty_mock(faults: Faults) -> MockServer {
    let options = MockOptions {
        faults,
        ..MockOptions::zero_timing()
    };
    MockServer::start(options, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_format_is_written_and_compare_reads_json() {
    let mock = zero_mock().await;
    let mut c = config(mock.base_url(), 8);
    c.mode = Mode::Concurrency { concurrency: 4 };
    c.bound.requests = Some(200);
    c.warmup = Warmup::Requests(10);
    c.slos = vec![
        "ttft.p95<5s".parse().unwrap(),
        "error_rate<0.01".parse().unwrap(),
    ];
    let result = sluice_load::run(c).await.unwrap();
    assert_eq!(result.report.verdict.outcome, Outcome::Pass);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let ndjson = dir.path().join("r.ndjson");
    let md = dir.path().join("r.md");
    let svg = dir.path().join("r.svg");
    write_json(&result.report, &json).unwrap();
    write_ndjson(&result.records, &ndjson).unwrap();
    write_text(&render_markdown(&result.report), &md).unwrap();
    write_chart(&result.report, &svg).unwrap();

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["tool"]["name"], "sluice load");
    assert!(v["environment"]["cores"].as_u64().unwrap() >= 1);
    assert!(v["environment"]["hostname"].is_string());
    assert_eq!(v["targets"][0], mock.base_url());
    assert_eq!(v["config"]["model"], "mock");
    assert_eq!(v["config"]["mode"]["kind"], "concurrency");
    assert_eq!(v["config"]["timeout_s"], 60.0);
    assert_eq!(v["config"]["warmup"]["requests"], 10);
    assert_eq!(v["config"]["bound"]["requests"], 200);
    assert_eq!(v["config"]["slos"][0]["text"], "ttft.p95<5s");
    let run = &v["runs"][0];
    assert_eq!(run["summary"]["requests"]["total"], 200);
    assert_eq!(run["summary"]["requests"]["warmup_excluded"], 10);
    assert!(run["summary"]["latency"]["ttft"]["p99_9_ms"].is_number());
    assert!(run["summary"]["generator"]["cpu_percent_of_one_core"].is_number());
    assert_eq!(run["verdict"]["outcome"], "PASS");
    assert_eq!(v["verdict"]["outcome"], "PASS");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&ndjson)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        210,
        "every request, warm-up included and marked"
    );
    assert_eq!(lines.iter().filter(|l| l["warmup"] == true).count(), 10);
    assert!(lines[50]["ttft_ms"].is_number());
    assert_eq!(lines[50]["output_tokens"], 8);
    assert_eq!(lines[50]["token_source"], "usage");

    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.starts_with("# sluice load report"));
    assert!(md.contains("| TTFT |"));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("TTFT p50") && svg.contains("output tok/s"));
    let console = render_console(&result.report);
    assert!(console.contains("verdict: PASS"));
    assert!(console.contains("PASS         ttft.p95<5s"), "{console}");

    let base = read_report(&json).unwrap();
    let same = compare(
        &base,
        &base,
        Thresholds {
            relative: 0.1,
            error_rate: 0.01,
        },
    );
    assert_eq!(same.regressions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified_with_examples() {
    let mock = faulty_mock(Faults {
        error_rate: 0.3,
        error_status: 503,
        disconnect_rate: 0.2,
        disconnect_after_chunks: 3,
        seed: 1,
        ..Faults::default()
    })
    .await;
    let mut c = config(mock.base_url(), 8);
    c.mode = Mode::Concurrency { concurrency: 4 };
    c.bound.requests = Some(200);
    c.slos = vec!["ttft.p99<5s".parse().unwrap()];
    let result = sluice_load::run(c).await.unwrap();
    let s = &result.report.runs[0].summary;
    let http = s.errors.by_class.get("http_503").copied().unwrap_or(0);
    let cut = s.errors.by_class.get("mid_stream").copied().unwrap_or(0);
    eprintln!("{:?}", s.errors);
    assert!(
        (40..=80).contains(&http),
        "~30 % of 200 answered 503: {http}"
    );
    assert!(cut > 10, "cut streams are mid-stream errors: {cut}");
    assert_eq!(s.requests.failed, http + cut);
    assert!(s.errors.examples.contains_key("http_503"));
    assert!(
        s.errors.examples["mid_stream"].contains("stream"),
        "{:?}",
        s.errors.examples
    );
    // Far above the 5 % ceiling: whatever the latency, the run is not a pass.
    assert_eq!(result.report.verdict.outcome, Outcome::Inconclusive);
    assert!(result.report.runs[0].verdict.reasons[0].contains("--max-error-rate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_time_out() {
    let mock = faulty_mock(Faults {
        added_latency_ms: 400,
        ..Faults::default()
    })
    .await;
    let mut c = config(mock.base_url(), 4);
    c.bound.requests = Some(3);
    c.timeout = Duration::from_millis(100);
    let result = sluice_load::run(c).await.unwrap();
    let s = &result.report.runs[0].summary;
    assert_eq!(s.errors.by_class.get("timeout"), Some(&3));
    assert!(s.errors.examples["timeout"].contains("--timeout"));
    // Nothing succeeded: never a pass.
    assert_eq!(result.report.verdict.outcome, Outcome::Inconclusive);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_a_tool_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = config(format!("http://127.0.0.1:{port}/v1"), 4);
    let e = sluice_load::run(c).await.unwrap_err();
    assert!(matches!(e, LoadError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("Is the server running"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_runs_synchronous_saturation_and_rates_between() {
    let mock = common::scripted_mock(Duration::from_millis(5), Duration::from_millis(1)).await;
    let mut c = config(mock.base_url(), 4);
    c.mode = Mode::Sweep {
        steps: 2,
        saturation_concurrency: 16,
        arrival: sluice_load::Arrival::Constant,
    };
    c.bound = Bound {
        duration: None,
        requests: Some(40),
    };
    c.slos = vec!["e2e.p50<1s".parse().unwrap()];
    let result = sluice_load::run(c).await.unwrap();
    let runs = &result.report.runs;
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels.len(), 4, "{labels:?}");
    assert_eq!(labels[0], "synchronous");
    assert_eq!(labels[1], "saturation");
    let low = runs[0].summary.throughput.requests_per_s;
    let high = runs[1].summary.throughput.requests_per_s;
    assert!(high > low, "{low} {high}");
    for r in &runs[2..] {
        let target = r.summary.throughput.target_rate_per_s.unwrap();
        assert!(target > low && target < high, "{target} in ({low}, {high})");
    }
    assert_eq!(result.report.verdict.outcome, Outcome::Pass);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sweep.svg");
    write_chart(&result.report, &svg).unwrap();
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("against throughput"));
    assert!(render_console(&result.report).contains("saturation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_files_carry_token_times_that_recompute_the_itl() {
    let mock = common::scripted_mock(Duration::from_millis(2), Duration::from_millis(1)).await;
    let mut c = config(mock.base_url(), 8);
    c.mode = Mode::Concurrency { concurrency: 2 };
    c.bound.requests = Some(20);
    c.keep_token_times = true;
    let result = sluice_load::run(c).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ndjson, csv) = (dir.path().join("r.ndjson"), dir.path().join("r.csv"));
    sluice_load::report::write_ndjson(&result.records, &ndjson).unwrap();
    sluice_load::report::write_csv(&result.records, &csv).unwrap();

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&ndjson)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    let mut gaps = 0;
    for l in &lines {
        let times: Vec<f64> = l["token_times_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        assert_eq!(times.len() as u64, l["token_chunks"].as_u64().unwrap());
        assert_eq!(times[0], l["ttft_ms"].as_f64().unwrap());
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        gaps += times.len() - 1;
    }
    // The offline ITL has exactly the samples the report's ITL has.
    let s = &result.report.runs[0].summary;
    assert_eq!(gaps as u64, s.latency.itl.unwrap().count);
    let per_user = s.throughput.per_user_output_tokens_per_s.unwrap();
    assert_eq!(per_user.count, 20);
    assert!(per_user.p1 <= per_user.p10 && per_user.p10 <= per_user.p50);

    let text = std::fs::read_to_string(&csv).unwrap();
    let mut rows = text.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert_eq!(header[0], "run");
    assert_eq!(*header.last().unwrap(), "token_times_ms");
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r.len() == header.len()));
    let times = rows[0].last().unwrap().split(' ').count() as u64;
    assert_eq!(times, lines[0]["token_chunks"].as_u64().unwrap());
    mock.shutdown().await;
}
