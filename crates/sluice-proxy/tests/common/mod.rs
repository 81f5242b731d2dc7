//! Shared helpers of the proxy's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sluice_proxy::{Mode, ProxyConfig, ProxyServer};
use sluice_testkit::MockServer;

pub const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

/// The upstream address of a mock: its base URL without `/v1`.
pub fn upstream_of(mock: &MockServer) -> String {
    mock.base_url().trim_end_matches("/v1").to_owned()
}

pub async fn start_proxy(config: ProxyConfig) -> ProxyServer {
    ProxyServer::start(config, SocketAddr::from(LOOPBACK))
        .await
        .expect("proxy starts")
}

pub async fn proxy_for(upstream: &str, dir: &Path, mode: Mode) -> ProxyServer {
    start_proxy(ProxyConfig::new(upstream, dir, mode)).await
}

pub fn chat_body(content: &str, stream: bool) -> Value {
    json!({
        "model": "mock",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 6,
        "stream": stream,
    })
}

pub fn chat_url(proxy: &ProxyServer) -> String {
    format!("{}/v1/chat/completions", proxy.base_url())
}

pub async fn post(proxy: &ProxyServer, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(chat_url(proxy))
        .json(body)
        .send()
        .await
        .expect("proxy answers")
}

pub fn replay_header(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-sluice-replay")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_owned()
}

pub fn replay_file(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-sluice-replay-file")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_owned()
}

/// The entry files in `dir` (temporary files excluded), sorted.
pub fn entry_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect();
    files.sort();
    files
}

pub fn read_entry(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `DIR/.sluice/last-run.json`.
pub fn last_run(dir: &Path) -> Value {
    read_entry(&dir.join(".sluice").join("last-run.json"))
}

/// `DIR/.sluice/drift.json`.
pub fn drift_report(dir: &Path) -> Value {
    read_entry(&dir.join(".sluice").join("drift.json"))
}

/// The `used` file names of the last run, sorted.
pub fn used_files(dir: &Path) -> Vec<String> {
    let mut used: Vec<String> = last_run(dir)["used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    used.sort();
    used
}

pub fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// An upstream that logs the path of every request it receives and answers each with the
/// JSON body currently set, so a test decides what the "provider" says.
pub struct ScriptedUpstream {
    pub base_url: String,
    pub paths: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub answer: std::sync::Arc<std::sync::Mutex<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedUpstream {
    pub async fn start(answer: Value) -> ScriptedUpstream {
        use std::sync::{Arc, Mutex};
        let paths = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let (p, a) = (paths.clone(), answer.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (p, a) = (p.clone(), a.clone());
            async move {
                p.lock().unwrap().push(req.uri().path().to_owned());
                let body = a.lock().unwrap().clone();
                axum::Json(body)
            }
        });
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(LOOPBACK))
            .await
            .unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ScriptedUpstream {
            base_url,
            paths,
            answer,
            task,
        }
    }

    pub fn set_answer(&self, answer: Value) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub mod tls;
