//! `POST /v1/chat/completions`: the request path, as named phases over one [`RequestCtx`].
//!
//! ```text
//!  client connection (downstream): head → RequestCtx
//!    authenticate ─── on the head, before the body is read
//!  client connection: body
//!    parse ────────── quick read of model/stream; the full parse later, once, on demand
//!    resolve_model ── the model's entry (endpoints, router, metrics); accounting starts
//!    cache_lookup ─── [cache configured] a hit answers now
//!    admit ────────── [limiter configured] reserve capacity, or 429
//!    route ────────── the model's router orders its endpoints
//!    call_upstream ── next endpoint only while a failure is retry-safe
//!    respond ──────── a whole completion, or a stream relayed event by event (`relay`)
//!    finish ───────── metrics, usage reconciled, cache write, audit: exactly once
//! ```
//!
//! Each phase returns `Ok(Flow::Continue)`, `Ok(Flow::Reply(..))` (answer now) or an error;
//! [`chat_completions`] is the one exit that records, logs and renders errors and puts the
//! headers the phases set on every kind of answer. A phase whose service is not configured is
//! a branch on `None`.
//!
//! Future size policy: a request's future lives in its connection's state and is polled in
//! place (pinned where it is made). A step that is rare or that awaits a service (connecting,
//! reading an error body, a cache or limiter call) boxes its own future, so the common path's
//! state stays small; docs/benchmarks-log.md has the measured cost.

mod ctx;
mod in_flight;
mod outgoing;
mod relay;

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sluice_api::chat::UsageSummary;
use sluice_api::{RequestError, Usage};

pub use ctx::{AnswerHeaders, HeadView, RequestBody, RequestCtx};
pub use in_flight::InFlight;
use outgoing::OutgoingRequest;

use crate::auth::Scope;
use crate::error::{GatewayError, TimeoutPhase};
use crate::metrics::UNKNOWN_MODEL;
use crate::services::{Admission, AuditRecord, CacheQuery, Charge, NotAdmitted, Phase};
use crate::state::WorkerState;
use crate::upstream::{read_whole, Sent, UpstreamEndpoint, UpstreamResponse, WholeBodyError};
use sluice_cache::{CacheKey, CacheMode, CachePolicy, RequestOverride};
use sluice_routing::{PromptTokenizer, RouteDecision, RouteQuery};

/// Largest request body accepted. Long contexts with inline images reach megabytes; beyond
/// this a request is more likely a mistake than a prompt.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// `x-sluice-cache`: `hit`, `miss` or `bypass` (streams), on answers of a gateway with a
/// cache.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-sluice-cache");

/// What a chat request is answered with.
pub enum ChatAnswer {
    /// A whole completion with its content type: the common answer, which the client
    /// connection writes out with a head it builds itself (no `Response`, no header map).
    Completion {
        content_type: HeaderValue,
        body: Bytes,
        headers: AnswerHeaders,
    },
    /// Anything else: errors and streams, with the phases' headers already in place.
    Response(Response),
}

/// The instant by which an answer must be written out, carried in a streamed response's
/// extensions: the client connection holds each write to it, so a client that stops reading
/// cannot keep a stream past its total timeout.
#[derive(Debug, Clone, Copy)]
pub struct AnswerDeadline(pub tokio::time::Instant);

/// What the phases produce when the request is answered.
enum Reply {
    Completion {
        content_type: HeaderValue,
        body: Bytes,
        usage: Option<Usage>,
    },
    Stream {
        endpoint: Arc<UpstreamEndpoint>,
        response: UpstreamResponse,
        client_wants_usage: bool,
    },
    /// A cache hit on a streaming request: every event's data, ready to send.
    Events(Vec<Bytes>),
}

/// What a phase says about what comes next.
enum Flow {
    Continue,
    /// Boxed: answering early is the rare case (a cache hit).
    Reply(Box<Reply>),
}

/// Phase: authenticate. Runs on the head, before the body is read: a caller without a valid
/// key never makes the gateway buffer a body. An error is the answer (through [`refuse`]).
pub fn authenticate(ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let Some(keys) = ctx.shared.services.keys.clone() else {
        return Ok(());
    };
    ctx.enter(Phase::Authenticate);
    let outcome = check_key(ctx, &*keys);
    // The client connection reads the body next: not a phase of the pipeline.
    if let Some(trace) = &mut ctx.trace {
        if let Err(e) = &outcome {
            trace.fail(error_type(e));
        }
        trace.leave();
    }
    outcome
}

fn check_key(
    ctx: &mut RequestCtx,
    keys: &dyn crate::services::KeyStore,
) -> Result<(), GatewayError> {
    match keys.authenticate(ctx.head.bearer_token()) {
        Ok(principal) if !principal.has(Scope::ChatWrite) => {
            ctx.decide(Phase::Authenticate, "scope_missing", || None);
            ctx.principal = principal;
            Err(GatewayError::ScopeMissing {
                scope: Scope::ChatWrite,
            })
        }
        Ok(principal) => {
            ctx.principal = principal;
            ctx.decide(Phase::Authenticate, "key", || None);
            Ok(())
        }
        Err(e) => {
            ctx.decide(Phase::Authenticate, "refused", || None);
            Err(GatewayError::from(e))
        }
    }
}

/// Answers one chat request whose head made `ctx` and whose whole body is `raw`.
pub async fn chat_completions(worker: &WorkerState, mut ctx: RequestCtx, raw: Bytes) -> ChatAnswer {
    match run_phases(worker, &mut ctx, raw).await {
        Ok(Reply::Completion {
            content_type,
            body,
            usage,
        }) => {
            let write = ctx.cache_write.take();
            finish(
                &mut ctx,
                StatusCode::OK.as_u16(),
                usage.as_ref(),
                Some(&body),
            );
            if let Some(key) = write {
                // Written once in the form hits serve (see `replay::hit_template`).
                let template =
                    sluice_cache::replay::hit_template(&body).unwrap_or_else(|_| body.clone());
                let stored = sluice_cache::StoredAnswer::Completion(template);
                let content_type = content_type.to_str().unwrap_or("application/json");
                store_in_cache(&mut ctx, key, content_type, stored, usage.as_ref());
            }
            ChatAnswer::Completion {
                content_type,
                body,
                headers: std::mem::take(&mut ctx.answer_headers),
            }
        }
        Ok(Reply::Events(events)) => {
            finish(&mut ctx, StatusCode::OK.as_u16(), None, None);
            let mut response = cached_stream_response(events);
            std::mem::take(&mut ctx.answer_headers).apply(response.headers_mut());
            ChatAnswer::Response(response)
        }
        Ok(Reply::Stream {
            endpoint,
            response,
            client_wants_usage,
        }) => {
            let headers = std::mem::take(&mut ctx.answer_headers);
            let mut response = relay::stream_response(endpoint, response, ctx, client_wants_usage);
            headers.apply(response.headers_mut());
            ChatAnswer::Response(response)
        }
        Err(e) => refuse(ctx, e),
    }
}

/// The phases after the body arrived, in order.
async fn run_phases(
    worker: &WorkerState,
    ctx: &mut RequestCtx,
    raw: Bytes,
) -> Result<Reply, GatewayError> {
    parse(ctx, raw)?;
    resolve_model(ctx)?;
    if let Flow::Reply(reply) = cache_lookup(ctx).await? {
        return Ok(*reply);
    }
    admit(ctx).await?;
    let route = route(ctx).await;
    let (endpoint, sent) = call_upstream(worker, ctx, &route).await?;
    respond(ctx, endpoint, sent).await
}

/// Phase: parse. The quick read suffices to relay; [`RequestBody::parsed`] does the full
/// parse when a later phase needs the messages.
fn parse(ctx: &mut RequestCtx, raw: Bytes) -> Result<(), GatewayError> {
    ctx.enter(Phase::Parse);
    ctx.body = RequestBody::read(raw).map_err(invalid)?;
    Ok(())
}

/// Phase: resolve the model. From here on the request is accounted under its model.
fn resolve_model(ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    ctx.enter(Phase::ResolveModel);
    let name = &ctx.body.fields.model;
    let Some(model) = ctx.shared.models.get(name).cloned() else {
        return Err(GatewayError::ModelNotFound {
            model: name.clone(),
            available: ctx.shared.model_names.clone(),
        });
    };
    if !ctx.principal.may_use(&model.name) {
        return Err(GatewayError::ModelNotAllowed {
            model: model.name.clone(),
        });
    }
    ctx.flight = Some(InFlight::start(model.metrics.clone(), ctx.received));
    ctx.model = Some(model);
    Ok(())
}

/// Phase: cache lookup, when a cache is configured. The policy is the model's, unless the
/// request overrides it (`x-sluice-cache`, or the body's `sluice.cache`); a read that hits
/// answers now (a stream as a stream, a completion as a completion, whichever was stored).
async fn cache_lookup(ctx: &mut RequestCtx) -> Result<Flow, GatewayError> {
    let (Some(cache), Some(model)) = (ctx.shared.services.cache.clone(), ctx.model.clone()) else {
        return Ok(Flow::Continue);
    };
    ctx.enter(Phase::CacheLookup);
    let shared = ctx.shared.clone();
    let metrics = shared.cache_metrics.as_ref();
    let policy = request_cache_policy(ctx, model.cache)?;
    let key = if policy.mode == CacheMode::Off {
        None
    } else {
        cache
            .key(ctx.principal.tenant(), &model.name, &ctx.body.raw)
            .ok()
    };
    let key = match key {
        Some(key) if policy.mode.reads() => key,
        unread => {
            if policy.mode.writes() {
                ctx.cache_write = unread;
            }
            let why = policy.mode.as_str();
            ctx.answer_headers
                .insert(CACHE_HEADER, HeaderValue::from_static("bypass"));
            ctx.decide(Phase::CacheLookup, "bypass", || Some(why.into()));
            if let Some(m) = metrics {
                m.lookup(ctx.principal.tenant(), "bypass");
            }
            return Ok(Flow::Continue);
        }
    };
    let query = CacheQuery {
        key: &key,
        max_age: policy.max_age,
    };
    let stream = ctx
        .body
        .fields
        .stream
        .then_some(ctx.body.fields.include_usage);
    let mut hit = match cache.lookup(query).await {
        Some(entry) => hit_answer(&entry, stream),
        None => None,
    };
    if hit.is_none() && policy.mode.writes() {
        // A miss that will store: identical misses share one upstream call.
        if let Some(flights) = cache.flights() {
            match flights.join(key) {
                sluice_cache::Role::Leader(leader) => ctx.cache_leader = Some(leader),
                sluice_cache::Role::Waiter(waiter) => {
                    let waited = waiter.wait(model.cache_wait()).await;
                    let served = match waited {
                        sluice_cache::Waited::Served(entry) => hit_answer(&entry, stream),
                        sluice_cache::Waited::GoUpstream => None,
                    };
                    if let Some(m) = metrics {
                        m.coalesced(if served.is_some() {
                            "served"
                        } else {
                            "went_upstream"
                        });
                    }
                    hit = served;
                }
            }
        }
    }
    let outcome = if hit.is_some() { "hit" } else { "miss" };
    ctx.answer_headers
        .insert(CACHE_HEADER, HeaderValue::from_static(outcome));
    ctx.decide(Phase::CacheLookup, outcome, || None);
    if let Some(m) = metrics {
        m.lookup(ctx.principal.tenant(), outcome);
    }
    Ok(match hit {
        Some((reply, saved)) => {
            if let (Some(m), Some(saved)) = (metrics, saved) {
                m.saved(saved.prompt_tokens, saved.completion_tokens);
            }
            Flow::Reply(Box::new(reply))
        }
        None => {
            if policy.mode.writes() {
                ctx.cache_write = Some(key);
            }
            Flow::Continue
        }
    })
}

/// The model's cache policy under the request's overrides; a malformed override is the
/// client's error (400, naming the header or field).
fn request_cache_policy(
    ctx: &mut RequestCtx,
    default: CachePolicy,
) -> Result<CachePolicy, GatewayError> {
    let bad =
        |e: sluice_cache::OverrideError| GatewayError::invalid_request(e.message, Some(e.param));
    let from_headers = RequestOverride::from_headers(
        ctx.head.header(sluice_cache::policy::MODE_HEADER),
        ctx.head.header(sluice_cache::policy::MAX_AGE_HEADER),
    )
    .map_err(bad)?;
    // The body field is read only when its name is in the body at all.
    let mut from_body = RequestOverride::default();
    if outgoing::may_carry_gateway_options(&ctx.body.raw) {
        let request = ctx.body.parsed().map_err(invalid)?;
        if let Some(options) = request.extra.get(outgoing::GATEWAY_OPTIONS) {
            from_body = RequestOverride::from_body_field(options).map_err(bad)?;
        }
    }
    Ok(from_headers.or(from_body).apply(default))
}

/// A stored entry as a hit's answer, in the shape the request asked for (`stream`: `None`
/// for a whole completion, else whether the client wants the usage chunk): a stored stream
/// added up to its completion, or a stored completion cut into a stream's events. A fresh
/// id and `created`; usage zeroed, with what was saved beside it. `None` if the entry cannot
/// be replayed (then it is a miss).
fn hit_answer(
    entry: &sluice_cache::Entry,
    stream: Option<bool>,
) -> Option<(Reply, Option<sluice_cache::SavedUsage>)> {
    use sluice_cache::replay;
    use sluice_cache::StoredAnswer;
    let refresh = replay::Refresh {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: crate::cache::now_ms() / 1000,
    };
    let reply = match (stream, &entry.answer) {
        (None, StoredAnswer::Completion(body)) => {
            // Stored as a hit template: a copy with this reply's identity written in.
            let body = match replay::stamp(body, &refresh) {
                Some(body) => body,
                None => refresh.hit(body).ok()?,
            };
            completion_reply(entry, body)
        }
        (None, StoredAnswer::Stream(events)) => {
            let body = replay::completion_from_events(events).ok()?;
            completion_reply(entry, refresh.hit(&body).ok()?)
        }
        (Some(wants_usage), answer) => {
            let events = match answer {
                StoredAnswer::Stream(events) => events.clone(),
                StoredAnswer::Completion(body) => replay::events_from_completion(body).ok()?,
            };
            let events = events
                .iter()
                .filter(|e| wants_usage || !replay::is_usage_only(e))
                .map(|e| refresh.hit(e))
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            Reply::Events(events)
        }
    };
    Some((reply, entry.usage))
}

fn completion_reply(entry: &sluice_cache::Entry, body: Bytes) -> Reply {
    Reply::Completion {
        content_type: HeaderValue::from_str(&entry.content_type)
            .unwrap_or(HeaderValue::from_static("application/json")),
        body,
        // Served without an upstream: no tokens were spent.
        usage: None,
    }
}

/// A cached stream as an event stream: each event's data, then `[DONE]`.
fn cached_stream_response(events: Vec<Bytes>) -> Response {
    let mut text = String::new();
    for event in &events {
        sluice_api::sse::encode_event_into(&mut text, None, &String::from_utf8_lossy(event));
    }
    text.push_str(sluice_api::sse::DONE_EVENT);
    let mut response = Response::new(axum::body::Body::from(text));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Phase: admit, for a model with limits: reserve the request's estimate (prompt tokens
/// from the messages, plus the output cap) in its job type's pool, waiting up to the type's
/// `max_wait`; or 429 naming the limit. With fallback models (`x-sluice-fallback-models`, or
/// the model's `fallback_models`), each model is tried in turn without waiting, the last
/// one up to its `max_wait`, and the first with capacity serves the request. Every answer
/// after this carries the pool's `x-ratelimit-*` headers.
async fn admit(ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let (Some(limiter), Some(model)) = (ctx.shared.services.limiter.clone(), ctx.model.clone())
    else {
        return Ok(());
    };
    let key = match &ctx.principal {
        crate::services::Principal::Key(k)
            if k.requests_per_minute.is_some() || k.tokens_per_minute.is_some() =>
        {
            Some(k.clone())
        }
        _ => None,
    };
    if !model.limited && key.is_none() {
        return Ok(());
    }
    ctx.enter(Phase::Admit);
    let candidates = fallback_candidates(ctx, &model)?;
    let key_limits = key.as_ref().map(|k| crate::services::KeyLimits {
        name: &k.key_name,
        requests_per_minute: k.requests_per_minute,
        tokens_per_minute: k.tokens_per_minute,
    });
    let request = ctx.body.parsed().map_err(invalid)?;
    let prompt_tokens = estimate_prompt_tokens(request);
    let choices = request
        .extra
        .get("n")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1)
        .max(1);
    let output_tokens = request
        .output_cap()
        .map(|cap| u64::from(cap).saturating_mul(choices));
    let job_type = match ctx.head.header(JOB_TYPE_HEADER.as_str()) {
        Some(raw) => Some(
            std::str::from_utf8(raw)
                .map_err(|_| {
                    GatewayError::invalid_request(
                        "x-sluice-job-type is not UTF-8 text",
                        Some(JOB_TYPE_HEADER.as_str().to_owned()),
                    )
                })?
                .to_owned(),
        ),
        None => None,
    };
    let metrics = ctx.shared.limits_metrics.clone();
    let mut refusals: Vec<(String, crate::services::Refusal)> = Vec::new();
    for (i, candidate) in candidates.iter().enumerate() {
        let last = i + 1 == candidates.len();
        if !candidate.limited && key_limits.is_none() {
            // An unlimited fallback takes the request as it is.
            move_to_fallback(ctx, candidate)?;
            return Ok(());
        }
        let admission = Admission {
            tenant: ctx.principal.tenant(),
            model: &candidate.name,
            job_type: job_type.as_deref(),
            prompt_tokens,
            output_tokens,
            max_wait: (!last).then_some(std::time::Duration::ZERO),
            fallback: i > 0,
            key: key_limits,
        };
        let started = std::time::Instant::now();
        let verdict = limiter.admit(admission).await;
        match verdict {
            Ok(admitted) => {
                if let Some(m) = &metrics {
                    m.admitted(&candidate.name, &admitted.job_type, started.elapsed());
                }
                rate_limit_headers(&mut ctx.answer_headers, &admitted.state);
                ctx.permit = admitted.permit;
                if i > 0 {
                    move_to_fallback(ctx, candidate)?;
                }
                ctx.decide(Phase::Admit, "admitted", || {
                    Some(format!(
                        "{} ({prompt_tokens} prompt tokens estimated)",
                        candidate.name
                    ))
                });
                return Ok(());
            }
            Err(NotAdmitted::Limited(refusal)) => {
                if let Some(m) = &metrics {
                    m.refused(&candidate.name, refusal.refused_by, started.elapsed());
                }
                if i == 0 {
                    rate_limit_headers(&mut ctx.answer_headers, &refusal.state);
                }
                refusals.push((candidate.name.clone(), refusal));
            }
            Err(NotAdmitted::UnknownJobType { job_type, known }) => {
                if let Some(m) = &metrics {
                    m.refused(&candidate.name, "unknown_job_type", started.elapsed());
                }
                return Err(GatewayError::invalid_request(
                    format!(
                        "model `{}` has no job type `{job_type}`; use one of: {known}",
                        candidate.name
                    ),
                    Some(JOB_TYPE_HEADER.as_str().to_owned()),
                ));
            }
        }
    }
    let retry_after = refusals
        .iter()
        .map(|(_, r)| r.retry_after)
        .min()
        .unwrap_or_default();
    let reason = match refusals.as_slice() {
        [(_, only)] => only.reason.clone(),
        all => format!(
            "no model had capacity: {}",
            all.iter()
                .map(|(_, r)| r.reason.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    ctx.decide(Phase::Admit, "refused", || Some(reason.clone()));
    Err(GatewayError::RateLimited {
        reason,
        retry_after,
    })
}

/// `x-sluice-fallback-models`: models tried, in order, when the requested one has no
/// capacity (replacing the model's own `fallback_models`).
pub const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-sluice-fallback-models");

/// The requested model, then its fallbacks: the request's header (each checked to be a
/// configured model the caller may use) or the model's config.
fn fallback_candidates(
    ctx: &RequestCtx,
    model: &Arc<crate::state::ModelEntry>,
) -> Result<Vec<Arc<crate::state::ModelEntry>>, GatewayError> {
    let bad = |message: String| {
        GatewayError::invalid_request(message, Some(FALLBACK_HEADER.as_str().to_owned()))
    };
    let names: Vec<String> = match ctx.head.header(FALLBACK_HEADER.as_str()) {
        Some(raw) => std::str::from_utf8(raw)
            .map_err(|_| bad("x-sluice-fallback-models is not UTF-8 text".into()))?
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
        None => model.fallback_models.clone(),
    };
    let mut candidates = vec![model.clone()];
    for name in names {
        let Some(entry) = ctx.shared.models.get(&name) else {
            return Err(bad(format!(
                "fallback model `{name}` is not configured on this gateway; available models: {}",
                ctx.shared.model_names.join(", ")
            )));
        };
        if !ctx.principal.may_use(&entry.name) {
            return Err(GatewayError::ModelNotAllowed {
                model: entry.name.clone(),
            });
        }
        if !candidates.iter().any(|c| c.name == entry.name) {
            candidates.push(entry.clone());
        }
    }
    Ok(candidates)
}

/// The request goes to `fallback` instead of the model it named: its body names the
/// fallback, it is accounted under it, and its answer is not cached under the model it
/// named (`x-sluice-model` tells the client which model served it).
fn move_to_fallback(
    ctx: &mut RequestCtx,
    fallback: &Arc<crate::state::ModelEntry>,
) -> Result<(), GatewayError> {
    let mut request = ctx.body.parsed().map_err(invalid)?.clone();
    request.model = fallback.name.clone();
    ctx.body = RequestBody::read(Bytes::from(request.to_json_vec())).map_err(invalid)?;
    if let Some(flight) = ctx.flight.take() {
        ctx.flight = Some(flight.move_to(fallback.metrics.clone()));
    }
    ctx.model = Some(fallback.clone());
    if ctx.cache_write.take().is_some() {
        if let Some(m) = &ctx.shared.cache_metrics {
            m.skipped("fallback_model");
        }
    }
    ctx.cache_leader = None;
    if let Ok(v) = HeaderValue::from_str(&fallback.name) {
        ctx.answer_headers.insert(SERVED_MODEL_HEADER, v);
    }
    ctx.decide(Phase::Admit, "fallback", || Some(fallback.name.clone()));
    Ok(())
}

/// `x-sluice-model`: the model that served a request a fallback took.
pub const SERVED_MODEL_HEADER: HeaderName = HeaderName::from_static("x-sluice-model");

/// `x-sluice-job-type`: which of the model's job types a request belongs to.
pub const JOB_TYPE_HEADER: HeaderName = HeaderName::from_static("x-sluice-job-type");

/// OpenAI's rate-limit headers for the caller's tightest pools, so SDK retry logic works
/// unchanged: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, reset as a Go-style
/// duration (`1m0s`, `6s`, `250ms`).
fn rate_limit_headers(headers: &mut AnswerHeaders, state: &crate::services::RateLimitState) {
    use sluice_api::ratelimit::{REQUESTS_HEADERS as R, TOKENS_HEADERS as T};
    const NAMES: [[HeaderName; 3]; 2] = [
        [
            HeaderName::from_static(R[0]),
            HeaderName::from_static(R[1]),
            HeaderName::from_static(R[2]),
        ],
        [
            HeaderName::from_static(T[0]),
            HeaderName::from_static(T[1]),
            HeaderName::from_static(T[2]),
        ],
    ];
    for (names, window) in NAMES.iter().zip([state.requests, state.tokens]) {
        let Some(w) = window else { continue };
        let [limit, remaining, reset] = names.clone();
        headers.insert(limit, HeaderValue::from(w.limit));
        headers.insert(remaining, HeaderValue::from(w.remaining));
        if let Ok(v) = HeaderValue::from_str(&sluice_api::ratelimit::go_duration(w.reset)) {
            headers.insert(reset, v);
        }
    }
}

/// The header that says where a request went and why: `pod=LABEL; reason=REASON;
/// matched_blocks=N`.
const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-sluice-route");
/// Requests naming the same session go to the same endpoint (`[models.NAME.routing]
/// session_ttl`).
const SESSION_HEADER: &str = "x-session-id";

/// Phase: route. The model's router orders its endpoints: by its policy, with the
/// request's session first when it has a fresh pin, and (prefix-aware) by the blocks of the
/// prompt each endpoint's engine holds.
async fn route(ctx: &mut RequestCtx) -> Option<RouteDecision> {
    ctx.enter(Phase::Route);
    let model = ctx.model.clone()?;
    let prompt = match &model.tokenizer {
        Some(tokenizer) if model.router.needs_prompt() => prompt_tokens(ctx, tokenizer).await,
        _ => None,
    };
    // The head is scanned for the session only when the model keeps sessions.
    let session = if model.router.keeps_sessions() {
        ctx.head
            .header(SESSION_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok())
    } else {
        None
    };
    let query = RouteQuery {
        session,
        prompt: prompt.as_deref(),
    };
    let decision = model.router.route(&query, model.router.now_ms());
    ctx.decide(Phase::Route, decision.reason.as_str(), || {
        decision
            .order
            .first()
            .and_then(|i| decision.table.label(i).map(str::to_owned))
    });
    Some(decision)
}

/// `x-sluice-route`'s value: `pod=LABEL; reason=REASON; matched_blocks=N`. Written by hand
/// because it is on every answer: `format!` cost about 450 instructions of a request's
/// 32 000.
fn route_header(pod: &str, reason: &str, matched_blocks: u32) -> String {
    let mut v = String::with_capacity(pod.len() + reason.len() + 40);
    for part in [
        "pod=",
        pod,
        "; reason=",
        reason,
        "; matched_blocks=",
        itoa::Buffer::new().format(matched_blocks),
    ] {
        v.push_str(part);
    }
    v
}

/// Bodies above this size are tokenized off the worker thread: a model's tokenizer spends
/// about 1.7 µs a prompt token (docs/benchmarks.md, "Tokenizing prompts"), and a worker
/// busy for milliseconds delays every stream it relays.
const TOKENIZE_INLINE_MAX_BYTES: usize = 8 * 1024;

/// The prompt's tokens as the engine computes them. A request the template refuses is
/// routed without its prefix; the engine answers it.
async fn prompt_tokens(ctx: &mut RequestCtx, tokenizer: &PromptTokenizer) -> Option<Vec<u32>> {
    let tokens = if ctx.body.raw.len() <= TOKENIZE_INLINE_MAX_BYTES || !tokenizer.is_costly() {
        tokenizer.prompt_tokens(ctx.body.parsed().ok()?)
    } else {
        // The request is lent to the blocking pool and given back, not copied.
        let request = ctx.body.take_parsed().ok()?;
        let tokenizer = tokenizer.clone();
        let lent = tokio::task::spawn_blocking(move || {
            let tokens = tokenizer.prompt_tokens(&request);
            (request, tokens)
        });
        let (request, tokens) = lent.await.ok()?;
        ctx.body.restore(request);
        tokens
    };
    match tokens {
        Ok(tokens) => Some(tokens),
        Err(e) => {
            let model = ctx.model.as_ref().map_or("", |m| m.name.as_str());
            tracing::debug!(model, error = %e, "prompt not tokenized; routed without its prefix");
            None
        }
    }
}

/// Phase: call the upstream. Tries the endpoints in `order`, moving on only when a failure
/// proved the request never reached the endpoint. A non-2xx answer becomes an error here.
async fn call_upstream(
    worker: &WorkerState,
    ctx: &mut RequestCtx,
    route: &Option<RouteDecision>,
) -> Result<(Arc<UpstreamEndpoint>, Sent), GatewayError> {
    ctx.enter(Phase::Upstream);
    let endpoints = match (&ctx.model, route) {
        (Some(model), Some(decision)) => worker.endpoints(model, &decision.table),
        _ => Arc::from(Vec::new()),
    };
    let outgoing =
        OutgoingRequest::new(&mut ctx.body, endpoints.iter().flatten()).map_err(invalid)?;
    let Some(flight) = ctx.flight.as_mut() else {
        return Err(GatewayError::invalid_request("no model resolved", None));
    };
    let router = ctx.model.as_ref().map(|m| m.router.clone());
    let mut last_error = None;
    let mut answered = None;
    // Attempts that reached an endpoint (a retry of one is bounded by attempts and budget);
    // those that provably never did are not counted and always move on.
    let mut reached = 0u32;
    for (i, endpoint) in route
        .iter()
        .flat_map(|r| r.order.iter())
        .filter_map(|i| endpoints.get(i)?.as_ref().map(|e| (i, e)))
    {
        if let (Some(router), Some(failed)) = (&router, &last_error) {
            if let Some(reason) = retry_reason(failed) {
                if let Err(refused) = router.retry(reached, reason, router.now_ms()) {
                    tracing::debug!(request_id = ctx.id.as_str(), ?refused, "not retried");
                    break;
                }
            }
        }
        let body = outgoing.body_for(endpoint);
        // Counted on the endpoint (and the prompt recorded there) from the moment it is sent.
        ctx.endpoint_load = match (&router, route) {
            (Some(router), Some(decision)) => router.sent(i, decision, router.now_ms()),
            _ => None,
        };
        let trace_lines = match &mut ctx.trace {
            Some(trace) => trace.start_attempt(endpoint),
            None => Vec::new(),
        };
        // From here the endpoint may be generating, until an answer says otherwise.
        ctx.charge = Charge::Unknown;
        let result = flight
            .wait_upstream(endpoint.send(body, ctx.id.as_str(), &trace_lines))
            .await;
        if let Some(trace) = &mut ctx.trace {
            match &result {
                Ok(sent) => trace.attempt_answered(sent.response.status().as_u16()),
                Err(e) => trace.attempt_failed(e.upstream_kind().unwrap_or("error")),
            }
        }
        // A 429 or 5xx answer is a failed attempt like a reset: nothing reached the client,
        // so another endpoint may take the request.
        let result = match result {
            Ok(sent) if retried_status(sent.response.status()) => {
                ctx.charge = Charge::Rejected;
                let retry_after = retry_after(&sent.response);
                learn_provider_limits(&ctx.shared, ctx.model.as_deref(), &sent.response);
                let e = flight
                    .wait_upstream(Box::pin(endpoint.rejection(sent.response)))
                    .await;
                Err((e, retry_after))
            }
            other => other.map_err(|e| (e, None)),
        };
        let outcome = match &result {
            Ok(_) => sluice_routing::Outcome::Success,
            Err((e, retry_after)) => health_outcome(e, *retry_after),
        };
        if let (Some(router), Some(decision)) = (&router, route) {
            router.report(decision, i, outcome, router.now_ms());
        }
        match result {
            Ok(sent) => {
                flight.pool_wait += sent.pool_wait;
                if let Some(decision) = route {
                    let first = reached == 0 && last_error.is_none();
                    let reason = if first {
                        decision.reason.as_str()
                    } else {
                        "retry"
                    };
                    let matched = if first { decision.matched_blocks } else { 0 };
                    if let Ok(v) =
                        HeaderValue::from_str(&route_header(&endpoint.label, reason, matched))
                    {
                        ctx.answer_headers.insert(ROUTE_HEADER, v);
                    }
                }
                answered = Some((endpoint.clone(), sent));
                break;
            }
            Err((e, _)) => {
                if let Some(kind) = e.upstream_kind() {
                    flight.model.upstream_error(&endpoint.label, kind);
                }
                tracing::warn!(request_id = ctx.id.as_str(), endpoint = %endpoint.label, error = %e, "upstream call failed");
                if !e.retry_safe() {
                    if retry_reason(&e).is_none() {
                        return Err(e);
                    }
                    reached += 1;
                } else {
                    ctx.charge = Charge::NotSent;
                }
                last_error = Some(e);
            }
        }
    }
    if let Some((endpoint, sent)) = &answered {
        ctx.endpoint = Some(endpoint.clone());
        learn_provider_limits(&ctx.shared, ctx.model.as_deref(), &sent.response);
    }
    let Some((endpoint, sent)) = answered else {
        return Err(
            last_error.unwrap_or_else(|| GatewayError::UpstreamUnreachable {
                endpoint: ctx.body.fields.model.clone(),
                reason: "the model has no endpoint".into(),
            }),
        );
    };
    if !sent.response.status().is_success() {
        ctx.charge = Charge::Rejected;
        let e = flight
            .wait_upstream(Box::pin(endpoint.rejection(sent.response)))
            .await;
        return Err(upstream_failed(flight, &endpoint, e));
    }
    ctx.decide(Phase::Upstream, "answered", || Some(endpoint.label.clone()));
    Ok((endpoint, sent))
}

/// Answers another endpoint may be asked instead: rate limited, or failed on its side.
fn retried_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// A 429's `retry-after` (seconds or an HTTP date): what the endpoint's cooldown follows.
fn retry_after(response: &UpstreamResponse) -> Option<std::time::Duration> {
    let v = response.headers().get(http::header::RETRY_AFTER)?;
    sluice_api::ratelimit::provider::retry_after(
        v.to_str().ok()?.trim(),
        std::time::SystemTime::now(),
    )
}

/// Why a failed attempt that reached the endpoint may go to another (bounded by the
/// model's attempts and retry budget); `None`: it may not (a timeout after sending, the
/// client's own error).
fn retry_reason(e: &GatewayError) -> Option<sluice_routing::RetryReason> {
    use sluice_routing::RetryReason;
    match e {
        GatewayError::UpstreamProtocol { .. } => Some(RetryReason::Reset),
        GatewayError::UpstreamFailed { .. } => Some(RetryReason::Status5xx),
        GatewayError::UpstreamRejected { status, .. }
            if *status == StatusCode::TOO_MANY_REQUESTS =>
        {
            Some(RetryReason::Status429)
        }
        _ => None,
    }
}

/// What a failed attempt says of the endpoint's health.
fn health_outcome(
    e: &GatewayError,
    retry_after: Option<std::time::Duration>,
) -> sluice_routing::Outcome {
    use sluice_routing::Outcome;
    match e {
        GatewayError::UpstreamRejected { status, .. }
            if *status == StatusCode::TOO_MANY_REQUESTS =>
        {
            Outcome::RateLimited(retry_after)
        }
        // The client's own mistake says nothing about the endpoint.
        GatewayError::UpstreamRejected { .. } => Outcome::Success,
        GatewayError::UpstreamUnreachable { .. }
        | GatewayError::UpstreamTimeout { .. }
        | GatewayError::UpstreamProtocol { .. }
        | GatewayError::UpstreamFailed { .. } => Outcome::Failure,
        _ => Outcome::Success,
    }
}

/// What the upstream's headers say about its limits, told to the limiter (limited models
/// only): a 429's `retry-after`, and what remains of its minute.
fn learn_provider_limits(
    shared: &crate::state::GatewayShared,
    model: Option<&crate::state::ModelEntry>,
    response: &UpstreamResponse,
) {
    let (Some(limiter), Some(model)) = (&shared.services.limiter, model) else {
        return;
    };
    if !model.limited {
        return;
    }
    let headers = response.headers();
    let report = sluice_api::ratelimit::ProviderReport::read(
        |name| headers.get(name).and_then(|v| v.to_str().ok()),
        std::time::SystemTime::now(),
    );
    if report != sluice_api::ratelimit::ProviderReport::default() || response.status() == 429 {
        limiter.observe_provider(&model.name, response.status().as_u16(), &report);
    }
}

/// Phase: respond. A stream is handed to the relay; a whole completion is read (bounded by
/// the total timeout and `max_response_bytes`) and its usage counted.
async fn respond(
    ctx: &mut RequestCtx,
    endpoint: Arc<UpstreamEndpoint>,
    sent: Sent,
) -> Result<Reply, GatewayError> {
    ctx.enter(Phase::Respond);
    if ctx.body.fields.stream {
        return Ok(Reply::Stream {
            endpoint,
            response: sent.response,
            client_wants_usage: ctx.body.fields.include_usage,
        });
    }
    let Some(flight) = ctx.flight.as_mut() else {
        return Err(GatewayError::invalid_request("no model resolved", None));
    };
    let deadline = ctx.received + endpoint.timeouts().total;
    let limit = ctx.shared.client_limits.max_response_bytes;
    let response = sent.response;
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let mut upstream_body = response.into_body();
    let read = read_whole(&mut upstream_body, limit);
    let body = match flight
        .wait_upstream(tokio::time::timeout_at(deadline, read))
        .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(WholeBodyError::Response(e))) => {
            return Err(upstream_failed(flight, &endpoint, endpoint.body_error(&e)))
        }
        Ok(Err(e @ WholeBodyError::TooLarge(_))) => {
            let e = GatewayError::UpstreamProtocol {
                endpoint: endpoint.label.clone(),
                reason: format!("{e} (server.max_response_bytes)"),
            };
            return Err(upstream_failed(flight, &endpoint, e));
        }
        Err(_) => {
            let e = GatewayError::UpstreamTimeout {
                endpoint: endpoint.label.clone(),
                phase: TimeoutPhase::Total,
                limit: endpoint.timeouts().total,
            };
            return Err(upstream_failed(flight, &endpoint, e));
        }
    };
    let usage = match UsageSummary::from_body(&body) {
        Ok(summary) => {
            // Read cleanly and accepted: only now may the connection carry another request.
            upstream_body.release();
            summary.usage
        }
        Err(e) => {
            let e = GatewayError::UpstreamProtocol {
                endpoint: endpoint.label.clone(),
                reason: format!("the response body is not a chat completion: {e}"),
            };
            return Err(upstream_failed(flight, &endpoint, e));
        }
    };
    Ok(Reply::Completion {
        content_type,
        body,
        usage,
    })
}

fn upstream_failed(
    flight: &InFlight,
    endpoint: &UpstreamEndpoint,
    e: GatewayError,
) -> GatewayError {
    if let Some(kind) = e.upstream_kind() {
        flight.model.upstream_error(&endpoint.label, kind);
    }
    e
}

/// The one exit for errors: accounts the request, logs, and renders the error with the
/// headers the phases set.
pub fn refuse(mut ctx: RequestCtx, e: GatewayError) -> ChatAnswer {
    let status = e.status();
    if status.is_server_error() {
        tracing::warn!(request_id = ctx.id.as_str(), error = %e, "request failed");
    } else {
        tracing::debug!(request_id = ctx.id.as_str(), error = %e, "request refused");
    }
    if let Some(trace) = &mut ctx.trace {
        trace.fail(error_type(&e));
    }
    if ctx.cache_write.take().is_some() {
        if let Some(m) = &ctx.shared.cache_metrics {
            m.skipped("request_failed");
        }
    }
    finish(&mut ctx, status.as_u16(), None, None);
    let mut response = e.into_response();
    std::mem::take(&mut ctx.answer_headers).apply(response.headers_mut());
    ChatAnswer::Response(response)
}

/// Phase: finish, exactly once per request (on the answer, at a stream's end, or when the
/// context is dropped unfinished): metrics, the permit reconciled with the usage, the audit
/// record. The cache write, which needs the answer, follows in [`chat_completions`].
fn finish(ctx: &mut RequestCtx, status: u16, usage: Option<&Usage>, answer: Option<&Bytes>) {
    if std::mem::replace(&mut ctx.finished, true) {
        return;
    }
    match ctx.flight.take() {
        Some(flight) => {
            if let Some(usage) = usage {
                flight.model.usage(usage);
            }
            flight.finish(status);
        }
        None => ctx.shared.metrics.count_request(UNKNOWN_MODEL, status),
    }
    if let Some(permit) = ctx.permit.take() {
        permit.settle(usage.map_or(ctx.charge, |u| Charge::Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }));
    }
    if ctx.shared.access_log {
        access_log(ctx, status, usage);
    }
    if let Some(audit) = ctx.shared.services.audit.clone() {
        audit_record(ctx, &*audit, status, usage, answer.cloned());
    }
    if let Some(trace) = ctx.trace.take() {
        export_trace(ctx, *trace, status, usage);
    }
}

/// Hands a sampled request's trace to the exporter, which builds its spans.
fn export_trace(
    ctx: &RequestCtx,
    trace: crate::otel::RequestTrace,
    status: u16,
    usage: Option<&Usage>,
) {
    let Some(tracer) = &ctx.shared.services.tracer else {
        return;
    };
    if !trace.sampled() {
        return;
    }
    let model = &ctx.body.fields.model;
    let summary = crate::otel::RequestSummary {
        request_id: ctx.id.as_str().to_owned(),
        model: (!model.is_empty()).then(|| model.clone()),
        tenant: ctx.principal.tenant().to_owned(),
        endpoint: ctx.endpoint.clone(),
        status,
        input_tokens: usage.map(|u| u.prompt_tokens),
        output_tokens: usage.map(|u| u.completion_tokens),
        stream: ctx.body.fields.stream,
        peer: ctx.head.peer.ip(),
    };
    if let Some(finished) = trace.finish(summary) {
        tracer.export(finished);
    }
}

/// `error.type` of a failed request: the upstream failure's kind, or the status (what
/// OpenTelemetry's HTTP conventions use when nothing more specific is known).
fn error_type(e: &GatewayError) -> std::borrow::Cow<'static, str> {
    match e.upstream_kind() {
        Some(kind) => kind.into(),
        None => e.status().as_u16().to_string().into(),
    }
}

/// Hands the finished request to the audit sink: ids, who, what, how it went, and (when the
/// sink captures content) the bodies by reference.
fn audit_record(
    ctx: &mut RequestCtx,
    audit: &dyn crate::services::AuditSink,
    status: u16,
    usage: Option<&Usage>,
    answer: Option<Bytes>,
) {
    let key = match &ctx.principal {
        crate::services::Principal::Key(k) => Some(k),
        crate::services::Principal::Anonymous => None,
    };
    let content = audit.wants_content();
    audit.record(AuditRecord {
        time: std::time::SystemTime::now() - ctx.received.elapsed(),
        request_id: ctx.id.as_str().to_owned(),
        tenant: ctx.principal.tenant().to_owned(),
        subject: key.map(|k| k.subject.clone()),
        key_name: key.map(|k| k.key_name.clone()),
        route: "/v1/chat/completions",
        model: ctx.model.as_ref().map(|m| m.name.clone()),
        endpoint: ctx.endpoint.as_ref().map(|e| e.label.clone()),
        status,
        prompt_tokens: usage.map(|u| u.prompt_tokens),
        completion_tokens: usage.map(|u| u.completion_tokens),
        decisions: ctx.decisions.take(),
        duration: ctx.received.elapsed(),
        request_body: content.then(|| ctx.body.raw.clone()),
        answer_body: answer.filter(|_| content),
    });
}

/// One line per request, at the end of the exchange (a stream's last byte, or the client
/// leaving: 499).
fn access_log(ctx: &RequestCtx, status: u16, usage: Option<&Usage>) {
    tracing::info!(
        target: "sluice::access",
        request_id = %ctx.id.as_str(),
        model = %ctx.model.as_ref().map_or("-", |m| m.name.as_str()),
        endpoint = %ctx.endpoint.as_ref().map_or("-", |e| e.label.as_str()),
        status,
        prompt_tokens = usage.map(|u| u.prompt_tokens),
        completion_tokens = usage.map(|u| u.completion_tokens),
        duration_ms = format_args!("{:.3}", ctx.received.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
}

/// Phase: cache write, after an answer ended cleanly (a whole completion, or a stream at
/// `[DONE]`): stored unless its tool calls are not fit to replay. Errors never get here.
fn store_in_cache(
    ctx: &mut RequestCtx,
    key: CacheKey,
    content_type: &str,
    answer: sluice_cache::StoredAnswer,
    usage: Option<&Usage>,
) {
    let (Some(cache), Some(model)) = (ctx.shared.services.cache.clone(), ctx.model.clone()) else {
        return;
    };
    let skip = |reason: &'static str| {
        if let Some(m) = &ctx.shared.cache_metrics {
            m.skipped(reason);
        }
    };
    if let Err(reason) = fit_to_replay(ctx, &answer) {
        tracing::debug!(
            request_id = ctx.id.as_str(),
            reason,
            "cache: answer not stored"
        );
        return skip(reason);
    }
    let entry = Arc::new(sluice_cache::Entry::new(
        ctx.principal.tenant(),
        &model.name,
        content_type,
        usage.map(|u| sluice_cache::SavedUsage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }),
        answer,
    ));
    cache.store(key, entry.clone());
    if let Some(leader) = ctx.cache_leader.take() {
        leader.complete(Some(entry));
    }
}

/// Whether an answer may be served again: its tool calls (if it has any) name offered tools
/// with arguments their schemas accept. `Err` names why not.
fn fit_to_replay(
    ctx: &RequestCtx,
    answer: &sluice_cache::StoredAnswer,
) -> Result<(), &'static str> {
    static TOOL_CALLS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"tool_calls\""));
    let has_calls = |b: &[u8]| TOOL_CALLS.find(b).is_some();
    let completion = match answer {
        sluice_cache::StoredAnswer::Completion(body) if has_calls(body) => body.clone(),
        sluice_cache::StoredAnswer::Stream(events) if events.iter().any(|e| has_calls(e)) => {
            sluice_cache::replay::completion_from_events(events)
                .map_err(|_| "stream_not_replayable")?
        }
        _ => return Ok(()),
    };
    let request: serde_json::Value =
        serde_json::from_slice(&ctx.body.raw).map_err(|_| "request_not_json")?;
    let answer: serde_json::Value =
        serde_json::from_slice(&completion).map_err(|_| "answer_not_json")?;
    sluice_cache::tools::check_tool_calls(&request, &answer).map_err(|e| e.reason())
}

/// A rough prompt-token estimate for admission (about four characters a token). The
/// limiter reconciles with the upstream's usage when the request ends.
fn estimate_prompt_tokens(request: &sluice_api::ChatCompletionRequest) -> u64 {
    let chars: usize = request
        .messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(|c| c.text().len())
        .sum();
    (chars as u64).div_ceil(4)
}

fn invalid(e: RequestError) -> GatewayError {
    GatewayError::invalid_request(e.message, e.param)
}
