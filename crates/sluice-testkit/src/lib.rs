//! Test support for sluice: launchers that boot real servers on free loopback ports inside the
//! test process, and `assert_eventually!` for conditions that become true asynchronously.
//! Only tests and benches depend on this crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod otlp;
pub mod redis;
pub mod relay;
pub mod tls;
pub mod tokenizer;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sluice_gateway::state::{GatewayShared, Services};
use sluice_gateway::{Config, Gateway};
pub use sluice_mock::{MockOptions, MockServer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Polls a condition (which may `.await`) every 10 ms until it holds, or panics after the
/// timeout (default 10 s) naming the condition. For state that settles asynchronously —
/// never a substitute for asserting a value.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr) => {
        $crate::assert_eventually!($cond, ::std::time::Duration::from_secs(10))
    };
    ($cond:expr, $timeout:expr) => {{
        let timeout: ::std::time::Duration = $timeout;
        let deadline = ::std::time::Instant::now() + timeout;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() >= deadline {
                panic!(
                    "condition not met within {:?}: {}",
                    timeout,
                    stringify!($cond)
                );
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(10)).await;
        }
    }};
}

/// Starts a mock engine on a free loopback port.
pub async fn start_mock(opts: MockOptions) -> MockServer {
    MockServer::start(opts, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("mock engine starts")
}

/// Changes the named fault settings of a running mock (`PATCH /admin/faults`).
pub async fn patch_mock_faults(mock: &MockServer, faults: serde_json::Value) {
    let r = reqwest::Client::new()
        .patch(mock.base_url().replace("/v1", "/admin/faults"))
        .json(&faults)
        .send()
        .await
        .expect("the mock's admin API answers");
    assert!(
        r.status().is_success(),
        "PATCH /admin/faults: {}",
        r.status()
    );
}

/// The base URL of a loopback port nothing listens on (bound, then released): connections
/// to it are refused.
pub fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    format!("http://{}/v1", listener.local_addr().expect("local addr"))
}

/// A gateway config in TOML with one model served by `urls`, listening on a free port, with
/// `extra` appended (more tables, `[defaults.timeouts]`, ...).
pub fn gateway_toml(model: &str, urls: &[String], extra: &str) -> String {
    let mut s = String::from("[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n");
    s.push_str(extra);
    s.push_str(&format!("\n[models.\"{model}\"]\n"));
    for u in urls {
        s.push_str(&format!(
            "[[models.\"{model}\".endpoints]]\nurl = \"{u}\"\n"
        ));
    }
    s
}

/// A key in the data directory's store (`auth.mode = "keys"`), e.g. scopes
/// `"chat:write,admin"`; returns the `Authorization` value.
pub fn api_key(data_dir: &Path, name: &str, tenant: &str, scopes: &str) -> String {
    use sluice_gateway::auth::{KeyTable, NewKey, ScopeSet};
    let store = std::sync::Arc::new(
        sluice_store::EmbeddedStore::open(data_dir).expect("the data directory's store opens"),
    );
    let (_, secret) = KeyTable::open(store)
        .expect("the key table opens")
        .create(NewKey {
            name: name.into(),
            tenant: tenant.into(),
            subject: None,
            scopes: ScopeSet::parse_list(scopes).expect("known scopes"),
            models: Vec::new(),
            expires_unix: None,
            requests_per_minute: None,
            tokens_per_minute: None,
        })
        .expect("the key is created");
    format!("Bearer {secret}")
}

fn resolve_test_config(toml: &str) -> sluice_gateway::config::ResolvedConfig {
    let path = Path::new("test.toml");
    Config::from_toml(toml, path)
        .and_then(|c| c.resolve(path, &|name| std::env::var(name).ok()))
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"))
}

/// A gateway serving on a tokio task, stopped by [`TestGateway::shutdown`] (graceful, as on
/// SIGTERM) or when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub shared: Arc<GatewayShared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// Parses, validates and starts a gateway from TOML (environment variables as in the
    /// process).
    /// The services are the ones the config asks for (`auth.mode = "keys"` opens the key
    /// store in `server.data_dir`).
    pub async fn start_toml(toml: &str) -> TestGateway {
        let config = resolve_test_config(toml);
        let services = Services::from_config(&config).expect("the gateway's services start");
        Self::start_resolved(&config, services).await
    }

    /// As [`TestGateway::start_toml`], with the services behind the phases (a test's own key
    /// store, cache, limiter or audit sink).
    pub async fn start_with(toml: &str, services: Services) -> TestGateway {
        Self::start_resolved(&resolve_test_config(toml), services).await
    }

    async fn start_resolved(
        config: &sluice_gateway::config::ResolvedConfig,
        services: Services,
    ) -> TestGateway {
        let gateway = Gateway::bind_with(config, services)
            .await
            .expect("gateway binds");
        let addr = gateway.local_addr().expect("local addr");
        let shared = gateway.shared().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        TestGateway {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The Prometheus text of `/metrics`, fetched over HTTP.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics body")
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down gracefully and waits until the server has drained.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.begin_shutdown();
        let served = match self.task.take() {
            Some(task) => task.await.expect("gateway task"),
            None => Ok(()),
        };
        // As `WorkerPool::shutdown` does: the audit log and the trace exporter write out
        // what they hold.
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.services.close()).await;
        served
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The value of a sample line in Prometheus text, e.g.
/// `metric_value(text, "sluice_requests_total", &[("model", "m"), ("status", "200")])`.
/// Labels not named may have any value; the values of all matching lines are summed.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// What a client saw of an SSE response: the events' data in order, and whether the body
/// ended with a transport error.
#[derive(Debug, Default)]
pub struct StreamTranscript {
    pub events: Vec<sluice_api::sse::SseEvent>,
    pub transport_error: Option<String>,
}

impl StreamTranscript {
    pub fn datas(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.data.as_str()).collect()
    }

    pub fn ended_with_done(&self) -> bool {
        self.events.last().is_some_and(|e| e.data == "[DONE]")
    }

    /// The JSON chunks (everything but `[DONE]`).
    pub fn chunks(&self) -> Vec<serde_json::Value> {
        self.events
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).expect("event data is JSON"))
            .collect()
    }

    /// How many chunks carry a token (non-empty `choices[0].delta.content`).
    pub fn token_chunks(&self) -> usize {
        self.chunks()
            .iter()
            .filter(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            })
            .count()
    }

    /// Concatenated `choices[0].delta.content` of all chunks.
    pub fn content(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }
}

/// Reads an SSE response to its end.
pub async fn read_stream(resp: reqwest::Response) -> StreamTranscript {
    use futures_util::StreamExt;
    let mut parser = sluice_api::sse::SseParser::new();
    let mut out = StreamTranscript::default();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => parser
                .push(&bytes, &mut out.events)
                .expect("sse line limit"),
            Err(e) => {
                out.transport_error = Some(e.to_string());
                break;
            }
        }
    }
    out
}
