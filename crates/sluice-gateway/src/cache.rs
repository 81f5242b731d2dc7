//! [`GatewayCache`]: the `CacheStore` of a gateway with `[models.NAME.cache]`, over one of two
//! backends the config picks:
//!
//! - embedded (the default): the SQLite file in `server.data_dir`, so entries survive a
//!   restart, with a memory front answering warm hits without I/O;
//! - Redis (`state.redis_url`): entries every gateway on it shares. No memory front: a purge
//!   on one gateway must hold on all of them, and a hit is one `GET`.
//!
//! Reads that leave the process never block a worker's thread: SQLite's run on the blocking
//! pool, Redis's are commands on one multiplexed async connection. Writes go to a thread of
//! their own through a bounded queue, so storing never waits. A backend
//! that fails answers as a miss and is counted: the cache never fails a request.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use sluice_cache::redis::RedisEntries;
use sluice_cache::{
    CacheKey, Entry, KeyError, KeyMemo, MemoryFront, Purge, SingleFlight, SqliteEntries,
    CHAT_COMPLETIONS, KEY_SCHEME,
};
use sluice_store::{EmbeddedStore, RedisStore};

use crate::config::ResolvedCache;
use crate::services::{BoxFuture, CacheQuery, CacheStats, CacheStore, CacheStoreCounters};

/// Writes that may wait for the writer thread; beyond, they are dropped (and counted as
/// store errors): a cache is allowed to forget.
const WRITE_QUEUE: usize = 1024;
/// Request bodies whose keys are remembered (some 64 bytes each).
const REMEMBERED_KEYS: usize = 65_536;
/// How often the writer drops expired entries from the file.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// Where entries are kept.
enum Backend {
    Sqlite(Arc<SqliteEntries>),
    Redis(RedisEntries),
}

impl Backend {
    /// A read: SQLite's on the blocking pool (never on a worker's thread), Redis's on the
    /// shared async connection.
    async fn get(&self, key: CacheKey) -> Result<Option<Entry>, String> {
        match self {
            Backend::Sqlite(s) => {
                let s = s.clone();
                let read = tokio::task::spawn_blocking(move || s.get(&key));
                read.await
                    .map_err(|e| format!("the read was cancelled: {e}"))?
                    .map_err(|e| e.to_string())
            }
            Backend::Redis(r) => r.get(&key).await.map_err(|e| e.to_string()),
        }
    }

    fn put(&self, key: &CacheKey, entry: &Entry) -> Result<(), String> {
        match self {
            Backend::Sqlite(s) => s.put(key, entry).map_err(|e| e.to_string()),
            Backend::Redis(r) => r.put(key, entry).map_err(|e| e.to_string()),
        }
    }

    /// Drops expired entries (Redis expires its own).
    fn expire(&self, ttl: Duration) -> Result<(), String> {
        match self {
            Backend::Sqlite(s) => s.expire(ttl, now_ms()).map(drop).map_err(|e| e.to_string()),
            Backend::Redis(_) => Ok(()),
        }
    }

    fn stats(&self, tenant: Option<&str>) -> Result<sluice_cache::StoreStats, String> {
        match self {
            Backend::Sqlite(s) => s.stats(tenant).map_err(|e| e.to_string()),
            Backend::Redis(r) => r.stats(tenant, now_ms()).map_err(|e| e.to_string()),
        }
    }

    fn purge(&self, purge: &Purge) -> Result<u64, String> {
        match self {
            Backend::Sqlite(s) => s.purge(purge, now_ms()).map_err(|e| e.to_string()),
            Backend::Redis(r) => r.purge(purge, now_ms()).map_err(|e| e.to_string()),
        }
    }
}

pub struct GatewayCache {
    /// Embedded backend only.
    front: Option<MemoryFront>,
    backend: Arc<Backend>,
    ttl: Duration,
    writes: SyncSender<(CacheKey, Arc<Entry>)>,
    counters: CacheStoreCounters,
    flights: Arc<SingleFlight>,
    keys: KeyMemo,
}

impl GatewayCache {
    /// The cache over the backend the config names (Redis when `state.redis_url` is set,
    /// else the data directory's store, created if need be), its writer thread started.
    pub fn open(
        config: &ResolvedCache,
        redis_url: Option<&str>,
    ) -> Result<GatewayCache, crate::state::ServicesError> {
        let (backend, front) = match redis_url {
            Some(url) => {
                let store =
                    Arc::new(RedisStore::connect(url).map_err(crate::state::ServicesError::Redis)?);
                (Backend::Redis(RedisEntries::new(store, config.ttl)), None)
            }
            None => {
                let store = Arc::new(EmbeddedStore::open(&config.data_dir)?);
                let front =
                    MemoryFront::new(usize::try_from(config.memory_bytes).unwrap_or(usize::MAX));
                (
                    Backend::Sqlite(Arc::new(SqliteEntries::open(store, config.store_bytes)?)),
                    Some(front),
                )
            }
        };
        let backend = Arc::new(backend);
        let counters = CacheStoreCounters::default();
        let (writes, queue) = sync_channel(WRITE_QUEUE);
        let writer = Writer {
            backend: backend.clone(),
            ttl: config.ttl,
            counters: counters.clone(),
        };
        std::thread::Builder::new()
            .name("sluice-cache-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(crate::state::ServicesError::CacheWriter)?;
        Ok(GatewayCache {
            front,
            backend,
            ttl: config.ttl,
            writes,
            counters,
            flights: Arc::default(),
            keys: KeyMemo::new(REMEMBERED_KEYS),
        })
    }

    /// Whether `entry` may answer a read that accepts entries up to `max_age` old.
    fn fresh(&self, entry: &Entry, max_age: Option<Duration>, now_ms: u64) -> bool {
        let limit = max_age.map_or(self.ttl, |m| m.min(self.ttl));
        entry.key_scheme == KEY_SCHEME && entry.age_ms(now_ms) <= limit.as_millis() as u64
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl CacheStore for GatewayCache {
    fn lookup<'a>(&'a self, query: CacheQuery<'a>) -> BoxFuture<'a, Option<Arc<Entry>>> {
        Box::pin(async move {
            let now = now_ms();
            if let Some(entry) = self.front.as_ref().and_then(|f| f.get(query.key)) {
                return self.fresh(&entry, query.max_age, now).then_some(entry);
            }
            let key = *query.key;
            let entry = match self.backend.get(key).await {
                Ok(Some(entry)) => Arc::new(entry),
                Ok(None) => return None,
                Err(e) => {
                    self.counters.errors.inc();
                    tracing::warn!(error = %e, "cache: reading the store failed; answered as a miss");
                    return None;
                }
            };
            if let Some(front) = &self.front {
                if self.fresh(&entry, None, now) {
                    front.insert(key, entry.clone());
                }
            }
            self.fresh(&entry, query.max_age, now).then_some(entry)
        })
    }

    fn store(&self, key: CacheKey, entry: Arc<Entry>) {
        if let Some(front) = &self.front {
            front.insert(key, entry.clone());
        }
        match self.writes.try_send((key, entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.errors.inc();
            }
        }
    }

    fn counters(&self) -> Option<CacheStoreCounters> {
        Some(self.counters.clone())
    }

    fn key(&self, tenant: &str, model: &str, body: &[u8]) -> Result<CacheKey, KeyError> {
        self.keys.key(tenant, model, CHAT_COMPLETIONS, body)
    }

    fn flights(&self) -> Option<&Arc<SingleFlight>> {
        Some(&self.flights)
    }

    fn stats(&self, tenant: Option<&str>) -> Result<CacheStats, String> {
        let stored = self.backend.stats(tenant)?;
        let front = self
            .front
            .as_ref()
            .map(MemoryFront::stats)
            .unwrap_or_default();
        Ok(CacheStats {
            entries: stored.entries,
            bytes: stored.bytes,
            memory_entries: front.entries as u64,
            memory_bytes: front.bytes as u64,
        })
    }

    fn purge(&self, purge: &Purge) -> Result<u64, String> {
        let now = now_ms();
        // Memory first: an entry purged from the store must not be answered from memory.
        if let Some(front) = &self.front {
            front.purge(|e| purge.matches(e, now));
        }
        self.backend.purge(purge)
    }
}

struct Writer {
    backend: Arc<Backend>,
    ttl: Duration,
    counters: CacheStoreCounters,
}

impl Writer {
    fn run(self, queue: Receiver<(CacheKey, Arc<Entry>)>) {
        let mut last_expiry = std::time::Instant::now();
        loop {
            match queue.recv_timeout(EXPIRY_INTERVAL) {
                Ok((key, entry)) => match self.backend.put(&key, &entry) {
                    Ok(()) => {
                        self.counters.writes.inc();
                    }
                    Err(e) => {
                        self.counters.errors.inc();
                        tracing::warn!(error = %e, "cache: writing an entry to the store failed");
                    }
                },
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if last_expiry.elapsed() >= EXPIRY_INTERVAL {
                last_expiry = std::time::Instant::now();
                if let Err(e) = self.backend.expire(self.ttl) {
                    self.counters.errors.inc();
                    tracing::warn!(error = %e, "cache: dropping expired entries failed");
                }
            }
        }
    }
}
