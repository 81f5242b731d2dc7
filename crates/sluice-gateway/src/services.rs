//! The services the request path consults, each behind a small trait.
//!
//! The gateway picks an implementation of each from its config at startup (in-process by
//! default, Redis-backed when several instances share state) and hands it to the path in
//! [`Services`](crate::state::Services); the phases never see which one it is. A slot left
//! empty turns its phase into a branch on `None`: a gateway without a cache pays nothing for
//! the cache phase.
//!
//! The contracts every implementation keeps, because the hot path relies on them:
//! - [`KeyStore::authenticate`] never does I/O: keys are held in memory, revocations pushed
//!   or polled in the background. It runs on the request head, before the body is read.
//! - [`CacheStore::lookup`] and [`Limiter::admit`] may await I/O and return boxed futures:
//!   the box is paid only by a configured phase, and it keeps the request's own future small
//!   (see `chat` on why that matters).
//! - [`CacheStore::store`] and [`AuditSink::record`] never block the request: they queue.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::auth::{Scope, ScopeSet, GLOBAL_TENANT};

/// A future a service returns when it may await I/O.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who is calling: the anonymous tenant while no key store is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    Key(Arc<KeyPrincipal>),
}

/// What an API key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrincipal {
    pub tenant: String,
    /// Who or what uses the key (its name unless given).
    pub subject: String,
    /// The key's own name (never the secret): audit and metrics name the caller by it.
    pub key_name: String,
    pub scopes: ScopeSet,
    /// Models the key may use; empty means every configured model.
    pub allowed_models: Vec<String>,
    /// The key's own rate limits (over every model), enforced by the admission phase.
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

impl Principal {
    /// The tenant every request belongs to when auth is off.
    pub const ANONYMOUS_TENANT: &'static str = "anonymous";

    pub fn tenant(&self) -> &str {
        match self {
            Principal::Anonymous => Self::ANONYMOUS_TENANT,
            Principal::Key(k) => &k.tenant,
        }
    }

    /// Whether the caller may use a route that needs `scope`. The anonymous caller (auth
    /// off) may do everything but administer keys, which do not exist without auth.
    pub fn has(&self, scope: Scope) -> bool {
        match self {
            Principal::Anonymous => scope != Scope::Admin,
            Principal::Key(k) => k.scopes.contains(scope),
        }
    }

    /// The tenant an admin key administers: its own, or `None` (every tenant) for a key of
    /// the global tenant.
    pub fn administered_tenant(&self) -> Option<&str> {
        match self.tenant() {
            GLOBAL_TENANT => None,
            t => Some(t),
        }
    }

    pub fn may_use(&self, model: &str) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::Key(k) => {
                k.allowed_models.is_empty() || k.allowed_models.iter().any(|m| m == model)
            }
        }
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` field.
    Missing,
    /// A token no key matches (or a revoked one: the client is told the same).
    Invalid,
    /// A key past its expiry.
    Expired,
}

/// Turns a bearer token into the principal it stands for.
pub trait KeyStore: Send + Sync {
    /// `token` is the value after `Bearer `, or `None` when the request carried none.
    fn authenticate(&self, token: Option<&[u8]>) -> Result<Principal, AuthError>;
}

/// What a cache is asked about: the key (tenant, model and canonical request, derived by the
/// cache-lookup phase) and the oldest entry the request accepts.
#[derive(Debug, Clone, Copy)]
pub struct CacheQuery<'a> {
    pub key: &'a sluice_cache::CacheKey,
    pub max_age: Option<Duration>,
}

pub trait CacheStore: Send + Sync {
    /// The entry under the key, if one young enough is stored. A store that fails answers
    /// `None` (a miss) and counts the fault: a cache never fails a request.
    fn lookup<'a>(
        &'a self,
        query: CacheQuery<'a>,
    ) -> BoxFuture<'a, Option<Arc<sluice_cache::Entry>>>;
    /// Keeps `entry` under `key`; never waits for the store.
    fn store(&self, key: sluice_cache::CacheKey, entry: Arc<sluice_cache::Entry>);
    /// The key of a chat request `body` from `tenant` for `model` (a store may remember
    /// the keys of bodies it has seen).
    fn key(
        &self,
        tenant: &str,
        model: &str,
        body: &[u8],
    ) -> Result<sluice_cache::CacheKey, sluice_cache::KeyError> {
        sluice_cache::CacheKey::derive(tenant, model, sluice_cache::CHAT_COMPLETIONS, body)
    }
    /// Where identical misses meet, so that one goes upstream for all (none: every miss
    /// goes upstream).
    fn flights(&self) -> Option<&Arc<sluice_cache::SingleFlight>> {
        None
    }
    /// What the store counts, for `/metrics`.
    fn counters(&self) -> Option<CacheStoreCounters> {
        None
    }
    /// What the store holds, of `tenant` or of all (the admin view). May block: called off
    /// the workers' event loops.
    fn stats(&self, _tenant: Option<&str>) -> Result<CacheStats, String> {
        Err("this cache store keeps no statistics".into())
    }
    /// Drops what `purge` matches; returns how many. May block, as `stats`.
    fn purge(&self, _purge: &sluice_cache::Purge) -> Result<u64, String> {
        Err("this cache store cannot purge".into())
    }
}

/// What a cache store holds, for the admin view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    /// The memory front, all tenants together.
    pub memory_entries: u64,
    pub memory_bytes: u64,
}

/// What a cache store counts: `sluice_cache_writes_total`, `sluice_cache_store_errors_total`.
#[derive(Debug, Clone, Default)]
pub struct CacheStoreCounters {
    pub writes: prometheus_client::metrics::counter::Counter,
    pub errors: prometheus_client::metrics::counter::Counter,
}

/// What a request asks of the model's capacity.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    pub tenant: &'a str,
    pub model: &'a str,
    /// `x-sluice-job-type`, when the request names one.
    pub job_type: Option<&'a str>,
    /// Prompt tokens, as estimated from the messages.
    pub prompt_tokens: u64,
    /// The most the answer may use (`max_tokens` or `max_completion_tokens`, times `n`);
    /// `None` when the request sets no cap.
    pub output_tokens: Option<u64>,
    /// Wait at most this long for capacity, instead of the job type's `max_wait` (a model
    /// with fallbacks after it waits for nothing).
    pub max_wait: Option<Duration>,
    /// Whether `model` is a fallback for the one the client named.
    pub fallback: bool,
    /// The caller's API key, when it has limits of its own.
    pub key: Option<KeyLimits<'a>>,
}

/// An API key's own limits, counted over every model it uses.
#[derive(Debug, Clone, Copy)]
pub struct KeyLimits<'a> {
    pub name: &'a str,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// What a finished request is charged against the limits, decided once when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// What the upstream reported (a stream's usage chunk included).
    Usage {
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    /// A stream that ended without usage (cut short, or a provider that sends none): its
    /// prompt as estimated and one token per output chunk relayed. Never the whole
    /// estimate refunded: leaving early is no way around a limit.
    Relayed { output_chunks: u64 },
    /// An upstream answered with an error status: one request, no tokens.
    Rejected,
    /// The request never reached an upstream: nothing.
    NotSent,
    /// The upstream may have generated, but nobody knows how much: the whole estimate.
    Unknown,
}

/// Capacity reserved for one request. Settled exactly once: by [`Permit::settle`], or, if
/// dropped unsettled, by keeping the whole estimate.
pub trait Permit: Send {
    fn settle(self: Box<Self>, charge: Charge);
}

/// A window of a limit as the `x-ratelimit-*` headers describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window is empty again.
    pub reset: Duration,
}

/// The caller's tightest pools, for `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitState {
    pub requests: Option<RateWindow>,
    pub tokens: Option<RateWindow>,
}

/// An admitted request: its permit (none for a model without limits) and the state of
/// its pools after it was counted.
pub struct Admitted {
    pub permit: Option<Box<dyn Permit>>,
    pub state: RateLimitState,
    /// The job type the request was counted under.
    pub job_type: String,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAdmitted {
    /// No capacity in time: 429.
    Limited(Refusal),
    /// The request names a job type the model does not have: 400.
    UnknownJobType { job_type: String, known: String },
}

/// A 429: which limit refused, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// When the client may try again (sent as `Retry-After`).
    pub retry_after: Duration,
    pub reason: String,
    /// What refused, for the metrics: a limit's config key, `job_type`, `memory`,
    /// `too_large` or `paused`.
    pub refused_by: &'static str,
    pub state: RateLimitState,
}

pub trait Limiter: Send + Sync {
    fn admit<'a>(&'a self, request: Admission<'a>) -> BoxFuture<'a, Result<Admitted, NotAdmitted>>;

    /// The pools as they are now, for the admin view (none for a limiter without pools).
    fn views(&self) -> Vec<sluice_limits::PoolView> {
        Vec::new()
    }

    /// How the pools are shared among instances, for the admin view.
    fn coordination(&self) -> Option<sluice_limits::CoordinatorState> {
        None
    }

    /// What an upstream of `model` said about its limits (answer `status`): a 429's
    /// `retry-after` pauses the model on every instance; less remaining than expected
    /// shrinks the pools until the provider's reset.
    fn observe_provider(
        &self,
        _model: &str,
        _status: u16,
        _report: &sluice_api::ratelimit::ProviderReport,
    ) {
    }
}

/// One finished request as the audit log keeps it. Built on the request path from what the
/// context already holds (reference-counted bodies, no parsing): the sink formats, scrubs and
/// writes it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When the request arrived.
    pub time: std::time::SystemTime,
    pub request_id: String,
    pub tenant: String,
    /// The key's subject and name; `None` for the anonymous caller.
    pub subject: Option<String>,
    pub key_name: Option<String>,
    pub route: &'static str,
    /// `None` when the request was refused before its model was known.
    pub model: Option<String>,
    /// The label of the endpoint that answered, if one did.
    pub endpoint: Option<String>,
    /// The status the client got (499 when it went away first).
    pub status: u16,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub decisions: Vec<Decision>,
    pub duration: Duration,
    /// The request's body and a whole answer's body, when the sink captures content
    /// ([`AuditSink::wants_content`]); streamed answers are not kept.
    pub request_body: Option<Bytes>,
    pub answer_body: Option<Bytes>,
}

pub trait AuditSink: Send + Sync {
    /// Queues `record`; never blocks the request that finished.
    fn record(&self, record: AuditRecord);

    /// Whether records should carry the bodies (content capture on).
    fn wants_content(&self) -> bool {
        false
    }

    /// Records written and records dropped for a full buffer, for `/metrics`.
    fn counters(&self) -> Option<AuditCounters> {
        None
    }

    /// Writes out (and syncs) everything queued, and stops: the gateway calls it once its
    /// requests are done, so that a shutdown loses no record. Records after it are dropped.
    fn close(&self) {}
}

/// What an audit sink counts, shown as `sluice_audit_records_written_total` and
/// `sluice_audit_records_dropped_total`.
#[derive(Debug, Clone, Default)]
pub struct AuditCounters {
    pub written: prometheus_client::metrics::counter::Counter,
    pub dropped: prometheus_client::metrics::counter::Counter,
}

/// A phase of the request path, as decisions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Authenticate,
    Parse,
    ResolveModel,
    CacheLookup,
    Admit,
    Route,
    Upstream,
    Respond,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Authenticate => "authenticate",
            Phase::Parse => "parse",
            Phase::ResolveModel => "resolve_model",
            Phase::CacheLookup => "cache_lookup",
            Phase::Admit => "admit",
            Phase::Route => "route",
            Phase::Upstream => "upstream",
            Phase::Respond => "respond",
        }
    }
}

/// What one phase decided about a request and why: what the audit log and explanation traces
/// read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub phase: Phase,
    /// A short fixed word (`hit`, `miss`, `admitted`, `refused`, `endpoint`, ...).
    pub outcome: &'static str,
    /// The particulars (an endpoint label, a refusal's reason), when there are any.
    pub detail: Option<String>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.phase.as_str(), self.outcome)?;
        if let Some(d) = &self.detail {
            write!(f, "({d})")?;
        }
        Ok(())
    }
}
