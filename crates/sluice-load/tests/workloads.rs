//! What goes on the wire for each workload, checked at the receiving end, and how the
//! workloads look to a real engine (the mock's prefix cache and token counts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::capture::capture_server;
use common::{config, zero_mock};
use sluice_load::{Bound, LengthDist, Mode, PauseDist, WorkloadSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_requests_carry_lengths_headers_and_usage_options() {
    let (addr, log) = capture_server().await;
    let mut c = config(format!("http://{addr}/v1"), 24);
    c.headers = vec![
        ("Authorization".into(), "Bearer sk-test".into()),
        ("x-job-type".into(), "batch".into()),
    ];
    c.bound.requests = Some(5);
    let result = sluice_load::run(c).await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 5);
    for r in log.iter() {
        assert_eq!(r.header("authorization"), Some("Bearer sk-test"));
        assert_eq!(r.header("x-job-type"), Some("batch"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body["max_tokens"], 24);
        assert_eq!(r.body["ignore_eos"], true);
        assert_eq!(r.body["stream"], true);
        assert_eq!(r.body["stream_options"]["include_usage"], true);
        let prompt = r.body["messages"][0]["content"].as_str().unwrap();
        assert_eq!(prompt.split(' ').count(), 32);
    }
    // The server answered without streaming: only E2E is defined, and the report says so.
    let s = &result.report.runs[0].summary;
    assert!(s.latency.ttft.is_none() && s.latency.itl.is_none());
    assert!(s.latency.e2e.is_some());
    assert!(
        s.notes.iter().any(|n| n.contains("not streamed")),
        "{:?}",
        s.notes
    );
    // The secret never reaches the report.
    let json = serde_json::to_string(&result.report).unwrap();
    assert!(!json.contains("sk-test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_resends_history_with_the_real_answers() {
    let (addr, log) = capture_server().await;
    let mut c = config(format!("http://{addr}/v1"), 8);
    c.workload = WorkloadSpec::MultiTurn {
        turns: 3,
        system_prompt_tokens: 10,
        input_tokens: LengthDist::Fixed(5),
        output_tokens: LengthDist::Fixed(8),
        think_time: PauseDist::None,
    };
    c.mode = Mode::Concurrency { concurrency: 2 };
    c.bound.requests = Some(12);
    c.stream = false;
    sluice_load::run(c).await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 12);
    // Group by conversation; each has turns with 2, 4, 6 messages after the system prompt.
    let mut by_session: std::collections::BTreeMap<String, Vec<&common::capture::Captured>> =
        Default::default();
    for r in log.iter() {
        by_session
            .entry(r.header("x-session-id").unwrap().to_owned())
            .or_default()
            .push(r);
    }
    // 12 requests of 3-turn conversations: 4 whole ones, or 5 when two workers' last
    // conversations are both unfinished at the end.
    assert!((4..=5).contains(&by_session.len()), "{}", by_session.len());
    assert!(by_session.values().filter(|t| t.len() == 3).count() >= 3);
    for turns in by_session.values() {
        assert!(turns.len() <= 3, "no conversation goes beyond --turns");
        for (k, r) in turns.iter().enumerate() {
            let msgs = r.body["messages"].as_array().unwrap();
            assert_eq!(msgs.len(), 2 + 2 * k, "system + history + new question");
            assert_eq!(msgs[0]["role"], "system");
            if k > 0 {
                // The previous answer, verbatim as the server sent it.
                let prev_answer = msgs[msgs.len() - 2]["content"].as_str().unwrap();
                assert!(prev_answer.starts_with("reply "), "{prev_answer}");
                assert_eq!(msgs[msgs.len() - 2]["role"], "assistant");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prefix_traffic_hits_a_prefix_cache() {
    let mock = zero_mock().await;
    let mut c = config(mock.base_url(), 4);
    c.workload = WorkloadSpec::SharedPrefix {
        system_prompts: 2,
        users_per_prompt: 5,
        system_prompt_tokens: 512,
        input_tokens: LengthDist::Fixed(16),
        output_tokens: LengthDist::Fixed(4),
    };
    c.mode = Mode::Concurrency { concurrency: 4 };
    c.bound.requests = Some(60);
    let result = sluice_load::run(c).await.unwrap();
    let s = &result.report.runs[0].summary;
    assert_eq!(s.requests.failed, 0, "{:?}", s.errors);
    let share = s.tokens.cached_prompt_share.unwrap();
    // After each system prompt's first request, ~512 of ~535 prompt tokens are cached.
    assert!(share > 0.8, "cached share {share}");
    let synthetic = {
        let mut c = config(mock.base_url(), 4);
        c.bound.requests = Some(20);
        sluice_load::run(c).await.unwrap()
    };
    let other = synthetic.report.runs[0]
        .summary
        .tokens
        .cached_prompt_share
        .unwrap_or(0.0);
    assert!(other < 0.5, "independent prompts share little: {other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_replayed_at_its_timestamps() {
    let (addr, log) = capture_server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    let lines: Vec<String> = (0..21)
        .map(|i| {
            format!(
                r#"{{"model":"orig","messages":[{{"role":"user","content":"line {i}"}}],"max_tokens":3,"timestamp":{}}}"#,
                100.0 + f64::from(i) * 0.05
            )
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let mut c = config(format!("http://{addr}/v1"), 1);
    c.workload = WorkloadSpec::File {
        path,
        keep_model: false,
        trace_timestamps: true,
    };
    c.mode = Mode::Trace;
    c.bound = Bound {
        duration: None,
        requests: None,
    };
    let result = sluice_load::run(c).await.unwrap();
    let s = &result.report.runs[0].summary;
    assert_eq!(s.requests.total, 21, "the file once");
    // 20 gaps of 50 ms.
    let scheduled = s.throughput.scheduled_rate_per_s.unwrap();
    assert!((scheduled - 20.0).abs() < 1e-6, "{scheduled}");
    let achieved = s.throughput.achieved_send_rate_per_s.unwrap();
    assert!((achieved - 20.0).abs() / 20.0 < 0.02, "{achieved}");
    let log = log.lock().unwrap();
    assert_eq!(
        log[0].body["model"], "mock",
        "--model replaces the line's model"
    );
    assert_eq!(
        log[3].body["messages"][0]["content"], "line 3",
        "file order"
    );
    assert!(log[0].body.get("timestamp").is_none());
    let records = &result.records[0].1;
    let span = records[20].scheduled_us - records[0].scheduled_us;
    assert_eq!(span, 1_000_000, "scheduled exactly at the timestamps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_weights_split_requests_exactly() {
    let (a, log_a) = capture_server().await;
    let (b, log_b) = capture_server().await;
    let mut c = config(format!("http://{a}/v1"), 2);
    c.urls.push(format!("http://{b}/v1"));
    c.url_weights = Some(vec![3, 1]);
    c.mode = Mode::Concurrency { concurrency: 4 };
    c.bound.requests = Some(100);
    let result = sluice_load::run(c).await.unwrap();
    assert_eq!(log_a.lock().unwrap().len(), 75);
    assert_eq!(log_b.lock().unwrap().len(), 25);
    let targets: Vec<u16> = result.records[0].1.iter().map(|r| r.target).collect();
    assert_eq!(
        &targets[..8],
        &[0, 0, 1, 0, 0, 0, 1, 0],
        "smooth weighted round robin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_count_measured_requests_after_a_timed_warmup() {
    let (addr, _log) = capture_server().await;
    let mut c = config(format!("http://{addr}/v1"), 2);
    c.mode = Mode::Concurrency { concurrency: 2 };
    c.warmup = sluice_load::Warmup::Duration(std::time::Duration::from_millis(100));
    c.bound.requests = Some(30);
    let closed = sluice_load::run(c.clone()).await.unwrap();
    let s = &closed.report.runs[0].summary;
    assert_eq!(s.requests.total, 30);
    assert!(s.requests.warmup_excluded > 0);

    c.mode = Mode::Rate {
        rate: 200.0,
        arrival: sluice_load::Arrival::Poisson,
    };
    let open = sluice_load::run(c).await.unwrap();
    let s = &open.report.runs[0].summary;
    assert_eq!(s.requests.total, 30);
    // 100 ms at 200/s: the warm-up segment of the schedule holds exactly 20 gaps.
    assert_eq!(s.requests.warmup_excluded, 20);
}
