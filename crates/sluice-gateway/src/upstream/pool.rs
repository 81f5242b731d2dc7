//! The HTTP/1.1 connections of one endpoint on one worker.
//!
//! Why not a general-purpose client's pool: under a burst (a client that was stalled sends
//! hundreds of requests at once), such a pool starts one connect per request that finds no
//! idle connection, although most of those requests are served a moment later by
//! connections coming back. The connects then cost the gateway and the engine CPU exactly
//! when both are behind, and the surplus connections sit idle until they all expire in the
//! same sweep. Here:
//!
//! - idle connections are reused last-in first-out, so the warm ones stay warm and the
//!   surplus ages at the cold end, where it is closed a few at a time;
//! - at most [`ConnectionLimits::max_connecting`] connects are in progress; a request that finds
//!   neither an idle connection nor a free connect slot waits for whichever comes first, a
//!   connection coming back (handed over directly) or a free slot;
//! - at most [`ConnectionLimits::max_idle`] connections are kept idle.
//!
//! A connection goes back to the pool only when its response was read to the end *and* the
//! gateway accepted it ([`PooledBody::release`]); a body dropped early, or one whose content
//! the gateway refused (not a completion, too large), closes it: the next request must not
//! read what this one left behind.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower_service::Service;

use crate::config::ConnectionLimits;
use crate::egress::Egress;
use crate::metrics::PoolGauges;

use super::h1::{self, Decoded, Framing, ResponseError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A TCP connection, TLS or not, with tokio's I/O traits. Boxed: a TLS stream is kilobytes,
/// and the connection is moved with the request's state.
type Io = Box<TokioIo<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>>;
pub type Connection = h1::Connection<Io>;

/// How many expired idle connections one checkout or check-in closes: enough to keep up with
/// any traffic, few enough that closing never stalls a request.
const EXPIRE_PER_CALL: usize = 2;
/// How often the background sweep closes expired idle connections when there is no traffic.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How many the sweep closes per round, so a large pool drains over several rounds.
const EXPIRE_PER_SWEEP: usize = 32;

/// Connection pool counters, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub opened: u64,
    pub idle: usize,
    pub connecting: usize,
    pub waiting: usize,
}

impl PoolGauges for ConnectionPool {
    fn pool_stats(&self) -> PoolStats {
        self.stats()
    }
}

/// No connection could be had: the connector failed (TCP, proxy tunnel or TLS), so the
/// request was not sent.
#[derive(Debug)]
pub struct ConnectError(pub BoxError);

pub struct ConnectionPool {
    connector: HttpsConnector<Egress>,
    /// `scheme://authority` of the endpoint: where the connector connects.
    target: http::Uri,
    limits: ConnectionLimits,
    state: Mutex<PoolState>,
    /// `sluice_upstream_connections_opened_total` of the endpoint.
    opened: Counter,
}

#[derive(Default)]
struct PoolState {
    /// Back: most recently returned.
    idle: VecDeque<IdleConnection>,
    connecting: usize,
    waiters: VecDeque<oneshot::Sender<Handoff>>,
    opened: u64,
}

struct IdleConnection {
    connection: Connection,
    since: Instant,
}

/// What a waiting checkout is given.
enum Handoff {
    Connection(Connection),
    /// A connect slot came free: try again.
    MayConnect,
}

/// A connection taken from the pool, ready for one request.
pub struct Lease {
    pub connection: Connection,
    /// Whether it served a request before (a reused connection may have been closed by the
    /// upstream in the meantime; a request it returns unsent can go on another).
    pub reused: bool,
    /// How long the request waited for it: zero when an idle one was at hand (the clock is
    /// read only when there was something to wait for).
    pub waited: Duration,
}

impl ConnectionPool {
    /// Call from within a tokio runtime to get the background sweep (tests that build
    /// endpoints outside one get a pool without it).
    pub fn new(
        connector: HttpsConnector<Egress>,
        target: http::Uri,
        limits: ConnectionLimits,
        opened: Counter,
    ) -> Arc<ConnectionPool> {
        let pool = Arc::new(ConnectionPool {
            connector,
            target,
            limits,
            state: Mutex::new(PoolState::default()),
            opened,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    pub fn stats(&self) -> PoolStats {
        let s = self.lock();
        PoolStats {
            opened: s.opened,
            idle: s.idle.len(),
            connecting: s.connecting,
            waiting: s.waiters.len(),
        }
    }

    /// A connection ready for a request: an idle one, a new one, or one handed over by a
    /// request that finished while this one waited for a connect slot.
    pub async fn checkout(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        let mut since: Option<Instant> = None;
        let waited = |since: Option<Instant>| since.map_or(Duration::ZERO, |t| t.elapsed());
        loop {
            let step = {
                let mut s = self.lock();
                let expired = s.take_expired(self.limits.idle_timeout, EXPIRE_PER_CALL);
                let step = if let Some(connection) = s.take_idle() {
                    Step::Reuse(connection)
                } else if s.connecting < self.limits.max_connecting {
                    s.connecting += 1;
                    Step::Connect
                } else {
                    let (tx, rx) = oneshot::channel();
                    s.waiters.push_back(tx);
                    Step::Wait(rx)
                };
                drop(s);
                drop(expired);
                step
            };
            match step {
                Step::Reuse(connection) => {
                    return Ok(Lease {
                        connection,
                        reused: true,
                        waited: waited(since),
                    });
                }
                Step::Connect => {
                    let since = *since.get_or_insert_with(Instant::now);
                    let slot = ConnectSlot(self);
                    // Boxed: the connector's future (TCP, proxy tunnel, TLS) is large, and
                    // inline it would grow the state of every request, which is moved and
                    // copied on the request path, for a step most requests skip.
                    let connected = Box::pin(self.connect()).await;
                    drop(slot);
                    return connected.map(|connection| Lease {
                        connection,
                        reused: false,
                        waited: waited(Some(since)),
                    });
                }
                Step::Wait(rx) => {
                    since.get_or_insert_with(Instant::now);
                    if let Ok(Handoff::Connection(connection)) = rx.await {
                        return Ok(Lease {
                            connection,
                            reused: true,
                            waited: waited(since),
                        });
                    }
                }
            }
        }
    }

    /// Puts a connection whose last response was read to the end back: to a waiting
    /// request, else to the idle list (unless it is full).
    fn checkin(&self, mut connection: Connection) {
        let mut s = self.lock();
        while let Some(waiter) = s.waiters.pop_front() {
            match waiter.send(Handoff::Connection(connection)) {
                Ok(()) => return,
                // That request is gone (cancelled or timed out): the next one.
                Err(Handoff::Connection(back)) => connection = back,
                Err(Handoff::MayConnect) => unreachable!("sent a connection"),
            }
        }
        let expired = s.take_expired(self.limits.idle_timeout, EXPIRE_PER_CALL);
        let surplus = if s.idle.len() < self.limits.max_idle {
            s.idle.push_back(IdleConnection {
                connection,
                since: Instant::now(),
            });
            None
        } else {
            Some(connection)
        };
        drop(s);
        drop(expired);
        drop(surplus);
    }

    async fn connect(&self) -> Result<Connection, ConnectError> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(ConnectError)?;
        self.lock().opened += 1;
        self.opened.inc();
        Ok(Connection::new(Box::new(TokioIo::new(io))))
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state stays consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Step {
    Reuse(Connection),
    Connect,
    Wait(oneshot::Receiver<Handoff>),
}

impl PoolState {
    /// The most recently returned idle connection that is still open.
    fn take_idle(&mut self) -> Option<Connection> {
        while let Some(mut c) = self.idle.pop_back() {
            if c.connection.is_open_while_idle() {
                return Some(c.connection);
            }
        }
        None
    }

    /// Removes up to `max` connections idle longer than `timeout` from the cold end; the
    /// caller drops them (which closes them) after releasing the lock.
    fn take_expired(&mut self, timeout: Duration, max: usize) -> Vec<Connection> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(c) = self.idle.front_mut() else {
                break;
            };
            if c.since.elapsed() < timeout && c.connection.is_open_while_idle() {
                break;
            }
            if let Some(c) = self.idle.pop_front() {
                out.push(c.connection);
            }
        }
        out
    }
}

/// A connect in progress; when it ends (done, failed or cancelled) the slot is freed and
/// one waiting request is told to try again.
struct ConnectSlot<'a>(&'a ConnectionPool);

impl Drop for ConnectSlot<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.connecting -= 1;
        while let Some(waiter) = s.waiters.pop_front() {
            if waiter.send(Handoff::MayConnect).is_ok() {
                break;
            }
        }
    }
}

/// Closes expired idle connections of a pool nobody uses; ends with the pool.
async fn sweep(pool: Weak<ConnectionPool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let expired = pool
            .lock()
            .take_expired(pool.limits.idle_timeout, EXPIRE_PER_SWEEP);
        drop(expired);
    }
}

/// An upstream response body, read by the request's task from the connection itself. Once
/// the body has been read to its end, [`PooledBody::release`] gives the connection back;
/// without it the connection closes when the body is dropped.
pub struct PooledBody {
    /// `None` once the body has failed, ended by closing, or been released.
    connection: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<ConnectionPool>,
}

impl PooledBody {
    pub fn new(
        connection: Connection,
        framing: Framing,
        keep_alive: bool,
        pool: Arc<ConnectionPool>,
    ) -> PooledBody {
        let mut body = PooledBody {
            connection: Some(connection),
            framing,
            keep_alive,
            pool,
        };
        if body.framing == Framing::Done {
            body.finish();
        }
        body
    }

    /// The exchange was clean and its answer accepted: the connection goes back to the pool,
    /// if the body was read to its end and the connection may carry another request.
    /// Otherwise (or when never called) it closes with this body.
    pub fn release(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        if let Some(connection) = self.connection.take() {
            if self.keep_alive && !connection.has_unread() {
                self.pool.checkin(connection);
            }
        }
    }

    /// The body failed: the connection, in an unknown state, is closed with it.
    fn fail(&mut self, e: ResponseError) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        self.connection = None;
        Poll::Ready(Some(Err(e)))
    }

    /// The body has been read to its end; the connection waits for [`PooledBody::release`].
    fn finish(&mut self) {
        self.framing = Framing::Done;
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = ResponseError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match connection.decode(&mut this.framing) {
                Ok(Decoded::Data(data)) => {
                    if this.framing == Framing::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(e),
            }
            match std::task::ready!(connection.poll_read_more(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    // The close is the body's end; the connection went with it.
                    this.connection = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(ResponseError::Closed("before the body ended")),
                Ok(_) => {}
                Err(e) => return this.fail(ResponseError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
