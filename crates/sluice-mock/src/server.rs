//! Running the engine on a socket.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::engine::MockEngine;
use crate::options::MockOptions;

/// How long [`MockServer::shutdown`] waits for answers still being sent.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `engine` on `listener` until `shutdown` completes, then lets answers in progress
/// finish.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<MockEngine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Token chunks are small writes; Nagle's algorithm would hold them back by up to a
    // delayed-ACK timeout and distort the timing model.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("could not set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, engine.router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// A mock engine serving on a background task, for tests and benchmarks.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    engine: Arc<MockEngine>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl MockServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub async fn start(options: MockOptions, addr: SocketAddr) -> io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let kv_events = options.kv_events.clone();
        let block_size = options.kv_cache.block_size;
        let engine = MockEngine::new(options);
        if let Some(kv) = kv_events {
            let publisher = crate::KvPublisher::start(kv, block_size)
                .await
                .map_err(|e| io::Error::other(format!("kv events: {e}")))?;
            engine.attach_kv_events(publisher);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, engine.clone(), async move {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        }));
        Ok(MockServer {
            addr,
            engine,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT/v1`, the base URL an OpenAI client takes. A wildcard bind address
    /// is reported as 127.0.0.1.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}/v1", SocketAddr::new(ip, self.addr.port()))
    }

    pub fn engine(&self) -> &Arc<MockEngine> {
        &self.engine
    }

    /// Stops accepting connections and waits (a few seconds at most) for answers in
    /// progress to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, self.task).await {
            Ok(Ok(Err(e))) => tracing::warn!("mock server ended with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("mock server task failed: {e}"),
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
    }
}
