//! [`SqliteEntries`]: entries in the gateway's embedded store (the SQLite file in
//! `server.data_dir`, shared with the key store), so they survive a restart.
//!
//! One row per key, with the tenant, model, creation time and size beside the encoded
//! entry, so expiry, the byte bound, purges and the admin view are single statements. Beyond
//! the byte bound the oldest entries go first (the memory front in front of it keeps the
//! recently used ones).

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use sluice_store::{EmbeddedStore, StoreError};

use crate::entry::Entry;
use crate::key::CacheKey;

const SUBSYSTEM: &str = "cache";
const MIGRATIONS: &[&str] = &["CREATE TABLE cache_entries (
         key        BLOB PRIMARY KEY,
         tenant     TEXT NOT NULL,
         model      TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         size       INTEGER NOT NULL,
         entry      BLOB NOT NULL
     );
     CREATE INDEX cache_entries_by_tenant ON cache_entries (tenant, model);
     CREATE INDEX cache_entries_by_age ON cache_entries (created_ms);"];

/// Which entries a purge removes: all that match every filter given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    pub tenant: Option<String>,
    pub model: Option<String>,
    /// Entries stored at least this long ago.
    pub older_than: Option<Duration>,
}

impl Purge {
    /// Whether `entry` (created at its time, seen at `now_ms`) is to go.
    pub fn matches(&self, entry: &Entry, now_ms: u64) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == entry.tenant)
            && self.model.as_ref().is_none_or(|m| *m == entry.model)
            && self
                .older_than
                .is_none_or(|age| entry.age_ms(now_ms) >= age.as_millis() as u64)
    }
}

/// What a store holds, for one tenant or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub entries: u64,
    pub bytes: u64,
}

pub struct SqliteEntries {
    store: Arc<EmbeddedStore>,
    max_bytes: u64,
}

impl SqliteEntries {
    /// The entries table in `store` (created, or migrated, now), bounded at `max_bytes`.
    pub fn open(store: Arc<EmbeddedStore>, max_bytes: u64) -> Result<SqliteEntries, StoreError> {
        store.migrate(SUBSYSTEM, MIGRATIONS)?;
        Ok(SqliteEntries { store, max_bytes })
    }

    /// The entry under `key`. A row that does not decode is deleted and reads as a miss
    /// (`Ok(None)`), so one bad write cannot keep failing lookups.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Entry>, StoreError> {
        let bytes: Option<Vec<u8>> = self.store.with(|c| {
            c.query_row(
                "SELECT entry FROM cache_entries WHERE key = ?1",
                [&key.0[..]],
                |r| r.get(0),
            )
            .optional()
        })?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        match Entry::decode(&bytes) {
            Ok(entry) => Ok(Some(entry)),
            Err(_) => {
                self.remove(key)?;
                Ok(None)
            }
        }
    }

    /// Stores `entry` under `key` (replacing any), then drops the oldest entries beyond the
    /// byte bound.
    pub fn put(&self, key: &CacheKey, entry: &Entry) -> Result<(), StoreError> {
        let encoded = entry.encode();
        self.store.with(|c| {
            c.execute(
                "INSERT INTO cache_entries (key, tenant, model, created_ms, size, entry)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key) DO UPDATE SET tenant = excluded.tenant, model = excluded.model,
                     created_ms = excluded.created_ms, size = excluded.size, entry = excluded.entry",
                params![
                    &key.0[..],
                    entry.tenant,
                    entry.model,
                    entry.created_unix_ms as i64,
                    encoded.len() as i64,
                    encoded
                ],
            )
        })?;
        self.evict_beyond_bound()?;
        Ok(())
    }

    pub fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.execute("DELETE FROM cache_entries WHERE key = ?1", [&key.0[..]])
                .map(drop)
        })
    }

    /// Drops the oldest entries until the table is within its byte bound; returns how many.
    pub fn evict_beyond_bound(&self) -> Result<u64, StoreError> {
        let max = self.max_bytes as i64;
        self.store.with(|c| {
            let tx = c.transaction()?;
            let mut total: i64 = tx.query_row(
                "SELECT COALESCE(SUM(size), 0) FROM cache_entries",
                [],
                |r| r.get(0),
            )?;
            let mut evicted = 0u64;
            while total > max {
                let oldest: Option<(Vec<u8>, i64)> = tx
                    .query_row(
                        "SELECT key, size FROM cache_entries ORDER BY created_ms LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((key, size)) = oldest else { break };
                tx.execute("DELETE FROM cache_entries WHERE key = ?1", [key])?;
                total -= size;
                evicted += 1;
            }
            tx.commit()?;
            Ok(evicted)
        })
    }

    /// Drops entries older than `ttl`; returns how many.
    pub fn expire(&self, ttl: Duration, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(ttl.as_millis() as u64) as i64;
        self.store.with(|c| {
            c.execute("DELETE FROM cache_entries WHERE created_ms < ?1", [cutoff])
                .map(|n| n as u64)
        })
    }

    /// Drops what `purge` matches; returns how many.
    pub fn purge(&self, purge: &Purge, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = purge
            .older_than
            .map(|age| now_ms.saturating_sub(age.as_millis() as u64) as i64);
        self.store.with(|c| {
            c.execute(
                "DELETE FROM cache_entries
                 WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR model = ?2)
                   AND (?3 IS NULL OR created_ms <= ?3)",
                params![purge.tenant, purge.model, cutoff],
            )
            .map(|n| n as u64)
        })
    }

    /// Entries and bytes, of `tenant` or of all.
    pub fn stats(&self, tenant: Option<&str>) -> Result<StoreStats, StoreError> {
        self.store.with(|c| {
            c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache_entries
                 WHERE ?1 IS NULL OR tenant = ?1",
                [tenant],
                |r| {
                    Ok(StoreStats {
                        entries: r.get::<_, i64>(0)? as u64,
                        bytes: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::entry::StoredAnswer;
    use bytes::Bytes;

    fn entry(tenant: &str, model: &str, created: u64, len: usize) -> Entry {
        let mut e = Entry::new(
            tenant,
            model,
            "application/json",
            None,
            StoredAnswer::Completion(Bytes::from(vec![b'x'; len])),
        );
        e.created_unix_ms = created;
        e
    }

    fn open(dir: &std::path::Path, max: u64) -> SqliteEntries {
        SqliteEntries::open(Arc::new(EmbeddedStore::open(dir).unwrap()), max).unwrap()
    }

    #[test]
    fn entries_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry("t", "m", 1_000, 10);
        open(dir.path(), 1 << 20)
            .put(&CacheKey([1; 32]), &e)
            .unwrap();
        let again = open(dir.path(), 1 << 20);
        assert_eq!(again.get(&CacheKey([1; 32])).unwrap(), Some(e));
        assert_eq!(again.get(&CacheKey([2; 32])).unwrap(), None);
    }

    #[test]
    fn the_oldest_go_first_beyond_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let one = entry("t", "m", 0, 100).encode().len() as u64;
        let s = open(dir.path(), 3 * one);
        for i in 0..5u8 {
            s.put(
                &CacheKey([i; 32]),
                &entry("t", "m", 1_000 + u64::from(i), 100),
            )
            .unwrap();
        }
        assert_eq!(s.stats(None).unwrap().entries, 3);
        assert!(s.stats(None).unwrap().bytes <= 3 * one);
        assert_eq!(s.get(&CacheKey([0; 32])).unwrap(), None);
        assert_eq!(s.get(&CacheKey([1; 32])).unwrap(), None);
        assert!(s.get(&CacheKey([4; 32])).unwrap().is_some());
    }

    #[test]
    fn expiry_purges_and_stats_filter_by_tenant_model_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        s.put(&CacheKey([1; 32]), &entry("a", "m1", 10_000, 1))
            .unwrap();
        s.put(&CacheKey([2; 32]), &entry("a", "m2", 20_000, 1))
            .unwrap();
        s.put(&CacheKey([3; 32]), &entry("b", "m1", 30_000, 1))
            .unwrap();
        assert_eq!(s.stats(Some("a")).unwrap().entries, 2);
        assert_eq!(s.stats(Some("b")).unwrap().entries, 1);
        assert_eq!(s.stats(Some("c")).unwrap(), StoreStats::default());
        let by_model = Purge {
            tenant: Some("a".into()),
            model: Some("m1".into()),
            older_than: None,
        };
        assert_eq!(s.purge(&by_model, 40_000).unwrap(), 1);
        let by_age = Purge {
            older_than: Some(Duration::from_secs(15)),
            ..Purge::default()
        };
        // At 40 s the entry from 20 s is at least 15 s old; the one from 30 s is not.
        assert_eq!(s.purge(&by_age, 40_000).unwrap(), 1);
        assert_eq!(s.stats(None).unwrap().entries, 1);
        assert_eq!(s.expire(Duration::from_secs(5), 40_000).unwrap(), 1);
        assert_eq!(s.stats(None).unwrap().entries, 0);
    }

    #[test]
    fn a_row_that_does_not_decode_reads_as_a_miss_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let s = SqliteEntries::open(store.clone(), 1 << 20).unwrap();
        s.put(&CacheKey([1; 32]), &entry("t", "m", 1, 1)).unwrap();
        store
            .with(|c| c.execute("UPDATE cache_entries SET entry = x'00'", []))
            .unwrap();
        assert_eq!(s.get(&CacheKey([1; 32])).unwrap(), None);
        assert_eq!(s.stats(None).unwrap().entries, 0);
    }
}
