//! The project's own CI suite: the request sequence whose recordings are committed under
//! `tests/recordings/`, the fixture server that serves the hand-written provider-shape
//! files, and the comparison that tells whether the committed recordings are still what
//! the proxy would record today. `tests/recordings/README.md` explains the layout.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, Uri};
use serde_json::{json, Value};
use sluice_api::sse::{SseEvent, SseParser};
use sluice_testkit::{read_stream, MockOptions};
use tokio::sync::oneshot;

/// Set to `1` to write freshly recorded entries over the committed ones instead of failing.
pub const RERECORD_ENV: &str = "SLUICE_RERECORD";

pub const RERECORD_HINT: &str = "Re-record with `scripts/record-fixtures.sh`, then review \
and commit the changes under tests/recordings/ (see tests/recordings/README.md).";

pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

pub fn mock_recordings_dir() -> PathBuf {
    repo_root().join("tests/recordings/mock")
}

pub fn provider_recordings_dir() -> PathBuf {
    repo_root().join("tests/recordings/providers")
}

pub fn provider_fixtures_dir() -> PathBuf {
    repo_root().join("tests/fixtures/provider-shapes")
}

pub fn rerecord_requested() -> bool {
    std::env::var(RERECORD_ENV).is_ok_and(|v| v == "1")
}

/// The mock the committed recordings were made against: `sluice mock --zero-timing
/// --kv-capacity-blocks 0`. The prefix cache is off so that `cached_tokens`, and with it
/// every answer, depends on the request alone and not on which requests came before.
pub fn recording_mock_options() -> MockOptions {
    let mut opts = MockOptions::zero_timing();
    opts.kv_cache.capacity_blocks = 0;
    opts
}

/// One request of the suite and what came back.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub step: String,
    pub status: u16,
    /// `x-sluice-replay`.
    pub replay: String,
    /// `x-sluice-replay-file`.
    pub file: String,
    /// A non-stream answer's JSON (`Null` when it was not JSON).
    pub body: Value,
    /// A stream answer's events.
    pub events: Vec<SseEvent>,
    pub transport_error: Option<String>,
}

impl Exchange {
    /// The JSON chunks of a stream (everything but `[DONE]`).
    pub fn chunks(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).unwrap_or(Value::Null))
            .collect()
    }
}

/// Sends the suite's requests one after the other, like a client would.
pub struct SuiteClient {
    client: reqwest::Client,
    base: String,
    pub exchanges: Vec<Exchange>,
}

impl SuiteClient {
    /// `base` is the proxy's `http://HOST:PORT`.
    pub fn new(base: &str) -> Self {
        SuiteClient {
            client: reqwest::Client::new(),
            base: base.to_owned(),
            exchanges: Vec::new(),
        }
    }

    /// Sends one request; a JSON body goes with `content-type: application/json` (as the
    /// SDKs send it), a `GET` without a body and without a content type (as the openai SDK
    /// lists models).
    pub async fn send(
        &mut self,
        step: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Exchange {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.expect("the proxy answers");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("<none>")
                .to_owned()
        };
        let (status, replay, file) = (
            resp.status().as_u16(),
            header("x-sluice-replay"),
            header("x-sluice-replay-file"),
        );
        let is_stream = header("content-type").starts_with("text/event-stream");
        let mut exchange = Exchange {
            step: step.to_owned(),
            status,
            replay,
            file,
            body: Value::Null,
            events: Vec::new(),
            transport_error: None,
        };
        if is_stream {
            let transcript = read_stream(resp).await;
            exchange.events = transcript.events;
            exchange.transport_error = transcript.transport_error;
        } else {
            let bytes = resp.bytes().await.expect("the answer's body");
            exchange.body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        }
        self.exchanges.push(exchange.clone());
        exchange
    }

    pub async fn chat(&mut self, step: &str, body: Value) -> Exchange {
        self.send(step, Method::POST, "/v1/chat/completions", Some(&body))
            .await
    }
}

pub const MOCK_MODEL: &str = "mock";

/// The weather tool of the tool-call steps (the Python suite sends the same).
pub fn weather_tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city"]
            }
        }
    }])
}

pub const WEATHER_QUESTION: &str = "What is the weather in Paris?";
pub const WEATHER_RESULT: &str = "{\"city\":\"Paris\",\"temperature\":18,\"unit\":\"celsius\"}";

pub const CONVERSATION: [&str; 3] = [
    "Where should I travel in spring?",
    "What should I pack for that trip?",
    "Summarise the plan in one line.",
];

/// The mock suite: every request `tests/python/test_replay_suite.py` sends through the
/// openai SDK, built the same way, follow-up turns from the answers received.
pub async fn run_mock_suite(base: &str) -> Vec<Exchange> {
    let mut c = SuiteClient::new(base);
    c.send("models", Method::GET, "/v1/models", None).await;
    c.chat(
        "chat",
        json!({
            "model": MOCK_MODEL,
            "messages": [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "Name three rivers in Europe."}
            ],
            "max_tokens": 200
        }),
    )
    .await;
    c.chat(
        "chat-stream",
        json!({
            "model": MOCK_MODEL,
            "messages": [{"role": "user", "content": "Write a haiku about the sea."}],
            "stream": true,
            "stream_options": {"include_usage": true}
        }),
    )
    .await;

    let question = json!([{"role": "user", "content": WEATHER_QUESTION}]);
    let call = c
        .chat(
            "tool-call",
            json!({"model": MOCK_MODEL, "messages": question, "tools": weather_tools(), "tool_choice": "auto"}),
        )
        .await;
    let tool_call = &call.body["choices"][0]["message"]["tool_calls"][0];
    let mut follow_up = question.as_array().cloned().unwrap_or_default();
    follow_up.push(json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{
            "id": tool_call["id"],
            "type": "function",
            "function": {"name": tool_call["function"]["name"], "arguments": tool_call["function"]["arguments"]}
        }]
    }));
    follow_up
        .push(json!({"role": "tool", "tool_call_id": tool_call["id"], "content": WEATHER_RESULT}));
    c.chat(
        "tool-result",
        json!({"model": MOCK_MODEL, "messages": follow_up, "tools": weather_tools(), "tool_choice": "auto"}),
    )
    .await;
    c.chat(
        "tool-call-stream",
        json!({
            "model": MOCK_MODEL,
            "messages": question,
            "tools": weather_tools(),
            "tool_choice": "auto",
            "stream": true,
            "stream_options": {"include_usage": true}
        }),
    )
    .await;

    let mut history: Vec<Value> = Vec::new();
    for (turn, text) in CONVERSATION.iter().enumerate() {
        history.push(json!({"role": "user", "content": text}));
        let answer = c
            .chat(
                &format!("conversation-{}", turn + 1),
                json!({"model": MOCK_MODEL, "messages": history, "max_tokens": 200}),
            )
            .await;
        let reply = answer.body["choices"][0]["message"]["content"].clone();
        history.push(json!({"role": "assistant", "content": reply}));
    }
    c.exchanges
}

/// One hand-written provider answer and the request an SDK sends for it
/// (`tests/fixtures/provider-shapes/cases.json`).
#[derive(Debug, Clone)]
pub struct ProviderCase {
    pub name: String,
    pub path: String,
    pub request: Value,
    pub response_file: PathBuf,
}

impl ProviderCase {
    pub fn is_stream(&self) -> bool {
        self.response_file.extension().is_some_and(|e| e == "sse")
    }

    pub fn response_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.response_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.response_file.display()))
    }

    /// The events of an `.sse` fixture, parsed as a client would.
    pub fn response_events(&self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let mut parser = SseParser::new();
        parser
            .push(&self.response_bytes(), &mut events)
            .expect("fixture lines are short");
        assert!(
            !parser.has_partial_event(),
            "{} must end with a blank line",
            self.response_file.display()
        );
        events
    }

    pub fn response_json(&self) -> Value {
        serde_json::from_slice(&self.response_bytes())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", self.response_file.display()))
    }
}

pub fn provider_cases() -> Vec<ProviderCase> {
    let dir = provider_fixtures_dir();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    manifest["cases"]
        .as_array()
        .expect("cases.json has a `cases` array")
        .iter()
        .map(|c| ProviderCase {
            name: c["name"].as_str().expect("case name").to_owned(),
            path: c["path"].as_str().expect("case path").to_owned(),
            request: c["request"].clone(),
            response_file: dir.join(c["response"].as_str().expect("case response file")),
        })
        .collect()
}

/// Sends every provider case's request through `base`.
pub async fn run_provider_cases(base: &str, cases: &[ProviderCase]) -> Vec<Exchange> {
    let mut c = SuiteClient::new(base);
    for case in cases {
        c.send(&case.name, Method::POST, &case.path, Some(&case.request))
            .await;
    }
    c.exchanges
}

/// A stand-in provider that answers each case's request with its hand-written file, byte
/// for byte, and anything else with a 404.
pub struct FixtureServer {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl FixtureServer {
    pub async fn start(cases: Vec<ProviderCase>) -> FixtureServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(serve_case)
            .with_state(Arc::new(cases));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        FixtureServer { addr, stop, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn serve_case(
    State(cases): State<Arc<Vec<ProviderCase>>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let found = cases
        .iter()
        .find(|c| method == Method::POST && c.path == uri.path() && c.request == request);
    match found {
        Some(case) => {
            let content_type = if case.is_stream() {
                "text/event-stream"
            } else {
                "application/json"
            };
            (
                [(http::header::CONTENT_TYPE, content_type)],
                case.response_bytes(),
            )
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {
                "type": "not_found",
                "message": format!("no fixture case for {method} {} with this body", uri.path())
            }})),
        )
            .into_response(),
    }
}

/// The entry files (`*.json`, temporary files excluded) of `dir`, by file name.
pub fn entry_files(dir: &Path) -> BTreeMap<String, PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    read.map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            (name.ends_with(".json") && !name.starts_with('.')).then_some((name, p))
        })
        .collect()
}

/// What of a recording must be stable: the request and its key, the status, the content
/// type, and the body or the events. With `ignore_volatile`, the fields a live mock makes up
/// per answer are left out (`id`, `created`, `system_fingerprint` of a completion or chunk,
/// `created` of a listed model); tool-call ids are deterministic and stay.
pub fn stable_view(entry: &Value, ignore_volatile: bool) -> Value {
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if ignore_volatile {
            strip_volatile(&mut v);
        }
        v
    };
    let response = &entry["response"];
    let events: Vec<Value> = response["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    let data = e["data"].as_str().unwrap_or_default();
                    let data = serde_json::from_str::<Value>(data)
                        .map(|d| strip(&d))
                        .unwrap_or_else(|_| Value::String(data.to_owned()));
                    json!({"event": e["event"], "id": e["id"], "data": data})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "key_version": entry["key_version"],
        "key": entry["key"],
        "request": entry["request"],
        "status": response["status"],
        "content_type": response["headers"]["content-type"],
        "body": strip(&response["body"]),
        "body_text": response["body_text"],
        "events": events,
    })
}

fn strip_volatile(v: &mut Value) {
    let Value::Object(map) = v else { return };
    for field in ["id", "created", "system_fingerprint"] {
        map.shift_remove(field);
    }
    if let Some(Value::Array(items)) = map.get_mut("data") {
        for item in items {
            if let Value::Object(m) = item {
                m.shift_remove("created");
            }
        }
    }
}

/// The files of `fresh` that differ from `committed` (or are missing there), the committed
/// files the fresh run no longer produces, and one line per difference.
#[derive(Debug, Default)]
pub struct DirComparison {
    pub changed: Vec<String>,
    pub obsolete: Vec<String>,
    pub report: Vec<String>,
}

impl DirComparison {
    pub fn is_clean(&self) -> bool {
        self.changed.is_empty() && self.obsolete.is_empty()
    }
}

pub fn compare_dirs(committed: &Path, fresh: &Path, ignore_volatile: bool) -> DirComparison {
    let old = entry_files(committed);
    let new = entry_files(fresh);
    let mut out = DirComparison::default();
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        match (old.get(name), new.get(name)) {
            (None, Some(_)) => {
                out.changed.push(name.clone());
                out.report.push(format!(
                    "{name}: recorded now but not committed (a suite request changed or was added)"
                ));
            }
            (Some(_), None) => {
                out.obsolete.push(name.clone());
                out.report.push(format!(
                    "{name}: committed but no suite request produces it any more"
                ));
            }
            (Some(a), Some(b)) => {
                let a = stable_view(&read_json(a), ignore_volatile);
                let b = stable_view(&read_json(b), ignore_volatile);
                if a != b {
                    out.changed.push(name.clone());
                    out.report.push(format!(
                        "{name}: differs in {}",
                        first_difference(&a, &b, String::new())
                    ));
                }
            }
            (None, None) => {}
        }
    }
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The path and both values of the first leaf where `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: String) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                if va != vb {
                    return first_difference(va, vb, format!("{path}.{k}"));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                if va != vb {
                    return first_difference(va, vb, format!("{path}[{i}]"));
                }
            }
        }
        _ => {}
    }
    let short = |v: &Value| {
        let s = v.to_string();
        if s.chars().count() > 120 {
            format!("{}…", s.chars().take(120).collect::<String>())
        } else {
            s
        }
    };
    format!("`{path}`: committed {} / now {}", short(a), short(b))
}

/// Brings `committed` in line with `fresh`: copies the changed files (as the proxy wrote
/// them) and removes the obsolete ones. Unchanged files are left alone, so a re-record
/// does not churn timestamps and ids that nobody compares.
pub fn sync_dir(committed: &Path, fresh: &Path, comparison: &DirComparison) {
    std::fs::create_dir_all(committed).unwrap();
    for name in &comparison.changed {
        std::fs::copy(fresh.join(name), committed.join(name)).unwrap();
    }
    for name in &comparison.obsolete {
        std::fs::remove_file(committed.join(name)).unwrap();
    }
}

/// Fails with the differences and how to re-record, or (with `SLUICE_RERECORD=1`) writes
/// them to `committed`.
pub fn check_or_rerecord(committed: &Path, fresh: &Path, ignore_volatile: bool, what: &str) {
    let comparison = compare_dirs(committed, fresh, ignore_volatile);
    if comparison.is_clean() {
        return;
    }
    if rerecord_requested() {
        sync_dir(committed, fresh, &comparison);
        eprintln!(
            "re-recorded {} ({} changed, {} removed):\n  {}",
            committed.display(),
            comparison.changed.len(),
            comparison.obsolete.len(),
            comparison.report.join("\n  ")
        );
        return;
    }
    panic!(
        "the committed recordings in {} no longer match {what} ({} difference(s)):\n  {}\n{RERECORD_HINT}",
        committed.display(),
        comparison.report.len(),
        comparison.report.join("\n  ")
    );
}
