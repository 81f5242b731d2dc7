//! The state backends the gateway's subsystems share: [`EmbeddedStore`] for one gateway (or
//! several on one host), [`RedisStore`] for instances on many hosts.
//!
//! [`EmbeddedStore`] is one SQLite file per gateway, `sluice.db` in the data directory
//! (`server.data_dir`, else [`default_data_dir`]). Each subsystem (API keys now; the cache and
//! the audit index later) owns its tables and brings its own numbered migrations, applied in
//! order on open and recorded, so an older file is upgraded in place and a newer one is
//! refused rather than misread.
//!
//! Several processes may use one file at once, and do: `sluice keys create` writes to the
//! file of a running gateway, and two gateways on one host may share a data directory. SQLite
//! in WAL mode serialises the writers and lets readers run beside them; a writer that finds
//! the file busy waits up to [`BUSY_TIMEOUT`]. Readers notice other processes' commits through
//! [`EmbeddedStore::data_version`], which is how a gateway picks up a key revoked by the CLI.

mod redis_store;

pub use redis_store::{redis, RedisError, RedisStore, IO_TIMEOUT, RECONNECT_PAUSE};

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use rusqlite;
use rusqlite::{Connection, OptionalExtension};

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "sluice.db";

/// How long a write waits for another process's write to finish.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the store {} was written by a newer sluice ({subsystem} schema version {found}, this \
         one knows up to {known}); upgrade sluice or point server.data_dir elsewhere",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        subsystem: String,
        found: i64,
        known: i64,
    },
    #[error("store {}: {source}", path.display())]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// The data directory when `server.data_dir` is not set: `$SLUICE_DATA_DIR`, else
/// `$XDG_DATA_HOME/sluice`, else `~/.local/share/sluice`, else `./sluice-data`.
pub fn default_data_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("SLUICE_DATA_DIR") {
        return dir;
    }
    if let Some(dir) = env("XDG_DATA_HOME") {
        return dir.join("sluice");
    }
    if let Some(home) = env("HOME") {
        return home.join(".local/share/sluice");
    }
    PathBuf::from("sluice-data")
}

/// The embedded store: one SQLite connection, shared by the process's users of it.
pub struct EmbeddedStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating it and the directory if need be) `dir/sluice.db`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        restrict_permissions(dir);
        let path = dir.join(FILE_NAME);
        let open = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
        // WAL: readers never wait for a writer, and writers of several processes queue.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_versions (
                 subsystem TEXT PRIMARY KEY,
                 version   INTEGER NOT NULL
             )",
        )
        .map_err(open)?;
        Ok(EmbeddedStore {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `subsystem`'s migrations that the file has not had yet, each in its own
    /// transaction with the version bump. `migrations[i]` takes the schema to version `i + 1`.
    pub fn migrate(&self, subsystem: &str, migrations: &[&str]) -> Result<(), StoreError> {
        let known = migrations.len() as i64;
        self.with(|conn| {
            let tx = conn.transaction()?;
            let found: i64 = tx
                .query_row(
                    "SELECT version FROM schema_versions WHERE subsystem = ?1",
                    [subsystem],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if found > known {
                return Ok(Err(found));
            }
            for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
                tx.execute_batch(sql)?;
                tx.execute(
                    "INSERT INTO schema_versions (subsystem, version) VALUES (?1, ?2)
                     ON CONFLICT (subsystem) DO UPDATE SET version = excluded.version",
                    rusqlite::params![subsystem, i as i64 + 1],
                )?;
            }
            tx.commit()?;
            Ok(Ok(()))
        })?
        .map_err(|found| StoreError::TooNew {
            path: self.path.clone(),
            subsystem: subsystem.to_owned(),
            found,
            known,
        })
    }

    /// Runs `f` on the connection. Calls are short (single statements or small
    /// transactions); the lock only orders this process's own users.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        f(&mut conn).map_err(|source| StoreError::Sql {
            path: self.path.clone(),
            source,
        })
    }

    /// A number that grows whenever anyone commits to the file — another process, another
    /// connection, or this one: a cheap poll for "something changed, reload". (SQLite's
    /// `data_version` counts only the others' commits; this connection's own changes are
    /// added in.)
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            let others: i64 = c.query_row("PRAGMA data_version", [], |r| r.get(0))?;
            let own = i64::try_from(c.total_changes()).unwrap_or(i64::MAX);
            Ok(others.saturating_add(own))
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The store holds key digests and, later, cached answers: readable by its owner only.
fn restrict_permissions(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)";
    const V2: &str = "ALTER TABLE notes ADD COLUMN tag TEXT";

    #[test]
    fn migrations_apply_once_in_order_and_a_newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.migrate("notes", &[V1]).unwrap();
        store
            .with(|c| c.execute("INSERT INTO notes (text) VALUES ('a')", []))
            .unwrap();
        drop(store);

        // Reopened with one more migration: only that one runs, the row survives.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.migrate("notes", &[V1, V2]).unwrap();
        store.migrate("notes", &[V1, V2]).unwrap();
        let (text, tag): (String, Option<String>) = store
            .with(|c| {
                c.query_row("SELECT text, tag FROM notes", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .unwrap();
        assert_eq!((text.as_str(), tag), ("a", None));

        // An older sluice (knowing only V1) refuses the file instead of misreading it.
        let e = store.migrate("notes", &[V1]).unwrap_err().to_string();
        assert!(e.contains("newer sluice") && e.contains("version 2"), "{e}");
    }

    #[test]
    fn another_connection_sees_commits_through_data_version() {
        let dir = tempfile::tempdir().unwrap();
        let reader = EmbeddedStore::open(dir.path()).unwrap();
        reader.migrate("notes", &[V1]).unwrap();
        let before = reader.data_version().unwrap();
        assert_eq!(reader.data_version().unwrap(), before);
        let writer = EmbeddedStore::open(dir.path()).unwrap();
        writer
            .with(|c| c.execute("INSERT INTO notes (text) VALUES ('b')", []))
            .unwrap();
        let after_other = reader.data_version().unwrap();
        assert!(after_other > before);
        // The reader's own writes count too.
        reader
            .with(|c| c.execute("INSERT INTO notes (text) VALUES ('c')", []))
            .unwrap();
        assert!(reader.data_version().unwrap() > after_other);
    }

    #[test]
    fn a_path_that_cannot_be_a_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = EmbeddedStore::open(&file.join("sub"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot create the data directory"), "{e}");
    }
}
