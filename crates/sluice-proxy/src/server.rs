//! Serving the proxy: a listener, an axum router with one catch-all handler, graceful stop.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::ProxyConfig;
use crate::entry::now_unix_ms;
use crate::handler::{handle, ProxyState};
use crate::store::ReplayStore;
use crate::usage::{RunUsage, RunWriter};

/// How long [`ProxyServer::shutdown`] waits for answers still being sent.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A connection to the upstream must open within this; answers themselves may take long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the proxy on `listener` until `shutdown` completes, then lets answers in
/// progress finish and writes the run's final usage.
pub async fn serve(
    listener: TcpListener,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let state = build_state(config)?;
    let writer = state.usage.spawn_writer();
    let served = axum::serve(with_nodelay(listener), router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    writer.finish().await;
    served
}

/// Replayed events are small writes; Nagle's algorithm would hold them back by up to a
/// delayed-ACK timeout and distort recorded timing.
fn with_nodelay(listener: TcpListener) -> impl axum::serve::Listener<Addr = SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("could not set TCP_NODELAY: {e}");
        }
    })
}

/// Every method and path goes to the one handler (the proxy forwards whatever the client
/// speaks), except the reserved `/_sluice/` prefix, which the proxy answers itself.
fn router(state: Arc<ProxyState>) -> axum::Router {
    use axum::routing::any;
    axum::Router::new()
        .route("/_sluice/metrics", any(admin::metrics))
        .route("/_sluice/entries", any(admin::entries))
        .route("/_sluice", any(admin::not_found))
        .route("/_sluice/", any(admin::not_found))
        .route("/_sluice/{*rest}", any(admin::not_found))
        .fallback(handle)
        .with_state(state)
}

fn build_state(config: ProxyConfig) -> io::Result<Arc<ProxyState>> {
    if !(config.upstream.starts_with("http://") || config.upstream.starts_with("https://")) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "upstream {:?} must start with http:// or https://",
                config.upstream
            ),
        ));
    }
    let store = ReplayStore::open(&config.dir).map_err(io::Error::other)?;
    let started_at_unix_ms = now_unix_ms();
    let usage = RunUsage::begin(&config.dir, config.mode, started_at_unix_ms);
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| io::Error::other(format!("cannot build the HTTP client: {e}")))?;
    Ok(Arc::new(ProxyState {
        diff_ignore: Arc::new(config.diff_ignore.clone()),
        config,
        store: Arc::new(store),
        client,
        started_at_unix_ms,
        usage: Arc::new(usage),
    }))
}

/// A proxy serving on a background task.
#[derive(Debug)]
pub struct ProxyServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
    writer: RunWriter,
}

impl ProxyServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving. Fails when the upstream
    /// URL is malformed or the recordings directory cannot be created.
    pub async fn start(config: ProxyConfig, addr: SocketAddr) -> io::Result<ProxyServer> {
        let state = build_state(config)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let writer = state.usage.spawn_writer();
        let router = router(state);
        let task = tokio::spawn(async move {
            axum::serve(with_nodelay(listener), router)
                .with_graceful_shutdown(async move {
                    // A dropped sender stops the server too.
                    let _ = stopped.await;
                })
                .await
        });
        Ok(ProxyServer {
            addr,
            stop,
            task,
            writer,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, the address to put in front of the client's usual path (for an
    /// OpenAI client, use `{base_url}/v1`). A wildcard bind address is reported as
    /// 127.0.0.1.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Stops accepting connections, waits (a few seconds at most) for answers in progress
    /// to finish, then writes the run's final usage (`DIR/.sluice/last-run.json`, marked
    /// finished) and drift report.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, self.task).await {
            Ok(Ok(Err(e))) => tracing::warn!("proxy server ended with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("proxy server task failed: {e}"),
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
        self.writer.finish().await;
    }
}
