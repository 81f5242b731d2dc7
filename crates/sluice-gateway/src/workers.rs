//! Thread-per-core serving, the way `sluice serve` runs in production.
//!
//! Each worker is an OS thread with a single-threaded tokio runtime, its own listening socket
//! on the shared address (`SO_REUSEPORT`: the kernel spreads connections over the workers)
//! and its own upstream connection pools (`WorkerState`). A request is accepted, parsed,
//! forwarded and answered on one thread, so the hot path has no cross-thread wake-ups; on
//! the work-stealing runtime, parking and unparking threads cost more CPU than the request's
//! own work (docs/benchmarks-log.md). What all workers see — models, routers, metrics, the
//! services — is one `GatewayShared`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

use crate::config::ResolvedConfig;
use crate::server::{Gateway, StartError};
use crate::state::{GatewayShared, Services, WorkerState};

/// Running workers; [`WorkerPool::shutdown`] drains and stops them.
pub struct WorkerPool {
    addr: SocketAddr,
    shared: Arc<GatewayShared>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl WorkerPool {
    /// Binds `config.listen` once per worker and starts the workers; returns when every
    /// worker has built its state, or with the first worker's error. Call from within a tokio
    /// runtime (the sockets are created on it, then handed to the workers).
    pub async fn start(config: &ResolvedConfig) -> Result<WorkerPool, StartError> {
        Self::start_with(config, Services::from_config(config)?).await
    }

    /// As [`WorkerPool::start`], with the services behind the phases.
    pub async fn start_with(
        config: &ResolvedConfig,
        services: Services,
    ) -> Result<WorkerPool, StartError> {
        let workers = config.workers.max(1);
        let listeners = bind_all(config.listen, workers)?;
        let addr = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or(config.listen);
        let shared = Arc::new(GatewayShared::new(config, services));
        if let Some(tls) = &shared.services.tls {
            tls.reload_on_sighup().map_err(StartError::Sighup)?;
        }
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::with_capacity(workers);
        let mut ready = Vec::with_capacity(workers);
        for (i, listener) in listeners.into_iter().enumerate() {
            let (ready_tx, ready_rx) = oneshot::channel();
            ready.push(ready_rx);
            let worker = Worker {
                config: config.clone(),
                shared: shared.clone(),
                listener,
                stopped: stopped.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || worker.run(ready_tx))
                .map_err(|source| StartError::Bind { addr, source })?;
            threads.push(handle);
        }
        let mut pool = WorkerPool {
            addr,
            shared,
            stop,
            threads,
        };
        for r in ready {
            let failed = match r.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(StartError::Bind {
                    addr,
                    source: std::io::Error::other("a worker thread stopped while starting"),
                }),
            };
            if let Some(e) = failed {
                let _ = pool.stop.send(true);
                // The start-up error is the one worth reporting.
                let _ = pool.join().await;
                return Err(e);
            }
        }
        Ok(pool)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shared(&self) -> &Arc<GatewayShared> {
        &self.shared
    }

    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Stops accepting, lets each worker drain (up to the drain timeout), and waits for all.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        tracing::info!(
            workers = self.threads.len(),
            "shutting down: no new connections, draining"
        );
        let _ = self.stop.send(true);
        let joined = self.join().await;
        if joined.is_ok() {
            tracing::info!("drained");
        }
        // Every request has finished: the audit log and the trace exporter write out what
        // they still hold.
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.services.close()).await;
        joined
    }

    async fn join(&mut self) -> std::io::Result<()> {
        let threads = std::mem::take(&mut self.threads);
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("a worker thread panicked")))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(std::io::Error::other)?;
        joined.into_iter().collect()
    }
}

struct Worker {
    config: ResolvedConfig,
    shared: Arc<GatewayShared>,
    listener: std::net::TcpListener,
    stopped: watch::Receiver<bool>,
}

impl Worker {
    fn run(self, ready: oneshot::Sender<Result<(), StartError>>) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let Worker {
            config,
            shared,
            listener,
            mut stopped,
        } = self;
        runtime.block_on(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(source) => {
                    let addr = config.listen;
                    let _ = ready.send(Err(StartError::Bind { addr, source }));
                    return Ok(());
                }
            };
            let worker = match WorkerState::new(shared) {
                Ok(w) => Arc::new(w),
                Err(e) => {
                    let _ = ready.send(Err(e.into()));
                    return Ok(());
                }
            };
            let _ = ready.send(Ok(()));
            let gateway = Gateway::on_listener(listener, worker, config.drain_timeout);
            gateway
                .serve(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
        })
    }
}

/// One listening socket per worker on the same address. A port held by another process
/// without `SO_REUSEPORT` is refused by the kernel; one held *with* it (another sluice) would
/// silently share traffic, so a plain bind is tried first to fail loudly in that case too.
fn bind_all(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr).map_err(bind_error)?);
    }
    let first = reuseport_listener(addr).map_err(bind_error)?;
    let actual = first.local_addr().map_err(bind_error)?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(reuseport_listener(actual).map_err(bind_error)?);
    }
    Ok(all)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)?.into_std()
}
