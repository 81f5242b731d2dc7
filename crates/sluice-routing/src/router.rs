//! [`ModelRouter`]: orders one model's endpoints for a request.
//!
//! The policy ranks the endpoints; session affinity, when the request names a session and
//! the model keeps them, puts the session's endpoint first while its pin is fresh. Every
//! decision says why ([`Reason`]) and, for prefix-aware routing, how many of the prompt's
//! blocks the chosen endpoint holds.
//!
//! Policies:
//! - `round_robin`: each request starts at the next endpoint.
//! - `least_loaded`: fewest requests in flight, then fewest prompt tokens waiting for
//!   prefill; ties go round robin.
//! - `prefix_aware`: the lowest cost, `prefill_weight × (blocks of the prompt the endpoint
//!   does not hold + blocks of prefill queued on it) + streams it is decoding`: a cached
//!   prefix is worth its prefill, a busy engine costs what it is already doing. Guarded: when
//!   the cheapest endpoint has more than `imbalance × (least in flight + 1)` requests in
//!   flight, the least loaded takes the request instead, so one hot prefix cannot pile onto
//!   one engine.
//!
//! Endpoints come and go at runtime ([`ModelRouter::add_endpoint`],
//! [`ModelRouter::remove_endpoint`]): the router's [`EndpointTable`] is replaced whole, and
//! a decision keeps the table it was made from, so the positions in its order stay valid for
//! the whole request. Endpoints keep an [`EndpointId`] across tables (what a session pin and
//! a gateway's connection pools follow).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::blocks::{BlockHasher, OwnHash};
use crate::health::{EndpointHealth, HealthSettings, Outcome, Standing};
use crate::health_check::{CheckRecord, HealthCheck};
use crate::kv_subscriber::{KvSource, KvSubscriber, SubscriberSettings, SubscriberStats};
use crate::load::{EndpointLoad, LoadGuard, LoadSnapshot};
use crate::prefix_index::{PodId, PodSummary, PrefixIndex};
use crate::retry_budget::{RetryBudget, RetrySettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastLoaded,
    PrefixAware,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastLoaded => "least_loaded",
            Policy::PrefixAware => "prefix_aware",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingSettings {
    pub policy: Policy,
    /// The engines' KV block size, in tokens (prefix-aware routing).
    pub block_size: usize,
    /// See the module docs.
    pub imbalance: f64,
    pub prefill_weight: f64,
    /// How long a prompt routed to an engine that publishes KV events counts as cached
    /// there before the engine's own events say so.
    pub routed_ttl: Duration,
    /// How long a prompt routed to an engine that publishes no events counts as cached
    /// there: routing is then all the index knows.
    pub approximate_ttl: Duration,
    /// Session affinity (`x-session-id`) and how long a pin lasts; `None`: off.
    pub session_ttl: Option<Duration>,
    /// Ejection, cooldown and return of endpoints that fail.
    pub health: HealthSettings,
    /// How many attempts a request may make, and the retry budget.
    pub retry: RetrySettings,
    /// How often each endpoint's health check runs; `None`: never.
    pub health_check_interval: Option<Duration>,
    /// How long one health check may take before it counts as failed.
    pub health_check_timeout: Duration,
    /// Prefix-aware: an endpoint sent more than `max_share` × the mean of the requests lately
    /// (decaying over about ten seconds) is first only when no other endpoint is under it, so
    /// a prefix every request shares (a common system prompt) cannot draw all the traffic
    /// to the engine that cached it first.
    pub max_share: f64,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            policy: Policy::RoundRobin,
            block_size: 16,
            imbalance: 2.0,
            prefill_weight: 1.0,
            routed_ttl: Duration::from_secs(2),
            approximate_ttl: Duration::from_secs(300),
            session_ttl: None,
            health: HealthSettings::default(),
            retry: RetrySettings::default(),
            health_check_interval: Some(Duration::from_secs(5)),
            health_check_timeout: Duration::from_secs(1),
            max_share: 1.3,
        }
    }
}

/// Why the first endpoint of an order is first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RoundRobin,
    LeastLoaded,
    /// Prefix-aware: the cheapest, holding part of the prompt.
    PrefixMatch,
    /// Prefix-aware: no endpoint holds any of the prompt; the least busy.
    NoPrefixMatch,
    /// Prefix-aware: the cheapest was too busy (see the module docs).
    Imbalance,
    /// The session's pinned endpoint.
    Session,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::RoundRobin,
        Reason::LeastLoaded,
        Reason::PrefixMatch,
        Reason::NoPrefixMatch,
        Reason::Imbalance,
        Reason::Session,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RoundRobin => "round_robin",
            Reason::LeastLoaded => "least_loaded",
            Reason::PrefixMatch => "prefix_match",
            Reason::NoPrefixMatch => "no_prefix_match",
            Reason::Imbalance => "imbalance",
            Reason::Session => "session",
        }
    }
}

/// Endpoint indices (into the model's endpoint list) in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOrder {
    /// `start`, `start + 1`, ... wrapping around all `len` endpoints: round robin's order,
    /// with no allocation.
    Rotation { start: usize, len: usize },
    /// An explicit order (a policy that ranks endpoints).
    Ranked(Vec<usize>),
}

impl AttemptOrder {
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let (rotation, ranked) = match self {
            AttemptOrder::Rotation { start, len } => (Some((*start, *len)), &[][..]),
            AttemptOrder::Ranked(order) => (None, &order[..]),
        };
        let rotated = rotation
            .into_iter()
            .flat_map(|(start, len)| (0..len).map(move |i| (start + i) % len));
        rotated.chain(ranked.iter().copied())
    }

    /// The endpoint tried first, if any.
    pub fn first(&self) -> Option<usize> {
        self.iter().next()
    }
}

/// What a router may read of a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteQuery<'a> {
    /// `x-session-id`, when the request has one.
    pub session: Option<&'a str>,
    /// The prompt's tokens, as the engines tokenize it (prefix-aware routing only).
    pub prompt: Option<&'a [u32]>,
}

/// A route: the order, why, and what sending needs to record.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    pub order: AttemptOrder,
    pub reason: Reason,
    /// Blocks of the prompt the first endpoint holds (prefix-aware routing).
    pub matched_blocks: u32,
    /// The prompt's length in tokens, when the router was given it.
    pub prompt_tokens: u64,
    /// The endpoints as they were when the decision was made: `order` indexes them.
    pub table: Arc<EndpointTable>,
    /// The prompt's block names, recorded under the endpoint it is sent to.
    blocks: Vec<OwnHash>,
    session: Option<String>,
}

/// Names an endpoint for as long as it is configured (its position changes as others come
/// and go; a removed and re-added endpoint is a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u64);

/// The model's endpoints at one moment.
pub struct EndpointTable {
    /// Raised by every change: a table with a higher version replaced this one.
    pub version: u64,
    endpoints: Vec<Arc<RoutedEndpoint>>,
}

impl EndpointTable {
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn id(&self, endpoint: usize) -> Option<EndpointId> {
        self.endpoints.get(endpoint).map(|e| e.id)
    }

    pub fn label(&self, endpoint: usize) -> Option<&str> {
        self.endpoints.get(endpoint).map(|e| e.label.as_str())
    }

    /// What the caller attached to the endpoint at `endpoint` ([`EndpointSpec::target`]).
    pub fn target(&self, endpoint: usize) -> Option<&EndpointTarget> {
        self.endpoints.get(endpoint)?.target.as_ref()
    }

    /// (id, label) of each endpoint, in position order.
    pub fn entries(&self) -> impl Iterator<Item = (EndpointId, &str)> {
        self.endpoints.iter().map(|e| (e.id, e.label.as_str()))
    }

    fn position(&self, id: EndpointId) -> Option<usize> {
        self.endpoints.iter().position(|e| e.id == id)
    }
}

impl std::fmt::Debug for EndpointTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTable")
            .field("version", &self.version)
            .field(
                "labels",
                &self.entries().map(|(_, l)| l).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// An endpoint change the router refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointChangeError {
    #[error(
        "the model has an endpoint named `{0}` already; remove it first or choose another name"
    )]
    Exists(String),
    #[error("the model has no endpoint named `{0}`")]
    NotFound(String),
}

/// What a router's caller needs to reach an endpoint (the gateway's resolved endpoint);
/// carried in the table beside it, never read by the router.
pub type EndpointTarget = Arc<dyn std::any::Any + Send + Sync>;

/// One endpoint of the model, as configured.
#[derive(Clone)]
pub struct EndpointSpec {
    pub label: String,
    pub target: Option<EndpointTarget>,
    /// Where its engine publishes KV events, if it does.
    pub kv: Option<KvSource>,
    /// Its active health check, run every `health_check_interval`.
    pub probe: Option<Arc<dyn HealthCheck>>,
}

struct RoutedEndpoint {
    id: EndpointId,
    label: String,
    target: Option<EndpointTarget>,
    load: Arc<EndpointLoad>,
    pod: Option<PodId>,
    kv: Option<KvSource>,
    probe: Option<Arc<dyn HealthCheck>>,
    checks: Arc<CheckRecord>,
    health: EndpointHealth,
    /// Requests sent lately, decaying (for `max_share`).
    recent: Mutex<Recent>,
}

/// A count that halves every `RECENT_HALF_LIFE_MS`.
#[derive(Debug, Default, Clone, Copy)]
struct Recent {
    count: f64,
    at_ms: u64,
}

const RECENT_HALF_LIFE_MS: f64 = 5_000.0;

impl Recent {
    fn at(self, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.count * (0.5f64).powf(elapsed / RECENT_HALF_LIFE_MS)
    }
}

/// Why a failed attempt is tried again elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The connection was reset, or closed before an answer's head.
    Reset,
    Status429,
    Status5xx,
}

impl RetryReason {
    pub const ALL: [RetryReason; 3] = [
        RetryReason::Reset,
        RetryReason::Status429,
        RetryReason::Status5xx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Reset => "reset",
            RetryReason::Status429 => "status_429",
            RetryReason::Status5xx => "status_5xx",
        }
    }
}

/// Retries since start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryCounts {
    pub made: Vec<(RetryReason, u64)>,
    pub refused_attempts: u64,
    pub refused_budget: u64,
}

/// Why a failed attempt is not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRefused {
    /// The request made `max_attempts` already.
    Attempts,
    /// Retries already add their share of the traffic.
    Budget,
}

#[derive(Clone, Copy)]
struct Pin {
    endpoint: EndpointId,
    at_ms: u64,
}

/// At most this many sessions are pinned; beyond, new sessions go unpinned until expired
/// pins are swept (a bound on memory, whatever the clients send).
const MAX_SESSIONS: usize = 100_000;

/// The longest `x-session-id` kept.
pub const MAX_SESSION_ID_BYTES: usize = 256;

pub struct ModelRouter {
    settings: RoutingSettings,
    /// Read on every lookup, so a change applies to pins already made.
    session_ttl_ms: AtomicU64,
    /// Replaced whole by every change; read (an `Arc` clone) once per request.
    table: parking_lot::RwLock<Arc<EndpointTable>>,
    next_id: AtomicU64,
    /// Where `start` put the background tasks, for endpoints added later.
    started: Mutex<Option<(tokio::runtime::Handle, SubscriberSettings)>>,
    index: Option<Arc<PrefixIndex>>,
    sessions: Mutex<HashMap<String, Pin>>,
    next: AtomicUsize,
    decisions: [AtomicU64; 6],
    subscribers: Mutex<Vec<(EndpointId, KvSubscriber)>>,
    budget: RetryBudget,
    /// Retries made, by reason; retries refused (attempts, budget).
    retries: [AtomicU64; 3],
    refused: [AtomicU64; 2],
    epoch: Instant,
}

/// One endpoint as the admin view shows it.
#[derive(Debug, Clone)]
pub struct EndpointView {
    pub id: EndpointId,
    pub label: String,
    pub load: LoadSnapshot,
    pub index: Option<PodSummary>,
    pub events: Option<Arc<SubscriberStats>>,
    pub standing: Standing,
    pub ejections: u64,
    /// What its health check checks (`None`: not checked), and what the checks found.
    pub health_check: Option<String>,
    pub checks: Arc<CheckRecord>,
}

impl ModelRouter {
    pub fn new(settings: RoutingSettings, endpoints: Vec<EndpointSpec>) -> ModelRouter {
        let index = (settings.policy == Policy::PrefixAware)
            .then(|| Arc::new(PrefixIndex::new(BlockHasher::new(settings.block_size))));
        let router = ModelRouter {
            session_ttl_ms: AtomicU64::new(
                settings.session_ttl.map_or(0, |d| d.as_millis() as u64),
            ),
            settings,
            table: parking_lot::RwLock::new(Arc::new(EndpointTable {
                version: 0,
                endpoints: Vec::new(),
            })),
            next_id: AtomicU64::new(0),
            started: Mutex::new(None),
            index,
            sessions: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            decisions: Default::default(),
            subscribers: Mutex::new(Vec::new()),
            budget: RetryBudget::new(settings.retry),
            retries: Default::default(),
            refused: Default::default(),
            epoch: Instant::now(),
        };
        let endpoints: Vec<Arc<RoutedEndpoint>> =
            endpoints.into_iter().map(|e| router.routed(e)).collect();
        *router.table.write() = Arc::new(EndpointTable {
            version: 0,
            endpoints,
        });
        router
    }

    fn routed(&self, e: EndpointSpec) -> Arc<RoutedEndpoint> {
        Arc::new(RoutedEndpoint {
            id: EndpointId(self.next_id.fetch_add(1, Ordering::Relaxed)),
            pod: self.index.as_ref().map(|ix| ix.pod(&e.label)),
            label: e.label,
            target: e.target,
            load: Arc::new(EndpointLoad::default()),
            kv: e.kv,
            probe: e.probe,
            checks: Arc::default(),
            health: EndpointHealth::default(),
            recent: Mutex::new(Recent::default()),
        })
    }

    /// The endpoints now.
    pub fn table(&self) -> Arc<EndpointTable> {
        self.table.read().clone()
    }

    /// Starts the KV-event subscribers, the probes and the sweeper of expired routed blocks
    /// and session pins, on the current tokio runtime, for as long as the router lives
    /// (an endpoint's own tasks for as long as it is in the table).
    pub fn start(self: &Arc<Self>, subscriber: SubscriberSettings) {
        let handle = tokio::runtime::Handle::current();
        *self.started.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((handle.clone(), subscriber));
        for e in &self.table().endpoints {
            self.start_endpoint(e, &handle, subscriber);
        }
        let weak: Weak<ModelRouter> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(router) = weak.upgrade() else { return };
                router.sweep(router.now_ms());
            }
        });
    }

    fn start_endpoint(
        self: &Arc<Self>,
        e: &Arc<RoutedEndpoint>,
        handle: &tokio::runtime::Handle,
        subscriber: SubscriberSettings,
    ) {
        let _on = handle.enter();
        if let (Some(index), Some(kv), Some(pod)) = (&self.index, &e.kv, e.pod) {
            let follower = KvSubscriber::spawn(index.clone(), pod, kv.clone(), subscriber);
            self.subscribers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((e.id, follower));
        }
        if let (Some(every), Some(check)) = (self.settings.health_check_interval, &e.probe) {
            let (router, endpoint) = (Arc::downgrade(self), Arc::downgrade(e));
            handle.spawn(probe(router, endpoint, check.clone(), every));
        }
    }

    /// Adds an endpoint (a pod came up). Its KV events are followed and it is probed from
    /// now on if the router was started.
    pub fn add_endpoint(
        self: &Arc<Self>,
        spec: EndpointSpec,
    ) -> Result<EndpointId, EndpointChangeError> {
        let added = {
            let mut table = self.table.write();
            if table.endpoints.iter().any(|e| e.label == spec.label) {
                return Err(EndpointChangeError::Exists(spec.label));
            }
            let added = self.routed(spec);
            let mut endpoints = table.endpoints.clone();
            endpoints.push(added.clone());
            *table = Arc::new(EndpointTable {
                version: table.version + 1,
                endpoints,
            });
            added
        };
        let started = self
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((handle, subscriber)) = started {
            self.start_endpoint(&added, &handle, subscriber);
        }
        Ok(added.id)
    }

    /// Removes the endpoint named `label` (a pod went away): no new request goes to it,
    /// requests already there finish, its events are no longer followed and what the index
    /// held for it is dropped; sessions pinned to it are pinned again elsewhere.
    pub fn remove_endpoint(&self, label: &str) -> Result<EndpointId, EndpointChangeError> {
        let removed = {
            let mut table = self.table.write();
            let Some(at) = table.endpoints.iter().position(|e| e.label == label) else {
                return Err(EndpointChangeError::NotFound(label.to_owned()));
            };
            let mut endpoints = table.endpoints.clone();
            let removed = endpoints.remove(at);
            *table = Arc::new(EndpointTable {
                version: table.version + 1,
                endpoints,
            });
            removed
        };
        // Dropping the subscriber stops it at its next await; retiring the pod refuses
        // whatever it still applies before then.
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _)| *id != removed.id);
        if let (Some(ix), Some(pod)) = (&self.index, removed.pod) {
            ix.retire(pod);
        }
        Ok(removed.id)
    }

    pub fn settings(&self) -> &RoutingSettings {
        &self.settings
    }

    /// The router's clock (ms since it was made); what `route` and `sent` take.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether `route` reads a session id (affinity is on).
    pub fn keeps_sessions(&self) -> bool {
        self.session_ttl_ms.load(Ordering::Relaxed) > 0
    }

    /// Whether `route` wants the prompt's tokens.
    pub fn needs_prompt(&self) -> bool {
        self.index.is_some()
    }

    /// Changes how long session pins last (`None` or zero: affinity off), for pins already
    /// made too.
    pub fn set_session_ttl(&self, ttl: Option<Duration>) {
        self.session_ttl_ms
            .store(ttl.map_or(0, |d| d.as_millis() as u64), Ordering::Relaxed);
    }

    pub fn session_ttl(&self) -> Option<Duration> {
        match self.session_ttl_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Orders the endpoints for one request.
    pub fn route(&self, q: &RouteQuery<'_>, now_ms: u64) -> RouteDecision {
        let table = self.table();
        let endpoints = &table.endpoints[..];
        let n = endpoints.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        let blocks = match (&self.index, q.prompt) {
            (Some(ix), Some(prompt)) => ix.hasher().chain(None, prompt),
            _ => Vec::new(),
        };
        // Per endpoint, prefix-aware routing only (no allocation for the other policies).
        let mut matched = Vec::new();
        let (mut order, mut reason) = match self.settings.policy {
            Policy::RoundRobin => (AttemptOrder::Rotation { start, len: n }, Reason::RoundRobin),
            Policy::LeastLoaded => (
                AttemptOrder::Ranked(least_loaded(endpoints, start)),
                Reason::LeastLoaded,
            ),
            Policy::PrefixAware => {
                let pods: Vec<PodId> = endpoints.iter().filter_map(|e| e.pod).collect();
                matched = match &self.index {
                    Some(ix) if pods.len() == n && !blocks.is_empty() => {
                        ix.match_prefix(&blocks, &pods, now_ms)
                    }
                    _ => vec![0; n],
                };
                self.prefix_order(endpoints, start, &blocks, &matched, now_ms)
            }
        };
        self.budget.deposit(now_ms);
        // Unwell endpoints go behind the well ones (order kept within each group).
        // On the stack for up to 8 endpoints: no allocation on the request path.
        let standings: smallvec::SmallVec<[Standing; 8]> = endpoints
            .iter()
            .map(|e| e.health.standing(&self.settings.health, now_ms))
            .collect();
        let group = |i: usize| match standings.get(i) {
            Some(Standing::Healthy) | None => 0,
            // A returning endpoint keeps its place for a growing share of requests.
            Some(Standing::Returning { per_mille }) => {
                if (start as u64 * 7919 + i as u64 * 104_729) % 1000 < *per_mille {
                    0
                } else {
                    1
                }
            }
            Some(Standing::Cooling) => 1,
            Some(Standing::Ejected) => 2,
        };
        if standings.iter().any(|s| *s != Standing::Healthy) {
            let mut ranked: Vec<usize> = order.iter().collect();
            ranked.sort_by_key(|&i| group(i));
            order = AttemptOrder::Ranked(ranked);
        }
        let session = q.session.filter(|s| {
            !s.is_empty() && s.len() <= MAX_SESSION_ID_BYTES && self.session_ttl().is_some()
        });
        let pinned = session
            .and_then(|s| self.pinned(s, &table, now_ms))
            .filter(|&i| group(i) == 0);
        if let Some(pinned) = pinned {
            let mut ranked: Vec<usize> = order.iter().filter(|&i| i != pinned).collect();
            ranked.insert(0, pinned);
            order = AttemptOrder::Ranked(ranked);
            reason = Reason::Session;
        }
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.decisions[i].fetch_add(1, Ordering::Relaxed);
        }
        RouteDecision {
            prompt_tokens: q.prompt.map_or(0, |p| p.len() as u64),
            matched_blocks: order
                .first()
                .and_then(|i| matched.get(i).copied())
                .unwrap_or(0),
            order,
            reason,
            table,
            blocks,
            session: session.map(str::to_owned),
        }
    }

    fn prefix_order(
        &self,
        endpoints: &[Arc<RoutedEndpoint>],
        start: usize,
        blocks: &[OwnHash],
        matched: &[u32],
        now_ms: u64,
    ) -> (AttemptOrder, Reason) {
        let n = endpoints.len();
        let loads: Vec<LoadSnapshot> = endpoints.iter().map(|e| e.load.snapshot()).collect();
        let w = self.settings.prefill_weight;
        let bs = self.settings.block_size.max(1) as f64;
        let cost = |i: usize| {
            let uncached = blocks.len() as f64 - matched[i] as f64;
            w * (uncached + loads[i].prefill_tokens as f64 / bs) + loads[i].decoding as f64
        };
        let costs: Vec<f64> = (0..n).map(cost).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            costs[a]
                .total_cmp(&costs[b])
                .then(loads[a].in_flight.cmp(&loads[b].in_flight))
                .then(((a + n - start) % n).cmp(&((b + n - start) % n)))
        });
        let Some(&best) = order.first() else {
            return (AttemptOrder::Ranked(order), Reason::NoPrefixMatch);
        };
        let least = loads.iter().map(|l| l.in_flight).min().unwrap_or(0);
        if loads[best].in_flight as f64 > self.settings.imbalance * (least + 1) as f64 {
            return (
                AttemptOrder::Ranked(least_loaded(endpoints, start)),
                Reason::Imbalance,
            );
        }
        // Over its share of the recent traffic: the cheapest under it goes first instead.
        let recent: Vec<f64> = endpoints
            .iter()
            .map(|e| {
                e.recent
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .at(now_ms)
            })
            .collect();
        let mean = recent.iter().sum::<f64>() / n as f64;
        let over = |i: usize| mean >= 1.0 && recent[i] > self.settings.max_share * mean;
        if over(best) && order.iter().any(|&i| !over(i)) {
            order.sort_by_key(|&i| over(i));
            return (AttemptOrder::Ranked(order), Reason::Imbalance);
        }
        let reason = if matched[best] > 0 {
            Reason::PrefixMatch
        } else {
            Reason::NoPrefixMatch
        };
        (AttemptOrder::Ranked(order), reason)
    }

    /// The position in `table` of the session's pinned endpoint, while the pin is fresh and
    /// the endpoint still there.
    fn pinned(&self, session: &str, table: &EndpointTable, now_ms: u64) -> Option<usize> {
        let ttl = self.session_ttl_ms.load(Ordering::Relaxed);
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let pin = sessions.get(session)?;
        if ttl == 0 || now_ms.saturating_sub(pin.at_ms) >= ttl {
            return None;
        }
        table.position(pin.endpoint)
    }

    /// The request is being sent to `endpoint`: its prompt counts as cached there for a
    /// while, its session is pinned there, and its load is counted until the returned
    /// guard drops.
    pub fn sent(
        &self,
        endpoint: usize,
        decision: &RouteDecision,
        now_ms: u64,
    ) -> Option<LoadGuard> {
        let e = decision.table.endpoints.get(endpoint)?;
        if let (Some(ix), Some(pod)) = (&self.index, e.pod) {
            if !decision.blocks.is_empty() {
                let ttl = if e.kv.is_some() {
                    self.settings.routed_ttl
                } else {
                    self.settings.approximate_ttl
                };
                ix.insert_routed(pod, &decision.blocks, now_ms + ttl.as_millis() as u64);
            }
        }
        {
            let mut recent = e.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let count = recent.at(now_ms) + 1.0;
            *recent = Recent {
                count,
                at_ms: now_ms.max(recent.at_ms),
            };
        }
        if let Some(session) = &decision.session {
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            if sessions.len() < MAX_SESSIONS || sessions.contains_key(session) {
                sessions.insert(
                    session.clone(),
                    Pin {
                        endpoint: e.id,
                        at_ms: now_ms,
                    },
                );
            }
        }
        Some(e.load.start(decision.prompt_tokens))
    }

    /// What an attempt on `decision`'s endpoint at position `endpoint` met.
    pub fn report(&self, decision: &RouteDecision, endpoint: usize, outcome: Outcome, now_ms: u64) {
        if let Some(e) = decision.table.endpoints.get(endpoint) {
            e.health.report(outcome, &self.settings.health, now_ms);
        }
    }

    /// May a request whose `attempts` attempts all failed (the last for `reason`) try the
    /// next endpoint? Counted either way.
    pub fn retry(
        &self,
        attempts: u32,
        reason: RetryReason,
        now_ms: u64,
    ) -> Result<(), RetryRefused> {
        let refused = if attempts >= self.settings.retry.max_attempts {
            Some(RetryRefused::Attempts)
        } else if !self.budget.withdraw(now_ms) {
            Some(RetryRefused::Budget)
        } else {
            None
        };
        match refused {
            Some(r) => {
                self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
                Err(r)
            }
            None => {
                if let Some(i) = RetryReason::ALL.iter().position(|x| *x == reason) {
                    self.retries[i].fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }

    /// Retries made by reason, and refused.
    pub fn retries(&self) -> RetryCounts {
        RetryCounts {
            made: RetryReason::ALL
                .iter()
                .zip(&self.retries)
                .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
                .collect(),
            refused_attempts: self.refused[0].load(Ordering::Relaxed),
            refused_budget: self.refused[1].load(Ordering::Relaxed),
        }
    }

    /// Forgets expired routed blocks and session pins.
    pub fn sweep(&self, now_ms: u64) {
        if let Some(ix) = &self.index {
            ix.sweep(now_ms);
        }
        let ttl = self.session_ttl_ms.load(Ordering::Relaxed);
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, pin| ttl > 0 && now_ms.saturating_sub(pin.at_ms) < ttl);
    }

    /// Decisions made so far, by reason.
    pub fn decisions(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .zip(&self.decisions)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn endpoints(&self) -> Vec<EndpointView> {
        let pods = self
            .index
            .as_ref()
            .map(|ix| ix.summary())
            .unwrap_or_default();
        let subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.table()
            .endpoints
            .iter()
            .map(|e| EndpointView {
                id: e.id,
                label: e.label.clone(),
                load: e.load.snapshot(),
                index: pods.iter().find(|p| p.name == e.label).cloned(),
                events: subs
                    .iter()
                    .find(|(id, _)| *id == e.id)
                    .map(|(_, s)| s.stats.clone()),
                standing: e.health.standing(&self.settings.health, self.now_ms()),
                ejections: e.health.ejections_total.load(Ordering::Relaxed),
                health_check: e
                    .probe
                    .as_ref()
                    .filter(|_| self.settings.health_check_interval.is_some())
                    .map(|p| p.describe()),
                checks: e.checks.clone(),
            })
            .collect()
    }

    /// The prefix index (prefix-aware routing only): its size, for metrics.
    pub fn index(&self) -> Option<&Arc<PrefixIndex>> {
        self.index.as_ref()
    }
}

/// Endpoints in the order of their loads: fewest in flight, then fewest prompt tokens
/// awaiting prefill; ties round robin from `start`.
fn least_loaded(endpoints: &[Arc<RoutedEndpoint>], start: usize) -> Vec<usize> {
    let n = endpoints.len();
    let loads: Vec<LoadSnapshot> = endpoints.iter().map(|e| e.load.snapshot()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| {
        (
            loads[i].in_flight,
            loads[i].prefill_tokens,
            (i + n - start) % n,
        )
    });
    order
}

/// Active health checks of one endpoint: its check every `every`, for as long as the
/// endpoint is in the router's table. A check that fails or does not finish within
/// `health_check_timeout` counts as a failure.
async fn probe(
    router: Weak<ModelRouter>,
    endpoint: Weak<RoutedEndpoint>,
    check: Arc<dyn HealthCheck>,
    every: Duration,
) {
    // The first check one interval after start: requests meet the endpoints first.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Some(limit) = router.upgrade().map(|r| r.settings.health_check_timeout) else {
        return;
    };
    loop {
        tick.tick().await;
        let result = match tokio::time::timeout(limit, check.check()).await {
            Ok(result) => result,
            Err(_) => Err(format!("{}: no answer within {limit:?}", check.describe())),
        };
        let (Some(router), Some(endpoint)) = (router.upgrade(), endpoint.upgrade()) else {
            return;
        };
        if router.table().position(endpoint.id).is_none() {
            return;
        }
        if let Err(why) = &result {
            tracing::debug!(endpoint = %endpoint.label, %why, "health check failed");
        }
        endpoint.checks.record(&result);
        let outcome = match result {
            Ok(()) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        endpoint
            .health
            .report(outcome, &router.settings.health, router.now_ms());
    }
}

#[cfg(test)]
mod tests;
