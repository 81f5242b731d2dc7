//! Replaying event streams at their recorded pace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use sluice_api::sse::SseParser;
use sluice_mock::TimingModel;
use sluice_proxy::{Mode, ProxyConfig, ReplayTiming};
use sluice_testkit::{refused_url, start_mock, MockOptions};

/// Each event's data and the time, since `sent`, at which it reached the client.
async fn timed_events(sent: Instant, resp: reqwest::Response) -> Vec<(String, Duration)> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        parser.push(&chunk.unwrap(), &mut events).unwrap();
        let at = sent.elapsed();
        out.extend(events.drain(..).map(|e| (e.data, at)));
    }
    out
}

async fn post_timed(
    proxy: &sluice_proxy::ProxyServer,
    body: &serde_json::Value,
) -> Vec<(String, Duration)> {
    let sent = Instant::now();
    let resp = post(proxy, body).await;
    timed_events(sent, resp).await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// Replay deadlines are absolute offsets from the response head, so one late wake-up
// (of the proxy or of this test's reader) shortens the next gap instead of pushing
// every later event back. What holds whatever the machine's load: no event reaches
// the client before its scaled offset, counted from before the request was sent.
// That alone would also pass if the scale were ignored, so the last event at half
// speed must arrive before the recording's own pace would have sent it; the slack
// for that is half the recorded span (about 125 ms).
#[tokio::test]
async fn recorded_timing_sends_no_event_before_its_scaled_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions {
        timing: TimingModel {
            decode_interval: Duration::from_millis(50),
            ..TimingModel::ZERO
        },
        ..MockOptions::default()
    })
    .await;
    let body = chat_body("slowly please", true);
    let recorder = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;
    let live = post_timed(&recorder, &body).await;
    recorder.shutdown().await;
    mock.shutdown().await;

    let files = entry_files(dir.path());
    let entry = read_entry(&files[0]);
    let offsets: Vec<f64> = entry["response"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(offsets.len(), live.len());
    assert!(offsets.windows(2).all(|w| w[1] >= w[0]));
    let span = offsets[offsets.len() - 1] - offsets[0];
    assert!(
        span >= 200.0,
        "recorded span {span:.1} ms: the mock's pacing was lost"
    );

    for scale in [1.0, 0.5] {
        let replayer = start_proxy(ProxyConfig {
            replay_timing: ReplayTiming::Recorded { scale },
            ..ProxyConfig::new(refused_url().replace("/v1", ""), dir.path(), Mode::Replay)
        })
        .await;
        let replayed = post_timed(&replayer, &body).await;
        replayer.shutdown().await;
        let datas: Vec<&String> = replayed.iter().map(|(d, _)| d).collect();
        let live_datas: Vec<&String> = live.iter().map(|(d, _)| d).collect();
        assert_eq!(datas, live_datas);
        for (i, (_, at)) in replayed.iter().enumerate() {
            // 1 ms for the offsets' rounding when they were recorded.
            assert!(
                ms(*at) >= offsets[i] * scale - 1.0,
                "event {i} at scale {scale} arrived at {:.1} ms, before its offset {:.1} ms",
                ms(*at),
                offsets[i] * scale
            );
        }
        if scale < 1.0 {
            let last = ms(replayed[replayed.len() - 1].1);
            assert!(
                last < offsets[offsets.len() - 1],
                "at scale {scale} the last event came at {last:.1} ms, no sooner than the \
                 recording's own {:.1} ms",
                offsets[offsets.len() - 1]
            );
        }
    }
}

#[tokio::test]
async fn instant_timing_replays_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions {
        timing: TimingModel {
            decode_interval: Duration::from_millis(30),
            ..TimingModel::ZERO
        },
        ..MockOptions::default()
    })
    .await;
    let body = chat_body("fast replay", true);
    let recorder = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;
    let live = post_timed(&recorder, &body).await;
    recorder.shutdown().await;
    mock.shutdown().await;

    let replayer = proxy_for(&refused_url().replace("/v1", ""), dir.path(), Mode::Replay).await;
    let replayed = post_timed(&replayer, &body).await;
    replayer.shutdown().await;
    let datas: Vec<&String> = replayed.iter().map(|(d, _)| d).collect();
    let live_datas: Vec<&String> = live.iter().map(|(d, _)| d).collect();
    assert_eq!(datas, live_datas);
}
