//! Run usage: `.sluice/last-run.json`, the usage report, and pruning stale recordings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use sluice_proxy::{prune, render_report, usage_report, Mode, ProxyError, PruneOptions};
use sluice_testkit::{assert_eventually, refused_url, start_mock, MockOptions};

const QUESTIONS: [&str; 3] = ["first question", "second question", "third question"];

/// Records the three questions, then replays the first two in a new run. Returns the
/// entry file of each question.
async fn record_three_replay_two(dir: &Path) -> Vec<String> {
    let mock = start_mock(MockOptions::zero_timing()).await;
    let recorder = proxy_for(&upstream_of(&mock), dir, Mode::Record).await;
    let mut files = Vec::new();
    for q in QUESTIONS {
        let resp = post(&recorder, &chat_body(q, false)).await;
        assert_eq!(replay_header(&resp), "recorded");
        files.push(replay_file(&resp));
    }
    recorder.shutdown().await;
    mock.shutdown().await;
    assert_eq!(used_files(dir).len(), 3, "a record run uses what it writes");

    let replayer = proxy_for(&refused_url().replace("/v1", ""), dir, Mode::Replay).await;
    for q in &QUESTIONS[..2] {
        let resp = post(&replayer, &chat_body(q, false)).await;
        assert_eq!(replay_header(&resp), "hit");
    }
    replayer.shutdown().await;
    files
}

#[tokio::test]
async fn a_replay_run_lists_exactly_the_entries_it_used_and_the_report_names_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let files = record_three_replay_two(dir.path()).await;

    let run = last_run(dir.path());
    assert_eq!(run["mode"], "replay");
    assert!(
        run["finished_at_unix_ms"].as_u64().unwrap() >= run["started_at_unix_ms"].as_u64().unwrap()
    );
    assert_eq!(run["counts"]["hits"], 2);
    assert_eq!(run["counts"]["misses"], 0);
    let mut expected = files[..2].to_vec();
    expected.sort();
    assert_eq!(used_files(dir.path()), expected);

    let report = usage_report(dir.path(), true).unwrap();
    assert_eq!(report.unused, vec![files[2].clone()]);
    assert_eq!(report.used, expected);
    assert_eq!(report.entries.len(), 3);
    let text = render_report(&report, true);
    let unused_section = text.split("unused (stale) (1):").nth(1).unwrap();
    assert!(unused_section.contains(&files[2]), "{text}");
    assert!(!unused_section.contains(&files[0]), "{text}");
    // The full listing shows every entry with its recording time.
    let listing = render_report(&usage_report(dir.path(), false).unwrap(), false);
    for f in &files {
        assert!(listing.contains(f), "{listing}");
    }
    assert!(listing.contains("recorded_at_unix_ms"));
}

#[tokio::test]
async fn prune_removes_exactly_the_unused_entry_and_dry_run_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = record_three_replay_two(dir.path()).await;

    let dry = prune(
        dir.path(),
        PruneOptions {
            dry_run: true,
            force: false,
        },
    )
    .unwrap();
    assert_eq!(dry.removed, vec![files[2].clone()]);
    assert_eq!(
        entry_files(dir.path()).len(),
        3,
        "a dry run removes nothing"
    );

    let done = prune(dir.path(), PruneOptions::default()).unwrap();
    assert_eq!(done.removed, vec![files[2].clone()]);
    assert_eq!(done.kept, 2);
    let mut left: Vec<String> = entry_files(dir.path())
        .iter()
        .map(|p| file_name(p))
        .collect();
    left.sort();
    let mut expected = files[..2].to_vec();
    expected.sort();
    assert_eq!(left, expected);
    assert!(dir.path().join(".sluice/last-run.json").exists());
}

#[tokio::test]
async fn prune_refuses_without_a_record_while_running_and_after_misses_unless_forced() {
    let empty = tempfile::tempdir().unwrap();
    let err = prune(empty.path(), PruneOptions::default()).unwrap_err();
    assert!(matches!(err, ProxyError::NoLastRun { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("run the suite through the proxy first"));
    let err = usage_report(empty.path(), true).unwrap_err();
    assert!(matches!(err, ProxyError::NoLastRun { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let files = record_three_replay_two(dir.path()).await;

    // A run still serving is marked running.
    let running = proxy_for(&refused_url().replace("/v1", ""), dir.path(), Mode::Replay).await;
    let err = prune(dir.path(), PruneOptions::default()).unwrap_err();
    assert!(matches!(err, ProxyError::LastRunRunning { .. }), "{err}");

    // That run hits one entry and misses another question: incomplete.
    assert_eq!(
        replay_header(&post(&running, &chat_body(QUESTIONS[0], false)).await),
        "hit"
    );
    assert_eq!(
        replay_header(&post(&running, &chat_body("unrecorded", false)).await),
        "miss"
    );
    running.shutdown().await;
    let run = last_run(dir.path());
    assert_eq!(run["counts"]["misses"], 1);
    assert_eq!(run["misses"][0]["path"], "/v1/chat/completions");
    assert!(run["misses"][0]["nearest"].is_string());
    let err = prune(dir.path(), PruneOptions::default()).unwrap_err();
    assert!(
        matches!(err, ProxyError::LastRunHadMisses { misses: 1 }),
        "{err}"
    );
    assert!(err.to_string().contains("--force"));
    assert_eq!(
        entry_files(dir.path()).len(),
        3,
        "a refused prune removes nothing"
    );

    let forced = prune(
        dir.path(),
        PruneOptions {
            dry_run: false,
            force: true,
        },
    )
    .unwrap();
    let mut removed = forced.removed.clone();
    removed.sort();
    let mut expected = files[1..].to_vec();
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(entry_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn usage_of_requests_made_just_before_shutdown_is_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let proxy = proxy_for(&upstream_of(&mock), dir.path(), Mode::ReplayOrRecord).await;
    // Written at start, marked running.
    let run = last_run(dir.path());
    assert!(run["finished_at_unix_ms"].is_null());
    assert_eq!(run["mode"], "replay-or-record");

    let first = replay_file(&post(&proxy, &chat_body("early", false)).await);
    // The first change is written at once; the next ones wait for the interval.
    assert_eventually!(used_files(dir.path()).contains(&first));
    let mut late = Vec::new();
    for q in ["late one", "late two"] {
        late.push(replay_file(&post(&proxy, &chat_body(q, false)).await));
    }
    let stream = post(&proxy, &chat_body("late stream", true)).await;
    late.push(replay_file(&stream));
    assert!(sluice_testkit::read_stream(stream).await.ended_with_done());
    proxy.shutdown().await;
    mock.shutdown().await;

    let run = last_run(dir.path());
    assert!(run["finished_at_unix_ms"].is_u64());
    assert_eq!(run["counts"]["recorded"], 4);
    let used = used_files(dir.path());
    for f in late.iter().chain([&first]) {
        assert!(used.contains(f), "{f} missing from {used:?}");
    }
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join(".sluice"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.iter().all(|n| !n.ends_with(".tmp")),
        "{leftovers:?}"
    );
}

#[tokio::test]
async fn a_directory_where_the_run_record_cannot_be_written_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    // A file where the state directory should be: `.sluice/` cannot be created.
    std::fs::write(dir.path().join(".sluice"), "in the way").unwrap();
    let proxy = proxy_for(&upstream_of(&mock), dir.path(), Mode::ReplayOrRecord).await;
    assert_eq!(
        replay_header(&post(&proxy, &chat_body("still works", false)).await),
        "recorded"
    );
    assert_eq!(
        replay_header(&post(&proxy, &chat_body("still works", false)).await),
        "hit"
    );
    proxy.shutdown().await;
    mock.shutdown().await;
    assert_eq!(entry_files(dir.path()).len(), 1);
    let err = usage_report(dir.path(), true).unwrap_err();
    assert!(!err.to_string().is_empty());
}
