//! [`ModelPool`]: one model's capacity on this instance, and the admission decision.
//!
//! The coordinator gives the instance a [`Lease`]: its share of each of the model's limits
//! (all of it on a single instance). The pool holds every request to that lease over
//! rolling windows, and divides it among the model's job types:
//!
//! - pool size (slots) = the fewest jobs of average size any limit allows:
//!   `min(lease(d) / average estimate(d))` over the set limits, concurrency counting one
//!   slot per job;
//! - a job type's slots = `max(1, floor(pool × ratio))`: how many of its jobs may be in
//!   flight at once;
//! - a job type's budget in each windowed limit = `max(lease × ratio, its own estimate)`:
//!   what keeps a busy type from using up a window another type is owed.
//!
//! A request is admitted when its job type has a free slot and room in its budget, and the
//! model as a whole has room in every limit (and memory, when budgeted). It reserves its
//! estimate at once (so K concurrent requests cannot all pass before any is counted);
//! [`Reservation::settle`] later puts what it really used in place of the estimate.
//!
//! Waiting is first come, first served within a job type: only the head of a type's queue
//! may take capacity, so a large request is not starved by small ones behind it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::limits::{Dimension, ModelLimits};
use crate::ratios::{self, TypeLoad};
use crate::window::{Millis, RollingWindow, Stamp};

/// The name prefix of a pool that holds an API key's own limits (`key:NAME`).
pub const KEY_POOL_PREFIX: &str = "key:";

/// Buckets per window: a minute window counts in seconds, a day window in 24-minute steps.
const BUCKETS: usize = 60;
/// Flexible ratios are adjusted after this many releases (and on the coordinator's
/// interval, through [`ModelPool::adjust_ratios`]).
pub const ADJUST_AFTER_RELEASES: u32 = 10;

/// The instance's share of each limit, in the limit's own unit. `None`: not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    values: [Option<u64>; 5],
}

impl Lease {
    pub fn get(&self, d: Dimension) -> Option<u64> {
        self.values[index(d)]
    }

    pub fn set(&mut self, d: Dimension, v: Option<u64>) {
        self.values[index(d)] = v;
    }

    /// Each limit the lower of the two (a limit one of them leaves unset is the other's).
    pub fn min(&self, other: &Lease) -> Lease {
        let mut out = Lease::default();
        for d in Dimension::ALL {
            let v = match (self.get(d), other.get(d)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            out.set(d, v);
        }
        out
    }

    /// The whole of every limit: a single instance's lease.
    pub fn whole(limits: &crate::limits::Limits) -> Lease {
        let mut lease = Lease::default();
        for (d, v) in limits.set() {
            lease.set(d, Some(v));
        }
        lease
    }
}

fn index(d: Dimension) -> usize {
    match d {
        Dimension::TokensPerMinute => 0,
        Dimension::RequestsPerMinute => 1,
        Dimension::TokensPerDay => 2,
        Dimension::RequestsPerDay => 3,
        Dimension::Concurrent => 4,
    }
}

/// What one request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Prompt tokens (estimated) plus the most it may generate.
    pub tokens: u64,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusedBy {
    /// A limit of the model (this instance's share of it) has no room.
    Limit(Dimension),
    /// The job type's own slots or budget are taken.
    JobType { job_type: String },
    /// The instance's memory budget for the model is taken.
    Memory,
    /// The request alone is larger than this instance's whole share of a limit: waiting
    /// cannot help.
    TooLarge { dimension: Dimension, share: u64 },
    /// The provider asked for a pause (an upstream 429 with `retry-after`).
    Paused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub model: String,
    pub by: RefusedBy,
    /// When capacity is expected back (sent as `Retry-After`).
    pub retry_after: Duration,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Pools of an API key's own limits are named `key:NAME`.
        if let Some(key) = self.model.strip_prefix(KEY_POOL_PREFIX) {
            return match &self.by {
                RefusedBy::TooLarge { dimension, share } => write!(
                    f,
                    "API key `{key}`: the request alone needs more than the key's {} ({share})",
                    dimension.key()
                ),
                RefusedBy::Limit(d) => {
                    write!(f, "API key `{key}`: its {} limit is reached", d.key())
                }
                _ => write!(f, "API key `{key}`: its limits are reached"),
            };
        }
        let m = &self.model;
        match &self.by {
            RefusedBy::Limit(d) => write!(f, "model `{m}`: its {} limit is reached", d.key()),
            RefusedBy::JobType { job_type } => write!(
                f,
                "model `{m}`: job type `{job_type}` has no free capacity (its share of the model's limits is in use)"
            ),
            RefusedBy::Memory => write!(f, "model `{m}`: its memory budget on this instance is in use"),
            RefusedBy::TooLarge { dimension, share } => write!(
                f,
                "model `{m}`: the request alone needs more than this instance's {} share ({share}); lower max_tokens or raise the limit",
                dimension.key()
            ),
            RefusedBy::Paused => write!(f, "model `{m}`: the provider asked for a pause (429 with retry-after)"),
        }
    }
}

/// Usage in each windowed limit, and requests in flight.
#[derive(Debug)]
struct Usage {
    windows: [Option<RollingWindow>; 4],
    in_flight: u64,
}

impl Usage {
    fn new(lease_dims: impl Iterator<Item = Dimension>) -> Usage {
        let mut windows: [Option<RollingWindow>; 4] = Default::default();
        for d in lease_dims {
            if let Some(span) = d.window() {
                windows[index(d)] = Some(RollingWindow::new(span.as_millis() as u64, BUCKETS));
            }
        }
        Usage {
            windows,
            in_flight: 0,
        }
    }

    fn window(&mut self, d: Dimension) -> Option<&mut RollingWindow> {
        self.windows.get_mut(index(d)).and_then(Option::as_mut)
    }
}

#[derive(Debug)]
struct JobState {
    ratio: f64,
    usage: Usage,
    /// Tickets of waiting requests, first come first.
    queue: VecDeque<u64>,
}

#[derive(Debug)]
struct PoolState {
    lease: Lease,
    model: Usage,
    jobs: Vec<JobState>,
    memory_in_use: u64,
    next_ticket: u64,
    releases_since_adjust: u32,
    paused_until: Option<Millis>,
    /// Tokens and requests of requests that waited or were refused in the last minute:
    /// demand the lease did not meet (over a minute, as usage is, so shares follow demand
    /// without swinging from one heartbeat to the next).
    unmet: [RollingWindow; 2],
    /// What the provider last said remains of its minute's tokens and requests (this
    /// instance's part), less what was admitted since: until the provider's reset, no
    /// request needs more than that.
    provider_room: [Option<ProviderRoom>; 2],
}

#[derive(Debug, Clone, Copy)]
struct ProviderRoom {
    remaining: u64,
    until: Millis,
}

/// One model's capacity on this instance. Shared by every request for the model.
pub struct ModelPool {
    limits: ModelLimits,
    clock: Arc<dyn Clock>,
    state: Mutex<PoolState>,
    /// Capacity came back or the lease changed: waiters look again.
    changed: Notify,
}

impl std::fmt::Debug for ModelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelPool")
            .field("model", &self.limits.model)
            .finish_non_exhaustive()
    }
}

/// What a request holds in each window, to be refunded from the same buckets.
#[derive(Debug, Clone, Copy)]
struct Held {
    stamps: [Option<Stamp>; 4],
    tokens: u64,
    requests: u64,
}

impl ModelPool {
    /// A pool holding the whole of `limits` (a single instance) until the coordinator says
    /// otherwise.
    pub fn new(limits: ModelLimits, clock: Arc<dyn Clock>) -> Arc<ModelPool> {
        let lease = Lease::whole(&limits.limits);
        let dims = || limits.limits.set().map(|(d, _)| d);
        let jobs = limits
            .job_types
            .iter()
            .map(|j| JobState {
                ratio: j.ratio,
                usage: Usage::new(dims()),
                queue: VecDeque::new(),
            })
            .collect();
        let state = PoolState {
            lease,
            model: Usage::new(dims()),
            jobs,
            memory_in_use: 0,
            next_ticket: 0,
            releases_since_adjust: 0,
            paused_until: None,
            unmet: [
                RollingWindow::new(60_000, BUCKETS),
                RollingWindow::new(60_000, BUCKETS),
            ],
            provider_room: [None; 2],
        };
        Arc::new(ModelPool {
            limits,
            clock,
            state: Mutex::new(state),
            changed: Notify::new(),
        })
    }

    pub fn limits(&self) -> &ModelLimits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces this instance's share (from the coordinator). Waiters look again.
    pub fn set_lease(&self, lease: Lease) {
        self.lock().lease = lease;
        self.changed.notify_waiters();
    }

    pub fn lease(&self) -> Lease {
        self.lock().lease
    }

    /// The demand on this pool, for sharing limits by demand: the last minute's usage
    /// (tokens where tokens are limited, else requests) plus what waited or was refused in
    /// that minute.
    pub fn demand(&self) -> u64 {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let tokens = self.limits.limits.tokens_per_minute.is_some()
            || self.limits.limits.tokens_per_day.is_some();
        let (d, i) = if tokens {
            (Dimension::TokensPerMinute, 0)
        } else {
            (Dimension::RequestsPerMinute, 1)
        };
        let used = state.model.window(d).map_or(0, |w| w.total(now));
        used.saturating_add(state.unmet[i].total(now))
    }

    /// The provider said only `remaining` of its minute's tokens (or requests) are left
    /// until `reset`: until then, this instance admits at most its part (`1 / instances`) of
    /// that, less what it admits meanwhile (each answer says anew). A provider shared with
    /// other clients, or limits set higher than the provider's, are how it comes to say
    /// less than the pool expects.
    pub fn provider_remaining(
        &self,
        tokens: bool,
        remaining: u64,
        reset: Duration,
        instances: u64,
    ) {
        let now = self.clock.now_ms();
        self.lock().provider_room[usize::from(!tokens)] = Some(ProviderRoom {
            remaining: remaining / instances.max(1),
            until: now + reset.as_millis() as u64,
        });
    }

    /// Whether the provider's word leaves room for `demand`; if not, when it may.
    fn provider_allows(
        state: &mut PoolState,
        demand: Demand,
        requests: u64,
        now: Millis,
    ) -> Result<(), (Dimension, u64)> {
        for (i, d, amount) in [
            (0, Dimension::TokensPerMinute, demand.tokens),
            (1, Dimension::RequestsPerMinute, requests),
        ] {
            match state.provider_room[i] {
                Some(room) if now >= room.until => state.provider_room[i] = None,
                Some(room) if amount > room.remaining => return Err((d, room.until - now)),
                _ => {}
            }
        }
        Ok(())
    }

    /// No request is admitted before `now + pause` (an upstream 429's `retry-after`).
    pub fn pause(&self, pause: Duration) {
        let until = self.clock.now_ms() + pause.as_millis() as u64;
        let mut state = self.lock();
        state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
    }

    /// Admits a request of job type `job` (an index from [`ModelLimits::job_type`]), waiting
    /// up to the type's `max_wait` for capacity.
    pub async fn admit(
        self: &Arc<Self>,
        job: usize,
        demand: Demand,
    ) -> Result<Reservation, Refusal> {
        self.admit_within(job, demand, self.limits.job_types[job].max_wait)
            .await
    }

    /// As [`ModelPool::admit`], waiting up to `max_wait` instead of the type's own (a model
    /// tried before its fallbacks waits for nothing).
    pub async fn admit_within(
        self: &Arc<Self>,
        job: usize,
        demand: Demand,
        max_wait: Duration,
    ) -> Result<Reservation, Refusal> {
        let deadline = self.clock.now_ms() + max_wait.as_millis() as u64;
        let mut place = Queued::new(self.clone(), job);
        let mut unmet_counted = false;
        loop {
            // Registered before looking, so a release between the look and the wait is
            // not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = self.clock.now_ms();
            let refusal = {
                let mut state = self.lock();
                match self.check(&mut state, job, demand, place.ticket, now) {
                    Ok(()) => {
                        let held = self.reserve(&mut state, job, demand, now);
                        drop(state);
                        place.leave();
                        return Ok(Reservation {
                            pool: self.clone(),
                            job,
                            held,
                            settled: false,
                        });
                    }
                    Err(refusal) => {
                        if !std::mem::replace(&mut unmet_counted, true) {
                            state.unmet[0].add(now, demand.tokens);
                            state.unmet[1].add(now, 1);
                        }
                        refusal
                    }
                }
            };
            let hopeless = matches!(refusal.by, RefusedBy::TooLarge { .. });
            if hopeless || now >= deadline {
                return Err(refusal);
            }
            let look_again_at = deadline.min(now + (refusal.retry_after.as_millis() as u64).max(1));
            let sleep = self.clock.sleep(Duration::from_millis(look_again_at - now));
            tokio::select! {
                () = &mut changed => {}
                () = sleep => {}
            }
        }
    }

    /// Whether `demand` fits now; if not, why and when it may.
    fn check(
        &self,
        state: &mut PoolState,
        job: usize,
        demand: Demand,
        ticket: u64,
        now: Millis,
    ) -> Result<(), Refusal> {
        let refuse = |by, wait_ms: u64| Refusal {
            model: self.limits.model.clone(),
            by,
            retry_after: Duration::from_millis(wait_ms),
        };
        if let Some(until) = state.paused_until {
            if now < until {
                return Err(refuse(RefusedBy::Paused, until - now));
            }
            state.paused_until = None;
        }
        let spec = &self.limits.job_types[job];
        let lease = state.lease;
        let pool = pool_size(&self.limits, &state.lease);
        let ratio = state.jobs[job].ratio;
        let slots = job_slots(pool, ratio);
        // Budgets first: a request too large for a whole share is refused for good (a share
        // of nothing, while coordination is closed, is a limit reached, not a size; nor is
        // a request larger than what the provider says remains).
        for (d, share) in lease_windows(&state.lease) {
            let amount = amount(d, demand, spec.estimated_requests);
            if share == 0 {
                return Err(refuse(RefusedBy::Limit(d), 1_000));
            }
            if amount > share {
                let window = d.window().map_or(0, |w| w.as_millis() as u64);
                return Err(refuse(
                    RefusedBy::TooLarge {
                        dimension: d,
                        share,
                    },
                    window,
                ));
            }
        }
        if state.jobs[job].queue.front().is_some_and(|&t| t != ticket) {
            // Someone of this type came first.
            return Err(refuse(
                RefusedBy::JobType {
                    job_type: spec.name.clone(),
                },
                1_000,
            ));
        }
        if state.jobs[job].usage.in_flight >= slots {
            return Err(refuse(
                RefusedBy::JobType {
                    job_type: spec.name.clone(),
                },
                1_000,
            ));
        }
        if let Some(limit) = state.lease.get(Dimension::Concurrent) {
            if state.model.in_flight >= limit {
                return Err(refuse(RefusedBy::Limit(Dimension::Concurrent), 1_000));
            }
        }
        if let Err((d, wait)) = Self::provider_allows(state, demand, spec.estimated_requests, now) {
            return Err(refuse(RefusedBy::Limit(d), wait));
        }
        if let (Some(budget), Some(memory)) = (self.limits.memory_budget_bytes, spec.memory_bytes) {
            if state.memory_in_use + memory > budget {
                return Err(refuse(RefusedBy::Memory, 1_000));
            }
        }
        for (d, share) in lease_windows(&lease) {
            let amount = amount(d, demand, spec.estimated_requests);
            if let Some(w) = state.model.window(d) {
                let used = w.total(now);
                if used + amount > share {
                    let wait = w.frees_in(now, used + amount - share).unwrap_or(0);
                    return Err(refuse(RefusedBy::Limit(d), wait));
                }
            }
            let own_estimate = amount_estimate(d, spec);
            let budget = ((share as f64 * ratio) as u64).max(own_estimate);
            if let Some(w) = state.jobs[job].usage.window(d) {
                let used = w.total(now);
                if used + amount > budget {
                    let wait = w
                        .frees_in(now, used + amount - budget)
                        .unwrap_or(d.window().map_or(0, |w| w.as_millis() as u64));
                    return Err(refuse(
                        RefusedBy::JobType {
                            job_type: spec.name.clone(),
                        },
                        wait,
                    ));
                }
            }
        }
        Ok(())
    }

    fn reserve(&self, state: &mut PoolState, job: usize, demand: Demand, now: Millis) -> Held {
        let spec = &self.limits.job_types[job];
        let mut stamps = [None; 4];
        let lease = state.lease;
        for (d, _) in lease_windows(&lease) {
            let amount = amount(d, demand, spec.estimated_requests);
            if let Some(w) = state.model.window(d) {
                stamps[index(d)] = Some(w.add(now, amount));
            }
            if let Some(w) = state.jobs[job].usage.window(d) {
                w.add(now, amount);
            }
        }
        for (i, amount) in [(0, demand.tokens), (1, spec.estimated_requests)] {
            if let Some(room) = &mut state.provider_room[i] {
                room.remaining = room.remaining.saturating_sub(amount);
            }
        }
        state.model.in_flight += 1;
        state.jobs[job].usage.in_flight += 1;
        state.memory_in_use += spec.memory_bytes.unwrap_or(0);
        Held {
            stamps,
            tokens: demand.tokens,
            requests: spec.estimated_requests,
        }
    }

    /// Ends a reservation: `used` replaces what was held (`None` keeps it all, for work
    /// whose cost is unknown); its slot and memory come back.
    fn release(&self, job: usize, held: &Held, used: Option<Used>) {
        let now = self.clock.now_ms();
        let adjust = {
            let mut state = self.lock();
            if let Some(used) = used {
                for d in Dimension::ALL.into_iter().filter(|d| d.window().is_some()) {
                    let Some(stamp) = held.stamps[index(d)] else {
                        continue;
                    };
                    let (reserved, actual) = if d.counts_tokens() {
                        (held.tokens, used.tokens)
                    } else {
                        (held.requests, used.requests)
                    };
                    settle_window(state.model.window(d), now, stamp, reserved, actual);
                    settle_window(
                        state.jobs[job].usage.window(d),
                        now,
                        stamp,
                        reserved,
                        actual,
                    );
                }
            }
            state.model.in_flight = state.model.in_flight.saturating_sub(1);
            let j = &mut state.jobs[job];
            j.usage.in_flight = j.usage.in_flight.saturating_sub(1);
            let memory = self.limits.job_types[job].memory_bytes.unwrap_or(0);
            state.memory_in_use = state.memory_in_use.saturating_sub(memory);
            state.releases_since_adjust += 1;
            state.releases_since_adjust >= ADJUST_AFTER_RELEASES
        };
        if adjust {
            self.adjust_ratios();
        }
        self.changed.notify_waiters();
    }

    /// Moves capacity between flexible job types by their load (see [`ratios::adjust`]).
    pub fn adjust_ratios(&self) {
        let mut state = self.lock();
        state.releases_since_adjust = 0;
        let pool = pool_size(&self.limits, &state.lease);
        let loads: Vec<TypeLoad> = state
            .jobs
            .iter()
            .zip(&self.limits.job_types)
            .map(|(j, spec)| TypeLoad {
                ratio: j.ratio,
                flexibility: spec.flexibility,
                load: (j.usage.in_flight + j.queue.len() as u64) as f64
                    / job_slots(pool, j.ratio) as f64,
            })
            .collect();
        let moved = ratios::adjust(&loads);
        let grew = moved
            .iter()
            .zip(&state.jobs)
            .any(|(after, j)| *after > j.ratio);
        for (j, r) in state.jobs.iter_mut().zip(moved) {
            j.ratio = r;
        }
        drop(state);
        if grew {
            self.changed.notify_waiters();
        }
    }

    /// What the pool looks like now: for the admin view, the metrics and the
    /// `x-ratelimit-*` headers.
    pub fn view(&self) -> PoolView {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let lease = state.lease;
        let pool = pool_size(&self.limits, &lease);
        let mut windows = Vec::new();
        for (d, share) in lease_windows(&lease) {
            if let Some(w) = state.model.window(d) {
                let used = w.total(now);
                let empty_in = w.frees_in(now, used).unwrap_or(0);
                windows.push(WindowView {
                    dimension: d,
                    share,
                    used,
                    resets_in: Duration::from_millis(empty_in),
                });
            }
        }
        let jobs = state
            .jobs
            .iter()
            .zip(&self.limits.job_types)
            .map(|(j, spec)| JobView {
                name: spec.name.clone(),
                ratio: j.ratio,
                slots: job_slots(pool, j.ratio),
                in_flight: j.usage.in_flight,
                waiting: j.queue.len() as u64,
            })
            .collect();
        let paused_for = state.paused_until.map_or(Duration::ZERO, |u| {
            Duration::from_millis(u.saturating_sub(now))
        });
        PoolView {
            model: self.limits.model.clone(),
            paused_for,
            lease,
            pool,
            in_flight: state.model.in_flight,
            memory: self.limits.memory_budget_bytes.map(|budget| MemoryView {
                budget,
                in_use: state.memory_in_use,
            }),
            windows,
            jobs,
        }
    }
}

fn settle_window(
    window: Option<&mut RollingWindow>,
    now: Millis,
    stamp: Stamp,
    reserved: u64,
    actual: u64,
) {
    let Some(w) = window else { return };
    if actual < reserved {
        w.refund(now, stamp, reserved - actual);
    } else if actual > reserved {
        // Used more than estimated: counted now, in the newest bucket.
        w.add(now, actual - reserved);
    }
}

/// The windowed limits of a lease (every set one but concurrency).
fn lease_windows(lease: &Lease) -> impl Iterator<Item = (Dimension, u64)> + '_ {
    Dimension::ALL
        .into_iter()
        .filter(|d| d.window().is_some())
        .filter_map(|d| lease.get(d).map(|v| (d, v)))
}

fn amount(d: Dimension, demand: Demand, requests: u64) -> u64 {
    if d.counts_tokens() {
        demand.tokens
    } else {
        requests
    }
}

fn amount_estimate(d: Dimension, spec: &crate::limits::JobType) -> u64 {
    if d.counts_tokens() {
        spec.estimated_tokens
    } else {
        spec.estimated_requests
    }
}

/// The fewest jobs of average size any limit of the lease allows.
pub fn pool_size(limits: &ModelLimits, lease: &Lease) -> u64 {
    Dimension::ALL
        .into_iter()
        .filter_map(|d| {
            let share = lease.get(d)?;
            Some(match d {
                Dimension::Concurrent => share,
                _ => (share as f64 / limits.average_estimate(d).max(1.0)).floor() as u64,
            })
        })
        .min()
        .unwrap_or(u64::MAX)
}

/// A job type's slots: its ratio of the pool, at least one.
pub fn job_slots(pool: u64, ratio: f64) -> u64 {
    ((pool as f64 * ratio).floor() as u64).max(1)
}

/// A request's place in its job type's queue while it waits; leaving (admitted, refused,
/// or the request dropped while waiting) takes it out and lets the next one look.
struct Queued {
    pool: Arc<ModelPool>,
    job: usize,
    ticket: u64,
    queued: bool,
}

impl Queued {
    fn new(pool: Arc<ModelPool>, job: usize) -> Queued {
        let ticket = {
            let mut state = pool.lock();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.jobs[job].queue.push_back(ticket);
            ticket
        };
        Queued {
            pool,
            job,
            ticket,
            queued: true,
        }
    }

    fn leave(&mut self) {
        if !self.queued {
            return;
        }
        self.queued = false;
        let mut state = self.pool.lock();
        let queue = &mut state.jobs[self.job].queue;
        if let Some(at) = queue.iter().position(|&t| t == self.ticket) {
            queue.remove(at);
        }
        drop(state);
        self.pool.changed.notify_waiters();
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.leave();
    }
}

/// What a finished request really used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub tokens: u64,
    pub requests: u64,
}

/// Capacity held by one admitted request. Settled exactly once: by [`Reservation::settle`],
/// or when dropped unsettled, keeping the whole estimate (work whose cost is unknown is
/// charged in full, never refunded).
pub struct Reservation {
    pool: Arc<ModelPool>,
    job: usize,
    held: Held,
    settled: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("model", &self.pool.limits.model)
            .field("tokens", &self.held.tokens)
            .finish_non_exhaustive()
    }
}

impl Reservation {
    /// Replaces the estimate with what the request used: less is refunded to the windows
    /// it was taken from, more is charged now.
    pub fn settle(mut self, used: Used) {
        self.settled = true;
        self.pool.release(self.job, &self.held, Some(used));
    }

    /// The request never reached the provider: everything comes back.
    pub fn cancel(self) {
        self.settle(Used {
            tokens: 0,
            requests: 0,
        });
    }

    pub fn reserved_tokens(&self) -> u64 {
        self.held.tokens
    }

    pub fn pool(&self) -> &Arc<ModelPool> {
        &self.pool
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.pool.release(self.job, &self.held, None);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WindowView {
    pub dimension: Dimension,
    /// This instance's share of the limit.
    pub share: u64,
    pub used: u64,
    /// Until everything now in the window has left it.
    pub resets_in: Duration,
}

impl WindowView {
    pub fn remaining(&self) -> u64 {
        self.share.saturating_sub(self.used)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub name: String,
    pub ratio: f64,
    pub slots: u64,
    pub in_flight: u64,
    pub waiting: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub model: String,
    /// How much longer the provider's pause lasts (zero: not paused).
    pub paused_for: Duration,
    pub lease: Lease,
    pub pool: u64,
    pub in_flight: u64,
    /// The instance's memory budget for the model, when it has one, and how much of it the
    /// jobs in flight hold.
    pub memory: Option<MemoryView>,
    pub windows: Vec<WindowView>,
    pub jobs: Vec<JobView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryView {
    pub budget: u64,
    pub in_use: u64,
}

impl PoolView {
    /// The window of `tokens` (or requests) with the least room left: what the
    /// `x-ratelimit-*-tokens` (`-requests`) headers describe.
    pub fn tightest(&self, tokens: bool) -> Option<&WindowView> {
        self.windows
            .iter()
            .filter(|w| w.dimension.counts_tokens() == tokens)
            .min_by_key(|w| w.remaining())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::tests::{job, model};
    use crate::limits::{Flexibility, Limits};
    use crate::TokioClock;

    fn tpm(n: u64) -> Limits {
        Limits {
            tokens_per_minute: Some(n),
            ..Limits::default()
        }
    }

    fn pool(limits: Limits, jobs: Vec<crate::JobType>) -> Arc<ModelPool> {
        ModelPool::new(
            model(limits, jobs).validate().unwrap(),
            Arc::new(TokioClock::new()),
        )
    }

    fn waits(job: crate::JobType, wait: Duration) -> crate::JobType {
        crate::JobType {
            max_wait: wait,
            ..job
        }
    }

    const T: Demand = Demand { tokens: 10_000 };

    async fn admit_now(p: &Arc<ModelPool>, job: usize, d: Demand) -> Result<Reservation, Refusal> {
        p.admit(job, d).await
    }

    #[test]
    fn the_pool_is_the_fewest_jobs_any_limit_allows() {
        let m = |limits| model(limits, vec![job("a", 10_000, 1.0, Flexibility::Fixed)]);
        let lease = |m: &ModelLimits| Lease::whole(&m.limits);
        let t = m(tpm(100_000));
        assert_eq!(pool_size(&t, &lease(&t)), 10);
        let r = m(Limits {
            requests_per_minute: Some(7),
            ..Limits::default()
        });
        assert_eq!(pool_size(&r, &lease(&r)), 7);
        let mixed = m(Limits {
            tokens_per_minute: Some(100_000),
            requests_per_minute: Some(60),
            max_concurrent: Some(4),
            ..Limits::default()
        });
        assert_eq!(pool_size(&mixed, &lease(&mixed)), 4);
        // A share of a third of the tokens: 3 slots.
        let mut third = lease(&t);
        third.set(Dimension::TokensPerMinute, Some(33_333));
        assert_eq!(pool_size(&t, &third), 3);
        assert_eq!(job_slots(10, 0.25), 2);
        assert_eq!(job_slots(3, 0.1), 1, "every type gets at least one slot");
    }

    #[tokio::test(start_paused = true)]
    async fn exact_capacity_passes_and_one_more_is_refused_then_admitted_after_a_minute() {
        let p = pool(
            tpm(100_000),
            vec![job("a", 10_000, 1.0, Flexibility::Fixed)],
        );
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(admit_now(&p, 0, T).await.unwrap());
        }
        let refused = admit_now(&p, 0, T).await.unwrap_err();
        assert_eq!(
            refused.by,
            RefusedBy::JobType {
                job_type: "a".into()
            }
        );
        // Slots come back when requests finish; the minute's tokens do not.
        for r in held.drain(..) {
            r.settle(Used {
                tokens: 10_000,
                requests: 1,
            });
        }
        let refused = admit_now(&p, 0, T).await.unwrap_err();
        assert_eq!(refused.by, RefusedBy::Limit(Dimension::TokensPerMinute));
        assert!(refused.retry_after > Duration::from_secs(59), "{refused:?}");
        assert!(
            refused.retry_after <= Duration::from_secs(61),
            "{refused:?}"
        );
        assert!(refused
            .to_string()
            .contains("tokens_per_minute limit is reached"));
        tokio::time::advance(refused.retry_after).await;
        admit_now(&p, 0, T).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_budget_bounds_the_jobs_held_at_once_by_each_types_memory() {
        let with_memory = |name, bytes| crate::JobType {
            memory_bytes: Some(bytes),
            ..job(name, 100, 0.5, Flexibility::Fixed)
        };
        let limits = ModelLimits {
            memory_budget_bytes: Some(3_000),
            ..model(
                Limits {
                    max_concurrent: Some(10),
                    ..Limits::default()
                },
                vec![with_memory("small", 1_000), with_memory("large", 2_000)],
            )
        };
        let p = ModelPool::new(limits.validate().unwrap(), Arc::new(TokioClock::new()));
        let d = Demand { tokens: 100 };
        let large = admit_now(&p, 1, d).await.unwrap();
        let small = admit_now(&p, 0, d).await.unwrap();
        assert_eq!(
            p.view().memory,
            Some(MemoryView {
                budget: 3_000,
                in_use: 3_000
            })
        );
        // Slots are free in both types (five each); memory is not.
        let refused = admit_now(&p, 0, d).await.unwrap_err();
        assert_eq!(refused.by, RefusedBy::Memory);
        assert!(refused.to_string().contains("memory budget"), "{refused}");
        // A finished large job makes room for two small ones, not three.
        large.cancel();
        let _a = admit_now(&p, 0, d).await.unwrap();
        let _b = admit_now(&p, 0, d).await.unwrap();
        assert_eq!(admit_now(&p, 0, d).await.unwrap_err().by, RefusedBy::Memory);
        small.settle(Used {
            tokens: 100,
            requests: 1,
        });
        assert_eq!(p.view().memory.unwrap().in_use, 2_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_admitted_when_a_refund_frees_room_and_gives_up_at_max_wait() {
        let p = pool(
            tpm(20_000),
            vec![waits(
                job("a", 10_000, 1.0, Flexibility::Fixed),
                Duration::from_secs(5),
            )],
        );
        let first = admit_now(&p, 0, T).await.unwrap();
        let _second = admit_now(&p, 0, T).await.unwrap();
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.admit(0, Demand { tokens: 9_000 }).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        assert_eq!(p.view().jobs[0].waiting, 1);
        // The first used 1 000 of its 10 000: 9 000 back, and its slot.
        first.settle(Used {
            tokens: 1_000,
            requests: 1,
        });
        let third = waiter.await.unwrap().unwrap();
        assert_eq!(p.view().windows[0].used, 20_000);
        // Nothing more comes back: the next waiter gives up after max_wait (both slots
        // are taken, and the minute's tokens too).
        let started = tokio::time::Instant::now();
        let refused = p.admit(0, T).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(
            refused.by,
            RefusedBy::JobType {
                job_type: "a".into()
            }
        );
        assert_eq!(p.view().jobs[0].waiting, 0);
        drop(third);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_first_come_first_served_and_a_client_that_leaves_leaves_the_queue() {
        let p = pool(
            Limits {
                max_concurrent: Some(1),
                ..Limits::default()
            },
            vec![waits(
                job("a", 0, 1.0, Flexibility::Fixed),
                Duration::from_secs(60),
            )],
        );
        let holder = admit_now(&p, 0, T).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..4 {
            let (p, tx) = (p.clone(), tx.clone());
            waiters.push(tokio::spawn(async move {
                let r = p.admit(0, T).await.unwrap();
                tx.send(i).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(r);
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The second in line goes away: the others keep their order.
        waiters[1].abort();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(p.view().jobs[0].waiting, 3);
        drop(holder);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, vec![0, 2, 3]);
        for w in waiters {
            let _ = w.await;
        }
        assert_eq!(p.view().jobs[0].waiting, 0);
        assert_eq!(p.view().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_type_keeps_its_share_while_another_floods() {
        let p = pool(
            tpm(100_000),
            vec![
                job("interactive", 10_000, 0.3, Flexibility::Fixed),
                job("batch", 10_000, 0.7, Flexibility::Fixed),
            ],
        );
        let mut batch = Vec::new();
        while let Ok(r) = admit_now(&p, 1, T).await {
            batch.push(r);
        }
        assert_eq!(batch.len(), 7);
        // Batch finishes and tries again: its budget (70 000 a minute) is spent.
        for r in batch.drain(..) {
            r.settle(Used {
                tokens: 10_000,
                requests: 1,
            });
        }
        let refused = admit_now(&p, 1, T).await.unwrap_err();
        assert_eq!(
            refused.by,
            RefusedBy::JobType {
                job_type: "batch".into()
            }
        );
        // Interactive still has all of its own.
        for _ in 0..3 {
            batch.push(admit_now(&p, 0, T).await.unwrap());
        }
        assert!(admit_now(&p, 0, T).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_flexible_type_lends_its_slots_to_a_busy_one() {
        let p = pool(
            Limits {
                max_concurrent: Some(20),
                ..Limits::default()
            },
            vec![
                waits(
                    job("a", 1, 0.5, Flexibility::Flexible),
                    Duration::from_secs(60),
                ),
                job("b", 1, 0.5, Flexibility::Flexible),
            ],
        );
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(admit_now(&p, 0, T).await.unwrap());
        }
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.admit(0, T).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!waiter.is_finished());
        p.adjust_ratios();
        let view = p.view();
        assert!(view.jobs[0].slots > 10, "{view:?}");
        assert!(view.jobs[1].slots < 10, "{view:?}");
        held.push(waiter.await.unwrap().unwrap());
        assert!((view.jobs[0].ratio + view.jobs[1].ratio - 1.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn refunds_overages_cancellations_and_unsettled_drops() {
        let p = pool(
            Limits {
                tokens_per_minute: Some(100_000),
                requests_per_minute: Some(100),
                ..Limits::default()
            },
            vec![job("a", 10_000, 1.0, Flexibility::Fixed)],
        );
        let used = |p: &ModelPool| {
            let v = p.view();
            (v.windows[0].used, v.windows[1].used)
        };
        admit_now(&p, 0, T).await.unwrap().settle(Used {
            tokens: 2_000,
            requests: 1,
        });
        assert_eq!(used(&p), (2_000, 1));
        admit_now(&p, 0, T).await.unwrap().settle(Used {
            tokens: 15_000,
            requests: 1,
        });
        assert_eq!(used(&p), (17_000, 2));
        // Never reached the provider: everything back, the request too.
        admit_now(&p, 0, T).await.unwrap().cancel();
        assert_eq!(used(&p), (17_000, 2));
        // Dropped without a word (its cost unknown): the estimate stays.
        drop(admit_now(&p, 0, T).await.unwrap());
        assert_eq!(used(&p), (27_000, 3));
        assert_eq!(p.view().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_concurrent_requests_passes_only_what_the_limit_allows() {
        let p = pool(tpm(100_000), vec![job("a", 7_000, 1.0, Flexibility::Fixed)]);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.admit(0, Demand { tokens: 7_000 }).await })
            })
            .collect();
        let mut admitted = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await.unwrap() {
                admitted.push(r);
            }
        }
        assert_eq!(admitted.len(), 14);
        assert_eq!(p.view().windows[0].used, 98_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_share_is_refused_without_waiting_and_a_pause_holds() {
        let p = pool(
            tpm(10_000),
            vec![waits(
                job("a", 1_000, 1.0, Flexibility::Fixed),
                Duration::from_secs(30),
            )],
        );
        let started = tokio::time::Instant::now();
        let refused = p.admit(0, Demand { tokens: 10_001 }).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(matches!(
            refused.by,
            RefusedBy::TooLarge { share: 10_000, .. }
        ));
        assert!(
            refused.to_string().contains("lower max_tokens"),
            "{refused}"
        );

        p.pause(Duration::from_secs(10));
        let admitted = p.admit(0, Demand { tokens: 1_000 }).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(admitted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_smaller_lease_holds_back_and_a_larger_one_wakes_waiters() {
        let p = pool(
            tpm(100_000),
            vec![waits(
                job("a", 10_000, 1.0, Flexibility::Fixed),
                Duration::from_secs(30),
            )],
        );
        let mut lease = p.lease();
        lease.set(Dimension::TokensPerMinute, Some(10_000));
        p.set_lease(lease);
        let _one = admit_now(&p, 0, T).await.unwrap();
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.admit(0, T).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!waiter.is_finished());
        lease.set(Dimension::TokensPerMinute, Some(50_000));
        p.set_lease(lease);
        waiter.await.unwrap().unwrap();
        assert_eq!(p.view().pool, 5);
    }
}
