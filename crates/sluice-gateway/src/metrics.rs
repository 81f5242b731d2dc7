//! Prometheus metrics. One registry per gateway instance, so several gateways in one process
//! (tests) keep separate counts. Names follow Prometheus conventions: `sluice_` prefix, base
//! units (seconds), `_total` on counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::upstream::PoolStats;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    pub model: String,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    /// `input`, `output` or `cached_input`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub model: String,
    pub endpoint: String,
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CacheOutcomeLabels {
    /// `hit`, `miss` or `bypass`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct JobTypeLabels {
    pub model: String,
    pub job_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    pub model: String,
    /// The limit's config key, `job_type`, `memory`, `too_large`, `paused` or
    /// `unknown_job_type`.
    pub reason: &'static str,
}

/// The admission phase's counts, and the pools read when metrics are scraped.
pub struct LimitsMetrics {
    admitted: Family<JobTypeLabels, Counter>,
    refused: Family<RefusalLabels, Counter>,
    wait: HistogramFamily<ModelLabels>,
    pool: Family<ModelLabels, Gauge>,
    instances: Gauge,
    redis_errors: Counter,
    limiter: Arc<dyn crate::services::Limiter>,
}

impl LimitsMetrics {
    pub fn admitted(&self, model: &str, job_type: &str, waited: Duration) {
        self.admitted
            .get_or_create(&JobTypeLabels {
                model: model.to_owned(),
                job_type: job_type.to_owned(),
            })
            .inc();
        self.waited(model, waited);
    }

    pub fn refused(&self, model: &str, reason: &'static str, waited: Duration) {
        self.refused
            .get_or_create(&RefusalLabels {
                model: model.to_owned(),
                reason,
            })
            .inc();
        self.waited(model, waited);
    }

    fn waited(&self, model: &str, waited: Duration) {
        self.wait
            .get_or_create(&ModelLabels {
                model: model.to_owned(),
            })
            .observe(waited.as_secs_f64());
    }

    /// Sets the pool gauges from the limiter as it is now.
    fn read(&self) {
        for view in self.limiter.views() {
            self.pool
                .get_or_create(&ModelLabels { model: view.model })
                .set(i64::try_from(view.pool).unwrap_or(i64::MAX));
        }
        if let Some(state) = self.limiter.coordination() {
            self.instances
                .set(i64::try_from(state.instances).unwrap_or(i64::MAX));
            let seen = self.redis_errors.get();
            if state.errors > seen {
                self.redis_errors.inc_by(state.errors - seen);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub model: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PodLabels {
    pub model: String,
    pub pod: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PodKindLabels {
    pub model: String,
    pub pod: String,
    pub kind: &'static str,
}

/// The routers' decisions and the KV-event streams, read from the routers when metrics are
/// scraped (the request path only bumps the routers' own atomics).
pub struct RoutingMetrics {
    decisions: Family<RouteLabels, Counter>,
    events: Family<PodKindLabels, Counter>,
    stream: Family<PodKindLabels, Counter>,
    connected: Family<PodLabels, Gauge>,
    retries: Family<RouteLabels, Counter>,
    retries_refused: Family<RouteLabels, Counter>,
    ejections: Family<PodLabels, Counter>,
    health_checks: Family<PodKindLabels, Counter>,
    ejected: Family<PodLabels, Gauge>,
    index_blocks: Family<ModelLabels, Gauge>,
    index_bytes: Family<ModelLabels, Gauge>,
    tokenizer_lookups: Family<ModelOutcomeLabels, Counter>,
    tokenizer_cache_bytes: Family<ModelLabels, Gauge>,
    routers: Vec<RoutedModel>,
}

/// A model as the routing series see it.
pub struct RoutedModel {
    pub name: String,
    pub router: Arc<sluice_routing::ModelRouter>,
    pub tokenizer: Option<sluice_routing::PromptTokenizer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelOutcomeLabels {
    model: String,
    /// `hit` or `miss`, as the inference cache's lookups are labelled.
    outcome: &'static str,
}

/// Raises a counter read from elsewhere to `now` (counters only go up).
fn catch_up(counter: &Counter, now: u64) {
    let seen = counter.get();
    if now > seen {
        counter.inc_by(now - seen);
    }
}

impl RoutingMetrics {
    fn read(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for RoutedModel {
            name: model,
            router,
            tokenizer,
        } in &self.routers
        {
            if let Some(stats) = tokenizer.as_ref().and_then(|t| t.cache_stats()) {
                for (outcome, n) in [("hit", stats.hits), ("miss", stats.misses)] {
                    let labels = ModelOutcomeLabels {
                        model: model.clone(),
                        outcome,
                    };
                    catch_up(&self.tokenizer_lookups.get_or_create(&labels), n);
                }
                self.tokenizer_cache_bytes
                    .get_or_create(&ModelLabels {
                        model: model.clone(),
                    })
                    .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
            }
            for (reason, n) in router.decisions() {
                let labels = RouteLabels {
                    model: model.clone(),
                    reason: reason.as_str(),
                };
                catch_up(&self.decisions.get_or_create(&labels), n);
            }
            let counts = router.retries();
            for (reason, n) in counts.made {
                let labels = RouteLabels {
                    model: model.clone(),
                    reason: reason.as_str(),
                };
                catch_up(&self.retries.get_or_create(&labels), n);
            }
            for (reason, n) in [
                ("attempts", counts.refused_attempts),
                ("budget", counts.refused_budget),
            ] {
                let labels = RouteLabels {
                    model: model.clone(),
                    reason,
                };
                catch_up(&self.retries_refused.get_or_create(&labels), n);
            }
            if let Some(ix) = router.index() {
                let labels = ModelLabels {
                    model: model.clone(),
                };
                let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                self.index_blocks
                    .get_or_create(&labels)
                    .set(gauge(ix.blocks()));
                self.index_bytes
                    .get_or_create(&labels)
                    .set(gauge(ix.memory_bytes()));
            }
            for e in router.endpoints() {
                let labels = PodLabels {
                    model: model.clone(),
                    pod: e.label.clone(),
                };
                catch_up(&self.ejections.get_or_create(&labels), e.ejections);
                if e.health_check.is_some() {
                    for (kind, n) in [("passed", &e.checks.passed), ("failed", &e.checks.failed)] {
                        let labels = PodKindLabels {
                            model: model.clone(),
                            pod: e.label.clone(),
                            kind,
                        };
                        catch_up(&self.health_checks.get_or_create(&labels), n.load(Relaxed));
                    }
                }
                self.ejected
                    .get_or_create(&labels)
                    .set(i64::from(e.standing == sluice_routing::Standing::Ejected));
                let Some(s) = &e.events else { continue };
                let pod = |kind| PodKindLabels {
                    model: model.clone(),
                    pod: e.label.clone(),
                    kind,
                };
                for (kind, n) in [
                    ("block_stored", &s.stored_events),
                    ("block_removed", &s.removed_events),
                    ("all_blocks_cleared", &s.cleared_events),
                    ("ignored", &s.ignored_events),
                ] {
                    catch_up(&self.events.get_or_create(&pod(kind)), n.load(Relaxed));
                }
                for (kind, n) in [
                    ("decode_error", &s.decode_errors),
                    ("rejected_event", &s.rejected_events),
                    ("gap", &s.gaps),
                    ("replay", &s.replays),
                    ("replay_shortfall", &s.replay_shortfalls),
                    ("replay_failure", &s.replay_failures),
                    ("purge", &s.purges),
                    ("connect_failure", &s.connect_failures),
                ] {
                    catch_up(&self.stream.get_or_create(&pod(kind)), n.load(Relaxed));
                }
                self.connected
                    .get_or_create(&PodLabels {
                        model: model.clone(),
                        pod: e.label.clone(),
                    })
                    .set(i64::from(s.connected.load(Relaxed)));
            }
        }
    }
}

/// The cache phases' counts.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    pub lookups: Family<CacheOutcomeLabels, Counter>,
    pub skipped: Family<ReasonLabels, Counter>,
    pub tokens_saved: Family<KindLabels, Counter>,
    pub coalesced: Family<CacheOutcomeLabels, Counter>,
    /// Lookups per tenant (hit, miss, bypass), for the admin view's hit ratio. Tenants are
    /// the keys' (a bounded set); without keys, one.
    pub per_tenant: Arc<Mutex<HashMap<String, [u64; 3]>>>,
}

impl CacheMetrics {
    /// Hits, misses and bypasses of `tenant` (all tenants' for `None`).
    pub fn tenant_lookups(&self, tenant: Option<&str>) -> [u64; 3] {
        let map = self
            .per_tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match tenant {
            Some(t) => map.get(t).copied().unwrap_or_default(),
            None => map
                .values()
                .fold([0; 3], |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2]]),
        }
    }

    pub fn coalesced(&self, outcome: &'static str) {
        self.coalesced
            .get_or_create(&CacheOutcomeLabels { outcome })
            .inc();
    }

    pub fn lookup(&self, tenant: &str, outcome: &'static str) {
        self.lookups
            .get_or_create(&CacheOutcomeLabels { outcome })
            .inc();
        let slot = match outcome {
            "hit" => 0,
            "miss" => 1,
            _ => 2,
        };
        let mut map = self
            .per_tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(tenant) {
            Some(counts) => counts[slot] += 1,
            None => {
                let mut counts = [0; 3];
                counts[slot] = 1;
                map.insert(tenant.to_owned(), counts);
            }
        }
    }

    pub fn skipped(&self, reason: &'static str) {
        self.skipped.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn saved(&self, input: u64, output: u64) {
        self.tokens_saved
            .get_or_create(&KindLabels { kind: "input" })
            .inc_by(input);
        self.tokens_saved
            .get_or_create(&KindLabels { kind: "output" })
            .inc_by(output);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnectionStateLabels {
    pub endpoint: String,
    /// `idle` or `connecting`.
    pub state: &'static str,
}

/// An upstream connection pool, read when metrics are scraped. Each worker has its own pools
/// (see `workers`); counting at scrape time instead of on every checkout keeps the workers
/// from sharing a counter that changes twice per request.
pub trait PoolGauges: Send + Sync {
    fn pool_stats(&self) -> PoolStats;
}

struct WatchedPool {
    endpoint: String,
    pool: Weak<dyn PoolGauges>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The model label for requests whose model is not configured: bounded cardinality no matter
/// what clients send.
pub const UNKNOWN_MODEL: &str = "_unknown";

/// Status label for requests the client abandoned before the answer was complete (nginx's
/// convention).
pub const CLIENT_CLOSED: u16 = 499;

pub struct GatewayMetrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    in_flight: Family<ModelLabels, Gauge>,
    duration: HistogramFamily<ModelLabels>,
    ttft: HistogramFamily<ModelLabels>,
    overhead: HistogramFamily<ModelLabels>,
    tokens: Family<TokenLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    connections_opened: Family<EndpointLabels, Counter>,
    connections: Family<ConnectionStateLabels, Gauge>,
    connection_waiters: Family<EndpointLabels, Gauge>,
    pool_wait: HistogramFamily<EndpointLabels>,
    /// Client connections open now, and those closed at accept for `max_connections`.
    pub client_connections: Gauge,
    pub client_connections_refused: Counter,
    pools: Mutex<Vec<WatchedPool>>,
    limits: Option<Arc<LimitsMetrics>>,
    routing: Option<RoutingMetrics>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn overhead_histogram() -> Histogram {
    // 10 µs .. ~160 ms: the gateway's own time is small, so the buckets start small.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 15))
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "requests",
            "Chat completion requests by model and response status (499: client went away)",
            requests.clone(),
        );
        let in_flight = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "requests_in_flight",
            "Chat completion requests being served",
            in_flight.clone(),
        );
        let duration: HistogramFamily<ModelLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to the end of its response",
            duration.clone(),
        );
        let ttft: HistogramFamily<ModelLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "time_to_first_token_seconds",
            "Streaming requests: time from receiving the request to relaying the first chunk carrying a token",
            ttft.clone(),
        );
        let overhead: HistogramFamily<ModelLabels> =
            Family::new_with_constructor(overhead_histogram);
        registry.register(
            "gateway_overhead_seconds",
            "Time the gateway itself added: request duration minus time spent waiting on the upstream",
            overhead.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens reported by upstream usage, by kind (input, cached_input, output)",
            tokens.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges by endpoint and kind (connect, timeout_*, status_4xx, status_5xx, protocol, stream_broken)",
            upstream_errors.clone(),
        );
        let connections_opened = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "upstream_connections_opened",
            "Upstream connections opened, by endpoint (all workers)",
            connections_opened.clone(),
        );
        let connections = Family::<ConnectionStateLabels, Gauge>::default();
        registry.register(
            "upstream_connections",
            "Upstream connections of all workers' pools by state: idle (open, waiting for a request) or connecting",
            connections.clone(),
        );
        let connection_waiters = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "upstream_connection_waiters",
            "Requests waiting for an upstream connection: none idle and max_connecting connects already in progress",
            connection_waiters.clone(),
        );
        let pool_wait: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(overhead_histogram);
        registry.register(
            "upstream_pool_wait_seconds",
            "Time a request waited for an upstream connection (idle, handed over, or newly opened), by endpoint",
            pool_wait.clone(),
        );
        let client_connections = Gauge::default();
        registry.register(
            "client_connections",
            "Client connections open, all workers together",
            client_connections.clone(),
        );
        let client_connections_refused = Counter::default();
        registry.register(
            "client_connections_refused",
            "Client connections closed as soon as they were accepted because server.max_connections were open",
            client_connections_refused.clone(),
        );
        GatewayMetrics {
            registry,
            requests,
            in_flight,
            duration,
            ttft,
            overhead,
            tokens,
            upstream_errors,
            connections_opened,
            connections,
            connection_waiters,
            pool_wait,
            client_connections,
            client_connections_refused,
            pools: Mutex::new(Vec::new()),
            limits: None,
            routing: None,
        }
    }

    /// Shows an audit sink's counts on `/metrics`.
    pub fn register_audit(&mut self, counters: crate::services::AuditCounters) {
        self.registry.register(
            "audit_records_written",
            "Audit log lines written",
            counters.written,
        );
        self.registry.register(
            "audit_records_dropped",
            "Audit records dropped because the writer's queue was full (each drop is also reported in the log as an audit_overflow line)",
            counters.dropped,
        );
    }

    /// Registers the cache's series: the phases' counts (returned, for the request path) and
    /// the store's (`store`, read from its own counters).
    pub fn register_cache(
        &mut self,
        store: Option<crate::services::CacheStoreCounters>,
    ) -> CacheMetrics {
        let m = CacheMetrics::default();
        for outcome in ["hit", "miss", "bypass"] {
            let _ = m.lookups.get_or_create(&CacheOutcomeLabels { outcome });
        }
        self.registry.register(
            "cache_lookups",
            "Chat requests by cache outcome: hit (answered from the cache), miss (asked the upstream; stored if the mode writes), bypass (the cache was not read: mode off or write_only, or no key)",
            m.lookups.clone(),
        );
        self.registry.register(
            "cache_skipped_writes",
            "Answers not stored, by reason (request_failed, stream_broken, stream_error, too_large, unknown_tool, tool_arguments_not_json, tool_arguments_invalid, tool_schema_unusable, fallback_model)",
            m.skipped.clone(),
        );
        self.registry.register(
            "cache_tokens_saved",
            "Tokens the upstream did not have to process because a hit answered, by kind (input, output), as the stored answer's usage reported them",
            m.tokens_saved.clone(),
        );
        self.registry.register(
            "cache_coalesced",
            "Misses that waited for an identical request already asking the upstream: served (from its answer) or went_upstream (it failed, stored nothing, or took longer than the wait)",
            m.coalesced.clone(),
        );
        if let Some(store) = store {
            self.registry.register(
                "cache_writes",
                "Entries written to the cache's store",
                store.writes,
            );
            self.registry.register(
                "cache_store_errors",
                "Cache store faults (a read or write failed, or the write queue was full): each read that failed was answered as a miss",
                store.errors,
            );
        }
        m
    }

    /// Shows the trace exporter's counts on `/metrics`.
    pub fn register_otel(&mut self, counters: &crate::otel::ExportCounters) {
        self.registry.register(
            "otel_spans_exported",
            "Spans the collector accepted",
            counters.exported.clone(),
        );
        self.registry.register(
            "otel_spans_dropped",
            "Spans dropped: the exporter's queue was full (queue_full), or the collector could not be reached or refused them after retries (export_failed)",
            counters.dropped.clone(),
        );
    }

    /// The counter a pool of `endpoint` increments for each connection it opens.
    pub fn connections_opened(&self, endpoint: &str) -> Counter {
        Counter::clone(&self.connections_opened.get_or_create(&EndpointLabels {
            endpoint: endpoint.to_owned(),
        }))
    }

    /// The pool-wait histogram of `endpoint`, resolved once per endpoint and worker.
    pub fn pool_wait(&self, endpoint: &str) -> Histogram {
        Histogram::clone(&self.pool_wait.get_or_create(&EndpointLabels {
            endpoint: endpoint.to_owned(),
        }))
    }

    /// Adds `pool`'s counts to `endpoint`'s connection gauges for as long as it lives.
    pub fn watch_pool(&self, endpoint: &str, pool: Weak<dyn PoolGauges>) {
        self.lock_pools().push(WatchedPool {
            endpoint: endpoint.to_owned(),
            pool,
        });
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, Vec<WatchedPool>> {
        // A panic elsewhere cannot leave the list half-written: pushes and retains only.
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the connection gauges to the sum over the live pools of each endpoint.
    fn read_pools(&self) {
        let mut sums: BTreeMap<String, PoolStats> = BTreeMap::new();
        let mut pools = self.lock_pools();
        for watched in pools.iter() {
            // An endpoint whose pools are all gone reads zero rather than its last value.
            let sum = sums.entry(watched.endpoint.clone()).or_default();
            if let Some(pool) = watched.pool.upgrade() {
                let s = pool.pool_stats();
                sum.idle += s.idle;
                sum.connecting += s.connecting;
                sum.waiting += s.waiting;
            }
        }
        pools.retain(|w| w.pool.strong_count() > 0);
        drop(pools);
        for (endpoint, sum) in sums {
            for (state, n) in [("idle", sum.idle), ("connecting", sum.connecting)] {
                self.connections
                    .get_or_create(&ConnectionStateLabels {
                        endpoint: endpoint.clone(),
                        state,
                    })
                    .set(n as i64);
            }
            self.connection_waiters
                .get_or_create(&EndpointLabels { endpoint })
                .set(sum.waiting as i64);
        }
    }

    /// Shows the admission phase's counts and `limiter`'s pools on `/metrics`.
    pub fn register_limits(
        &mut self,
        limiter: Arc<dyn crate::services::Limiter>,
    ) -> Arc<LimitsMetrics> {
        let m = Arc::new(LimitsMetrics {
            admitted: Family::default(),
            refused: Family::default(),
            wait: Family::new_with_constructor(overhead_histogram as fn() -> Histogram),
            pool: Family::default(),
            instances: Gauge::default(),
            redis_errors: Counter::default(),
            limiter,
        });
        self.registry.register(
            "limits_admitted",
            "Requests the admission phase let through, by model and job type",
            m.admitted.clone(),
        );
        self.registry.register(
            "limits_refused",
            "Requests answered 429 (or 400, unknown_job_type) by the admission phase, by model and the limit that refused",
            m.refused.clone(),
        );
        self.registry.register(
            "limits_wait_seconds",
            "Time requests waited for capacity in the admission phase (admitted or refused)",
            m.wait.clone(),
        );
        self.registry.register(
            "limits_pool_slots",
            "Jobs of average size this instance's share of the model's tightest limit allows",
            m.pool.clone(),
        );
        self.registry.register(
            "limits_instances",
            "Gateway instances sharing the pools (1 without Redis)",
            m.instances.clone(),
        );
        self.registry.register(
            "limits_redis_errors",
            "Heartbeats to Redis that failed (the instance then keeps its last share; see on_redis_failure)",
            m.redis_errors.clone(),
        );
        self.limits = Some(m.clone());
        m
    }

    /// Registers the routers' series, read from `routers` at each scrape.
    pub fn register_routing(&mut self, routers: Vec<RoutedModel>) {
        let m = RoutingMetrics {
            decisions: Family::default(),
            events: Family::default(),
            stream: Family::default(),
            connected: Family::default(),
            retries: Family::default(),
            retries_refused: Family::default(),
            ejections: Family::default(),
            health_checks: Family::default(),
            ejected: Family::default(),
            index_blocks: Family::default(),
            index_bytes: Family::default(),
            tokenizer_lookups: Family::default(),
            tokenizer_cache_bytes: Family::default(),
            routers,
        };
        self.registry.register(
            "route_decisions",
            "Routing decisions by model and reason (round_robin, least_loaded, prefix_match, no_prefix_match, imbalance, session)",
            m.decisions.clone(),
        );
        self.registry.register(
            "kv_events",
            "KV events received from each engine (pod), by type",
            m.events.clone(),
        );
        self.registry.register(
            "kv_stream_events",
            "What happened on each engine's KV-event stream: decode errors, refused events, gaps, replays (and those short of what was asked, or failed), purges (engine restarts), failed connects",
            m.stream.clone(),
        );
        self.registry.register(
            "kv_connected",
            "1 while the gateway is subscribed to the engine's KV events",
            m.connected.clone(),
        );
        self.registry.register(
            "route_retries",
            "Requests sent to another endpoint after one failed them before anything reached the client, by reason (reset, status_429, status_5xx); connect failures move on without counting here",
            m.retries.clone(),
        );
        self.registry.register(
            "route_retries_refused",
            "Failed requests not retried: the request had made max_attempts, or retries had used the retry budget",
            m.retries_refused.clone(),
        );
        self.registry.register(
            "endpoint_ejections",
            "Times an endpoint was taken out of rotation after failures in a row",
            m.ejections.clone(),
        );
        self.registry.register(
            "endpoint_health_checks",
            "Active health checks of each endpoint (health_check_path's GET, else a TCP connect), passed or failed",
            m.health_checks.clone(),
        );
        self.registry.register(
            "endpoint_ejected",
            "1 while the endpoint is out of rotation",
            m.ejected.clone(),
        );
        self.registry.register(
            "prefix_index_blocks",
            "Distinct blocks in the model's prefix index",
            m.index_blocks.clone(),
        );
        self.registry.register(
            "prefix_index_bytes",
            "Memory the model's prefix index takes",
            m.index_bytes.clone(),
        );
        self.registry.register(
            "tokenizer_cache_lookups",
            "Pieces of prompts (the text between two special tokens: one message, mostly) the model's tokenizer found tokenized already (hit) or tokenized (miss)",
            m.tokenizer_lookups.clone(),
        );
        self.registry.register(
            "tokenizer_cache_bytes",
            "Memory the model's tokenizer keeps for the token ids of prompt pieces it has seen (tokenizer_cache_bytes bounds it)",
            m.tokenizer_cache_bytes.clone(),
        );
        self.routing = Some(m);
    }

    /// Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        self.read_pools();
        if let Some(limits) = &self.limits {
            limits.read();
        }
        if let Some(routing) = &self.routing {
            routing.read();
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The handles of one configured model's series, resolved now so that recording a
    /// request costs a few atomic operations: no label allocation, hashing or family lock on
    /// the request path. Creating them also exports the model's series (at zero) before its
    /// first request, which is what dashboards and `rate()` want.
    pub fn for_model(self: &Arc<Self>, model: &str) -> ModelMetrics {
        let labels = ModelLabels {
            model: model.to_owned(),
        };
        let tokens = |kind| {
            Counter::clone(&self.tokens.get_or_create(&TokenLabels {
                model: model.to_owned(),
                kind,
            }))
        };
        ModelMetrics {
            name: model.to_owned(),
            in_flight: Gauge::clone(&self.in_flight.get_or_create(&labels)),
            ok: Counter::clone(&self.requests.get_or_create(&StatusLabels {
                model: model.to_owned(),
                status: 200,
            })),
            duration: Histogram::clone(&self.duration.get_or_create(&labels)),
            overhead: Histogram::clone(&self.overhead.get_or_create(&labels)),
            ttft: Histogram::clone(&self.ttft.get_or_create(&labels)),
            input_tokens: tokens("input"),
            cached_input_tokens: tokens("cached_input"),
            output_tokens: tokens("output"),
            all: self.clone(),
        }
    }

    /// Counts one request that ended with `status`: one refused before it was in flight (bad
    /// JSON, unknown model), or one that finished with a status other than the pre-resolved 200.
    pub fn count_request(&self, model: &str, status: u16) {
        self.requests
            .get_or_create(&StatusLabels {
                model: model.to_owned(),
                status,
            })
            .inc();
    }

    pub fn upstream_error(&self, model: &str, endpoint: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                model: model.to_owned(),
                endpoint: endpoint.to_owned(),
                kind,
            })
            .inc();
    }
}

/// One configured model's metric handles (see [`GatewayMetrics::for_model`]).
pub struct ModelMetrics {
    pub name: String,
    all: Arc<GatewayMetrics>,
    in_flight: Gauge,
    /// `requests_total{status="200"}`, the status nearly every request ends with.
    ok: Counter,
    duration: Histogram,
    overhead: Histogram,
    ttft: Histogram,
    input_tokens: Counter,
    cached_input_tokens: Counter,
    output_tokens: Counter,
}

impl ModelMetrics {
    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    /// The request moved to another model (a fallback) before it was sent: it leaves this
    /// model's in-flight count without being counted as finished here.
    pub fn request_moved(&self) {
        self.in_flight.dec();
    }

    /// Records a finished request. `upstream_wait` is the part of `total` spent waiting on
    /// the upstream; the rest is the gateway's overhead.
    pub fn request_finished(&self, status: u16, total: Duration, upstream_wait: Duration) {
        self.in_flight.dec();
        if status == 200 {
            self.ok.inc();
        } else {
            self.all.count_request(&self.name, status);
        }
        self.duration.observe(total.as_secs_f64());
        self.overhead
            .observe(total.saturating_sub(upstream_wait).as_secs_f64());
    }

    pub fn first_token(&self, ttft: Duration) {
        self.ttft.observe(ttft.as_secs_f64());
    }

    pub fn usage(&self, usage: &sluice_api::Usage) {
        let cached = usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
        self.input_tokens.inc_by(usage.prompt_tokens);
        self.cached_input_tokens.inc_by(cached);
        self.output_tokens.inc_by(usage.completion_tokens);
    }

    pub fn upstream_error(&self, endpoint: &str, kind: &'static str) {
        self.all.upstream_error(&self.name, endpoint, kind);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct FixedPool(PoolStats);

    impl PoolGauges for FixedPool {
        fn pool_stats(&self) -> PoolStats {
            self.0
        }
    }

    fn pool(idle: usize, connecting: usize, waiting: usize) -> Arc<dyn PoolGauges> {
        Arc::new(FixedPool(PoolStats {
            opened: 0,
            idle,
            connecting,
            waiting,
        }))
    }

    /// The value of the one line of `text` that starts with `series `.
    fn value(text: &str, series: &str) -> f64 {
        let prefix = format!("{series} ");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(lines.len(), 1, "{series} in\n{text}");
        lines[0][prefix.len()..].trim().parse().unwrap()
    }

    #[test]
    fn connection_gauges_sum_the_live_pools_of_each_endpoint() {
        let m = GatewayMetrics::new();
        // Two workers' pools of endpoint a, one of endpoint b.
        let (a1, a2, b) = (pool(3, 1, 0), pool(2, 0, 4), pool(1, 0, 0));
        for (label, p) in [("a", &a1), ("a", &a2), ("b", &b)] {
            m.watch_pool(label, Arc::downgrade(p));
        }
        m.connections_opened("a").inc_by(7);

        let text = m.encode();
        let idle =
            |e: &str| format!("sluice_upstream_connections{{endpoint=\"{e}\",state=\"idle\"}}");
        let connecting = |e: &str| {
            format!("sluice_upstream_connections{{endpoint=\"{e}\",state=\"connecting\"}}")
        };
        let waiters = |e: &str| format!("sluice_upstream_connection_waiters{{endpoint=\"{e}\"}}");
        assert_eq!(value(&text, &idle("a")), 5.0);
        assert_eq!(value(&text, &connecting("a")), 1.0);
        assert_eq!(value(&text, &waiters("a")), 4.0);
        assert_eq!(value(&text, &idle("b")), 1.0);
        assert_eq!(
            value(
                &text,
                "sluice_upstream_connections_opened_total{endpoint=\"a\"}"
            ),
            7.0
        );

        // A pool that is gone no longer counts; an endpoint with none left reads zero.
        drop(a2);
        drop(b);
        let text = m.encode();
        assert_eq!(value(&text, &idle("a")), 3.0);
        assert_eq!(value(&text, &waiters("a")), 0.0);
        assert_eq!(value(&text, &idle("b")), 0.0);
        assert_eq!(m.lock_pools().len(), 1);
        drop(a1);
    }
}
