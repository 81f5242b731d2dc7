//! The committed recordings under `tests/recordings/`: they answer the project's own suite in
//! strict replay with no upstream at all, and they are still what the proxy records today
//! (from `sluice mock`, and from the hand-written provider-shape fixtures). With
//! `SLUICE_RERECORD=1` the two freshness tests write the new recordings instead of failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ci_suite;
mod common;

use std::collections::BTreeSet;

use ci_suite::*;
use serde_json::{json, Value};
use sluice_proxy::{Mode, ProxyConfig};
use sluice_testkit::{refused_url, start_mock};

fn refused_upstream() -> String {
    refused_url().trim_end_matches("/v1").to_owned()
}

fn assert_all_hits(exchanges: &[Exchange]) {
    for x in exchanges {
        assert_eq!(
            (x.status, x.replay.as_str()),
            (200, "hit"),
            "suite step `{}` was not answered from a recording: {}\n{RERECORD_HINT}",
            x.step,
            x.body
        );
        assert!(x.transport_error.is_none(), "step `{}`", x.step);
    }
}

fn step<'a>(exchanges: &'a [Exchange], name: &str) -> &'a Exchange {
    exchanges.iter().find(|x| x.step == name).unwrap()
}

#[tokio::test]
async fn committed_mock_recordings_answer_the_whole_suite_offline() {
    let dir = mock_recordings_dir();
    let proxy = common::proxy_for(&refused_upstream(), &dir, Mode::Replay).await;
    let exchanges = run_mock_suite(&proxy.base_url()).await;
    assert_eq!(exchanges.len(), 9);
    assert_all_hits(&exchanges);

    // Every committed file answers some request: none is left over from an older suite.
    let used: BTreeSet<String> = exchanges.iter().map(|x| x.file.clone()).collect();
    let committed: BTreeSet<String> = entry_files(&dir).into_keys().collect();
    assert_eq!(used, committed);

    // The replayed answers are the ones the suite is about.
    let models = step(&exchanges, "models");
    assert_eq!(models.body["data"][0]["id"], MOCK_MODEL);
    let chat = step(&exchanges, "chat");
    assert_eq!(chat.body["choices"][0]["finish_reason"], "stop");
    assert!(chat.body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let stream = step(&exchanges, "chat-stream");
    assert_eq!(stream.events.last().unwrap().data, "[DONE]");
    let usage_chunk = stream.chunks().pop().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let call = step(&exchanges, "tool-call");
    assert_eq!(call.body["choices"][0]["finish_reason"], "tool_calls");
    let arguments = call.body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert!(serde_json::from_str::<Value>(arguments).unwrap()["city"].is_string());
    let result = step(&exchanges, "tool-result");
    assert_eq!(result.body["choices"][0]["finish_reason"], "stop");
    let streamed_call = step(&exchanges, "tool-call-stream");
    assert!(streamed_call
        .chunks()
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    let prompt_tokens: Vec<u64> = (1..=3)
        .map(|t| {
            step(&exchanges, &format!("conversation-{t}")).body["usage"]["prompt_tokens"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        prompt_tokens.windows(2).all(|w| w[0] < w[1]),
        "each turn resends a longer history: {prompt_tokens:?}"
    );

    // A request the suite never recorded fails loudly instead of reaching anything.
    let mut client = SuiteClient::new(&proxy.base_url());
    let miss = client
        .chat(
            "unrecorded",
            json!({"model": MOCK_MODEL, "messages": [{"role": "user", "content": "Name three rivers in Asia."}], "max_tokens": 200}),
        )
        .await;
    assert_eq!((miss.status, miss.replay.as_str()), (502, "miss"));
    assert_eq!(miss.body["error"]["type"], "replay_miss");
    proxy.shutdown().await;
}

#[tokio::test]
async fn committed_mock_recordings_match_a_live_mock() {
    let fresh = tempfile::tempdir().unwrap();
    let mock = start_mock(recording_mock_options()).await;
    let recorder = common::proxy_for(&common::upstream_of(&mock), fresh.path(), Mode::Record).await;
    let exchanges = run_mock_suite(&recorder.base_url()).await;
    recorder.shutdown().await;
    mock.shutdown().await;
    for x in &exchanges {
        assert_eq!(
            (x.status, x.replay.as_str()),
            (200, "recorded"),
            "step `{}`: {}",
            x.step,
            x.body
        );
    }
    assert_eq!(entry_files(fresh.path()).len(), exchanges.len());
    check_or_rerecord(
        &mock_recordings_dir(),
        fresh.path(),
        true,
        "what `sluice mock --zero-timing --kv-capacity-blocks 0` answers now",
    );
}

#[tokio::test]
async fn committed_provider_recordings_replay_the_hand_written_fixtures() {
    let cases = provider_cases();
    assert_eq!(cases.len(), 8);
    let dir = provider_recordings_dir();
    let proxy = common::proxy_for(&refused_upstream(), &dir, Mode::Replay).await;
    let exchanges = run_provider_cases(&proxy.base_url(), &cases).await;
    assert_all_hits(&exchanges);
    for (case, x) in cases.iter().zip(&exchanges) {
        if case.is_stream() {
            let want: Vec<(Option<String>, String)> = case
                .response_events()
                .into_iter()
                .map(|e| (e.event, e.data))
                .collect();
            let got: Vec<(Option<String>, String)> = x
                .events
                .iter()
                .map(|e| (e.event.clone(), e.data.clone()))
                .collect();
            assert_eq!(got, want, "case {}", case.name);
        } else {
            assert_eq!(x.body, case.response_json(), "case {}", case.name);
        }
    }
    let used: BTreeSet<String> = exchanges.iter().map(|x| x.file.clone()).collect();
    let committed: BTreeSet<String> = entry_files(&dir).into_keys().collect();
    assert_eq!(used, committed);
    proxy.shutdown().await;
}

#[tokio::test]
async fn provider_fixtures_rerecord_to_the_committed_entries() {
    let cases = provider_cases();
    let server = FixtureServer::start(cases.clone()).await;
    let fresh = tempfile::tempdir().unwrap();
    let recorder =
        common::start_proxy(ProxyConfig::new(server.url(), fresh.path(), Mode::Record)).await;
    let exchanges = run_provider_cases(&recorder.base_url(), &cases).await;
    recorder.shutdown().await;
    server.shutdown().await;
    for x in &exchanges {
        assert_eq!(
            (x.status, x.replay.as_str()),
            (200, "recorded"),
            "case `{}`: {}",
            x.step,
            x.body
        );
    }
    check_or_rerecord(
        &provider_recordings_dir(),
        fresh.path(),
        false,
        "the fixtures in tests/fixtures/provider-shapes",
    );
}

#[test]
fn openai_fixtures_follow_the_documented_shapes() {
    for case in provider_cases()
        .into_iter()
        .filter(|c| c.name.starts_with("openai"))
    {
        let name = &case.name;
        let tools = case.request.get("tools").is_some();
        if !case.is_stream() {
            let body = case.response_json();
            assert_eq!(body["object"], "chat.completion", "{name}");
            let choice = &body["choices"][0];
            assert_eq!(choice["message"]["role"], "assistant", "{name}");
            let usage = &body["usage"];
            assert_eq!(
                usage["total_tokens"].as_u64(),
                Some(
                    usage["prompt_tokens"].as_u64().unwrap()
                        + usage["completion_tokens"].as_u64().unwrap()
                ),
                "{name}"
            );
            if tools {
                assert_eq!(choice["finish_reason"], "tool_calls", "{name}");
                assert!(choice["message"]["content"].is_null(), "{name}");
                let args = choice["message"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap();
                serde_json::from_str::<Value>(args).unwrap();
            } else {
                assert_eq!(choice["finish_reason"], "stop", "{name}");
            }
            continue;
        }
        let events = case.response_events();
        assert!(events.iter().all(|e| e.event.is_none()), "{name}");
        assert_eq!(events.last().unwrap().data, "[DONE]", "{name}");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        let id = &chunks[0]["id"];
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk", "{name}");
            assert_eq!(&c["id"], id, "{name}: one id for the whole stream");
        }
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        // With include_usage every chunk has `usage: null` but the last, which has no
        // choices and the totals.
        let (usage_chunk, rest) = chunks.split_last().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]), "{name}");
        assert!(usage_chunk["usage"]["total_tokens"].is_u64(), "{name}");
        assert!(rest.iter().all(|c| c["usage"].is_null()), "{name}");
        let finish = &rest.last().unwrap()["choices"][0];
        assert_eq!(finish["delta"], json!({}), "{name}");
        if tools {
            assert_eq!(finish["finish_reason"], "tool_calls", "{name}");
            let arguments: String = rest
                .iter()
                .filter_map(|c| {
                    c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
                })
                .collect();
            serde_json::from_str::<Value>(&arguments).unwrap();
            assert!(rest[1..].iter().all(|c| {
                let call = &c["choices"][0]["delta"]["tool_calls"];
                call.is_null() || call[0]["index"] == 0
            }));
        } else {
            assert_eq!(finish["finish_reason"], "stop", "{name}");
        }
    }
}

#[test]
fn anthropic_fixtures_follow_the_documented_shapes() {
    for case in provider_cases()
        .into_iter()
        .filter(|c| c.name.starts_with("anthropic"))
    {
        let name = &case.name;
        let tools = case.request.get("tools").is_some();
        let stop_reason = if tools { "tool_use" } else { "end_turn" };
        if !case.is_stream() {
            let body = case.response_json();
            assert_eq!(body["type"], "message", "{name}");
            assert_eq!(body["role"], "assistant", "{name}");
            assert_eq!(body["stop_reason"], stop_reason, "{name}");
            assert!(body["usage"]["input_tokens"].is_u64(), "{name}");
            assert!(body["usage"]["output_tokens"].is_u64(), "{name}");
            let last_block = body["content"].as_array().unwrap().last().unwrap();
            let want_type = if tools { "tool_use" } else { "text" };
            assert_eq!(last_block["type"], want_type, "{name}");
            continue;
        }
        let events = case.response_events();
        let datas: Vec<Value> = events
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        // Every event is named, and its name is its data's `type`.
        for (e, d) in events.iter().zip(&datas) {
            assert_eq!(e.event.as_deref(), d["type"].as_str(), "{name}");
        }
        let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
        assert_eq!(names.first(), Some(&"message_start"), "{name}");
        assert_eq!(
            &names[names.len() - 2..],
            &["message_delta", "message_stop"],
            "{name}"
        );
        assert!(names.contains(&"ping"), "{name}");
        // Blocks open, take deltas of their own kind, and close, one after the other.
        let mut open: Option<(u64, String)> = None;
        let mut closed = 0;
        for d in &datas {
            match d["type"].as_str().unwrap() {
                "content_block_start" => {
                    assert!(open.is_none(), "{name}: blocks do not overlap");
                    assert_eq!(d["index"].as_u64(), Some(closed), "{name}");
                    let kind = d["content_block"]["type"].as_str().unwrap().to_owned();
                    open = Some((closed, kind));
                }
                "content_block_delta" => {
                    let (index, kind) = open.clone().expect("a delta inside a block");
                    assert_eq!(d["index"].as_u64(), Some(index), "{name}");
                    let want = if kind == "tool_use" {
                        "input_json_delta"
                    } else {
                        "text_delta"
                    };
                    assert_eq!(d["delta"]["type"], want, "{name}");
                }
                "content_block_stop" => {
                    let (index, _) = open.take().expect("a stop closes an open block");
                    assert_eq!(d["index"].as_u64(), Some(index), "{name}");
                    closed += 1;
                }
                "message_delta" => {
                    assert_eq!(d["delta"]["stop_reason"], stop_reason, "{name}");
                    assert!(d["usage"]["output_tokens"].is_u64(), "{name}");
                }
                _ => {}
            }
        }
        assert!(open.is_none() && closed > 0, "{name}");
        if tools {
            let partial: String = datas
                .iter()
                .filter_map(|d| d["delta"]["partial_json"].as_str())
                .collect();
            assert!(serde_json::from_str::<Value>(&partial).unwrap().is_object());
        }
    }
}
