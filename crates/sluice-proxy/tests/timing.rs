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

/// Each event's data and the time since the response head it arrived at the client.
async fn timed_events(resp: reqwest::Response) -> Vec<(String, Duration)> {
    let start = Instant::now();
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        parser.push(&chunk.unwrap(), &mut events).unwrap();
        let at = start.elapsed();
        out.extend(events.drain(..).map(|e| (e.data, at)));
    }
    out
}

#[tokio::test]
async fn recorded_timing_keeps_the_gaps_between_events() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions {
        timing: TimingModel {
            decode_interval: Duration::from_millis(40),
            ..TimingModel::ZERO
        },
        ..MockOptions::default()
    })
    .await;
    let body = chat_body("slowly please", true);
    let recorder = proxy_for(&upstream_of(&mock), dir.path(), Mode::Record).await;
    let live = timed_events(post(&recorder, &body).await).await;
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

    for scale in [1.0, 0.5] {
        let replayer = start_proxy(ProxyConfig {
            replay_timing: ReplayTiming::Recorded { scale },
            ..ProxyConfig::new(refused_url().replace("/v1", ""), dir.path(), Mode::Replay)
        })
        .await;
        let replayed = timed_events(post(&replayer, &body).await).await;
        replayer.shutdown().await;
        let datas: Vec<&String> = replayed.iter().map(|(d, _)| d).collect();
        let live_datas: Vec<&String> = live.iter().map(|(d, _)| d).collect();
        assert_eq!(datas, live_datas);
        for (i, w) in replayed.windows(2).enumerate() {
            let replayed_gap = (w[1].1 - w[0].1).as_secs_f64() * 1000.0;
            let recorded_gap = (offsets[i + 1] - offsets[i]) * scale;
            assert!(
                replayed_gap >= 0.8 * recorded_gap - 1.0,
                "gap {i} at scale {scale}: replayed {replayed_gap:.1} ms < recorded {recorded_gap:.1} ms"
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
    let live = timed_events(post(&recorder, &body).await).await;
    recorder.shutdown().await;
    mock.shutdown().await;

    let replayer = proxy_for(&refused_url().replace("/v1", ""), dir.path(), Mode::Replay).await;
    let replayed = timed_events(post(&replayer, &body).await).await;
    replayer.shutdown().await;
    let datas: Vec<&String> = replayed.iter().map(|(d, _)| d).collect();
    let live_datas: Vec<&String> = live.iter().map(|(d, _)| d).collect();
    assert_eq!(datas, live_datas);
}
