//! Serving the proxy: one listener for reverse (origin-form), forward (absolute-form) and
//! CONNECT requests, served by hyper directly because CONNECT needs the connection
//! upgrade that axum's `serve` does not hand out; graceful stop, after which the run's
//! final usage is written.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::ca::{default_ca_dir, CertificateAuthority};
use crate::config::ProxyConfig;
use crate::entry::now_unix_ms;
use crate::error::ProxyError;
use crate::forward::UpstreamClient;
use crate::handler::{handle, ProxyState};
use crate::store::ReplayStore;
use crate::tunnel;
use crate::usage::{RunUsage, RunWriter};

/// How long [`ProxyServer::shutdown`] waits for answers still being sent.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A connection to the upstream must open within this; answers themselves may take long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed accept (out of file descriptors, say), wait this long before the next,
/// rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves the proxy on `listener` until `shutdown` completes, then lets answers in
/// progress finish and writes the run's final usage.
pub async fn serve(
    listener: TcpListener,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let state = build_state(config)?;
    let writer = state.usage.spawn_writer();
    run(listener, state, shutdown).await;
    // Every connection, tunnels included, has ended: the counts are final.
    writer.finish().await;
    Ok(())
}

/// Turns to `true` when the server stops; every connection task holds a receiver, so
/// the sender's `closed()` says when the last one has finished.
pub type StopSignal = watch::Receiver<bool>;

async fn run(listener: TcpListener, state: Arc<ProxyState>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    // Replayed events are small writes; Nagle's algorithm would hold them
                    // back by up to a delayed-ACK timeout and distort recorded timing.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!("could not set TCP_NODELAY: {e}");
                    }
                    tokio::spawn(serve_connection(tcp, state.clone(), stop_rx.clone()));
                }
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    stop_tx.closed().await;
}

async fn serve_connection(tcp: tokio::net::TcpStream, state: Arc<ProxyState>, stop: StopSignal) {
    let service_stop = stop.clone();
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let state = state.clone();
        let stop = service_stop.clone();
        async move {
            let resp = if req.method() == http::Method::CONNECT {
                tunnel::connect(state, stop, req).await
            } else {
                handle(state, req.map(axum::body::Body::new)).await
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    if let Err(e) = until_stopped(conn, stop).await {
        tracing::debug!("connection ended with an error: {e}");
    }
}

/// A served HTTP/1 connection, plain or upgradeable, that can be asked to close once its
/// request in progress is answered.
pub trait ServedConnection: Future<Output = hyper::Result<()>> {
    fn close_when_idle(self: Pin<&mut Self>);
}

impl<I, S, B> ServedConnection for http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close_when_idle(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> ServedConnection for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close_when_idle(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives `conn` to its end; once the server stops, lets the request in progress finish
/// and then closes it.
pub async fn until_stopped<C: ServedConnection>(
    conn: C,
    mut stop: StopSignal,
) -> hyper::Result<()> {
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
        // Held until the connection ends, so the server's stop waits for it.
        stop
    };
    tokio::select! {
        result = conn.as_mut() => result,
        _stop = stopping => {
            conn.as_mut().close_when_idle();
            conn.await
        }
    }
}

fn build_state(config: ProxyConfig) -> io::Result<Arc<ProxyState>> {
    for route in &config.routes {
        route.check().map_err(|(field, message)| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("route {:?}: {field}: {message}", route.prefix),
            )
        })?;
    }
    let store = ReplayStore::open(&config.dir)
        .map_err(io::Error::other)?
        .reset_repeats_when_idle(config.reset_repeats_when_idle);
    let mut client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(config.upstream_read_timeout);
    if let Some(path) = &config.upstream_ca {
        for cert in upstream_roots(path)? {
            client = client.add_root_certificate(cert);
        }
    }
    let client = client
        .build()
        .map_err(|e| io::Error::other(format!("cannot build the HTTP client: {e}")))?;
    let ca = tokio::sync::OnceCell::new();
    if let Some(loaded) = load_existing_ca(&config)? {
        let _ = ca.set(Arc::new(loaded));
    }
    // Last, so a proxy that fails to start leaves the previous run's record alone.
    let started_at_unix_ms = now_unix_ms();
    let prefixes = config.routes.iter().map(|r| r.prefix.clone()).collect();
    let usage = RunUsage::begin(&config.dir, config.mode, started_at_unix_ms, prefixes);
    let client = UpstreamClient::new(client, started_at_unix_ms, &config);
    Ok(Arc::new(ProxyState {
        diff_ignore: Arc::new(config.diff_ignore.clone()),
        record_statuses: config.record_statuses.iter().copied().collect(),
        config,
        store: Arc::new(store),
        client,
        ca,
        started_at_unix_ms,
        usage: Arc::new(usage),
    }))
}

/// The CA when its files already exist, so a broken one is reported at start. A CA in an
/// explicitly configured directory must load; one in the default directory only warns
/// here (a proxy used in reverse mode only never needs it), and CONNECT reports it.
fn load_existing_ca(config: &ProxyConfig) -> Result<Option<CertificateAuthority>, ProxyError> {
    match &config.ca_dir {
        Some(dir) => CertificateAuthority::load(dir),
        None => {
            let Ok(dir) = default_ca_dir() else {
                return Ok(None);
            };
            match CertificateAuthority::load(&dir) {
                Ok(found) => Ok(found),
                Err(e) => {
                    tracing::warn!("{e}");
                    Ok(None)
                }
            }
        }
    }
}

fn upstream_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, ProxyError> {
    let fail = |reason: String| ProxyError::UpstreamCa {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| fail(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}

/// A proxy serving on a background task.
/// The first of the proxy environment variables reqwest honours whose proxy is `addr`
/// itself (by loopback name or address and port), as `(name, value)`.
fn proxy_variable_pointing_at(addr: SocketAddr) -> Option<(&'static str, String)> {
    const NAMES: [&str; 6] = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    NAMES.into_iter().find_map(|name| {
        let value = std::env::var(name).ok()?;
        let with_scheme = if value.contains("://") {
            value.clone()
        } else {
            format!("http://{value}")
        };
        let url = reqwest::Url::parse(&with_scheme).ok()?;
        let port = url.port_or_known_default()?;
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let same_host = match host.parse::<IpAddr>() {
            Ok(ip) => {
                ip == addr.ip()
                    || (ip.is_loopback() && (addr.ip().is_loopback() || addr.ip().is_unspecified()))
            }
            Err(_) => {
                host.eq_ignore_ascii_case("localhost")
                    && (addr.ip().is_loopback() || addr.ip().is_unspecified())
            }
        };
        (same_host && port == addr.port()).then_some((name, value))
    })
}

#[derive(Debug)]
pub struct ProxyServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    writer: RunWriter,
}

impl ProxyServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving. Fails when a route is
    /// malformed, the recordings directory cannot be created, the upstream CA file is not
    /// usable, or the configured CA directory holds a broken CA.
    pub async fn start(config: ProxyConfig, addr: SocketAddr) -> io::Result<ProxyServer> {
        let state = build_state(config)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        if let Some((name, value)) = proxy_variable_pointing_at(addr) {
            tracing::warn!(
                "{name}={value} points at this proxy itself: its own upstream calls would come back to it (each is then answered 508 proxy_loop). Unset {name} in the proxy's environment, or list the upstream hosts in NO_PROXY"
            );
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let writer = state.usage.spawn_writer();
        let task = tokio::spawn(run(listener, state, async move {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        }));
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
    /// OpenAI client, use `{base_url}/v1`), and the value for `HTTP_PROXY`/`HTTPS_PROXY`
    /// in forward mode. A wildcard bind address is reported as 127.0.0.1.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Stops accepting connections, waits (a few seconds at most) for answers in progress,
    /// inside CONNECT tunnels too, to finish, then writes the run's final usage (`DIR/.sluice/last-run.json`, marked
    /// finished) and drift report.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Ok(Err(e)) = tokio::time::timeout(SHUTDOWN_GRACE, self.task).await {
            tracing::warn!("proxy server task failed: {e}");
        }
        self.writer.finish().await;
    }
}
