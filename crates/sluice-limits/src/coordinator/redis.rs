//! [`RedisCoordinator`]: the pools of every instance on one Redis add up to the limits.
//!
//! Each instance heartbeats (every [`FleetSettings::heartbeat`], and at once when told the
//! membership changed): one `EVALSHA` of `allocate.lua` registers it, drops instances silent
//! for longer than the timeout, records its usage in each model's windows and its demand,
//! and answers its lease of each limit. Leases follow demand (a busy instance gets more of a
//! limit than an idle one) and never add up to more than the limit, counting what instances
//! that went away still have in the windows.
//!
//! An instance applies a smaller lease at once and a larger one only when the next heartbeat
//! confirms it (the lower of the last two allocations), so that by the time it grows, every
//! other instance has had a heartbeat to shrink: leases in force never add up to more than the
//! limit while they move.
//!
//! When Redis cannot be reached the instance does what [`RedisFailure`] says (by default it
//! keeps its last lease, never more), counts and logs it, and takes its part again as soon as
//! Redis answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sluice_store::{redis, RedisStore};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Coordinator, CoordinatorState, Degraded};
use crate::limits::Dimension;
use crate::pool::{Lease, ModelPool};

const INSTANCES: &str = "{sluice}:limits:instances";
const REPORTS: &str = "{sluice}:limits:reports";
const PAUSES: &str = "{sluice}:limits:pauses";
/// Membership changes and pauses are published here.
const EVENTS: &str = "{sluice}:limits:events";
/// How often a failure is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What an instance does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// Keep the last lease, never more; after the instance timeout (when the others count
    /// this instance gone and share its part), fall to the conservative share.
    FailStatic,
    /// Each instance takes the whole of every limit: traffic flows, the limits may be
    /// exceeded up to the number of instances.
    FailOpen,
    /// Admit nothing until Redis answers.
    FailClosed,
}

impl RedisFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisFailure::FailStatic => "fail_static",
            RedisFailure::FailOpen => "fail_open",
            RedisFailure::FailClosed => "fail_closed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Unique per process: what the other instances know this one by.
    pub instance_id: String,
    pub heartbeat: Duration,
    /// An instance silent this long is gone; its part is shared among the others.
    pub instance_timeout: Duration,
    pub failure: RedisFailure,
    /// How many instances may share the limits at most: an instance that cannot reach Redis
    /// when it starts takes the limits divided by this.
    pub expected_max_instances: u64,
}

struct Pools {
    ordered: Vec<Arc<ModelPool>>,
    by_name: HashMap<String, usize>,
}

struct CoordinatorInner {
    instances: u64,
    /// Per pool, the allocation of the last successful heartbeat.
    last: Vec<Option<Lease>>,
    degraded: Option<Degraded>,
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
}

pub struct RedisCoordinator {
    store: Arc<RedisStore>,
    /// The pools coordinated, in a fixed order (the allocation's reply follows it); API
    /// keys' pools are added as keys are first used.
    pools: std::sync::RwLock<Pools>,
    settings: FleetSettings,
    script: redis::Script,
    inner: Mutex<CoordinatorInner>,
    /// Wakes the heartbeat loop early (a membership change was published).
    wake: Arc<Notify>,
    /// Heartbeats that failed (for the metrics).
    errors: AtomicU64,
}

impl RedisCoordinator {
    /// Starts coordinating `pools` through `store`: each pool takes the conservative share
    /// until the first heartbeat (at once, on a task) gives it its lease. The heartbeats and
    /// the subscription run on tasks of the current tokio runtime for as long as the
    /// returned coordinator lives. Call from within a runtime.
    pub fn start(
        store: Arc<RedisStore>,
        pools: &HashMap<String, Arc<ModelPool>>,
        settings: FleetSettings,
    ) -> Arc<RedisCoordinator> {
        let mut names: Vec<&String> = pools.keys().collect();
        names.sort();
        let ordered: Vec<Arc<ModelPool>> = names.iter().map(|n| pools[*n].clone()).collect();
        let by_name = names
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).clone(), i))
            .collect();
        let coordinator = Arc::new(RedisCoordinator {
            store,
            pools: std::sync::RwLock::new(Pools { ordered, by_name }),
            script: redis::Script::new(include_str!("allocate.lua")),
            inner: Mutex::new(CoordinatorInner {
                instances: 1,
                last: vec![None; names.len()],
                degraded: None,
                failing_since: None,
                last_logged: None,
            }),
            wake: Arc::new(Notify::new()),
            errors: AtomicU64::new(0),
            settings,
        });
        for pool in coordinator.snapshot() {
            pool.set_lease(coordinator.conservative(&pool));
        }
        let weak = Arc::downgrade(&coordinator);
        let every = coordinator.settings.heartbeat;
        tokio::spawn(heartbeats(weak.clone(), coordinator.wake.clone(), every));
        tokio::spawn(subscription(weak));
        coordinator
    }

    /// Heartbeats that failed since the start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The pools now, in their order.
    fn snapshot(&self) -> Vec<Arc<ModelPool>> {
        self.pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .ordered
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CoordinatorInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limits divided by the most instances expected.
    fn conservative(&self, pool: &ModelPool) -> Lease {
        let n = self.settings.expected_max_instances.max(1);
        let mut lease = Lease::default();
        for (d, v) in pool.limits().limits.set() {
            lease.set(d, Some(v / n));
        }
        lease
    }

    /// One heartbeat: report, get the leases, apply them (or handle the failure).
    async fn beat(&self) {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(INSTANCES)
            .key(REPORTS)
            .key(PAUSES)
            .arg(now_ms)
            .arg(&self.settings.instance_id)
            .arg(self.settings.instance_timeout.as_millis() as u64)
            .arg(EVENTS);
        let pools = self.snapshot();
        invocation.arg(pools.len());
        for pool in &pools {
            let view = pool.view();
            let limits = &pool.limits().limits;
            invocation.arg(&view.model);
            for d in Dimension::ALL {
                invocation.arg(limits.get(d).map_or(-1, |v| v as i64));
            }
            for d in Dimension::ALL.into_iter().filter(|d| d.window().is_some()) {
                let used = view.windows.iter().find(|w| w.dimension == d);
                invocation.arg(used.map_or(0, |w| w.used));
            }
            invocation.arg(pool.demand());
        }
        match self.store.script::<Vec<i64>>(&invocation).await {
            Ok(reply) => self.apply(&pools, &reply),
            Err(e) => self.failed(e.to_string()),
        }
    }

    fn apply(&self, pools: &[Arc<ModelPool>], reply: &[i64]) {
        let per_pool = 6;
        if reply.len() != 2 + per_pool * pools.len() {
            self.failed(format!(
                "the allocation script answered {} values for {} models; is another sluice version sharing this Redis?",
                reply.len(),
                pools.len()
            ));
            return;
        }
        let mut inner = self.lock();
        if inner.last.len() < pools.len() {
            inner.last.resize(pools.len(), None);
        }
        inner.instances = reply[0].max(1) as u64;
        if inner.degraded.take().is_some() {
            tracing::info!("limits: Redis answers again; leases follow the fleet's allocation");
        }
        inner.failing_since = None;
        for (i, pool) in pools.iter().enumerate() {
            let values = &reply[2 + i * per_pool..2 + (i + 1) * per_pool];
            let mut lease = Lease::default();
            for (d, v) in Dimension::ALL.into_iter().zip(values) {
                lease.set(d, (*v >= 0).then_some(*v as u64));
            }
            // Grow only once two heartbeats agree; shrink at once.
            let previous = inner.last[i].unwrap_or_else(|| pool.lease());
            inner.last[i] = Some(lease);
            pool.set_lease(lease.min(&previous));
            let paused_until_ms = values[5];
            if paused_until_ms > 0 {
                let now_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                if paused_until_ms > now_ms {
                    pool.pause(Duration::from_millis((paused_until_ms - now_ms) as u64));
                }
            }
        }
    }

    fn failed(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut inner = self.lock();
        let since = *inner.failing_since.get_or_insert(now);
        if inner.degraded.is_none() {
            inner.degraded = Some(Degraded {
                since: SystemTime::now(),
                mode: self.settings.failure,
                error: error.clone(),
            });
        }
        if inner
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            inner.last_logged = Some(now);
            tracing::warn!(error = %error, mode = self.settings.failure.as_str(), "limits: cannot reach Redis to coordinate the pools");
        }
        // A grow not yet confirmed is not made.
        for last in inner.last.iter_mut() {
            *last = None;
        }
        drop(inner);
        for pool in &self.snapshot() {
            let lease = match self.settings.failure {
                RedisFailure::FailStatic => {
                    let current = pool.lease();
                    if now.duration_since(since) > self.settings.instance_timeout {
                        // The others count this instance gone and share its part.
                        current.min(&self.conservative(pool))
                    } else {
                        current
                    }
                }
                RedisFailure::FailOpen => Lease::whole(&pool.limits().limits),
                RedisFailure::FailClosed => {
                    let mut closed = Lease::default();
                    for (d, _) in pool.limits().limits.set() {
                        closed.set(d, Some(0));
                    }
                    closed
                }
            };
            pool.set_lease(lease);
        }
    }

    fn pool(&self, name: &str) -> Option<Arc<ModelPool>> {
        let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
        pools.by_name.get(name).map(|&i| pools.ordered[i].clone())
    }

    fn on_event(&self, message: &str) {
        let mut parts = message.split('\t');
        match parts.next() {
            Some("members") => self.wake.notify_one(),
            Some("pause") => {
                let (Some(model), Some(until)) = (parts.next(), parts.next()) else {
                    return;
                };
                let Ok(until) = until.parse::<u64>() else {
                    return;
                };
                let Some(pool) = self.pool(model) else {
                    return;
                };
                let now_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                if until > now_ms {
                    pool.pause(Duration::from_millis(until - now_ms));
                }
            }
            _ => {}
        }
    }
}

impl Coordinator for RedisCoordinator {
    fn state(&self) -> CoordinatorState {
        let inner = self.lock();
        CoordinatorState {
            kind: "redis",
            instances: inner.instances,
            degraded: inner.degraded.clone(),
            errors: self.errors(),
        }
    }

    fn add_pool(&self, pool: Arc<ModelPool>) {
        // Until its first heartbeat, an even split among the instances alive at the last
        // one: every instance that meets the pool takes no more than that, so together they
        // stay within its limits (while Redis is away, the conservative share).
        let instances = {
            let inner = self.lock();
            if inner.degraded.is_some() {
                self.settings.expected_max_instances
            } else {
                inner.instances
            }
        };
        let mut lease = Lease::default();
        for (d, v) in pool.limits().limits.set() {
            lease.set(d, Some(v / instances.max(1)));
        }
        pool.set_lease(lease);
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        let name = pool.limits().model.clone();
        if pools.by_name.contains_key(&name) {
            return;
        }
        let at = pools.ordered.len();
        pools.by_name.insert(name, at);
        pools.ordered.push(pool);
        drop(pools);
        self.wake.notify_one();
    }

    fn pause(&self, model: &str, pause: Duration) {
        let Some(pool) = self.pool(model) else {
            return;
        };
        pool.pause(pause);
        let until_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            + pause.as_millis() as u64;
        // Told to the others (and to instances that start later) off the request path.
        let model = model.to_owned();
        let store = self.store.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let mut pipe = redis::pipe();
                pipe.cmd("HSET")
                    .arg(PAUSES)
                    .arg(&model)
                    .arg(until_ms)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(EVENTS)
                    .arg(format!("pause\t{model}\t{until_ms}"))
                    .ignore();
                if let Err(e) = store.pipeline::<()>(&pipe).await {
                    tracing::warn!(error = %e, "limits: could not tell the other instances of a provider's pause");
                }
            });
        }
    }
}

/// Beats every `every`, or at once when woken, while the coordinator lives (the task holds
/// it only during a beat, so dropping the coordinator ends the task).
async fn heartbeats(
    coordinator: std::sync::Weak<RedisCoordinator>,
    wake: Arc<Notify>,
    every: Duration,
) {
    loop {
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let Some(c) = coordinator.upgrade() else {
            return;
        };
        c.beat().await;
        drop(c);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut woken => {}
        }
    }
}

/// Follows the fleet's published events while the coordinator lives. Events only hasten
/// what heartbeats do anyway (the pauses are read on every heartbeat too), so one missed is
/// late, not lost; a subscription that is gone for good would make every event late, so a
/// quiet one is asked for a pong, and a new one is followed by a heartbeat at once to catch
/// up with what was published meanwhile.
async fn subscription(coordinator: std::sync::Weak<RedisCoordinator>) {
    use futures_util::StreamExt;
    let mut resubscribed = false;
    loop {
        let Some(c) = coordinator.upgrade() else {
            return;
        };
        let store = c.store.clone();
        let retry = c.settings.heartbeat;
        // As long as an instance may stay silent before the others count it gone: a
        // connection whose peer vanished without closing it is found about as fast.
        let quiet = c.settings.instance_timeout;
        drop(c);
        match store.subscribe(EVENTS).await {
            Ok(pubsub) => {
                let (mut sink, mut messages) = pubsub.split();
                if resubscribed {
                    if let Some(c) = coordinator.upgrade() {
                        c.wake.notify_one();
                    }
                }
                resubscribed = true;
                loop {
                    let message = match tokio::time::timeout(quiet, messages.next()).await {
                        Ok(Some(message)) => message,
                        Ok(None) => break,
                        Err(_) => {
                            let pong = tokio::time::timeout(
                                sluice_store::IO_TIMEOUT,
                                sink.ping::<redis::Value>(),
                            )
                            .await;
                            if matches!(pong, Ok(Ok(_))) {
                                continue;
                            }
                            tracing::warn!(
                                "limits: the subscription to the fleet's events did not answer a ping within {:?}; subscribing again",
                                sluice_store::IO_TIMEOUT
                            );
                            break;
                        }
                    };
                    let Some(c) = coordinator.upgrade() else {
                        return;
                    };
                    if let Ok(text) = message.get_payload::<String>() {
                        c.on_event(&text);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "limits: subscribing to the fleet's events failed; retrying");
            }
        }
        tokio::time::sleep(retry).await;
    }
}
