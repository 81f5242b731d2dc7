//! The gateway's configuration: one TOML file, deserialised into typed structs with
//! `deny_unknown_fields`, then checked by [`Config::resolve`], which reports every problem at
//! once — syntax, unknown keys and wrong types found while reading (`source`) and values found
//! while resolving — in file order, each with its line, the key and the fix. Secrets never live in the file: an endpoint names the
//! environment variable that holds its key (`api_key_env`), read once at load.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub mod limits;
pub mod routing;
mod source;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub defaults: Defaults,
    /// Who may call (`[auth]`): nobody is asked by default.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The audit log (`[audit]`): off by default.
    #[serde(default)]
    pub audit: AuditConfig,
    /// State shared by several instances (`[state]`): none by default.
    #[serde(default)]
    pub state: StateConfig,
    /// OpenTelemetry traces (`[otel]`): off unless an endpoint is set.
    #[serde(default)]
    pub otel: OtelConfig,
    /// The inference cache's stores (`[cache]`); the cache is used by models that have a
    /// `[models.NAME.cache]` table.
    pub cache: Option<CacheConfig>,
    /// How instances sharing a Redis coordinate their rate-limit pools (`[limits]`).
    #[serde(default)]
    pub limits: limits::FleetConfig,
    /// Model name as clients send it → where it is served.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// What reading the file found (problems with their lines, where each key is).
    #[serde(skip)]
    source: source::SourceFindings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `"127.0.0.1:8080"`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How long in-flight requests may run after SIGTERM/SIGINT before they are cut.
    #[serde(default = "default_drain")]
    pub drain_timeout: ConfigDuration,
    /// Worker threads, each serving its own connections end to end. Default: one per core.
    pub workers: Option<usize>,
    /// Client connections open at once, over all workers; beyond it new ones are closed at
    /// once.
    pub max_connections: Option<usize>,
    /// Longest wait for the next piece of a request body.
    pub body_read_timeout: Option<ConfigDuration>,
    /// Longest time for a whole request body.
    pub body_timeout: Option<ConfigDuration>,
    /// Longest wait for a client to take the next piece of an answer; a client that stops
    /// reading is dropped (and its upstream request cancelled).
    pub write_timeout: Option<ConfigDuration>,
    /// Largest non-streaming upstream answer relayed, in bytes; a larger one is a 502.
    pub max_response_bytes: Option<u64>,
    /// One log line per chat request at `info` (target `sluice::access`): request id,
    /// model, endpoint, status, tokens, latency. Default: on.
    pub access_log: Option<bool>,
    /// Where the gateway keeps its embedded store (`sluice.db`: API keys). Default:
    /// `$SLUICE_DATA_DIR`, else `$XDG_DATA_HOME/sluice`, else `~/.local/share/sluice`. Only
    /// created when something needs it (`auth.mode = "keys"`).
    pub data_dir: Option<PathBuf>,
    /// `[server.tls]`: terminate TLS on the listener. Unset: plain HTTP.
    pub tls: Option<ServerTlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            drain_timeout: default_drain(),
            workers: None,
            max_connections: None,
            body_read_timeout: None,
            body_timeout: None,
            write_timeout: None,
            max_response_bytes: None,
            access_log: None,
            data_dir: None,
            tls: None,
        }
    }
}

impl ServerConfig {
    fn client_limits(&self, problems: &mut Vec<ConfigProblem>) -> ClientLimits {
        let built_in = ClientLimits::BUILT_IN;
        let mut positive = |key: &str, value: Option<ConfigDuration>, default: Duration| match value
        {
            Some(ConfigDuration(d)) if d.is_zero() => {
                problems.push(ConfigProblem {
                    line: None,
                    key: format!("server.{key}"),
                    message: "must be longer than zero; leave it out for the default".into(),
                });
                default
            }
            Some(ConfigDuration(d)) => d,
            None => default,
        };
        let limits = ClientLimits {
            max_connections: self.max_connections.unwrap_or(built_in.max_connections),
            header_timeout: built_in.header_timeout,
            body_read_timeout: positive(
                "body_read_timeout",
                self.body_read_timeout,
                built_in.body_read_timeout,
            ),
            body_timeout: positive("body_timeout", self.body_timeout, built_in.body_timeout),
            write_timeout: positive("write_timeout", self.write_timeout, built_in.write_timeout),
            max_response_bytes: self
                .max_response_bytes
                .unwrap_or(built_in.max_response_bytes),
        };
        if limits.max_connections == 0 {
            problems.push(ConfigProblem {
                line: None,
                key: "server.max_connections".into(),
                message: "must be at least 1; leave it out for the default (16384)".into(),
            });
        }
        if limits.max_response_bytes < 1024 {
            problems.push(ConfigProblem {
                line: None,
                key: "server.max_response_bytes".into(),
                message: "must be at least 1024 bytes; leave it out for the default (64 MiB)"
                    .into(),
            });
        }
        limits
    }
}

/// `server.listen` as an address: an IP and port, or a host name and port (`localhost:8080`),
/// the name resolved now, IPv4 first (what `localhost` means to most clients).
fn listen_address(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let (_, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let mut addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .ok()?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.into_iter().next()
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_drain() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

/// `[auth]`: how callers are identified.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    /// Keys declared by their digest, for setups whose config lives in git: accepted beside
    /// the keys of the store (which `sluice keys` and the admin API manage).
    #[serde(default)]
    pub keys: Vec<DeclaredKeyConfig>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every caller is one anonymous tenant (the embedded default).
    #[default]
    None,
    /// Every request but `/health`, `/ready` and `/metrics` needs an API key.
    Keys,
}

/// `[[auth.keys]]`: a key known by its digest only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredKeyConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tenant: String,
    pub subject: Option<String>,
    /// `sha256:` and the 64 hex digits of the key's SHA-256 (`printf %s "$KEY" | sha256sum`).
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Models the key may use; left out, every model.
    #[serde(default)]
    pub models: Vec<String>,
}

/// `[state]`: where instances share state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `redis://[user:password@]host:port[/db]`: API keys live there (not in the data
    /// directory) and every instance sees them.
    pub redis_url: Option<String>,
}

/// `[server.tls]`: the listener's certificate and key, PEM files re-read on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The certificate chain (server certificate first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[otel]`: traces of the request path, exported over OTLP/HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `"http://127.0.0.1:4318"`; spans are posted
    /// to `{endpoint}/v1/traces`. Unset: traces are off.
    pub endpoint: Option<String>,
    /// `service.name` of the spans. Default `"sluice"`.
    pub service_name: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0. Default 1.0. A request carrying a
    /// `traceparent` follows its caller's decision.
    pub sample_ratio: Option<f64>,
    /// Deadline of one export (connect, send, answer). Default 10s.
    pub timeout: Option<ConfigDuration>,
    /// Requests whose spans may wait for the exporter; beyond, they are dropped and
    /// counted. Default 4096.
    pub queue_requests: Option<usize>,
}

/// `[audit]`: one JSON line per request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub sink: AuditSinkKind,
    /// The file (`sink = "file"`). Default: `audit.jsonl` in `server.data_dir`.
    pub path: Option<PathBuf>,
    /// Rotate beyond this size. Default 100 MiB.
    pub max_file_bytes: Option<u64>,
    /// Rotated files kept (`audit.jsonl.1` … `.N`). Default 5.
    pub keep_files: Option<usize>,
    #[serde(default)]
    pub fsync: crate::audit::Fsync,
    #[serde(default)]
    pub content: crate::audit::ContentCapture,
    /// Records that may wait for the writer; beyond, they are dropped and counted. Default
    /// 10 000.
    pub buffer_records: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditSinkKind {
    #[default]
    Off,
    File,
    Stdout,
}

/// `[audit]`, checked, with defaults applied.
#[derive(Debug, Clone)]
pub struct ResolvedAudit {
    pub sink: AuditSinkKind,
    pub path: PathBuf,
    pub max_file_bytes: u64,
    pub keep_files: usize,
    pub fsync: crate::audit::Fsync,
    pub content: crate::audit::ContentCapture,
    pub buffer_records: usize,
}

impl ResolvedAudit {
    /// Starts the audit log the config asks for (opening its file now), or none.
    pub fn start(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn crate::services::AuditSink>>, crate::state::ServicesError>
    {
        use crate::audit::{AuditLog, Destination, FileSink};
        let fail = |source| crate::state::ServicesError::Audit {
            path: self.path.clone(),
            source,
        };
        let destination = match self.sink {
            AuditSinkKind::Off => return Ok(None),
            AuditSinkKind::Stdout => Destination::Stream(Box::new(std::io::stdout())),
            AuditSinkKind::File => Destination::File(
                FileSink::open(&self.path, self.max_file_bytes, self.keep_files, self.fsync)
                    .map_err(fail)?,
            ),
        };
        let log = AuditLog::start(destination, self.content, self.buffer_records).map_err(fail)?;
        Ok(Some(std::sync::Arc::new(log)))
    }
}

/// The collector an `otel.endpoint` names: `http://HOST[:PORT][/PREFIX]`, spans going to
/// `PREFIX/v1/traces`.
fn otlp_collector(endpoint: &str, timeout: Duration) -> Result<crate::otel::Collector, String> {
    let url = url::Url::parse(endpoint)
        .map_err(|e| format!("is not a URL ({e}); e.g. \"http://127.0.0.1:4318\""))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err("https is not supported yet: send to a collector on the host or in the cluster over http (OTLP/HTTP, port 4318), which can forward over TLS".into())
        }
        other => {
            return Err(format!(
                "must be an http:// URL (OTLP/HTTP), not {other}://; e.g. \"http://127.0.0.1:4318\""
            ))
        }
    }
    let host = url
        .host_str()
        .ok_or_else(|| "has no host; e.g. \"http://127.0.0.1:4318\"".to_string())?;
    if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must be a plain http://HOST:PORT[/PATH] URL (no query, no credentials)".into(),
        );
    }
    let port = url.port().unwrap_or(80);
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        _ => host.to_owned(),
    };
    let authority = format!("{host}:{port}");
    Ok(crate::otel::Collector {
        host: if url.port().is_some() {
            authority.clone()
        } else {
            host
        },
        authority,
        path: format!("{}/v1/traces", url.path().trim_end_matches('/')),
        timeout,
    })
}

/// `[auth]`, checked.
#[derive(Debug, Clone)]
pub struct ResolvedAuth {
    pub mode: AuthMode,
    /// `server.data_dir`, or the default.
    pub data_dir: PathBuf,
    pub declared: Vec<crate::auth::KeyRecord>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub connections: ConnectionsConfig,
}

/// Upstream connection pool limits, per endpoint and per worker. In `[defaults.connections]`
/// every field has a built-in default; on an endpoint each field overrides it when set.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Idle connections kept open for reuse.
    pub max_idle: Option<usize>,
    /// Connects in progress at once; requests beyond wait for a connection to come back.
    pub max_connecting: Option<usize>,
    /// An idle connection unused this long is closed.
    pub idle_timeout: Option<ConfigDuration>,
}

/// Connection pool limits with every field resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_idle: usize,
    pub max_connecting: usize,
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    pub const BUILT_IN: ConnectionLimits = ConnectionLimits {
        max_idle: 1024,
        max_connecting: 16,
        idle_timeout: Duration::from_secs(90),
    };

    fn overridden_by(self, o: &ConnectionsConfig) -> ConnectionLimits {
        ConnectionLimits {
            max_idle: o.max_idle.unwrap_or(self.max_idle),
            max_connecting: o.max_connecting.unwrap_or(self.max_connecting),
            idle_timeout: o.idle_timeout.map_or(self.idle_timeout, |d| d.0),
        }
    }
}

/// How client connections are bounded: every read and write has a deadline, every buffer
/// a bound, and the number of connections a cap. Defaults are nginx's where nginx has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub max_connections: usize,
    /// For a whole request head (nginx: `client_header_timeout`, 60 s; idle keep-alive
    /// connections close after it too).
    pub header_timeout: Duration,
    /// Between two reads of a request body (nginx: `client_body_timeout`, 60 s).
    pub body_read_timeout: Duration,
    /// For a whole request body.
    pub body_timeout: Duration,
    /// For each write of an answer (nginx: `send_timeout`, 60 s).
    pub write_timeout: Duration,
    /// Largest non-streaming upstream answer.
    pub max_response_bytes: u64,
}

impl ClientLimits {
    pub const BUILT_IN: ClientLimits = ClientLimits {
        max_connections: 16_384,
        header_timeout: Duration::from_secs(30),
        body_read_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(300),
        write_timeout: Duration::from_secs(60),
        max_response_bytes: 64 * 1024 * 1024,
    };
}

/// Upstream timeouts. In `[defaults.timeouts]` every field has a built-in default; on an
/// endpoint each field overrides the default when set.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP (and TLS) connection set-up.
    pub connect: Option<ConfigDuration>,
    /// From sending the request to the first byte of the answer: the response head, and for
    /// streams also the first event. Providers that hold the head of a non-streaming answer
    /// until generation ends make this bound the whole generation.
    pub first_byte: Option<ConfigDuration>,
    /// The whole exchange, including reading a stream to its end.
    pub total: Option<ConfigDuration>,
}

/// Timeouts with every field resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub total: Duration,
}

impl Timeouts {
    pub const BUILT_IN: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        first_byte: Duration::from_secs(120),
        total: Duration::from_secs(600),
    };

    fn overridden_by(self, o: &TimeoutsConfig) -> Timeouts {
        Timeouts {
            connect: o.connect.map_or(self.connect, |d| d.0),
            first_byte: o.first_byte.map_or(self.first_byte, |d| d.0),
            total: o.total.map_or(self.total, |d| d.0),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// `[models.NAME.cache]`: the model's default cache policy. Absent: off.
    pub cache: Option<ModelCacheConfig>,
    /// `[models.NAME.limits]`: rate limits and job types. Absent: unlimited.
    pub limits: Option<limits::ModelLimitsConfig>,
    /// `[models.NAME.routing]`: how its endpoints are chosen. Absent: round robin.
    pub routing: Option<routing::RoutingConfig>,
    /// Models that take a request this model's limits refuse, tried in order (a request's
    /// `x-sluice-fallback-models` replaces the list).
    #[serde(default)]
    pub fallback_models: Vec<String>,
}

/// `[models.NAME.cache]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCacheConfig {
    /// `"on"`, `"off"`, `"read_only"` or `"write_only"`.
    pub mode: sluice_cache::CacheMode,
    /// The oldest entry a read accepts. Default: any entry still stored (`cache.ttl`).
    pub max_age: Option<ConfigDuration>,
}

/// `[cache]`: the inference cache's stores.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes of entries kept in memory (the most recently used). Default 64 MiB.
    pub memory_bytes: Option<u64>,
    /// Bytes of entries kept in the embedded store (`server.data_dir`); beyond, the oldest
    /// go. Default 1 GiB.
    pub store_bytes: Option<u64>,
    /// How long an entry lives. Default 24h.
    pub ttl: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// What errors, logs and metrics call this endpoint. Clients see this name, never the
    /// URL. Default: `MODEL/INDEX` (`gpt-4o/0`).
    pub name: Option<String>,
    /// Base URL of an OpenAI-compatible API, up to and including `/v1`
    /// (`https://api.openai.com/v1`, `http://vllm-0:8000/v1`). Required; the default (empty)
    /// only lets a missing `url` be reported together with every other problem.
    #[serde(default)]
    pub url: String,
    /// Name of the environment variable holding the API key sent as `Authorization: Bearer`.
    pub api_key_env: Option<String>,
    /// Model name to send upstream, when it differs from the name clients use.
    pub model: Option<String>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// Present only so that a key pasted into the file gets a message saying where it belongs.
    #[serde(default)]
    pub api_key: Option<toml::Value>,
    /// The engine's KV-event publisher (vLLM's `--kv-events-config` endpoint), as
    /// `tcp://HOST:PORT`: prefix-aware routing follows what the engine caches.
    pub kv_events: Option<String>,
    /// The engine's KV-event replay socket, `tcp://HOST:PORT`: lost events are asked again.
    pub kv_replay: Option<String>,
    /// Only KV-event messages whose topic starts with this. Default: all.
    pub kv_topic: Option<String>,
}

/// A duration written as a string with a unit: `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: f64 = num.parse().map_err(|_| {
            format!("`{s}` is not a duration; write e.g. \"250ms\", \"5s\", \"2m\"")
        })?;
        let secs = match unit.trim() {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86_400.0,
            "" => {
                return Err(format!(
                    "`{s}` has no unit; write e.g. \"{s}s\" or \"{s}ms\""
                ))
            }
            other => {
                return Err(format!(
                    "`{other}` is not a duration unit; use ms, s, m, h or d"
                ))
            }
        };
        if !secs.is_finite() || secs > 1e9 {
            return Err(format!("`{s}` is out of range"));
        }
        Ok(ConfigDuration(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ConfigDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One thing wrong with a configuration: where it is, the key, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path (`models.gpt.endpoints[0].url`); empty for a syntax error.
    pub key: String,
    /// 1-based line in the file; `None` for what is missing from it (no model at all).
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A configuration that passed validation, with environment lookups done and every default
/// applied. This is what the server runs on.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    pub listen: SocketAddr,
    /// What an endpoint added at runtime inherits (`[defaults]`).
    pub endpoint_defaults: EndpointDefaults,
    pub workers: usize,
    pub drain_timeout: Duration,
    /// See [`ServerConfig::access_log`].
    pub access_log: bool,
    pub client_limits: ClientLimits,
    pub auth: ResolvedAuth,
    pub audit: ResolvedAudit,
    /// `state.redis_url`, checked to be a `redis://` URL.
    pub redis_url: Option<String>,
    pub otel: crate::otel::ResolvedOtel,
    /// `[server.tls]`, the pair checked to load.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The inference cache, when any model uses it or `[cache]` is set.
    pub cache: Option<ResolvedCache>,
    /// `[limits]`: coordination of the pools among instances.
    pub fleet: limits::ResolvedFleet,
    pub models: BTreeMap<String, ResolvedModel>,
}

#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub name: String,
    pub endpoints: Vec<ResolvedEndpoint>,
    /// The default cache policy of the model's requests.
    pub cache: sluice_cache::CachePolicy,
    /// Rate limits, checked; `None`: the model is unlimited.
    pub limits: Option<sluice_limits::ModelLimits>,
    /// `fallback_models`, each checked to be a configured model.
    pub fallback_models: Vec<String>,
    /// `[models.NAME.routing]`.
    pub routing: routing::ResolvedRouting,
}

/// `[cache]`, checked: present when any model has a `[models.NAME.cache]` table or `[cache]`
/// is in the file.
#[derive(Debug, Clone)]
pub struct ResolvedCache {
    pub memory_bytes: u64,
    pub store_bytes: u64,
    pub ttl: Duration,
    /// Where the embedded store lives (`server.data_dir`).
    pub data_dir: PathBuf,
}

#[derive(Clone)]
pub struct ResolvedEndpoint {
    /// The endpoint's name in errors, logs and metrics (`name`, or `MODEL/INDEX`).
    pub label: String,
    /// `{url}/chat/completions`.
    pub chat_url: url::Url,
    /// The configured base URL, for readiness probes and operators' logs; never shown to
    /// clients.
    pub base_url: url::Url,
    pub api_key: Option<String>,
    pub upstream_model: Option<String>,
    pub timeouts: Timeouts,
    pub connections: ConnectionLimits,
    /// Where the engine publishes its KV events, when it does.
    pub kv: Option<sluice_routing::KvSource>,
}

impl fmt::Debug for ResolvedEndpoint {
    // Hand-written so the API key can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedEndpoint")
            .field("label", &self.label)
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("upstream_model", &self.upstream_model)
            .field("timeouts", &self.timeouts)
            .field("connections", &self.connections)
            .field("kv", &self.kv)
            .finish()
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<ResolvedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)?.resolve(path, &|name| std::env::var(name).ok())
    }

    /// Parses a config file's text. Never fails on the text itself: syntax errors, unknown
    /// keys and wrong types are kept, with their lines, and reported by [`Config::resolve`]
    /// together with every other problem. (`Result` stays for callers that chain `?`.)
    pub fn from_toml(text: &str, _path: &Path) -> Result<Config, ConfigError> {
        Ok(source::read(text))
    }

    /// Validates and resolves. `env` looks up environment variables (injected for tests).
    pub fn resolve(
        &self,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ResolvedConfig, ConfigError> {
        if self.source.incomplete {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems: self.source.problems.clone(),
            });
        }
        let mut problems = Vec::new();
        let problem = |problems: &mut Vec<ConfigProblem>, key: String, message: String| {
            problems.push(ConfigProblem {
                key,
                line: None,
                message,
            })
        };

        let listen = match listen_address(&self.server.listen) {
            Some(a) => Some(a),
            None => {
                problem(
                    &mut problems,
                    "server.listen".into(),
                    format!(
                        "`{}` is not an address and port; write e.g. \"127.0.0.1:8080\", \"localhost:8080\" or \"0.0.0.0:8080\"",
                        self.server.listen
                    ),
                );
                None
            }
        };

        let workers = match self.server.workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n @ 1..=1024) => n,
            Some(n) => {
                problem(
                    &mut problems,
                    "server.workers".into(),
                    format!("{n} is out of range; use 1 to 1024, or leave it out for one per core"),
                );
                1
            }
        };

        let client_limits = self.server.client_limits(&mut problems);

        let defaults = Timeouts::BUILT_IN.overridden_by(&self.defaults.timeouts);
        check_timeouts(&mut problems, "defaults.timeouts", &defaults);
        let connection_defaults =
            ConnectionLimits::BUILT_IN.overridden_by(&self.defaults.connections);
        check_connections(&mut problems, "defaults.connections", &connection_defaults);

        if self.models.is_empty() {
            problem(
                &mut problems,
                "models".into(),
                "no model is configured; add a [models.NAME] table with at least one \
                 [[models.NAME.endpoints]] entry holding a `url`"
                    .into(),
            );
        }

        let mut models = BTreeMap::new();
        for (name, model) in &self.models {
            let key = format!("models.{}", toml_key(name));
            if model.endpoints.is_empty() {
                problem(
                    &mut problems,
                    format!("{key}.endpoints"),
                    format!("model `{name}` has no endpoint; add [[{key}.endpoints]] with a `url`"),
                );
            }
            let mut endpoints = Vec::new();
            for (i, ep) in model.endpoints.iter().enumerate() {
                let ekey = format!("{key}.endpoints[{i}]");
                let label = ep.name.clone().unwrap_or_else(|| format!("{name}/{i}"));
                if let Some(resolved) = resolve_endpoint(
                    &mut problems,
                    &ekey,
                    label,
                    ep,
                    (defaults, connection_defaults),
                    env,
                ) {
                    endpoints.push(resolved);
                }
            }
            let cache = model
                .cache
                .as_ref()
                .map_or_else(sluice_cache::CachePolicy::default, |c| {
                    sluice_cache::CachePolicy {
                        mode: c.mode,
                        max_age: c.max_age.map(|d| d.0),
                    }
                });
            let limits = model
                .limits
                .as_ref()
                .and_then(|l| limits::resolve(name, &key, l, &mut problems));
            let has_kv_events = model.endpoints.iter().any(|e| e.kv_events.is_some());
            let routing =
                routing::resolve(&key, model.routing.as_ref(), has_kv_events, &mut problems);
            for fallback in &model.fallback_models {
                if fallback == name || !self.models.contains_key(fallback) {
                    problem(
                        &mut problems,
                        format!("{key}.fallback_models"),
                        format!(
                            "`{fallback}` is {}; name other configured models",
                            if fallback == name {
                                "this model itself"
                            } else {
                                "not a configured model"
                            }
                        ),
                    );
                }
            }
            models.insert(
                name.clone(),
                ResolvedModel {
                    name: name.clone(),
                    endpoints,
                    cache,
                    limits,
                    fallback_models: model.fallback_models.clone(),
                    routing,
                },
            );
        }

        let auth = self.resolve_auth(&mut problems);
        let audit = self.resolve_audit(&auth.data_dir, &mut problems);
        let redis_url = self.state.redis_url.clone();
        if let Some(url) = &redis_url {
            if !url.starts_with("redis://") {
                problem(
                    &mut problems,
                    "state.redis_url".into(),
                    "must be a redis:// URL, e.g. \"redis://127.0.0.1:6379/0\" (TLS, rediss://, is not supported yet)".into(),
                );
            }
        }
        let otel = self.resolve_otel(&mut problems);
        let tls = self.resolve_tls(&mut problems);
        let cache = self.resolve_cache(&auth.data_dir, &mut problems);
        let fleet = self.limits.resolve(&mut problems);
        let problems = self.in_file_order(problems);
        match (problems.is_empty(), listen) {
            (true, Some(listen)) => Ok(ResolvedConfig {
                listen,
                endpoint_defaults: EndpointDefaults {
                    timeouts: defaults,
                    connections: connection_defaults,
                },
                workers,
                drain_timeout: self.server.drain_timeout.0,
                access_log: self.server.access_log.unwrap_or(true),
                client_limits,
                auth,
                audit,
                redis_url,
                otel,
                tls,
                cache,
                fleet,
                models,
            }),
            _ => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            }),
        }
    }
}

impl Config {
    fn resolve_cache(
        &self,
        data_dir: &Path,
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<ResolvedCache> {
        let used = self.models.values().any(|m| m.cache.is_some());
        if self.cache.is_none() && !used {
            return None;
        }
        let c = self.cache.clone().unwrap_or_default();
        let memory_bytes = c.memory_bytes.unwrap_or(64 * 1024 * 1024);
        let store_bytes = c.store_bytes.unwrap_or(1024 * 1024 * 1024);
        let ttl = c.ttl.map_or(Duration::from_secs(24 * 3600), |d| d.0);
        let mut push = |key: &str, message: &str| {
            problems.push(ConfigProblem {
                key: key.into(),
                line: None,
                message: message.into(),
            });
        };
        if memory_bytes < 1024 * 1024 {
            push(
                "cache.memory_bytes",
                "must be at least 1048576 (1 MiB); leave it out for 64 MiB",
            );
        }
        if store_bytes < 1024 * 1024 {
            push(
                "cache.store_bytes",
                "must be at least 1048576 (1 MiB); leave it out for 1 GiB",
            );
        }
        if ttl.is_zero() {
            push("cache.ttl", "must be more than zero; leave it out for 24h");
        }
        Some(ResolvedCache {
            memory_bytes,
            store_bytes,
            ttl,
            data_dir: data_dir.to_owned(),
        })
    }

    /// `[server.tls]`: the files must load now, so that `check-config` and start-up say
    /// what is wrong with them instead of the first handshake.
    fn resolve_tls(&self, problems: &mut Vec<ConfigProblem>) -> Option<crate::tls::TlsFiles> {
        let t = self.server.tls.as_ref()?;
        let files = crate::tls::TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
        };
        if let Err(e) = files.load() {
            let key = match e {
                crate::tls::TlsError::Cert { .. } => "server.tls.cert",
                _ => "server.tls.key",
            };
            problems.push(ConfigProblem {
                key: key.into(),
                line: None,
                message: e.to_string(),
            });
            return None;
        }
        Some(files)
    }

    fn resolve_otel(&self, problems: &mut Vec<ConfigProblem>) -> crate::otel::ResolvedOtel {
        let o = &self.otel;
        let mut push = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: key.into(),
                line: None,
                message,
            });
        };
        let sample_ratio = o.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            push(
                "otel.sample_ratio",
                "must be between 0.0 and 1.0 (the share of new traces recorded)".into(),
            );
        }
        let timeout = o.timeout.map_or(Duration::from_secs(10), |d| d.0);
        if timeout.is_zero() {
            push(
                "otel.timeout",
                "must be more than zero; leave it out for 10s".into(),
            );
        }
        let queue_requests = o.queue_requests.unwrap_or(4096);
        if !(1..=1_000_000).contains(&queue_requests) {
            push(
                "otel.queue_requests",
                "must be 1 to 1000000; leave it out for 4096".into(),
            );
        }
        let collector =
            o.endpoint
                .as_deref()
                .and_then(|endpoint| match otlp_collector(endpoint, timeout) {
                    Ok(c) => Some(c),
                    Err(message) => {
                        push("otel.endpoint", message);
                        None
                    }
                });
        crate::otel::ResolvedOtel {
            collector,
            service_name: o.service_name.clone().unwrap_or_else(|| "sluice".into()),
            sample_ratio,
            queue_requests,
        }
    }

    fn resolve_audit(&self, data_dir: &Path, problems: &mut Vec<ConfigProblem>) -> ResolvedAudit {
        let a = &self.audit;
        let max_file_bytes = a.max_file_bytes.unwrap_or(100 * 1024 * 1024);
        if max_file_bytes < 1024 {
            problems.push(ConfigProblem {
                key: "audit.max_file_bytes".into(),
                line: None,
                message: "must be at least 1024; leave it out for 100 MiB".into(),
            });
        }
        let buffer_records = a.buffer_records.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&buffer_records) {
            problems.push(ConfigProblem {
                key: "audit.buffer_records".into(),
                line: None,
                message: "must be 1 to 1000000; leave it out for 10000".into(),
            });
        }
        if a.sink != AuditSinkKind::File && a.path.is_some() {
            problems.push(ConfigProblem {
                key: "audit.path".into(),
                line: None,
                message: "is only used with sink = \"file\"; set the sink or remove the path"
                    .into(),
            });
        }
        ResolvedAudit {
            sink: a.sink,
            path: a
                .path
                .clone()
                .unwrap_or_else(|| data_dir.join("audit.jsonl")),
            max_file_bytes,
            keep_files: a.keep_files.unwrap_or(5),
            fsync: a.fsync,
            content: a.content,
            buffer_records,
        }
    }

    fn resolve_auth(&self, problems: &mut Vec<ConfigProblem>) -> ResolvedAuth {
        use crate::auth::{check_label, KeyDigest, KeyRecord, ScopeSet};
        let mut push = |key: String, message: String| {
            problems.push(ConfigProblem {
                line: None,
                key,
                message,
            })
        };
        if self.auth.mode == AuthMode::None && !self.auth.keys.is_empty() {
            push(
                "auth.mode".into(),
                "keys are declared in [[auth.keys]] but auth.mode is \"none\", which asks \
                 nobody for a key; set mode = \"keys\""
                    .into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        let mut declared = Vec::new();
        for (i, k) in self.auth.keys.iter().enumerate() {
            let key = format!("auth.keys[{i}]");
            let mut ok = true;
            let mut fail = |field: &str, message: String| {
                ok = false;
                push(format!("{key}.{field}"), message);
            };
            if let Err(e) = check_label("the key name", &k.name) {
                fail("name", e);
            } else if !names.insert(k.name.clone()) {
                fail(
                    "name",
                    format!("`{}` names two keys; names are unique", k.name),
                );
            }
            if let Err(e) = check_label("the tenant", &k.tenant) {
                fail("tenant", e);
            }
            let digest = KeyDigest::parse(&k.digest)
                .map_err(|e| fail("digest", e))
                .ok();
            let scopes = ScopeSet::parse_list(&k.scopes.join(","))
                .map_err(|e| fail("scopes", e))
                .ok();
            for m in &k.models {
                if !self.models.contains_key(m) {
                    fail(
                        "models",
                        format!("model `{m}` is not configured; list models of [models.*]"),
                    );
                }
            }
            if let (true, Some(digest), Some(scopes)) = (ok, digest, scopes) {
                declared.push(KeyRecord {
                    subject: k.subject.clone().unwrap_or_else(|| k.name.clone()),
                    name: k.name.clone(),
                    tenant: k.tenant.clone(),
                    scopes,
                    models: k.models.clone(),
                    digest,
                    created_unix: 0,
                    expires_unix: None,
                    revoked_unix: None,
                    requests_per_minute: None,
                    tokens_per_minute: None,
                });
            }
        }
        ResolvedAuth {
            mode: self.auth.mode,
            data_dir: self
                .server
                .data_dir
                .clone()
                .unwrap_or_else(sluice_store::default_data_dir),
            declared,
        }
    }

    /// Merges the problems found while reading with those found while resolving (dropping
    /// the echoes of an entry reading already took out), places each in the file and sorts
    /// them by line; what no line can be given for comes last.
    fn in_file_order(&self, resolved: Vec<ConfigProblem>) -> Vec<ConfigProblem> {
        let mut all = self.source.problems.clone();
        for mut p in resolved {
            if self.source.covers(&p.key) {
                continue;
            }
            p.line = self.source.line_of(&p.key);
            all.push(p);
        }
        all.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        all
    }
}

fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_owned()
    } else {
        format!("\"{name}\"")
    }
}

fn check_timeouts(problems: &mut Vec<ConfigProblem>, key: &str, t: &Timeouts) {
    for (field, d) in [
        ("connect", t.connect),
        ("first_byte", t.first_byte),
        ("total", t.total),
    ] {
        if d.is_zero() {
            problems.push(ConfigProblem {
                line: None,
                key: format!("{key}.{field}"),
                message: "must be greater than zero".into(),
            });
        }
    }
    if t.first_byte > t.total {
        problems.push(ConfigProblem {
            line: None,
            key: format!("{key}.first_byte"),
            message: format!(
                "({:?}) is longer than total ({:?}); it would never fire — lower it or raise total",
                t.first_byte, t.total
            ),
        });
    }
}

fn check_connections(problems: &mut Vec<ConfigProblem>, key: &str, c: &ConnectionLimits) {
    if c.max_connecting == 0 {
        problems.push(ConfigProblem {
            line: None,
            key: format!("{key}.max_connecting"),
            message: "must be at least 1, or no request could ever get a connection".into(),
        });
    }
    if c.idle_timeout.is_zero() {
        problems.push(ConfigProblem {
            line: None,
            key: format!("{key}.idle_timeout"),
            message: "must be greater than zero; set max_idle = 0 to keep no idle connections"
                .into(),
        });
    }
}

/// `[defaults.timeouts]` and `[defaults.connections]`, resolved: what an endpoint without its
/// own values gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointDefaults {
    pub timeouts: Timeouts,
    pub connections: ConnectionLimits,
}

/// Checks one endpoint given at runtime (the admin API) as the file's endpoints are
/// checked; its problems are keyed `endpoint.FIELD`. A runtime endpoint must be named: the
/// name is how it is removed again.
pub fn resolve_runtime_endpoint(
    ep: &EndpointConfig,
    defaults: EndpointDefaults,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ResolvedEndpoint, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let Some(label) = ep.name.clone() else {
        return Err(vec![ConfigProblem {
            line: None,
            key: "endpoint.name".into(),
            message: "is required for an endpoint added at runtime: it is how the endpoint is \
                      shown and removed"
                .into(),
        }]);
    };
    let resolved = resolve_endpoint(
        &mut problems,
        "endpoint",
        label,
        ep,
        (defaults.timeouts, defaults.connections),
        env,
    );
    match resolved {
        Some(e) if problems.is_empty() => Ok(e),
        _ => Err(problems),
    }
}

/// Whether `a` and `b` reach the same engine the same way (a reload replaces an endpoint
/// only when something changed).
pub fn same_endpoint(a: &ResolvedEndpoint, b: &ResolvedEndpoint) -> bool {
    a.label == b.label
        && a.chat_url == b.chat_url
        && a.api_key == b.api_key
        && a.upstream_model == b.upstream_model
        && a.timeouts == b.timeouts
        && a.connections == b.connections
        && a.kv == b.kv
}

fn resolve_endpoint(
    problems: &mut Vec<ConfigProblem>,
    key: &str,
    label: String,
    ep: &EndpointConfig,
    (defaults, connection_defaults): (Timeouts, ConnectionLimits),
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ResolvedEndpoint> {
    let before = problems.len();
    let mut push = |k: &str, m: String| {
        problems.push(ConfigProblem {
            line: None,
            key: format!("{key}{k}"),
            message: m,
        })
    };
    if label.is_empty() || label.len() > 128 || label.chars().any(char::is_control) {
        push(
            ".name",
            "must be 1 to 128 printable characters; it names the endpoint in errors and metrics"
                .into(),
        );
    }
    if ep.api_key.is_some() {
        push(
            ".api_key",
            "secrets never live in the config file; put the key in an environment variable \
             and name that variable with `api_key_env = \"OPENAI_API_KEY\"`"
                .into(),
        );
    }
    let base_url = match url::Url::parse(ep.url.trim_end_matches('/')) {
        _ if ep.url.trim().is_empty() => {
            push(
                ".url",
                "is missing; every endpoint needs the API base it sends to, e.g. \
                 url = \"https://api.openai.com/v1\""
                    .into(),
            );
            None
        }
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if u.query().is_some() || u.fragment().is_some() {
                push(
                    ".url",
                    format!("`{}` must not carry a query or fragment", ep.url),
                );
            }
            Some(u)
        }
        Ok(u) => {
            push(
                ".url",
                format!(
                    "`{}` must be an http:// or https:// URL with a host (got scheme `{}`)",
                    ep.url,
                    u.scheme()
                ),
            );
            None
        }
        Err(e) => {
            push(
                ".url",
                format!(
                    "`{}` is not a URL ({e}); write the API base, e.g. \"https://api.openai.com/v1\"",
                    ep.url
                ),
            );
            None
        }
    };
    let api_key = match &ep.api_key_env {
        None => None,
        Some(var) if var.is_empty() || var.contains('=') || var.contains('\0') => {
            push(
                ".api_key_env",
                format!("`{var}` is not an environment variable name"),
            );
            None
        }
        Some(var) => match env(var) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                push(
                    ".api_key_env",
                    format!(
                        "environment variable `{var}` is not set (or empty); export it before \
                         starting sluice, or remove `api_key_env` if the endpoint needs no key"
                    ),
                );
                None
            }
        },
    };
    if ep.model.as_deref().is_some_and(str::is_empty) {
        push(
            ".model",
            "must not be empty; remove it to send the client's model name".into(),
        );
    }
    for (k, v) in [(".kv_events", &ep.kv_events), (".kv_replay", &ep.kv_replay)] {
        if let Some(v) = v {
            if let Err(e) = sluice_routing::zmtp::tcp_address(v) {
                push(k, format!("{e}, e.g. \"tcp://vllm-0:5557\""));
            }
        }
    }
    if ep.kv_replay.is_some() && ep.kv_events.is_none() {
        push(
            ".kv_replay",
            "is the replay of kv_events; set kv_events (the engine's publisher) too".into(),
        );
    }
    let kv = ep
        .kv_events
        .as_ref()
        .map(|events| sluice_routing::KvSource {
            events: events.clone(),
            replay: ep.kv_replay.clone(),
            topic: ep.kv_topic.clone().unwrap_or_default().into_bytes(),
        });
    let timeouts = defaults.overridden_by(&ep.timeouts);
    check_timeouts(problems, &format!("{key}.timeouts"), &timeouts);
    let connections = connection_defaults.overridden_by(&ep.connections);
    check_connections(problems, &format!("{key}.connections"), &connections);
    if problems.len() > before {
        return None;
    }
    let base_url = base_url?;
    let mut chat_url = base_url.clone();
    chat_url.set_path(&format!(
        "{}/chat/completions",
        base_url.path().trim_end_matches('/')
    ));
    Some(ResolvedEndpoint {
        label,
        chat_url,
        base_url,
        api_key,
        upstream_model: ep.model.clone(),
        timeouts,
        connections,
        kv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<ResolvedConfig, ConfigError> {
        let env = |name: &str| (name == "SET_KEY").then(|| "sk-test".to_string());
        Config::from_toml(text, Path::new("t.toml"))?.resolve(Path::new("t.toml"), &env)
    }

    fn problems(text: &str) -> Vec<ConfigProblem> {
        match resolve(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn a_full_config_resolves_with_overrides() {
        let c = resolve(
            r#"
            [server]
            listen = "0.0.0.0:9000"
            drain_timeout = "5s"
            [defaults.timeouts]
            connect = "2s"
            [models.gpt]
            [[models.gpt.endpoints]]
            url = "https://api.example.com/v1/"
            api_key_env = "SET_KEY"
            model = "gpt-4o-mini"
            timeouts = { total = "30s", first_byte = "10s" }
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        let ep = &c.models["gpt"].endpoints[0];
        assert_eq!(
            ep.chat_url.as_str(),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(ep.api_key.as_deref(), Some("sk-test"));
        assert_eq!(ep.timeouts.connect, Duration::from_secs(2));
        assert_eq!(ep.timeouts.first_byte, Duration::from_secs(10));
        assert_eq!(ep.timeouts.total, Duration::from_secs(30));
        assert!(!format!("{ep:?}").contains("sk-test"));
    }

    #[test]
    fn listen_takes_a_host_name_with_a_port() {
        let a = listen_address("localhost:8080").unwrap();
        assert!(a.ip().is_loopback() && a.port() == 8080, "{a}");
        assert_eq!(listen_address("0.0.0.0:9").unwrap().port(), 9);
        assert_eq!(listen_address("localhost"), None);
        assert_eq!(listen_address("localhost:http"), None);
    }

    #[test]
    fn every_problem_names_its_key() {
        let p = problems(
            r#"
            [server]
            listen = "localhost"
            [models.a]
            [[models.a.endpoints]]
            url = "ftp://x"
            api_key_env = "UNSET_KEY"
            [models.b]
            [[models.b.endpoints]]
            url = "http://h:1/v1"
            api_key = "sk-oops"
            timeouts = { first_byte = "20m" }
            [models.c]
            "#,
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "server.listen",
            "models.a.endpoints[0].url",
            "models.a.endpoints[0].api_key_env",
            "models.b.endpoints[0].api_key",
            "models.b.endpoints[0].timeouts.first_byte",
            "models.c.endpoints",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
        let msg = p.iter().find(|p| p.key.ends_with("api_key")).unwrap();
        assert!(msg.message.contains("api_key_env"));
        assert!(!p.iter().any(|p| p.message.contains("sk-oops")));
    }

    #[test]
    fn connection_limits_default_override_and_are_checked() {
        let c = resolve(
            r#"
            [defaults.connections]
            max_idle = 64
            [models.a]
            [[models.a.endpoints]]
            url = "http://h:1/v1"
            [[models.a.endpoints]]
            url = "http://h:2/v1"
            connections = { max_connecting = 4, idle_timeout = "10s" }
            "#,
        )
        .unwrap();
        let eps = &c.models["a"].endpoints;
        assert_eq!(
            eps[0].connections,
            ConnectionLimits {
                max_idle: 64,
                ..ConnectionLimits::BUILT_IN
            }
        );
        assert_eq!(
            eps[1].connections,
            ConnectionLimits {
                max_idle: 64,
                max_connecting: 4,
                idle_timeout: Duration::from_secs(10),
            }
        );
        let p = problems(
            r#"
            [defaults.connections]
            idle_timeout = "0s"
            [models.a]
            [[models.a.endpoints]]
            url = "http://h:1/v1"
            connections = { max_connecting = 0 }
            "#,
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(
            keys.contains(&"defaults.connections.idle_timeout"),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"models.a.endpoints[0].connections.max_connecting"),
            "{keys:?}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_parse_errors_naming_them() {
        let e = resolve("[server]\nlisten = \"127.0.0.1:1\"\nlissten = 3\n").unwrap_err();
        assert!(e.to_string().contains("lissten"), "{e}");
        let e = resolve("[server]\ndrain_timeout = \"5 parsecs\"\n").unwrap_err();
        assert!(e.to_string().contains("parsecs"), "{e}");
        let e = resolve("[server]\ndrain_timeout = \"5\"\n").unwrap_err();
        assert!(e.to_string().contains("no unit"), "{e}");
    }

    #[test]
    fn problems_come_in_file_order_with_lines_and_without_echoes() {
        let p = problems(
            "[server]\nworkers = 0\nlisen = \"x\"\n[models.a]\nendpoints = \"e\"\n[models.b]\n[[models.b.endpoints]]\nurl = 7\n",
        );
        let shown: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 4, "{shown:#?}");
        // Value problems found by resolve are placed at their key's line too.
        assert_eq!(
            p.iter().map(|p| p.line).collect::<Vec<_>>(),
            [Some(2), Some(3), Some(5), Some(8)],
            "{shown:#?}"
        );
        assert_eq!(p[0].key, "server.workers");
        assert!(shown[1].contains("did you mean `listen`"), "{shown:#?}");
        // A wrong-typed entry is reported once, not again as missing (no "has no endpoint",
        // no "url is missing").
        assert_eq!(p[2].key, "models.a.endpoints");
        assert_eq!(p[3].key, "models.b.endpoints[0].url");
        assert!(shown[3].contains("quoted string"), "{shown:#?}");
    }

    #[test]
    fn an_unknown_key_message_never_offers_api_key() {
        let p = problems(
            "[models.a]\n[[models.a.endpoints]]\nurl = \"http://h:1/v1\"\napi_kee_env = \"K\"\n",
        );
        assert_eq!(p.len(), 1);
        assert!(
            p[0].message.contains("did you mean `api_key_env`?"),
            "{}",
            p[0]
        );
        assert!(!p[0].message.contains("api_key,"), "{}", p[0]);
        assert_eq!(p[0].line, Some(4));
    }

    #[test]
    fn syntax_errors_are_reported_with_the_rest() {
        let p = problems("[server\nworkers = 0\n[models.a]\n[[models.a.endpoints]]\nurl = \"x\"\n");
        let shown: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert!(shown[0].starts_with("line 1: TOML syntax"), "{shown:#?}");
        assert!(
            shown
                .iter()
                .any(|s| s.contains("models.a.endpoints[0].url")),
            "{shown:#?}"
        );
    }

    #[test]
    fn declared_keys_are_checked_field_by_field() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let ok = resolve(&format!(
            "[auth]\nmode = \"keys\"\n[[auth.keys]]\nname = \"ci\"\ntenant = \"acme\"\ndigest = \"{digest}\"\nscopes = [\"chat:write\"]\nmodels = [\"a\"]\n[models.a]\n[[models.a.endpoints]]\nurl = \"http://h:1/v1\"\n"
        ))
        .unwrap();
        assert_eq!(ok.auth.mode, AuthMode::Keys);
        assert_eq!(ok.auth.declared.len(), 1);
        assert_eq!(ok.auth.declared[0].digest.to_hex(), "ab".repeat(32));

        let p = problems(&format!(
            "[auth]\n[[auth.keys]]\nname = \"ci\"\ntenant = \"acme\"\ndigest = \"sha256:12\"\nscopes = [\"chat:read\"]\nmodels = [\"zz\"]\n[[auth.keys]]\nname = \"ci\"\ntenant = \"a b\"\ndigest = \"{digest}\"\nscopes = [\"admin\"]\n[models.a]\n[[models.a.endpoints]]\nurl = \"http://h:1/v1\"\n"
        ));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "auth.mode",
                "auth.keys[0].digest",
                "auth.keys[0].scopes",
                "auth.keys[0].models",
                "auth.keys[1].name",
                "auth.keys[1].tenant",
            ],
            "{p:#?}"
        );
        assert!(p[0].message.contains("set mode = \"keys\""), "{}", p[0]);
        assert!(p[4].message.contains("names two keys"), "{}", p[4]);
    }

    #[test]
    fn empty_config_says_to_add_a_model() {
        let p = problems("");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "models");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            ConfigDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            ConfigDuration::parse("1.5s").unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!(
            ConfigDuration::parse("2m").unwrap().0,
            Duration::from_secs(120)
        );
        assert!(ConfigDuration::parse("s").is_err());
        assert!(ConfigDuration::parse("-1s").is_err());
    }

    #[test]
    fn routing_tokenizer_problems_name_the_key_and_the_fix() {
        let config = |routing: &str| {
            format!(
                "[models.m]\n[[models.m.endpoints]]\nurl = \"http://127.0.0.1:9/v1\"\n\
                 [models.m.routing]\n{routing}\n"
            )
        };
        let p = problems(&config(
            "policy = \"prefix_aware\"\ntokenizer = \"/no/such/dir\"",
        ));
        let t = p
            .iter()
            .find(|p| p.key == "models.m.routing.tokenizer")
            .expect("tokenizer problem");
        assert!(
            t.message.contains("/no/such/dir") && t.message.contains("tokenizer.json"),
            "{}",
            t.message
        );
        let p = problems(&config("policy = \"prefix_aware\""));
        let t = p
            .iter()
            .find(|p| p.key == "models.m.routing.tokenizer")
            .expect("tokenizer problem");
        assert!(t.message.contains("must tokenize prompts"), "{}", t.message);
        let c = resolve(&config("policy = \"prefix_aware\"\ntokenizer = \"mock\"")).unwrap();
        assert!(matches!(
            c.models["m"].routing.tokenizer,
            Some(sluice_routing::PromptTokenizer::Mock)
        ));
    }

    #[test]
    fn health_check_settings_are_checked() {
        let config = |routing: &str| {
            format!(
                "[models.m]\n[[models.m.endpoints]]\nurl = \"http://127.0.0.1:9/v1\"\n\
                 [models.m.routing]\n{routing}\n"
            )
        };
        let c = resolve(&config(
            "health_check_path = \"/health?deep=1\"\nhealth_check_timeout = \"300ms\"",
        ))
        .unwrap();
        let routing = &c.models["m"].routing;
        assert_eq!(routing.health_check_path.as_deref(), Some("/health?deep=1"));
        assert_eq!(
            routing.settings.health_check_timeout,
            Duration::from_millis(300)
        );
        let c = resolve(&config("")).unwrap();
        assert_eq!(c.models["m"].routing.health_check_path, None);
        for (routing, key, says) in [
            (
                "health_check_path = \"health\"",
                "health_check_path",
                "\"/health\"",
            ),
            (
                "health_check_path = \"/a b\"",
                "health_check_path",
                "not a URL path",
            ),
            (
                "health_check_timeout = \"0s\"",
                "health_check_timeout",
                "longer than 0s",
            ),
        ] {
            let p = problems(&config(routing));
            let found = p
                .iter()
                .find(|p| p.key == format!("models.m.routing.{key}"))
                .unwrap_or_else(|| panic!("{routing}: {p:?}"));
            assert!(found.message.contains(says), "{}", found.message);
        }
    }
}
