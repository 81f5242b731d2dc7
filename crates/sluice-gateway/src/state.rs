//! The state the request path reads: [`GatewayShared`], built once at startup and shared by
//! every worker thread, and [`WorkerState`], what one worker owns besides (its upstream
//! connection pools).
//!
//! This module sits below the path (`chat`, `downstream`, `ops` import it) and above nothing
//! of theirs; `server` and `workers` only build it and hand it out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::auth::{KeyRing, KeyTable};
use parking_lot::Mutex;
use sluice_routing::{EndpointId, EndpointTable};

use crate::config::{AuthMode, ClientLimits, ResolvedConfig, ResolvedEndpoint};
use crate::metrics::{GatewayMetrics, ModelMetrics};
use crate::services::{AuditSink, CacheStore, KeyStore, Limiter};
use crate::upstream::{ClientBuildError, UpstreamEndpoint};

/// One per gateway, shared by all its workers.
pub struct GatewayShared {
    pub models: HashMap<String, Arc<ModelEntry>>,
    /// Configured model names, sorted: for `/v1/models` and "unknown model" errors.
    pub model_names: Vec<String>,
    pub metrics: Arc<GatewayMetrics>,
    /// The cache phases' counts, when a cache is configured.
    pub cache_metrics: Option<crate::metrics::CacheMetrics>,
    /// The admission phase's counts, when a limiter is configured.
    pub limits_metrics: Option<Arc<crate::metrics::LimitsMetrics>>,
    pub services: Services,
    /// How client connections are bounded (deadlines, sizes, count).
    pub client_limits: ClientLimits,
    /// Client connections open on all workers, against `client_limits.max_connections`.
    pub open_connections: AtomicUsize,
    pub started_unix: u64,
    /// Log one line per chat request (`server.access_log`).
    pub access_log: bool,
    /// What endpoints added at runtime inherit (`[defaults]`).
    pub endpoint_defaults: crate::config::EndpointDefaults,
}

/// The services behind the phases; an empty slot is a phase that is not configured.
#[derive(Default, Clone)]
pub struct Services {
    pub keys: Option<Arc<dyn KeyStore>>,
    /// Where keys are kept, for the admin API (`auth.mode = "keys"`).
    pub key_table: Option<KeyTable>,
    pub cache: Option<Arc<dyn CacheStore>>,
    pub limiter: Option<Arc<dyn Limiter>>,
    pub audit: Option<Arc<dyn AuditSink>>,
    /// OpenTelemetry traces (`[otel]` with an endpoint).
    pub tracer: Option<Arc<crate::otel::Tracer>>,
    /// TLS on the listener (`[server.tls]`).
    pub tls: Option<Arc<crate::tls::TlsTermination>>,
}

impl Services {
    /// The services the config asks for: with `auth.mode = "keys"`, the key ring over the
    /// embedded store in `server.data_dir` (opened, and created if need be, now).
    pub fn from_config(config: &ResolvedConfig) -> Result<Services, ServicesError> {
        let audit = config.audit.start()?;
        let tracer = crate::otel::Tracer::start(&config.otel).map_err(ServicesError::Otel)?;
        let mut services = Services::with_keys(config)?;
        services.audit = audit;
        services.tracer = tracer;
        if let Some(cache) = &config.cache {
            services.cache = Some(Arc::new(crate::cache::GatewayCache::open(
                cache,
                config.redis_url.as_deref(),
            )?));
        }
        if let Some(limiter) = crate::limiter::GatewayLimiter::start(
            config.models.values().filter_map(|m| m.limits.as_ref()),
            &config.fleet,
            config.redis_url.as_deref(),
            config.auth.mode == AuthMode::Keys,
        )
        .map_err(ServicesError::Redis)?
        {
            services.limiter = Some(Arc::new(limiter));
        }
        services.tls = match &config.tls {
            Some(files) => Some(Arc::new(crate::tls::TlsTermination::start(files)?)),
            None => None,
        };
        Ok(services)
    }

    /// Writes out what the services still hold (audit records, spans): called once every
    /// request has finished, so that a shutdown loses nothing. Blocks up to their deadlines.
    pub fn close(&self) {
        if let Some(audit) = &self.audit {
            audit.close();
        }
        if let Some(tracer) = &self.tracer {
            tracer.close();
        }
    }

    fn with_keys(config: &ResolvedConfig) -> Result<Services, ServicesError> {
        if config.auth.mode != AuthMode::Keys {
            return Ok(Services::default());
        }
        let table = KeyTable::for_config(config)?;
        let ring = KeyRing::load(config.auth.declared.clone(), Some(table.clone()))?;
        KeyRing::watch_store(&ring);
        Ok(Services {
            keys: Some(ring),
            key_table: Some(table),
            ..Services::default()
        })
    }
}

/// A service the config asks for could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
    #[error(transparent)]
    Keys(#[from] crate::auth::KeyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Redis(sluice_store::RedisError),
    #[error("cannot start the cache's writer thread: {0}")]
    CacheWriter(std::io::Error),
    #[error("cannot start the trace exporter: {0}")]
    Otel(std::io::Error),
    #[error("cannot open the audit log {}: {source}", path.display())]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A configured model as every worker sees it.
pub struct ModelEntry {
    pub name: String,
    /// Position in [`WorkerState`]'s per-model endpoints.
    pub index: usize,
    pub metrics: Arc<ModelMetrics>,
    /// Ranks the model's endpoints, and holds them: added and removed at runtime through
    /// it (`endpoint_admin`, a reload on SIGHUP).
    pub router: Arc<sluice_routing::ModelRouter>,
    /// How prompts are tokenized for prefix-aware routing (`[models.NAME.routing] tokenizer`).
    pub tokenizer: Option<sluice_routing::PromptTokenizer>,
    /// `[models.NAME.routing] health_check_path`, for endpoints added at runtime too.
    pub health_check_path: Option<String>,
    /// The model's default cache policy (`[models.NAME.cache]`; off without one).
    pub cache: sluice_cache::CachePolicy,
    /// Whether the model has `[models.NAME.limits]` (else the admit phase is skipped).
    pub limited: bool,
    /// `fallback_models`: tried in order when this model's limits refuse a request.
    pub fallback_models: Vec<String>,
}

impl ModelEntry {
    /// How long a cache miss waits for an identical request already upstream: the longest
    /// total timeout of the model's endpoints now (they change at runtime).
    pub fn cache_wait(&self) -> std::time::Duration {
        let table = self.router.table();
        (0..table.len())
            .filter_map(|i| table.target(i)?.downcast_ref::<ResolvedEndpoint>())
            .map(|e| e.timeouts.total)
            .max()
            .unwrap_or_default()
    }
}

impl GatewayShared {
    pub fn new(config: &ResolvedConfig, services: Services) -> Self {
        let mut metrics = GatewayMetrics::new();
        if let Some(counters) = services.audit.as_ref().and_then(|a| a.counters()) {
            metrics.register_audit(counters);
        }
        if let Some(tracer) = &services.tracer {
            metrics.register_otel(tracer.counters());
        }
        let cache_metrics = services
            .cache
            .as_ref()
            .map(|c| metrics.register_cache(c.counters()));
        let limits_metrics = services.limiter.clone().map(|l| metrics.register_limits(l));
        let mut names: Vec<&String> = config.models.keys().collect();
        names.sort();
        let routers: Vec<(String, Arc<sluice_routing::ModelRouter>)> = names
            .iter()
            .map(|name| {
                let model = &config.models[*name];
                let path = model.routing.health_check_path.as_deref();
                let endpoints = model
                    .endpoints
                    .iter()
                    .map(|e| endpoint_spec(e, path))
                    .collect();
                let router = sluice_routing::ModelRouter::new(model.routing.settings, endpoints);
                ((*name).clone(), Arc::new(router))
            })
            .collect();
        metrics.register_routing(
            routers
                .iter()
                .map(|(name, router)| crate::metrics::RoutedModel {
                    name: name.clone(),
                    router: router.clone(),
                    tokenizer: config.models[name].routing.tokenizer.clone(),
                })
                .collect(),
        );
        // KV-event subscribers and the routers' sweepers, on the runtime building the
        // gateway, for as long as each router lives.
        if tokio::runtime::Handle::try_current().is_ok() {
            for (_, router) in &routers {
                router.start(sluice_routing::SubscriberSettings::default());
            }
        }
        let metrics = Arc::new(metrics);
        let models = names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let model = &config.models[*name];
                let entry = ModelEntry {
                    name: model.name.clone(),
                    index,
                    metrics: Arc::new(metrics.for_model(&model.name)),
                    router: routers[index].1.clone(),
                    tokenizer: model.routing.tokenizer.clone(),
                    health_check_path: model.routing.health_check_path.clone(),
                    cache: model.cache,
                    limited: model.limits.is_some(),
                    fallback_models: model.fallback_models.clone(),
                };
                ((*name).clone(), Arc::new(entry))
            })
            .collect();
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        GatewayShared {
            cache_metrics,
            limits_metrics,
            models,
            model_names: names.into_iter().cloned().collect(),
            metrics,
            services,
            client_limits: config.client_limits,
            open_connections: AtomicUsize::new(0),
            started_unix,
            access_log: config.access_log,
            endpoint_defaults: config.endpoint_defaults,
        }
    }

    /// Takes a client connection slot, or `None` when `max_connections` are open; the slot
    /// is given back when the returned guard drops.
    pub fn admit_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.client_limits.max_connections;
        let taken = self
            .open_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            self.metrics.client_connections_refused.inc();
            return None;
        }
        self.metrics.client_connections.inc();
        Some(ConnectionSlot(self.clone()))
    }
}

/// How the router holds `e`: its label, KV events and health check (`GET
/// health_check_path` when the model has one, else a TCP connect), and the resolved
/// endpoint itself for the workers to reach it.
pub fn endpoint_spec(
    e: &ResolvedEndpoint,
    health_check_path: Option<&str>,
) -> sluice_routing::EndpointSpec {
    let tcp = || -> Option<Arc<dyn sluice_routing::HealthCheck>> {
        let (host, port) = e
            .base_url
            .host_str()
            .zip(e.base_url.port_or_known_default())?;
        Some(Arc::new(sluice_routing::TcpConnect {
            address: format!("{host}:{port}"),
        }))
    };
    let probe = match health_check_path {
        None => tcp(),
        Some(path) => match crate::upstream::HttpHealthCheck::new(e, path) {
            Ok(check) => Some(Arc::new(check) as Arc<dyn sluice_routing::HealthCheck>),
            Err(error) => {
                tracing::warn!(endpoint = %e.label, %error, "cannot check the endpoint over HTTP; a TCP connect checks it instead");
                tcp()
            }
        },
    };
    sluice_routing::EndpointSpec {
        label: e.label.clone(),
        target: Some(Arc::new(e.clone())),
        kv: e.kv.clone(),
        probe,
    }
}

/// One open client connection, counted against `max_connections` until dropped.
pub struct ConnectionSlot(Arc<GatewayShared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.client_connections.dec();
    }
}

/// What one worker thread serves with: the shared state, and its own upstream endpoints
/// (each with its own connection pool, so a request never leaves the thread that took it).
pub struct WorkerState {
    pub shared: Arc<GatewayShared>,
    /// `endpoints[model.index]`: the model's endpoints on this worker.
    endpoints: Vec<Mutex<WorkerEndpoints>>,
}

/// A model's endpoints on one worker, lined up with the router's table of `version`: the
/// positions of a route's order index `lined_up`.
struct WorkerEndpoints {
    version: u64,
    lined_up: LinedUp,
    /// Every endpoint built here and still in the table (kept across versions, pools and
    /// all; dropped when the endpoint leaves the table).
    by_id: HashMap<EndpointId, Arc<UpstreamEndpoint>>,
}

/// A table's endpoints in its order; `None` where one could not be built (logged).
pub type LinedUp = Arc<[Option<Arc<UpstreamEndpoint>>]>;

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for model `{model}`: {source}")]
pub struct WorkerBuildError {
    pub model: String,
    pub source: ClientBuildError,
}

impl WorkerState {
    /// Builds this worker's endpoints. Call from within the worker's runtime (the pools start
    /// their expiry sweep on it).
    pub fn new(shared: Arc<GatewayShared>) -> Result<Self, WorkerBuildError> {
        let mut endpoints = Vec::with_capacity(shared.model_names.len());
        for name in &shared.model_names {
            let Some(model) = shared.models.get(name) else {
                continue;
            };
            let table = model.router.table();
            let mut by_id = HashMap::new();
            for i in 0..table.len() {
                let (Some(id), Some(config)) = (table.id(i), resolved(&table, i)) else {
                    continue;
                };
                let built =
                    UpstreamEndpoint::new(config.clone(), &shared.metrics).map_err(|source| {
                        WorkerBuildError {
                            model: name.clone(),
                            source,
                        }
                    })?;
                by_id.insert(id, Arc::new(built));
            }
            let lined_up = line_up(&table, &by_id);
            endpoints.push(Mutex::new(WorkerEndpoints {
                version: table.version,
                lined_up,
                by_id,
            }));
        }
        Ok(WorkerState { shared, endpoints })
    }

    /// `model`'s endpoints on this worker in the order of `table` (a route's): built for an
    /// endpoint this worker has not seen, dropped for those no longer in the table.
    pub fn endpoints(&self, model: &ModelEntry, table: &EndpointTable) -> LinedUp {
        let Some(slot) = self.endpoints.get(model.index) else {
            return Arc::from(Vec::new());
        };
        let mut mine = slot.lock();
        if mine.version == table.version {
            return mine.lined_up.clone();
        }
        // A route made just before a change: only endpoints still kept take its attempts
        // (a removed one gets no new request, and no client is built for it again).
        if table.version < mine.version {
            return line_up(table, &mine.by_id);
        }
        for i in 0..table.len() {
            let (Some(id), Some(config)) = (table.id(i), resolved(table, i)) else {
                continue;
            };
            if mine.by_id.contains_key(&id) {
                continue;
            }
            match UpstreamEndpoint::new(config.clone(), &self.shared.metrics) {
                Ok(built) => {
                    mine.by_id.insert(id, Arc::new(built));
                }
                Err(e) => {
                    tracing::error!(model = %model.name, endpoint = %config.label, error = %e, "cannot build the endpoint's client");
                }
            }
        }
        let current: std::collections::HashSet<EndpointId> =
            table.entries().map(|(id, _)| id).collect();
        mine.by_id.retain(|id, _| current.contains(id));
        let lined_up = line_up(table, &mine.by_id);
        mine.version = table.version;
        mine.lined_up = lined_up.clone();
        lined_up
    }
}

fn resolved(table: &EndpointTable, i: usize) -> Option<&ResolvedEndpoint> {
    table.target(i)?.downcast_ref::<ResolvedEndpoint>()
}

fn line_up(table: &EndpointTable, by_id: &HashMap<EndpointId, Arc<UpstreamEndpoint>>) -> LinedUp {
    table
        .entries()
        .map(|(id, _)| by_id.get(&id).cloned())
        .collect::<Vec<_>>()
        .into()
}
