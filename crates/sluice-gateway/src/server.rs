//! Wiring: the shared state, the router, binding, and graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::ReusableBoxFuture;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::ResolvedConfig;
use crate::metrics::GatewayMetrics;
use crate::request_id::{RequestId, RequestIdLayer};
use crate::upstream::ModelRoute;
use crate::{chat, ops};

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a request handler reads. Built once from the resolved config.
pub struct GatewayState {
    pub models: HashMap<String, ModelRoute>,
    /// Configured model names, sorted: for `/v1/models` and for "unknown model" errors.
    pub model_names: Vec<String>,
    pub metrics: Arc<GatewayMetrics>,
    pub started_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source} (is another process using the port? set server.listen or --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client for model `{model}`: {source}")]
    Client {
        model: String,
        source: crate::upstream::ClientBuildError,
    },
}

impl GatewayState {
    pub fn new(config: &ResolvedConfig) -> Result<Self, StartError> {
        Self::with_metrics(config, Arc::new(GatewayMetrics::new()))
    }

    /// State whose metrics are recorded in `metrics`, shared with other workers.
    pub fn with_metrics(
        config: &ResolvedConfig,
        metrics: Arc<GatewayMetrics>,
    ) -> Result<Self, StartError> {
        let mut models = HashMap::new();
        for (name, model) in &config.models {
            let route = ModelRoute::new(model, &metrics).map_err(|source| StartError::Client {
                model: name.clone(),
                source,
            })?;
            models.insert(name.clone(), route);
        }
        let mut model_names: Vec<String> = models.keys().cloned().collect();
        model_names.sort();
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(GatewayState {
            models,
            model_names,
            metrics,
            started_unix,
        })
    }
}

/// Every route, the hot path included (see [`GatewayService`] for its shortcut).
fn routes(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route(CHAT_PATH, post(chat::chat_route))
        .route("/v1/models", get(ops::models))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// What each connection runs (behind the request-id layer): `POST /v1/chat/completions` goes
/// straight to its handler, everything else (operations endpoints, 404 and 405 answers)
/// through the axum router.
///
/// The router's layers around the hot route (route matching on every request, its boxed
/// service, the handler's extractors, boxing the body, response mapping) were 7 % of
/// the gateway's instructions per proxied request (docs/benchmarks.md).
///
/// One is built per connection (hyper-util clones it for every request; the clones share
/// `chat_box`). A chat request's future is about 4 KiB; allocating its box anew for every
/// request took mimalloc's slow path, about 1 800 instructions or 4 % of a proxied request.
/// The connection's requests come one after another, so they reuse one box.
#[derive(Clone)]
struct GatewayService {
    state: Arc<GatewayState>,
    router: Router,
    chat_box: Arc<Mutex<Option<ChatBox>>>,
}

type ChatBox = ReusableBoxFuture<'static, Response>;

impl GatewayService {
    fn for_connection(state: Arc<GatewayState>, router: Router) -> Self {
        GatewayService {
            state,
            router,
            chat_box: Arc::default(),
        }
    }
}

impl Service<Request<hyper::body::Incoming>> for GatewayService {
    type Response = Response;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        if req.method() == Method::POST && req.uri().path() == CHAT_PATH {
            let (parts, body) = req.into_parts();
            // Set by the request-id layer around this service.
            let id = parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_else(RequestId::generate);
            let future = chat::chat_completions(self.state.clone(), id, body);
            let spare = self.chat_box.lock().ok().and_then(|mut b| b.take());
            let boxed = match spare {
                Some(mut b) => {
                    b.set(future);
                    b
                }
                None => ReusableBoxFuture::new(future),
            };
            GatewayFuture::Chat {
                future: Some(boxed),
                home: self.chat_box.clone(),
            }
        } else {
            GatewayFuture::Other(Box::pin(self.router.call(req)))
        }
    }
}

/// A request's answer; a chat request's box goes back to its connection when it is done.
enum GatewayFuture {
    Chat {
        future: Option<ChatBox>,
        home: Arc<Mutex<Option<ChatBox>>>,
    },
    Other(Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>),
}

impl Future for GatewayFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            GatewayFuture::Chat { future, home } => {
                let Some(f) = future.as_mut() else {
                    panic!("a chat request's future was polled after it completed");
                };
                let response = std::task::ready!(f.poll(cx));
                if let (Some(b), Ok(mut spare)) = (future.take(), home.lock()) {
                    *spare = Some(b);
                }
                Poll::Ready(Ok(response))
            }
            GatewayFuture::Other(f) => f.as_mut().poll(cx),
        }
    }
}

const CHAT_PATH: &str = "/v1/chat/completions";

async fn method_not_allowed() -> axum::response::Response {
    crate::error::json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &sluice_api::ErrorResponse::new(
            "invalid_request_error",
            Some("method_not_allowed"),
            "this method is not allowed on this path (chat completions take POST)",
        ),
    )
}

/// A gateway bound to its port, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    state: Arc<GatewayState>,
    drain_timeout: Duration,
}

impl Gateway {
    /// Binds `config.listen` (port 0 picks a free port) and builds the upstream clients.
    pub async fn bind(config: &ResolvedConfig) -> Result<Self, StartError> {
        let state = Arc::new(GatewayState::new(config)?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Gateway {
            listener,
            state,
            drain_timeout: config.drain_timeout,
        })
    }

    /// A gateway on an already bound listener.
    pub fn on_listener(
        listener: TcpListener,
        state: Arc<GatewayState>,
        drain_timeout: Duration,
    ) -> Self {
        Gateway {
            listener,
            state,
            drain_timeout,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &Arc<GatewayState> {
        &self.state
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests (and
    /// streams) finish for up to the drain timeout, closes whatever is left, and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = routes(self.state.clone());
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
                // Reap finished connections so the set does not grow with every client.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Token-by-token streams are many small writes: never hold one back.
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(RequestIdLayer.layer(
                GatewayService::for_connection(self.state.clone(), router.clone()),
            ));
            let conn = http1::Builder::new()
                // A client that never finishes its request head must not hold a connection.
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            connections.spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!(drain_timeout = ?self.drain_timeout, in_flight_connections = connections.len(), "shutting down: no new connections, draining");
        if tokio::time::timeout(self.drain_timeout, graceful.shutdown())
            .await
            .is_ok()
        {
            tracing::info!("drained");
        } else {
            tracing::warn!(drain_timeout = ?self.drain_timeout, remaining = connections.len(), "drain timeout reached; closing the remaining connections");
        }
        connections.shutdown().await;
        Ok(())
    }
}
