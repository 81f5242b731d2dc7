//! [`EmbeddedCache`]: the `CacheStore` of a gateway with `[models.NAME.cache]`: the memory
//! front over the embedded store (the SQLite file in `server.data_dir`), so entries survive
//! a restart. Warm hits are answered from memory; a memory miss reads the file on the
//! blocking pool (never on a worker's thread); writes go to a thread of their own through a
//! bounded queue, so storing never waits.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use sluice_cache::{CacheKey, Entry, MemoryFront, Purge, SingleFlight, SqliteEntries, KEY_SCHEME};
use sluice_store::EmbeddedStore;

use crate::config::ResolvedCache;
use crate::services::{BoxFuture, CacheQuery, CacheStats, CacheStore, CacheStoreCounters};

/// Writes that may wait for the writer thread; beyond, they are dropped (and counted as
/// store errors): a cache is allowed to forget.
const WRITE_QUEUE: usize = 1024;
/// How often the writer drops expired entries from the file.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

pub struct EmbeddedCache {
    front: MemoryFront,
    entries: Arc<SqliteEntries>,
    ttl: Duration,
    writes: SyncSender<(CacheKey, Arc<Entry>)>,
    counters: CacheStoreCounters,
    flights: Arc<SingleFlight>,
}

impl EmbeddedCache {
    /// Opens (creating if need be) the entries table in the data directory's store and
    /// starts the writer thread.
    pub fn open(config: &ResolvedCache) -> Result<EmbeddedCache, crate::state::ServicesError> {
        let store = Arc::new(EmbeddedStore::open(&config.data_dir)?);
        let entries = Arc::new(SqliteEntries::open(store, config.store_bytes)?);
        let counters = CacheStoreCounters::default();
        let (writes, queue) = sync_channel(WRITE_QUEUE);
        let writer = Writer {
            entries: entries.clone(),
            ttl: config.ttl,
            counters: counters.clone(),
        };
        std::thread::Builder::new()
            .name("sluice-cache-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(crate::state::ServicesError::CacheWriter)?;
        Ok(EmbeddedCache {
            front: MemoryFront::new(usize::try_from(config.memory_bytes).unwrap_or(usize::MAX)),
            entries,
            ttl: config.ttl,
            writes,
            counters,
            flights: Arc::default(),
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

impl CacheStore for EmbeddedCache {
    fn lookup<'a>(&'a self, query: CacheQuery<'a>) -> BoxFuture<'a, Option<Arc<Entry>>> {
        Box::pin(async move {
            let now = now_ms();
            if let Some(entry) = self.front.get(query.key) {
                return self.fresh(&entry, query.max_age, now).then_some(entry);
            }
            let entries = self.entries.clone();
            let key = *query.key;
            let found = tokio::task::spawn_blocking(move || entries.get(&key)).await;
            let entry = match found {
                Ok(Ok(Some(entry))) => Arc::new(entry),
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => {
                    self.counters.errors.inc();
                    tracing::warn!(error = %e, "cache: reading the store failed; answered as a miss");
                    return None;
                }
                Err(_) => {
                    self.counters.errors.inc();
                    return None;
                }
            };
            if self.fresh(&entry, None, now) {
                self.front.insert(key, entry.clone());
            }
            self.fresh(&entry, query.max_age, now).then_some(entry)
        })
    }

    fn store(&self, key: CacheKey, entry: Arc<Entry>) {
        self.front.insert(key, entry.clone());
        match self.writes.try_send((key, entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                // Still in memory; the file misses it.
                self.counters.errors.inc();
            }
        }
    }

    fn counters(&self) -> Option<CacheStoreCounters> {
        Some(self.counters.clone())
    }

    fn flights(&self) -> Option<&Arc<SingleFlight>> {
        Some(&self.flights)
    }

    fn stats(&self, tenant: Option<&str>) -> Result<CacheStats, String> {
        let stored = self.entries.stats(tenant).map_err(|e| e.to_string())?;
        let front = self.front.stats();
        Ok(CacheStats {
            entries: stored.entries,
            bytes: stored.bytes,
            memory_entries: front.entries as u64,
            memory_bytes: front.bytes as u64,
        })
    }

    fn purge(&self, purge: &Purge) -> Result<u64, String> {
        let now = now_ms();
        // Memory first: an entry purged from the file must not be answered from memory.
        self.front.purge(|e| purge.matches(e, now));
        self.entries.purge(purge, now).map_err(|e| e.to_string())
    }
}

struct Writer {
    entries: Arc<SqliteEntries>,
    ttl: Duration,
    counters: CacheStoreCounters,
}

impl Writer {
    fn run(self, queue: Receiver<(CacheKey, Arc<Entry>)>) {
        let mut last_expiry = std::time::Instant::now();
        loop {
            match queue.recv_timeout(EXPIRY_INTERVAL) {
                Ok((key, entry)) => match self.entries.put(&key, &entry) {
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
                if let Err(e) = self.entries.expire(self.ttl, now_ms()) {
                    self.counters.errors.inc();
                    tracing::warn!(error = %e, "cache: dropping expired entries failed");
                }
            }
        }
    }
}
