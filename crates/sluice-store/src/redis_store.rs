//! The shared store of several gateway instances: a Redis server (`[state] redis_url`).
//!
//! Every exchange has a deadline ([`IO_TIMEOUT`] to connect, to write, to read), and a
//! connection whose last exchange failed is dropped, never reused: the next call connects
//! anew. Keys are hash-tagged (`{sluice}:…`) so that a subsystem's keys share one slot and
//! its scripts stay atomic on a Redis Cluster too.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub use redis;

/// Deadline of each connect, write and read.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("state.redis_url `{url}` is not a Redis URL ({message}); write e.g. redis://127.0.0.1:6379/0")]
    Url { url: String, message: String },
    #[error("Redis at {url}: {source}")]
    Io {
        url: String,
        source: redis::RedisError,
    },
}

/// A Redis server, with one connection kept for the process's calls.
pub struct RedisStore {
    client: redis::Client,
    /// The URL without its password, for messages.
    shown_url: String,
    conn: Mutex<Option<redis::Connection>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown_url)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Checks the URL and that the server answers `PING`.
    pub fn connect(url: &str) -> Result<RedisStore, RedisError> {
        let shown_url = without_password(url);
        if url.starts_with("rediss://") {
            return Err(RedisError::Url {
                url: shown_url,
                message:
                    "TLS to Redis (rediss://) is not supported yet; reach it through a local tunnel"
                        .into(),
            });
        }
        let client = redis::Client::open(url).map_err(|e| RedisError::Url {
            url: shown_url.clone(),
            message: e.to_string(),
        })?;
        let store = RedisStore {
            client,
            shown_url,
            conn: Mutex::new(None),
        };
        let pong: String = store.with(|c| redis::cmd("PING").query(c))?;
        debug_assert_eq!(pong, "PONG");
        Ok(store)
    }

    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// Runs `f` on the kept connection (opening one if there is none). An error drops the
    /// connection, so whatever state it was left in is never read again.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisError> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let io = |source| RedisError::Io {
            url: self.shown_url.clone(),
            source,
        };
        if slot.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(IO_TIMEOUT)
                .map_err(io)?;
            conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
            conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
            *slot = Some(conn);
        }
        let Some(conn) = slot.as_mut() else {
            unreachable!("a connection was just put in the slot");
        };
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                *slot = None;
                Err(io(e))
            }
        }
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            without_password("redis://app:s3cret@cache:6379/0"),
            "redis://app:***@cache:6379/0"
        );
        assert_eq!(without_password("redis://cache:6379"), "redis://cache:6379");
        let e = RedisStore::connect("rediss://app:s3cret@cache:6380").unwrap_err();
        assert!(!e.to_string().contains("s3cret") && e.to_string().contains("not supported"));
        let e = RedisStore::connect("http://x").unwrap_err().to_string();
        assert!(e.contains("is not a Redis URL"), "{e}");
    }
}
