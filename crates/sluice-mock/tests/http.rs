//! The mock engine over real HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_api::chat::{ChatCompletion, ChatCompletionChunk, FinishReason, UsageField};
use sluice_api::sse::SseParser;
use sluice_mock::{MockOptions, MockServer, MockStats, TimingModel};

async fn start(options: MockOptions) -> MockServer {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    MockServer::start(options, addr).await.unwrap()
}

fn root(server: &MockServer) -> String {
    format!("http://{}", server.local_addr())
}

async fn post_chat(server: &MockServer, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn hello(extra: Value) -> Value {
    let mut body =
        json!({"model": "mock", "messages": [{"role": "user", "content": "Hello there, mock!"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// An independent count under the documented tokenizer rules, for text without runs of
/// whitespace: one token per alphanumeric run and one per other visible character.
fn count_simple_tokens(text: &str) -> u64 {
    let mut count = 0;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            if !in_word {
                count += 1;
            }
            in_word = true;
        } else {
            in_word = false;
            if !c.is_whitespace() {
                count += 1;
            }
        }
    }
    count
}

/// The data of every event of an SSE body, and whether the body ended in an error.
async fn read_events(response: reqwest::Response) -> (Vec<String>, bool) {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => parser.push(&bytes, &mut events).unwrap(),
            Err(_) => return (events.into_iter().map(|e| e.data).collect(), true),
        }
    }
    (events.into_iter().map(|e| e.data).collect(), false)
}

async fn stats(server: &MockServer) -> MockStats {
    reqwest::get(format!("{}/admin/stats", root(server)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls the stats until `done` holds, failing after a few seconds.
async fn wait_for_stats(server: &MockServer, done: impl Fn(&MockStats) -> bool) -> MockStats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = server.engine().stats();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "stats never got there: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn non_streaming_round_trip() {
    let server = start(MockOptions::zero_timing()).await;
    let response = post_chat(&server, &hello(json!({}))).await;
    assert_eq!(response.status(), 200);
    let c: ChatCompletion = response.json().await.unwrap();
    assert_eq!(c.object, "chat.completion");
    assert!(c.id.starts_with("chatcmpl-"));
    assert_eq!(c.model, "mock");
    let choice = &c.choices[0];
    assert_eq!(choice.message.role, "assistant");
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    let text = choice.message.content.clone().unwrap();
    let usage = c.usage.unwrap();
    // <|user|> Hello " there" "," " mock" "!" <|end|> <|assistant|>
    assert_eq!(usage.prompt_tokens, 8);
    assert_eq!(usage.completion_tokens, count_simple_tokens(&text));
    assert!((16..=128).contains(&usage.completion_tokens));
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert_eq!(usage.prompt_tokens_details.unwrap().cached_tokens, 0);

    // Same request, same answer; another seed, another answer.
    let again: ChatCompletion = post_chat(&server, &hello(json!({})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        again.choices[0].message.content.as_deref(),
        Some(text.as_str())
    );
    assert_ne!(again.id, c.id);
    let seeded: ChatCompletion = post_chat(&server, &hello(json!({"seed": 99})))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(
        seeded.choices[0].message.content.as_deref(),
        Some(text.as_str())
    );

    let capped: ChatCompletion = post_chat(&server, &hello(json!({"max_tokens": 3})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(capped.choices[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(capped.usage.unwrap().completion_tokens, 3);

    let s = stats(&server).await;
    assert_eq!(
        (s.requests_total, s.completed, s.cancelled, s.active),
        (4, 4, 0, 0)
    );
    assert_eq!(s.prompt_tokens_total, 32);
    server.shutdown().await;
}

fn parse_chunks(events: &[String]) -> Vec<ChatCompletionChunk> {
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[tokio::test]
async fn streaming_layout_with_and_without_usage() {
    let server = start(MockOptions::zero_timing()).await;
    let plain: ChatCompletion = post_chat(&server, &hello(json!({})))
        .await
        .json()
        .await
        .unwrap();
    let expected_text = plain.choices[0].message.content.clone().unwrap();
    let expected_usage = plain.usage.unwrap();

    for include_usage in [false, true] {
        let response = post_chat(
            &server,
            &hello(json!({"stream": true, "stream_options": {"include_usage": include_usage}})),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        let (events, failed) = read_events(response).await;
        assert!(!failed);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        // The usage key is null on every chunk when usage was asked for, absent otherwise.
        for raw in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(raw).unwrap();
            assert_eq!(v.get("usage").is_some(), include_usage, "{raw}");
        }
        let chunks = parse_chunks(&events);
        let first = &chunks[0].choices[0];
        assert_eq!(first.delta.role.as_deref(), Some("assistant"));
        assert_eq!(first.delta.content.as_deref(), Some(""));
        let n = expected_usage.completion_tokens as usize;
        let tokens = &chunks[1..=n];
        assert!(tokens.iter().all(|c| c.choices[0].delta.carries_token()));
        let text: String = tokens
            .iter()
            .map(|c| c.choices[0].delta.content.clone().unwrap())
            .collect();
        assert_eq!(text, expected_text);
        let finish = &chunks[n + 1];
        assert_eq!(finish.choices[0].finish_reason, Some(FinishReason::Stop));
        assert_eq!(finish.choices[0].delta, Default::default());
        if include_usage {
            assert_eq!(chunks.len(), n + 3);
            let last = &chunks[n + 2];
            assert!(last.choices.is_empty());
            // The prompt is shorter than a block, so repeating it changes no usage number.
            assert_eq!(last.usage, UsageField::Present(expected_usage));
            assert!(chunks[..n + 2].iter().all(|c| c.usage == UsageField::Null));
        } else {
            assert_eq!(chunks.len(), n + 2);
            assert!(chunks.iter().all(|c| c.usage == UsageField::Absent));
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn repeated_prompt_hits_the_prefix_cache() {
    let server = start(MockOptions::zero_timing()).await;
    let long_system: String = (0..100).map(|i| format!("word{i} ")).collect();
    let body = json!({"model": "mock", "messages": [
        {"role": "system", "content": long_system},
        {"role": "user", "content": "What now?"}]});
    let first: ChatCompletion = post_chat(&server, &body).await.json().await.unwrap();
    let first_usage = first.usage.unwrap();
    assert_eq!(first_usage.prompt_tokens_details.unwrap().cached_tokens, 0);
    let second: ChatCompletion = post_chat(&server, &body).await.json().await.unwrap();
    let usage = second.usage.unwrap();
    let cached = usage.prompt_tokens_details.unwrap().cached_tokens;
    assert!(cached > 0);
    assert_eq!(cached % 16, 0);
    assert!(cached < usage.prompt_tokens);
    assert_eq!(cached, (usage.prompt_tokens - 1) / 16 * 16);
    assert_eq!(server.engine().stats().cached_tokens_total, cached);

    let reset: Value = reqwest::Client::new()
        .post(format!("{}/admin/kv-cache/reset", root(&server)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reset["removed_blocks"], usage.prompt_tokens / 16);
    let third: ChatCompletion = post_chat(&server, &body).await.json().await.unwrap();
    assert_eq!(
        third
            .usage
            .unwrap()
            .prompt_tokens_details
            .unwrap()
            .cached_tokens,
        0
    );
    server.shutdown().await;
}

fn weather_request(stream: bool) -> Value {
    json!({"model": "mock", "stream": stream, "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}, "days": {"type": "integer"}},
            "required": ["city", "unit"]}}}]})
}

#[tokio::test]
async fn tool_calls_plain_and_streamed() {
    let server = start(MockOptions::zero_timing()).await;
    let plain: ChatCompletion = post_chat(&server, &weather_request(false))
        .await
        .json()
        .await
        .unwrap();
    let choice = &plain.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(choice.message.content, None);
    let call = &choice.message.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.kind, "function");
    assert_eq!(call.function.name, "get_weather");
    assert!(call.id.starts_with("call_"));
    let args: Value = serde_json::from_str(&call.function.arguments).unwrap();
    assert!(args["city"].is_string());
    assert_eq!(args["unit"], "c");
    assert_eq!(
        plain.usage.unwrap().completion_tokens,
        count_simple_tokens(&call.function.arguments) + 1
    );

    let (events, failed) = read_events(post_chat(&server, &weather_request(true)).await).await;
    assert!(!failed);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse_chunks(&events);
    let header = chunks[0].choices[0].delta.tool_calls.as_ref().unwrap();
    assert_eq!(header[0].id.as_deref(), Some(call.id.as_str()));
    assert_eq!(header[0].function.name.as_deref(), Some("get_weather"));
    assert_eq!(header[0].function.arguments.as_deref(), Some(""));
    let fragments: Vec<String> = chunks[1..chunks.len() - 1]
        .iter()
        .map(|c| {
            c.choices[0].delta.tool_calls.as_ref().unwrap()[0]
                .function
                .arguments
                .clone()
                .unwrap()
        })
        .collect();
    assert!(fragments.len() > 2);
    assert_eq!(fragments.concat(), call.function.arguments);
    let finish = chunks.last().unwrap();
    assert_eq!(
        finish.choices[0].finish_reason,
        Some(FinishReason::ToolCalls)
    );

    // After the tool answered, the model speaks.
    let mut follow_up = weather_request(false);
    follow_up["messages"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "{\"temp\": 21}"}]);
    let answer: ChatCompletion = post_chat(&server, &follow_up).await.json().await.unwrap();
    assert_eq!(answer.choices[0].finish_reason, Some(FinishReason::Stop));
    assert!(answer.choices[0].message.content.is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_tool_arguments_fault() {
    let mut options = MockOptions::zero_timing();
    options.faults.invalid_tool_args_rate = 1.0;
    let server = start(options).await;
    let plain: ChatCompletion = post_chat(&server, &weather_request(false))
        .await
        .json()
        .await
        .unwrap();
    let args = &plain.choices[0].message.tool_calls.as_ref().unwrap()[0]
        .function
        .arguments;
    assert!(serde_json::from_str::<Value>(args).is_err(), "{args}");
    assert_eq!(server.engine().stats().faults_injected, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn injected_429_and_admin_fault_endpoints() {
    let server = start(MockOptions::zero_timing()).await;
    let client = reqwest::Client::new();
    let faults_url = format!("{}/admin/faults", root(&server));

    let patched: Value = client
        .patch(&faults_url)
        .json(&json!({"error_rate": 1.0, "error_status": 429, "retry_after_secs": 7}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["error_rate"], 1.0);
    assert_eq!(patched["stall_ms"], 1000);

    let response = post_chat(&server, &hello(json!({}))).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    // A later patch keeps the earlier fields.
    let patched: Value = client
        .patch(&faults_url)
        .json(&json!({"error_status": 503}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            patched["error_rate"].as_f64(),
            patched["error_status"].as_u64()
        ),
        (Some(1.0), Some(503))
    );
    let response = post_chat(&server, &hello(json!({}))).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");

    // Bad settings are refused with the field named, and change nothing.
    for (bad, param) in [
        (json!({"error_rate": 1.5}), Value::from("error_rate")),
        (json!({"error_status": 404}), Value::from("error_status")),
        (json!({"no_such_knob": 1}), Value::Null),
        (json!([1]), Value::Null),
    ] {
        let response = client.patch(&faults_url).json(&bad).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    let response = client.put(&faults_url).body("{oops").send().await.unwrap();
    assert_eq!(response.status(), 400);
    let current: Value = client
        .get(&faults_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current["error_status"], 503);

    // PUT replaces everything: an empty object restores the defaults.
    let response = client
        .put(&faults_url)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.engine().faults(), sluice_mock::Faults::default());
    assert_eq!(post_chat(&server, &hello(json!({}))).await.status(), 200);

    let s = stats(&server).await;
    assert_eq!(s.faults_injected, 2);
    assert_eq!((s.requests_total, s.completed, s.cancelled), (3, 1, 0));
    server.shutdown().await;
}

#[tokio::test]
async fn error_rate_is_deterministic_per_seed() {
    let server = start(MockOptions::zero_timing()).await;
    let pattern = |server: &MockServer| {
        let url = server.base_url();
        async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let r = client
                    .post(format!("{url}/chat/completions"))
                    .json(&hello(json!({"max_tokens": 1})))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        }
    };
    let faults = sluice_mock::Faults {
        error_rate: 0.5,
        seed: 3,
        ..Default::default()
    };
    server.engine().set_faults(faults.clone());
    let first = pattern(&server).await;
    server.engine().set_faults(faults);
    let second = pattern(&server).await;
    assert_eq!(first, second);
    assert!(first.contains(&500) && first.contains(&200), "{first:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn disconnect_after_n_chunks() {
    let mut options = MockOptions::zero_timing();
    options.faults.disconnect_rate = 1.0;
    options.faults.disconnect_after_chunks = 3;
    let server = start(options).await;
    let (events, failed) =
        read_events(post_chat(&server, &hello(json!({"stream": true}))).await).await;
    assert!(failed, "the body should end in an error");
    assert_eq!(events.len(), 3);
    assert!(!events.iter().any(|e| e == "[DONE]"));

    // Without streaming the connection closes before a (complete) answer.
    let sent = reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&hello(json!({})))
        .send()
        .await;
    match sent {
        Err(e) => assert!(e.is_request(), "{e}"),
        Ok(response) => assert!(response.json::<Value>().await.is_err()),
    }

    let s = wait_for_stats(&server, |s| s.active == 0).await;
    assert_eq!((s.faults_injected, s.completed, s.cancelled), (2, 0, 0));
    server.shutdown().await;
}

#[tokio::test]
async fn stall_pauses_the_stream() {
    let mut options = MockOptions::zero_timing();
    options.faults.stall_rate = 1.0;
    options.faults.stall_ms = 150;
    options.faults.stall_after_chunks = 2;
    let server = start(options).await;
    // Timed from before the request: the stall cannot end before 150 ms have passed since
    // then, however late this test reads (a start taken after the head arrived could fall
    // inside the stall on a busy machine).
    let start = Instant::now();
    let response = post_chat(&server, &hello(json!({"stream": true, "max_tokens": 4}))).await;
    let mut body = response.bytes_stream();
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut before_stall = None;
    while let Some(chunk) = body.next().await {
        parser.push(&chunk.unwrap(), &mut events).unwrap();
        if before_stall.is_none() && events.len() >= 2 {
            before_stall = Some(start.elapsed());
        }
    }
    assert_eq!(events.last().unwrap().data, "[DONE]");
    // Lower bound only: the pause happened between the second event and the end.
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert!(before_stall.is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn client_leaving_mid_stream_is_a_cancellation() {
    let mut options = MockOptions::zero_timing();
    options.timing.decode_interval = Duration::from_millis(20);
    let server = start(options).await;
    let response = post_chat(
        &server,
        &hello(json!({"stream": true, "max_tokens": 200, "ignore_eos": true})),
    )
    .await;
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert_eq!(server.engine().stats().active, 1);
    drop(body);
    let s = wait_for_stats(&server, |s| s.cancelled == 1).await;
    assert_eq!(s.completed, 0);
    wait_for_stats(&server, |s| s.active == 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn client_leaving_before_a_plain_answer_is_a_cancellation() {
    let mut options = MockOptions::zero_timing();
    options.timing.ttft_base = Duration::from_secs(30);
    let server = start(options).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let result = client
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&hello(json!({})))
        .send()
        .await;
    assert!(result.is_err());
    let s = wait_for_stats(&server, |s| s.cancelled == 1).await;
    assert_eq!((s.completed, s.active), (0, 0));
    server.shutdown().await;
}

#[tokio::test]
async fn timing_lower_bounds() {
    let options = MockOptions {
        timing: TimingModel {
            ttft_base: Duration::from_millis(100),
            prefill_per_token: Duration::ZERO,
            decode_interval: Duration::from_millis(20),
            batch_slowdown: 0.0,
        },
        ..MockOptions::default()
    };
    let server = start(options).await;
    let body = hello(json!({"stream": true, "max_tokens": 5, "ignore_eos": true}));
    let start_time = Instant::now();
    let response = post_chat(&server, &body).await;
    let mut stream = response.bytes_stream();
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut ttft = None;
    while let Some(chunk) = stream.next().await {
        parser.push(&chunk.unwrap(), &mut events).unwrap();
        let has_token = events.iter().any(|e| {
            serde_json::from_str::<ChatCompletionChunk>(&e.data)
                .is_ok_and(|c| c.choices.iter().any(|ch| ch.delta.carries_token()))
        });
        if ttft.is_none() && has_token {
            ttft = Some(start_time.elapsed());
        }
    }
    let total = start_time.elapsed();
    assert!(ttft.unwrap() >= Duration::from_millis(100), "{ttft:?}");
    assert!(total >= Duration::from_millis(180), "{total:?}");
    let tokens = events
        .iter()
        .filter_map(|e| serde_json::from_str::<ChatCompletionChunk>(&e.data).ok())
        .filter(|c| c.choices.iter().any(|ch| ch.delta.carries_token()))
        .count();
    assert_eq!(tokens, 5);

    let start_time = Instant::now();
    let plain = post_chat(
        &server,
        &hello(json!({"max_tokens": 5, "ignore_eos": true})),
    )
    .await;
    assert_eq!(plain.status(), 200);
    assert!(start_time.elapsed() >= Duration::from_millis(180));
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_openai_errors() {
    let server = start(MockOptions::zero_timing()).await;
    let response = post_chat(
        &server,
        &json!({"model": "mock", "messages": [{"role": "user", "content": 5}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "messages[0].content");
    assert!(body["error"].get("code").is_some());
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("messages[0].content"));

    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], Value::Null);

    let response = post_chat(&server, &hello(json!({"max_tokens": 0}))).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "max_tokens");

    let response = reqwest::get(format!("{}/nope", root(&server)))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let s = server.engine().stats();
    assert_eq!(
        (s.requests_total, s.active, s.completed, s.cancelled),
        (3, 0, 0, 0)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn api_key_models_health_and_request_ids() {
    let options = MockOptions {
        require_api_key: Some("sekrit".into()),
        served_models: vec!["a".into(), "b".into()],
        ..MockOptions::zero_timing()
    };
    let server = start(options).await;
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.base_url());

    let missing = client
        .post(&url)
        .json(&hello(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let wrong = client
        .post(&url)
        .bearer_auth("nope")
        .json(&hello(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let ok = client
        .post(&url)
        .bearer_auth("sekrit")
        .header("x-request-id", "req-123")
        .json(&hello(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-request-id"], "req-123");

    let models: Value = client
        .get(format!("{}/models", server.base_url()))
        .bearer_auth("sekrit")
        .header("x-request-id", "req-456")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(models["object"], "list");

    let health = client
        .get(format!("{}/health", root(&server)))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    // A dead engine behind a live HTTP server: /health says so, chat is still served.
    let patched = client
        .patch(format!("{}/admin/faults", root(&server)))
        .json(&json!({"unhealthy": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let health = client
        .get(format!("{}/health", root(&server)))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "unhealthy"})
    );
    server.engine().set_faults(sluice_mock::Faults::default());

    let s = stats(&server).await;
    assert_eq!(s.recent_request_ids, ["req-123", "req-456"]);

    // The request log shows chat bodies as received, refused ones included.
    let seen: Value = client
        .get(format!("{}/admin/requests", root(&server)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = seen.as_array().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2]["request_id"], "req-123");
    assert_eq!(seen[2]["body"], hello(json!({})));
    assert_eq!(seen[0]["request_id"], Value::Null);
    server.shutdown().await;
}

#[tokio::test]
async fn provider_limits_answer_429_with_openais_headers_and_count_what_they_admitted() {
    let server = start(MockOptions {
        limits: sluice_mock::ProviderLimits {
            requests_per_minute: Some(3),
            tokens_per_minute: Some(1_000_000),
            max_concurrent: None,
        },
        ..MockOptions::zero_timing()
    })
    .await;
    let mut charged = 0;
    for remaining in ["2", "1", "0"] {
        let resp = post_chat(&server, &hello(json!({"max_tokens": 8}))).await;
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(h["x-ratelimit-remaining-requests"], remaining);
        assert_eq!(h["x-ratelimit-limit-tokens"], "1000000");
        assert!(sluice_api::ratelimit::parse_go_duration(
            h["x-ratelimit-reset-requests"].to_str().unwrap()
        )
        .is_some());
        let c: ChatCompletion = resp.json().await.unwrap();
        let usage = c.usage.unwrap();
        charged += usage.prompt_tokens + usage.completion_tokens;
    }
    let refused = post_chat(&server, &hello(json!({"max_tokens": 8}))).await;
    assert_eq!(refused.status(), 429);
    // A request a minute: the next comes back in 20 s.
    assert_eq!(refused.headers()["retry-after"], "20");
    assert_eq!(refused.headers()["x-ratelimit-remaining-requests"], "0");
    let e: Value = refused.json().await.unwrap();
    assert_eq!(e["error"]["type"], "requests");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    let stats: MockStats = server.engine().stats();
    assert_eq!(stats.admitted_total, 3);
    assert_eq!(stats.admitted_tokens_total, charged);
    assert_eq!(stats.rate_limited_total, 1);
    assert_eq!(stats.requests_total, 4);
}
