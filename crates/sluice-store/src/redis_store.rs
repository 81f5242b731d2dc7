//! The shared store of several gateway instances: a Redis server (`[state] redis_url`).
//!
//! Two ways in, over separate connections:
//!
//! - [`RedisStore::with`], blocking, for background threads and admin work: one kept
//!   connection, one caller at a time.
//! - [`RedisStore::command`] and [`RedisStore::pipeline`], async, for the request path: one
//!   multiplexed connection that every task shares, commands pipelined on it, so a thousand
//!   concurrent cache reads cost a thousand commands on one socket, not a thousand sockets
//!   or a queue behind one lock.
//!
//! Every exchange has a deadline ([`IO_TIMEOUT`] to connect, to write, to read), and a
//! connection whose last exchange failed (a network error, a deadline) is dropped, never
//! reused: the next call connects anew. After a failed connect the async side waits
//! [`RECONNECT_PAUSE`] before it tries again, answering at once with the error meanwhile,
//! so that an unreachable Redis costs requests nothing but their cache. Keys are hash-tagged
//! (`{sluice}:…`) so that a subsystem's keys share one slot and its scripts stay atomic on a
//! Redis Cluster too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use redis;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue};

/// Deadline of each connect, write and read.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed connect, how long the async side answers with the error before it tries
/// to connect again.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("state.redis_url `{url}` is not a Redis URL ({message}); write e.g. redis://127.0.0.1:6379/0")]
    Url { url: String, message: String },
    #[error("Redis at {url} is unreachable ({message}); trying again shortly")]
    Unavailable { url: String, message: String },
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
    /// The async side's connection. Held across no `.await` but the connect itself, which
    /// is bounded by [`IO_TIMEOUT`]; callers meanwhile wait for its outcome rather than
    /// all connecting at once.
    shared: tokio::sync::Mutex<SharedLink>,
    /// Connections the async side has made.
    connects: AtomicU64,
}

/// The state of the async side's connection.
enum SharedLink {
    /// Not connected; the next call connects.
    Idle,
    /// Connected; the number tells this connection from the ones before it.
    Up(MultiplexedConnection, u64),
    /// A connect failed; calls before `until` get `error` without trying.
    Paused { until: Instant, error: String },
}

/// A connection handed to one call, with the number of its link.
struct Borrowed {
    conn: MultiplexedConnection,
    link: u64,
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
        let store = RedisStore::lazy(url)?;
        let pong: String = store.with(|c| redis::cmd("PING").query(c))?;
        debug_assert_eq!(pong, "PONG");
        Ok(store)
    }

    /// The server at `url`, checked to be a Redis URL but not contacted: for a subsystem that
    /// must start while Redis is away (its first call connects, or fails and says so).
    pub fn lazy(url: &str) -> Result<RedisStore, RedisError> {
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
        Ok(RedisStore {
            client,
            shown_url,
            conn: Mutex::new(None),
            shared: tokio::sync::Mutex::new(SharedLink::Idle),
            connects: AtomicU64::new(0),
        })
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

impl RedisStore {
    /// Runs one command on the shared multiplexed connection.
    pub async fn command<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        let mut borrowed = self.shared_connection().await?;
        let answer = cmd.query_async(&mut borrowed.conn).await;
        self.checked(answer, borrowed.link).await
    }

    /// Runs a pipeline (one round trip) on the shared multiplexed connection.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut borrowed = self.shared_connection().await?;
        let answer = pipe.query_async(&mut borrowed.conn).await;
        self.checked(answer, borrowed.link).await
    }

    /// Runs a Lua script (by its SHA, loading it on the first `NOSCRIPT`) on the shared
    /// multiplexed connection.
    pub async fn script<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let mut borrowed = self.shared_connection().await?;
        let answer = invocation.invoke_async(&mut borrowed.conn).await;
        self.checked(answer, borrowed.link).await
    }

    /// A connection of its own subscribed to `channel` (pub/sub holds a connection), made
    /// within [`IO_TIMEOUT`]. Its messages come as long as the connection lives: the caller
    /// subscribes again when the stream ends.
    pub async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub, RedisError> {
        let io = |source| RedisError::Io {
            url: self.shown_url.clone(),
            source,
        };
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(IO_TIMEOUT, connect).await {
            Ok(result) => result.map_err(io),
            Err(_) => Err(io(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "subscribing timed out",
            )))),
        }
    }

    /// The shared connection, connecting if there is none (unless a recent connect failed).
    async fn shared_connection(&self) -> Result<Borrowed, RedisError> {
        let mut link = self.shared.lock().await;
        match &*link {
            SharedLink::Up(conn, n) => {
                return Ok(Borrowed {
                    conn: conn.clone(),
                    link: *n,
                })
            }
            SharedLink::Paused { until, error } if Instant::now() < *until => {
                return Err(RedisError::Unavailable {
                    url: self.shown_url.clone(),
                    message: error.clone(),
                });
            }
            SharedLink::Paused { .. } | SharedLink::Idle => {}
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(IO_TIMEOUT)
            .set_response_timeout(IO_TIMEOUT);
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                let n = self.connects.fetch_add(1, Ordering::Relaxed);
                *link = SharedLink::Up(conn.clone(), n);
                Ok(Borrowed { conn, link: n })
            }
            Err(source) => {
                *link = SharedLink::Paused {
                    until: Instant::now() + RECONNECT_PAUSE,
                    error: source.to_string(),
                };
                Err(RedisError::Io {
                    url: self.shown_url.clone(),
                    source,
                })
            }
        }
    }

    /// Passes `answer` on; after a failure of the exchange itself (network, deadline) the
    /// connection `used` is dropped, so no later call reads what it was left holding. An
    /// error Redis answered (a wrong type, a script's error) leaves it clean.
    async fn checked<T>(&self, answer: redis::RedisResult<T>, used: u64) -> Result<T, RedisError> {
        let source = match answer {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let broken = source.is_io_error()
            || source.is_timeout()
            || source.is_connection_dropped()
            || source.is_unrecoverable_error();
        if broken {
            let mut link = self.shared.lock().await;
            // Only the connection that failed: another task may already have replaced it.
            if matches!(&*link, SharedLink::Up(_, n) if *n == used) {
                *link = SharedLink::Idle;
            }
        }
        Err(RedisError::Io {
            url: self.shown_url.clone(),
            source,
        })
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
