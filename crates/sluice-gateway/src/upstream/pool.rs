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
//! A connection goes back to the pool when its response body has been read to the end
//! ([`PooledBody`]); a body dropped early closes it (the rest of the response is unread).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower_service::Service;

use crate::config::ConnectionLimits;
use crate::egress::Egress;
use crate::metrics::PoolGauges;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sender = SendRequest<Full<Bytes>>;

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

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    /// The connector failed (TCP, proxy tunnel or TLS); the request was not sent.
    Connect(BoxError),
    /// The HTTP/1 handshake over a fresh connection failed; the request was not sent.
    Handshake(hyper::Error),
}

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
    sender: Sender,
    since: Instant,
}

/// What a waiting checkout is given.
enum Handoff {
    Connection(Sender),
    /// A connect slot came free: try again.
    MayConnect,
}

/// A connection taken from the pool, ready for one request.
pub struct Lease {
    pub sender: Sender,
    /// Whether it served a request before (a reused connection may have been closed by the
    /// upstream in the meantime; a request it returns unsent can go on another).
    pub reused: bool,
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
        loop {
            let step = {
                let mut s = self.lock();
                let expired = s.take_expired(self.limits.idle_timeout, EXPIRE_PER_CALL);
                let step = if let Some(sender) = s.take_idle() {
                    Step::Reuse(sender)
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
                Step::Reuse(mut sender) => {
                    // Ready at once, unless the connection is still finishing the last
                    // response; an error means the upstream closed it.
                    if sender.ready().await.is_ok() {
                        return Ok(Lease {
                            sender,
                            reused: true,
                        });
                    }
                }
                Step::Connect => {
                    let slot = ConnectSlot(self);
                    // Boxed: the connector's future (TCP, proxy tunnel, TLS) is large, and
                    // inline it would grow the state of every request, which is moved and
                    // copied on the request path, for a step most requests skip.
                    let connected = Box::pin(self.connect()).await;
                    drop(slot);
                    return connected.map(|sender| Lease {
                        sender,
                        reused: false,
                    });
                }
                Step::Wait(rx) => {
                    if let Ok(Handoff::Connection(mut sender)) = rx.await {
                        if sender.ready().await.is_ok() {
                            return Ok(Lease {
                                sender,
                                reused: true,
                            });
                        }
                    }
                }
            }
        }
    }

    /// Puts a connection whose last response was read to the end back: to a waiting
    /// request, else to the idle list (unless it is full).
    fn checkin(&self, mut sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut s = self.lock();
        while let Some(waiter) = s.waiters.pop_front() {
            match waiter.send(Handoff::Connection(sender)) {
                Ok(()) => return,
                // That request is gone (cancelled or timed out): the next one.
                Err(Handoff::Connection(back)) => sender = back,
                Err(Handoff::MayConnect) => unreachable!("sent a connection"),
            }
        }
        let expired = s.take_expired(self.limits.idle_timeout, EXPIRE_PER_CALL);
        let surplus = if s.idle.len() < self.limits.max_idle {
            s.idle.push_back(IdleConnection {
                sender,
                since: Instant::now(),
            });
            None
        } else {
            Some(sender)
        };
        drop(s);
        drop(expired);
        drop(surplus);
    }

    async fn connect(&self) -> Result<Sender, ConnectError> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(ConnectError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            // Its errors reach the request that was using it.
            let _ = connection.await;
        });
        self.lock().opened += 1;
        self.opened.inc();
        Ok(sender)
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state stays consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Step {
    Reuse(Sender),
    Connect,
    Wait(oneshot::Receiver<Handoff>),
}

impl PoolState {
    /// The most recently returned idle connection that is still open.
    fn take_idle(&mut self) -> Option<Sender> {
        while let Some(c) = self.idle.pop_back() {
            if !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    /// Removes up to `max` connections idle longer than `timeout` from the cold end; the
    /// caller drops them (which closes them) after releasing the lock.
    fn take_expired(&mut self, timeout: Duration, max: usize) -> Vec<Sender> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.idle.front() {
                Some(c) if c.since.elapsed() >= timeout || c.sender.is_closed() => {
                    if let Some(c) = self.idle.pop_front() {
                        out.push(c.sender);
                    }
                }
                _ => break,
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

/// An upstream response body that returns its connection to the pool once read to the end.
pub struct PooledBody {
    inner: Incoming,
    /// Taken when the body ends.
    lease: Option<(Sender, Arc<ConnectionPool>)>,
}

impl PooledBody {
    pub fn new(inner: Incoming, sender: Sender, pool: Arc<ConnectionPool>) -> PooledBody {
        PooledBody {
            inner,
            lease: Some((sender, pool)),
        }
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.lease.take() {
            pool.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            // A failed body leaves the connection unusable: it is dropped with the body.
            Poll::Ready(Some(Err(_))) => self.lease = None,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
