//! Keys in Redis, for gateways on several hosts: a hash of key records (name → JSON, written
//! once), a hash of revocations (name → time), and a version counter every change increments,
//! all under the hash tag `{sluice}` so they live in one slot. Revocation is a Lua script, so
//! the tenant check and the write are one step; it reads the record but never rewrites it
//! (Redis's JSON library would turn an empty list into an object).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_store::redis;
use sluice_store::RedisStore;

use super::key::KeyDigest;
use super::scope::ScopeSet;
use super::table::{now_unix, KeyError, KeyRecord};

const RECORDS: &str = "{sluice}:api_keys";
const REVOKED: &str = "{sluice}:api_keys:revoked";
const VERSION: &str = "{sluice}:api_keys:version";

/// Inserts a record unless its name is taken; bumps the version. Returns 1 or 0.
const INSERT: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1";

/// Marks a key revoked (keeping the first revocation time), if it exists and, when a tenant
/// is given, belongs to it; bumps the version. Returns 1 or 0.
const REVOKE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
if ARGV[2] ~= '' and cjson.decode(v).tenant ~= ARGV[2] then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3]) == 1 then
  redis.call('INCR', KEYS[3])
end
return 1";

/// A key record as Redis keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    name: String,
    tenant: String,
    subject: String,
    scopes: String,
    models: Vec<String>,
    digest: String,
    created_at: i64,
    expires_at: Option<i64>,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
}

impl Stored {
    fn of(k: &KeyRecord) -> Stored {
        Stored {
            name: k.name.clone(),
            tenant: k.tenant.clone(),
            subject: k.subject.clone(),
            scopes: k.scopes.to_string(),
            models: k.models.clone(),
            digest: k.digest.to_hex(),
            created_at: k.created_unix,
            expires_at: k.expires_unix,
            requests_per_minute: k.requests_per_minute,
            tokens_per_minute: k.tokens_per_minute,
        }
    }

    fn record(self, revoked: Option<i64>) -> Result<KeyRecord, KeyError> {
        Ok(KeyRecord {
            scopes: ScopeSet::parse_list(&self.scopes).map_err(KeyError::Corrupt)?,
            digest: KeyDigest::parse(&self.digest).map_err(KeyError::Corrupt)?,
            name: self.name,
            tenant: self.tenant,
            subject: self.subject,
            models: self.models,
            created_unix: self.created_at,
            expires_unix: self.expires_at,
            revoked_unix: revoked,
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RedisKeys {
    store: Arc<RedisStore>,
}

impl RedisKeys {
    pub fn new(store: Arc<RedisStore>) -> RedisKeys {
        RedisKeys { store }
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    pub(super) fn insert(&self, record: &KeyRecord) -> Result<bool, KeyError> {
        let json = serde_json::to_string(&Stored::of(record))
            .map_err(|e| KeyError::Corrupt(e.to_string()))?;
        let inserted: i64 = self.store.with(|c| {
            redis::cmd("EVAL")
                .arg(INSERT)
                .arg(2)
                .arg(RECORDS)
                .arg(VERSION)
                .arg(&record.name)
                .arg(json)
                .query(c)
        })?;
        Ok(inserted == 1)
    }

    pub(super) fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, KeyError> {
        // One round trip for both hashes, read at the same moment.
        let (all, revoked): (Vec<(String, String)>, HashMap<String, i64>) =
            self.store.with(|c| {
                redis::pipe()
                    .atomic()
                    .cmd("HGETALL")
                    .arg(RECORDS)
                    .cmd("HGETALL")
                    .arg(REVOKED)
                    .query(c)
            })?;
        let mut keys = Vec::with_capacity(all.len());
        for (name, json) in all {
            let stored: Stored =
                serde_json::from_str(&json).map_err(|e| KeyError::Corrupt(e.to_string()))?;
            if tenant.is_none_or(|t| t == stored.tenant) {
                keys.push(stored.record(revoked.get(&name).copied())?);
            }
        }
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(keys)
    }

    pub(super) fn revoke(&self, name: &str, tenant: Option<&str>) -> Result<bool, KeyError> {
        let done: i64 = self.store.with(|c| {
            redis::cmd("EVAL")
                .arg(REVOKE)
                .arg(3)
                .arg(RECORDS)
                .arg(REVOKED)
                .arg(VERSION)
                .arg(name)
                .arg(tenant.unwrap_or(""))
                .arg(now_unix())
                .query(c)
        })?;
        Ok(done == 1)
    }

    pub(super) fn get(
        &self,
        name: &str,
        tenant: Option<&str>,
    ) -> Result<Option<KeyRecord>, KeyError> {
        let (json, revoked): (Option<String>, Option<i64>) = self.store.with(|c| {
            redis::pipe()
                .atomic()
                .cmd("HGET")
                .arg(RECORDS)
                .arg(name)
                .cmd("HGET")
                .arg(REVOKED)
                .arg(name)
                .query(c)
        })?;
        let Some(json) = json else { return Ok(None) };
        let stored: Stored =
            serde_json::from_str(&json).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        if tenant.is_some_and(|t| t != stored.tenant) {
            return Ok(None);
        }
        stored.record(revoked).map(Some)
    }

    pub(super) fn version(&self) -> Result<i64, KeyError> {
        let v: Option<i64> = self
            .store
            .with(|c| redis::cmd("GET").arg(VERSION).query(c))?;
        Ok(v.unwrap_or(0))
    }
}
