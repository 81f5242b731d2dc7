//! [`RedisEntries`]: entries in Redis (`[state] redis_url`), shared by every gateway on it.
//!
//! ```text
//! {sluice}:cache:e:<key hex>   the encoded entry, expiring with the cache's TTL (PX)
//! {sluice}:cache:index         sorted set: key hex, scored by creation time (ms)
//! {sluice}:cache:meta          hash: key hex → "tenant\tmodel\tsize"
//! ```
//! A lookup is one `GET`. A write is one pipelined round trip (`SET … PX`, `ZADD`, `HSET`).
//! The index and the metadata serve the admin view and purges; entries that expired leave
//! them when those next run (the members older than the TTL are dropped then). Redis's own
//! `maxmemory` policy bounds its memory; the TTL bounds an entry's life.

use std::sync::Arc;
use std::time::Duration;

use sluice_store::redis;
use sluice_store::{RedisError, RedisStore};

use crate::entry::Entry;
use crate::key::CacheKey;
use crate::sqlite::{Purge, StoreStats};

const PREFIX: &str = "{sluice}:cache:e:";
const INDEX: &str = "{sluice}:cache:index";
const META: &str = "{sluice}:cache:meta";

/// One entry as the index and the metadata describe it.
struct Indexed {
    hex: String,
    created_ms: u64,
    tenant: String,
    model: String,
    size: u64,
}

pub struct RedisEntries {
    store: Arc<RedisStore>,
    ttl: Duration,
}

/// The commands that delete `hexes`' entries and their index lines.
fn removal(hexes: &[String]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for hex in hexes {
        pipe.cmd("DEL").arg(format!("{PREFIX}{hex}")).ignore();
    }
    pipe.cmd("ZREM").arg(INDEX).arg(hexes).ignore();
    pipe.cmd("HDEL").arg(META).arg(hexes).ignore();
    pipe
}

impl RedisEntries {
    pub fn new(store: Arc<RedisStore>, ttl: Duration) -> RedisEntries {
        RedisEntries { store, ttl }
    }

    /// The entry under `key`: one `GET` on the shared async connection (the request path's
    /// only round trip). One that does not decode is deleted and reads as a miss.
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Entry>, RedisError> {
        let hex = key.hex();
        let bytes: Option<Vec<u8>> = self
            .store
            .command(redis::cmd("GET").arg(format!("{PREFIX}{hex}")))
            .await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        match Entry::decode(&bytes) {
            Ok(entry) => Ok(Some(entry)),
            Err(_) => {
                self.store.pipeline::<()>(&removal(&[hex])).await?;
                Ok(None)
            }
        }
    }

    /// Stores `entry` under `key`, expiring after the TTL.
    pub fn put(&self, key: &CacheKey, entry: &Entry) -> Result<(), RedisError> {
        let hex = key.hex();
        let encoded = entry.encode();
        let meta = format!("{}\t{}\t{}", entry.tenant, entry.model, encoded.len());
        let ttl_ms = self.ttl.as_millis().max(1) as u64;
        self.store.with(|c| {
            redis::pipe()
                .cmd("SET")
                .arg(format!("{PREFIX}{hex}"))
                .arg(encoded)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("ZADD")
                .arg(INDEX)
                .arg(entry.created_unix_ms)
                .arg(&hex)
                .ignore()
                .cmd("HSET")
                .arg(META)
                .arg(&hex)
                .arg(meta)
                .ignore()
                .query::<()>(c)
        })
    }

    fn remove(&self, hexes: &[String]) -> Result<(), RedisError> {
        if hexes.is_empty() {
            return Ok(());
        }
        self.store.with(|c| removal(hexes).query::<()>(c))
    }

    /// Every indexed entry still alive: (key hex, created ms, tenant, model, size). Members
    /// older than the TTL are dropped from the index on the way.
    fn indexed(&self, now_ms: u64) -> Result<Vec<Indexed>, RedisError> {
        let cutoff = now_ms.saturating_sub(self.ttl.as_millis() as u64);
        let expired: Vec<String> = self.store.with(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(INDEX)
                .arg("-inf")
                .arg(format!("({cutoff}"))
                .query(c)
        })?;
        self.remove(&expired)?;
        let members: Vec<(String, u64)> = self.store.with(|c| {
            redis::cmd("ZRANGE")
                .arg(INDEX)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(c)
        })?;
        let meta: std::collections::HashMap<String, String> = self
            .store
            .with(|c| redis::cmd("HGETALL").arg(META).query(c))?;
        Ok(members
            .into_iter()
            .filter_map(|(hex, created_ms)| {
                let m = meta.get(&hex)?;
                let mut parts = m.split('\t');
                let tenant = parts.next()?.to_owned();
                let model = parts.next()?.to_owned();
                let size = parts.next()?.parse().ok()?;
                Some(Indexed {
                    hex,
                    created_ms,
                    tenant,
                    model,
                    size,
                })
            })
            .collect())
    }

    /// Drops what `purge` matches; returns how many.
    pub fn purge(&self, purge: &Purge, now_ms: u64) -> Result<u64, RedisError> {
        let doomed: Vec<String> = self
            .indexed(now_ms)?
            .into_iter()
            .filter(|e| {
                purge.tenant.as_ref().is_none_or(|t| *t == e.tenant)
                    && purge.model.as_ref().is_none_or(|m| *m == e.model)
                    && purge.older_than.is_none_or(|age| {
                        now_ms.saturating_sub(e.created_ms) >= age.as_millis() as u64
                    })
            })
            .map(|e| e.hex)
            .collect();
        self.remove(&doomed)?;
        Ok(doomed.len() as u64)
    }

    /// Entries and bytes, of `tenant` or of all.
    pub fn stats(&self, tenant: Option<&str>, now_ms: u64) -> Result<StoreStats, RedisError> {
        let mut stats = StoreStats::default();
        for e in self.indexed(now_ms)? {
            if tenant.is_none_or(|want| want == e.tenant) {
                stats.entries += 1;
                stats.bytes += e.size;
            }
        }
        Ok(stats)
    }
}
