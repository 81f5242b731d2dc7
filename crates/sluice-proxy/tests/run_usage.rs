//! Run usage: `.sluice/last-run.json`, the usage report, and pruning stale recordings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use sluice_proxy::{
    prune, render_report, usage_report, usage_report_of_runs, Mode, ProxyConfig, ProxyError,
    PruneOptions, Route,
};
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
    let unused_section = text.split("unused (1):").nth(1).unwrap();
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
            ..PruneOptions::default()
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
            force: true,
            ..PruneOptions::default()
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

/// A replay run over `dir` that sends `questions` (each must hit), its record copied to
/// `save_as` when given.
async fn replay_run(dir: &Path, questions: &[&str], save_as: Option<&Path>) {
    let replayer = proxy_for(&refused_url().replace("/v1", ""), dir, Mode::Replay).await;
    for q in questions {
        assert_eq!(
            replay_header(&post(&replayer, &chat_body(q, false)).await),
            "hit"
        );
    }
    replayer.shutdown().await;
    if let Some(to) = save_as {
        std::fs::copy(dir.join(".sluice/last-run.json"), to).unwrap();
    }
}

#[tokio::test]
async fn prune_refuses_after_a_run_that_used_nothing_or_too_little() {
    let dir = tempfile::tempdir().unwrap();
    record_three_replay_two(dir.path()).await;

    // The suite crashed before its first request: a clean run that used nothing.
    replay_run(dir.path(), &[], None).await;
    let err = prune(dir.path(), PruneOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ProxyError::LastRunUsedNothing {
                entries: 3,
                requests: 0
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("base URL"), "{err}");
    assert_eq!(entry_files(dir.path()).len(), 3);

    // A run that used one of three: below the default 50 %.
    replay_run(dir.path(), &[QUESTIONS[0]], None).await;
    let err = prune(dir.path(), PruneOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ProxyError::LastRunUsedTooFew {
                used: 1,
                reachable: 3,
                min_percent: 50
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--min-used"), "{err}");
    assert_eq!(entry_files(dir.path()).len(), 3);

    // The user says the suite really shrank.
    let done = prune(
        dir.path(),
        PruneOptions {
            min_used_percent: 30,
            ..PruneOptions::default()
        },
    )
    .unwrap();
    assert_eq!(done.removed.len(), 2);
    assert_eq!(entry_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn the_runs_of_a_sharded_suite_are_merged_before_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let files = record_three_replay_two(dir.path()).await;
    let shards = tempfile::tempdir().unwrap();
    let (a, b) = (shards.path().join("a.json"), shards.path().join("b.json"));
    replay_run(dir.path(), &[QUESTIONS[0]], Some(&a)).await;
    replay_run(dir.path(), &[QUESTIONS[1]], Some(&b)).await;

    // The directory's own record is the last shard's: one of three, refused.
    let err = prune(dir.path(), PruneOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--run"), "{err}");

    let runs = vec![a, b];
    let report = usage_report_of_runs(dir.path(), true, &runs).unwrap();
    let merged = report.last_run.as_ref().unwrap();
    assert_eq!(merged.counts.hits, 2);
    assert_eq!(report.unused, vec![files[2].clone()]);
    assert!(render_report(&report, true).contains("2 runs merged"));

    let done = prune(
        dir.path(),
        PruneOptions {
            runs,
            ..PruneOptions::default()
        },
    )
    .unwrap();
    assert_eq!(done.removed, vec![files[2].clone()]);
    assert_eq!(entry_files(dir.path()).len(), 2);
}

#[tokio::test]
async fn prune_keeps_entries_the_run_could_not_have_reached() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock(MockOptions::zero_timing()).await;
    let upstream = upstream_of(&mock);
    // Two providers behind one proxy, by path prefix.
    let routes = |prefixes: &[&str]| -> Vec<Route> {
        prefixes
            .iter()
            .map(|p| Route::new((*p).to_owned(), upstream.clone(), true))
            .collect()
    };
    let recorder = start_proxy(ProxyConfig {
        routes: routes(&["/openai", "/anthropic"]),
        ..ProxyConfig::forward_only(dir.path(), Mode::Record)
    })
    .await;
    let client = reqwest::Client::new();
    let mut files = std::collections::BTreeMap::new();
    for (prefix, q) in [
        ("/openai", "used"),
        ("/openai", "stale"),
        ("/anthropic", "other provider"),
    ] {
        let resp = client
            .post(format!(
                "{}{prefix}/v1/chat/completions",
                recorder.base_url()
            ))
            .json(&chat_body(q, false))
            .send()
            .await
            .unwrap();
        assert_eq!(replay_header(&resp), "recorded");
        files.insert(q, replay_file(&resp));
    }
    recorder.shutdown().await;
    mock.shutdown().await;
    // A file that is not an entry, one of another key scheme, and one recorded later.
    std::fs::write(dir.path().join("post-broken-0.json"), "{ not json").unwrap();
    let mut old_scheme = read_entry(&dir.path().join(&files["stale"]));
    old_scheme["key_version"] = 0.into();
    std::fs::write(
        dir.path().join("post-old-scheme-0.json"),
        old_scheme.to_string(),
    )
    .unwrap();

    // This shard only has the OpenAI route.
    let replayer = start_proxy(ProxyConfig {
        routes: routes(&["/openai"]),
        ..ProxyConfig::forward_only(dir.path(), Mode::Replay)
    })
    .await;
    let resp = client
        .post(format!(
            "{}/openai/v1/chat/completions",
            replayer.base_url()
        ))
        .json(&chat_body("used", false))
        .send()
        .await
        .unwrap();
    assert_eq!(replay_header(&resp), "hit");
    let mut late = read_entry(&dir.path().join(&files["stale"]));
    late["recorded_at_unix_ms"] = (u64::MAX / 2).into();
    std::fs::write(dir.path().join("post-late-0.json"), late.to_string()).unwrap();
    replayer.shutdown().await;

    let done = prune(dir.path(), PruneOptions::default()).unwrap();
    assert_eq!(done.removed, vec![files["stale"].clone()]);
    let kept: std::collections::BTreeMap<&str, &str> = done
        .unreachable
        .iter()
        .map(|u| (u.file.as_str(), u.reason.as_str()))
        .collect();
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert!(kept[files["other provider"].as_str()].contains("no route of the run serves it"));
    assert!(kept["post-broken-0.json"].contains("unreadable"));
    assert!(kept["post-old-scheme-0.json"].contains("key scheme 0"));
    assert!(kept["post-late-0.json"].contains("recorded after the run started"));
    assert_eq!(entry_files(dir.path()).len(), 5);
}

#[tokio::test]
async fn the_report_names_entries_and_uses_the_words_of_its_json() {
    let dir = tempfile::tempdir().unwrap();
    let files = record_three_replay_two(dir.path()).await;
    let report = usage_report(dir.path(), true).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    let entry = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["file"] == files[2].as_str())
        .unwrap();
    assert_eq!(entry["label"], "mock: \"third question\"");
    let text = render_report(&report, true);
    for words in [
        "counts: hits 2, misses 0, recorded 0, refused 0, passthrough 0",
        "used (2):",
        "unused (1):",
        "misses (0):",
    ] {
        assert!(text.contains(words), "{words:?} not in\n{text}");
    }
    assert!(
        text.contains(&format!("  {}  mock: \"third question\"", files[2])),
        "{text}"
    );
}
