//! Where keys are kept: [`KeyTable`], over the embedded store (`SqliteKeys`, one row per key)
//! or Redis (`RedisKeys`, shared by every instance). Either way the secret's digest stands in
//! for the secret.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_store::rusqlite::{self, params, OptionalExtension, Row};
use sluice_store::{EmbeddedStore, StoreError};

use super::key::{KeyDigest, NewSecret};
use super::scope::ScopeSet;

/// The `api_keys` subsystem's schema, one entry per version.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE api_keys (
        name        TEXT PRIMARY KEY,
        tenant      TEXT NOT NULL,
        subject     TEXT NOT NULL,
        scopes      TEXT NOT NULL,
        models      TEXT NOT NULL, -- a JSON array of names; [] = every model
        digest      BLOB NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER,
        revoked_at  INTEGER,
        requests_per_minute INTEGER,
        tokens_per_minute   INTEGER
    );
    CREATE INDEX api_keys_tenant ON api_keys (tenant);",
    // v2: a counter that moves only when keys change (triggers, so every writer of the file
    // moves it, whatever its version): the ring's reload signal. The file's own change
    // counter moves on every commit, the cache's writes included.
    "CREATE TABLE api_keys_version (
         id      INTEGER PRIMARY KEY CHECK (id = 1),
         version INTEGER NOT NULL
     );
     INSERT INTO api_keys_version (id, version) VALUES (1, 0);
     CREATE TRIGGER api_keys_inserted AFTER INSERT ON api_keys
         BEGIN UPDATE api_keys_version SET version = version + 1; END;
     CREATE TRIGGER api_keys_updated AFTER UPDATE ON api_keys
         BEGIN UPDATE api_keys_version SET version = version + 1; END;
     CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys
         BEGIN UPDATE api_keys_version SET version = version + 1; END;",
];

/// One key as stored (or declared in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Unique; what `revoke`, the audit log and metrics call the key.
    pub name: String,
    pub tenant: String,
    /// Who or what uses the key (defaults to its name).
    pub subject: String,
    pub scopes: ScopeSet,
    /// Models the key may use; empty means every configured model.
    pub models: Vec<String>,
    pub digest: KeyDigest,
    pub created_unix: i64,
    pub expires_unix: Option<i64>,
    pub revoked_unix: Option<i64>,
    /// Per-key limits, kept for the admission phase (not enforced by authentication).
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

impl KeyRecord {
    pub fn active_at(&self, now_unix: i64) -> bool {
        self.revoked_unix.is_none() && self.expires_unix.is_none_or(|e| now_unix < e)
    }
}

/// What `create` is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub name: String,
    pub tenant: String,
    pub subject: Option<String>,
    pub scopes: ScopeSet,
    pub models: Vec<String>,
    pub expires_unix: Option<i64>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Redis(#[from] sluice_store::RedisError),
    #[error(
        "the key store holds a record it cannot read ({0}); was it written by a newer sluice?"
    )]
    Corrupt(String),
    #[error("a key named `{0}` exists already; pick another --name (names are unique)")]
    NameTaken(String),
    #[error("no random bytes from the operating system: {0}")]
    Random(getrandom::Error),
    #[error("{0}")]
    Invalid(String),
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Checks what a key's name and tenant may be: printable, short, no separators a log or a
/// metric label would trip over.
pub fn check_label(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '*'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{value}` must be 1 to 64 characters of letters, digits, `-`, `_`, `.`, `@`"
        ))
    }
}

/// Where keys are kept.
#[derive(Debug, Clone)]
pub enum KeyTable {
    /// The embedded store in `server.data_dir`.
    Sqlite(SqliteKeys),
    /// Redis (`[state] redis_url`), shared by every instance.
    Redis(super::redis_keys::RedisKeys),
}

impl KeyTable {
    pub fn open(store: Arc<EmbeddedStore>) -> Result<KeyTable, StoreError> {
        store.migrate("api_keys", MIGRATIONS)?;
        Ok(KeyTable::Sqlite(SqliteKeys { store }))
    }

    pub fn redis(store: Arc<sluice_store::RedisStore>) -> KeyTable {
        KeyTable::Redis(super::redis_keys::RedisKeys::new(store))
    }

    /// The table the config names: Redis when `state.redis_url` is set, else the embedded
    /// store in `server.data_dir` (opened, and created if need be, now).
    pub fn for_config(config: &crate::config::ResolvedConfig) -> Result<KeyTable, KeyError> {
        match &config.redis_url {
            Some(url) => Ok(KeyTable::redis(Arc::new(
                sluice_store::RedisStore::connect(url)?,
            ))),
            None => {
                let store = EmbeddedStore::open(&config.auth.data_dir)?;
                Ok(KeyTable::open(Arc::new(store))?)
            }
        }
    }

    /// Where the keys are, for messages: the store's path or the Redis URL (no password).
    pub fn location(&self) -> String {
        match self {
            KeyTable::Sqlite(t) => t.store.path().display().to_string(),
            KeyTable::Redis(t) => t.url().to_owned(),
        }
    }

    /// Makes a key and stores its digest; the secret is returned once and kept nowhere.
    pub fn create(&self, new: NewKey) -> Result<(KeyRecord, String), KeyError> {
        check_label("the key name", &new.name).map_err(KeyError::Invalid)?;
        check_label("the tenant", &new.tenant).map_err(KeyError::Invalid)?;
        let secret = NewSecret::generate().map_err(KeyError::Random)?;
        let record = KeyRecord {
            subject: new.subject.unwrap_or_else(|| new.name.clone()),
            name: new.name,
            tenant: new.tenant,
            scopes: new.scopes,
            models: new.models,
            digest: secret.digest,
            created_unix: now_unix(),
            expires_unix: new.expires_unix,
            revoked_unix: None,
            requests_per_minute: new.requests_per_minute,
            tokens_per_minute: new.tokens_per_minute,
        };
        let inserted = match self {
            KeyTable::Sqlite(t) => t.insert(&record)?,
            KeyTable::Redis(t) => t.insert(&record)?,
        };
        if !inserted {
            return Err(KeyError::NameTaken(record.name));
        }
        Ok((record, secret.secret))
    }

    /// Every key (revoked and expired ones included), of one tenant or of all, by name.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, KeyError> {
        match self {
            KeyTable::Sqlite(t) => Ok(t.list(tenant)?),
            KeyTable::Redis(t) => t.list(tenant),
        }
    }

    /// Revokes the key `name` (of `tenant` only, when given). `false` when there is no such
    /// key, or it belongs to another tenant: the caller cannot tell the two apart.
    pub fn revoke(&self, name: &str, tenant: Option<&str>) -> Result<bool, KeyError> {
        match self {
            KeyTable::Sqlite(t) => Ok(t.revoke(name, tenant)?),
            KeyTable::Redis(t) => t.revoke(name, tenant),
        }
    }

    /// The key called `name`, if it exists (of `tenant` only, when given).
    pub fn get(&self, name: &str, tenant: Option<&str>) -> Result<Option<KeyRecord>, KeyError> {
        match self {
            KeyTable::Sqlite(t) => Ok(t.get(name, tenant)?),
            KeyTable::Redis(t) => t.get(name, tenant),
        }
    }

    /// A number that grows whenever any process changes the keys: the ring reloads when it
    /// moves.
    pub fn version(&self) -> Result<i64, KeyError> {
        match self {
            KeyTable::Sqlite(t) => Ok(t.version()?),
            KeyTable::Redis(t) => t.version(),
        }
    }
}

/// The `api_keys` table of an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct SqliteKeys {
    store: Arc<EmbeddedStore>,
}

impl SqliteKeys {
    /// The keys' change counter (moved by the table's triggers).
    fn version(&self) -> Result<i64, StoreError> {
        self.store.with(|c| {
            c.query_row(
                "SELECT version FROM api_keys_version WHERE id = 1",
                [],
                |r| r.get(0),
            )
        })
    }

    /// `false` when the name is taken.
    fn insert(&self, record: &KeyRecord) -> Result<bool, StoreError> {
        let inserted = self.store.with(|c| {
            c.execute(
                "INSERT INTO api_keys (name, tenant, subject, scopes, models, digest, created_at,
                     expires_at, revoked_at, requests_per_minute, tokens_per_minute)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, ?9, ?10)
                 ON CONFLICT (name) DO NOTHING",
                params![
                    &record.name,
                    &record.tenant,
                    &record.subject,
                    record.scopes.to_string(),
                    serde_json::to_string(&record.models).unwrap_or_else(|_| "[]".into()),
                    &record.digest.0[..],
                    record.created_unix,
                    record.expires_unix,
                    record.requests_per_minute.map(to_sql_int),
                    record.tokens_per_minute.map(to_sql_int),
                ],
            )
        })?;
        Ok(inserted > 0)
    }

    fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        self.store.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, tenant, subject, scopes, models, digest, created_at, expires_at,
                        revoked_at, requests_per_minute, tokens_per_minute
                 FROM api_keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([tenant], read_row)?;
            rows.collect()
        })
    }

    /// Revokes the key `name` (of `tenant` only, when given). `false` when there is no such
    /// key, or it belongs to another tenant: the caller cannot tell the two apart.
    pub fn revoke(&self, name: &str, tenant: Option<&str>) -> Result<bool, StoreError> {
        let now = now_unix();
        let changed = self.store.with(|c| {
            c.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?3)
                 WHERE name = ?1 AND (?2 IS NULL OR tenant = ?2)",
                params![name, tenant, now],
            )
        })?;
        Ok(changed > 0)
    }

    /// The key called `name`, if it exists (of `tenant` only, when given).
    pub fn get(&self, name: &str, tenant: Option<&str>) -> Result<Option<KeyRecord>, StoreError> {
        self.store.with(|c| {
            c.query_row(
                "SELECT name, tenant, subject, scopes, models, digest, created_at, expires_at,
                        revoked_at, requests_per_minute, tokens_per_minute
                 FROM api_keys WHERE name = ?1 AND (?2 IS NULL OR tenant = ?2)",
                params![name, tenant],
                read_row,
            )
            .optional()
        })
    }
}

fn to_sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn read_row(r: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let bad = |i: usize, message: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, message.into())
    };
    let scopes: String = r.get(3)?;
    let models: String = r.get(4)?;
    let digest: Vec<u8> = r.get(5)?;
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| bad(5, "a key digest is 32 bytes".into()))?;
    let opt_u64 = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?
            .map(|v| u64::try_from(v).unwrap_or(0)))
    };
    Ok(KeyRecord {
        name: r.get(0)?,
        tenant: r.get(1)?,
        subject: r.get(2)?,
        scopes: ScopeSet::parse_list(&scopes).map_err(|e| bad(3, e))?,
        models: serde_json::from_str(&models).map_err(|e| bad(4, e.to_string()))?,
        digest: KeyDigest(digest),
        created_unix: r.get(6)?,
        expires_unix: r.get(7)?,
        revoked_unix: r.get(8)?,
        requests_per_minute: opt_u64(9)?,
        tokens_per_minute: opt_u64(10)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_version_moves_with_the_keys_and_not_with_other_writes_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let table = KeyTable::open(store.clone()).unwrap();
        let v0 = table.version().unwrap();
        // Another subsystem writing to the same file (the cache will) changes nothing here.
        store
            .with(|c| {
                c.execute_batch(
                    "CREATE TABLE other (x INTEGER); INSERT INTO other VALUES (1), (2);",
                )
            })
            .unwrap();
        assert_eq!(table.version().unwrap(), v0);
        let (record, _) = table
            .create(NewKey {
                name: "ci".into(),
                tenant: "t".into(),
                subject: None,
                scopes: ScopeSet::parse_list("chat:write").unwrap(),
                models: Vec::new(),
                expires_unix: None,
                requests_per_minute: None,
                tokens_per_minute: None,
            })
            .unwrap();
        let v1 = table.version().unwrap();
        assert!(v1 > v0);
        assert!(table.revoke(&record.name, None).unwrap());
        assert!(table.version().unwrap() > v1);
        // Another process (another connection to the file) sees the same counter.
        let other = KeyTable::open(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).unwrap();
        assert_eq!(other.version().unwrap(), table.version().unwrap());
    }
}
