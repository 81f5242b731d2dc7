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
use crate::config::{AuthMode, ClientLimits, ResolvedConfig};
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
    /// Position in [`WorkerState`]'s endpoint table.
    pub index: usize,
    pub metrics: Arc<ModelMetrics>,
    pub router: Arc<sluice_routing::ModelRouter>,
    /// How prompts are tokenized for prefix-aware routing (`[models.NAME.routing] tokenizer`).
    pub tokenizer: Option<sluice_routing::PromptTokenizer>,
    /// The endpoints' labels, in config order: what errors, logs and metrics call them.
    pub endpoint_labels: Vec<String>,
    /// The model's default cache policy (`[models.NAME.cache]`; off without one).
    pub cache: sluice_cache::CachePolicy,
    /// How long a miss waits for an identical request already upstream: the model's
    /// longest total timeout.
    pub cache_wait: std::time::Duration,
    /// Whether the model has `[models.NAME.limits]` (else the admit phase is skipped).
    pub limited: bool,
    /// `fallback_models`: tried in order when this model's limits refuse a request.
    pub fallback_models: Vec<String>,
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
                let endpoints = model
                    .endpoints
                    .iter()
                    .map(|e| sluice_routing::EndpointSpec {
                        label: e.label.clone(),
                        kv: e.kv.clone(),
                        probe: e
                            .base_url
                            .host_str()
                            .zip(e.base_url.port_or_known_default())
                            .map(|(host, port)| format!("{host}:{port}")),
                    })
                    .collect();
                let router = sluice_routing::ModelRouter::new(model.routing.settings, endpoints);
                ((*name).clone(), Arc::new(router))
            })
            .collect();
        metrics.register_routing(routers.clone());
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
                    endpoint_labels: model.endpoints.iter().map(|e| e.label.clone()).collect(),
                    cache: model.cache,
                    cache_wait: model
                        .endpoints
                        .iter()
                        .map(|e| e.timeouts.total)
                        .max()
                        .unwrap_or_default(),
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
    /// `endpoints[model.index][i]` serves `model.endpoint_labels[i]`.
    endpoints: Vec<Vec<Arc<UpstreamEndpoint>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for model `{model}`: {source}")]
pub struct WorkerBuildError {
    pub model: String,
    pub source: ClientBuildError,
}

impl WorkerState {
    /// Builds this worker's endpoints. Call from within the worker's runtime (the pools start
    /// their expiry sweep on it).
    pub fn new(
        shared: Arc<GatewayShared>,
        config: &ResolvedConfig,
    ) -> Result<Self, WorkerBuildError> {
        let mut endpoints = Vec::with_capacity(shared.model_names.len());
        for name in &shared.model_names {
            let model = &config.models[name];
            let built = model
                .endpoints
                .iter()
                .map(|e| UpstreamEndpoint::new(e.clone(), &shared.metrics).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| WorkerBuildError {
                    model: name.clone(),
                    source,
                })?;
            endpoints.push(built);
        }
        Ok(WorkerState { shared, endpoints })
    }

    /// `model`'s endpoints on this worker, in config order.
    pub fn endpoints(&self, model: &ModelEntry) -> &[Arc<UpstreamEndpoint>] {
        self.endpoints.get(model.index).map_or(&[], Vec::as_slice)
    }

    /// Every endpoint of every model, with its model's name.
    pub fn all_endpoints(&self) -> impl Iterator<Item = (&str, &Arc<UpstreamEndpoint>)> {
        self.shared
            .model_names
            .iter()
            .zip(&self.endpoints)
            .flat_map(|(name, eps)| eps.iter().map(move |e| (name.as_str(), e)))
    }
}
